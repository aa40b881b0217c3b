"""Contrast pairs and multiple-choice items: loading, validation, per-item shuffling and splitting.

Two kinds of data feed steering. Contrast pairs (`load_pairs`) give one text that shows a behaviour and
one that does not. Multiple-choice items (`load_items`) give a question, its choices and the index of
the correct (or behaviour-matching) choice; they train vectors from labelled data and score them.

Every validation error is a `DataError` naming the file, the place in it and the field. The place is a
line number for JSONL and CSV files, "record N" (1-based) for JSON lists and "row N" (0-based, as
`dataset[N]`) for Hugging Face datasets.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError, DataError


@dataclass(frozen=True)
class ContrastPair:
    """Two texts that differ in the behaviour to steer.

    When `prompt` is set it is the user turn, and `positive` / `negative` are assistant answers to it.
    """

    positive: str
    negative: str
    prompt: str | None = None


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question; `answer` indexes the correct (or behaviour-matching) choice."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    context: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        # Scoring and shuffling index into `choices`, so a broken item must not get that far.
        problem = _item_problem(self.question, self.choices, self.answer)
        if problem is not None:
            raise DataError(problem[1], field=problem[0])


@dataclass(frozen=True)
class FieldMap:
    """Names of the record fields `load_items` reads each MCItem attribute from."""

    id: str = "id"
    question: str = "question"
    choices: str = "choices"
    answer: str = "answer"
    context: str = "context"
    group: str = "group"


@dataclass(frozen=True)
class Splits:
    """Disjoint train / validation / test items, as made by `split_items`."""

    train: list[MCItem]
    val: list[MCItem]
    test: list[MCItem]


class _Invalid(Exception):
    """A record that cannot be used; the caller adds which file and line it came from."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# A record's origin: the path shown in errors, the unit ("line", "record" or "row") and its number.
_Origin = tuple[str, str, int]


def _located(origin: _Origin, field: str | None, message: str) -> DataError:
    path, unit, number = origin
    if unit == "line":
        return DataError(message, path=path, line=number, field=field)
    # DataError writes "path:N", which would read as a line number; say "record N" / "row N" instead.
    error = DataError(message, path=f"{path} {unit} {number}", field=field)
    error.path, error.line = path, number
    return error


def _place(origin: _Origin) -> str:
    return f"{origin[1]} {origin[2]}"


# ---------------------------------------------------------------------------------------------------
# Reading records


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("no such file", path=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", path=path) from None


def _json_records(path: Path) -> Iterator[tuple[_Origin, Any]]:
    """Records of a JSONL file (``*.jsonl``), or of a JSON list if any other file's text starts with "["."""
    text = _read_text(path)
    shown = str(path)
    if path.suffix.lower() != ".jsonl" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path,
                            line=exc.lineno) from None
        for index, record in enumerate(records, start=1):
            yield (shown, "record", index), record
        return
    if path.suffix.lower() == ".json" and text.lstrip().startswith("{") and "\n" in text.strip():
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):  # one pretty-printed object: read line by line it is "invalid JSON" at line 1
            raise DataError(f"holds one JSON object (keys {sorted(whole)[:5]}); give a list of items or JSON Lines, "
                            "one item per line", path=path)
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other Unicode line breaks.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path,
                            line=number) from None
        yield (shown, "line", number), record


def _csv_records(path: Path) -> Iterator[tuple[_Origin, Any]]:
    rows = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    for row in rows:
        # Short rows give None for missing cells (fewer choices), long rows put the surplus under the key None.
        surplus = [cell for cell in row.get(None) or [] if cell.strip()]
        if surplus:
            raise DataError(f"{len(surplus)} cell(s) beyond the header's {len(rows.fieldnames or [])} columns, "
                            f"from {surplus[0]!r} (an unquoted comma?)", path=path, line=rows.line_num)
        cells = {key: value for key, value in row.items() if key is not None and value is not None}
        yield (str(path), "line", rows.line_num), cells


# ---------------------------------------------------------------------------------------------------
# Contrast pairs


def _pair_text(record: Mapping[str, Any], field: str) -> str:
    if record.get(field) is None:
        raise _Invalid(field, "missing field")
    value = record[field]
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise _Invalid(field, "empty text")
    return value


