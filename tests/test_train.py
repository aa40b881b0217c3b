"""train_vector against hand-computed mean differences of hidden states, for every pair format and token choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import DEPTH, build_model, build_tokenizer

from steerlab import ContrastPair, load_pairs, train_vector
from steerlab.data.prompts import PromptStyle
from steerlab.errors import ConfigError
from steerlab.methods.contrastive import pca_direction, probe_direction
from steerlab.methods.train import pair_group
from steerlab.models import decoder_blocks

LAYERS = [0, 2]

# CAA-style raw pairs: a shared question, answers differing at the letter.
RAW = [
    ContrastPair("w1 w2 w3 (A) w9", "w1 w2 w3 (B) w9"),
    ContrastPair("w4 w5 (B) w8 w8", "w4 w5 (A) w8 w8"),
    ContrastPair("w6 w7 w10 w11 (A)", "w6 w7 w10 w11 (B)"),
]
# Answers to a prompt; the second pair's answers share their first word.
PROMPTED = [
    ContrastPair("w20 w21", "w30", prompt="w1 w2 w3"),
    ContrastPair("w22 w23 w24", "w22 w31", prompt="w4 w5"),
    ContrastPair("w25", "w32 w33", prompt="w6 w7 w8 w9"),
]


@torch.no_grad()
def states(model: tf.PreTrainedModel, ids: list[int]) -> dict[int, torch.Tensor]:
    """Every block's output for one unpadded sequence, hooked at the blocks: {layer: (seq, hidden)}."""
    seen: dict[int, torch.Tensor] = {}
    handles = [block.register_forward_hook(
        lambda _m, _a, out, i=i: seen.__setitem__(i, (out[0] if isinstance(out, tuple) else out)[0]))
        for i, block in enumerate(decoder_blocks(model))]
    try:
        model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def full_ids(tokenizer: tf.PreTrainedTokenizerBase, pair: ContrastPair) -> tuple[list[int], list[int]]:
    """Both sides as the model reads them, built by hand: the chat markup is the fixture's template."""
    if pair.prompt is None:
        return tokenizer.encode(pair.positive), tokenizer.encode(pair.negative)
    head = f"<user> {pair.prompt} </turn> <assistant> "
    return tokenizer.encode(head + pair.positive), tokenizer.encode(head + pair.negative)


def read_at(ids: list[int], other: list[int], token: str | int) -> slice:
    common = next(i for i, (a, b) in enumerate(zip([*ids, -1], [*other, -2], strict=False)) if a != b)
    if token == "diff":
        return slice(common, common + 1)
    if token == "answer":
        return slice(common, len(ids))
    if token == "last":
        return slice(len(ids) - 1, len(ids))
    if token == "mean":
        return slice(0, len(ids))
    assert isinstance(token, int)
    at = token % len(ids)
    return slice(at, at + 1)


def hand_activations(model: tf.PreTrainedModel, tokenizer: tf.PreTrainedTokenizerBase,
                     pairs: list[ContrastPair], token: str | int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    pos_rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
    neg_rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
    for pair in pairs:
        pos, neg = full_ids(tokenizer, pair)
        pos_states, neg_states = states(model, pos), states(model, neg)
        for layer in LAYERS:
            pos_rows[layer].append(pos_states[layer][read_at(pos, neg, token)].mean(0))
            neg_rows[layer].append(neg_states[layer][read_at(neg, pos, token)].mean(0))
    return {layer: (torch.stack(pos_rows[layer]), torch.stack(neg_rows[layer])) for layer in LAYERS}


def hand_mean_difference(model: tf.PreTrainedModel, tokenizer: tf.PreTrainedTokenizerBase,
                         pairs: list[ContrastPair], token: str | int) -> dict[int, torch.Tensor]:
    acts = hand_activations(model, tokenizer, pairs, token)
    return {layer: pos.mean(0) - neg.mean(0) for layer, (pos, neg) in acts.items()}


def assert_vector(got: dict[int, torch.Tensor], expected: dict[int, torch.Tensor]) -> None:
    assert list(got) == LAYERS
    for layer in LAYERS:
        torch.testing.assert_close(got[layer], expected[layer], atol=2e-5, rtol=1e-5)


def test_the_fixture_template_is_what_the_hand_computation_assumes() -> None:
    tokenizer = build_tokenizer()
    assert PromptStyle().render(tokenizer, "w1 w2") == "<user> w1 w2 </turn> <assistant> "
    assert tokenizer.encode("<user> w1 w2 </turn> <assistant> w3") == [3, 12, 13, 6, 4, 14]


@pytest.mark.parametrize(("family", "token"), [("llama", t) for t in ("diff", "answer", "last", "mean", 1, -2)]
                         + [("gpt2", "diff")])
def test_raw_pairs_equal_the_hand_computed_mean_difference(family: str, token: str | int) -> None:
    model, tokenizer = build_model(family), build_tokenizer()
    vector = train_vector(model, tokenizer, RAW, LAYERS, token=token)
    assert_vector(vector.layers, hand_mean_difference(model, tokenizer, RAW, token))


@pytest.mark.parametrize("token", ["diff", "answer", "last", "mean"])
def test_prompted_pairs_equal_the_hand_computed_mean_difference(token: str) -> None:
    model, tokenizer = build_model("qwen2"), build_tokenizer()
    vector = train_vector(model, tokenizer, PROMPTED, LAYERS, token=token)
    assert_vector(vector.layers, hand_mean_difference(model, tokenizer, PROMPTED, token))


def test_diff_reads_the_caa_answer_letter_and_the_first_differing_answer_token() -> None:
    tokenizer = build_tokenizer()
    group = pair_group(tokenizer, RAW[0], "diff")
    assert group.prefix == tuple(tokenizer.encode("w1 w2 w3"))
    assert group.suffixes == (tuple(tokenizer.encode("(A) w9")), tuple(tokenizer.encode("(B) w9")))
    assert group.spans == ((0, 1), (0, 1))
    # Prompted pair whose answers share "w22": read at "w23" / "w31", after the chat-formatted prompt.
    group = pair_group(tokenizer, PROMPTED[1], "diff")
    assert group.prefix == tuple(tokenizer.encode("<user> w4 w5 </turn> <assistant> w22"))
    assert group.suffixes == (tuple(tokenizer.encode("w23 w24")), tuple(tokenizer.encode("w31")))


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_three_file_formats(tmp_path: Path) -> None:
    model, tokenizer = build_model("llama"), build_tokenizer()
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"positive": p.positive, "negative": p.negative} for p in RAW])
    prompted_list = tmp_path / "prompted.json"
    prompted_list.write_text(json.dumps([{"prompt": p.prompt, "positive": p.positive, "negative": p.negative}
                                         for p in PROMPTED]))
    preference = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": p.prompt, "chosen": p.positive,
                                                        "rejected": p.negative} for p in PROMPTED])
    assert load_pairs(raw) == RAW
    assert load_pairs(prompted_list) == load_pairs(preference) == PROMPTED

    from_raw = train_vector(model, tokenizer, load_pairs(raw), LAYERS)
    assert_vector(from_raw.layers, hand_mean_difference(model, tokenizer, RAW, "diff"))
    from_list = train_vector(model, tokenizer, load_pairs(prompted_list), LAYERS)
    from_preference = train_vector(model, tokenizer, load_pairs(preference), LAYERS)
    assert_vector(from_preference.layers, hand_mean_difference(model, tokenizer, PROMPTED, "diff"))
    for layer in LAYERS:
        assert torch.equal(from_list.layers[layer], from_preference.layers[layer])


