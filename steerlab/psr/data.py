"""Data for prompt steering replacement: what an instruction does to the activations, token by token.

For each neutral user prompt the model answers WITH the instruction (as the system prompt, or prepended to the
user turn when the chat template has no system role). That response is then teacher-forced twice: after the
prompted prefix and after the plain prefix (no instruction). At every recorded layer and every position that
predicts a response token, both activations are kept. Row ``j`` of an item's block belongs to the position
that predicts response token ``j``: the last prefix token for ``j = 0``, response token ``j - 1`` after that.

Recording is cached on disk in chunks (safetensors files, JSON metadata; no pickle), so an interrupted run
resumes where it stopped. Example::

    from steerlab import load_model
    from steerlab.psr.data import build_activation_data, load_prompts
    model, tok = load_model()
    data = build_activation_data(model, tok, "Respond in French.", load_prompts()[:32], cache_dir="psr-cache")
    print(len(data.items), data.prompted[12].shape)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.vector import atomic_output, write_steering_file
from steerlab.data.prompts import PromptStyle, encode
from steerlab.errors import ConfigError, DataError, VectorFileError
from steerlab.models import hidden_size, num_layers
from steerlab.models.identity import model_identity
from steerlab.progress import Progress, silent
from steerlab.runtime import batching
from steerlab.runtime.capture import capture, run_until_captured

CHUNK_KIND = "psr-activations"
# Default slice sizes of split_prompts, as shares of the prompts (rounded, at least one prompt each).
VALIDATION_SHARE = 0.2
TEST_SHARE = 0.25


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Neutral user prompts, one per line (blank lines and lines starting with ``#`` skipped).

    ``None`` reads the built-in set. A prompt that occurs twice is an error: it could land in two slices of
    :func:`split_prompts`. Example::

        prompts = load_prompts()
        assert len(prompts) >= 200
    """
    if path is None:
        text = resources.files("steerlab").joinpath("resources/neutral_prompts.txt").read_text("utf-8")
        source = "built-in neutral prompts"
    else:
        p = Path(path)
        if not p.is_file():
            raise DataError("no such prompts file", path=p)
        try:
            text = p.read_text("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text: {exc}", path=p) from None
        source = str(p)
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit in a prompt
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line in first_line:
            raise DataError(f"the prompt {line!r} repeats line {first_line[line]}", path=source, line=number)
        first_line[line] = number
    if not first_line:
        raise DataError("holds no prompts", path=source)
    return list(first_line)


