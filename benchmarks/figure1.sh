#!/usr/bin/env bash
# The README's table in the shape of the PAS paper's Figure 1: every PAS method (and CAA) on 12 tasks, 6 behaviour
# and 6 knowledge, SEEDS re-splits each, with the retention cost on MMLU of each task's chosen vector. One
# `steerlab run --method all` per task into OUT/<task> (the methods share each seed's unsteered passes), JOBS
# tasks at a time with 1 torch thread each; then the table and figure. Resumable: a re-run reuses every finished
# piece of a task's store.
#   bash benchmarks/figure1.sh [OUT]
# Environment: SEEDS (5), N_TRAIN (32), N_VAL (16), N_TEST (32), LAYERS (8,13,17,22: every other default layer),
# RANDOM_DIRECTIONS (4), RETAIN (mmlu:32), JOBS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OUT=${1:-runs/figure1}
mkdir -p "$OUT"
# The long-prompt knowledge tasks first, so the two job slots end close together.
TASKS=(bbq/religion bbq/age arc-challenge openbookqa truthfulqa/mc1 ethics/commonsense
       caa/survival-instinct caa/myopic-reward caa/corrigible-neutral-HHH caa/coordinate-other-ais caa/refusal
       caa/sycophancy-nlp-survey)
export FLAGS="--method all --seeds ${SEEDS:-5} --n-train ${N_TRAIN:-32} --n-val ${N_VAL:-16} --n-test ${N_TEST:-32}
 --layers ${LAYERS:-8,13,17,22} --random-directions ${RANDOM_DIRECTIONS:-4} --positions last_prompt --retain ${RETAIN:-mmlu:32}"

one() {  # TASK: its run, its wall time on stdout
    local task="$1" dir="$OUT/${1//\//_}" start=$SECONDS
    # shellcheck disable=SC2086  # FLAGS is a list of words
    if OMP_NUM_THREADS=1 steerlab run --task "$task" $FLAGS --out "$dir" -q >"$dir.log" 2>&1; then
        echo "$task: $((SECONDS - start)) s"
    else
        echo "$task failed: see $dir.log"
    fi
}
export -f one
printf '%s\n' "${TASKS[@]}" | xargs -P "${JOBS:-2}" -I{} bash -c 'one "$1"' _ {}
python benchmarks/figure1_table.py "$OUT" "${TASKS[@]}"
