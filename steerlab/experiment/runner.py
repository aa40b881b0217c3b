"""``steerlab run``: from a labelled multiple-choice dataset to a tested steering vector, with no human choice.

For each seed: shuffle every item's choices (per item), split train / val / test, score the unsteered model on all
three, build each method's vector from the training answers, sweep layer x strength on validation with each
strength's negation beside it (then the other positions at the chosen layer), choose a point, and test it against
the unsteered model, the negated vector and K random directions of the same norm at the same point (extra rows of
one replay batch), in-context learning, and in-context learning plus steering. Every finished piece is kept under
``out/.steerlab-cache`` under a key that holds everything it depends on, so a killed run resumes and a changed
setting, model, tokenizer or steerlab version never reuses stale work.

Selection (``RunConfig.select``, see :mod:`steerlab.experiment.selection`): ``directional`` maximises half the gap
between ``+s`` and ``-s`` on validation among points where ``+s`` does not lower accuracy; ``accuracy`` maximises
validation accuracy. The method reported on top is the single-layer one with the best mean selection score (ties:
the order given). With ``max_layers > 1`` each method's single-layer point is also grown greedily into a layer set
(each layer its own vector, one shared strength), tested with the same controls and reported beside it as
``<method>+layers``.

Example::

    from steerlab import load_model, load_task
    from steerlab.experiment.config import RunConfig
    from steerlab.experiment.runner import run_task
    model, tok = load_model()
    result = run_task(model, tok, load_task("caa/survival-instinct"), RunConfig(n_val=16, n_test=32))
    print(result.report.chosen.verdict, result.report.chosen.directional_gain)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab._version import __version__
from steerlab.core.positions import Positions
from steerlab.core.recipe import Recipe
from steerlab.core.vector import SteeringVector
from steerlab.data.items import MCItem, Splits, shuffle_choices, split_items
from steerlab.data.prompts import PromptStyle
from steerlab.errors import ConfigError
from steerlab.experiment.compare import PasOnTop, SeedSplit, SFTArtifacts, compare_sft
from steerlab.experiment.config import RunConfig, default_sweep_layers
from steerlab.experiment.results import MethodResult, RunReport, SeedOutcome, SweepCell, verdict
from steerlab.experiment.retention import Retention, measure_retention, retention_items
from steerlab.experiment.retention import summarise as summarise_retention
from steerlab.experiment.selection import choose, grow_layer_set
from steerlab.experiment.stats import (
    constant_letter,
    correctness,
    letter_counts,
    mean,
    paired_bootstrap,
    rank_p_value,
    shortest_answer,
)
from steerlab.experiment.store import Store, fingerprint
from steerlab.finetune.lora import LoraSettings
from steerlab.methods.pas import TaskFormat, build_vector, icl_history, method_problem, scored_item, vector_problem
from steerlab.models import num_layers
from steerlab.models.identity import model_identity
from steerlab.progress import OVERALL, Progress, silent
from steerlab.runtime.scoring import letter_token_ids
from steerlab.runtime.sweep import ScoredItem, Scorer, score_push_sets, score_pushes
from steerlab.runtime.sweep import predictions as argmax_choices

SWEEP_BLOCK = 16  # validation items per stored sweep entry: the unit a resumed run does not redo
LETTERS_AGREEMENT = 0.6
CHECK_ITEMS = 24  # training items asked in both choice orders to decide the scoring
LAYER_SET_SUFFIX = "+layers"  # the report's name of a method's multi-layer result


def _constants() -> dict[str, Any]:
    # Read at call time, so a changed constant changes every key.
    return {"SWEEP_BLOCK": SWEEP_BLOCK, "LETTERS_AGREEMENT": LETTERS_AGREEMENT, "CHECK_ITEMS": CHECK_ITEMS}


def _accuracy(scores: Sequence[Sequence[float]], items: Sequence[MCItem]) -> float:
    return mean(correctness(argmax_choices(scores), items))


def in_unit(vector: SteeringVector, unit: str) -> SteeringVector:
    """The vector whose strength 1 is one unit: for ``relative``, each layer rescaled to its mean residual norm."""
    if unit == "absolute":
        return vector
    norms = vector.metadata.get("residual_norms")
    if not isinstance(norms, dict):
        raise ConfigError("relative strengths need the vector's 'residual_norms' (vectors built by steerlab run)")
    layers = {layer: t / t.norm() * float(norms[str(layer)]) for layer, t in vector.layers.items()}
    return SteeringVector(layers, {**vector.metadata, "normalized": False})


def random_directions(count: int, like: torch.Tensor, seed: int) -> torch.Tensor:
    """``count`` Gaussian directions, each with the norm of ``like``; the same ``seed`` gives the same rows."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(count, like.numel(), generator=generator, dtype=torch.float64)
    return (rows / rows.norm(dim=1, keepdim=True) * like.double().norm()).to(like.dtype)


