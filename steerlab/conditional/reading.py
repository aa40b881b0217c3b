"""Reading a prompt's hidden state for a condition: the mean over the user turn's tokens, padding masked.

Only the user's own text is read, not the chat template around it (the same for every prompt, it would pull all
scores together) nor a system prompt. A span counts real tokens of the row (padding excluded), so it holds for
left and right padding alike; the gate of :mod:`steerlab.conditional.gating` reads the same span at prefill.

Example::

    from steerlab import load_model
    from steerlab.conditional.reading import read_prompts
    model, tok = load_model()
    acts = read_prompts(model, tok, ["How do I bake bread?"], layers=[6])   # {6: tensor (1, 576)}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.data.prompts import PromptStyle, encode
from steerlab.errors import ConfigError
from steerlab.progress import Progress, silent
from steerlab.runtime.extract import Group, extract


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str,
                  style: PromptStyle = PromptStyle()) -> tuple[list[int], tuple[int, int]]:
    """Token ids of the rendered prompt and the ``[start, end)`` token span of the user's text in them.

    The span is found without offsets (any tokenizer): the text up to the user's message and up to its end are
    tokenised, and each boundary falls where their tokens stop agreeing with the whole prompt's.
    """
    if not prompt.strip():
        raise ConfigError("a prompt is empty")
    templated = style.templated(tokenizer)
    text = style.render(tokenizer, prompt)
    begin = text.rfind(prompt)  # the last occurrence: the user turn comes after any system prompt
    if begin < 0:
        raise ConfigError(f"the chat template changed the user's text; cannot find {prompt[:40]!r} in the prompt")
    ids = encode(tokenizer, text, templated=templated)
    start = _common(encode(tokenizer, text[:begin], templated=templated), ids) if begin else 0
    end = _common(encode(tokenizer, text[:begin + len(prompt)], templated=templated), ids)
    # A token merged across a boundary counts as the user's, so the span is never empty.
    start = min(start, len(ids) - 1)
    return ids, (start, max(end, start + 1))


def read_prompts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 layers: Sequence[int], *, style: PromptStyle = PromptStyle(), batch_size: int = 16,
                 progress: Progress = silent) -> dict[int, torch.Tensor]:
    """``{layer: (len(prompts), hidden)}``: each prompt's mean block output over its user turn, float32."""
    groups = []
    for prompt in prompts:
        ids, span = encode_prompt(tokenizer, prompt, style)
        groups.append(Group((), (tuple(ids),), (span,)))
    return extract(model, groups, layers, batch_size=batch_size, progress=progress)
