"""Steering vectors from contrastive pairs.

Where a pair is read matters. The default, ``diff``, reads each side at the first token where the two sides differ:
for the standard CAA format (a shared question, answers ending in " (A)" / " (B)") that is the answer letter, as CAA
does; for pairs with a ``prompt`` it is the first token of each answer. A vector read at the closing ")" of raw CAA
text does not steer, which is why ``last`` is not the default.

Example::

    from steerlab import load_model, load_pairs, train_vector
    model, tok = load_model()
    vector = train_vector(model, tok, load_pairs("pairs.jsonl"), layers=[10, 12, 14])
    vector.save("v.safetensors")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.vector import SteeringVector
from steerlab.data.items import ContrastPair
from steerlab.data.prompts import PromptStyle, encode, encode_continuation
from steerlab.errors import ConfigError
from steerlab.methods.contrastive import direction
from steerlab.models import hidden_size, model_name
from steerlab.progress import Progress, silent
from steerlab.runtime.extract import Group, extract

TOKENS: tuple[str, ...] = ("diff", "answer", "last", "mean")
TOKEN_HELP = {
    "diff": "the first token where the two sides differ (CAA's answer token)",
    "answer": "mean over the tokens from the first difference to the end",
    "last": "the last token",
    "mean": "mean over all tokens of each side",
}


def _sides(tokenizer: PreTrainedTokenizerBase, pair: ContrastPair, style: PromptStyle) -> tuple[
    list[int], list[int], int
]:
    """Token ids of both sides, and the length of the prefix the caller may share (the chat-formatted prompt)."""
    if pair.prompt is None:
        return encode(tokenizer, pair.positive, templated=False), encode(tokenizer, pair.negative, templated=False), 0
    templated = style.templated(tokenizer)
    head = style.render(tokenizer, pair.prompt)
    prompt_ids, pos = encode_continuation(tokenizer, head, pair.positive, templated=templated)
    _, neg = encode_continuation(tokenizer, head, pair.negative, templated=templated)
    return prompt_ids + pos, prompt_ids + neg, len(prompt_ids)


def pair_group(tokenizer: PreTrainedTokenizerBase, pair: ContrastPair, token: str | int,
               style: PromptStyle = PromptStyle()) -> Group:
    """The two sides of ``pair`` as one extraction group, sharing every token before the part that is read."""
    pos, neg, _ = _sides(tokenizer, pair, style)
    common = 0
    while common < min(len(pos), len(neg)) and pos[common] == neg[common]:
        common += 1
    if common == len(pos) == len(neg):
        raise ConfigError(f"the two sides of a pair tokenise identically: {pair.positive!r}")
    first_diff = min(common, len(pos) - 1, len(neg) - 1)
    if token == "mean":
        return Group((), (tuple(pos), tuple(neg)), ((0, len(pos)), (0, len(neg))))
    if isinstance(token, int):
        at = [len(pos) + token if token < 0 else token, len(neg) + token if token < 0 else token]
        for index, ids in zip(at, (pos, neg), strict=True):
            if not 0 <= index < len(ids):
                raise ConfigError(f"token index {token} is outside a text of {len(ids)} tokens")
        cut = min(first_diff, *at)
        return Group(tuple(pos[:cut]), (tuple(pos[cut:]), tuple(neg[cut:])),
                     ((at[0] - cut, at[0] - cut + 1), (at[1] - cut, at[1] - cut + 1)))
    cut = first_diff
    a, b = tuple(pos[cut:]), tuple(neg[cut:])
    if token == "diff":
        spans = ((0, 1), (0, 1))
    elif token == "answer":
        spans = ((0, len(a)), (0, len(b)))
    elif token == "last":
        spans = ((len(a) - 1, len(a)), (len(b) - 1, len(b)))
    else:
        raise ConfigError(f"unknown token choice '{token}'; choose one of {', '.join(TOKENS)} or an integer index")
    return Group(tuple(pos[:cut]), (a, b), spans)


def train_vector(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int],
    *,
    method: str = "mean-diff",
    token: str | int = "diff",
    style: PromptStyle = PromptStyle(),
    batch_size: int = 16,
    progress: Progress = silent,
    extra_metadata: dict[str, Any] | None = None,
) -> SteeringVector:
    """A steering vector with one direction per layer, from one batched pass over the pairs."""
    if not pairs:
        raise ConfigError("no pairs to train on")
    groups = [pair_group(tokenizer, pair, token, style) for pair in pairs]
    acts = extract(model, groups, layers, batch_size=batch_size, progress=progress)
    directions = {layer: direction(method, acts[layer][0::2], acts[layer][1::2]) for layer in layers}
    metadata: dict[str, Any] = {
        "kind": "vector",
        "model": model_name(model),
        "hidden_size": hidden_size(model),
        "method": method,
        "token": token,
        "normalized": False,
        "settings": {"pairs": len(pairs), "chat_template": style.templated(tokenizer), "system": style.system},
    }
    metadata.update(extra_metadata or {})
    return SteeringVector(directions, metadata)
