"""LoRA fine-tuning on a multiple-choice training split, scored exactly as PAS scores, chosen on the same validation.

Each training item becomes its prompt as PAS shows it (:func:`steerlab.methods.pas.scored_item`) and the correct
answer as the target: under choice likelihood, the correct choice's tokens after the question; under letter scoring,
the answer letter at the last prompt token, with the loss on the probability of every spelling of that letter (the
letter scorer's own quantity). The learning rate and the number of epochs are chosen by validation accuracy
(ties: fewer epochs, then the smaller rate); test items are never seen. The result is the adapter (saved with PEFT)
and the model with it merged, which any steerlab code (scoring, PAS, steering hooks) uses like the base model.

Example::

    from steerlab.finetune.lora import LoraSettings, fit_lora
    from steerlab.methods.pas import TaskFormat
    fit = fit_lora(model, tok, splits.train, splits.val, TaskFormat(scoring="likelihood"), LoraSettings())
    fit.save_adapter("runs/sft/adapter")               # adapter_model.safetensors + adapter_config.json
    predictions = choice_predictions(fit.model, tok, splits.test, TaskFormat(scoring="likelihood"))
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.data.items import MCItem
from steerlab.errors import ConfigError
from steerlab.methods.pas import TaskFormat, scored_item
from steerlab.progress import Progress, silent
from steerlab.runtime import batching
from steerlab.runtime.scoring import letter_token_ids
from steerlab.runtime.sweep import Scorer, score_pushes
from steerlab.runtime.sweep import predictions as argmax_choices

INSTALL = "pip install 'steerlab[finetune]'"


@dataclass(frozen=True)
class LoraSettings:
    """The adapter and the search. Defaults sized for a 135M model on CPU: 3 rates x 3 epochs of 64 items."""

    rank: int = 8
    alpha: int = 16
    learning_rates: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    max_epochs: int = 3
    batch_size: int = 8
    seed: int = 0
    target_modules: tuple[str, ...] | None = None  # None: PEFT's default for the architecture

    def __post_init__(self) -> None:
        if self.rank < 1 or self.max_epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"LoRA rank, epochs and batch size must be at least 1, got {self.rank}, "
                              f"{self.max_epochs}, {self.batch_size}")
        if not self.learning_rates or any(not lr > 0 for lr in self.learning_rates):
            raise ConfigError(f"LoRA learning rates must be positive, got {list(self.learning_rates)}")


@dataclass(frozen=True)
class Example:
    """One training sequence: position ``start - 1 + k`` must predict one of ``targets[k]`` (the loss is minus the
    log of their summed probability)."""

    ids: tuple[int, ...]
    start: int
    targets: tuple[tuple[int, ...], ...]


def _letter_ids(tokenizer: PreTrainedTokenizerBase, items: Sequence[MCItem]) -> tuple[tuple[int, ...], ...]:
    width = max(len(item.choices) for item in items)
    return tuple(tuple(ids) for ids in letter_token_ids(tokenizer, [chr(65 + k) for k in range(width)]))


def training_examples(tokenizer: PreTrainedTokenizerBase, items: Sequence[MCItem], fmt: TaskFormat,
                      ) -> list[Example]:
    """Each item's prompt with its correct answer as the target, tokenised as PAS scores it."""
    fmt = TaskFormat(fmt.scoring, fmt.style, fmt.length_normalize, "answer")
    letters = _letter_ids(tokenizer, items) if fmt.scoring == "letters" else None
    examples = []
    for item in items:
        scored = scored_item(tokenizer, item, fmt)
        if letters is not None:
            ids = scored.prefix + scored.chunks[0]
            examples.append(Example(ids, len(ids), (letters[item.answer],)))
            continue
        chunk = scored.chunks[item.answer]
        ids = scored.prefix + chunk
        start = len(scored.prefix) + scored.score_from[item.answer] + 1
        examples.append(Example(ids, start, tuple((t,) for t in ids[start:])))
    return examples


def choice_predictions(model: nn.Module, tokenizer: PreTrainedTokenizerBase, items: Sequence[MCItem],
                       fmt: TaskFormat, *, batch_size: int = 8, progress: Progress = silent,
                       what: str = "fine-tuned model") -> list[int]:
    """The predicted choice of each item, scored exactly as the PAS baseline is."""
    letters = _letter_ids(tokenizer, items) if fmt.scoring == "letters" else None
    scored = [scored_item(tokenizer, item, fmt) for item in items]
    result = score_pushes(model, scored, Scorer(letters, fmt.length_normalize), {}, batch_size=batch_size,
                          progress=progress, what=what)
    return argmax_choices(result.baseline)


def example_losses(model: nn.Module, examples: Sequence[Example]) -> torch.Tensor:
    """Per example: the mean over its targets of -log(sum of the target tokens' probabilities)."""
    ids, mask = batching.pad([e.ids for e in examples], batching.pad_id(model), side="right",
                             device=next(model.parameters()).device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=batching.positions(mask)).logits
    losses = []
    for k, example in enumerate(examples):
        rows = torch.arange(example.start - 1, example.start - 1 + len(example.targets), device=logits.device)
        logprobs = torch.log_softmax(logits[k, rows].float(), dim=-1)
        per_target = [-torch.logsumexp(logprobs[j, list(tokens)], dim=0) for j, tokens in enumerate(example.targets)]
        losses.append(torch.stack(per_target).mean())
    return torch.stack(losses)


