"""The per-architecture facts steering needs, kept in one table: where the decoder blocks, the final norm and the
logit soft-cap live.

Layer convention used across steerlab: layer i is the output of decoder block i (0-based), which is
``hidden_states[i + 1]`` of ``model(..., output_hidden_states=True)``. The last entry of ``hidden_states``
is not a block output in transformers 5 (it is taken after the final norm), so code that needs the last
block's output must hook the block itself; ``final_logits`` turns such an output into logits.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from steerlab.errors import ConfigError, ModelError


@dataclass(frozen=True)
class Architecture:
    """Where a causal LM keeps the parts steering touches, as dotted paths from the *ForCausalLM object.

    ``final_norm`` may name an attribute that is ``None`` (OPT-350m has no final norm); ``final_proj``
    names an optional projection applied between the final norm and the LM head (OPT's ``project_out``).
    ``logit_softcap`` names the text config attribute holding the final logit soft-cap, if the model
    applies one.
    """

    blocks: str
    final_norm: str
    logit_softcap: str | None = None
    final_proj: str | None = None


_LLAMA_LIKE = Architecture("model.layers", "model.norm")
_TRANSFORMER_H = Architecture("transformer.h", "transformer.ln_f")

# Every entry is checked by tests/test_models.py on a tiny random model: block outputs against
# hidden_states and final_logits against the model's own logits. Families that rescale their logits
# (cohere, granite) are left out because final_logits would not reproduce them.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen2_moe": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "qwen3_moe": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": Architecture("model.layers", "model.norm", logit_softcap="final_logit_softcapping"),
    "gemma3_text": Architecture("model.layers", "model.norm", logit_softcap="final_logit_softcapping"),
    # Gemma3ForConditionalGeneration never applies final_logit_softcapping, unlike Gemma3ForCausalLM.
    "gemma3": Architecture("model.language_model.layers", "model.language_model.norm"),
    "phi": Architecture("model.layers", "model.final_layernorm"),
    "phi3": _LLAMA_LIKE,
    "phimoe": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "olmoe": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "helium": _LLAMA_LIKE,
    "gpt2": _TRANSFORMER_H,
    "gpt_neo": _TRANSFORMER_H,
    "gptj": _TRANSFORMER_H,
    "gpt_bigcode": _TRANSFORMER_H,
    "bloom": _TRANSFORMER_H,
    "falcon": _TRANSFORMER_H,
    "gpt_neox": Architecture("gpt_neox.layers", "gpt_neox.final_layer_norm"),
    "opt": Architecture("model.decoder.layers", "model.decoder.final_layer_norm",
                        final_proj="model.decoder.project_out"),
}


def register_architecture(model_type: str, blocks: str, final_norm: str, logit_softcap: str | None = None,
                          *, final_proj: str | None = None) -> None:
    """Teach steerlab a model family (or override a known one), keyed by ``config.model_type``."""
    for label, value in (("model_type", model_type), ("blocks", blocks), ("final_norm", final_norm)):
        if not isinstance(value, str) or not value.strip():
            raise ModelError(f"register_architecture: {label} must be a non-empty string, got {value!r}")
    ARCHITECTURES[model_type] = Architecture(blocks, final_norm, logit_softcap, final_proj)


def architecture(model: nn.Module) -> Architecture:
    """The table entry for this model's ``config.model_type``; ModelError with a fix if there is none."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if not model_type:
        raise ModelError(f"{type(model).__name__} has no config.model_type: it is not a Hugging Face model")
    known = ARCHITECTURES.get(model_type)
    if known is None:
        raise ModelError(_unknown_architecture_message(model, model_type))
    return known


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks in forward order; block i's output is layer i."""
    path = architecture(model).blocks
    blocks = _resolve(model, path, "blocks")
    if not isinstance(blocks, nn.ModuleList):
        raise ModelError(f"{type(model).__name__}.{path} is a {type(blocks).__name__}, not an nn.ModuleList "
                         f"of decoder blocks; fix it with steerlab.models.register_architecture")
    return blocks


Target = Literal["residual", "attn", "mlp"]
TARGETS: tuple[Target, ...] = ("residual", "attn", "mlp")
# Where each target lives inside a decoder block, by the names the supported families use.
_PART_NAMES: dict[str, tuple[str, ...]] = {"attn": ("self_attn", "attn", "attention", "self_attention"),
                                           "mlp": ("mlp", "feed_forward")}


def check_target(target: str) -> Target:
    if target not in TARGETS:
        raise ConfigError(f"unknown steer target {target!r}; choose one of {', '.join(TARGETS)}")
    return target


def target_module(model: nn.Module, layer: int, target: str = "residual") -> nn.Module:
    """The module whose output steering at ``target`` of ``layer`` reads and writes.

    ``residual``: decoder block ``layer`` (its output is the residual stream); ``attn`` and ``mlp``: that block's
    attention and MLP modules, whose outputs are what the block adds to the residual stream (after any norm the
    block applies to them).
    """
    block = decoder_blocks(model)[layer]
    if check_target(target) == "residual":
        return block
    for name in _PART_NAMES[target]:
        part = getattr(block, name, None)
        if isinstance(part, nn.Module):
            return part
    children = ", ".join(name for name, _ in block.named_children())
    raise ModelError(f"cannot find the {target} module of a {type(block).__name__} block (looked for "
                     f"{', '.join(_PART_NAMES[target])}; its children are {children}): steer the residual stream")


def cache_kwarg(module: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``module``'s forward: transformers 5.24 renamed ``past_key_values`` to ``cache``."""
    name = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
    return {name: cache}


def base_model(model: nn.Module) -> nn.Module:
    """The module that owns the block list: the one whose forward takes the KV cache."""
    parent, _, _ = architecture(model).blocks.rpartition(".")
    if not parent:
        return model
    owner = _resolve(model, parent, "blocks")
    if not isinstance(owner, nn.Module):
        raise ModelError(f"{type(model).__name__}.{parent} is not a module")
    return owner


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last block's output before the LM head (identity if the model has none)."""
    norm = _resolve(model, architecture(model).final_norm, "final_norm")
    return nn.Identity() if norm is None else norm


def num_layers(model: nn.Module) -> int:
    return len(decoder_blocks(model))


def hidden_size(model: nn.Module) -> int:
    """Width of a decoder block's output (the residual stream)."""
    config = _text_config(model)
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise ModelError(f"cannot find the hidden size in the config of {type(model).__name__}")


def model_name(model: nn.Module) -> str:
    """The name to record in metadata: hub id or path the model was loaded from."""
    name = getattr(getattr(model, "config", None), "name_or_path", "")
    return str(name) if name else type(model).__name__


def final_logits(model: nn.Module, hidden: torch.Tensor,
                 token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits from the output of the last decoder block, as the model's own forward computes them.

    With ``token_ids`` only those vocabulary rows are computed, which is much cheaper than the full head
    when scoring a few answer letters; the result's last dimension then follows ``token_ids``.
    """
    arch = architecture(model)
    device = hidden.device  # the logits come back there, wherever a device map put the head
    hidden = final_norm(model)(hidden)
    if arch.final_proj is not None:
        proj = _resolve(model, arch.final_proj, "final_proj")
        if proj is not None:
            hidden = proj(hidden)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        raise ModelError(f"{type(model).__name__} has no output embeddings (LM head)")
    if token_ids is None:
        logits: torch.Tensor = head(hidden)
    elif isinstance(head, nn.Linear):
        rows = token_ids.to(head.weight.device)
        bias = None if head.bias is None else head.bias[rows]
        logits = nn.functional.linear(hidden.to(rows.device), head.weight[rows], bias)
    else:
        logits = head(hidden)[..., token_ids]
    if arch.logit_softcap is not None:
        cap = getattr(_text_config(model), arch.logit_softcap, None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    return logits.to(device)


def _text_config(model: nn.Module) -> Any:
    # Multimodal wrappers (gemma3) keep the language model's settings in a nested text config.
    config: Any = getattr(model, "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _resolve(model: nn.Module, path: str, field: str) -> Any:
    obj: Any = model
    for depth, part in enumerate(path.split(".")):
        if not hasattr(obj, part):
            where = ".".join(path.split(".")[:depth]) or type(model).__name__
            raise ModelError(f"{type(model).__name__} has no '{path}' ({where} has no attribute '{part}'); "
                             f"give the right {field} path with steerlab.models.register_architecture")
        obj = getattr(obj, part)
    return obj


def _unknown_architecture_message(model: nn.Module, model_type: str) -> str:
    lists = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) > 0]
    depth = getattr(_text_config(model), "num_hidden_layers", None)
    # The likeliest block list is the longest one of the configured depth.
    best = max(lists, key=lambda item: (len(item[1]) == depth, len(item[1])), default=None)
    blocks = best[0] if best else "<path to the decoder blocks>"
    norm = "<path to the final norm>"
    if best is not None:
        parent_name = best[0].rpartition(".")[0]
        parent = model.get_submodule(parent_name)
        # Norm classes (LayerNorm, LlamaRMSNorm, ...) are named alike even where attributes are not; the
        # final norm is the last one beside the blocks (BLOOM also normalises its embeddings there).
        norms = [child for child, module in parent.named_children()
                 if "norm" in type(module).__name__.lower()]
        if norms:
            norm = f"{parent_name}.{norms[-1]}" if parent_name else norms[-1]
    found = ", ".join(f"{name} ({len(module)} x {type(module[0]).__name__})" for name, module in lists[:8])
    return (f"steerlab does not know the architecture '{model_type}' ({type(model).__name__}); name its "
            f"decoder blocks with steerlab.models.register_architecture('{model_type}', blocks='{blocks}', "
            f"final_norm='{norm}'). nn.ModuleList paths in this model: {found or 'none'}")

