"""steerlab: activation steering for Hugging Face causal language models.

Layer ``i`` always means the output of decoder block ``i`` (0-based), i.e. ``hidden_states[i + 1]`` in transformers.
"""

from steerlab.data import ContrastPair, MCItem, load_items, load_pairs
from steerlab.errors import ConfigError, DataError, ModelError, SteerlabError, VectorFileError
from steerlab.generate import generate
from steerlab.models import load_model
from steerlab.steering import apply_steering, steer
from steerlab.tasks import list_tasks, load_task
from steerlab.train import train_vector
from steerlab.vectors import SteeringVector

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ContrastPair",
    "DataError",
    "MCItem",
    "ModelError",
    "SteeringVector",
    "SteerlabError",
    "VectorFileError",
    "__version__",
    "apply_steering",
    "generate",
    "list_tasks",
    "load_items",
    "load_model",
    "load_pairs",
    "load_task",
    "steer",
    "train_vector",
]
