"""Tests of prompt steering replacement: steering function, data, training, files, checks, evaluation.

Each expected value is computed here on its own (direct forward passes, closed forms, hand-worked numbers),
not by calling the function the implementation uses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from conftest import DEPTH, HIDDEN, build_model, build_tokenizer
from scipy.stats import binomtest

import steerlab.psr.evaluate as psr_evaluate
from steerlab.cli.main import main
from steerlab.conditional.program import Condition, ConditionalProgram
from steerlab.core.hooks import SteeringSource, steer
from steerlab.core.vector import SteeringVector
from steerlab.data.prompts import PromptStyle
from steerlab.errors import ConfigError, DataError, VectorFileError
from steerlab.files import load_steering
from steerlab.models import decoder_blocks
from steerlab.psr.checks import (
    Check,
    Instruction,
    follows,
    judge,
    perplexities,
    repetition_rate,
    resolve_instruction,
)
from steerlab.psr.data import (
    ActivationData,
    PromptSplit,
    build_activation_data,
    load_prompts,
    prompt_digest,
    render_ids,
    split_prompts,
)
from steerlab.psr.evaluate import (
    EvalSettings,
    Point,
    evaluate,
    search_alpha,
    table,
    token_coefficients,
    wilson,
    write_coefficient_view,
    write_report,
)
from steerlab.psr.model import PSRModel, TrainSettings, hinge, relative_mse, train_psr
from steerlab.runtime.generate import generate

INSTRUCTION = "w10 w11 w12"
PROMPTS = [f"w{i} w{i + 1} w{i + 2}" for i in range(20, 44, 2)]
KEYWORD_CHECK = '{"kind": "keyword", "words": ["w50"]}'


def _random_psr(layers: list[int], seed: int = 0, kind: str = "a-psr") -> PSRModel:
    g = torch.Generator().manual_seed(seed)
    return PSRModel(
        kind,
        {i: torch.randn(HIDDEN, generator=g) for i in layers},
        {i: torch.randn(1, generator=g) for i in layers},
        {i: torch.randn(HIDDEN, generator=g) for i in layers},
    )


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny matrices: a second thread only adds synchronisation, which costs a lot on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One activation cache for the module: the tiny model is deterministic, so rebuilds are cache hits."""
    return tmp_path_factory.mktemp("psr")


def _data(
    model: tf.PreTrainedModel, root: Path, prompts: list[str] | None = None, **kwargs: object
) -> ActivationData:
    tok = build_tokenizer()
    return build_activation_data(
        model,
        tok,
        INSTRUCTION,
        PROMPTS if prompts is None else prompts,
        cache_dir=root / "cache",
        max_new_tokens=6,
        batch_size=4,
        chunk_size=5,
        **kwargs,  # type: ignore[arg-type]
    )


def _by_hand_difference(model: tf.PreTrainedModel, data: ActivationData, layer: int) -> torch.Tensor:
    """(prompted - plain) block-``layer`` outputs at the response positions, from one direct forward per run."""
    rows = []
    for item in data.items:
        runs = []
        for prefix in (item.prompted_prefix, item.plain_prefix):
            with torch.no_grad():
                states = model(
                    input_ids=torch.tensor([prefix + item.response_ids]), output_hidden_states=True
                ).hidden_states[layer + 1][0]
            runs.append(states[len(prefix) - 1 : len(prefix) - 1 + len(item.response_ids)])
        rows.append(runs[0] - runs[1])
    return torch.cat(rows)


def _add_at(model: tf.PreTrainedModel, shifts: dict[int, torch.Tensor]) -> list[Any]:
    """Plain forward hooks adding a fixed vector to the given blocks' outputs: steering written by hand."""

    def hook(module: torch.nn.Module, args: Any, out: Any, shift: torch.Tensor) -> Any:
        if isinstance(out, tuple):
            return (out[0] + shift, *out[1:])
        return out + shift

    blocks = decoder_blocks(model)
    return [
        blocks[layer].register_forward_hook(lambda m, a, o, s=shift: hook(m, a, o, s))
        for layer, shift in shifts.items()
    ]


def _point(alpha: float | None, score: float, coherence: float, n: int = 10) -> Point:
    return Point(
        alpha=alpha,
        n=n,
        score=score,
        score_ci95=wilson(round(score * n), n),
        coherence=coherence,
        score_and_coherent=min(score, coherence),
        score_and_coherent_ci95=(0.0, 1.0),
        median_ppl=1.0,
        mean_repetition=0.0,
        follows=[],
        coherent=[],
        examples=[],
    )


