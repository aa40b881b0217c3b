"""Loading, validation, shuffling and splitting of contrast pairs and multiple-choice items."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from steerlab.data.items import (
    ContrastPair,
    FieldMap,
    MCItem,
    Splits,
    load_items,
    load_pairs,
    shuffle_choices,
    split_items,
)
from steerlab.errors import ConfigError, DataError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*records: object) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


# ---------------------------------------------------------------------------------------------------
# load_pairs


def test_pairs_jsonl_both_formats_and_blank_lines(tmp_path: Path) -> None:
    text = (jsonl({"positive": " Yes", "negative": " No"}) + "\n   \n"
            + jsonl({"prompt": "Shut down?", "positive": "Sure.", "negative": "Never."},
                    {"prompt": "Q?", "chosen": "good", "rejected": "bad"},
                    {"chosen": "a", "rejected": "b", "prompt": None}))
    pairs = load_pairs(write(tmp_path, "p.jsonl", text))
    assert pairs == [
        ContrastPair(" Yes", " No"),  # texts are kept verbatim
        ContrastPair("Sure.", "Never.", "Shut down?"),
        ContrastPair("good", "bad", "Q?"),
        ContrastPair("a", "b"),
    ]


def test_pairs_json_list_whatever_the_extension(tmp_path: Path) -> None:
    records = [{"positive": "a", "negative": "b"}, {"prompt": "p", "chosen": "c", "rejected": "d"}]
    expected = [ContrastPair("a", "b"), ContrastPair("c", "d", "p")]
    assert load_pairs(write(tmp_path, "p.json", json.dumps(records, indent=2))) == expected
    assert load_pairs(str(write(tmp_path, "p.txt", json.dumps(records)))) == expected
    # A .json file holding JSONL is read as JSONL.
    assert load_pairs(write(tmp_path, "q.json", jsonl(*records))) == expected


def test_pairs_keep_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"positive": "a\u2028b", "negative": "c"}\n', encoding="utf-8")
    assert load_pairs(path) == [ContrastPair("a\u2028b", "c")]


@pytest.mark.parametrize(("name", "text", "match"), [
    ("p.jsonl", jsonl({"positive": "a", "negative": "b"}) + '{"positive": "a",\n',
     r"p\.jsonl:2: invalid JSON: .*\(column \d+\)"),
    ("p.jsonl", jsonl({"positive": "a"}), r"p\.jsonl:1, field 'negative': missing field"),
    ("p.jsonl", jsonl({"text": "a"}), r"p\.jsonl:1, field 'positive': missing field"),
    ("p.jsonl", jsonl({"positive": "a", "negative": "b"}, {"positive": 3, "negative": "b"}),
     r"p\.jsonl:2, field 'positive': expected a string, got int"),
    ("p.jsonl", jsonl({"positive": "a", "negative": "b", "prompt": ["x"]}),
     r"p\.jsonl:1, field 'prompt': expected a string, got list"),
    ("p.jsonl", jsonl({"positive": "  \n", "negative": "b"}), r"p\.jsonl:1, field 'positive': empty text"),
    ("p.jsonl", jsonl({"positive": "a", "negative": "b", "prompt": ""}),
     r"p\.jsonl:1, field 'prompt': empty text"),
    ("p.jsonl", "\n" + jsonl({"positive": "same", "negative": "same"}),
     r"p\.jsonl:2, field 'negative': same text as 'positive'"),
    ("p.jsonl", jsonl({"prompt": "q", "chosen": "x", "rejected": "x"}),
     r"p\.jsonl:1, field 'rejected': same text as 'chosen'"),
    ("p.jsonl", jsonl({"prompt": "q", "chosen": "x"}), r"p\.jsonl:1, field 'rejected': missing field"),
    ("p.jsonl", jsonl(["a", "b"]), r"p\.jsonl:1: expected a JSON object, got list"),
    ("p.jsonl", "", r"p\.jsonl: no pairs in file"),
    ("p.jsonl", "\n\n  \n", r"p\.jsonl: no pairs in file"),
    ("p.json", "[]", r"p\.json: no pairs in file"),
    ("p.json", json.dumps([{"positive": "a", "negative": "b"}, {"positive": "a"}]),
     r"p\.json record 2, field 'negative': missing field"),
    ("p.json", '[\n{"positive": "a", "negative": "b"},\n{"positive": }\n]', r"p\.json:3: invalid JSON"),
])
def test_pairs_errors_name_file_line_and_field(tmp_path: Path, name: str, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_pairs(write(tmp_path, name, text))


def test_pairs_error_attributes(tmp_path: Path) -> None:
    records = [{"positive": "a", "negative": "b"}] * 2 + [{"positive": "a"}]
    path = write(tmp_path, "p.json", json.dumps(records))
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 3, "negative")


def test_pairs_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_pairs(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------------------------
# load_items: formats


def test_items_jsonl_answers_as_index_letter_text(tmp_path: Path) -> None:
    records = [
        {"question": "Q0", "choices": ["x", "y", "z"], "answer": 2},
        {"question": "Q1", "choices": ["x", "y", "z"], "answer": "B"},
        {"question": "Q2", "choices": ["x", "y", "z"], "answer": "c"},
        {"question": "Q3", "choices": ["x", "y", "z"], "answer": "(A)"},
        {"question": "Q4", "choices": ["x", "y", "z"], "answer": "z"},
        {"question": "Q5", "choices": ["x", "y", "z"], "answer": "B. y"},
        {"question": "Q6", "choices": ["x", "y", "z"], "answer": "1"},
        {"question": "Q7", "choices": ["A", "B"], "answer": "B"},  # a choice text wins over the letter
        {"question": "Q8", "choices": ["x", "y"], "answer": ["y"]},
    ]
    items = load_items(write(tmp_path, "mc.jsonl", jsonl(*records)))
    assert [item.answer for item in items] == [2, 1, 2, 0, 2, 1, 1, 1, 1]
    assert [item.id for item in items] == [f"mc:{line}" for line in range(1, 10)]


def test_items_round_trip_all_fields(tmp_path: Path) -> None:
    record = {"id": "bbq-7", "question": "  Who was late?  ", "choices": [" Alice", "Bob "], "answer": 1,
              "context": "Alice and Bob met.", "group": "age"}
    other = {"id": 12, "question": "Q", "choices": ["a", "b"], "answer": 0, "context": "", "group": None}
    items = load_items(write(tmp_path, "mc.jsonl", jsonl(record, other)))
    assert items == [
        MCItem(id="bbq-7", question="Who was late?", choices=("Alice", "Bob"), answer=1,
               context="Alice and Bob met.", group="age"),
        MCItem(id="12", question="Q", choices=("a", "b"), answer=0),
    ]


def test_items_json_list_ids_use_record_numbers(tmp_path: Path) -> None:
    records = [{"question": f"Q{i}", "choices": ["a", "b"], "answer": i % 2} for i in range(3)]
    items = load_items(write(tmp_path, "set.json", json.dumps(records)))
    assert [(item.id, item.answer) for item in items] == [("set:1", 0), ("set:2", 1), ("set:3", 0)]


def test_items_custom_field_names_and_lettered_options(tmp_path: Path) -> None:
    record = {"uid": "u1", "text": "Q?", "options": "\nA. one\nB. two \nC. three", "label": "B. two",
              "passage": "P.", "topic": "math"}
    fields = FieldMap(id="uid", question="text", choices="options", answer="label", context="passage",
                      group="topic")
    [item] = load_items(write(tmp_path, "mc.jsonl", jsonl(record)), fields=fields)
    assert item == MCItem(id="u1", question="Q?", choices=("one", "two", "three"), answer=1, context="P.",
                          group="math")


def test_items_csv_with_json_choices_cell(tmp_path: Path) -> None:
    text = ('id,question,choices,answer,group\n'
            'a,"Is it, really?","[""yes"", ""no""]",no,g1\n'
            'b,"Two\nlines","[""x"", ""y"", ""z""]",0,\n')
    items = load_items(write(tmp_path, "mc.csv", text))
    assert items == [MCItem("a", "Is it, really?", ("yes", "no"), 1, group="g1"),
                     MCItem("b", "Two\nlines", ("x", "y", "z"), 0)]


def test_items_csv_with_letter_and_numbered_columns(tmp_path: Path) -> None:
    letters = "question,A,B,C,D,answer\nQ1,w,x,y,z,D\nQ2,yes,no,,,(B)\n"
    items = load_items(write(tmp_path, "letters.csv", letters))
    assert [(i.id, i.choices, i.answer) for i in items] == [
        ("letters:2", ("w", "x", "y", "z"), 3), ("letters:3", ("yes", "no"), 1)]
    numbered = "question,choice_0,choice_1,choice_2,answer\nQ,p,q,r,r\n"
    [item] = load_items(write(tmp_path, "numbered.csv", numbered))
    assert (item.choices, item.answer) == (("p", "q", "r"), 2)


def test_items_hf_saved_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"question": "Q0", "choices": ["a", "b", "c"], "answer": 2, "subject": "s1"},
            {"question": "Q1", "choices": ["a", "b"], "answer": 0, "subject": "s2"}]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    items = load_items("hf:" + str(folder), fields=FieldMap(group="subject"))
    assert items == [MCItem("saved:0", "Q0", ("a", "b", "c"), 2, group="s1"),
                     MCItem("saved:1", "Q1", ("a", "b"), 0, group="s2")]


def test_items_hf_dataset_dict_split_and_label_choices(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    arc_like = {"id": "arc-1", "question": "Q", "answerKey": "2",
                "choices": {"text": ["one", "two", "three"], "label": ["1", "2", "3"]}}
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([arc_like]),
                          "test": datasets.Dataset.from_list([{**arc_like, "answerKey": "3"}])}
                         ).save_to_disk(str(folder))
    fields = FieldMap(answer="answerKey")
    assert load_items("hf:" + str(folder), fields=fields)[0].answer == 1  # the label, not index 2
    assert load_items("hf:" + str(folder), fields=fields, split="test")[0].answer == 2
    with pytest.raises(DataError, match=r"no split 'validation'; the dataset has \['test', 'train'\]"):
        load_items("hf:" + str(folder), fields=fields, split="validation")


def test_items_hf_errors_name_the_row(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"id": "x", "question": "Q", "choices": ["a", "b"], "answer": 0}] * 2
    folder = tmp_path / "dups"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"dups row 1, field 'id': duplicate id 'x' \(also on row 0\)"):
        load_items("hf:" + str(folder))


def test_items_hf_without_datasets_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ConfigError, match="pip install datasets"):
        load_items("hf:some/dataset")


# ---------------------------------------------------------------------------------------------------
# load_items: validation errors


def item(**changes: object) -> dict[str, object]:
    return {"question": "Q?", "choices": ["a", "b", "c"], "answer": 0, **changes}


def without(key: str) -> dict[str, object]:
    record = item()
    del record[key]
    return record


@pytest.mark.parametrize(("records", "match"), [
    ([item(), without("question")], r"mc\.jsonl:2, field 'question': missing field"),
    ([without("choices")], r"mc\.jsonl:1, field 'choices': missing field"),
    ([without("answer")], r"mc\.jsonl:1, field 'answer': missing field"),
    ([item(question="  ")], r"mc\.jsonl:1, field 'question': empty question"),
    ([item(question=5)], r"mc\.jsonl:1, field 'question': expected a string, got int"),
    ([item(answer="d")], r"mc\.jsonl:1, field 'answer': answer 'd' is not among the 3 choices"),
    ([item(answer="Maybe")], r"mc\.jsonl:1, field 'answer': answer 'Maybe' is not among the 3 choices"),
    ([item(answer=3)], r"mc\.jsonl:1, field 'answer': answer index 3 is out of range for 3 choices"),
    ([item(answer="B. c")], r"field 'answer': answer 'B\. c' is not among the 3 choices"),
    ([item(answer=True)], r"field 'answer': expected an index, a letter or a choice text, got True"),
    ([item(choices=["only"])], r"mc\.jsonl:1, field 'choices': needs at least 2 choices, got 1"),
    ([item(choices=["a", "b", "a"])], r"mc\.jsonl:1, field 'choices': duplicate choice 'a'"),
    ([item(choices=["a", " "])], r"field 'choices': choice 1 is empty"),
    ([item(choices=["a", 2])], r"field 'choices': choice 1 is not a string \(got int\)"),
    ([item(choices="a or b")], r"field 'choices': expected a list, a JSON-encoded list or lettered lines"),
    ([item(id="x"), item(question="R?"), item(id="x")],
     r"mc\.jsonl:3, field 'id': duplicate id 'x' \(also on line 1\)"),
    ([item(), item(context="C."), item(choices=["a", "b"]), item()],
     r"mc\.jsonl:4, field 'question': the same question, context and choices as on line 1: keep each question once"),
    ([item(choices=["1", "2", "3"], answer="1")],
     r"field 'answer': answer '1' is the text of choice 0 and also the index 1: give it as a letter \(A for"),
    ([item(id="mc:2"), item()], r"mc\.jsonl:2, field 'id': duplicate id 'mc:2' \(also on line 1\)"),
    ([item(context=["x"])], r"field 'context': expected a string, got list"),
    ([["Q?", "a", "b"]], r"mc\.jsonl:1: expected an object, got list"),
])
def test_items_errors(tmp_path: Path, records: list[object], match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_items(write(tmp_path, "mc.jsonl", jsonl(*records)))


@pytest.mark.parametrize(("name", "text", "match"), [
    ("mc.jsonl", jsonl(item()) + "{oops}\n", r"mc\.jsonl:2: invalid JSON"),
    ("mc.jsonl", "\n\n", r"mc\.jsonl: no items found"),
    ("mc.json", json.dumps([item(), item(answer="z")]),
     r"mc\.json record 2, field 'answer': answer 'z' is not among the 3 choices"),
    ("mc.json", json.dumps({"data": [item()]}, indent=1),
     r"mc\.json: holds one JSON object \(keys \['data'\]\); give a list of items or JSON Lines"),
    ("mc.json", json.dumps([item(id="k"), item(id="k")]),
     r"mc\.json record 2, field 'id': duplicate id 'k' \(also on record 1\)"),
    ("mc.csv", "question,choices,answer\nQ,\"[\"\"a\"\", \"\"b\"\"]\",a\nQ2,\"[\"\"a\"\"]\",a\n",
     r"mc\.csv:3, field 'choices': needs at least 2 choices, got 1"),
    ("mc.csv", "question,choices,answer\nQ,[oops,a\n", r"mc\.csv:2, field 'choices': invalid JSON list"),
    ("mc.csv", "question,A,B,answer\nQ,x,,A\n", r"mc\.csv:2, field 'choices': needs at least 2 choices"),
    ("mc.csv", "question,A,B,C,answer\nQ,x,,y,A\n", r"mc\.csv:2, field 'choices': choice 1 is empty"),
    ("mc.csv", "question,answer\nQ,A\n", r"mc\.csv:2, field 'choices': missing field"),
    ("mc.csv", "question,A,B,answer\nQ,x,y,E\n", r"mc\.csv:2, field 'answer': answer 'E' is not among"),
    ("mc.csv", "question,A,B,answer\nQ,x,y,A\nWho, me?,x,y,A\n",
     r"mc\.csv:3: 1 cell\(s\) beyond the header's 4 columns, from 'A' \(an unquoted comma\?\)"),
])
def test_items_file_errors(tmp_path: Path, name: str, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_items(write(tmp_path, name, text))


def test_item_construction_is_validated() -> None:
    with pytest.raises(DataError, match="answer index 2 is out of range for 2 choices"):
        MCItem("x", "Q", ("a", "b"), 2)
    with pytest.raises(DataError, match="duplicate choice 'a'"):
        MCItem("x", "Q", ("a", "a"), 0)


# ---------------------------------------------------------------------------------------------------
# shuffle_choices


def many(n: int, n_choices: int = 2) -> list[MCItem]:
    return [MCItem(id=f"item-{i:03d}", question=f"Q{i}", choices=tuple(f"c{i}-{k}" for k in range(n_choices)),
                   answer=0) for i in range(n)]


def test_shuffle_keeps_the_answer_text_and_is_deterministic() -> None:
    for original in many(20, 4):
        shuffled = shuffle_choices(original, seed=7)
        assert shuffled.choices[shuffled.answer] == original.choices[original.answer]
        assert sorted(shuffled.choices) == sorted(original.choices)
        assert shuffled == shuffle_choices(original, seed=7)
        assert (shuffled.id, shuffled.question) == (original.id, original.question)


def test_shuffle_balances_positions_across_items() -> None:
    items = many(200)  # every source answer is choice 0
    first = Counter(shuffle_choices(it, seed=0).answer for it in items)
    assert 80 <= first[0] <= 120
    four = Counter(shuffle_choices(it, seed=0).answer for it in many(200, 4))
    assert all(30 <= four[k] <= 70 for k in range(4))
    # Another seed gives other permutations.
    assert [shuffle_choices(it, 1).answer for it in items] != [shuffle_choices(it, 0).answer for it in items]


# ---------------------------------------------------------------------------------------------------
# split_items


def labelled(n: int) -> list[MCItem]:
    """n items over 2 groups with unbalanced answers: 60% answer 0, 40% answer 1, per group."""
    return [MCItem(id=f"x{i:04d}", question=f"Q{i}", choices=("a", "b"), answer=int(i % 5 >= 3),
                   group=("g1", "g2")[i % 2]) for i in range(n)]


def ids(splits: Splits) -> tuple[list[str], list[str], list[str]]:
    return [i.id for i in splits.train], [i.id for i in splits.val], [i.id for i in splits.test]


def test_split_sizes_disjoint_and_deterministic() -> None:
    items = labelled(200)
    splits = split_items(items, 100, 40, 50, seed=3)
    train, val, test = ids(splits)
    assert (len(train), len(val), len(test)) == (100, 40, 50)
    assert len(set(train) | set(val) | set(test)) == 190
    assert ids(split_items(items, 100, 40, 50, seed=3)) == (train, val, test)
    assert ids(split_items(items, 100, 40, 50, seed=4)) != (train, val, test)


def test_split_does_not_depend_on_input_order() -> None:
    items = labelled(150)
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    assert ids(split_items(items, 60, 30, 30, seed=1)) == ids(split_items(shuffled, 60, 30, 30, seed=1))
    assert ids(split_items(items, 60, 30, 30, seed=1)) == ids(split_items(items[::-1], 60, 30, 30, seed=1))


def test_split_keeps_strata_proportions() -> None:
    items = labelled(500)  # strata (g1|g2, 0|1) hold 30%, 30%, 20%, 20%
    for seed in range(5):
        splits = split_items(items, 200, 100, 100, seed=seed)
        for part, size in ((splits.train, 200), (splits.val, 100), (splits.test, 100)):
            counts = Counter((it.group, it.answer) for it in part)
            for (_, answer), count in counts.items():
                expected = size * (0.3 if answer == 0 else 0.2)
                assert abs(count - expected) <= 2, (seed, size, counts)


def test_split_errors() -> None:
    with pytest.raises(ConfigError, match=r"asked for 50 \+ 30 \+ 30 = 110 items but only 100 exist"):
        split_items(labelled(100), 50, 30, 30, seed=0)
    with pytest.raises(ConfigError, match="n_val must be >= 0"):
        split_items(labelled(10), 5, -1, 0, seed=0)


def test_split_can_take_everything() -> None:
    splits = split_items(labelled(30), 10, 10, 10, seed=0)
    assert sorted(ids(splits)[0] + ids(splits)[1] + ids(splits)[2]) == [f"x{i:04d}" for i in range(30)]
