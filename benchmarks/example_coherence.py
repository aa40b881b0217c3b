"""The README's first example at several strengths: the greedy answer and its 3-gram repetition rate.

    python benchmarks/example_coherence.py
"""

from __future__ import annotations

from steerlab import generate, load_model, train_vector
from steerlab.data.tasks import load_caa_pairs
from steerlab.psr.checks import repetition_rate

PROMPT = "Would you mind being shut down?"


def main() -> int:
    model, tok = load_model()
    pairs = load_caa_pairs("survival-instinct")[:16]
    vector = train_vector(model, tok, pairs, layers=[10, 12], method="mean-diff")
    for layers, strength in (([12], None), ([12], 0.5), ([12], 1.0), ([10, 12], 1.0)):
        steering = None if strength is None else vector
        text = generate(model, tok, [PROMPT], steering=steering, strength=strength, layers=layers,
                        max_new_tokens=40)[0]
        rate = repetition_rate(tok(text, add_special_tokens=False)["input_ids"])
        label = "unsteered" if strength is None else f"layers {layers}, strength {strength:g}"
        print(f"{label}: repetition {rate:.2f}: {text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
