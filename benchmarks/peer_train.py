"""Worker for train_vs_peers.py: times one peer library's vector training, inside benchmarks/.venv-peers.

Not meant to be run by hand. Reads a job (JSON) written by train_vs_peers.py, loads the model folder, checks
that the peer's tokenizer gives exactly the token ids steerlab used, warms up once on a few pairs, then times
the library's own training call on all pairs ``repeats`` times (model load excluded) and writes a JSON result:
seconds per run, the vector per layer, and how many real vs padded tokens the library fed the model.

    benchmarks/.venv-peers/bin/python benchmarks/peer_train.py JOB.json repeng|steering-vectors OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast


def load(folder: str) -> tuple[Any, PreTrainedTokenizerFast]:
    # The folder was saved by transformers 5, whose tokenizer class name transformers 4 does not know; the
    # tokenizer itself is the plain tokenizer.json, which every version reads.
    config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if config.get(k)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(folder) / "tokenizer.json"), **special)
    # transformers 5 writes the RoPE base under "rope_parameters", which transformers 4 ignores (it
    # would fall back to rope_theta=10000 and run a different model): carry it over.
    model_config = AutoConfig.from_pretrained(folder)
    rope = getattr(model_config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        model_config.rope_theta = rope["rope_theta"]
    model = AutoModelForCausalLM.from_pretrained(folder, config=model_config, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def count_tokens(model: Any, counter: dict[str, int]) -> Any:
    """A pre-hook on the model counting the real and padded tokens of every forward call."""

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            counter["fed"] += int(ids.numel())
            counter["real"] += int(mask.sum()) if mask is not None else int(ids.numel())

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def train_repeng(
    model: Any, tokenizer: Any, job: dict[str, Any], pairs: list[dict[str, Any]]
) -> dict[int, Any]:
    from repeng import ControlVector, DatasetEntry

    dataset = [DatasetEntry(positive=p["positive"], negative=p["negative"]) for p in pairs]
    vector = ControlVector.train(
        model,
        tokenizer,
        dataset,
        hidden_layers=job["layers"],
        method=job["repeng_method"],
        batch_size=job["repeng_batch_size"],
    )
    return {int(k): torch.as_tensor(v) for k, v in vector.directions.items()}


def train_steering_vectors(
    model: Any, tokenizer: Any, job: dict[str, Any], pairs: list[dict[str, Any]]
) -> dict[int, Any]:
    from steering_vectors import SteeringVectorTrainingSample, train_steering_vector

    # Read at the same token as steerlab (the first token where the two sides differ), with its
    # mean-difference aggregator: the same vector, so the comparison is of the same work.
    samples = [
        SteeringVectorTrainingSample(p["positive"], p["negative"], p["read_positive"], p["read_negative"])
        for p in pairs
    ]
    vector = train_steering_vector(
        model, tokenizer, samples, layers=job["layers"], batch_size=job["sv_batch_size"]
    )
    return {int(k): v.detach().float() for k, v in vector.layer_activations.items()}


def main() -> None:
    job_path, library, out_path = sys.argv[1:4]
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    model, tokenizer = load(job["model"])
    pairs: list[dict[str, Any]] = job["pairs"]
    mismatched = sum(
        tokenizer(p[side])["input_ids"] != p[f"{side}_ids"]
        for p in pairs
        for side in ("positive", "negative")
    )
    # Same model as steerlab's? The hidden state of the first text at the first layer, against steerlab's.
    ref = job["reference"]
    with torch.no_grad():
        states = model(torch.tensor([pairs[0]["positive_ids"]]), output_hidden_states=True).hidden_states
    reference_diff = float(
        (states[ref["layer"] + 1][0, ref["token"]] - torch.tensor(ref["hidden"])).abs().max()
    )
    train = train_repeng if library == "repeng" else train_steering_vectors
    with torch.no_grad():
        train(model, tokenizer, job, pairs[: job["warmup_pairs"]])  # warm-up
        seconds: list[float] = []
        cpu_seconds: list[float] = []
        counter = {"fed": 0, "real": 0}
        for run in range(job["repeats"]):
            handle = count_tokens(model, counter) if run == 0 else None
            start, cpu = time.perf_counter(), time.process_time()
            vector = train(model, tokenizer, job, pairs)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu)
            if handle is not None:
                handle.remove()
    package = "repeng" if library == "repeng" else "steering-vectors"
    result = {
        "library": library,
        "versions": {p: version(p) for p in (package, "torch", "transformers")},
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens_fed": counter["fed"],
        "tokens_real": counter["real"],
        "token_mismatches": mismatched,
        "reference_max_abs_diff": reference_diff,
        "vector": {str(k): v.tolist() for k, v in vector.items()},
    }
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
