#!/usr/bin/env bash
# The test suite: unit tests on tiny random models, plus the fast real-model tests (marked `ci`), lint and types.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check steerlab tests benchmarks
mypy
python -m pytest -q -m "not real or ci" tests