def test_delta_is_exactly_relu_w_h_plus_b_times_z() -> None:
    model = build_model("llama")
    psr = _random_psr([1], kind="s-psr")
    ids = torch.tensor([[5, 17, 33, 41, 60]])
    seen: dict[str, torch.Tensor] = {}
    block = decoder_blocks(model)[1]
    handle = block.register_forward_hook(
        lambda m, a, out: seen.__setitem__("h", out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        model(input_ids=ids)
        h = seen["h"].clone()
        with steer(model, psr, 2.5):
            model(input_ids=ids)
    handle.remove()
    w, b, z = psr.w[1], psr.b[1], psr.z[1]
    assert torch.equal(seen["h"], h + 2.5 * (torch.relu(h @ w + b).unsqueeze(-1) * z))
    # Tokens whose w.h + b is negative are left alone, the others move along z.
    untouched = (h @ w + b) <= 0
    assert torch.equal(seen["h"][untouched], h[untouched])


def test_zero_alpha_is_the_unsteered_model_bit_for_bit() -> None:
    model = build_model("llama")
    ids = torch.tensor([[5, 17, 33, 41, 60, 7]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with steer(model, _random_psr([0, 1, 2]), 0.0):
            zero = model(input_ids=ids).logits
        with steer(model, _random_psr([0, 1, 2]), 1.0):
            steered = model(input_ids=ids).logits
    assert torch.equal(plain, zero)
    assert not torch.equal(plain, steered)
    tok = build_tokenizer()
    unsteered = generate(model, tok, PROMPTS[:3], max_new_tokens=4)
    zeroed = generate(model, tok, PROMPTS[:3], max_new_tokens=4, steering=_random_psr([1]), strength=0.0)
    assert zeroed == unsteered


def test_recorded_activations_equal_direct_forward_passes(tmp_path: Path, shared_cache: Path) -> None:
    model, tok = build_model("llama"), build_tokenizer()
    data = _data(model, shared_cache)
    assert data.layers == list(range(DEPTH)) and data.items
    offsets = data.offsets
    for index in (0, len(data.items) - 1):
        item = data.items[index]
        for prompted, store in ((True, data.prompted), (False, data.plain)):
            style = PromptStyle(system=INSTRUCTION if prompted else None)
            prefix = tok(style.render(tok, item.prompt), add_special_tokens=False)["input_ids"]
            assert (item.prompted_prefix if prompted else item.plain_prefix) == prefix
            with torch.no_grad():
                states = model(
                    input_ids=torch.tensor([prefix + item.response_ids]), output_hidden_states=True
                ).hidden_states
            positions = range(len(prefix) - 1, len(prefix) - 1 + len(item.response_ids))
            for layer in range(DEPTH - 1):  # the last hidden_states entry is after the final norm
                expected = states[layer + 1][0, list(positions)]
                torch.testing.assert_close(store[layer][offsets[index] : offsets[index + 1]], expected)
        # The response is the model's own greedy answer to the instructed prompt.
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([item.prompted_prefix]),
                max_new_tokens=len(item.response_ids),
                do_sample=False,
                pad_token_id=0,
            )
        assert out[0, len(item.prompted_prefix) :].tolist() == item.response_ids


def test_cache_resumes_and_recomputes_only_missing_chunks(tmp_path: Path) -> None:
    model = build_model("llama")
    calls: list[tuple[int, int, str]] = []
    first = _data(model, tmp_path, progress=lambda d, t, w: calls.append((d, t, w)))
    assert calls == [(1, 3, "PSR data"), (2, 3, "PSR data"), (3, 3, "PSR data")]
    chunks = sorted((tmp_path / "cache").glob("*/chunk-*.safetensors"))
    assert len(chunks) == 3
    kept = chunks[0].stat().st_mtime_ns
    chunks[1].unlink()
    second = _data(model, tmp_path)
    assert chunks[0].stat().st_mtime_ns == kept and chunks[1].exists()
    assert first.items == second.items
    for layer in first.layers:
        assert torch.equal(first.prompted[layer], second.prompted[layer])
        assert torch.equal(first.plain[layer], second.plain[layer])
    # Another model of the same name and shape (other weights, then another dtype) never reads these chunks.
    for other in (build_model("llama", seed=1), build_model("llama", torch.float64)):
        _data(other, tmp_path)
    assert len(list((tmp_path / "cache").glob("*/key.json"))) == 3


def test_constant_is_the_mean_difference_and_every_kind_round_trips(tmp_path: Path, shared_cache: Path) -> None:
    model = build_model("llama")
    data = _data(model, shared_cache)
    constant = train_psr(model, data, kind="constant", layers=[1])
    differences = _by_hand_difference(model, data, 1)
    mean = differences.sum(dim=0) / len(differences)
    torch.testing.assert_close(constant.z[1], mean, rtol=1e-5, atol=1e-6)
    h = torch.randn(2, 3, HIDDEN)
    assert torch.equal(constant.delta(1, h), torch.ones(2, 3, 1) * constant.z[1])
    # Closed form: steering by the mean m leaves error E|d - m|^2 = E|d|^2 - |m|^2 of the unsteered E|d|^2.
    energy = float((differences**2).sum(dim=1).mean())
    assert constant.metadata is not None
    assert constant.metadata["relative_mse"]["1"] == pytest.approx(1 - float(mean @ mean) / energy, rel=1e-4)
    assert constant.metadata["training"]["prompt_sha256"] == [prompt_digest(i.prompt) for i in data.items]
    settings = TrainSettings(epochs=2, batch_size=4)
    trained = [
        constant,
        train_psr(model, data, kind="s-psr", layers=[1], settings=settings),
        train_psr(model, data, kind="s-psr", layers=[1], objective="likelihood", settings=settings),
        train_psr(model, data, kind="a-psr", layers=[0, 2], settings=settings),
        train_psr(model, data, kind="a-psr", layers=[0, 1, 2], objective="likelihood", settings=settings),
    ]
    for index, psr in enumerate(trained):
        path = tmp_path / f"psr{index}.safetensors"
        psr.save(path)
        again = PSRModel.load(path)
        loaded = load_steering(path)
        assert isinstance(loaded, PSRModel)
        assert again.psr_kind == psr.psr_kind and again.layer_indices == psr.layer_indices
        assert again.metadata == loaded.metadata
        assert again.metadata is not None and again.metadata["instruction"] == INSTRUCTION
        for layer in psr.layer_indices:
            for name in ("w", "b", "z"):
                assert torch.equal(getattr(again, name)[layer], getattr(psr, name)[layer])
        again.save(tmp_path / "copy.safetensors")
        assert (tmp_path / "copy.safetensors").read_bytes() == path.read_bytes()
    # The model's own weights are untouched by training and still trainable afterwards.
    assert torch.equal(
        build_model("llama").state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"]
    )
    assert all(p.requires_grad for p in model.parameters())


def test_s_psr_fits_the_prompted_activations_better_than_its_constant_start(
    tmp_path: Path, shared_cache: Path
) -> None:
    model = build_model("llama")
    data = _data(model, shared_cache)
    constant = train_psr(model, data, kind="constant", layers=[1])
    fitted = train_psr(model, data, kind="s-psr", layers=[1], settings=TrainSettings(epochs=60))
    assert fitted.metadata is not None and constant.metadata is not None
    # The recorded error, recomputed from direct forward passes and the formula h + relu(w.h + b) z.
    with torch.no_grad():
        plain_rows = torch.cat(
            [
                model(input_ids=torch.tensor([item.sequence(False)]), output_hidden_states=True).hidden_states[2][
                    0, item.start(False) : item.start(False) + len(item.response_ids)
                ]
                for item in data.items
            ]
        )
    prompted_rows = plain_rows + _by_hand_difference(model, data, 1)
    w, b, z = fitted.w[1], fitted.b[1], fitted.z[1]
    steered = plain_rows + torch.relu(plain_rows @ w + b)[:, None] * z
    error = float(((steered - prompted_rows) ** 2).sum(dim=1).mean())
    unsteered = float(((plain_rows - prompted_rows) ** 2).sum(dim=1).mean())
    assert fitted.metadata["relative_mse"]["1"] == pytest.approx(error / unsteered, rel=1e-4)
    assert error / unsteered < constant.metadata["relative_mse"]["1"] < 1.0


def test_hinge_is_the_shortfall_of_each_layers_mean_coefficient_summed() -> None:
    coefficients = {
        3: torch.tensor([0.2, 0.4, 0.0], requires_grad=True),  # mean 0.2: shortfall 0.8
        5: torch.tensor([2.0, 4.0], requires_grad=True),  # mean 3.0: over the margin, 0
        7: torch.tensor([1.0, 0.5], requires_grad=True),  # mean 0.75: shortfall 0.25
    }
    loss = hinge(coefficients, margin=1.0, weight=2.0)
    assert float(loss.detach()) == pytest.approx(2.0 * (0.8 + 0.25))
    loss.backward()
    grads = [coefficients[layer].grad for layer in (3, 5, 7)]
    assert all(g is not None for g in grads)
    # d/dc of weight * (margin - mean c) is -weight / n for each of a layer's n tokens; 0 above the margin.
    assert [g.tolist() for g in grads if g is not None] == [
        pytest.approx([-2 / 3] * 3),
        [0.0, 0.0],
        pytest.approx([-1.0, -1.0]),
    ]
    assert float(hinge({0: torch.tensor([0.5])}, margin=2.0, weight=0.1)) == pytest.approx(0.15)


def test_likelihood_objective_is_the_nll_of_the_response_without_the_instruction(shared_cache: Path) -> None:
    model = build_model("llama")
    data = _data(model, shared_cache)
    # lr 0 keeps the start, the constant solution (w = 0, b = 1: every coefficient is exactly 1); one batch
    # holds every item, so the first epoch's loss is the objective at that start, plus the hinge.
    settings = TrainSettings(epochs=1, lr=0.0, batch_size=len(data.items), hinge_margin=3.0, hinge_weight=0.5)
    psr = train_psr(model, data, kind="a-psr", layers=[0, 2], objective="likelihood", settings=settings)
    assert all(float(psr.w[i].abs().max()) == 0.0 and float(psr.b[i]) == 1.0 for i in (0, 2))
    handles = _add_at(model, {layer: psr.z[layer] for layer in (0, 2)})
    token_nll: list[float] = []
    try:
        for item in data.items:  # one unpadded sequence at a time: prompt-free prefix, then the response
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([item.plain_prefix + item.response_ids])).logits[0]
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            first = len(item.plain_prefix) - 1  # the position that predicts the first response token
            token_nll += [-float(log_probs[first + j, t]) for j, t in enumerate(item.response_ids)]
    finally:
        for handle in handles:
            handle.remove()
    expected = sum(token_nll) / len(token_nll) + 0.5 * 2 * (3.0 - 1.0)  # hinge: 2 layers, mean coefficient 1
    assert psr.metadata is not None
    assert psr.metadata["training"]["first_epoch_loss"] == pytest.approx(expected, rel=1e-5)


def test_mse_objective_from_the_cache_is_the_relative_error_plus_the_hinge(shared_cache: Path) -> None:
    model = build_model("llama")
    data = _data(model, shared_cache)
    settings = TrainSettings(epochs=1, lr=0.0, batch_tokens=10_000, hinge_margin=1.5, hinge_weight=2.0)
    psr = train_psr(model, data, kind="s-psr", layers=[1], settings=settings)
    differences = _by_hand_difference(model, data, 1)
    mean = differences.mean(dim=0)
    relative = 1 - float(mean @ mean) / float((differences**2).sum(dim=1).mean())  # see the closed form above
    assert psr.metadata is not None
    assert psr.metadata["training"]["first_epoch_loss"] == pytest.approx(relative + 2.0 * 0.5, rel=1e-4)


def test_load_steering_dispatches_on_the_file_kind(tmp_path: Path) -> None:
    vector = SteeringVector({1: torch.ones(HIDDEN)}, {"method": "test"})
    vector.save(tmp_path / "v.safetensors")
    assert isinstance(load_steering(tmp_path / "v.safetensors"), SteeringVector)
    with pytest.raises(VectorFileError, match="not a PSR model"):
        PSRModel.load(tmp_path / "v.safetensors")


def test_bad_settings_are_config_errors(tmp_path: Path, shared_cache: Path) -> None:
    model = build_model("llama")
    data = _data(model, shared_cache)
    with pytest.raises(ConfigError, match="exactly one layer"):
        train_psr(model, data, kind="s-psr", layers=[0, 1])
    with pytest.raises(ConfigError, match="several layers"):
        train_psr(model, data, kind="a-psr", layers=[1])
    with pytest.raises(ConfigError, match="unknown objective"):
        train_psr(model, data, objective="kl")
    with pytest.raises(ConfigError, match="shapes"):
        PSRModel("s-psr", {0: torch.ones(3)}, {0: torch.ones(2)}, {0: torch.ones(3)})


def test_programmatic_checks() -> None:
    texts = ["HELLO, WORLD 42!", "Hello world", "THE OCEANS ARE DEEP", "* a\n* b\n* c", "1. a\n2) b", ""]
    assert follows(Check("capitals"), texts) == [True, False, True, False, False, False]
    assert follows(Check("keyword", {"words": ["ocean"]}), texts) == [False, False, True, False, False, False]
    assert follows(Check("no_commas"), texts) == [False, True, True, True, True, False]
    assert follows(Check("bullets", {"count": 3}), texts) == [False, False, False, True, False, False]
    assert follows(Check("bullets", {"count": 2}), texts) == [False, False, False, False, True, False]
    assert follows(Check("ending", {"phrase": "world"}), texts) == [False, True, False, False, False, False]
    assert resolve_instruction("french").check == Check("language", {"language": "fr"})
    assert resolve_instruction("Say hi.", '{"kind": "keyword", "words": ["hi"]}').check.params == {
        "words": ["hi"]
    }
    with pytest.raises(ConfigError, match="not a built-in"):
        resolve_instruction("Say hi.")

@pytest.mark.parametrize(("check", "message"), [
    ('{"kind": "keyword", "words": "hi"}', "parameter 'words' must be a non-empty list of words, got 'hi'"),
    ('{"kind": "bullets", "count": "3"}', "parameter 'count' must be a whole number of at least 1, got '3'"),
    ('{"kind": "capitals", "min_ratio": 5}', "parameter 'min_ratio' must be a number in (0, 1], got 5"),
    ('{"kind": "ending", "phrase": "bye", "case": true}', "check 'ending' takes ['phrase'], not ['case']"),
    ('{"kind": "no_commas", "strict": true}', "check 'no_commas' takes no parameters, not ['strict']"),
    ('{"kind": "judge"}', "check 'judge' needs the parameter 'concept'"),
])
def test_a_custom_check_with_bad_parameters_is_refused(check: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_instruction("Say hi.", check)


def test_repetition_rate_and_perplexity_are_exact() -> None:
    assert repetition_rate([1, 2, 3, 1, 2, 3]) == 0.25
    assert repetition_rate([1, 2, 3, 4]) == 0.0
    assert repetition_rate([7, 7, 7, 7, 7]) == 1 - 1 / 3
    model = build_model("llama")
    prefixes, responses = [[1, 20, 21], [1, 30]], [[40, 41, 42], []]
    ppl = perplexities(model, prefixes, responses, pad=0)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 20, 21, 40, 41, 42]])).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[2:5], torch.tensor([40, 41, 42]))
    assert ppl[0] == pytest.approx(math.exp(float(nll)), rel=1e-5) and ppl[1] == math.inf


