"""The ``steerlab run`` job on a tiny model: selection, controls, statistics, the recipe and the resumable store."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from conftest import build_model, build_tokenizer
from torch import nn

from steerlab.core.hooks import steer
from steerlab.core.vector import SteeringVector
from steerlab.data.items import MCItem, shuffle_choices, split_items
from steerlab.data.prompts import PromptStyle, encode, encode_continuation, lettered_prompt, question_text
from steerlab.errors import ConfigError, DataError
from steerlab.experiment import runner
from steerlab.experiment.config import RunConfig, default_sweep_layers
from steerlab.experiment.report import render_markdown
from steerlab.experiment.results import SeedOutcome, SweepCell, verdict
from steerlab.experiment.selection import choose, grow_layer_set
from steerlab.experiment.stats import Estimate, paired_bootstrap, rank_p_value
from steerlab.experiment.store import Store
from steerlab.methods.pas import TaskFormat, build_vector, scored_item
from steerlab.models import decoder_blocks
from steerlab.runtime.extract import extract, single
from steerlab.runtime.scoring import letter_logprobs, letter_token_ids
from steerlab.runtime.sweep import Scorer, score_pushes

WORDS = [f"w{i}" for i in range(11, 60)]


def toy_items(n: int = 40, seed: int = 0) -> list[MCItem]:
    rng = random.Random(seed)
    return [MCItem(f"i{k}", " ".join(rng.choice(WORDS) for _ in range(4)),
                   tuple(" ".join(rng.choice(WORDS) for _ in range(2)) for _ in range(2)), k % 2)
            for k in range(n)]


def small_config(**changes: object) -> RunConfig:
    settings: dict[str, object] = dict(task="toy", methods=("caa",), layers=(0, 1), strengths=(0.5, 2.0), n_train=12,
                                       n_val=6, n_test=10, random_directions=4, icl_k=1, scoring="letters")
    settings.update(changes)
    return RunConfig(**settings)  # type: ignore[arg-type]


# Selection rule, verdict and statistics on hand-made numbers


def test_directional_rule_prefers_what_the_sign_decides_over_any_push() -> None:
    cells = [
        SweepCell("answer", 3, 4.0, 0.70, 0.68),  # both signs help: a disruption
        SweepCell("answer", 3, 1.0, 0.60, 0.30),  # the sign decides: a direction
        SweepCell("answer", 5, 1.0, 0.45, 0.10),  # directional but below the unsteered 0.5
    ]
    chosen, score = choose(cells, 0.5, "directional", ["answer"])
    assert chosen == cells[1] and score == pytest.approx(0.15)
    assert choose(cells, 0.5, "accuracy", ["answer"])[0] == cells[0]
    tied = [SweepCell("answer", 3, 2.0, 0.6, 0.4), SweepCell("last_prompt", 3, 1.0, 0.6, 0.4),
            SweepCell("answer", 1, 1.0, 0.6, 0.4)]
    # ties: the smaller strength, then the earlier layer, then the earlier positions
    assert choose(tied, 0.5, "directional", ["last_prompt", "answer"])[0] == tied[2]


def test_greedy_layer_sets_add_a_layer_only_while_the_score_improves() -> None:
    gains = {(2, 0): 0.05, (2, 1): 0.12, (2, 3): 0.20, (2, 4): 0.15,  # step 1: 3 is best
             (2, 3, 0): 0.22, (2, 3, 1): 0.26, (2, 3, 4): 0.30,  # step 2: 4 is best, but +s lowers accuracy
             (2, 3, 1, 0): 0.20, (2, 3, 1, 4): 0.25}  # step 3: nothing beats 0.26
    asked: list[tuple[tuple[int, ...], list[int]]] = []

    def evaluate(current: tuple[int, ...], new: list[int]) -> list[SweepCell]:
        asked.append((current, list(new)))
        return [SweepCell("answer", current[0], s, 0.4 if (*current, n) == (2, 3, 4) else 0.6 + gains[(*current, n)],
                          0.6 - gains[(*current, n)] if (*current, n) != (2, 3, 4) else 0.4 - 2 * gains[(2, 3, 4)],
                          added_layers=(*current[1:], n)) for n in new for s in (1.0, 2.0)]

    start = SweepCell("answer", 2, 1.0, 0.7, 0.5)  # gain 0.1
    point, tried = grow_layer_set(start, [0, 1, 2, 3, 4], evaluate, 0.55, "directional", max_layers=4)
    assert point.layers == (2, 3, 1) and point.strength == 1.0 and point.gain == pytest.approx(0.26)
    assert asked == [((2,), [0, 1, 3, 4]), ((2, 3), [0, 1, 4]), ((2, 3, 1), [0, 4])]
    assert len(tried) == 2 * (4 + 3 + 2)
    capped, _ = grow_layer_set(start, [0, 1, 2, 3, 4], evaluate, 0.55, "directional", max_layers=2)
    assert capped.layers == (2, 3)
    assert grow_layer_set(start, [0, 1, 2, 3, 4], evaluate, 0.55, "directional", max_layers=1)[0] == start
    strong = SweepCell("answer", 2, 1.0, 0.9, 0.3)  # gain 0.3: no set beats it
    assert grow_layer_set(strong, [0, 1, 2, 3, 4], evaluate, 0.55, "directional", max_layers=3)[0] == strong


def test_default_layers_lie_in_the_middle_of_any_depth() -> None:
    assert default_sweep_layers(1) == [0] and default_sweep_layers(2) == [1] and default_sweep_layers(4) == [1, 2, 3]
    assert default_sweep_layers(28) == [7, 9, 11, 13, 16, 18, 20, 22]  # round(0.25 * 28) to round(0.8 * 28), evenly
    for depth in range(1, 100):
        layers = default_sweep_layers(depth)
        assert 1 <= len(layers) <= 8 and all(0 <= layer < depth for layer in layers), depth


def test_a_damaged_store_entry_is_named_not_a_traceback(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.json("k", lambda: [1, 2])[0] == [1, 2]
    assert store.json("k", lambda: [3])[0] == [1, 2]  # kept, not computed again
    (tmp_path / "k.json").write_text('{"value": [1, 2], "seco')
    with pytest.raises(DataError, match=rf"{tmp_path / 'k.json'}: unreadable store entry \(JSONDecodeError: .*\); "
                                        r"delete the file and the run computes it again"):
        store.json("k", lambda: [3])


def test_verdicts() -> None:
    up, flat, down = Estimate(0.2, 0.05, 0.35), Estimate(0.0, -0.1, 0.1), Estimate(-0.2, -0.3, -0.1)
    assert verdict(up, up) == "directional"
    assert verdict(up, flat) == "disruption only"
    assert verdict(flat, flat) == "no change"
    assert verdict(down, flat) == "harmful"
    assert verdict(flat, Estimate(0.1, None, None)) == "no change"


def test_rank_and_permutation_p_value() -> None:
    assert rank_p_value(0.8, [0.1, 0.2, 0.3]) == (1, 0.25)
    assert rank_p_value(0.2, [0.1, 0.2, 0.3]) == (3, 0.75)  # a tie counts against the vector


def test_paired_bootstrap_matches_the_normal_interval_and_is_deterministic() -> None:
    rng = np.random.default_rng(5)
    differences = rng.choice([-1.0, 0.0, 1.0], size=400, p=[0.2, 0.4, 0.4]).tolist()
    estimate = paired_bootstrap([differences])
    centre = float(np.mean(differences))
    half = 1.96 * float(np.std(differences, ddof=1)) / math.sqrt(len(differences))
    assert estimate.value == pytest.approx(centre)
    assert estimate.low == pytest.approx(centre - half, abs=0.012)
    assert estimate.high == pytest.approx(centre + half, abs=0.012)
    assert paired_bootstrap([differences]) == estimate
    # Seeds are resampled too: two seeds that disagree widen the interval beyond either seed's own.
    one = paired_bootstrap([[0.5] * 50])
    assert (one.low, one.high) == (0.5, 0.5)
    both = paired_bootstrap([[0.5] * 50, [0.0] * 50])
    assert both.value == 0.25 and both.low == 0.0 and both.high == 0.5
    # Two seeds with the same items: every drawn slot is its own item resample, so the interval is the one-seed
    # interval over sqrt(2) (a seed drawn twice and reused would give sqrt(3/4) of it).
    twice = paired_bootstrap([differences, differences])
    assert (twice.high - twice.low) == pytest.approx((estimate.high - estimate.low) / math.sqrt(2), rel=0.05)


# PAS vectors against a hand computation


def test_ipas_vectors_are_the_hand_computed_mean_differences() -> None:
    model, tok = build_model("llama"), build_tokenizer()
    items = toy_items(8)
    style = PromptStyle(chat=False)
    predicted = [i.answer if k % 2 else 1 - i.answer for k, i in enumerate(items)]  # half right, half wrong

    def answer_state(item: MCItem, choice: int) -> torch.Tensor:
        # The last token of the question followed by this answer's text.
        head = style.render(tok, question_text(item.question, item.context))
        prompt, answer = encode_continuation(tok, head, item.choices[choice], templated=False)
        return extract(model, [single(prompt + answer)], [1])[1][0]

    right = [answer_state(i, i.answer) for i, p in zip(items, predicted, strict=True) if p == i.answer]
    wrong = [answer_state(i, p) for i, p in zip(items, predicted, strict=True) if p != i.answer]
    ipas_all = build_vector(model, tok, "ipas-all", items, predicted, [1], style=style, scoring="likelihood")
    torch.testing.assert_close(ipas_all.layers[1], torch.stack(right).mean(0) - torch.stack(wrong).mean(0),
                               atol=1e-5, rtol=1e-5)
    # iPAS-wo: matched pairs on the items answered wrong, the right answer minus the model's wrong one.
    pairs = [answer_state(i, i.answer) - answer_state(i, p) for i, p in zip(items, predicted, strict=True)
             if p != i.answer]
    ipas_wo = build_vector(model, tok, "ipas-wo", items, predicted, [1], style=style, scoring="likelihood")
    torch.testing.assert_close(ipas_wo.layers[1], torch.stack(pairs).mean(0), atol=1e-5, rtol=1e-5)
    # PAS-full under choice likelihood reads the prompt that is scored: the question without a choice list.
    def question_state(item: MCItem) -> torch.Tensor:
        ids = encode(tok, style.render(tok, question_text(item.question, item.context)), templated=False)
        return extract(model, [single(ids)], [1])[1][0]

    full = build_vector(model, tok, "pas-full", items, predicted, [1], style=style, scoring="likelihood")
    expected = (torch.stack([question_state(i) for i, p in zip(items, predicted, strict=True) if p == i.answer])
                .mean(0) - torch.stack([question_state(i) for i, p in zip(items, predicted, strict=True)
                                        if p != i.answer]).mean(0))
    torch.testing.assert_close(full.layers[1], expected, atol=1e-5, rtol=1e-5)
    norms = [float(h.norm()) for h in right + wrong]
    assert ipas_all.metadata["residual_norms"]["1"] == pytest.approx(sum(norms) / len(norms), rel=1e-5)


# Turn positions: the user's turn and the answer, never the system prompt or earlier turns


def test_turn_start_is_where_the_users_message_begins() -> None:
    tok = build_tokenizer()
    style = PromptStyle(system="w20 w21")
    # "<system> w20 w21 </turn> <user> | w30 w31 </turn> <assistant>": 5 tokens before the message
    assert style.turn_start(tok, "w30 w31") == 5
    # "<user> w40 </turn> <assistant> w41 </turn>" more before it: an earlier turn (an in-context example)
    assert style.turn_start(tok, "w0 w31", [("w40", "w41")]) == 5 + 6  # a message starting like a probe
    assert PromptStyle(chat=False).turn_start(tok, "w30 w31") == 0


@pytest.mark.parametrize("scoring", ["likelihood", "letters"])
def test_turn_positions_in_the_sweep_equal_a_hooked_pass(scoring: str) -> None:
    model, tok = build_model("llama"), build_tokenizer()
    style = PromptStyle(system="w20 w21")
    item = MCItem("x", "w30 w31 w32", ("w40 w41", "w42"), 0)
    history = [("w50 w51", "w52")]
    push = torch.randn(32, generator=torch.Generator().manual_seed(5)) * 3
    scored = scored_item(tok, item, TaskFormat(scoring, style, positions="turn"), history)  # type: ignore[arg-type]
    letters = letter_token_ids(tok, ["A", "B"])
    scorer = Scorer(tuple(tuple(x) for x in letters) if scoring == "letters" else None)
    got = score_pushes(model, [scored], scorer, {1: push[None]}).steered[1][0][0]
    vector = SteeringVector({1: push})
    if scoring == "letters":
        user = lettered_prompt(item.question, item.choices)
        prompt = encode(tok, style.render(tok, user, history), templated=True)
        with steer(model, vector, 1.0, positions="turn", turn_starts=[style.turn_start(tok, user, history)]):
            expected = letter_logprobs(model, [prompt], letters)[0].tolist()
        assert got == pytest.approx(expected, abs=1e-5)
        return
    head = style.render(tok, item.question, history)
    assert style.turn_start(tok, item.question, history) == 5 + 7  # the example turn: 7 tokens
    for choice, score in zip(item.choices, got, strict=True):
        question, answer = encode_continuation(tok, head, choice, templated=True)
        ids = torch.tensor([question + answer])
        with torch.no_grad(), steer(model, vector, 1.0, positions="turn", turn_starts=[12]):
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        expected = sum(float(logprobs[len(question) - 1 + j, t]) for j, t in enumerate(answer))
        assert score == pytest.approx(expected, abs=1e-4)


# The whole job


@pytest.fixture(scope="module")
def tiny() -> tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerFast]:
    return build_model("llama"), build_tokenizer()


def test_chosen_point_equals_an_independent_hooked_pass_and_the_recipe_replays_it(
        tiny: tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerFast]) -> None:
    model, tok = tiny
    items = toy_items()
    result = runner.run_task(model, tok, items, small_config(strengths=(2.0, 8.0)))
    outcome = result.report.chosen.seeds[0]
    assert outcome.positions == "last_prompt" and len(outcome.random) == 4
    vector = result.vectors["caa"]
    assert vector.recipe is not None and vector.recipe.layers == (outcome.layer,)
    assert vector.recipe.strength == outcome.strength and vector.recipe.unit == "relative"
    # The stored direction has the mean residual norm at its layer: strength s adds s times that norm.
    norm = vector.metadata["residual_norms"][str(outcome.layer)]
    assert float(vector.layers[outcome.layer].norm()) == pytest.approx(norm, rel=1e-5)
    assert outcome.added_norm == pytest.approx(norm * outcome.strength, rel=1e-5)

    assert_replays(model, tok, items, vector, outcome, small_config())


def letter_correctness(model: tf.PreTrainedModel, tok: tf.PreTrainedTokenizerFast, items: list[MCItem],
                       config: RunConfig, outcome: SeedOutcome) -> list[float]:
    """Correctness on the run's test items, from an independent letter-scoring pass of ``model`` as it is."""
    test_items = runner._Runner(model, tok, items, config, Store(None), runner.silent).splits(0).test
    assert [i.id for i in test_items] == outcome.test_ids
    prompts = [encode(tok, PromptStyle().render(tok, lettered_prompt(i.question, i.choices, i.context)),
                      templated=True) for i in test_items]
    picks = letter_logprobs(model, prompts, letter_token_ids(tok, ["A", "B"])).argmax(dim=-1).tolist()
    return [float(p == i.answer) for p, i in zip(picks, test_items, strict=True)]