def _pair(record: Any) -> ContrastPair:
    if not isinstance(record, dict):
        raise _Invalid(None, f"expected a JSON object, got {type(record).__name__}")
    # Texts are kept verbatim: leading spaces and newlines change tokenization.
    preference = not record.keys() & {"positive", "negative"} and record.keys() & {"chosen", "rejected"}
    pos_key, neg_key = ("chosen", "rejected") if preference else ("positive", "negative")
    positive = _pair_text(record, pos_key)
    negative = _pair_text(record, neg_key)
    prompt = None if record.get("prompt") is None else _pair_text(record, "prompt")
    if positive == negative:
        raise _Invalid(neg_key, f"same text as '{pos_key}'")
    return ContrastPair(positive=positive, negative=negative, prompt=prompt)


def load_pairs(path: str | Path) -> list[ContrastPair]:
    """Read contrast pairs from a JSONL file, or a JSON list (a non-``.jsonl`` file starting with "[").

    Each record is `{"positive", "negative"[, "prompt"]}` or the preference format
    `{"prompt", "chosen", "rejected"}` (chosen is the positive side). A prompt makes the texts answers
    to it. Blank JSONL lines are skipped.
    """
    path = Path(path)
    pairs = []
    for origin, record in _json_records(path):
        try:
            pairs.append(_pair(record))
        except _Invalid as exc:
            raise _located(origin, exc.field, exc.message) from None
    if not pairs:
        raise DataError("no pairs in file", path=path)
    return pairs


# ---------------------------------------------------------------------------------------------------
# Multiple-choice items

_LETTERED = re.compile(r"(?m)^[ \t]*\(?([A-Z])[.)][ \t]+")
_LETTER = re.compile(r"\(?([A-Za-z])[.):]?\)?")
_LETTER_TEXT = re.compile(r"\(?([A-Z])[.)]\s+(.*)", re.DOTALL)


def _split_lettered(text: str) -> tuple[str, tuple[str, ...]] | None:
    """Split "preamble\\nA. x\\nB. y" (also "A) x", "(A) x") into the preamble and the choice texts.

    The chain starts at the first line labelled A and takes the next letters in order; other lines,
    including ones that happen to start with a later letter, continue the previous choice.
    """
    marks: list[re.Match[str]] = []
    for mark in _LETTERED.finditer(text):
        if mark.group(1) == chr(ord("A") + len(marks)):
            marks.append(mark)
    if len(marks) < 2:
        return None
    ends = [mark.start() for mark in marks[1:]] + [len(text)]
    texts = tuple(text[mark.end():end].strip() for mark, end in zip(marks, ends, strict=True))
    return text[:marks[0].start()], texts


def _item_problem(question: str, choices: Sequence[str], answer: int) -> tuple[str, str] | None:
    """The (field, message) that makes an item invalid, if any."""
    if not question.strip():
        return "question", "empty question"
    if len(choices) < 2:
        return "choices", f"needs at least 2 choices, got {len(choices)}"
    for index, choice in enumerate(choices):
        if not choice.strip():
            return "choices", f"choice {index} is empty"
    seen: set[str] = set()
    for choice in choices:
        if choice in seen:
            return "choices", f"duplicate choice {choice!r}"
        seen.add(choice)
    if not 0 <= answer < len(choices):
        return "answer", f"answer index {answer} is out of range for {len(choices)} choices"
    return None