def prompt_digest(prompt: str) -> str:
    """A short sha256 of a prompt: PSR files list the prompts they were trained on this way."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PromptSplit:
    """Disjoint training, validation and test prompts, and how they were drawn (see :func:`split_prompts`)."""

    train: list[str]
    validation: list[str]
    test: list[str]
    seed: int
    source: str

    def summary(self) -> dict[str, Any]:
        """Where the prompts came from, the seed and the size of each slice (for reports)."""
        return {
            "source": self.source,
            "seed": self.seed,
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def split_prompts(
    prompts: Sequence[str],
    *,
    seed: int = 0,
    validation: int | None = None,
    test: int | None = None,
    source: str | Path = "the prompts",
) -> PromptSplit:
    """Split prompts into training, validation (where alpha is chosen) and test (what is reported) slices.

    The prompts are ordered by ``sha256(seed, prompt)``, so the split depends only on the set of prompts and
    the seed, not on their order in the file. ``test`` takes the first prompts of that order, ``validation``
    the next ones, training the rest (in that order). Default sizes: ``TEST_SHARE`` and ``VALIDATION_SHARE``
    of the prompts, rounded, at least one each. With the same prompts and seed, a split with a smaller
    validation + test holds out a subset of what a larger one holds out: an evaluation on fewer prompts than
    training assumed never uses a training prompt (and :func:`steerlab.psr.evaluate.evaluate` refuses steering
    trained on any prompt it evaluates on). ``source`` names the prompts in errors and reports. Example::

        split = split_prompts(load_prompts(), seed=0)
        assert not set(split.train) & set(split.validation + split.test)
    """
    if len(set(prompts)) != len(prompts):
        repeated = next(p for i, p in enumerate(prompts) if p in prompts[:i])
        raise DataError(f"the prompt {repeated!r} occurs more than once", path=source)
    n = len(prompts)
    n_val = max(1, round(VALIDATION_SHARE * n)) if validation is None else validation
    n_test = max(1, round(TEST_SHARE * n)) if test is None else test
    for name, size in (("validation", n_val), ("test", n_test)):
        if size < 1:
            raise ConfigError(f"the {name} slice needs at least 1 prompt, got {name}={size}")
    if n_val + n_test + 1 > n:
        raise DataError(
            f"{n} prompt(s) are too few to split into {n_val} validation, {n_test} test and at least 1 "
            f"training prompt: give at least {n_val + n_test + 1} prompts or smaller slices",
            path=source,
        )
    order = sorted(prompts, key=lambda p: hashlib.sha256(f"{seed}\x00{p}".encode()).digest())
    return PromptSplit(
        train=order[n_test + n_val :],
        validation=order[n_test : n_test + n_val],
        test=order[:n_test],
        seed=seed,
        source=str(source),
    )


@dataclass(frozen=True)
class Item:
    """One prompt, the response the instruction produced, and both token prefixes it continues."""

    prompt: str
    response: str
    response_ids: list[int]
    prompted_prefix: list[int]
    plain_prefix: list[int]

    def sequence(self, prompted: bool) -> list[int]:
        return (self.prompted_prefix if prompted else self.plain_prefix) + self.response_ids

    def start(self, prompted: bool) -> int:
        """The position that predicts the first response token."""
        return len(self.prompted_prefix if prompted else self.plain_prefix) - 1


@dataclass(eq=False)
class ActivationData:
    """Per layer, rows of activations (one per response token of every item, items in order).

    ``prompted[layer]`` and ``plain[layer]`` have shape (total response tokens, hidden); item ``i`` owns rows
    ``offsets[i]:offsets[i + 1]``.
    """

    instruction: str
    model: str
    items: list[Item]
    prompted: dict[int, torch.Tensor]
    plain: dict[int, torch.Tensor]

    @property
    def layers(self) -> list[int]:
        return sorted(self.prompted)

    @property
    def offsets(self) -> list[int]:
        out = [0]
        for item in self.items:
            out.append(out[-1] + len(item.response_ids))
        return out

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.prompted.values())).shape[1])

    def mean_difference(self, layer: int) -> torch.Tensor:
        """Mean over response tokens of prompted minus plain activation: the constant steering vector."""
        return (self.prompted[layer] - self.plain[layer]).mean(dim=0)


def instruction_style(instruction: str | None) -> PromptStyle:
    """Chat style with the instruction as system prompt (``render`` prepends it without a system role)."""
    return PromptStyle(chat=True, system=instruction)


def stop_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Token ids that end a response: eos (of tokenizer and generation config) and pad."""
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, tokenizer.pad_token_id, config_eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return ids


def generate_ids(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prefixes: Sequence[list[int]], max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuations of token prefixes (left-padded in one batch), cut before the first stop token.

    The caller installs any steering; the ids are kept as generated, never re-tokenised from text.
    """
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ConfigError("the tokenizer needs a pad token to batch prompts")
    ids, mask = batching.pad(prefixes, int(pad))
    width = ids.shape[1]
    device = next(model.parameters()).device
    generator = cast(Callable[..., torch.Tensor], model.generate)
    with torch.no_grad():
        out = generator(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=int(pad),
        )
    stops = stop_ids(model, tokenizer)
    responses = []
    for row in out[:, width:].tolist():
        cut = next((i for i, token in enumerate(row) if token in stops), len(row))
        responses.append([int(t) for t in row[:cut]])
    return responses


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """The text of generated ids, special tokens dropped."""
    return str(tokenizer.decode(list(ids), skip_special_tokens=True))


def render_ids(tokenizer: PreTrainedTokenizerBase, user: str, instruction: str | None) -> list[int]:
    """Token ids of the chat prefix for ``user``, with or without the instruction, up to the answer."""
    style = instruction_style(instruction)
    return encode(tokenizer, style.render(tokenizer, user), templated=style.templated(tokenizer))


def response_index(items: Sequence[Item], prompted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) indices of the positions predicting the response tokens, items in order."""
    rows: list[int] = []
    cols: list[int] = []
    for row, item in enumerate(items):
        start = item.start(prompted)
        rows += [row] * len(item.response_ids)
        cols += range(start, start + len(item.response_ids))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def record(
    model: nn.Module, items: Sequence[Item], layers: Sequence[int], *, prompted: bool, pad: int
) -> dict[int, torch.Tensor]:
    """Teacher-forced activations at the response positions of ``items`` (one batch), per layer, float32."""
    ids, mask = batching.pad([item.sequence(prompted) for item in items], pad, side="right")
    rows, cols = response_index(items, prompted)
    device = next(model.parameters()).device
    with torch.no_grad(), capture(model, layers, stop_after=True) as store:
        run_until_captured(model, input_ids=ids.to(device), attention_mask=mask.to(device))
    return {layer: store[layer][rows, cols].float().cpu() for layer in layers}


def _cache_folder(root: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return root / digest


def _chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index:05d}.safetensors"


def build_activation_data(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instruction: str,
    prompts: Sequence[str],
    *,
    cache_dir: str | Path,
    layers: Sequence[int] | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    chunk_size: int = 16,
    progress: Progress = silent,
) -> ActivationData:
    """Generate the instructed responses and record both teacher-forced runs, chunk by chunk, resumably.

    ``layers`` defaults to every layer. The cache folder under ``cache_dir`` is named by a hash of everything
    that changes the data (model, instruction, prompts, layers, max_new_tokens, chunk_size), so a changed
    setting never reuses stale chunks. Responses that are empty are dropped.
    """
    if not instruction.strip():
        raise ConfigError("the instruction is empty")
    if not prompts:
        raise ConfigError("no prompts to build PSR data from")
    depth = num_layers(model)
    wanted = list(range(depth)) if layers is None else sorted(set(layers))
    bad = [layer for layer in wanted if not 0 <= layer < depth]
    if bad:
        raise ConfigError(f"layer(s) {bad} out of range: the model has layers 0..{depth - 1}")
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ConfigError("the tokenizer needs a pad token to batch prompts")
    key = {
        "model": model_identity(model, tokenizer),  # weights, dtype, device kinds, tokenizer: not just the name
        "instruction": instruction,
        "prompts": list(prompts),
        "layers": wanted,
        "max_new_tokens": max_new_tokens,
        "chunk_size": chunk_size,
        "version": 1,
    }
    folder = _cache_folder(Path(cache_dir), key)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / "key.json") as tmp:
        tmp.write_text(json.dumps(key, indent=1, sort_keys=True), "utf-8")
    chunks = [list(prompts[i : i + chunk_size]) for i in range(0, len(prompts), chunk_size)]
    for index, chunk in enumerate(chunks):
        path = _chunk_path(folder, index)
        if not path.exists():
            _write_chunk(
                model, tokenizer, instruction, chunk, wanted, path, max_new_tokens, batch_size, int(pad)
            )
        progress(index + 1, len(chunks), "PSR data")
    return load_activation_data(
        folder, instruction=instruction, model=str(key["model"]), layers=wanted, chunks=len(chunks)
    )