def assert_replays(model: tf.PreTrainedModel, tok: tf.PreTrainedTokenizerFast, items: list[MCItem],
                   vector: SteeringVector, outcome: SeedOutcome, config: RunConfig) -> None:
    """The run's test correctness, recomputed by an independent hooked letter-scoring pass under the recipe."""
    assert letter_correctness(model, tok, items, config, outcome) == outcome.baseline
    with steer(model, vector):  # the recipe: layers, strength and positions as selected
        assert letter_correctness(model, tok, items, config, outcome) == outcome.steered
    with steer(model, vector, -outcome.strength):
        assert letter_correctness(model, tok, items, config, outcome) == outcome.negated


def test_an_attention_target_run_reads_and_steers_the_attention_output(
        tiny: tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerFast]) -> None:
    model, tok = tiny
    items = toy_items()
    config = small_config(steer_target="attn", positions=("all",), strengths=(2.0, 8.0))
    result = runner.run_task(model, tok, items, config)
    outcome, vector = result.report.chosen.seeds[0], result.vectors["caa"]
    assert vector.recipe is not None and vector.recipe.target == "attn" and vector.metadata["target"] == "attn"
    # Independent replay of the chosen point: a copy of the model whose attention output projection at the chosen
    # layer has the bias strength * direction (steering every position of the attention output).
    for strength, arm in ((outcome.strength, outcome.steered), (-outcome.strength, outcome.negated)):
        edited = copy.deepcopy(model)
        proj = decoder_blocks(edited)[outcome.layer].self_attn.o_proj
        proj.bias = nn.Parameter(strength * vector.layers[outcome.layer])
        assert letter_correctness(edited, tok, items, config, outcome) == arm


