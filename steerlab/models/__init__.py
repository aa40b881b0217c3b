"""Models: the architecture table (where steering hooks go) and loading (hub id, folder, GGUF, embedded default)."""

from steerlab.models.architectures import (
    ARCHITECTURES,
    TARGETS,
    Architecture,
    Target,
    architecture,
    base_model,
    cache_kwarg,
    check_target,
    decoder_blocks,
    final_logits,
    final_norm,
    hidden_size,
    model_name,
    num_layers,
    register_architecture,
    target_module,
)
from steerlab.models.loading import DEFAULT_MODEL_NAME, cache_root, default_model_path, load_model

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MODEL_NAME",
    "TARGETS",
    "Architecture",
    "Target",
    "architecture",
    "base_model",
    "cache_kwarg",
    "cache_root",
    "check_target",
    "decoder_blocks",
    "default_model_path",
    "final_logits",
    "final_norm",
    "hidden_size",
    "load_model",
    "model_name",
    "num_layers",
    "register_architecture",
    "target_module",
]