@dataclass
class _Seed:
    seed: int
    splits: Splits
    baseline: dict[str, list[list[float]]]
    train_predicted: list[int]
    history: list[tuple[str, str]]
    icl: list[float]

    @property
    def test_baseline(self) -> list[float]:
        return correctness(argmax_choices(self.baseline["test"]), self.splits.test)


@dataclass
class _Chosen:
    outcome: SeedOutcome
    cell: SweepCell
    vector: SteeringVector  # in the run's unit, every swept layer
    cells: list[SweepCell]
    score: float


class _Runner:
    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, items: Sequence[MCItem],
                 config: RunConfig, store: Store, progress: Progress) -> None:
        if not items:
            raise ConfigError("no items to run on")
        self.model, self.tokenizer, self.items, self.config = model, tokenizer, items, config
        self.store, self.progress = store, progress
        self.depth = num_layers(model)
        self.layers = list(config.layers or default_sweep_layers(self.depth))
        bad = [layer for layer in self.layers if not 0 <= layer < self.depth]
        if bad:
            raise ConfigError(f"layer(s) {bad} out of range: the model has layers 0..{self.depth - 1}")
        width = max(len(i.choices) for i in items)
        self.letter_ids = tuple(tuple(ids) for ids in letter_token_ids(tokenizer, [chr(65 + k) for k in range(width)]))
        self.identity = model_identity(model, tokenizer)
        self.base_key = fingerprint(__version__, self.identity, _constants(),
                                    [astuple(i) for i in items],  # every field: groups steer the splits
                                    config.pas_settings)
        self.timings: dict[str, float] = {}

    def key(self, *parts: Any) -> str:
        return fingerprint(self.base_key, *parts)

    def method_key(self, seed: int, method: str, *parts: Any) -> str:
        """The key of a piece that depends on the vector: the ablation settings are part of it."""
        return self.key(seed, method, self.config.vector_settings, *parts)

    def time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds

    def fmt(self, scoring: str, positions: Positions = "answer") -> TaskFormat:
        c = self.config
        return TaskFormat(scoring="letters" if scoring == "letters" else "likelihood",
                          style=PromptStyle(chat=c.chat), length_normalize=c.length_normalize, positions=positions)

    def scorer(self, fmt: TaskFormat) -> Scorer:
        return Scorer(self.letter_ids if fmt.scoring == "letters" else None, fmt.length_normalize)

    def scored(self, items: Sequence[MCItem], fmt: TaskFormat,
               history: Sequence[tuple[str, str]] = ()) -> list[ScoredItem]:
        return [scored_item(self.tokenizer, item, fmt, history) for item in items]

    def baseline(self, items: Sequence[MCItem], fmt: TaskFormat, what: str,
                 history: Sequence[tuple[str, str]] = ()) -> list[list[float]]:
        return score_pushes(self.model, self.scored(items, fmt, history), self.scorer(fmt), {},
                            batch_size=self.config.batch_size, progress=self.progress, what=what).baseline

    def pushed(self, items: Sequence[MCItem], fmt: TaskFormat, layer: int, pushes: torch.Tensor, what: str,
               history: Sequence[tuple[str, str]] = ()) -> list[list[int]]:
        """Predicted choices under each row of ``pushes`` added at ``layer``."""
        result = score_pushes(self.model, self.scored(items, fmt, history), self.scorer(fmt), {layer: pushes},
                              batch_size=self.config.batch_size, progress=self.progress, what=what,
                              target=self.config.steer_target)
        return [argmax_choices(scores) for scores in result.steered[layer]]

    def splits(self, seed: int) -> Splits:
        shuffled = [shuffle_choices(item, seed) for item in self.items]
        c = self.config
        n_test = len(shuffled) - c.n_train - c.n_val if c.n_test is None else c.n_test
        if n_test < 1:
            raise ConfigError(f"--n-test all: {len(shuffled)} items leave none for testing after {c.n_train} "
                              f"training and {c.n_val} validation items")
        return split_items(shuffled, c.n_train, c.n_val, n_test, seed)

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

    def prepare_seed(self, seed: int, fmt: TaskFormat) -> _Seed:
        splits = self.splits(seed)
        base: dict[str, list[list[float]]] = {}
        for name in ("train", "val", "test"):
            items = getattr(splits, name)
            base[name], seconds = self.store.json(
                self.key(seed, "baseline", name), partial(self.baseline, items, fmt, f"seed {seed}: unsteered {name}"))
            self.time("val_unsteered_pass" if name == "val" else "baseline", seconds)
        train_pred = argmax_choices(base["train"])
        wrong = [i for i, p in zip(splits.train, train_pred, strict=True) if p != i.answer]
        right = [i for i, p in zip(splits.train, train_pred, strict=True) if p == i.answer]
        shots = random.Random(seed).sample(wrong, min(len(wrong), self.config.icl_k))
        shots += random.Random(seed).sample(right, min(len(right), self.config.icl_k - len(shots)))
        history = icl_history(shots, fmt)
        icl_scores, seconds = self.store.json(self.key(seed, "icl"), lambda: self.baseline(
            splits.test, fmt, f"seed {seed}: ICL test", history))
        self.time("controls", seconds)
        return _Seed(seed, splits, base, train_pred, history, correctness(argmax_choices(icl_scores), splits.test))

    def sweep(self, row: _Seed, method: str, vector: SteeringVector, scoring: str,
              val_baseline: float) -> list[SweepCell]:
        """Validation accuracy at (+s, -s) over the grid: the first positions at every layer, the other positions at
        the layer the first one chose (a coordinate search: positions rarely move the best layer, and the full grid
        would cost a sweep per positions)."""
        c = self.config
        searched = c.positions_grid(scoring)
        cells = self.sweep_sets(row, method, vector, scoring, searched[0], [(layer,) for layer in self.layers])
        if len(searched) > 1:
            layer = choose(cells, val_baseline, c.select, searched)[0].layer
            for positions in searched[1:]:
                cells += self.sweep_sets(row, method, vector, scoring, positions, [(layer,)])
        return cells

    def sweep_sets(self, row: _Seed, method: str, vector: SteeringVector, scoring: str, positions: Positions,
                   sets: Sequence[tuple[int, ...]]) -> list[SweepCell]:
        """Validation cells of each layer set (a single layer, or an anchor layer and the layers added to it) at
        every strength of the grid and its negation, all layers of a set steered at once."""
        val = row.splits.val
        strengths = list(self.config.strength_grid)
        signs = torch.tensor([*strengths, *(-s for s in strengths)], dtype=torch.float32)[:, None]
        fmt = self.fmt(scoring, positions)
        correct: dict[tuple[tuple[int, ...], int], list[float]] = {}
        scored = self.scored(val, fmt)
        for start in range(0, len(val), SWEEP_BLOCK):
            block = scored[start:start + SWEEP_BLOCK]

            def compute(block: list[ScoredItem] = block) -> list[list[Any]]:
                pushes = {tuple(sorted(s)): {layer: signs * vector.layers[layer] for layer in s} for s in sets}
                result = score_push_sets(self.model, block, self.scorer(fmt), pushes,
                                         batch_size=self.config.batch_size, target=self.config.steer_target)
                return [[list(s), k, argmax_choices(scores)] for s in sets
                        for k, scores in enumerate(result.steered[tuple(sorted(s))])]

            entries, seconds = self.store.json(
                self.method_key(row.seed, method, "sweep", positions, [list(s) for s in sets], start), compute)
            self.time("sweep", seconds)
            for layers, k, predicted in entries:
                if len(predicted) != len(block):
                    raise ConfigError(f"stored sweep entry for items {start}.. has {len(predicted)} items, "
                                      f"expected {len(block)}")
                correct.setdefault((tuple(layers), k), []).extend(
                    correctness(predicted, val[start:start + len(block)]))
            self.progress(min(start + SWEEP_BLOCK, len(val)), len(val),
                          f"seed {row.seed} {method}: sweep ({positions}" + (
                              f", {len(sets[0])} layers)" if len(sets[0]) > 1 else ")"))
        n = len(strengths)
        return [SweepCell(positions, s[0], strengths[k], mean(correct[(s, k)]), mean(correct[(s, k + n)]),
                          added_layers=s[1:]) for s in map(tuple, sets) for k in range(n)]

    def test_point(self, row: _Seed, method: str, vector: SteeringVector, cell: SweepCell,
                   scoring: str) -> list[list[int]]:
        """Test predictions under +s v, -s v and K random directions of the same norm, at the chosen point.

        At a layer set, random draw k is a random direction at every layer of the set, each of that layer's norm."""
        pushes: dict[int, torch.Tensor] = {}
        for layer in cell.layers:
            direction = vector.layers[layer]
            seed = int(fingerprint(row.seed, method, layer, "random")[:8], 16)
            pushes[layer] = torch.cat([direction[None], -direction[None],
                                       random_directions(self.config.random_directions, direction, seed)
                                       ]) * cell.strength
        key = tuple(sorted(cell.layers))
        fmt = self.fmt(scoring, cell.positions)
        result = score_push_sets(self.model, self.scored(row.splits.test, fmt), self.scorer(fmt), {key: pushes},
                                 batch_size=self.config.batch_size, progress=self.progress,
                                 what=f"seed {row.seed} {method}: test, vector and {self.config.random_directions} "
                                      "random", target=self.config.steer_target)
        return [argmax_choices(scores) for scores in result.steered[key]]

    def vector_train(self, row: _Seed) -> tuple[list[MCItem], list[int]]:
        """The training items vectors are built from, with the unsteered predictions on them."""
        used = self.config.vector_items or len(row.splits.train)
        return list(row.splits.train[:used]), row.train_predicted[:used]

    def method_vector(self, row: _Seed, method: str, scoring: str) -> SteeringVector:
        """The seed's ``method`` vector as built (raw units), from the store when it was built before."""
        fmt = self.fmt(scoring)
        raw, seconds = self.store.vector(self.method_key(row.seed, method, "vector"), partial(
            build_vector, self.model, self.tokenizer, method, *self.vector_train(row), self.layers,
            style=fmt.style, scoring=fmt.scoring, batch_size=2 * self.config.batch_size, progress=self.progress,
            target=self.config.steer_target))
        self.time("vectors", seconds)
        return raw

    def usable_vector(self, row: _Seed, method: str, scoring: str) -> SteeringVector | str:
        """The seed's raw ``method`` vector, or why the method cannot run on this seed."""
        problem = method_problem(method, *self.vector_train(row))
        if problem:
            return problem
        raw = self.method_vector(row, method, scoring)
        return vector_problem(method, raw) or raw

    def run_method(self, row: _Seed, method: str, raw: SteeringVector, scoring: str) -> _Chosen:
        vector = in_unit(raw, self.config.unit)
        val_baseline = _accuracy(row.baseline["val"], row.splits.val)
        cells = self.sweep(row, method, vector, scoring, val_baseline)
        cell, score = choose(cells, val_baseline, self.config.select, self.config.positions_grid(scoring))
        return self.tested(row, method, vector, cell, cells, score, scoring, val_baseline)

    def tested(self, row: _Seed, method: str, vector: SteeringVector, cell: SweepCell, cells: list[SweepCell],
               score: float, scoring: str, val_baseline: float) -> _Chosen:
        predicted, seconds = self.store.json(
            self.method_key(row.seed, method, "test", cell.positions, list(cell.layers), cell.strength),
            partial(self.test_point, row, method, vector, cell, scoring))
        self.time("test", seconds)
        test = row.splits.test
        arms = [correctness(p, test) for p in predicted]
        random_acc = [mean(a) for a in arms[2:]]
        rank, p_value = rank_p_value(mean(arms[0]), random_acc)
        added = float(torch.stack([vector.layers[layer] for layer in cell.layers]).norm()) * abs(cell.strength)
        outcome = SeedOutcome(
            seed=row.seed, positions=cell.positions, layer=cell.layer, strength=cell.strength, added_norm=added,
            val_baseline=val_baseline, val_accuracy=cell.val_accuracy, val_negated=cell.negated_val_accuracy,
            test_ids=[i.id for i in test], baseline=row.test_baseline, steered=arms[0], negated=arms[1],
            random=arms[2:], rank=rank, p_value=p_value, added_layers=cell.added_layers)
        return _Chosen(outcome, cell, vector, cells, score)

    def run_layer_set(self, row: _Seed, method: str, single: _Chosen, scoring: str) -> _Chosen:
        """The single-layer point grown greedily into a layer set (see :func:`grow_layer_set`), then tested."""
        val_baseline = single.outcome.val_baseline

        def evaluate(current: tuple[int, ...], new: Sequence[int]) -> list[SweepCell]:
            return self.sweep_sets(row, method, single.vector, scoring, single.cell.positions,
                                   [(*current, layer) for layer in new])

        cell, evaluated = grow_layer_set(single.cell, self.layers, evaluate, val_baseline, self.config.select,
                                         self.config.max_layers)
        score = cell.val_accuracy if self.config.select == "accuracy" else cell.gain
        return self.tested(row, method, single.vector, cell, evaluated, score, scoring, val_baseline)

    def icl_steering(self, row: _Seed, method: str, chosen: _Chosen, scoring: str) -> list[float]:
        o = chosen.outcome
        fmt = self.fmt(scoring, chosen.cell.positions)
        predicted, seconds = self.store.json(
            self.method_key(row.seed, method, "icl-steering", o.positions, o.layer, o.strength),
            partial(self.pushed, row.splits.test, fmt, o.layer, chosen.vector.layers[o.layer][None] * o.strength,
                    f"seed {row.seed} {method}: ICL + steering", row.history))
        self.time("controls", seconds)
        return correctness(predicted[0], row.splits.test)

    def run(self) -> RunResult:
        c = self.config
        seeds = [c.seed + k for k in range(c.seeds)]
        if c.scoring == "auto":
            check, seconds = self.store.json(self.key("scoring-check"),
                                             lambda: self.scoring_check(self.splits(seeds[0]).train))
            self.time("scoring_check", seconds)
        else:
            check = {"chosen": c.scoring, "reason": "set by --scoring"}
        scoring = check["chosen"]
        fmt = self.fmt(scoring)
        units = len(seeds) * (1 + len(c.methods))  # per seed: its unsteered passes, then each method
        overall = f"{OVERALL}: {len(seeds)} seed(s) x (unsteered passes + {len(c.methods)} method(s))"
        self.progress(0, units, overall)
        rows = []
        for seed in seeds:
            rows.append(self.prepare_seed(seed, fmt))
            self.progress(len(rows), units, overall)
        chosen: dict[str, list[_Chosen]] = {}
        skipped: dict[str, str] = {}
        done = len(rows)
        for row in rows:
            for method in c.methods:
                # A method that cannot run on one seed is left out of the report, so later seeds skip it too.
                built = None if method in skipped else self.usable_vector(row, method, scoring)
                if isinstance(built, str):
                    skipped[method] = f"seed {row.seed}: {built}"
                elif built is not None:
                    single = self.run_method(row, method, built, scoring)
                    chosen.setdefault(method, []).append(single)
                    if c.max_layers > 1:
                        chosen.setdefault(method + LAYER_SET_SUFFIX, []).append(
                            self.run_layer_set(row, method, single, scoring))
                done += 1
                self.progress(done, units, overall)
        ran = [m for m in c.methods if m in chosen and m not in skipped]
        grown = [m + LAYER_SET_SUFFIX for m in ran if m + LAYER_SET_SUFFIX in chosen]
        if not ran:
            reasons = "; ".join(f"{m}: {skipped.get(m, 'did not run')}" for m in c.methods)
            raise ConfigError(f"no method could run on every seed ({reasons})")
        best = max(ran, key=lambda m: (mean([x.score for x in chosen[m]]), -c.methods.index(m)))
        results = {m: self.summarise(m, chosen[m]) for m in ran}
        for name in grown:
            results[name] = replace(self.summarise(name, chosen[name]), multi_layer=True)
        icl_steered = [self.icl_steering(row, best, x, scoring) for row, x in zip(rows, chosen[best], strict=True)]
        results[best] = replace(results[best], icl_steering=paired_bootstrap(
            [[a - b for a, b in zip(s, row.test_baseline, strict=True)] for s, row in zip(icl_steered, rows,
                                                                                          strict=True)]),
            icl_steering_accuracy=mean([mean(s) for s in icl_steered]))
        vectors = {m: self.exported(chosen[m][0]) for m in [*ran, *grown]}
        retention = self.retention(vectors[best], scoring) if c.retain is not None else None
        report = self.report(check, scoring, rows, results, skipped, best)
        report.retention = retention
        sft = self.compare_sft(rows, report, vectors[best]) if c.compare_sft else None
        report.sft = None if sft is None else sft.comparison
        return RunResult(report, vectors, sft)

    def compare_sft(self, rows: list[_Seed], report: RunReport, vector: SteeringVector) -> SFTArtifacts:
        """LoRA on each seed's splits, and PAS again on the fine-tuned model (:mod:`steerlab.experiment.compare`)."""
        c = self.config
        settings = LoraSettings(batch_size=c.batch_size)
        pas_config = replace(c, methods=(report.method,), scoring=report.scoring, max_layers=1, seeds=1,  # type: ignore[arg-type]
                             retain=None, compare_sft=False)

        def pas_on(tuned: nn.Module, seed: int) -> PasOnTop:
            result = _Runner(tuned, self.tokenizer, self.items, replace(pas_config, seed=seed), self.store,
                             self.progress).run()
            top = result.report.chosen
            o = top.seeds[0]
            return PasOnTop(list(o.test_ids), list(o.steered), result.vectors[report.method], {
                "method": report.method, "verdict": top.verdict, "layers": list(o.layers), "strength": o.strength,
                "positions": o.positions, "delta_vs_lora": asdict(top.delta)}, _pas_seconds(result.report))

        def adapter_dir(seed: int) -> Path | None:
            folder = self.store.folder
            return None if folder is None else folder / f"{self.key(seed, 'lora', asdict(settings))}.adapter"

        return compare_sft(self.model, self.tokenizer, [SeedSplit(r.seed, r.splits, r.test_baseline) for r in rows],
                           self.fmt(report.scoring), [list(o.steered) for o in report.chosen.seeds],
                           _pas_seconds(report), vector, pas_on,
                           settings=settings, adapter_dir=adapter_dir, batch_size=c.batch_size,
                           progress=self.progress)

    def retention(self, vector: SteeringVector, scoring: str) -> Retention:
        """The chosen vector on ``--retain``'s task and on neutral text (see :mod:`steerlab.experiment.retention`)."""
        c = self.config
        assert c.retain is not None and vector.recipe is not None
        items = retention_items(c.retain, c.retain_n, c.seed)
        raw, seconds = self.store.json(
            self.key("retention", c.retain, c.retain_n, vector.recipe.to_dict(),
                     {layer: t.tolist() for layer, t in vector.layers.items()}),  # --vector-items changes only these
            partial(measure_retention, self.model, self.tokenizer, vector, items, self.fmt(scoring),
                    batch_size=c.batch_size, progress=self.progress))
        self.time("retention", seconds)
        return summarise_retention(c.retain, raw)

    def summarise(self, method: str, runs: list[_Chosen]) -> MethodResult:
        outcomes = [r.outcome for r in runs]

        def diffs(a: str, b: str | None = None) -> list[list[float]]:
            def arm(o: SeedOutcome, name: str) -> list[float]:
                return o.random_mean if name == "random" else list(getattr(o, name))
            return [[x - y for x, y in zip(arm(o, a), arm(o, b or "baseline"), strict=True)] for o in outcomes]

        delta, gain = paired_bootstrap(diffs("steered")), paired_bootstrap(diffs("steered", "random"))
        pooled_random = [mean([mean(o.random[k]) for o in outcomes]) for k in range(self.config.random_directions)]
        rank, p_value = rank_p_value(mean([mean(o.steered) for o in outcomes]), pooled_random)
        return MethodResult(
            method=method, seeds=outcomes, delta=delta, directional_gain=gain,
            negated_delta=paired_bootstrap(diffs("negated")), random_delta=paired_bootstrap(diffs("random")),
            rank=rank, p_value=p_value, random_directions=self.config.random_directions,
            verdict=verdict(delta, gain), selection_score=mean([r.score for r in runs]), sweep=runs[0].cells)

    def exported(self, run: _Chosen) -> SteeringVector:
        o = run.outcome
        recipe = Recipe(o.layers, o.strength, self.config.unit, run.cell.positions, self.config.steer_target)
        vector = run.vector.with_recipe(recipe)
        return SteeringVector(vector.layers, {**vector.metadata, "task": self.config.task, "seed": o.seed,
                                              "selected_by": self.config.select})

    def report(self, check: dict[str, Any], scoring: str, rows: list[_Seed], results: dict[str, MethodResult],
               skipped: dict[str, str], best: str) -> RunReport:
        c = self.config
        # Every seed's test split, pooled (equal sizes): the controls match the seed-averaged accuracies above them.
        tests = [item for r in rows for item in r.splits.test]
        icl = paired_bootstrap([[a - b for a, b in zip(r.icl, r.test_baseline, strict=True)] for r in rows])
        controls: dict[str, Any] = {
            "constant_letter": constant_letter(tests),
            "icl": {"k": c.icl_k, "test_accuracy": mean([mean(r.icl) for r in rows]), **asdict(icl)},
        }
        if scoring == "likelihood":
            scored = self.scored(tests, self.fmt(scoring))
            lengths = [[len(chunk) - 1 - start for chunk, start in zip(s.chunks, s.score_from, strict=True)]
                       for s in scored]
            controls["shortest_answer"] = shortest_answer(lengths, tests)
        width = max(len(i.choices) for i in tests)
        predicted = [k for r in rows for k in argmax_choices(r.baseline["test"])]
        letters = {"correct": letter_counts([i.answer for i in tests], width),
                   "predicted_baseline": letter_counts(predicted, width)}
        # Phase times are stored with their results, so a resumed run reports the same numbers.
        self.timings["total"] = sum(self.timings.values())
        return RunReport(
            steerlab_version=__version__, model=self.identity, task=c.task,
            config={**asdict(c), "strength_grid": list(c.strength_grid), "layers": self.layers},
            scoring=scoring, scoring_check=check, unit=c.unit, method=best, methods=results, skipped=skipped,
            controls=controls, letters=letters,
            grid={"positions": list(c.positions_grid(scoring)), "layers": self.layers,
                  "strengths": list(c.strength_grid)},
            timings=dict(self.timings))


def _pas_seconds(report: RunReport) -> float:
    """What PAS itself took: every phase but retention (and the total)."""
    return sum(v for k, v in report.timings.items() if k not in ("total", "retention"))


@dataclass
class RunResult:
    report: RunReport
    vectors: dict[str, SteeringVector]  # each method's vector at its chosen layer, its recipe in the metadata
    sft: SFTArtifacts | None = None  # with compare_sft: the first seed's LoRA adapter and PAS-on-LoRA vector


def run_task(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[MCItem],
    config: RunConfig,
    *,
    out_dir: str | Path | None = None,
    progress: Progress = silent,
) -> RunResult:
    """Run PAS on ``items``: the typed report, and each method's vector with its recipe (from the first seed).

    With ``out_dir``, finished pieces are kept in ``out_dir/.steerlab-cache`` and reused by a later identical run.
    """
    store = Store(None if out_dir is None else Path(out_dir) / ".steerlab-cache")
    return _Runner(model, tokenizer, items, config, store, progress).run()
