"""Putting a server together and running it: in the foreground (the CLI) or on a background thread (tests,
benchmarks, notebooks).

Example::

    from steerlab import load_model
    from steerlab.serve.launch import build_service, background_server
    from steerlab.serve.settings import ServeSettings
    model, tok = load_model()
    service = build_service(model, tok, "vectors/", ServeSettings(model_id="smollm2"))
    with background_server(service) as url:      # e.g. http://127.0.0.1:41234
        ...                                      # point an OpenAI client at url + "/v1"
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.errors import ConfigError
from steerlab.serve.engine import Engine
from steerlab.serve.service import Service
from steerlab.serve.settings import ServeSettings
from steerlab.serve.vectors import VectorLibrary

INSTALL = "pip install 'steerlab[serve]'"
# Seconds uvicorn waits for in-flight requests at shutdown before closing their connections.
GRACEFUL_S = 30


def require_serve_extra() -> None:
    """A clear error naming the install command when the server's libraries are missing."""
    missing = [name for name in ("fastapi", "uvicorn", "sse_starlette") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"steerlab serve needs {', '.join(missing)}: {INSTALL}")


def build_service(model: nn.Module, tokenizer: PreTrainedTokenizerBase, vectors: str | Path,
                  settings: ServeSettings) -> Service:
    library = VectorLibrary.load(vectors, model)
    engine = Engine(model, tokenizer, max_batch=settings.limits.max_batch, max_queue=settings.limits.max_queue)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return Service(engine, tokenizer, library, settings, positions if isinstance(positions, int) else None)


def _server(service: Service, host: str, port: int, **options: Any) -> Any:
    require_serve_extra()
    import uvicorn

    from steerlab.serve.app import create_app

    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=options.pop("log_level", "warning"),
                            timeout_graceful_shutdown=GRACEFUL_S, **options)
    return uvicorn.Server(config)


def run_server(service: Service, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve until interrupted; on SIGINT/SIGTERM stop accepting, finish in-flight requests, then return."""
    _server(service, host, port, log_level=log_level).run()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def background_server(service: Service, host: str = "127.0.0.1", port: int | None = None,
                      startup_s: float = 60.0) -> Iterator[str]:
    """A server on a thread for the ``with`` block; yields its base URL, and stops it (draining) on exit."""
    server = _server(service, host, port or free_port(host))
    thread = threading.Thread(target=server.run, name="steerlab-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError(f"the server did not start on {host}:{server.config.port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(GRACEFUL_S + 10)
