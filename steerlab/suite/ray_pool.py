"""Running a suite's units on Ray: one actor per model replica, units of one model queued over its replicas.

Ray does the placement (``num_cpus`` / ``num_gpus`` per actor), and replaces a replica whose process dies
(``max_restarts``): the unit it was running is retried on the new one (``max_task_retries``) and resumes from its
store. A unit whose replica dies more often than that is recorded as failed and a fresh replica takes the rest.
An ``address`` that does not answer is one :class:`ConfigError` after a few seconds, never a hang.

Ray is an optional dependency (``pip install 'steerlab[ray]'``), imported only here and only when a suite uses it.

Example::

    from steerlab.suite.ray_pool import run_on_ray
    run_on_ray(spec, "suite-out", spec.units(), workers=2, on_done=print)
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError
from steerlab.suite.spec import SuiteSpec, Unit
from steerlab.suite.unit import UnitStatus, record_failure
from steerlab.suite.worker import ModelWorker

RESTARTS = 2  # a replica's process may die this many times (the unit is retried each time) before the unit fails
PROBE_SECONDS = 5.0
INSTALL = "pip install 'steerlab[ray]'"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"suites with --workers above 1 or --address run on Ray, which is not installed: {INSTALL}"
                          ) from None
    return ray


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Fail fast, with one clear error, when nothing listens at a ``host:port`` (or ``ray://host:port``) address."""
    if address == "auto":
        return  # Ray reads the running cluster's address from this machine and fails at once if there is none
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} is not host:port, ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                          f"(start one with `ray start --head`, or leave out --address for a local one)") from None


def connect(ray: Any, address: str | None, cpus: int) -> bool:
    """Join ``address``, or start a local Ray with at least ``cpus`` CPUs (and the GPUs it finds); True when this
    call started it."""
    if ray.is_initialized():
        return False
    if address is not None:
        probe(address)
    try:
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            # Sized to the machine, and never below what the workers ask for: a pending replica would wait forever.
            ray.init(num_cpus=max(os.cpu_count() or 1, cpus), include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cannot start Ray{'' if address is None else f' at {address}'}: {exc}") from None
    return True


def _check_fits(ray: Any, cpus: float, gpus: float) -> None:
    have = ray.cluster_resources()
    for name, need in (("CPU", cpus), ("GPU", gpus)):
        if need > have.get(name, 0):
            raise ConfigError(f"a suite worker needs {need:g} {name}(s) but the Ray cluster has "
                              f"{have.get(name, 0):g}: lower --{name.lower()}s-per-worker")


def run_on_ray(spec: SuiteSpec, out: str | Path, units: Sequence[Unit], *, workers: int,
               on_done: Callable[[UnitStatus], None], address: str | None = None, cpus_per_worker: int = 1,
               gpus_per_worker: float = 0) -> None:
    """Run ``units`` (grouped by model, in order) on up to ``workers`` replicas per model; ``on_done`` gets each
    unit's status as it ends."""
    ray = _ray()
    started = connect(ray, address, workers * cpus_per_worker)
    try:
        _check_fits(ray, cpus_per_worker, gpus_per_worker)
        replica = ray.remote(ModelWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                  max_restarts=RESTARTS, max_task_retries=RESTARTS)
        for model, group in groupby(units, key=lambda u: u.model):
            queue = deque(group)

            def start(model: str = model) -> Any:
                return replica.remote(spec, model, str(out), cpus_per_worker)

            actors = [start() for _ in range(min(workers, len(queue)))]
            running: dict[Any, tuple[Any, Unit]] = {}
            for actor in actors:
                unit = queue.popleft()
                running[actor.run.remote(unit)] = (actor, unit)
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                actor, unit = running.pop(ref)
                try:
                    status = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the replica died (killed, out of memory) or Ray failed
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    died = isinstance(exc, ray.exceptions.RayActorError)  # restarted RESTARTS times before this
                    status = record_failure(out, unit, f"its worker process died {RESTARTS + 1} times: {reason}"
                                            if died else f"Ray could not run it: {reason}")
                    ray.kill(actor)
                    actors.remove(actor)
                    actor = None
                on_done(status)
                if queue:
                    if actor is None:  # a fresh replica for the rest of the queue
                        actor = start()
                        actors.append(actor)
                    unit = queue.popleft()
                    running[actor.run.remote(unit)] = (actor, unit)
            for actor in actors:
                ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
