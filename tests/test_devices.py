"""Models on devices and dtypes: a tiny llama whose blocks an accelerate device map splits between the CPU and disk
offload steers, generates and replays exactly like the undivided model; --dtype loads that precision and keys
stored results apart; a missing device is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_model, build_tokenizer, random_ids

from steerlab.cli.common import load_model_from_args
from steerlab.cli.main import build_parser
from steerlab.core.hooks import steer
from steerlab.core.vector import SteeringVector
from steerlab.errors import ModelError
from steerlab.models import decoder_blocks, load_model
from steerlab.models.identity import model_identity
from steerlab.runtime.sweep import ScoredItem, Scorer, score_push_sets

# Block 0 and the ends on the CPU, blocks 1 and 2 offloaded to disk (loaded for each forward pass).
SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
         "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
HIDDEN = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    build_model("llama").save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def vector(seed: int = 0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(HIDDEN, generator=generator) for layer in (0, 1, 2)})


def test_a_model_split_between_cpu_and_disk_steers_like_the_undivided_one(folder: Path, tmp_path: Path) -> None:
    split, tok = load_model(str(folder), device_map=SPLIT, offload_folder=tmp_path / "offload")
    whole, _ = load_model(str(folder))
    assert split.hf_device_map == SPLIT
    assert {p.device.type for p in decoder_blocks(split)[1].parameters()} == {"meta"}  # truly not in memory
    assert model_identity(split, tok) == model_identity(whole, tok)  # the offloaded weights are digested too
    batch = tok(["w20 w21 w22 w23 w24", "w30 w31"], return_tensors="pt", padding=True)
    plain = whole(**batch).logits
    for positions in ("all", "answer"):
        with steer(whole, vector(), 0.8, positions=positions, prompt_lengths=[3, 1]):
            expected = whole(**batch).logits
        with steer(split, vector(), 0.8, positions=positions, prompt_lengths=[3, 1]):
            assert torch.equal(split(**batch).logits, expected)
        assert not torch.allclose(expected, plain, atol=1e-3)  # the steering did change the logits
    prompt = tok(["w40 w41 w42"], return_tensors="pt")
    outputs = []
    for model in (whole, split):
        with steer(model, vector(1), 1.5, positions="answer"):
            outputs.append(model.generate(**prompt, max_new_tokens=6, do_sample=False).tolist())
    assert outputs[0] == outputs[1]


def test_the_replay_sweep_runs_across_the_split(folder: Path, tmp_path: Path) -> None:
    # Pushes at block 0 (CPU) and at blocks 0 and 1 together (1 on disk): the replay runs the offloaded blocks.
    split, _ = load_model(str(folder), device_map=SPLIT, offload_folder=tmp_path / "offload")
    whole, _ = load_model(str(folder))
    letters = Scorer(letter_ids=((9,), (10,)))
    items = [ScoredItem(prefix=tuple(random_ids(5 + k, seed=k)), chunks=(tuple(random_ids(1, seed=50 + k)),))
             for k in range(4)]
    rows = torch.tensor([[0.5], [-0.5], [2.0]])
    sets = {(0,): {0: rows * vector().layers[0]},
            (0, 1): {0: rows * vector().layers[0], 1: rows * vector().layers[1]}}
    expected = score_push_sets(whole, items, letters, sets, batch_size=3)
    got = score_push_sets(split, items, letters, sets, batch_size=3)
    assert got.baseline == expected.baseline and got.steered == expected.steered
    assert got.steered[(0, 1)][2] != got.baseline  # the pushes change the scores


def test_the_dtype_flag_loads_that_precision_and_keys_results_apart(folder: Path) -> None:
    args = build_parser().parse_args(["generate", "--prompt", "hi", "--model", str(folder), "--dtype", "bf16",
                                      "--device", "cpu", "-q"])
    half, tok = load_model_from_args(args)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    reference = build_model("llama").to(torch.bfloat16)  # the saved fp32 weights, rounded once
    batch = tok(["w20 w21 w22"], return_tensors="pt")
    with steer(half, vector(), 0.8):
        got = half(**batch).logits
    with steer(reference, vector(), 0.8):  # the float32 vector is cast to the block's dtype in the hook
        assert torch.equal(got, reference(**batch).logits)
    full, _ = load_model(str(folder))
    assert model_identity(half, tok)["dtype"] == "torch.bfloat16"
    assert model_identity(half, tok) != model_identity(full, tok)  # so no stored fp32 result is reused in bf16
    assert model_identity(full, tok)["devices"] == "cpu"  # the kind of device is in every store key too


def test_bad_devices_and_dtypes_are_clear_errors(folder: Path) -> None:
    with pytest.raises(ModelError, match="unknown dtype 'fp8'; choose one of fp32, bf16, fp16"):
        load_model(str(folder), dtype="fp8")
    with pytest.raises(ModelError, match="give a device"):
        load_model(str(folder), device="cpu", device_map="auto")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="cannot move the model to device 'cuda:7'"):
            load_model(str(folder), device="cuda:7")