def test_same_input_gives_the_same_bytes(tmp_path: Path) -> None:
    model, tokenizer = build_model("gpt_neox"), build_tokenizer()
    paths = []
    for run in range(2):
        vector = train_vector(build_model("gpt_neox") if run else model, tokenizer, RAW + PROMPTED, LAYERS)
        paths.append(tmp_path / f"v{run}.safetensors")
        vector.save(paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_batch_size_does_not_change_the_vector() -> None:
    model, tokenizer = build_model("llama"), build_tokenizer()
    pairs = RAW + PROMPTED
    one = train_vector(model, tokenizer, pairs, LAYERS, batch_size=1)
    many = train_vector(model, tokenizer, pairs, LAYERS, batch_size=16)
    assert_vector(one.layers, many.layers)


@pytest.mark.parametrize(("method", "make"), [("pca", pca_direction), ("probe", probe_direction)])
def test_other_methods_use_the_same_activations(method: str, make: object) -> None:
    model, tokenizer = build_model("llama"), build_tokenizer()
    pairs = RAW + PROMPTED
    vector = train_vector(model, tokenizer, pairs, LAYERS, method=method)
    acts = hand_activations(model, tokenizer, pairs, "diff")
    for layer in LAYERS:
        expected = make(*acts[layer])  # type: ignore[operator]
        torch.testing.assert_close(vector.layers[layer], expected, atol=1e-4, rtol=1e-3)
    assert vector.metadata["method"] == method


def test_metadata_records_how_the_vector_was_made() -> None:
    model, tokenizer = build_model("llama"), build_tokenizer()
    vector = train_vector(model, tokenizer, PROMPTED, [1], token="answer", extra_metadata={"note": "x"})
    meta = vector.metadata
    assert meta["kind"] == "vector" and meta["method"] == "mean-diff" and meta["token"] == "answer"
    assert meta["hidden_size"] == 32 and meta["layers"] == [1] and meta["note"] == "x"
    assert meta["settings"] == {"pairs": 3, "chat_template": True, "system": None}
    assert meta["normalized"] is False


def test_training_errors() -> None:
    model, tokenizer = build_model("llama"), build_tokenizer()
    with pytest.raises(ConfigError, match="no pairs to train on"):
        train_vector(model, tokenizer, [], LAYERS)
    with pytest.raises(ConfigError, match="tokenise identically"):
        train_vector(model, tokenizer, [ContrastPair("w1  w2", "w1 w2")], LAYERS)
    with pytest.raises(ConfigError, match="unknown token choice 'first'"):
        train_vector(model, tokenizer, RAW, LAYERS, token="first")
    with pytest.raises(ConfigError, match="token index 9 is outside a text of 5 tokens"):
        train_vector(model, tokenizer, RAW, LAYERS, token=9)
    with pytest.raises(ConfigError, match="unknown method 'svm'"):
        train_vector(model, tokenizer, RAW, LAYERS, method="svm")
    with pytest.raises(ConfigError, match="out of range"):
        train_vector(model, tokenizer, RAW, [DEPTH])