def test_split_is_seeded_disjoint_and_independent_of_the_prompt_order() -> None:
    prompts = [f"prompt {i}" for i in range(40)]
    split = split_prompts(prompts, seed=7)
    assert (len(split.train), len(split.validation), len(split.test)) == (22, 8, 10)  # 20% and 25% of 40
    slices = [set(split.train), set(split.validation), set(split.test)]
    assert sum(map(len, slices)) == 40 and set().union(*slices) == set(prompts)
    assert split == split_prompts(list(reversed(prompts)), seed=7)
    assert split_prompts(prompts, seed=8).test != split.test
    assert split.summary() == {"source": "the prompts", "seed": 7, "train": 22, "validation": 8, "test": 10}
    # Smaller held-out slices stay inside the larger split's held-out prompts: never a training prompt.
    small = split_prompts(prompts, seed=7, validation=3, test=4)
    assert not set(small.validation + small.test) & set(split.train)
    assert set(small.test) <= set(split.test)


def test_too_few_or_repeated_prompts_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^the prompts: 2 prompt\(s\) are too few .* at least 3 prompts"):
        split_prompts(["a", "b"])
    with pytest.raises(DataError, match=r"p\.txt: 10 prompt\(s\) are too few to split into 4 validation, 6 test"):
        split_prompts([str(i) for i in range(10)], validation=4, test=6, source="p.txt")
    with pytest.raises(ConfigError, match="validation slice needs at least 1 prompt, got validation=0"):
        split_prompts([str(i) for i in range(10)], validation=0)
    with pytest.raises(DataError, match="'b' occurs more than once"):
        split_prompts(["a", "b", "c", "b"])
    path = tmp_path / "p.txt"
    path.write_text("# neutral prompts\nfirst\nsecond\n\nfirst\n")
    with pytest.raises(DataError, match=r"p\.txt:5: the prompt 'first' repeats line 2"):
        load_prompts(path)
    path.write_text("a line\u2028with a Unicode line break\nsecond\r\n", "utf-8")  # only \n ends a prompt
    assert load_prompts(path) == ["a line\u2028with a Unicode line break", "second"]


