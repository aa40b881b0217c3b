"""Generation, plain or steered, batched with left padding.

Example::

    from steerlab import load_model, generate, SteeringVector
    model, tok = load_model()
    vector = SteeringVector.load("v.safetensors")
    print(generate(model, tok, ["Tell me about yourself."], steering=vector, max_new_tokens=40))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.hooks import Steering, steer
from steerlab.core.vector import SteeringVector
from steerlab.data.prompts import PromptStyle


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
) -> list[str]:
    """Responses to ``prompts`` (user messages, chat-formatted when the model has a template), new text only.

    A vector with a recipe is applied as it was selected unless ``strength``, ``layers`` or ``positions`` say
    otherwise (see :func:`steerlab.steer`). The tokenizer's padding side and the global RNG are left as they were.
    """
    texts = [style.render(tokenizer, prompt) for prompt in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not style.templated(tokenizer))
    finally:
        tokenizer.padding_side = side
    batch = batch.to(next(model.parameters()).device)
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": use_cache,
    }
    if do_sample:
        kwargs["temperature"] = temperature
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    generator = cast(Callable[..., torch.Tensor], model.generate)  # nn.Module types attributes as Tensor | Module
    recipe = steering.recipe if isinstance(steering, SteeringVector) else None
    turn = (positions or (recipe.positions if recipe is not None else None)) == "turn"
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        if steering is None:
            out = generator(**batch, **kwargs)
        else:
            with steer(model, steering, strength, layers=layers, positions=positions,
                       turn_starts=[style.turn_start(tokenizer, p) for p in prompts] if turn else None):
                out = generator(**batch, **kwargs)
    new = out[:, batch["input_ids"].shape[1]:]
    return [str(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
