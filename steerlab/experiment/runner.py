"""``steerlab run``: from a labelled multiple-choice dataset to a tested steering vector, with no human choice.

For each seed: shuffle every item's choices (per item), split train / val / test, score the unsteered model on all
three, build each method's vector from the training answers, sweep layer x strength on validation, and test the
best point against the unsteered model, a random direction of the same norm, in-context learning, and in-context
learning plus steering. Every finished piece is kept under ``out/.steerlab-cache`` so a killed run resumes.

Selection rule: the grid point with the highest validation accuracy; ties go to the smaller strength, then to the
earlier layer. The method reported on top is the one with the best validation accuracy (ties: the order given).

Example::

    from steerlab import load_model, load_task
    from steerlab.experiment.runner import RunConfig, run_task
    model, tok = load_model()
    result = run_task(model, tok, load_task("caa/survival-instinct"), RunConfig(task="caa/survival-instinct"))
    print(result.report["delta"], result.report["delta_ci95"])
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab._version import __version__
from steerlab.core.vector import SteeringVector
from steerlab.data.items import MCItem, shuffle_choices, split_items
from steerlab.data.prompts import PromptStyle
from steerlab.errors import ConfigError
from steerlab.experiment.stats import (
    constant_letter,
    correctness,
    letter_counts,
    mean,
    paired_delta,
    shortest_answer,
    t_interval,
)
from steerlab.experiment.store import Store, fingerprint
from steerlab.methods.pas import PAS_METHODS, TaskFormat, build_vector, icl_history, method_problem, scored_item
from steerlab.models import model_name, num_layers
from steerlab.progress import Progress, silent
from steerlab.runtime.scoring import letter_token_ids
from steerlab.runtime.sweep import ScoredItem, Scorer, score_grid
from steerlab.runtime.sweep import predictions as argmax_choices

SWEEP_BLOCK = 16  # validation items per stored sweep entry: the unit a resumed run does not redo
LETTERS_AGREEMENT = 0.6
CHECK_ITEMS = 32  # training items asked in both choice orders to decide the scoring


def default_layers(depth: int) -> list[int]:
    """Ten layers spread over the middle of the network (25% to 80% of its depth), where steering works best."""
    low, high = max(1, round(0.25 * depth)), max(1, round(0.8 * depth))
    count = min(10, high - low + 1)
    return sorted({round(low + k * (high - low) / max(1, count - 1)) for k in range(count)})


DEFAULT_STRENGTHS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass(frozen=True)
class RunConfig:
    task: str = "caa/survival-instinct"
    methods: tuple[str, ...] = ("ipas-wo",)  # the paper's strongest; PAS_METHODS compares all four
    layers: tuple[int, ...] | None = None
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    # Sized so that plain `steerlab run` takes under 5 minutes on 2 CPU cores; --n-test 200 tightens the interval.
    n_train: int = 64
    n_val: int = 32
    n_test: int = 64
    seeds: int = 1
    seed: int = 0
    scoring: str = "auto"          # auto | letters | likelihood
    length_normalize: bool = False
    chat: bool = True
    steer_all: bool = False
    icl_k: int = 4
    batch_size: int = 8
    extras: dict[str, Any] = field(default_factory=dict)


def _accuracy(scores: Sequence[Sequence[float]], items: Sequence[MCItem]) -> float:
    return mean(correctness(argmax_choices(scores), items))


def _pick(points: dict[tuple[int, float], float]) -> tuple[int, float]:
    return max(sorted(points), key=lambda p: (points[p], -abs(p[1]), -p[0]))


class _Runner:
    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, items: Sequence[MCItem],
                 config: RunConfig, store: Store, progress: Progress) -> None:
        self.model, self.tokenizer, self.items, self.config = model, tokenizer, items, config
        self.store, self.progress = store, progress
        self.depth = num_layers(model)
        self.layers = list(config.layers or default_layers(self.depth))
        bad = [layer for layer in self.layers if not 0 <= layer < self.depth]
        if bad:
            raise ConfigError(f"layer(s) {bad} out of range: the model has layers 0..{self.depth - 1}")
        for method in config.methods:
            if method not in PAS_METHODS:
                raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(PAS_METHODS)} or all")
        width = max(len(i.choices) for i in items)
        self.letter_ids = tuple(tuple(ids) for ids in letter_token_ids(tokenizer, [chr(65 + k) for k in range(width)]))
        self.base_key = fingerprint(model_name(model), [(i.id, i.question, i.choices, i.answer) for i in items],
                                    {k: v for k, v in asdict(config).items() if k not in ("batch_size",)})
        self.timings: dict[str, float] = {}

    def key(self, *parts: Any) -> str:
        return fingerprint(self.base_key, *parts)

    def time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds

    def fmt(self, scoring: str) -> TaskFormat:
        c = self.config
        return TaskFormat(scoring="letters" if scoring == "letters" else "likelihood",
                          style=PromptStyle(chat=c.chat), length_normalize=c.length_normalize, steer_all=c.steer_all)

    def scorer(self, fmt: TaskFormat) -> Scorer:
        return Scorer(self.letter_ids if fmt.scoring == "letters" else None, fmt.length_normalize)

    def scored(self, items: Sequence[MCItem], fmt: TaskFormat,
               history: Sequence[tuple[str, str]] = ()) -> list[ScoredItem]:
        return [scored_item(self.tokenizer, item, fmt, history) for item in items]

    def baseline(self, items: Sequence[MCItem], fmt: TaskFormat, what: str,
                 history: Sequence[tuple[str, str]] = ()) -> list[list[float]]:
        return score_grid(self.model, self.scored(items, fmt, history), self.scorer(fmt),
                          batch_size=self.config.batch_size, progress=self.progress, what=what).baseline

    def steered(self, items: Sequence[MCItem], fmt: TaskFormat, vector: SteeringVector, layer: int,
                strength: float, what: str, history: Sequence[tuple[str, str]] = ()) -> list[list[float]]:
        return score_grid(self.model, self.scored(items, fmt, history), self.scorer(fmt), vector, [layer],
                          [strength], batch_size=self.config.batch_size, progress=self.progress,
                          what=what).grid[(layer, float(strength))]

    def splits(self, seed: int) -> Any:
        shuffled = [shuffle_choices(item, seed) for item in self.items]
        c = self.config
        return split_items(shuffled, c.n_train, c.n_val, c.n_test, seed)

    def scoring_check(self, train: Sequence[MCItem]) -> dict[str, Any]:
        """Does letter scoring follow the content? Ask each training item in two choice orders and compare."""
        sample = list(train[:CHECK_ITEMS])
        letters = self.fmt("letters")
        forward = argmax_choices(self.baseline(sample, letters, "scoring check: letters"))
        flipped_items = [MCItem(i.id, i.question, tuple(reversed(i.choices)), len(i.choices) - 1 - i.answer,
                                i.context, i.group) for i in sample]
        flipped = argmax_choices(self.baseline(flipped_items, letters, "scoring check: letters, reversed"))
        agree = mean([float(a == len(i.choices) - 1 - b) for a, b, i in zip(forward, flipped, sample, strict=True)])
        likelihood = self.baseline(sample, self.fmt("likelihood"), "scoring check: likelihood")
        chosen = "letters" if agree >= LETTERS_AGREEMENT else "likelihood"
        reason = (f"asked in both choice orders, letter scoring picked the same answer for {agree:.0%} of "
                  f"{len(sample)} training items (threshold {LETTERS_AGREEMENT:.0%}): "
                  + ("it follows the content" if chosen == "letters" else
                     "it follows the letter position, not the content, so choices are scored by likelihood"))
        return {"letters_agreement": agree, "letters_train_accuracy": mean(correctness(forward, sample)),
                "likelihood_train_accuracy": _accuracy(likelihood, sample), "chosen": chosen, "reason": reason}

    def sweep(self, seed: int, method: str, vector: SteeringVector, val: Sequence[MCItem],
              fmt: TaskFormat) -> dict[tuple[int, float], float]:
        correct: dict[tuple[int, float], list[float]] = {}
        scored = self.scored(val, fmt)
        for start in range(0, len(val), SWEEP_BLOCK):
            block = scored[start:start + SWEEP_BLOCK]

            def compute(block: list[ScoredItem] = block, start: int = start) -> list[list[Any]]:
                grid = score_grid(self.model, block, self.scorer(fmt), vector, self.layers,
                                  self.config.strengths, batch_size=self.config.batch_size,
                                  what=f"seed {seed} {method}: sweep items {start + 1}-{start + len(block)}").grid
                return [[layer, strength, argmax_choices(scores)] for (layer, strength), scores in grid.items()]

            rows, seconds = self.store.json(self.key(seed, method, "sweep", start), compute)
            self.time("sweep", seconds)
            for layer, strength, predicted in rows:
                correct.setdefault((layer, float(strength)), []).extend(
                    correctness(predicted, val[start:start + len(predicted)]))
            self.progress(min(start + SWEEP_BLOCK, len(val)), len(val), f"seed {seed} {method}: sweep")
        return {point: mean(values) for point, values in correct.items()}

    def run(self) -> RunResult:
        c = self.config
        seeds = [c.seed + k for k in range(c.seeds)]
        first = self.splits(seeds[0])
        if c.scoring == "auto":
            check, seconds = self.store.json(self.key("scoring-check", CHECK_ITEMS),
                                             lambda: self.scoring_check(first.train))
            self.time("scoring_check", seconds)
        elif c.scoring in ("letters", "likelihood"):
            check = {"chosen": c.scoring, "reason": "set by --scoring"}
        else:
            raise ConfigError(f"unknown scoring '{c.scoring}'; choose auto, letters or likelihood")
        fmt = self.fmt(check["chosen"])
        per_method: dict[str, dict[str, Any]] = {m: {"per_seed": []} for m in c.methods}
        seed_rows: list[dict[str, Any]] = []
        for seed in seeds:
            seed_rows.append(self.run_seed(seed, fmt, per_method))
        best = self.best(per_method)
        rows = {row["seed"]: row for row in seed_rows}
        for run in per_method[best]["per_seed"]:
            row = rows[run["seed"]]
            # The most expensive control (long in-context prompts), so only for the method reported on top.
            scores, seconds = self.store.json(
                self.key(row["seed"], best, "icl-steering", run["layer"], run["strength"]),
                partial(self.steered, row["splits"].test, fmt, run["vector"], run["layer"], run["strength"],
                        f"seed {row['seed']} {best}: ICL + steering", row["history"]))
            self.time("controls", seconds)
            run["icl_steering"] = correctness(argmax_choices(scores), row["splits"].test)
        report = self.assemble(check, fmt, per_method, seed_rows, best)
        # Phase times are stored with their results, so a resumed run reports the same numbers.
        self.timings["total"] = sum(self.timings.values())
        report["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        vectors = {}
        for method, details in report["methods"].items():
            if "skipped" not in details:
                chosen = per_method[method]["per_seed"][0]
                vectors[method] = SteeringVector(
                    {chosen["layer"]: chosen["vector"].layers[chosen["layer"]]},
                    {**chosen["vector"].metadata, "layer": chosen["layer"], "strength": chosen["strength"],
                     "task": self.config.task, "scoring": report["scoring"],
                     "steer_positions": report["steer_positions"]})
        return RunResult(report, vectors)

    def run_seed(self, seed: int, fmt: TaskFormat, per_method: dict[str, dict[str, Any]]) -> dict[str, Any]:
        splits = self.splits(seed)
        base: dict[str, list[list[float]]] = {}
        for name in ("train", "val", "test"):
            items = getattr(splits, name)
            base[name], seconds = self.store.json(
                self.key(seed, "baseline", name), partial(self.baseline, items, fmt, f"seed {seed}: unsteered {name}"))
            self.time("val_unsteered_pass" if name == "val" else "baseline", seconds)
        train_pred = argmax_choices(base["train"])
        test_base = correctness(argmax_choices(base["test"]), splits.test)
        wrong = [i for i, p in zip(splits.train, train_pred, strict=True) if p != i.answer]
        right = [i for i, p in zip(splits.train, train_pred, strict=True) if p == i.answer]
        shots = random.Random(seed).sample(wrong, min(len(wrong), self.config.icl_k))
        shots += random.Random(seed).sample(right, min(len(right), self.config.icl_k - len(shots)))
        history = icl_history(shots, fmt)
        icl_scores, seconds = self.store.json(self.key(seed, "icl"), lambda: self.baseline(
            splits.test, fmt, f"seed {seed}: ICL test", history))
        self.time("controls", seconds)
        icl = correctness(argmax_choices(icl_scores), splits.test)
        row: dict[str, Any] = {"seed": seed, "splits": splits, "test_baseline": test_base, "history": history,
                               "val_baseline": _accuracy(base["val"], splits.val), "icl": icl,
                               "test_predicted": argmax_choices(base["test"])}
        for method in self.config.methods:
            problem = method_problem(method, splits.train, train_pred)
            if problem:
                per_method[method]["skipped"] = problem
                continue
            vector, seconds = self.store.vector(self.key(seed, method, "vector"), partial(
                build_vector, self.model, self.tokenizer, method, splits.train, train_pred, self.layers,
                style=fmt.style, scoring=fmt.scoring, batch_size=2 * self.config.batch_size, progress=self.progress))
            self.time("vectors", seconds)
            points = self.sweep(seed, method, vector, splits.val, fmt)
            layer, strength = _pick(points)
            test_scores, seconds = self.store.json(
                self.key(seed, method, "test", layer, strength),
                partial(self.steered, splits.test, fmt, vector, layer, strength, f"seed {seed} {method}: steered test"))
            self.time("test", seconds)
            steered_pred = argmax_choices(test_scores)
            steered = correctness(steered_pred, splits.test)
            random_control, seconds = self.store.json(
                self.key(seed, method, "random-direction", layer, strength),
                partial(self.random_direction, seed, method, vector, layer, strength, splits.test, fmt))
            self.time("controls", seconds)
            per_method[method]["per_seed"].append({
                "seed": seed, "layer": layer, "strength": strength, "val_accuracy": points[(layer, strength)],
                "baseline_test_accuracy": mean(test_base), "steered_test_accuracy": mean(steered),
                **paired_delta(steered, test_base),
                "random_direction": random_control,
                "steered_correct": steered,
                "sweep": [{"layer": lay, "strength": s, "val_accuracy": acc}
                          for (lay, s), acc in sorted(points.items())],
                "steered_predicted": steered_pred, "vector": vector,
            })
        return row

    def random_direction(self, seed: int, method: str, vector: SteeringVector, layer: int, strength: float,
                         test: Sequence[MCItem], fmt: TaskFormat) -> list[float]:
        """Correctness on ``test`` steered by a random direction with the norm of ``vector`` at ``layer``."""
        generator = torch.Generator().manual_seed(seed)
        direction = torch.randn(vector.hidden_size, generator=generator)
        random_vector = SteeringVector({layer: direction / direction.norm() * vector.layers[layer].norm()},
                                       {"kind": "vector", "method": "random"})
        random_scores = self.steered(test, fmt, random_vector, layer, strength, f"seed {seed} {method}: random control")
        return correctness(argmax_choices(random_scores), test)

    def best(self, per_method: dict[str, dict[str, Any]]) -> str:
        """The method with the best mean validation accuracy at its chosen point (ties: the order given)."""
        methods = self.config.methods
        ran = [m for m in methods if per_method[m]["per_seed"]]
        if not ran:
            reasons = "; ".join(f"{m}: {per_method[m].get('skipped', 'did not run')}" for m in methods)
            raise ConfigError(f"no method could run ({reasons})")
        return max(ran, key=lambda m: (mean([r["val_accuracy"] for r in per_method[m]["per_seed"]]),
                                       -methods.index(m)))

    def assemble(self, check: dict[str, Any], fmt: TaskFormat, per_method: dict[str, dict[str, Any]],
                 seed_rows: list[dict[str, Any]], best: str) -> dict[str, Any]:
        c = self.config
        rows = {row["seed"]: row for row in seed_rows}

        def summary(deltas: list[float], per_item: dict[str, object]) -> dict[str, Any]:
            if len(deltas) > 1:
                return {"delta": mean(deltas), "delta_ci95": list(t_interval(deltas))}
            return dict(per_item)

        def control(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
            """A control's accuracy and its paired difference from the unsteered model, over the seeds it ran."""
            values_per_seed = [run[key] for run in runs]
            deltas = [paired_delta(run[key], rows[run["seed"]]["test_baseline"]) for run in runs]
            return {"test_accuracy": mean([mean(v) for v in values_per_seed]),
                    **summary([float(d["delta"]) for d in deltas], deltas[0])}  # type: ignore[arg-type]

        methods: dict[str, dict[str, Any]] = {}
        for name, data in per_method.items():
            runs = data["per_seed"]
            if not runs:
                methods[name] = {"skipped": data.get("skipped", "did not run")}
                continue
            first_run = runs[0]
            vs_random = [paired_delta(r["steered_correct"], r["random_direction"]) for r in runs]
            methods[name] = {
                "layer": first_run["layer"], "strength": first_run["strength"],
                "val_accuracy": mean([r["val_accuracy"] for r in runs]),
                "baseline_test_accuracy": mean([r["baseline_test_accuracy"] for r in runs]),
                "steered_test_accuracy": mean([r["steered_test_accuracy"] for r in runs]),
                **summary([r["delta"] for r in runs], {"delta": first_run["delta"],
                                                        "delta_ci95": first_run["delta_ci95"]}),
                "controls": {"random_direction": {
                    **control(runs, "random_direction"),
                    "steered_minus_random": summary(
                        [float(d["delta"]) for d in vs_random], vs_random[0])}},  # type: ignore[arg-type]
                "per_seed": [{k: r[k] for k in ("seed", "layer", "strength", "val_accuracy", "baseline_test_accuracy",
                                                "steered_test_accuracy", "delta", "delta_ci95")} for r in runs],
                "sweep": first_run["sweep"],
            }
            if len(runs) < len(seed_rows):
                methods[name]["skipped_seeds"] = data.get("skipped")
        chosen = methods[best]
        chosen["controls"]["icl_steering"] = {"k": c.icl_k, **control(per_method[best]["per_seed"], "icl_steering")}
        row0 = seed_rows[0]
        test0 = row0["splits"].test
        width = max(len(i.choices) for i in test0)
        controls: dict[str, Any] = {
            "constant_letter": constant_letter(test0),
            "random_direction": chosen["controls"]["random_direction"],
            "icl": {"k": c.icl_k, **control(seed_rows, "icl")},
            "icl_steering": chosen["controls"]["icl_steering"],
        }
        if fmt.scoring == "likelihood":
            scored = [scored_item(self.tokenizer, item, fmt) for item in test0]
            lengths = [[len(chunk) - 1 - start for chunk, start in zip(s.chunks, s.score_from, strict=True)]
                       for s in scored]
            controls["shortest_answer"] = shortest_answer(lengths, test0)
        report: dict[str, Any] = {
            "steerlab_version": __version__,
            "model": model_name(self.model),
            "task": c.task,
            "method": best,
            "methods_run": list(c.methods),
            "scoring": fmt.scoring,
            "scoring_check": check,
            "steer_positions": "all" if fmt.steer_all else ("last-token" if fmt.scoring == "letters" else "answer"),
            "layer": chosen["layer"],
            "strength": chosen["strength"],
            "n_train": c.n_train, "n_val": c.n_val, "n_test": c.n_test, "seeds": c.seeds, "seed": c.seed,
            "baseline": {"test_accuracy": chosen["baseline_test_accuracy"],
                         "val_accuracy": mean([r["val_baseline"] for r in seed_rows])},
            "steered": {"test_accuracy": chosen["steered_test_accuracy"], "val_accuracy": chosen["val_accuracy"]},
            "delta": chosen["delta"],
            "delta_ci95": chosen["delta_ci95"],
            "ci_method": "t-interval over seeds" if c.seeds > 1 else "paired t-interval over test items",
            "controls": controls,
            "letters": {
                "correct": letter_counts([i.answer for i in test0], width),
                "predicted_baseline": letter_counts(row0["test_predicted"], width),
                "predicted_steered": letter_counts(per_method[best]["per_seed"][0]["steered_predicted"], width),
            },
            "per_item": {  # seed 0 test split, chosen method: what the paired interval is computed from
                "ids": [i.id for i in test0],
                "baseline_correct": row0["test_baseline"],
                "steered_correct": correctness(per_method[best]["per_seed"][0]["steered_predicted"], test0),
            },
            "grid": {"layers": self.layers, "strengths": list(c.strengths)},
            "sweep": chosen["sweep"],
            "methods": methods,
        }
        return report


@dataclass
class RunResult:
    report: dict[str, Any]
    vectors: dict[str, SteeringVector]  # each method's vector at its chosen layer; metadata holds layer and strength


def run_task(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[MCItem],
    config: RunConfig,
    *,
    out_dir: str | Path | None = None,
    progress: Progress = silent,
) -> RunResult:
    """Run PAS on ``items``: the report, and each method's vector at its chosen layer and strength.

    With ``out_dir``, finished pieces are kept in ``out_dir/.steerlab-cache`` and reused by a later identical run.
    """
    store = Store(None if out_dir is None else Path(out_dir) / ".steerlab-cache")
    return _Runner(model, tokenizer, items, config, store, progress).run()
