"""``steerlab serve``: the OpenAI-compatible server where every request brings its own steering."""

from __future__ import annotations

import argparse
import os
from typing import Any

from steerlab.cli.common import add_common, count, load_model_from_args, note
from steerlab.errors import ConfigError

KEY_ENV = "STEERLAB_API_KEY"


def cmd_serve(args: argparse.Namespace) -> int:
    from steerlab.serve.launch import build_service, require_serve_extra, run_server
    from steerlab.serve.settings import Limits, ServeSettings, check_exposure

    api_key = args.api_key or os.environ.get(KEY_ENV) or None
    check_exposure(args.host, api_key)
    require_serve_extra()
    limits = Limits(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
                    max_tokens=args.max_tokens, max_vectors=args.max_vectors, max_strength=args.max_strength,
                    max_batch=args.max_batch, max_queue=args.max_queue, timeout_s=args.timeout)
    if args.replicas is not None or args.address is not None:
        return _serve_replicas(args, api_key, limits)
    model, tok = load_model_from_args(args)
    from steerlab.models import model_name

    settings = ServeSettings(model_id=args.served_model_name or model_name(model), api_key=api_key, limits=limits)
    service = build_service(model, tok, args.vectors, settings)
    names = ", ".join(entry.name for entry in service.library.entries()) or "none"
    note(args, f"serving {settings.model_id!r} with vectors: {names}")
    note(args, f"playground: http://{args.host}:{args.port}/  API: http://{args.host}:{args.port}/v1"
               + ("  (bearer key required)" if api_key else ""))
    run_server(service, args.host, args.port, log_level="warning" if args.quiet else "info")
    return 0


def _serve_replicas(args: argparse.Namespace, api_key: str | None, limits: Any) -> int:
    """Each Ray Serve replica loads its own model copy; this process only deploys them and waits."""
    import time

    from steerlab.models import DEFAULT_MODEL_NAME
    from steerlab.serve.replicas import start_replicas, stop_replicas
    from steerlab.serve.settings import ServeSettings

    if args.gguf_file:
        raise ConfigError("--gguf-file is not supported with --replicas; convert the model to a folder first")
    settings = ServeSettings(model_id=args.served_model_name or args.model or DEFAULT_MODEL_NAME, api_key=api_key,
                             limits=limits)
    replicas = args.replicas or 1
    note(args, f"starting {replicas} replica(s) on Ray{f' at {args.address}' if args.address else ' (local)'} ...")
    url = start_replicas(args.model, args.vectors, settings, replicas=replicas, host=args.host, port=args.port,
                         address=args.address, cpus_per_replica=args.cpus_per_replica)
    note(args, f"serving {settings.model_id!r} from {replicas} replica(s): {url}/v1 (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        note(args, "stopping the replicas (in-flight requests finish first) ...")
    finally:
        stop_replicas()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible server with per-request steering",
                       description="Serve /v1/chat/completions and /v1/completions; each request may carry "
                                   "\"steering\": [{\"vector\": NAME, \"strength\": S, \"layers\": [...], "
                                   "\"positions\": ...}] naming vectors from --vectors.")
    add_common(p, chat=False)
    p.add_argument("--vectors", required=True, help="folder of steerlab .safetensors files and llama.cpp .gguf "
                                                    "control vectors; each is served under its file stem")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback only with a key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (default: ${KEY_ENV})")
    p.add_argument("--served-model-name", help="the model id clients send (default: the model's name)")
    p.add_argument("--max-batch", type=count, default=32, help="requests decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot; beyond, 429")
    p.add_argument("--max-tokens", type=count, default=512, help="output tokens per request")
    p.add_argument("--max-prompt-tokens", type=count, default=2048)
    p.add_argument("--max-vectors", type=count, default=4, help="steering items per request")
    p.add_argument("--max-strength", type=float, default=20.0, help="largest |strength| a request may ask")
    p.add_argument("--max-body-bytes", type=count, default=256 * 1024)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request, queueing included")
    p.add_argument("--replicas", type=count, help="serve from N Ray Serve replicas, each its own model copy and "
                                               "batcher (local Ray unless --address)")
    p.add_argument("--address", help="a Ray cluster to deploy the replicas on (e.g. ray://head:10001)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs reserved by each replica")
    p.set_defaults(func=cmd_serve)