def with_adapter(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """A deep copy of ``model`` with a fresh LoRA adapter (initialised from ``settings.seed``), as a PEFT model."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError(f"LoRA fine-tuning needs the peft package: {INSTALL}") from None
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, bias="none",
                        target_modules=list(settings.target_modules) if settings.target_modules else None)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        try:
            return get_peft_model(copy.deepcopy(model), config)
        except ValueError as exc:  # PEFT cannot guess the projections of an unknown architecture
            raise ConfigError(f"LoRA: {exc}; give LoraSettings(target_modules=...)") from None


def _adapter_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}


def train_epoch(peft_model: nn.Module, examples: Sequence[Example], optimizer: torch.optim.Optimizer,
                batch_size: int, generator: torch.Generator) -> float:
    """One pass over ``examples`` in a seeded random order; the mean training loss."""
    peft_model.train()
    order = torch.randperm(len(examples), generator=generator).tolist()
    total = 0.0
    for begin in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[begin:begin + batch_size]]
        optimizer.zero_grad()
        loss = example_losses(peft_model, batch).mean()
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(batch)
    peft_model.eval()
    return total / len(examples)


@dataclass
class LoraReport:
    """What was chosen and what it cost; JSON-ready through `summary`."""

    learning_rate: float
    epochs: int
    val_accuracy: float
    grid: list[dict[str, float]]  # per (rate, epoch): training loss, validation accuracy
    train_seconds: float  # the whole search, every rate and epoch
    adapter_bytes: int  # adapter_model.safetensors as PEFT saves it
    trainable_parameters: int
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LoraFit:
    model: nn.Module  # a copy of the base model with the chosen adapter merged (a plain transformers model)
    adapter: nn.Module  # the PEFT model holding the chosen adapter, for save_pretrained
    report: LoraReport

    def save_adapter(self, folder: str | Path) -> None:
        save_adapter(self.adapter, folder)


def save_adapter(peft_model: nn.Module, folder: str | Path) -> None:
    """PEFT's adapter files (adapter_model.safetensors, adapter_config.json) in ``folder``, written beside it and
    renamed into place, so a killed save leaves the previous folder or none."""
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        peft_model.save_pretrained(str(staging))  # type: ignore[operator]
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_fit(model: nn.Module, folder: str | Path, report: LoraReport) -> LoraFit:
    """A fit saved with `LoraFit.save_adapter`, applied to a copy of ``model`` (which is left unchanged)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ConfigError(f"LoRA fine-tuning needs the peft package: {INSTALL}") from None
    adapter = PeftModel.from_pretrained(copy.deepcopy(model), str(folder))
    merged = copy.deepcopy(adapter).merge_and_unload()
    return LoraFit(model=merged.eval(), adapter=adapter, report=report)


def _adapter_bytes(peft_model: nn.Module) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)  # type: ignore[operator]
        return sum(p.stat().st_size for p in Path(tmp).iterdir() if p.name.startswith("adapter_model"))


def fit_lora(model: nn.Module, tokenizer: PreTrainedTokenizerBase, train: Sequence[MCItem], val: Sequence[MCItem],
             fmt: TaskFormat, settings: LoraSettings | None = None, *, progress: Progress = silent) -> LoraFit:
    """Train one adapter per learning rate for up to ``max_epochs``, scoring validation after every epoch; keep the
    best (rate, epochs). ``model`` itself is left unchanged."""
    settings = settings or LoraSettings()
    if not train or not val:
        raise ConfigError("LoRA fine-tuning needs training and validation items")
    examples = training_examples(tokenizer, train, fmt)
    grid: list[dict[str, float]] = []
    best: tuple[float, int, float, dict[str, torch.Tensor]] | None = None  # val accuracy, epochs, rate, weights
    start = time.perf_counter()
    base_accuracy = _accuracy(model, tokenizer, val, fmt, settings)
    for rate in settings.learning_rates:
        peft_model = with_adapter(model, settings)
        optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=rate)
        generator = torch.Generator().manual_seed(settings.seed)
        for epoch in range(1, settings.max_epochs + 1):
            loss = train_epoch(peft_model, examples, optimizer, settings.batch_size, generator)
            accuracy = _accuracy(peft_model, tokenizer, val, fmt, settings)
            grid.append({"learning_rate": rate, "epoch": epoch, "train_loss": loss, "val_accuracy": accuracy})
            progress(len(grid), len(settings.learning_rates) * settings.max_epochs, "LoRA: epochs trained")
            if not math.isfinite(loss):
                break
            if best is None or accuracy > best[0]:
                best = (accuracy, epoch, rate, _adapter_state(peft_model))
    seconds = time.perf_counter() - start
    assert best is not None
    accuracy, epochs, rate, weights = best
    chosen = with_adapter(model, settings)
    chosen.load_state_dict(weights, strict=False)
    trainable = sum(p.numel() for p in chosen.parameters() if p.requires_grad)
    report = LoraReport(learning_rate=rate, epochs=epochs, val_accuracy=accuracy, grid=grid, train_seconds=seconds,
                        adapter_bytes=_adapter_bytes(chosen), trainable_parameters=trainable,
                        settings={**settings.__dict__, "learning_rates": list(settings.learning_rates),
                                  "target_modules": None if settings.target_modules is None
                                  else list(settings.target_modules), "val_accuracy_before": base_accuracy})
    merged = copy.deepcopy(chosen).merge_and_unload()  # type: ignore[operator]
    return LoraFit(model=merged.eval(), adapter=chosen, report=report)


def _accuracy(model: nn.Module, tokenizer: PreTrainedTokenizerBase, items: Sequence[MCItem], fmt: TaskFormat,
              settings: LoraSettings) -> float:
    # A PEFT model's inner model carries the adapter in its layers and keeps the architecture steerlab reads.
    unwrap = getattr(model, "get_base_model", None)
    inner = unwrap() if callable(unwrap) else model
    with torch.no_grad():
        picks = choice_predictions(inner, tokenizer, items, fmt, batch_size=settings.batch_size)
    return sum(p == item.answer for p, item in zip(picks, items, strict=True)) / len(items)