def test_the_overall_progress_counts_every_seed_and_method_once(
        tiny: tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerFast]) -> None:
    model, tok = tiny
    calls: list[tuple[int, int, str]] = []
    runner.run_task(model, tok, toy_items(), small_config(layers=(1,), seeds=2, methods=("caa", "ipas-all")),
                    progress=lambda done, total, what: calls.append((done, total, what)))
    overall = [(done, total) for done, total, what in calls if what.startswith("overall")]
    # 2 seeds x (unsteered passes + 2 methods) = 6 units, each reported once, in order.
    assert overall == [(k, 6) for k in range(7)]
    assert all(0 <= done <= total for done, total, _ in calls)


def test_all_remaining_items_can_be_the_test_split(
        tiny: tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerFast]) -> None:
    model, tok = tiny
    items = toy_items()  # 40: 12 train and 6 validation leave 22
    result = runner.run_task(model, tok, items, small_config(layers=(1,), n_test=None))
    test_ids = result.report.chosen.seeds[0].test_ids
    assert len(test_ids) == 22
    splits = runner._Runner(model, tok, items, small_config(), Store(None), runner.silent).splits(0)
    assert set(test_ids) == {i.id for i in items} - {i.id for i in [*splits.train, *splits.val]}
    assert "all 22 test" in render_markdown(result.report.to_dict())
    with pytest.raises(ConfigError, match="leave none for testing"):
        runner.run_task(model, tok, items[:18], small_config(layers=(1,), n_test=None))


