"""What makes two loaded models the same for a cached result: weights, dtype, devices, tokenizer and chat template.

A model's name is not enough: the embedded model and a hub download share one, and a resumed run after an upgrade
or a fine-tune must not reuse work computed on other weights.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.errors import ModelError
from steerlab.models.architectures import model_name


def weights_digest(model: nn.Module) -> str:
    """A hash of every parameter and buffer: names, shapes, dtypes and bytes (about 1 s per 500 MB)."""
    digest = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_meta:  # offloaded by an accelerate device map: hash the copy it loads for each forward
                tensor = _offloaded(model, name)
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            flat = tensor.detach().to("cpu").contiguous().view(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _offloaded(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, leaf = name.rpartition(".")
    weights = getattr(getattr(model.get_submodule(module_name), "_hf_hook", None), "weights_map", None)
    if weights is None:
        raise ModelError(f"{name} is on the meta device and has no offloaded copy: the model is not fully loaded")
    tensor: torch.Tensor = weights[leaf]
    return tensor


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the vocabulary, the special tokens, the padding side and the chat template."""
    vocab = sorted(tokenizer.get_vocab().items())
    parts: list[Any] = [vocab, tokenizer.all_special_tokens, tokenizer.padding_side,
                        getattr(tokenizer, "chat_template", None), type(tokenizer).__name__]
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def model_identity(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """Everything about the model and tokenizer that changes a result, for store keys.

    ``devices`` holds the kinds of device the weights sit on (``cpu``, ``cuda``, ...): kernels differ between them,
    so a result computed on one is not reused on another. Offloaded weights (``meta``) run where their block runs.
    """
    dtype = next(model.parameters()).dtype
    kinds = sorted({p.device.type for p in model.parameters() if not p.is_meta})
    return {"model": model_name(model), "dtype": str(dtype), "devices": ",".join(kinds),
            "weights": weights_digest(model), "tokenizer": tokenizer_digest(tokenizer)}
