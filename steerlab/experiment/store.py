"""A folder of finished pieces of work, so an interrupted run resumes where it stopped.

Each entry is written atomically under a key that hashes everything it depends on, so a changed setting never
reuses a stale entry, and an entry is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from steerlab.core.vector import SteeringVector, atomic_output
from steerlab.errors import DataError

T = TypeVar("T")


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Store:
    """Entries under ``folder``; ``None`` folder means nothing is kept (every call computes)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str, suffix: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}{suffix}"

    def json(self, key: str, compute: Callable[[], T]) -> tuple[T, float]:
        """The stored value of ``key`` and the seconds it took when first computed, computing it if absent."""
        path = self._path(key, ".json")
        if path is not None and path.exists():
            try:
                entry = json.loads(path.read_text("utf-8"))
                return entry["value"], float(entry["seconds"])
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:  # edited or damaged by hand
                raise DataError(f"unreadable store entry ({type(exc).__name__}: {exc}); delete the file and the "
                                "run computes it again", path=path) from None
        start = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - start
        if path is not None:
            with atomic_output(path) as tmp:
                tmp.write_text(json.dumps({"value": value, "seconds": seconds}))
        return value, seconds

    def vector(self, key: str, compute: Callable[[], SteeringVector]) -> tuple[SteeringVector, float]:
        path = self._path(key, ".safetensors")
        timing = self._path(key, ".seconds")
        if path is not None and timing is not None and path.exists() and timing.exists():
            return SteeringVector.load(path), float(timing.read_text())
        start = time.perf_counter()
        vector = compute()
        seconds = time.perf_counter() - start
        if path is not None and timing is not None:
            vector.save(path)
            with atomic_output(timing) as tmp:
                tmp.write_text(repr(seconds))
        return vector, seconds