def _write_chunk(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instruction: str,
    prompts: list[str],
    layers: list[int],
    path: Path,
    max_new_tokens: int,
    batch_size: int,
    pad: int,
) -> None:
    items: list[Item] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        prefixes = [render_ids(tokenizer, p, instruction) for p in batch]
        responses = generate_ids(model, tokenizer, prefixes, max_new_tokens)
        for prompt, prefix, response in zip(batch, prefixes, responses, strict=True):
            if response:
                items.append(
                    Item(
                        prompt,
                        decode(tokenizer, response),
                        response,
                        prefix,
                        render_ids(tokenizer, prompt, None),
                    )
                )
    tensors: dict[str, torch.Tensor] = {}
    for prompted, name in ((True, "prompted"), (False, "plain")):
        parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for start in range(0, len(items), batch_size):
            recorded = record(model, items[start : start + batch_size], layers, prompted=prompted, pad=pad)
            for layer in layers:
                parts[layer].append(recorded[layer])
        for layer in layers:
            rows = parts[layer]
            tensors[f"{name}.{layer}"] = torch.cat(rows) if rows else torch.zeros((0, hidden_size(model)))
    write_steering_file(path, tensors, {"kind": CHUNK_KIND, "items": [asdict(item) for item in items]})


def load_activation_data(
    folder: str | Path, *, instruction: str, model: str, layers: Sequence[int], chunks: int
) -> ActivationData:
    """Read the chunks of a cache folder, keeping only ``layers`` (each tensor is read on its own)."""
    items: list[Item] = []
    prompted: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    plain: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for index in range(chunks):
        path = _chunk_path(Path(folder), index)
        try:
            with safe_open(str(path), framework="pt") as reader:
                meta = json.loads((reader.metadata() or {}).get("metadata", "{}"))
                if meta.get("kind") != CHUNK_KIND:
                    raise VectorFileError(f"{path}: not a PSR activation chunk")
                chunk_items = [Item(**raw) for raw in meta["items"]]
                if chunk_items:
                    for layer in layers:
                        prompted[layer].append(reader.get_tensor(f"prompted.{layer}"))
                        plain[layer].append(reader.get_tensor(f"plain.{layer}"))
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise VectorFileError(
                f"{path}: unreadable PSR cache chunk ({exc}); delete it to recompute it"
            ) from None
        items += chunk_items
    if not items:
        raise DataError("the instruction produced no non-empty responses", path=folder)
    return ActivationData(
        instruction,
        model,
        items,
        {k: torch.cat(v) for k, v in prompted.items()},
        {k: torch.cat(v) for k, v in plain.items()},
    )