def _choice_list(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _Invalid(field, f"expected a list of strings, got {type(value).__name__}")
    for index, choice in enumerate(value):
        if not isinstance(choice, str):
            raise _Invalid(field, f"choice {index} is not a string (got {type(choice).__name__})")
    return tuple(choice.strip() for choice in value)


def _choices(record: Mapping[str, Any], field: str) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """The choice texts, and their labels when the source gives them (Hugging Face {"text", "label"})."""
    if field not in record or record[field] is None:
        return _choice_columns(record, field), None
    value = record[field]
    if isinstance(value, dict) and "text" in value:
        texts = _choice_list(value["text"], field)
        labels = value.get("label")
        if labels is None:
            return texts, None
        if not isinstance(labels, list | tuple) or len(labels) != len(texts):
            raise _Invalid(field, "'label' must be a list as long as 'text'")
        return texts, tuple(str(label) for label in labels)
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise _Invalid(field, f"invalid JSON list: {exc.msg}") from None
        else:
            lettered = _split_lettered(value)
            if lettered is None:
                raise _Invalid(field, "expected a list, a JSON-encoded list or lettered lines 'A. ...'")
            return lettered[1], None
    return _choice_list(value, field), None


def _choice_columns(record: Mapping[str, Any], field: str) -> tuple[str, ...]:
    """Choices spread over columns choice_0, choice_1, ... or A, B, ...; trailing empty cells end them."""
    for name in (lambda i: f"choice_{i}", lambda i: chr(ord("A") + i)):
        cells: list[Any] = []
        while name(len(cells)) in record:
            cells.append(record[name(len(cells))])
        while cells and (cells[-1] is None or cells[-1] == ""):
            cells.pop()
        if cells:
            return _choice_list(cells, name(0))
    raise _Invalid(field, "missing field (and no choice_0.. or A.. columns)")


def _resolve_answer(value: Any, choices: Sequence[str], labels: Sequence[str] | None = None) -> int:
    """Index of the answer given as an index, a letter, a choice text, a label or "B. text".

    Raises ValueError saying what is wrong with the value.
    """
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(choices):
            raise ValueError(f"answer index {value} is out of range for {len(choices)} choices")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an index, a letter or a choice text, got {value!r}")
    text = value.strip()
    if labels is not None and text in labels:
        return labels.index(text)
    if text in choices:
        if text.isdecimal() and int(text) < len(choices) and int(text) != choices.index(text):
            raise ValueError(f"answer {value!r} is the text of choice {choices.index(text)} and also the index "
                             f"{int(text)}: give it as a letter ({chr(65 + choices.index(text))} for the text) "
                             "or as a JSON integer index")
        return choices.index(text)
    letter = _LETTER.fullmatch(text)
    if letter is not None:
        index = ord(letter.group(1).upper()) - ord("A")
        if index < len(choices):
            return index
    elif text.isdecimal() and int(text) < len(choices):
        return int(text)
    lettered = _LETTER_TEXT.fullmatch(text)
    if lettered is not None:
        index = ord(lettered.group(1)) - ord("A")
        if index < len(choices) and choices[index] == lettered.group(2).strip():
            return index
    raise ValueError(f"answer {value!r} is not among the {len(choices)} choices")


def _optional_text(record: Mapping[str, Any], field: str) -> str | None:
    value = record.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(field, f"expected a string, got {type(value).__name__}")
    return str(value).strip() or None


def _item(record: Any, fields: FieldMap, default_id: str) -> MCItem:
    if not isinstance(record, dict):
        raise _Invalid(None, f"expected an object, got {type(record).__name__}")
    if record.get(fields.question) is None:
        raise _Invalid(fields.question, "missing field")
    question = record[fields.question]
    if not isinstance(question, str):
        raise _Invalid(fields.question, f"expected a string, got {type(question).__name__}")
    choices, labels = _choices(record, fields.choices)
    if record.get(fields.answer) is None:
        raise _Invalid(fields.answer, "missing field")
    problem = _item_problem(question, choices, 0)  # the answer is checked by _resolve_answer
    if problem is not None:
        raise _Invalid(fields.question if problem[0] == "question" else fields.choices, problem[1])
    try:
        answer = _resolve_answer(record[fields.answer], choices, labels)
    except ValueError as exc:
        raise _Invalid(fields.answer, str(exc)) from None
    item_id = _optional_text(record, fields.id) or default_id
    return MCItem(id=item_id, question=question.strip(), choices=choices, answer=answer,
                  context=_optional_text(record, fields.context), group=_optional_text(record, fields.group))


def _hf_records(source: str, split: str | None,
                config: str | None) -> tuple[str, Iterator[tuple[_Origin, Any]]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"reading {source!r} needs the datasets package: pip install datasets "
                          "(or pip install 'steerlab[data]')") from None
    name = source.removeprefix("hf:")
    try:
        if Path(name).is_dir():
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                wanted = split or "train"
                if wanted not in loaded:
                    raise DataError(f"no split {wanted!r}; the dataset has {sorted(loaded)}", path=source)
                loaded = loaded[wanted]
            label = Path(name).name
        else:
            hub_id, _, hub_config = name.partition(":")
            if hub_config and config and hub_config != config:
                raise ConfigError(f"{source!r} names config {hub_config!r} but config={config!r} was passed")
            loaded = datasets.load_dataset(hub_id, hub_config or config, split=split or "train")
            label = hub_id
    except (DataError, ConfigError):
        raise
    except Exception as exc:  # datasets raises many kinds (hub, network, format); all mean "cannot load"
        raise DataError(f"cannot load dataset: {exc}", path=source) from exc
    return label, (((source, "row", index), row) for index, row in enumerate(loaded))


def load_items(source: str | Path, *, fields: FieldMap = FieldMap(), split: str | None = None,
               config: str | None = None) -> list[MCItem]:
    """Read multiple-choice items from a file or a Hugging Face dataset.

    Sources:
      - ``*.csv``: a header row, then one item per row;
      - ``*.jsonl``: one JSON object a line, blank lines skipped;
      - any other file: a JSON list if the text starts with "[", else JSONL;
      - ``"hf:ID"`` or ``"hf:ID:CONFIG"``: ``datasets.load_dataset(ID, CONFIG, split=split or "train")``,
        or ``datasets.load_from_disk(ID)`` when ID is a local folder (a saved DatasetDict gives up
        `split`, default "train"). Needs the optional `datasets` package.

    `fields` names the record fields. Choices are a list of strings, a JSON-encoded list (as CSV cells
    are), lettered lines "A. x\\nB. y", a Hugging Face ``{"text": [...], "label": [...]}`` mapping, or, when
    the choices field is absent, columns ``choice_0, choice_1, ...`` or ``A, B, ...`` (trailing empty cells
    are ignored, so rows may have fewer choices). Choice texts are stripped. The answer is an index (an int
    or a digit string), a letter ("A", "b", "(C)"), the text of a choice, a label of the Hugging Face
    mapping, or "B. text"; a one-element list holding one of these is accepted too. The id defaults to
    "<file stem>:<line>" (the record number for JSON lists, the row index for datasets); empty context
    and group become None.
    """
    if isinstance(source, str) and source.startswith("hf:"):
        stem, records = _hf_records(source, split, config)
    else:
        path = Path(source)
        stem = path.stem
        records = _csv_records(path) if path.suffix.lower() == ".csv" else _json_records(path)
    items: list[MCItem] = []
    first_seen: dict[str, _Origin] = {}
    asked: dict[tuple[str, str | None, tuple[str, ...]], _Origin] = {}
    for origin, record in records:
        try:
            item = _item(record, fields, f"{stem}:{origin[2]}")
        except _Invalid as exc:
            raise _located(origin, exc.field, exc.message) from None
        if item.id in first_seen:
            also = _place(first_seen[item.id])
            raise _located(origin, fields.id, f"duplicate id {item.id!r} (also on {also})")
        question = (item.question, item.context, item.choices)
        if question in asked:  # the two copies could land in train and test: the test would score training data
            raise _located(origin, fields.question, f"the same question, context and choices as on "
                                                    f"{_place(asked[question])}: keep each question once")
        first_seen[item.id] = origin
        asked[question] = origin
        items.append(item)
    if not items:
        raise DataError("no items found", path=str(source))
    return items


# ---------------------------------------------------------------------------------------------------
# Shuffling and splitting


def _rng(seed: int, key: str) -> random.Random:
    # hashlib rather than hash(): str hashes change between processes (PYTHONHASHSEED).
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def shuffle_choices(item: MCItem, seed: int) -> MCItem:
    """The item with its choices permuted by a permutation drawn from (seed, item.id).

    Each item gets its own permutation, so the correct letter is spread over positions rather than
    moved to one position for every item.
    """
    order = list(range(len(item.choices)))
    _rng(seed, item.id).shuffle(order)
    return replace(item, choices=tuple(item.choices[i] for i in order), answer=order.index(item.answer))


def split_items(items: Sequence[MCItem], n_train: int, n_val: int, n_test: int, seed: int) -> Splits:
    """Disjoint train/val/test splits, stratified by (group, answer index).

    Each stratum is shuffled and its items are spread evenly over one merged order (item k of a stratum
    of n sits at (k + offset) / n); the splits are consecutive runs of that order, so each keeps the
    strata proportions to within about one item per stratum. Items are sorted by id first, so the
    result depends only on the set of items and the seed.
    """
    for name, count in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if count < 0:
            raise ConfigError(f"{name} must be >= 0, got {count}")
    wanted = n_train + n_val + n_test
    if wanted > len(items):
        raise ConfigError(f"asked for {n_train} + {n_val} + {n_test} = {wanted} items but only "
                          f"{len(items)} exist")
    ordered = sorted(items, key=lambda it: (it.id, it.question, it.choices, it.answer,
                                             it.context or "", it.group or ""))
    strata: dict[tuple[str, int], list[MCItem]] = defaultdict(list)
    for item in ordered:
        strata[(item.group or "", item.answer)].append(item)
    keyed: list[tuple[float, int, MCItem]] = []
    for rank, key in enumerate(sorted(strata)):
        members = strata[key]
        rng = _rng(seed, f"{key[0]}\x00{key[1]}")
        rng.shuffle(members)
        offset = rng.random()
        keyed.extend(((k + offset) / len(members), rank, item) for k, item in enumerate(members))
    keyed.sort(key=lambda entry: entry[:2])
    merged = [item for _, _, item in keyed]
    return Splits(train=merged[:n_train], val=merged[n_train:n_train + n_val],
                  test=merged[n_train + n_val:wanted])
