"""The same server as a Ray Serve application: ``replicas`` copies of the model, each with its own batcher,
behind Ray Serve's HTTP proxy, on a local Ray or a cluster (``address``).

Every replica builds the whole app itself (model, vector folder, engine) from plain settings, so the vectors are
read from the folder by each replica (a path all nodes can see: shared storage on a cluster). Requests are spread
over replicas by Ray Serve; ``/health`` names the replica that answered.

Example::

    from steerlab.serve.replicas import start_replicas
    from steerlab.serve.settings import ServeSettings
from steerlab.suite.ray_pool import connect
    url = start_replicas(None, "vectors/", ServeSettings(model_id="smollm2"), replicas=2, port=8000)
    ...                                   # OpenAI clients on url + "/v1"
    stop_replicas()
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError
from steerlab.serve.settings import ServeSettings
from steerlab.suite.ray_pool import connect

INSTALL = "pip install 'steerlab[ray]'"
APP_NAME = "steerlab"


def _app_builder(model: str | None, vectors: str, settings: ServeSettings, threads: int) -> Callable[[], Any]:
    """What builds one replica's ASGI app when Ray Serve starts the replica (Ray ships this closure, not a model).

    A plain function: Ray Serve tells a builder from an ASGI app by its being a function."""

    def build() -> Any:
        import torch

        from steerlab.models import load_model
        from steerlab.serve.app import create_app
        from steerlab.serve.launch import build_service

        torch.set_num_threads(threads)  # replicas share the node's cores instead of each taking all
        loaded, tokenizer = load_model(model)
        return create_app(build_service(loaded, tokenizer, vectors, settings))

    return build


def start_replicas(model: str | None, vectors: str | Path, settings: ServeSettings, *, replicas: int,
                   host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                   cpus_per_replica: float = 1.0) -> str:
    """Deploy ``replicas`` copies and return the base URL once every replica is up."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"--replicas needs Ray Serve: {INSTALL}")
    if replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {replicas}")
    folder = Path(vectors).resolve()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder of vectors")
    import ray
    from ray import serve

    # As a suite joins Ray: an unreachable --address is one clear error at once, not a hang.
    connect(ray, address, math.ceil(replicas * cpus_per_replica))
    serve.start(http_options={"host": host, "port": port})
    builder = _app_builder(model, str(folder), settings, max(1, int(cpus_per_replica)))

    @serve.deployment(name="steerlab", num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica},
                      max_ongoing_requests=settings.limits.max_batch + settings.limits.max_queue)
    @serve.ingress(builder)
    class SteerlabReplica:
        pass

    deployment: Any = SteerlabReplica  # Ray's decorators turn the class into a deployment
    serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")  # returns when every replica is healthy
    return f"http://{host}:{port}"


def stop_replicas() -> None:
    """Take the application down (in-flight requests finish first) and leave Ray."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
