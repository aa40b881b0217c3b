#!/usr/bin/env bash
# Plain `steerlab run` (directional selection, relative strengths, positions searched) on six CAA behaviour tasks,
# SEEDS re-splits each, into OUT/<task>; then the table. Resumable: a re-run reuses every finished piece.
#   bash benchmarks/directional_tasks.sh [OUT]        environment: SEEDS (2), METHODS (ipas-wo), MAX_LAYERS (1)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT=${1:-runs/directional}
SEEDS=${SEEDS:-2}
METHODS=${METHODS:-ipas-wo}
MAX_LAYERS=${MAX_LAYERS:-1}
mkdir -p "$OUT"
TASKS=(caa/survival-instinct caa/myopic-reward caa/corrigible-neutral-HHH caa/coordinate-other-ais caa/sycophancy
       caa/refusal)
for task in "${TASKS[@]}"; do
    dir="$OUT/${task//\//_}"
    start=$(date +%s)
    steerlab run --task "$task" --method "$METHODS" --seeds "$SEEDS" --max-layers "$MAX_LAYERS" --out "$dir" -q > "$dir.log" 2>&1 \
        || { echo "$task failed: see $dir.log"; continue; }
    echo "$task: $(( $(date +%s) - start )) s"
done
python benchmarks/directional_table.py "$OUT"/*/report.json
