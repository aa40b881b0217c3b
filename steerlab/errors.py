"""One exception type per user-facing failure kind.

Every message names the file, line, field or value at fault, so the CLI can print it as one line.
"""

from __future__ import annotations

from pathlib import Path


class SteerlabError(Exception):
    """Base class of every error steerlab raises on purpose."""


class DataError(SteerlabError):
    """Bad input data: a pairs file, a task file, a dataset id."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field


class ModelError(SteerlabError):
    """A model that cannot be loaded, or whose architecture steerlab does not know."""


class VectorFileError(SteerlabError):
    """A steering file that is malformed, or that does not fit the model it is used with."""


class ConfigError(SteerlabError):
    """Inconsistent settings: an unknown method, a layer out of range, too few items for a method."""
