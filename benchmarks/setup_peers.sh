#!/usr/bin/env bash
# Create benchmarks/.venv-peers: a separate environment with the two peer libraries that
# benchmarks/train_vs_peers.py times against steerlab. Pinned to the versions measured in the README.
#   bash benchmarks/setup_peers.sh
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
[ -x .venv-peers/bin/python ] || "$PY" -m venv .venv-peers
. .venv-peers/bin/activate
pip install -q --upgrade pip
# The CPU build of torch, as in steerlab's environment (pip finds the local CPU wheel on these machines).
pip install -q torch==2.13.0
# steering-vectors needs transformers < 5, repeng needs numpy < 2: these are the versions the README quotes.
pip install -q repeng==0.4.0 steering-vectors==0.12.2 transformers==4.57.6 numpy==1.26.4 scikit-learn==1.9.1
python - <<'PY'
import repeng, steering_vectors, torch, transformers
from importlib.metadata import version
print("peers ready:", {p: version(p) for p in ("torch", "transformers", "repeng", "steering-vectors")})
PY
