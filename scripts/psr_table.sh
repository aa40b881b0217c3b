#!/usr/bin/env bash
# Prompt Steering Replacement on the embedded model: for each built-in instruction, train the constant vector,
# S-PSR and A-PSR, then evaluate them against prompting at matched coherence (the README's PSR table).
#   bash scripts/psr_table.sh [OUT] [INSTRUCTION ...]     default: runs/psr caps french pirate ocean
# Sizes (environment): TRAIN_PROMPTS responses to learn from (default 96), EVAL_PROMPTS held-out prompts (40).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
out="${1:-runs/psr}"
shift || true
instructions=("$@")
[ ${#instructions[@]} -gt 0 ] || instructions=(caps french pirate ocean)
train_prompts="${TRAIN_PROMPTS:-96}"
eval_prompts="${EVAL_PROMPTS:-40}"
for name in "${instructions[@]}"; do
    mkdir -p "$out/$name"
    for kind in constant s-psr a-psr; do
        [ -f "$out/$name/$kind.safetensors" ] ||
            steerlab psr train --instruction "$name" --kind "$kind" --n-prompts "$train_prompts" --out "$out/$name/$kind.safetensors" --quiet
    done
    steerlab psr eval --instruction "$name" --quiet --out "$out/$name" --n-prompts "$eval_prompts" \
        --alphas 0.5,1,2,3,4,6 --refine 2 \
        --steering "constant=$out/$name/constant.safetensors" \
        --steering "s-psr=$out/$name/s-psr.safetensors" \
        --steering "a-psr=$out/$name/a-psr.safetensors"
done