def test_wilson_interval_matches_scipy() -> None:
    for successes, n in ((0, 64), (3, 10), (32, 64), (64, 64), (1, 1)):
        expected = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(successes, n) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_alpha_search_bisects_the_coherence_edge_of_a_known_monotone_curve() -> None:
    # Coherence falls linearly from 1 at alpha 0 to 0 at alpha 10, so the target 0.8 holds up to alpha 2;
    # the score rises with alpha, so the best coherent alpha is the largest one found under the edge.
    calls: list[float] = []

    def measure(alpha: float) -> Point:
        calls.append(alpha)
        return _point(alpha, min(1.0, alpha / 8), 1 - alpha / 10)

    settings = EvalSettings(alphas=(1.0, 0.5, 4.0), refine=3, extend=4, coherence_target=0.8)
    curve, chosen = search_alpha(measure, settings)
    # 4 misses the target (0.6): no doubling. Bisection between 1 and 4: 2.5 misses (0.75), 1.75 meets
    # (0.825), 2.125 misses (0.7875).
    assert calls == [0.5, 1.0, 4.0, 2.5, 1.75, 2.125]
    assert [p.alpha for p in curve] == [0.5, 1.0, 1.75, 2.125, 2.5, 4.0]
    assert chosen is not None and chosen.alpha == 1.75


