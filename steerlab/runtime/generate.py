"""Generation, plain or steered, batched with left padding.

Example::

    from steerlab import load_model, generate, SteeringVector
    model, tok = load_model()
    vector = SteeringVector.load("v.safetensors")
    print(generate(model, tok, ["Tell me about yourself."], steering=vector, strength=4.0, max_new_tokens=40))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.hooks import Steering, steer
from steerlab.data.prompts import PromptStyle


def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    style: PromptStyle = PromptStyle(),
    steering: Steering | None = None,
    strength: float = 1.0,
    layers: Iterable[int] | None = None,
    positions: str = "all",
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
) -> list[str]:
    """Responses to ``prompts`` (user messages, chat-formatted when the model has a template), new text only."""
    texts = [style.render(tokenizer, prompt) for prompt in prompts]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not style.templated(tokenizer))
    batch = batch.to(next(model.parameters()).device)
    torch.manual_seed(seed)
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
    with torch.no_grad():
        if steering is None:
            out = generator(**batch, **kwargs)
        else:
            with steer(model, steering, strength, layers=layers, positions=positions):
                out = generator(**batch, **kwargs)
    new = out[:, batch["input_ids"].shape[1]:]
    return [str(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
