"""Helpers shared by the benchmark scripts: thread count, machine load, medians, table printing."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
HIGH_LOAD = 2.5  # 1-minute load average above which timings on this 2-core machine are disturbed


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def load_line(when: str, threads: int) -> str:
    one, five, fifteen = os.getloadavg()
    line = f"machine load {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"
    if one > HIGH_LOAD:
        line += (
            f"  -- HIGH: other processes share the cores, timings are slower and noisier than on an idle "
            f"machine ({threads} threads here)"
        )
    return line


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds, and CPU seconds of this process (all its threads).

    On a shared machine the wall time includes the time other processes held the cores; the CPU time
    mostly does not (it still grows with cache sharing, and with OpenMP threads spinning while their partner
    waits for a core).
    """

    wall: float
    cpu: float


def timed(fn: Callable[[], T]) -> tuple[T, Timing]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, Timing(time.perf_counter() - wall, time.process_time() - cpu)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
    ]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
