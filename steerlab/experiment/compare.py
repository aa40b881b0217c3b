"""``steerlab run --compare sft``: a LoRA adapter trained on PAS's own splits, beside PAS, and PAS on top of it.

Per seed, on the same train / validation / test items as PAS: fit a LoRA adapter (rate and epochs chosen on
validation, see :mod:`steerlab.finetune.lora`), score the test items with it exactly as the unsteered model was
scored, then run PAS again (the chosen method) on the fine-tuned model: the paper's "PAS on top of SFT". Every
difference is paired per test item against the unsteered base model, with the run's bootstrap intervals.

Example::

    result = run_task(model, tok, load_task("caa/survival-instinct"), RunConfig(compare_sft=True), out_dir="runs/s")
    print([(arm.name, arm.accuracy.value, arm.delta) for arm in result.sft.comparison.arms])
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.vector import SteeringVector, atomic_output
from steerlab.data.items import Splits
from steerlab.experiment.stats import Estimate, correctness, mean, paired_bootstrap
from steerlab.finetune.lora import LoraFit, LoraReport, LoraSettings, choice_predictions, fit_lora, load_fit
from steerlab.methods.pas import TaskFormat
from steerlab.progress import Progress, silent


@dataclass(frozen=True)
class SeedSplit:
    """What the comparison needs of one PAS seed: its splits and the unsteered test correctness."""

    seed: int
    splits: Splits
    baseline: list[float]


@dataclass(frozen=True)
class PasOnTop:
    """PAS run again on the fine-tuned model (one seed): its test arm and the point it chose."""

    test_ids: list[str]
    steered: list[float]  # per test item, 1.0 = correct
    vector: SteeringVector
    point: dict[str, Any]  # method, verdict, layers, strength, positions, delta vs the fine-tuned model
    seconds: float  # its vectors, sweep and test


@dataclass(frozen=True)
class Arm:
    """One way of changing the model, on the PAS test items: per-seed correctness and the paired delta."""

    name: str
    correct: list[list[float]]  # per seed, per test item
    delta: Estimate  # vs the unsteered base model
    accuracy: Estimate  # test accuracy with its interval
    seconds: float  # to build it (training, or vector + sweep)
    bytes_stored: int  # the adapter or the vector file

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "test_accuracy": asdict(self.accuracy), "delta": asdict(self.delta),
                "seconds": self.seconds, "bytes_stored": self.bytes_stored}


@dataclass(frozen=True)
class SFTComparison:
    """PAS, LoRA and LoRA + PAS side by side on the same test items."""

    test_ids: list[list[str]]
    pas: Arm
    lora: Arm
    lora_pas: Arm
    lora_reports: list[LoraReport]
    pas_on_lora: list[dict[str, Any]]  # the PAS-on-LoRA run's chosen point and verdict, per seed
    pas_minus_lora: Estimate  # paired per item: PAS steered - LoRA

    @property
    def arms(self) -> tuple[Arm, Arm, Arm]:
        return self.pas, self.lora, self.lora_pas

    def summary(self) -> dict[str, Any]:
        return {"arms": [arm.summary() for arm in self.arms],
                "pas_minus_lora": asdict(self.pas_minus_lora), "lora": [r.summary() for r in self.lora_reports],
                "pas_on_lora": self.pas_on_lora, "per_item": {
                    "ids": self.test_ids, **{arm.name: arm.correct for arm in self.arms}}}


@dataclass
class SFTArtifacts:
    """What ``--compare sft`` leaves to save: the first seed's adapter and its PAS-on-LoRA vector."""

    comparison: SFTComparison
    adapter: nn.Module  # a PEFT model: save_pretrained(folder)
    vector: SteeringVector


