"""Generation, plain or steered, batched with left padding.

Example::

    from steerlab import load_model, generate, SteeringVector
    model, tok = load_model()
    vector = SteeringVector.load("v.safetensors")
    print(generate(model, tok, ["Tell me about yourself."], steering=vector, max_new_tokens=40))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.hooks import Steering, steer
from steerlab.core.vector import SteeringVector
from steerlab.data.prompts import PromptStyle
from steerlab.errors import ConfigError


def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    style: PromptStyle = PromptStyle(),
    steering: Steering | None = None,
    strength: float | None = None,
    layers: Iterable[int] | None = None,
    positions: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
    batch_size: int | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Responses to ``prompts`` (user messages, chat-formatted when the model has a template), new text only.

    A vector with a recipe is applied as it was selected unless ``strength``, ``layers`` or ``positions`` say
    otherwise (see :func:`steerlab.steer`). Prompts go through the model ``batch_size`` at a time (default: all in
    one batch); ``generate_kwargs`` go to ``model.generate`` as they are (``top_p``, ``repetition_penalty``, ...).
    The tokenizer's padding side and the global RNG are left as they were.
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    size = batch_size or max(1, len(prompts))
    recipe = steering.recipe if isinstance(steering, SteeringVector) else None
    turn = (positions or (recipe.positions if recipe is not None else None)) == "turn"
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                "pad_token_id": tokenizer.pad_token_id, "use_cache": use_cache}
    if do_sample:
        settings["temperature"] = temperature
    else:
        settings.update(temperature=None, top_p=None, top_k=None)
    settings.update(generate_kwargs)
    generator = cast(Callable[..., torch.Tensor], model.generate)  # nn.Module types attributes as Tensor | Module
    responses: list[str] = []
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), size):
            part = list(prompts[start:start + size])
            batch = _encode(tokenizer, [style.render(tokenizer, prompt) for prompt in part], style)
            batch = batch.to(next(model.parameters()).device)
            if steering is None:
                out = generator(**batch, **settings)
            else:
                with steer(model, steering, strength, layers=layers, positions=positions,
                           turn_starts=[style.turn_start(tokenizer, p) for p in part] if turn else None):
                    out = generator(**batch, **settings)
            new = out[:, batch["input_ids"].shape[1]:]
            responses += [str(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return responses


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], style: PromptStyle) -> Any:
    """Left-padded input ids and attention mask (the tokenizer's own padding side is restored)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not style.templated(tokenizer))
    finally:
        tokenizer.padding_side = side
