"""Tests of prompt steering replacement: steering function, data, training, files, checks, evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import DEPTH, HIDDEN, build_model, build_tokenizer

from steerlab.cli.main import main
from steerlab.core.hooks import steer
from steerlab.core.vector import SteeringVector
from steerlab.data.prompts import PromptStyle
from steerlab.errors import ConfigError, VectorFileError
from steerlab.files import load_steering
from steerlab.models import decoder_blocks
from steerlab.psr.checks import Check, follows, judge, perplexities, repetition_rate, resolve_instruction
from steerlab.psr.data import ActivationData, build_activation_data, load_prompts, render_ids
from steerlab.psr.evaluate import EvalSettings, evaluate, token_coefficients, write_coefficient_view, write_report
from steerlab.psr.model import PSRModel, TrainSettings, relative_mse, train_psr
from steerlab.runtime.generate import generate

INSTRUCTION = "w10 w11 w12"
PROMPTS = [f"w{i} w{i + 1} w{i + 2}" for i in range(20, 44, 2)]


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


def _data(model: tf.PreTrainedModel, root: Path, **kwargs: object) -> ActivationData:
    tok = build_tokenizer()
    return build_activation_data(
        model,
        tok,
        INSTRUCTION,
        PROMPTS,
        cache_dir=root / "cache",
        max_new_tokens=6,
        batch_size=4,
        chunk_size=5,
        **kwargs,
    )  # type: ignore[arg-type]


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


def test_constant_is_the_mean_difference_and_every_kind_round_trips(
    tmp_path: Path, shared_cache: Path
) -> None:
    model = build_model("llama")
    data = _data(model, shared_cache)
    constant = train_psr(model, data, kind="constant", layers=[1])
    z = data.mean_difference(1)
    assert torch.equal(constant.z[1], z)
    h = torch.randn(2, 3, HIDDEN)
    assert torch.equal(constant.delta(1, h), torch.ones(2, 3, 1) * z)
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
    assert relative_mse(fitted, data, 1) < relative_mse(constant, data, 1) < 1.0
    assert fitted.metadata is not None
    assert fitted.metadata["relative_mse"]["1"] == relative_mse(fitted, data, 1)


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


def test_evaluation_report_and_coefficient_view(tmp_path: Path, shared_cache: Path) -> None:
    model, tok = build_model("llama"), build_tokenizer()
    data = _data(model, shared_cache)
    psr = train_psr(model, data, kind="s-psr", layers=[1], settings=TrainSettings(epochs=2))
    instruction = resolve_instruction(INSTRUCTION, '{"kind": "keyword", "words": ["w50"]}')
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
    report = evaluate(model, tok, instruction, PROMPTS[:4], {"s-psr": psr}, settings)
    curve = report["methods"]["s-psr"]["curve"]
    # Everything is coherent under these thresholds: the grid, then two doublings, and no edge to refine.
    assert [p["alpha"] for p in curve] == [1.0, 4.0, 8.0, 16.0]
    assert report["methods"]["s-psr"]["chosen"]["alpha"] in (1.0, 4.0, 8.0, 16.0)
    assert report["baselines"]["prompting"]["alpha"] is None
    paths = write_report(report, tmp_path / "report")
    assert [p.name for p in paths] == ["report.json", "report.md", "score_vs_alpha.png"]
    assert "| s-psr |" in paths[1].read_text()
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


def test_cli_train_on_a_saved_tiny_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    build_model("llama").save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
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
    assert (
        main(
            [
                "psr",
                "train",
                "--instruction",
                INSTRUCTION,
                "--model",
                str(model_dir),
                "--prompts",
                str(tmp_path / "missing.txt"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )


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