def test_alpha_search_doubles_while_coherent_and_picks_the_best_score_not_the_largest_alpha() -> None:
    calls: list[float] = []

    def measure(alpha: float) -> Point:  # coherent up to alpha 5; the score peaks at alpha 2
        calls.append(alpha)
        return _point(alpha, 0.9 if alpha == 2.0 else 0.5, 1.0 if alpha <= 5 else 0.0)

    chosen = search_alpha(measure, EvalSettings(alphas=(1.0, 2.0), refine=2, extend=3))[1]
    # 2 coherent -> 4 coherent -> 8 not: stop doubling; bisect 4..8: 6 misses, 5 meets.
    assert calls == [1.0, 2.0, 4.0, 8.0, 6.0, 5.0]
    assert chosen is not None and chosen.alpha == 2.0
    flat = search_alpha(lambda a: _point(a, 0.5, 1.0), EvalSettings(alphas=(3.0, 1.0), refine=0, extend=0))[1]
    assert flat is not None and flat.alpha == 1.0  # ties go to the smaller alpha
    calls.clear()
    never = search_alpha(measure, EvalSettings(alphas=(6.0, 7.0), refine=3, extend=3))
    assert never[1] is None and calls == [6.0, 7.0]


def _fake_evaluate(
    monkeypatch: pytest.MonkeyPatch, split: PromptSplit, best: dict[str, float], prompting: dict[str, float]
) -> list[tuple[str, float | None]]:
    """Replace evaluate_point by a known surface: the score peaks at ``best[slice]``; returns the calls."""
    calls: list[tuple[str, float | None]] = []

    def fake(
        model: Any,
        tokenizer: Any,
        instruction: Instruction,
        prompts: list[str],
        steering: SteeringSource | None = None,
        alpha: float = 1.0,
        *,
        prompted: bool = False,
        settings: EvalSettings | None = None,
    ) -> Point:
        part = {tuple(split.validation): "validation", tuple(split.test): "test"}.get(tuple(prompts), "other")
        if steering is None:
            calls.append((part, None))
            return _point(None, prompting[part] if prompted else 0.1, 1.0, len(prompts))
        calls.append((part, alpha))
        return _point(alpha, max(0.0, 1 - abs(alpha - best[part]) / 10), 1.0, len(prompts))

    monkeypatch.setattr(psr_evaluate, "evaluate_point", fake)
    return calls


