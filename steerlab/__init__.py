"""steerlab: activation steering for Hugging Face causal language models.

Layer ``i`` always means the output of decoder block ``i`` (0-based), i.e. ``hidden_states[i + 1]`` in transformers.

The public API is what this module exports; the subpackages, lowest layer first:
``models`` (architecture table, loading), ``core`` (the vector and its file, hooks and positions), ``data`` (pairs,
items, prompts, built-in tasks), ``interop`` (llama.cpp GGUF), ``runtime`` (extraction, replay, scoring, sweep,
generation), ``methods`` (contrastive methods, PAS), ``experiment`` (the ``steerlab run`` job, statistics, store,
report), ``psr`` (prompt steering replacement), ``files`` (load any steerlab file by its kind), ``cli``.
"""

from steerlab._version import __version__
from steerlab.core.hooks import apply_steering, steer
from steerlab.core.vector import SteeringVector
from steerlab.data.items import ContrastPair, MCItem, load_items, load_pairs
from steerlab.data.tasks import list_tasks, load_task
from steerlab.errors import ConfigError, DataError, ModelError, SteerlabError, VectorFileError
from steerlab.files import load_steering
from steerlab.interop.hub import from_pretrained, push_to_hub, save_pretrained
from steerlab.methods.train import train_vector
from steerlab.models import load_model
from steerlab.psr.model import PSRModel
from steerlab.runtime.generate import generate

__all__ = [
    "ConfigError",
    "ContrastPair",
    "DataError",
    "MCItem",
    "ModelError",
    "PSRModel",
    "SteeringVector",
    "SteerlabError",
    "VectorFileError",
    "__version__",
    "apply_steering",
    "from_pretrained",
    "generate",
    "list_tasks",
    "load_items",
    "load_model",
    "load_pairs",
    "load_steering",
    "load_task",
    "push_to_hub",
    "save_pretrained",
    "steer",
    "train_vector",
]
