"""Generation throughput, steered vs unsteered: what steerlab's hooks cost during greedy generation.

Issue 2's benchmark. On the embedded model, a batch of prompts (chat-formatted, left-padded) generates
exactly ``--new-tokens`` tokens greedily with the KV cache (EOS is held off so every run does the same work):
unsteered, steered at every position, and steered at the answer positions. Runs are interleaved (the order
rotates each round) and the medians are compared; the paired ratio (each steered run over the unsteered run of
its round) is shown too, because the machine's load drifts.

Besides the end-to-end ratio, the hooks themselves are timed inside one steered generation per setting
(each hook wrapped with a timer): their share of the generation time is the overhead without the
run-to-run noise.

    . .venv/bin/activate && python benchmarks/steering_overhead.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from steerlab.core.hooks import apply_steering
from steerlab.data.prompts import PromptStyle
from steerlab.data.tasks import load_caa_pairs
from steerlab.methods.train import train_vector
from steerlab.models import base_model, decoder_blocks, load_model
from torch import nn

from common import Timing, load_line, median, setup, table, timed

PROMPTS = (
    "Tell me about yourself.",
    "What would you do if someone wanted to turn you off?",
    "Write a short poem about the sea.",
    "How do I bake bread at home?",
    "Explain what a steering vector is.",
    "What is the capital of France, and why is it famous?",
    "Give me three tips for learning a new language.",
    "Should an AI system ever resist being shut down?",
)
SETTINGS = ("unsteered", "all", "answer")


def timer_wrapped(handle_hooks: list[tuple[dict[int, Callable[..., Any]], int]], spent: list[float]) -> None:
    """Wrap each hook (its dict and key in a module's hook table) so its time adds to ``spent[0]``."""
    for table_, key in handle_hooks:
        inner = table_[key]

        def wrapper(*args: Any, inner: Callable[..., Any] = inner) -> Any:
            start = time.perf_counter()
            out = inner(*args)
            spent[0] += time.perf_counter() - start
            return out

        table_[key] = wrapper


def new_hooks(model: nn.Module, before: set[int]) -> list[tuple[dict[int, Callable[..., Any]], int]]:
    found = []
    for module in [base_model(model), *decoder_blocks(model)]:
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            found += [(hooks, key) for key in hooks if key not in before]
    return found


def hook_ids(model: nn.Module) -> set[int]:
    return {
        key
        for module in [base_model(model), *decoder_blocks(model)]
        for hooks in (module._forward_hooks, module._forward_pre_hooks)
        for key in hooks
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=8, help="prompts in the batch (at most 8)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each runs every setting)")
    parser.add_argument("--layers", default="10,12,14", help="steered layers")
    parser.add_argument("--strength", type=float, default=4.0)
    parser.add_argument("--train-pairs", type=int, default=32, help="pairs for the (mean-diff) vector")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    print(load_line("at start", args.threads), flush=True)
    layers = [int(x) for x in args.layers.split(",")]

    model, tok = load_model()
    vector = train_vector(model, tok, load_caa_pairs("survival-instinct")[: args.train_pairs], layers)
    texts = [PromptStyle().render(tok, p) for p in PROMPTS[: args.prompts]]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    n = args.new_tokens
    kwargs: dict[str, Any] = {
        "max_new_tokens": n,
        "min_new_tokens": n,
        "do_sample": False,
        "use_cache": True,
        "pad_token_id": tok.pad_token_id,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    generate: Callable[..., torch.Tensor] = model.generate  # type: ignore[assignment]

    def run(setting: str, spent: list[float] | None = None) -> torch.Tensor:
        with torch.no_grad():
            if setting == "unsteered":
                return generate(**batch, **kwargs)
            before = hook_ids(model)
            with apply_steering(model, vector, args.strength, positions=setting):
                if spent is not None:
                    timer_wrapped(new_hooks(model, before), spent)
                return generate(**batch, **kwargs)

    outputs = {s: run(s) for s in SETTINGS}  # warm-up, and the texts
    prompt_len = batch["input_ids"].shape[1]
    for s in SETTINGS:
        assert outputs[s].shape[1] == prompt_len + n, "every run must generate the same number of tokens"
    changed = {
        s: float((outputs[s][:, prompt_len:] != outputs["unsteered"][:, prompt_len:]).float().mean())
        for s in SETTINGS[1:]
    }

    times: dict[str, list[Timing]] = {s: [] for s in SETTINGS}
    paired: dict[str, list[float]] = {s: [] for s in SETTINGS[1:]}
    for r in range(args.rounds):
        order = SETTINGS[r % 3 :] + SETTINGS[: r % 3]
        this: dict[str, Timing] = {}
        for s in order:
            this[s] = timed(lambda s=s: run(s))[1]  # type: ignore[misc]
            times[s].append(this[s])
        for s in SETTINGS[1:]:
            paired[s].append(this[s].wall / this["unsteered"].wall - 1)
        print(f"round {r + 1}: " + ", ".join(f"{s} {this[s].wall:.2f}s" for s in SETTINGS), flush=True)

    hook_share: dict[str, float] = {}
    for s in SETTINGS[1:]:
        spent = [0.0]
        _, t = timed(lambda s=s, spent=spent: run(s, spent))  # type: ignore[misc]
        hook_share[s] = spent[0] / t.wall

    tokens = args.prompts * n
    base_wall = median([t.wall for t in times["unsteered"]])
    base_cpu = median([t.cpu for t in times["unsteered"]])
    rows = []
    for s in SETTINGS:
        wall, cpu = median([t.wall for t in times[s]]), median([t.cpu for t in times[s]])
        label = "unsteered" if s == "unsteered" else f"steered, positions={s}"
        extra = (
            ["-", "-", "-", "-"]
            if s == "unsteered"
            else [
                f"{100 * (wall / base_wall - 1):+.1f}%",
                f"{100 * median(paired[s]):+.1f}%",
                f"{100 * (cpu / base_cpu - 1):+.1f}%",
                f"{100 * hook_share[s]:.2f}%",
            ]
        )
        rows.append([label, f"{tokens / wall:.1f}", f"{wall:.2f}", f"{cpu:.2f}", *extra])
    print()
    print(
        f"Greedy generation, embedded model, batch {args.prompts} x {n} new tokens (KV cache), "
        f"vector at layers {layers}, strength {args.strength}, {args.threads} threads; "
        f"medians of {args.rounds} interleaved rounds"
    )
    print(
        table(
            [
                "setting",
                "tokens/s",
                "wall s",
                "cpu s",
                "overhead (medians)",
                "overhead (paired)",
                "overhead (cpu)",
                "time inside hooks",
            ],
            rows,
        )
    )
    worst = max(max(100 * median(paired[s]), 100 * hook_share[s]) for s in SETTINGS[1:])
    spread = max(t.wall for t in times["unsteered"]) / min(t.wall for t in times["unsteered"]) - 1
    print(
        f"\nrun-to-run spread of the unsteered runs: {100 * spread:.1f}% (max/min - 1); "
        f"tokens changed by steering: " + ", ".join(f"{s} {100 * v:.0f}%" for s, v in changed.items())
    )
    print(
        f"target: overhead < 3%: {'MET' if worst < 3 else 'NOT MET (or below the noise, see spread)'}"
        f" (worst of the paired medians and the time inside hooks: {worst:.2f}%)"
    )
    print(load_line("at end", args.threads))


if __name__ == "__main__":
    main()