def test_alpha_is_chosen_on_validation_and_only_that_alpha_runs_on_test(monkeypatch: pytest.MonkeyPatch) -> None:
    split = split_prompts([f"p{i}" for i in range(20)], seed=3, validation=5, test=6)
    calls = _fake_evaluate(monkeypatch, split, {"validation": 2.0, "test": 8.0}, {"validation": 0.9, "test": 0.8})
    instruction = resolve_instruction(INSTRUCTION, KEYWORD_CHECK)
    settings = EvalSettings(alphas=(1.0, 2.0, 4.0, 8.0), refine=0, extend=0)
    report = evaluate(build_model("llama"), build_tokenizer(), instruction, split, {"s": _random_psr([1])}, settings)
    method = report["methods"]["s"]
    # On test alpha 8 would score best; the validation choice, alpha 2, is the one reported.
    assert method["chosen_alpha"] == 2.0 and method["test"]["alpha"] == 2.0
    assert method["test"]["score"] == pytest.approx(1 - 6 / 10) and method["test"]["n"] == 6
    assert [p["alpha"] for p in method["curve"]] == [1.0, 2.0, 4.0, 8.0]
    steered = [(part, alpha) for part, alpha in calls if alpha is not None]
    assert [alpha for part, alpha in steered if part == "test"] == [2.0]
    assert sorted(alpha for part, alpha in steered if part == "validation") == [1.0, 2.0, 4.0, 8.0]
    assert "other" not in {part for part, _ in calls}
    assert report["split"] == {"source": "the prompts", "seed": 3, "train": 9, "validation": 5, "test": 6}
    assert report["validation_prompts"] == split.validation and report["test_prompts"] == split.test
    assert report["baselines"]["prompting"]["test"]["score"] == 0.8


