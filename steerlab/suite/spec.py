"""What a suite is: a grid of ``steerlab run`` units (models x tasks x methods x seeds) and the settings they share.

A unit is one method on one task, one model and one seed: the smallest piece that is still a complete ``steerlab
run`` with its own report, so a suite resumes unit by unit and its aggregate is rendered from the units' reports.

Example::

    from steerlab.experiment.config import RunConfig
    from steerlab.suite.spec import SuiteSpec
    spec = SuiteSpec(tasks=("caa/refusal", "caa/myopic-reward"), methods=("ipas-wo", "caa"), seeds=(0, 1),
                     run=RunConfig(n_train=32, n_val=16, n_test=32))
    print(len(spec.units()))  # 8 units on the embedded model
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from steerlab._version import __version__
from steerlab.errors import ConfigError, DataError
from steerlab.experiment.config import RunConfig
from steerlab.methods.pas import PAS_METHODS
from steerlab.models.loading import DTYPES

EMBEDDED = "embedded"  # the model name that stands for steerlab's embedded default model

# RunConfig fields a suite sets per unit; the others are shared by every unit and come from ``run``.
_PER_UNIT = {"task", "methods", "seed", "seeds"}
_SPEC_FIELDS = {"tasks", "models", "methods", "seeds", "dtype", "device", "device_map", "run"}


@dataclass(frozen=True)
class Unit:
    """One ``steerlab run``: ``method`` on ``task`` with ``model`` at one ``seed``."""

    model: str
    task: str
    method: str
    seed: int

    @property
    def folder(self) -> str:
        """Its folder under the suite's ``units/``: readable, one level per grid axis."""
        return "/".join([_slug(self.model), _slug(self.task), f"{self.method}-seed{self.seed}"])

    @property
    def label(self) -> str:
        return f"{self.model} / {self.task} / {self.method} / seed {self.seed}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


@dataclass(frozen=True)
class SuiteSpec:
    """The grid and the settings every unit shares (``run``: a RunConfig whose task, methods and seeds are ignored).

    ``models`` are hub ids, model folders or .gguf files, or ``"embedded"``; ``tasks`` are built-in task names,
    data files or ``hf:`` datasets. ``dtype`` is fp32, bf16 or fp16; ``device`` a torch device; ``device_map`` an
    accelerate device map such as ``"auto"`` (instead of ``device``).
    """

    tasks: tuple[str, ...]
    methods: tuple[str, ...] = ("ipas-wo",)
    seeds: tuple[int, ...] = (0,)
    models: tuple[str, ...] = (EMBEDDED,)
    run: RunConfig = field(default_factory=RunConfig)
    dtype: str = "fp32"
    device: str | None = None
    device_map: str | None = None

    def __post_init__(self) -> None:
        for name in ("tasks", "methods", "seeds", "models"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"the suite has no {name}")
            if len(set(values)) != len(values):
                raise ConfigError(f"the suite's {name} repeat a value: {list(values)}")
        for name in ("tasks", "models"):  # a unit's folder names them by slug
            folders: dict[str, str] = {}
            for value in getattr(self, name):
                other = folders.setdefault(_slug(value), value)
                if other != value:
                    raise ConfigError(f"the suite's {name} {other!r} and {value!r} would share the unit folder "
                                      f"{_slug(value)!r}: rename one of them")
        unknown = [m for m in self.methods if m not in PAS_METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; choose from {', '.join(PAS_METHODS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.device is not None and self.device_map is not None:
            raise ConfigError("give a device or a device map, not both")

    def units(self) -> list[Unit]:
        """Every unit, grouped by model (a worker loads a model once and runs its units), then task, method, seed."""
        return [Unit(model, task, method, seed) for model in self.models for task in self.tasks
                for method in self.methods for seed in self.seeds]

    def config(self, unit: Unit) -> RunConfig:
        """The ``steerlab run`` settings of one unit."""
        return replace(self.run, task=unit.task, methods=(unit.method,), seed=unit.seed, seeds=1)

    def unit_key(self, unit: Unit) -> str:
        """A digest of everything a unit's finished report depends on that its folder name does not say.

        The run's own store keys cover the weights and the items; this key decides whether a finished report
        is still the answer (a changed setting, dtype, data file or steerlab version runs the unit again).
        """
        data = Path(unit.task)
        digest = hashlib.sha256(data.read_bytes()).hexdigest() if data.is_file() else None
        parts = [__version__, asdict(unit), asdict(self.config(unit)), self.dtype, self.device, self.device_map,
                 digest, _files_signature(Path(unit.model))]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _files_signature(path: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and modification times of a local model's files: a model retrained in place runs again."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return [(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns)
            for p in files]


def load_spec(path: str | Path) -> SuiteSpec:
    """A suite from a YAML or JSON file: ``tasks``, ``methods``, ``seeds`` (a count or a list), ``models``,
    ``dtype``, ``device``, ``device_map`` and ``run`` (any ``steerlab run`` setting, e.g. ``n_test: 64``).

    Relative data-file and model-folder paths are read from the spec file's folder.
    """
    source = Path(path)
    try:
        text = source.read_text("utf-8")
    except OSError as exc:
        raise DataError(f"cannot read the suite file: {exc.strerror}", path=source) from None
    data = _parse(source, text)
    if not isinstance(data, dict):
        raise DataError(f"a suite file holds a mapping of {sorted(_SPEC_FIELDS)}, got {type(data).__name__}",
                        path=source)
    unknown = sorted(set(data) - _SPEC_FIELDS)
    if unknown:
        raise DataError(f"unknown field(s) {unknown}; a suite file has {sorted(_SPEC_FIELDS)}", path=source,
                        field=unknown[0])
    if "tasks" not in data:
        raise DataError("the suite needs its tasks", path=source, field="tasks")
    here = source.parent

    def names(field: str, default: list[str]) -> tuple[str, ...]:
        value = data.get(field, default)
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(f"expected a name or a list of names, got {value!r}", path=source, field=field)
        return tuple(value)

    def local(name: str) -> str:
        # A path relative to the spec file, when it names something there; names of tasks and hub ids pass through.
        return str(here / name) if not Path(name).is_absolute() and (here / name).exists() else name

    seeds = data.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):
        raise DataError(f"expected a count of seeds or a list of integers, got {seeds!r}", path=source,
                        field="seeds")
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise DataError(f"expected a mapping of steerlab run settings, got {run!r}", path=source, field="run")
    allowed = {f.name for f in fields(RunConfig)} - _PER_UNIT
    bad = sorted(set(run) - allowed)
    if bad:
        raise DataError(f"unknown setting(s) {bad}; run takes {sorted(allowed)}", path=source, field=f"run.{bad[0]}")
    settings: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in run.items()}
    try:
        return SuiteSpec(tasks=tuple(local(t) for t in names("tasks", [])), methods=names("methods", ["ipas-wo"]),
                         seeds=tuple(seeds), models=tuple(local(m) for m in names("models", [EMBEDDED])),
                         run=RunConfig(**settings), dtype=str(data.get("dtype", "fp32")),
                         device=data.get("device"), device_map=data.get("device_map"))
    except (ConfigError, TypeError) as exc:
        raise DataError(str(exc), path=source) from None


def _parse(source: Path, text: str) -> Any:
    if source.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", path=source, line=exc.lineno) from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DataError(f"not valid YAML: {getattr(exc, 'problem', exc)}", path=source,
                        line=None if mark is None else mark.line + 1) from None
