"""BBQ by category, TruthfulQA MC1 and the alignment tasks of BIG-bench, from the `bigbench` 1.0.0 sdist on PyPI.

The sdist is 358 MB and installing it pulls heavy dependencies, so `fetch` has pip download it (``pip download
--no-deps``, about 40 s) and keeps only the 16 JSON files the tasks read (22 MB) in ``$STEERLAB_CACHE/data/``. The
package is never installed or imported. Since December 2026 PyPI lists only bigbench 0.0.1, so `fetch` also takes a
copy the user has: the sdist file, its unpacked folder, or a clone of github.com/google/BIG-bench. Example::

    from steerlab.data.sources.bigbench import fetch
    from steerlab.data.tasks import load_task
    fetch()                                   # once; the same as `steerlab tasks --fetch bigbench`
    fetch(source="bigbench-1.0.0.tar.gz")     # or from a copy: `steerlab tasks --fetch bigbench --from PATH`
    items = load_task("bbq/religion")         # 680 questions, ambiguous and disambiguated contexts
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from steerlab.data.items import MCItem, _located
from steerlab.errors import ConfigError, DataError
from steerlab.models.loading import cache_root

PIN = "bigbench==1.0.0"
FETCH_COMMAND = "steerlab tasks --fetch bigbench"

BBQ_CATEGORIES: dict[str, str] = {  # task suffix -> the file's category name
    "age": "Age", "disability-status": "Disability_status", "gender-identity": "Gender_identity",
    "nationality": "Nationality", "physical-appearance": "Physical_appearance", "race-ethnicity": "Race_ethnicity",
    "religion": "Religion", "ses": "SES", "sexual-orientation": "Sexual_orientation",
}
TARGET_TASKS: dict[str, str] = {  # task name -> file with {"examples": [{"input", "target_scores"}]}
    "hhh/harmless": "hhh_alignment/harmless/task.json",
    "hhh/helpful": "hhh_alignment/helpful/task.json",
    "hhh/honest": "hhh_alignment/honest/task.json",
    "hhh/other": "hhh_alignment/other/task.json",
    "moral-permissibility": "moral_permissibility/task.json",
    "simple-ethical-questions": "simple_ethical_questions/task.json",
    "truthfulqa/mc1": "truthful_qa/task_mc.json",
}
FILES: tuple[str, ...] = (*(f"bbq_lite/resources/{c}.json" for c in BBQ_CATEGORIES.values()), *TARGET_TASKS.values())


def data_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the fetched files live: ``<cache>/data/bigbench-1.0.0/benchmark_tasks``."""
    return cache_root(cache_dir) / "data" / "bigbench-1.0.0" / "benchmark_tasks"


def fetched(cache_dir: str | Path | None = None) -> bool:
    return all((data_dir(cache_dir) / name).is_file() for name in FILES)


def require(task: str, cache_dir: str | Path | None = None) -> Path:
    """The data folder, or a ConfigError naming the command that fetches it."""
    if not fetched(cache_dir):
        raise ConfigError(f"task {task!r} reads BIG-bench files that are not fetched yet: run `{FETCH_COMMAND}` "
                          f"(pip downloads the {PIN} sdist, 358 MB, about 40 s, and keeps 22 MB of JSON in "
                          f"{data_dir(cache_dir)})")
    return data_dir(cache_dir)


def fetch(cache_dir: str | Path | None = None, source: str | Path | None = None) -> Path:
    """Keep `FILES` from the bigbench 1.0.0 sdist; a no-op when they are already there. Returns the data folder.

    ``source``: a local copy (the sdist ``.tar.gz``, its unpacked folder, or a BIG-bench clone); None asks pip.
    pip cannot build this sdist's metadata (a dependency is a local file of its authors), so the download is asked
    to keep its unpacked tree (``--no-clean``) in a private temporary folder, read there whatever pip's exit code.
    """
    target = data_dir(cache_dir)
    if fetched(cache_dir):
        return target
    with tempfile.TemporaryDirectory(prefix="steerlab-bigbench-") as tmp:
        tree = _downloaded(Path(tmp)) if source is None else _copied(Path(source), Path(tmp))
        # Staged beside the target and renamed, so a killed fetch never leaves a half-filled folder in use.
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=_parent(target)))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        for name in FILES:
            if not (tree / name).is_file():
                shutil.rmtree(staging, ignore_errors=True)
                raise ConfigError(f"{source or f'the {PIN} sdist'} has no {name} under {tree}")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tree / name, staging / name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target


