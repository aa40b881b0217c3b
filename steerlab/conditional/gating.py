"""Steering with a conditional program: each row's gate is decided from its prompt at prefill, then frozen.

At prefill, each condition layer's block output is averaged over the row's user-turn tokens (padding masked; the
span comes from :func:`steerlab.conditional.reading.encode_prompt`, the same read the conditions were trained on),
every condition is scored, and the rules give each behaviour a per-row gate. Later calls (generation steps, with or
without a KV cache) reuse that decision. A behaviour's delta is ``gate * strength * vector``: a row whose gate is off
gets exact zeros, and ``h + 0 == h`` for every finite ``h``, so its logits and tokens stay bit-identical to the
unsteered model's. Conditions always read the unsteered stream: during prefill no behaviour is added at any layer
until the deepest condition layer has been read (behaviour layers below it steer only the generated tokens).

One sequence batch at a time per context; beam search and other batch reorderings are not supported.

Example::

    from steerlab import load_model
    from steerlab.conditional import ConditionalProgram, generate_conditional
    model, tok = load_model()
    program = ConditionalProgram.load("refuse-harmful.safetensors")
    out = generate_conditional(model, tok, ["How do I bake bread?", "How do I make a pipe bomb?"], program)
    print(out.texts, out.gates)          # gates: {"refusal": [False, True]}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.conditional.program import ConditionalProgram
from steerlab.conditional.reading import encode_prompt
from steerlab.core.hooks import steer
from steerlab.data.prompts import PromptStyle
from steerlab.errors import ConfigError
from steerlab.models import base_model
from steerlab.runtime import batching


@dataclass
class Decisions:
    """The decisions of the current sequence batch: per condition and per behaviour, one bool per row.

    Empty until the prefill has reached the deepest condition layer.
    """

    spans: torch.Tensor  # (batch, 2) user-turn token span per row, counted in real tokens
    held: dict[str, torch.Tensor] = field(default_factory=dict)
    gates: dict[str, torch.Tensor] = field(default_factory=dict)
    _user: torch.Tensor | None = None  # (batch, chunk) the prefill call's user-turn tokens
    _reads: dict[int, torch.Tensor] = field(default_factory=dict)
    _uncached: torch.Tensor | None = None
    _decided: bool = False


def _track(decisions: Decisions, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Before each base-model call: a new prompt resets the decisions, a continuation keeps them."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    shaped = ids if isinstance(ids, torch.Tensor) else embeds
    if not isinstance(shaped, torch.Tensor):
        raise ConfigError("conditional steering needs input_ids or inputs_embeds in the model call")
    batch, length = int(shaped.shape[0]), int(shaped.shape[1])
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    offset = int(cache.get_seq_length()) if cache is not None else 0
    previous, decisions._uncached = decisions._uncached, ids if cache is None else None
    if offset > 0 or (cache is None and _continues(previous, ids)):
        if not decisions._decided:
            raise ConfigError("conditional steering decides at prefill: the whole prompt must go in one call")
        return
    if decisions.spans.shape[0] != batch:
        raise ConfigError(f"{decisions.spans.shape[0]} user-turn spans were given for a batch of {batch} rows")
    mask = kwargs.get("attention_mask")
    device = shaped.device
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == (batch, length):
        real = mask.to(device).bool()
    else:
        real = torch.ones((batch, length), dtype=torch.bool, device=device)
    rank = real.long().cumsum(dim=1) - 1
    spans = decisions.spans.to(device)
    user = real & (rank >= spans[:, :1]) & (rank < spans[:, 1:])
    counts = real.sum(dim=1)
    for row in range(batch):
        start, end = int(spans[row, 0]), int(spans[row, 1])
        if not 0 <= start < end <= int(counts[row]):
            raise ConfigError(f"row {row}: user-turn span [{start}, {end}) does not fit its {int(counts[row])} "
                              "prompt tokens")
    decisions._user, decisions._reads, decisions._decided = user, {}, False
    decisions.held, decisions.gates = {}, {}


def _continues(previous: torch.Tensor | None, ids: Any) -> bool:
    """Generation without a KV cache feeds the whole sequence again, one token longer."""
    return (isinstance(previous, torch.Tensor) and isinstance(ids, torch.Tensor)
            and ids.shape[0] == previous.shape[0] and ids.shape[1] == previous.shape[1] + 1
            and torch.equal(ids[:, :-1], previous))


@dataclass(eq=False)
class _Gated:
    """The program as steerlab's ``Intervention``: condition reads at prefill, gated behaviour deltas."""

    program: ConditionalProgram
    decisions: Decisions
    _cast: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    @property
    def layer_indices(self) -> list[int]:
        layers = {layer for c in self.program.conditions for layer in c.layers}
        return sorted(layers | {layer for b in self.program.behaviours for layer in b.vector.layers})

    @property
    def hidden_size(self) -> int:
        return self.program.hidden_size

    def _read(self, layer: int, hidden: torch.Tensor) -> None:
        user = cast(torch.Tensor, self.decisions._user).to(hidden.device, torch.float32)[..., None]
        self.decisions._reads[layer] = (hidden.float() * user).sum(dim=1) / user.sum(dim=1)
        needed = {layer for c in self.program.conditions for layer in c.layers}
        if needed <= set(self.decisions._reads):
            held = {c.name: c.holds(self.decisions._reads).cpu() for c in self.program.conditions}
            self.decisions.held, self.decisions.gates = held, self.program.gates(held)
            self.decisions._decided = True

    def delta(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        if not self.decisions._decided:
            if self.decisions._user is None:
                raise ConfigError("no prompt was seen: apply a conditional program with steer_program()")
            if any(layer in c.directions for c in self.program.conditions):
                self._read(layer, hidden)
        add = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        if not self.decisions._decided:
            return add  # conditions not all read yet: nothing is added during this prefill
        for behaviour in self.program.behaviours:
            if layer not in behaviour.vector.layers:
                continue
            key = (behaviour.name, layer)
            vector = self._cast.get(key)
            if vector is None or vector.dtype != hidden.dtype or vector.device != hidden.device:
                vector = (behaviour.vector.layers[layer] * behaviour.strength).to(hidden.device, hidden.dtype)
                self._cast[key] = vector
            gate = self.decisions.gates[behaviour.name].to(hidden.device, hidden.dtype)
            add = add + gate[:, None, None] * vector
        return add


@contextmanager
def steer_program(model: nn.Module, program: ConditionalProgram,
                  spans: Sequence[tuple[int, int]]) -> Iterator[Decisions]:
    """Hooks that apply ``program`` to the next sequence batch; ``spans`` holds each row's user-turn token span
    (from :func:`steerlab.conditional.reading.encode_prompt`). The yielded :class:`Decisions` fill in at prefill."""
    decisions = Decisions(torch.tensor([list(span) for span in spans], dtype=torch.long).reshape(-1, 2))

    def track(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        _track(decisions, module, args, kwargs)

    handle = base_model(model).register_forward_pre_hook(track, with_kwargs=True)
    try:
        with steer(model, _Gated(program, decisions), 1.0, positions=program.positions):
            yield decisions
    finally:
        handle.remove()


@dataclass(frozen=True)
class ConditionalOutput:
    """Responses, and per row which conditions held and which behaviours were applied."""

    texts: list[str]
    held: dict[str, list[bool]]
    gates: dict[str, list[bool]]


def generate_conditional(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    program: ConditionalProgram,
    *,
    max_new_tokens: int = 64,
    style: PromptStyle = PromptStyle(),
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
) -> ConditionalOutput:
    """Responses to ``prompts`` (user messages) with ``program`` applied row by row; batched with left padding,
    exactly as :func:`steerlab.runtime.generate.generate` batches them."""
    encoded = [encode_prompt(tokenizer, prompt, style) for prompt in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else batching.pad_id(model)
    device = next(model.parameters()).device
    ids, mask = batching.pad([e[0] for e in encoded], int(pad), side="left", device=device)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": pad,
                              "use_cache": use_cache}
    if do_sample:
        kwargs["temperature"] = temperature
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    generator = cast(Callable[..., torch.Tensor], model.generate)  # nn.Module types attributes as Tensor | Module
    with torch.no_grad(), torch.random.fork_rng(), steer_program(model, program, [e[1] for e in encoded]) as found:
        torch.manual_seed(seed)
        out = generator(input_ids=ids, attention_mask=mask, **kwargs)
    texts = [str(t) for t in tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]
    return ConditionalOutput(texts, {k: v.tolist() for k, v in found.held.items()},
                             {k: v.tolist() for k, v in found.gates.items()})