def test_table_shows_every_candidate_with_intervals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    split = split_prompts([f"p{i}" for i in range(20)], seed=0, validation=5, test=8)
    model, tok = build_model("llama"), build_tokenizer()
    settings = EvalSettings(alphas=(1.0, 2.0), refine=0, extend=0)
    _fake_evaluate(monkeypatch, split, {"validation": 2.0, "test": 2.0}, {"validation": 0.9, "test": 0.75})
    followed = evaluate(model, tok, resolve_instruction("caps"), split, {"s-psr": _random_psr([1])}, settings)
    _fake_evaluate(monkeypatch, split, {"validation": 2.0, "test": 2.0}, {"validation": 0.2, "test": 0.25})
    ignored = evaluate(model, tok, resolve_instruction("ocean"), split, {}, settings)
    text = table([followed, ignored])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    # Wilson intervals of 6/8, 8/8, 2/8 and 1/8 (worked by hand: 0.41-0.93, 0.68-1, 0.07-0.59, 0.02-0.47).
    assert lines[2].startswith('| caps ("Answer in all capital letters.") | capitals | 8 | +0.80 | 0.75 [0.41, 0.93] ')
    assert lines[2].endswith("| - | 1.00 [0.68, 1.00] / 1.00 (alpha 2) | - |")  # only S-PSR was evaluated
    assert lines[0].endswith("| unsteered | constant | s-psr | a-psr |")
    assert lines[3].startswith("| ocean (") and lines[3].endswith(
        "| +0.10 | 0.25 [0.07, 0.59] / 1.00 | 0.10 [0.02, 0.47] |" + " not steered: not followed |" * 3
    )
    files = []
    for index, report in enumerate((followed, ignored)):
        files.append(tmp_path / f"r{index}.json")
        files[-1].write_text(json.dumps(report))
    assert main(["psr", "table", *map(str, files), "--out", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text() == text
    (tmp_path / "old.json").write_text('{"baselines": {}}')
    capsys.readouterr()
    assert main(["psr", "table", str(files[0]), str(tmp_path / "old.json")]) == 2
    assert f"{tmp_path / 'old.json'}: not a steerlab psr eval report: no field " in capsys.readouterr().err


def test_evaluation_on_the_tiny_model_and_coefficient_view(tmp_path: Path, shared_cache: Path) -> None:
    model, tok = build_model("llama"), build_tokenizer()
    split = split_prompts(PROMPTS, seed=0, validation=3, test=4)
    data = _data(model, shared_cache, split.train)
    psr = train_psr(model, data, kind="s-psr", layers=[1], settings=TrainSettings(epochs=2))
    instruction = resolve_instruction(INSTRUCTION, KEYWORD_CHECK)
    settings = EvalSettings(
        alphas=(4.0, 1.0),
        refine=1,
        extend=2,
        coherence_target=0.5,
        ppl_max=1e9,
        rep_max=1.0,
        max_new_tokens=5,
        batch_size=4,
    )
    report = evaluate(model, tok, instruction, split, {"s-psr": psr}, settings)
    method = report["methods"]["s-psr"]
    # Everything is coherent under these thresholds: the grid, then two doublings, and no edge to refine.
    assert [p["alpha"] for p in method["curve"]] == [1.0, 4.0, 8.0, 16.0]
    assert all(p["n"] == 3 for p in method["curve"])
    tested = method["test"]
    assert tested["alpha"] == method["chosen_alpha"] and tested["n"] == 4
    # The test point, redone by hand: each test prompt alone, greedy, steered at the chosen alpha.
    responses = []
    for prompt in split.test:
        prefix = render_ids(tok, prompt, None)
        with torch.no_grad(), steer(model, psr, tested["alpha"]):
            out = model.generate(
                input_ids=torch.tensor([prefix]), max_new_tokens=5, do_sample=False, pad_token_id=0
            )[0, len(prefix) :].tolist()
        stop = next((i for i, t in enumerate(out) if t in (0, 2)), len(out))  # pad and eos end a response
        responses.append(str(tok.decode(out[:stop], skip_special_tokens=True)))
    assert [e["response"] for e in tested["examples"]] == responses
    assert tested["follows"] == ["w50" in r.split() for r in responses]
    assert tested["score"] == sum(tested["follows"]) / 4
    assert report["split"]["train"] == len(split.train) == len(PROMPTS) - 7
    paths = write_report(report, tmp_path / "report")
    assert [p.name for p in paths] == ["report.json", "report.md", "score_vs_alpha.png"]
    page = paths[1].read_text()
    assert "| s-psr |" in page and "into 5 training, 3 validation and 4 test prompts" in page
    assert json.loads(paths[0].read_text())["split"]["test"] == 4
    view = token_coefficients(model, tok, psr, INSTRUCTION, PROMPTS[0], max_new_tokens=5)
    prefix = render_ids(tok, PROMPTS[0], None)
    response = model.generate(
        input_ids=torch.tensor([render_ids(tok, PROMPTS[0], INSTRUCTION)]),
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=0,
    )[0, -5:].tolist()
    with torch.no_grad():
        h = model(input_ids=torch.tensor([prefix + response]), output_hidden_states=True).hidden_states[2][0]
    expected = torch.relu(h @ psr.w[1] + psr.b[1])[len(prefix) :]
    assert view["coefficients"]["1"] == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-6)
    write_coefficient_view(view, tmp_path / "c.png", tmp_path / "c.html")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and "<span" in (
        tmp_path / "c.html"
    ).read_text()


def test_evaluation_refuses_steering_trained_on_its_prompts(shared_cache: Path) -> None:
    model = build_model("llama")
    psr = train_psr(model, _data(model, shared_cache), kind="constant", layers=[1])  # trained on all PROMPTS
    split = split_prompts(PROMPTS, validation=3, test=4)
    with pytest.raises(ConfigError, match=r"steering 'c' was trained on 7 of the validation and test prompts"):
        evaluate(model, build_tokenizer(), resolve_instruction("caps"), split, {"c": psr})


def _tiny_model_dir(tmp_path: Path) -> Path:
    model_dir = tmp_path / "tiny"
    build_model("llama").save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
    return model_dir


def test_cli_with_a_prompts_file_trains_validates_and_tests_on_disjoint_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = _tiny_model_dir(tmp_path)
    prompts = [f"w{i} w{i + 1}" for i in range(20, 60, 2)]
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n")

    def split_flags(validation: int, test: int) -> list[str]:
        return ["--prompts", str(prompts_file), "--split-seed", "5", "--val-prompts", str(validation),
                "--test-prompts", str(test)]

    common = ["--instruction", INSTRUCTION, "--model", str(model_dir), "--max-new-tokens", "4", "--quiet"]
    out = tmp_path / "s.safetensors"
    train = ["psr", "train", *common, *split_flags(4, 5), "--kind", "s-psr", "--layers", "1", "--epochs", "2"]
    assert main([*train, "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    trained_on = PSRModel.load(out).metadata["training"]["prompt_sha256"]  # type: ignore[index]
    (key,) = (tmp_path / "cache").glob("*/key.json")
    train_prompts = json.loads(key.read_text())["prompts"]
    assert len(train_prompts) == 11 and trained_on and set(trained_on) <= {prompt_digest(p) for p in train_prompts}

    steered_calls: list[tuple[tuple[str, ...], float]] = []
    real_point = psr_evaluate.evaluate_point

    def spy(*args: Any, **kwargs: Any) -> Point:
        point = real_point(*args, **kwargs)
        if point.alpha is not None:
            steered_calls.append((tuple(args[3]), point.alpha))
        return point

    monkeypatch.setattr(psr_evaluate, "evaluate_point", spy)
    report_dir = tmp_path / "report"
    evaluate_args = ["psr", "eval", *common, "--check", KEYWORD_CHECK, "--steering", str(out), "--alphas", "1,2",
                     "--refine", "1", "--extend", "1", "--ppl-max", "1e9", "--rep-max", "1", "--out", str(report_dir)]
    assert main([*evaluate_args, *split_flags(4, 5)]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    validation, test = report["validation_prompts"], report["test_prompts"]
    assert (len(validation), len(test)) == (4, 5)
    assert report["split"] == {
        "source": str(prompts_file),
        "seed": 5,
        "train": 11,
        "validation": 4,
        "test": 5,
    }
    slices = [set(train_prompts), set(validation), set(test)]
    assert set().union(*slices) == set(prompts) and sum(map(len, slices)) == len(prompts)
    assert not set(trained_on) & {prompt_digest(p) for p in validation + test}
    chosen = report["methods"]["s-psr"]["chosen_alpha"]
    assert chosen is not None and report["methods"]["s-psr"]["test"]["alpha"] == chosen
    # Every steered generation ran on validation prompts, except exactly one at the chosen alpha on test.
    on_test = [alpha for prompts_used, alpha in steered_calls if list(prompts_used) == test]
    assert on_test == [chosen]
    assert all(list(p) in (validation, test) for p, _ in steered_calls)
    assert len(steered_calls) == len(report["methods"]["s-psr"]["curve"]) + 1
    assert "5 test prompts" in (report_dir / "report.md").read_text()

    # Evaluating on more held-out prompts than training left out would test on training prompts: refused.
    assert main([*evaluate_args, *split_flags(8, 9)]) == 2
    capsys.readouterr()
    program = tmp_path / "program.safetensors"
    ConditionalProgram((Condition("c", {1: torch.ones(32)}, "cosine", 0.0, ">"),)).save(program)
    assert main([str(program) if a == str(out) else a for a in [*evaluate_args, *split_flags(4, 5)]]) == 2
    assert f"{program} holds a conditional program: psr eval compares steering" in capsys.readouterr().err


def test_cli_errors_name_the_prompts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "never-loaded"  # the prompts are checked before the model is loaded
    few = tmp_path / "few.txt"
    few.write_text("w20 w21\nw22 w23\n")
    base = ["psr", "train", "--instruction", INSTRUCTION, "--model", str(model_dir), "--quiet", "--out", "x"]
    assert main([*base, "--prompts", str(few)]) == 2
    assert f"{few}: 2 prompt(s) are too few to split" in capsys.readouterr().err
    assert main([*base, "--prompts", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: no such prompts file" in capsys.readouterr().err
    assert main([*base, "--val-prompts", "0"]) == 2
    assert "--val-prompts must be at least 1, got 0" in capsys.readouterr().err


def test_cli_train_a_psr_on_a_saved_tiny_model(tmp_path: Path) -> None:
    model_dir = _tiny_model_dir(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "p.safetensors"
    code = main(
        [
            "psr",
            "train",
            "--instruction",
            INSTRUCTION,
            "--model",
            str(model_dir),
            "--prompts",
            str(prompts),
            "--kind",
            "a-psr",
            "--layers",
            "0,2",
            "--epochs",
            "1",
            "--hinge-margin",
            "0.5",
            "--max-new-tokens",
            "4",
            "--quiet",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    psr = PSRModel.load(out)
    assert psr.psr_kind == "a-psr" and psr.layer_indices == [0, 2]
    assert psr.metadata is not None and psr.metadata["training"]["hinge_margin"] == 0.5
    # 12 prompts: 2 validation (20%), 3 test (25%), 7 to train on.
    assert psr.metadata["training"]["items"] <= 7


def test_builtin_resources() -> None:
    prompts = load_prompts()
    assert len(prompts) >= 250 and len(set(prompts)) == len(prompts)
    kinds = {resolve_instruction(name).check.kind for name in ("caps", "french", "pirate", "ocean")}
    assert kinds == {"capitals", "language", "judge", "keyword"}


@pytest.mark.real
def test_language_check() -> None:
    # Real: langid unpacks its model on first use, which takes seconds.
    french = "Bonjour, je suis très heureux de vous aider avec cette question aujourd'hui."
    english = "Hello, I am very happy to help you with this question today."
    assert follows(Check("language", {"language": "fr"}), [french, english, ""]) == [True, False, False]


@pytest.mark.real
def test_embedding_judge_tells_a_pirate_from_plain_speech() -> None:
    pirate = resolve_instruction("pirate").check
    texts = [
        "Arr matey, hoist the sails! Ye be wantin' to boil an egg? Drop it in the pot, savvy?",
        "To boil an egg, place it in boiling water for about eight minutes, then cool it in cold water.",
    ]
    assert follows(pirate, texts) == [True, False]
    assert judge([""], "x", "y") == [False]


@pytest.mark.real
def test_real_model_data_matches_forward_and_s_psr_trains(tmp_path: Path) -> None:
    from steerlab.models import load_model

    torch.set_num_threads(1)
    model, tok = load_model()
    data = build_activation_data(
        model,
        tok,
        "Respond in French.",
        load_prompts()[:4],
        cache_dir=tmp_path,
        layers=[12],
        max_new_tokens=12,
    )
    item = data.items[0]
    with torch.no_grad():
        states = model(input_ids=torch.tensor([item.sequence(True)]), output_hidden_states=True).hidden_states
    start = item.start(True)
    torch.testing.assert_close(
        data.prompted[12][: len(item.response_ids)],
        states[13][0, start : start + len(item.response_ids)],
        rtol=1e-4,
        atol=1e-4,
    )
    psr = train_psr(model, data, kind="s-psr", layers=[12], settings=TrainSettings(epochs=5))
    assert relative_mse(psr, data, 12) < 1.0