def test_vectors_from_the_first_n_training_items_keep_the_splits(
        tiny: tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerFast]) -> None:
    model, tok = tiny
    items = toy_items()
    full = runner.run_task(model, tok, items, small_config(layers=(1,)))
    part = runner.run_task(model, tok, items, small_config(layers=(1,), vector_items=6))
    assert part.report.chosen.seeds[0].test_ids == full.report.chosen.seeds[0].test_ids
    assert part.report.chosen.seeds[0].baseline == full.report.chosen.seeds[0].baseline
    train = runner._Runner(model, tok, items, small_config(), Store(None), runner.silent).splits(0).train
    # CAA needs no predictions: the direction is the mean difference over the first six training items.
    expected = build_vector(model, tok, "caa", train[:6], [0] * 6, [1], style=PromptStyle()).layers[1]
    got = part.vectors["caa"].layers[1]
    assert part.vectors["caa"].metadata["settings"]["train_items"] == 6
    assert float(torch.nn.functional.cosine_similarity(got, expected, dim=0)) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError, match="vector_items must be between 1 and n_train"):
        small_config(vector_items=13)
    with pytest.raises(ConfigError, match=r"icl_k \(in-context examples\) must be 0 or more, got -1"):
        small_config(icl_k=-1)


def test_a_layer_set_is_reported_beside_the_single_layer_point_and_replays(
        tiny: tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerFast]) -> None:
    model, tok = tiny
    items = toy_items()
    # Settings under which the set grows on this tiny model, so the replay below steers several layers.
    config = small_config(layers=(0, 1, 2), strengths=(1.0,), n_val=12, max_layers=3)
    result = runner.run_task(model, tok, items, config)
    single, grown = result.report.methods["caa"], result.report.methods["caa+layers"]
    assert grown.multi_layer and not single.multi_layer and result.report.method == "caa"
    start, point = single.seeds[0], grown.seeds[0]
    assert point.layers[0] == start.layer and point.positions == start.positions and len(point.layers) > 1
    # The greedy search tried every unused layer at every strength in its first step.
    first_step = [c for c in grown.sweep if len(c.layers) == 2]
    assert {(c.layers, c.strength) for c in first_step} == {((start.layer, n), 1.0) for n in (0, 1, 2)
                                                            if n != start.layer}
    vector = result.vectors["caa+layers"]
    assert vector.recipe is not None and vector.recipe.layers == point.layers
    norms = vector.metadata["residual_norms"]
    expected_norm = math.sqrt(sum(float(norms[str(layer)]) ** 2 for layer in point.layers)) * point.strength
    assert point.added_norm == pytest.approx(expected_norm, rel=1e-5)
    assert_replays(model, tok, items, vector, point, config)
    markdown = render_markdown(result.report.to_dict())
    assert "## Layer sets" in markdown and f"kept: layers {'+'.join(map(str, point.layers))}" in markdown


