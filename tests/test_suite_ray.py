"""The suite on Ray with two workers on this machine: the same aggregate bytes as the serial run, even when a
worker process is killed in the middle of a unit. Ray starts once for the module (it costs seconds)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_suite import make_suite

from steerlab.errors import ConfigError
from steerlab.suite.report import SUITE_JSON, SUITE_MD, SUITE_PNG
from steerlab.suite.run import run_suite
from steerlab.suite.spec import SuiteSpec

ray = pytest.importorskip("ray")


def _running_unit() -> psutil.Process | None:
    """A replica's process while it runs a unit (Ray titles it after the actor method)."""
    for process in psutil.process_iter(["cmdline"]):
        if "ray::ModelWorker.run" in " ".join(process.info["cmdline"] or ()):
            return process
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SuiteSpec, Path, Path, list[int]]]:
    root = tmp_path_factory.mktemp("ray-suite")
    spec = make_suite(root)
    run_suite(spec, root / "serial")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_worker_mid_unit() -> None:
        while not stop.is_set() and not killed:
            process = _running_unit()
            if process is not None:
                os.kill(process.pid, signal.SIGKILL)
                killed.append(process.pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_mid_unit)
    killer.start()
    try:
        run_suite(spec, root / "ray", workers=2)
        stop.set()
        killer.join()
        yield spec, root / "serial", root / "ray", killed
    finally:
        stop.set()
        ray.shutdown()


def test_two_ray_workers_give_the_serial_aggregate_byte_for_byte(
        runs: tuple[SuiteSpec, Path, Path, list[int]]) -> None:
    _, serial, on_ray, _ = runs
    for name in (SUITE_JSON, SUITE_MD, SUITE_PNG):
        assert (on_ray / name).read_bytes() == (serial / name).read_bytes(), name
    data = json.loads((on_ray / SUITE_JSON).read_text())
    assert (data["units_done"], data["units_failed"]) == (4, 2)  # the two bad-data units, as serially


def test_a_worker_killed_mid_unit_is_replaced_and_its_unit_rerun(runs: tuple[SuiteSpec, Path, Path, list[int]]) -> None:
    spec, _, on_ray, killed = runs
    assert len(killed) == 1
    # Every unit of good data finished despite the kill: the replica was restarted and the unit run again.
    data = json.loads((on_ray / SUITE_JSON).read_text())
    assert all(u["outcome"] == "done" for u in data["units"] if u["unit"]["task"] != spec.tasks[2])
    assert not any("died" in (u["error"] or "") for u in data["units"])


def test_workers_asking_for_more_than_the_cluster_has_are_refused(runs: tuple[SuiteSpec, Path, Path, list[int]],
                                                                   tmp_path: Path) -> None:
    # A replica that cannot be placed would wait forever: refused before any is started.
    spec = runs[0]
    gpus = ray.cluster_resources().get("GPU", 0)
    with pytest.raises(ConfigError, match=f"a suite worker needs {gpus + 1:g} GPU\\(s\\) but the Ray cluster has "
                                          f"{gpus:g}: lower --gpus-per-worker"):
        run_suite(spec, tmp_path, workers=2, gpus_per_worker=gpus + 1)
    assert not (tmp_path / "units").exists()