def file_bytes(vector: SteeringVector) -> int:
    """The size of ``vector`` as a steerlab file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.safetensors"
        vector.save(path)
        return path.stat().st_size


def _arm(name: str, correct: list[list[float]], seeds: Sequence[SeedSplit], seconds: float, size: int) -> Arm:
    delta = paired_bootstrap([[c - b for c, b in zip(cs, s.baseline, strict=True)] for cs, s in zip(correct, seeds,
                                                                                                    strict=True)])
    return Arm(name, correct, delta, paired_bootstrap(correct), seconds, size)


def compare_sft(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    seeds: Sequence[SeedSplit],
    fmt: TaskFormat,
    pas_correct: list[list[float]],
    pas_seconds: float,
    pas_vector: SteeringVector,
    pas_on: Callable[[nn.Module, int], PasOnTop],
    *,
    settings: LoraSettings | None = None,
    adapter_dir: Callable[[int], Path | None] = lambda seed: None,
    batch_size: int = 8,
    progress: Progress = silent,
) -> SFTArtifacts:
    """Fit LoRA per seed, test it, and run PAS on it with ``pas_on(fine_tuned_model, seed)``.

    ``pas_correct`` is PAS's steered test correctness per seed (on ``seeds[k].splits.test``), ``pas_seconds`` what
    PAS took, ``pas_vector`` its chosen vector.

    ``adapter_dir(seed)`` is where a seed's adapter is kept (with its report) so that a resumed run reloads it
    instead of training again; None keeps nothing.
    """
    settings = settings or LoraSettings()
    lora_correct, lora_pas_correct, reports, on_top, top_seconds = [], [], [], [], []
    first: tuple[nn.Module, SteeringVector] | None = None
    for split in seeds:
        fit = _fit(model, tokenizer, split, fmt, settings, adapter_dir(split.seed), progress)
        predicted = choice_predictions(fit.model, tokenizer, split.splits.test, fmt, batch_size=batch_size,
                                       progress=progress, what=f"seed {split.seed}: LoRA on test")
        lora_correct.append(correctness(predicted, split.splits.test))
        top = pas_on(fit.model, split.seed)
        if top.test_ids != [i.id for i in split.splits.test]:
            raise AssertionError("PAS on LoRA was tested on other items than PAS")  # the same config, same splits
        lora_pas_correct.append(list(top.steered))
        reports.append(fit.report)
        on_top.append({"seed": split.seed, **top.point})
        top_seconds.append(top.seconds)
        if first is None:
            first = (fit.adapter, top.vector)
    assert first is not None
    train_seconds = mean([r.train_seconds for r in reports])
    comparison = SFTComparison(
        test_ids=[[i.id for i in split.splits.test] for split in seeds],
        pas=_arm("pas", pas_correct, seeds, pas_seconds, file_bytes(pas_vector)),
        lora=_arm("lora", lora_correct, seeds, train_seconds, reports[0].adapter_bytes),
        lora_pas=_arm("lora+pas", lora_pas_correct, seeds, train_seconds + mean(top_seconds),
                      reports[0].adapter_bytes + file_bytes(first[1])),
        lora_reports=reports, pas_on_lora=on_top,
        pas_minus_lora=paired_bootstrap([[p - q for p, q in zip(ps, qs, strict=True)]
                                         for ps, qs in zip(pas_correct, lora_correct, strict=True)]))
    return SFTArtifacts(comparison, first[0], first[1])


def _fit(model: nn.Module, tokenizer: PreTrainedTokenizerBase, split: SeedSplit, fmt: TaskFormat,
         settings: LoraSettings, folder: Path | None, progress: Progress) -> LoraFit:
    if folder is not None and (folder / "lora_report.json").is_file():
        report = LoraReport(**json.loads((folder / "lora_report.json").read_text("utf-8")))
        return load_fit(model, folder, report)
    fit = fit_lora(model, tokenizer, split.splits.train, split.splits.val, fmt,
                   LoraSettings(**{**settings.__dict__, "seed": split.seed}), progress=progress)
    if folder is not None:
        # The adapter first, the report last: a folder with a report is complete.
        fit.save_adapter(folder)
        with atomic_output(folder / "lora_report.json") as tmp:
            tmp.write_text(json.dumps(fit.report.summary()), "utf-8")
    return fit


def markdown(summary: dict[str, Any]) -> str:
    """report.md's side-by-side section, from `SFTComparison.summary`."""

    def interval(e: dict[str, Any]) -> str:
        if e["low"] is None:
            return f"{e['value']:+.3f}"
        return f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"

    rows = [f"| {a['name']} | {a['test_accuracy']['value']:.3f} [{a['test_accuracy']['low'] or 0:.3f}, "
            f"{a['test_accuracy']['high'] or 0:.3f}] | {interval(a['delta'])} | {a['seconds']:.1f} | "
            f"{a['bytes_stored']:,} |" for a in summary["arms"]]
    # Both lists run over the run's seeds in order; pas_on_lora records each seed (with --seed 5, 5 and 6).
    chosen = "; ".join(f"seed {p['seed']}: rate {r['learning_rate']:g}, {r['epochs']} epoch(s), validation "
                       f"{r['val_accuracy']:.3f}" for p, r in zip(summary["pas_on_lora"], summary["lora"],
                                                                  strict=True))
    top = "; ".join(f"seed {p['seed']}: {p['method']} at layers {p['layers']}, strength {p['strength']:g}, "
                    f"{p['positions']}: {p['verdict']} ({interval(p['delta_vs_lora'])} vs LoRA)"
                    for p in summary["pas_on_lora"])
    return "\n".join([
        "The same train / validation / test items; deltas are paired per test item against the unsteered base "
        "model. Seconds: LoRA's whole rate x epoch search; PAS's vectors, sweep and test.", "",
        "| | test accuracy [95% CI] | delta vs unsteered [95% CI] | seconds | bytes stored |",
        "|---|---:|---:|---:|---:|", *rows, "",
        f"PAS - LoRA, paired: {interval(summary['pas_minus_lora'])}. LoRA chosen on validation: {chosen}. "
        f"PAS on top of LoRA: {top}."])
