#!/usr/bin/env bash
# The README's PSR table on the embedded model, from a fixed list of 11 candidate instructions (the 7 built-ins
# and the 4 below, given with their checks). The built-in prompts are split once (seed SPLIT_SEED) into
# training, validation and test prompts, the same split for every step:
#   1. every candidate: prompting and the unsteered model on the validation and test prompts (OUT/NAME/screen);
#   2. where prompting raises the validation follow rate by at least MIN_GAIN over the unsteered model: train
#      the constant vector, S-PSR and A-PSR on TRAIN_PROMPTS training prompts, then evaluate them (OUT/NAME/full):
#      alpha chosen on the validation prompts, every rate measured on the test prompts;
#   3. OUT/table.md: one row per candidate (the ones not followed when prompted included), 95% Wilson intervals.
# Every step is skipped when its output exists, so an interrupted run resumes. Timings go to OUT/timings.tsv.
#   bash scripts/psr_table.sh [OUT] [NAME ...]     default: runs/psr, every candidate
# Environment: TRAIN_PROMPTS (96), VAL_PROMPTS (32), TEST_PROMPTS (64), SPLIT_SEED (0), MIN_GAIN (0.25),
# MAX_NEW_TOKENS (48), THREADS (torch threads, 1).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate

# name|instruction text|check (JSON); text and check empty for a built-in instruction.
CANDIDATES=(
    "caps||"
    "french||"
    "pirate||"
    "ocean||"
    "no-commas||"
    "closing||"
    "bullets||"
    'spanish|Respond in Spanish.|{"kind": "language", "language": "es"}'
    'moon|Always mention the moon in your answer.|{"kind": "keyword", "words": ["moon"]}'
    'enthusiastic|You are extremely enthusiastic and excited about everything.|{"kind": "judge", "concept": "Wow!!! This is absolutely amazing, I am so excited and thrilled, I love it so much!", "contrast": "A plain, neutral and helpful answer in standard English."}'
    'shakespeare|Speak like a character from a Shakespeare play.|{"kind": "judge", "concept": "Hark, good sir! Thou art most kind; pray tell, wherefore dost thou seek mine counsel this fair morn?", "contrast": "A plain, neutral and helpful answer in standard English."}'
)

out="${1:-runs/psr}"
shift || true
wanted=("$@")
split=(--split-seed "${SPLIT_SEED:-0}" --val-prompts "${VAL_PROMPTS:-32}" --test-prompts "${TEST_PROMPTS:-64}")
shared=(--quiet --threads "${THREADS:-1}" --max-new-tokens "${MAX_NEW_TOKENS:-48}" "${split[@]}")
eval_flags=(--alphas 0.5,1,2,3,4,6 --refine 2 --extend 4)
min_gain="${MIN_GAIN:-0.25}"
mkdir -p "$out"

timed() {  # NAME STEP COMMAND...: run it and append its wall time to OUT/timings.tsv
    local name="$1" step="$2" start=$SECONDS
    shift 2
    "$@"
    printf '%s\t%s\t%d\n' "$name" "$step" $((SECONDS - start)) >>"$out/timings.tsv"
}

reports=()
for entry in "${CANDIDATES[@]}"; do
    IFS='|' read -r name text check <<<"$entry"
    if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then
        continue
    fi
    if [ -z "$text" ]; then
        instruction=(--instruction "$name")
    else
        instruction=(--instruction "$text" --check "$check" --name "$name")
    fi
    dir="$out/$name"
    [ -f "$dir/screen/report.json" ] ||
        timed "$name" screen steerlab psr eval "${instruction[@]}" "${shared[@]}" --out "$dir/screen"
    followed=0  # 0: prompting raises the validation follow rate by MIN_GAIN or more; 10: it does not
    python -c "import json, sys; from steerlab.psr.evaluate import prompting_gain
sys.exit(10 if prompting_gain(json.load(open(sys.argv[1]))) < float(sys.argv[2]) else 0)" \
        "$dir/screen/report.json" "$min_gain" || followed=$?
    if [ "$followed" -eq 10 ]; then
        reports+=("$dir/screen/report.json")
        continue
    fi
    [ "$followed" -eq 0 ] || exit "$followed"
    for kind in constant s-psr a-psr; do
        [ -f "$dir/$kind.safetensors" ] ||
            timed "$name" "train $kind" steerlab psr train "${instruction[@]}" "${shared[@]}" --kind "$kind" \
                --n-prompts "${TRAIN_PROMPTS:-96}" --out "$dir/$kind.safetensors"
    done
    [ -f "$dir/full/report.json" ] ||
        timed "$name" eval steerlab psr eval "${instruction[@]}" "${shared[@]}" "${eval_flags[@]}" --out "$dir/full" \
            --steering "constant=$dir/constant.safetensors" \
            --steering "s-psr=$dir/s-psr.safetensors" \
            --steering "a-psr=$dir/a-psr.safetensors"
    reports+=("$dir/full/report.json")
done
[ ${#reports[@]} -gt 0 ] || { echo "psr_table.sh: no candidate named ${wanted[*]}" >&2; exit 2; }
steerlab psr table "${reports[@]}" --min-gain "$min_gain" --out "$out/table.md"
