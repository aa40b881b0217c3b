"""Activation extraction: many layers from one early-stopping pass, padding- and batching-independent."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers as tf
from conftest import DEPTH, HIDDEN, PARTS, build_model, hooks, random_ids

from steerlab.errors import ConfigError
from steerlab.models import decoder_blocks, final_norm
from steerlab.runtime.capture import capture, run_until_captured
from steerlab.runtime.extract import Group, extract, single


@torch.no_grad()
def layer_outputs(model: tf.PreTrainedModel, ids: list[int]) -> dict[int, torch.Tensor]:
    """Output of every decoder block for one unpadded sequence: {layer: (seq, hidden)}.

    Layers below the last are hidden_states[layer + 1]; the last block's output is hooked, because
    transformers 5 puts the final norm's output in hidden_states[-1].
    """
    seen: list[torch.Tensor] = []
    handle = decoder_blocks(model)[-1].register_forward_hook(
        lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    states = {layer: out.hidden_states[layer + 1][0] for layer in range(DEPTH - 1)}
    states[DEPTH - 1] = seen[0][0]
    return states


def reference(model: tf.PreTrainedModel, groups: list[Group], layers: list[int]) -> dict[int, torch.Tensor]:
    """Each prefix + suffix run alone and unpadded, averaged over its span."""
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for group in groups:
        for suffix, (start, end) in zip(group.suffixes, group.spans, strict=True):
            states = layer_outputs(model, [*group.prefix, *suffix])
            at = len(group.prefix)
            for layer in layers:
                rows[layer].append(states[layer][at + start:at + end].mean(0))
    return {layer: torch.stack(rows[layer]) for layer in layers}


def assert_acts_close(got: dict[int, torch.Tensor], expected: dict[int, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for layer in got:
        assert got[layer].dtype == torch.float32
        torch.testing.assert_close(got[layer], expected[layer].float(), atol=2e-5, rtol=1e-5)


LENGTHS = [7, 3, 5, 9, 4]


def single_groups() -> list[Group]:
    """Texts of different lengths, read at the last token, a mean, and given positions."""
    texts = [random_ids(n, seed) for seed, n in enumerate(LENGTHS)]
    return [
        single(texts[0]),
        single(texts[1], (0, 3)),  # mean over the whole text
        single(texts[2], (1, 2)),  # a given position
        single(texts[3], (2, 8)),  # mean over a range
        single(texts[4]),
    ]


def prefix_groups() -> list[Group]:
    """Pairs sharing prefixes of different lengths, with continuations of different lengths."""
    return [
        Group(tuple(random_ids(6, 10)), (tuple(random_ids(2, 11)), tuple(random_ids(4, 12))), ((0, 1), (3, 4))),
        Group(tuple(random_ids(2, 13)), (tuple(random_ids(5, 14)), tuple(random_ids(1, 15))), ((0, 5), (0, 1))),
        Group(tuple(random_ids(4, 16)), (tuple(random_ids(3, 17)), tuple(random_ids(3, 18))), ((1, 3), (2, 3))),
    ]


def test_single_texts_match_unpadded_forward_at_several_layers(family: str) -> None:
    model = build_model(family)
    groups = single_groups()
    layers = [0, DEPTH - 1, 1]
    expected = reference(model, groups, layers)
    batched = extract(model, groups, layers, batch_size=16)
    one_by_one = extract(model, groups, layers, batch_size=1)
    assert_acts_close(batched, expected)
    assert_acts_close(one_by_one, expected)


def test_shared_prefix_groups_match_full_sequences(family: str) -> None:
    model = build_model(family)
    groups = prefix_groups()
    layers = [1, 0]
    expected = reference(model, groups, layers)
    assert_acts_close(extract(model, groups, layers, batch_size=16), expected)
    assert_acts_close(extract(model, groups, layers, batch_size=2), expected)  # one group per batch


@pytest.mark.parametrize("target", ["attn", "mlp"])
def test_attention_and_mlp_targets_read_the_output_projection(family: str, target: str) -> None:
    # Independent reading: the output of the linear layer that ends the attention (MLP), one unpadded text at a time.
    model = build_model(family)
    groups = prefix_groups()
    seen: list[torch.Tensor] = []
    proj = decoder_blocks(model)[1].get_submodule(PARTS[family][target][1])
    handle = proj.register_forward_hook(lambda _m, _a, out: seen.append(out[0]))
    expected = []
    with torch.no_grad():
        for group in groups:
            for suffix, (start, end) in zip(group.suffixes, group.spans, strict=True):
                seen.clear()
                model(input_ids=torch.tensor([list(group.prefix) + list(suffix)]), use_cache=False)
                expected.append(seen[0][len(group.prefix) + start:len(group.prefix) + end].mean(0))
    handle.remove()
    got = extract(model, groups, [1], batch_size=4, target=target)[1]  # type: ignore[arg-type]
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_mixed_groups_come_back_in_input_order(llama: tf.PreTrainedModel) -> None:
    # Batches are formed by length and by kind (with or without a prefix); results keep the input order.
    groups = [prefix_groups()[0], single_groups()[3], prefix_groups()[1], single_groups()[1]]
    expected = reference(llama, groups, [1])
    got = extract(llama, groups, [1], batch_size=3)
    assert got[1].shape == (6, HIDDEN)
    assert_acts_close(got, expected)


def test_progress_reports_every_text(llama: tf.PreTrainedModel) -> None:
    calls: list[tuple[int, int, str]] = []
    extract(llama, single_groups(), [0], batch_size=2, progress=lambda done, total, what: calls.append(
        (done, total, what)))
    assert calls[-1] == (5, 5, "activations")
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


@pytest.mark.parametrize("groups", [single_groups, prefix_groups])
def test_the_pass_stops_after_the_deepest_requested_layer(llama: tf.PreTrainedModel, groups: Any) -> None:
    calls: list[str] = []
    blocks = decoder_blocks(llama)
    watched = {"block 2": blocks[2], "final norm": final_norm(llama), "lm head": llama.get_output_embeddings()}
    handles = [module.register_forward_hook(lambda *_a, name=name: calls.append(name))
               for name, module in watched.items()]
    deepest: list[int] = []
    handles.append(blocks[1].register_forward_hook(lambda *_a: deepest.append(1)))
    try:
        extract(llama, groups(), [1, 0], batch_size=16)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    assert deepest  # block 1 did run
    assert not any(m._forward_hooks for m in llama.modules())  # extraction removed its own hooks


def test_extraction_errors(llama: tf.PreTrainedModel) -> None:
    with pytest.raises(ConfigError, match=r"layer\(s\) \[3\] out of range: the model has layers 0\.\.2"):
        extract(llama, single_groups(), [1, 3])
    with pytest.raises(ConfigError, match="no layers requested"):
        extract(llama, single_groups(), [])
    with pytest.raises(ConfigError, match=r"token span \(2, 5\) does not fit a continuation of 4 tokens"):
        Group((1,), ((5, 6, 7, 8),), ((2, 5),))
    with pytest.raises(ConfigError, match="one span per suffix"):
        Group((), ((5, 6),), ())


def test_groups_of_several_texts_without_a_prefix(llama: tf.PreTrainedModel) -> None:
    # train_vector's token="mean" makes such groups: both sides of a pair, nothing shared.
    groups = [Group((), (tuple(random_ids(4, 30)), tuple(random_ids(6, 31))), ((0, 4), (0, 6))),
              Group((), (tuple(random_ids(3, 32)), tuple(random_ids(2, 33))), ((2, 3), (0, 1)))]
    expected = reference(llama, groups, [0, 1])
    assert_acts_close(extract(llama, groups, [0, 1], batch_size=16), expected)
    assert_acts_close(extract(llama, groups, [0, 1], batch_size=2), expected)


def test_capture_reads_block_outputs_and_stops_after_the_deepest(family: str) -> None:
    model, ids = build_model(family), random_ids(6, 11)
    expected = layer_outputs(model, ids)
    before = hooks(model)  # after transformers installed its own hidden-state recorder
    ran: list[int] = []
    handles = [block.register_forward_pre_hook(lambda _m, _a, k=k: ran.append(k))
               for k, block in enumerate(decoder_blocks(model))]
    try:
        with torch.no_grad(), capture(model, [1, 0], stop_after=True) as states:
            run_until_captured(model, input_ids=torch.tensor([ids]), use_cache=False)
        assert ran == [0, 1]  # block 2 and the head never ran
        for layer in (0, 1):
            torch.testing.assert_close(states[layer][0], expected[layer], atol=1e-6, rtol=1e-6)
        ran.clear()
        with torch.no_grad(), capture(model, [DEPTH - 1]) as states:
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
        assert ran == list(range(DEPTH)) and logits.shape[1] == len(ids)
        torch.testing.assert_close(states[DEPTH - 1][0], expected[DEPTH - 1], atol=1e-6, rtol=1e-6)
    finally:
        for handle in handles:
            handle.remove()
    assert hooks(model) == before