def test_every_store_key_ingredient_invalidates(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    items = toy_items()
    config = small_config(seeds=1)

    def pieces(out: Path, model: tf.PreTrainedModel, tok: tf.PreTrainedTokenizerFast,
               these: list[MCItem] = items, cfg: RunConfig = config) -> int:
        before = len(list((out / ".steerlab-cache").glob("*"))) if (out / ".steerlab-cache").exists() else 0
        runner.run_task(model, tok, these, cfg, out_dir=out)
        return len(list((out / ".steerlab-cache").glob("*"))) - before

    model, tok = build_model("llama"), build_tokenizer()
    out = tmp_path / "run"
    first = pieces(out, model, tok)
    assert first > 0
    assert pieces(out, model, tok) == 0  # identical: everything reused

    def changed(**what: object) -> int:
        m, t = build_model("llama"), build_tokenizer()
        if "weights" in what:
            with torch.no_grad():
                next(m.parameters()).add_(1e-3)
        if "dtype" in what:
            m = m.to(torch.float64)
        if "template" in what:
            t.chat_template = t.chat_template.replace("</turn>", "</turn> ")
        return pieces(out, m, t, what.get("items", items), what.get("config", config))  # type: ignore[arg-type]

    assert changed(weights=True) == first
    assert changed(dtype=True) == first
    assert changed(template=True) == first
    assert changed(items=[*items[:-1], MCItem("i39", "w12 w13", items[-1].choices, 0)]) == first
    assert changed(items=[dataclasses.replace(i, group=str(k % 3)) for k, i in enumerate(items)]) == first  # splits
    assert changed(config=small_config(random_directions=5)) == first
    # Ablation settings change the vectors and what follows them, never an unsteered pass.
    assert 0 < changed(config=small_config(steer_target="mlp")) < first
    assert 0 < changed(config=small_config(vector_items=8)) < first
    monkeypatch.setattr(runner, "__version__", "9.9.9")
    assert changed() == first
    monkeypatch.setattr(runner, "SWEEP_BLOCK", 4)
    assert changed() > 0


def test_a_method_whose_vector_is_zero_is_skipped_with_the_reason_and_the_others_run(
        tiny: tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerFast]) -> None:
    # As in ETHICS commonsense: every item asks the same question and differs only in its choices. Under choice
    # likelihood pas-full reads the question alone, so its right and wrong sides are the same prompt.
    model, tok = tiny
    items = [MCItem(i.id, "Which is acceptable?", i.choices, i.answer) for i in toy_items()]
    result = runner.run_task(model, tok, items, small_config(layers=(0, 1), methods=("pas-full", "caa"),
                                                            scoring="likelihood", seeds=2))
    report = result.report
    assert set(report.methods) == {"caa"} and set(result.vectors) == {"caa"}
    assert len(report.methods["caa"].seeds) == 2
    # The answer controls pool both seeds' test splits, as the accuracies beside them average both seeds.
    tests = [i for seed in (0, 1) for i in split_items([shuffle_choices(i, seed) for i in items], 12, 6, 10, seed).test]
    assert len({i.id for i in tests}) > 10  # the two test splits differ
    answers = Counter(i.answer for i in tests)
    best = min(answers, key=lambda k: (-answers[k], k))
    assert report.controls["constant_letter"] == {"letter": "AB"[best], "accuracy": answers[best] / 20}
    assert report.letters["correct"] == {"A": answers[0], "B": answers[1]}
    assert sum(report.letters["predicted_baseline"].values()) == 20
    assert report.controls["shortest_answer"] == {"accuracy": answers[0] / 20}  # two-word choices: ties pick A
    assert report.skipped["pas-full"] == (  # named by the first seed it failed on
        "seed 0: pas-full's vector is zero at layer(s) 0, 1: its positive and negative prompts gave the same "
        "activations; under choice likelihood pas-full reads the question alone, which is the same for every item "
        "of this task")