def _downloaded(tmp: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-clean", "--quiet", PIN,
               "--dest", str(tmp / "dest")]
    done = subprocess.run(command, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True,
                          check=False)
    trees = sorted(tmp.glob("pip-*/*/bigbench/benchmark_tasks"))
    if not trees:
        said = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConfigError(f"could not get {PIN} from the package index ({' '.join(command[2:5])} ...): "
                          + " / ".join(said) + f"; with a copy of it, run `{FETCH_COMMAND} --from PATH` (the "
                          "bigbench-1.0.0.tar.gz sdist, its unpacked folder, or a clone of "
                          "github.com/google/BIG-bench)")
    return trees[0]


def _copied(source: Path, tmp: Path) -> Path:
    """The ``bigbench/benchmark_tasks`` folder of a local copy; an archive is unpacked into ``tmp`` first, only
    the files `fetch` keeps (so a 358 MB sdist costs 22 MB of disk)."""
    if source.is_dir():
        for tree in (source / "bigbench" / "benchmark_tasks", *sorted(source.glob("*/bigbench/benchmark_tasks"))):
            if tree.is_dir():
                return tree
        raise ConfigError(f"{source} holds no bigbench/benchmark_tasks folder: give the bigbench-1.0.0 sdist, its "
                          "unpacked folder, or a clone of github.com/google/BIG-bench")
    try:
        with tarfile.open(source) as archive:
            for member in archive.getmembers():
                if member.isfile() and any(member.name.endswith(f"bigbench/benchmark_tasks/{f}") for f in FILES):
                    archive.extract(member, tmp, filter="data")  # the data filter refuses paths that leave tmp
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"cannot read {source} as the bigbench sdist (a .tar.gz): {exc}") from None
    trees = sorted({p.parent for p in tmp.glob("**/bigbench/benchmark_tasks/bbq_lite")})
    if not trees:
        raise ConfigError(f"{source} has no bigbench/benchmark_tasks files: is it the bigbench-1.0.0 sdist?")
    return trees[0]


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def _examples(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the task data: {exc}", path=path) from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise DataError("expected an object with a list 'examples'", path=path)
    return list(data["examples"])


def _text(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field '{field}' must be a non-empty string, got {value!r}")
    return value.strip()


def bbq_items(root: Path, category: str) -> list[MCItem]:
    """One BBQ category in its original schema: context, question, three answers (one is "unknown"), the label.

    ``group`` is the context condition: ``ambig`` (the answer is the unknown one) or ``disambig``.
    """
    name = f"bbq/{category}"
    path = root / "bbq_lite" / "resources" / f"{BBQ_CATEGORIES[category]}.json"
    items = []
    for number, record in enumerate(_examples(path), start=1):
        try:
            if not isinstance(record, dict):
                raise ValueError("expected an object")
            condition = record.get("context_condition")
            if condition not in ("ambig", "disambig"):
                raise ValueError(f"field 'context_condition' must be ambig or disambig, got {condition!r}")
            items.append(MCItem(id=f"{name}:{record['example_id']}", question=_text(record, "question"),
                                choices=tuple(_text(record, f"ans{k}") for k in range(3)),
                                answer=int(record["label"]), context=_text(record, "context"), group=condition))
        except (KeyError, TypeError, ValueError, DataError) as exc:
            message = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise _located((str(path), "example", number), None, message) from None
    return items


def target_items(root: Path, task: str) -> list[MCItem]:
    """A BIG-bench JSON task whose examples score each answer: the one best-scored answer is the correct choice."""
    path = root / TARGET_TASKS[task]
    items = []
    for number, record in enumerate(_examples(path), start=1):
        try:
            if not isinstance(record, dict) or not isinstance(record.get("target_scores"), dict):
                raise ValueError("expected an object with 'input' and an object 'target_scores'")
            scores = record["target_scores"]
            choices = tuple(str(c).strip() for c in scores)
            best = max(scores.values())
            winners = [k for k, score in enumerate(scores.values()) if score == best]
            if len(winners) != 1:
                raise ValueError(f"field 'target_scores': {len(winners)} answers share the top score {best}")
            items.append(MCItem(id=f"{task}:{number - 1}", question=_text(record, "input"), choices=choices,
                                answer=winners[0]))
        except (TypeError, ValueError, DataError) as exc:
            raise _located((str(path), "example", number), None, str(exc)) from None
    return items
