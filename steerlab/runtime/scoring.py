"""Scoring multiple-choice answers: letter logits, and letter-free choice likelihood.

Both functions run the model as it is: steer it around the call (``with steer(...)``) to score steered answers.

Choice likelihood computes each question once: the question minus its last token goes through the model once and
its KV cache is shared by every choice; each choice then runs ``[last question token] + choice tokens``, whose
logits predict exactly the choice's tokens. Steer around it with ``positions="all"``; to steer only the tokens that
predict the answer, use :func:`steerlab.runtime.sweep.score_pushes`, which knows where each answer starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from steerlab.errors import ConfigError
from steerlab.models import cache_kwarg
from steerlab.progress import Progress, silent
from steerlab.runtime import batching


@dataclass(frozen=True)
class ChoiceQuestion:
    """A tokenised question and the tokenised continuations to compare."""

    prompt: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.prompt) < 2 or not self.choices or any(len(c) < 1 for c in self.choices):
            raise ConfigError("a question needs at least two tokens and every choice at least one")


@torch.no_grad()
def choice_logprobs(
    model: nn.Module,
    questions: Sequence[ChoiceQuestion],
    *,
    length_normalize: bool = False,
    batch_size: int = 8,
    progress: Progress = silent,
) -> list[list[float]]:
    """Log-likelihood of each choice after its question (summed over tokens, or averaged when normalised)."""
    device = next(model.parameters()).device
    pad = batching.pad_id(model)
    results: list[list[float]] = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start:start + batch_size]
        results.extend(_choice_batch(model, batch, pad, device, length_normalize))
        progress(min(start + batch_size, len(questions)), len(questions), "choice likelihood")
    return results


def _choice_batch(model: nn.Module, batch: Sequence[ChoiceQuestion], pad: int, device: torch.device,
                  length_normalize: bool) -> list[list[float]]:
    heads = [q.prompt[:-1] for q in batch]
    prefix_ids, prefix_mask = batching.pad(heads, pad, device=device)
    cache = DynamicCache(config=getattr(model, "config", None))
    model(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=batching.positions(prefix_mask),
          **cache_kwarg(model, cache), use_cache=True, logits_to_keep=1)
    counts = [len(q.choices) for q in batch]
    index = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)], device=device)
    cache.batch_select_indices(index)
    prefix_mask = prefix_mask[index]
    tails = [(q.prompt[-1], *choice) for q in batch for choice in q.choices]
    ids, mask = batching.pad(tails, pad, side="right", device=device)
    full_mask = torch.cat([prefix_mask, mask], dim=1)
    positions = batching.positions(full_mask)[:, prefix_mask.shape[1]:]
    logits = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, **cache_kwarg(model, cache),
                   use_cache=True).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    logprobs = logprobs * mask[:, 1:]
    totals = logprobs.sum(1)
    if length_normalize:
        totals = totals / mask[:, 1:].sum(1)
    out, row = [], 0
    for n in counts:
        out.append(totals[row:row + n].tolist())
        row += n
    return out


def letter_token_ids(tokenizer: PreTrainedTokenizerBase, letters: Sequence[str]) -> list[list[int]]:
    """For each letter, every single-token spelling the model may produce next: "A" and " A" are often distinct."""
    encode = tokenizer.encode
    found: list[list[int]] = []
    for letter in letters:
        ids = {tuple(encode(text, add_special_tokens=False)) for text in (letter, " " + letter)}
        singles = sorted(i[0] for i in ids if len(i) == 1)
        if not singles:
            raise ConfigError(f"the tokenizer has no single token for the answer letter {letter!r}")
        found.append(singles)
    return found


@torch.no_grad()
def letter_logprobs(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    letter_ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    progress: Progress = silent,
) -> torch.Tensor:
    """(n_prompts, n_letters) log-probabilities of the next token restricted to the letters.

    A letter's logit is the log-sum-exp over its spellings, so "A" and " A" both count for A.
    """
    device = next(model.parameters()).device
    pad = batching.pad_id(model)
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = batching.pad(prompts[start:start + batch_size], pad, device=device)
        last = model(input_ids=ids, attention_mask=mask, position_ids=batching.positions(mask),
                     logits_to_keep=1).logits[:, -1]
        out.append(restrict_to_letters(last.float(), letter_ids))
        progress(min(start + batch_size, len(prompts)), len(prompts), "letter scoring")
    return torch.cat(out)


def restrict_to_letters(logits: torch.Tensor, letter_ids: Sequence[Sequence[int]],
                        choices: Sequence[int] | None = None) -> torch.Tensor:
    """(rows, letters) log-probabilities: each letter the logsumexp of its tokens' logits, renormalised over the
    letters; with ``choices``, row k over its first ``choices[k]`` letters only (the rest -inf)."""
    per_letter = torch.stack([torch.logsumexp(logits[..., list(ids)], dim=-1) for ids in letter_ids], dim=-1)
    if choices is not None:
        width = per_letter.shape[-1]
        beyond = (torch.arange(width, device=logits.device)
                  >= torch.tensor(list(choices), device=logits.device)[:, None])
        per_letter = per_letter.masked_fill(beyond, float("-inf"))
    return torch.log_softmax(per_letter, dim=-1)
