"""Evaluating prompt steering replacement against prompting and the constant vector, at matched coherence.

The prompts come split (:func:`steerlab.psr.data.split_prompts`): the strength alpha of each steering method is
chosen on the validation prompts, and every reported number is measured on the test prompts, at that alpha
(prompting has no knob, so choosing alpha on the reported prompts would favour steering). Steering trained on
any validation or test prompt is refused.

Every method answers without the instruction (prompting answers with it). A response *follows* when its
instruction check passes (:mod:`steerlab.psr.checks`) and is *coherent* when its perplexity under the unsteered
model, given the prompt WITH the instruction (so that, say, French is not penalised for being French), is at
most ``ppl_max`` and its 3-gram repetition rate at most ``rep_max``. Alpha is searched over a grid, extended
while still coherent, then refined by bisection at the edge of the coherence target; the chosen alpha is the
best-scoring one whose coherent share on validation is at or above the target. Rates on test come with 95%
Wilson intervals. Example::

    from steerlab import load_model
    from steerlab.files import load_steering
    from steerlab.psr.checks import resolve_instruction
    from steerlab.psr.data import load_prompts, split_prompts
    from steerlab.psr.evaluate import evaluate, write_report
    model, tok = load_model()
    split = split_prompts(load_prompts(), seed=0)
    report = evaluate(model, tok, resolve_instruction("french"), split,
                      {"s-psr": load_steering("french.safetensors")})
    write_report(report, "french-report")
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.hooks import SteeringSource, steer
from steerlab.core.vector import atomic_output
from steerlab.errors import ConfigError
from steerlab.models import model_name
from steerlab.progress import Progress, silent
from steerlab.psr.checks import Instruction, follows, perplexities, repetition_rate
from steerlab.psr.data import Item, PromptSplit, decode, generate_ids, prompt_digest, record, render_ids
from steerlab.psr.model import PSR_KINDS, PSRModel

DEFAULT_ALPHAS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Screening for the PSR table: prompting must raise the validation follow rate by this much over the unsteered
# model for there to be something to imitate.
DEFAULT_MIN_GAIN = 0.25
_Z95 = statistics.NormalDist().inv_cdf(0.975)


@dataclass(frozen=True)
class EvalSettings:
    """How responses are produced and judged, and how alpha is searched."""

    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    refine: int = 2
    extend: int = 4  # doublings past the grid while the largest alpha is still coherent
    coherence_target: float = 0.8
    ppl_max: float = 10.0
    rep_max: float = 0.3
    max_new_tokens: int = 48
    batch_size: int = 16


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate ``successes / n`` (well-behaved at 0 and n, unlike Wald's).

    Example::

        low, high = wilson(0, 64)
        assert low == 0.0 and 0.05 < high < 0.06
    """
    if n < 1:
        raise ConfigError(f"an interval needs at least one trial, got n={n}")
    rate, z2 = successes / n, _Z95**2
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Point:
    """One method at one alpha (None for prompting and the unsteered model) on one slice of prompts.

    ``follows`` and ``coherent`` hold the per-prompt outcomes, in prompt order, for paired comparisons.
    """

    alpha: float | None
    n: int
    score: float
    score_ci95: tuple[float, float]
    coherence: float
    score_and_coherent: float
    score_and_coherent_ci95: tuple[float, float]
    median_ppl: float
    mean_repetition: float
    follows: list[bool]
    coherent: list[bool]
    examples: list[dict[str, Any]]


def evaluate_point(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instruction: Instruction,
    prompts: Sequence[str],
    steering: SteeringSource | None = None,
    alpha: float = 1.0,
    *,
    prompted: bool = False,
    settings: EvalSettings = EvalSettings(),
) -> Point:
    """Answer ``prompts`` with the instruction in the prompt (``prompted``) or without it, steered or not.

    The returned point's alpha is None unless ``steering`` is given.
    """
    if prompted and steering is not None:
        raise ConfigError("evaluate prompting or steering, not both at once")
    if not prompts:
        raise ConfigError("no prompts to evaluate on")
    with_instruction = [render_ids(tokenizer, p, instruction.text) for p in prompts]
    inputs = with_instruction if prompted else [render_ids(tokenizer, p, None) for p in prompts]
    responses: list[list[int]] = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = inputs[start : start + settings.batch_size]
        if steering is None:
            responses += generate_ids(model, tokenizer, batch, settings.max_new_tokens)
        else:
            with steer(model, steering, alpha):
                responses += generate_ids(model, tokenizer, batch, settings.max_new_tokens)
    texts = [decode(tokenizer, r) for r in responses]
    ok = follows(instruction.check, texts)
    ppl = perplexities(
        model,
        with_instruction,
        responses,
        pad=int(tokenizer.pad_token_id or 0),
        batch_size=settings.batch_size,
    )
    reps = [repetition_rate(r) for r in responses]
    coherent = [p <= settings.ppl_max and r <= settings.rep_max for p, r in zip(ppl, reps, strict=True)]
    both = [a and b for a, b in zip(ok, coherent, strict=True)]
    n = len(prompts)
    examples = [
        {"prompt": prompts[i], "response": texts[i], "follows": ok[i], "ppl": ppl[i], "repetition": reps[i]}
        for i in range(min(4, n))
    ]
    return Point(
        alpha=None if steering is None else alpha,
        n=n,
        score=sum(ok) / n,
        score_ci95=wilson(sum(ok), n),
        coherence=sum(coherent) / n,
        score_and_coherent=sum(both) / n,
        score_and_coherent_ci95=wilson(sum(both), n),
        median_ppl=statistics.median(ppl),
        mean_repetition=sum(reps) / n,
        follows=ok,
        coherent=coherent,
        examples=examples,
    )


def search_alpha(
    measure: Callable[[float], Point],
    settings: EvalSettings = EvalSettings(),
    progress: Progress = silent,
    what: str = "alpha search",
) -> tuple[list[Point], Point | None]:
    """The score-vs-alpha curve of ``measure`` and the chosen point (None when no alpha meets the target).

    ``measure(alpha)`` evaluates one alpha (on the validation prompts, in :func:`evaluate`). While the largest
    alpha tried still meets the coherence target it is doubled (at most ``settings.extend`` times): a method
    must be compared where it starts to cost coherence, not where the grid happened to end. Then
    ``settings.refine`` bisection steps narrow the gap between the largest alpha that meets the target and the
    next one that does not. The chosen point has the best score among those meeting the target (ties: the
    higher coherent share, then the smaller alpha).
    """
    if not settings.alphas:
        raise ConfigError("the alpha grid is empty")
    target = settings.coherence_target
    total = len(settings.alphas) + settings.extend + settings.refine
    points: dict[float, Point] = {}

    def run(alpha: float) -> Point:
        points[alpha] = measure(alpha)
        progress(len(points), total, what)
        return points[alpha]

    for alpha in sorted(set(settings.alphas)):
        run(alpha)
    for _ in range(settings.extend):
        top = max(points)
        if points[top].coherence < target:
            break
        run(2 * top)
    passing = [a for a, p in points.items() if p.coherence >= target]
    if passing:
        low = max(passing)
        above = [a for a, p in points.items() if a > low and p.coherence < target]
        if above:
            high = min(above)
            for _ in range(settings.refine):
                middle = (low + high) / 2
                if run(middle).coherence >= target:
                    low = middle
                else:
                    high = middle
    progress(total, total, what)
    curve = [points[a] for a in sorted(points)]
    meeting = [p for p in curve if p.coherence >= target]
    chosen = max(meeting, key=lambda p: (p.score, p.coherence, -(p.alpha or 0.0))) if meeting else None
    return curve, chosen


def _training(steering: SteeringSource) -> dict[str, Any]:
    """The ``training`` record a PSR file's metadata carries (empty for anything else)."""
    training = (getattr(steering, "metadata", None) or {}).get("training")
    return training if isinstance(training, dict) else {}


def _refuse_seen(methods: Mapping[str, SteeringSource], split: PromptSplit) -> None:
    """Raise ConfigError if a method's file lists a validation or test prompt among its training prompts."""
    held_out = {prompt_digest(p): p for p in [*split.validation, *split.test]}
    for name, steering in methods.items():
        seen = [held_out[d] for d in _training(steering).get("prompt_sha256", []) if d in held_out]
        if seen:
            raise ConfigError(
                f"steering {name!r} was trained on {len(seen)} of the validation and test prompts (e.g. "
                f"{seen[0]!r}): split the prompts for evaluation as for training (same prompts, seed and slice "
                "sizes, or smaller validation and test slices)"
            )


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instruction: Instruction,
    split: PromptSplit,
    methods: Mapping[str, SteeringSource],
    settings: EvalSettings = EvalSettings(),
    progress: Progress = silent,
) -> dict[str, Any]:
    """Prompting, the unsteered model and each steering method side by side, as a JSON-ready dict.

    Prompting and the unsteered model are measured on both slices; each method's alpha is searched on
    ``split.validation`` only, and the method is then measured once on ``split.test``, at that alpha. With no
    methods the report holds the two baselines (enough to see whether the model follows the instruction).
    """
    if not split.validation or not split.test:
        raise ConfigError(
            f"the split of {split.source} has {len(split.validation)} validation and {len(split.test)} test "
            "prompts; both need at least one"
        )
    _refuse_seen(methods, split)
    slices = {"validation": split.validation, "test": split.test}
    baselines = {
        name: {
            part: asdict(
                evaluate_point(model, tokenizer, instruction, prompts, prompted=prompted, settings=settings)
            )
            for part, prompts in slices.items()
        }
        for name, prompted in (("prompting", True), ("unsteered", False))
    }
    report: dict[str, Any] = {
        "model": model_name(model),
        "instruction": asdict(instruction),
        "split": split.summary(),
        "validation_prompts": list(split.validation),
        "test_prompts": list(split.test),
        "settings": asdict(settings),
        "baselines": baselines,
        "methods": {},
    }
    for name, steering in methods.items():

        def measure(alpha: float, steering: SteeringSource = steering) -> Point:
            return evaluate_point(
                model, tokenizer, instruction, split.validation, steering, alpha, settings=settings
            )

        curve, chosen = search_alpha(measure, settings, progress, f"alpha search: {name}")
        tested = None
        if chosen is not None and chosen.alpha is not None:
            tested = evaluate_point(
                model, tokenizer, instruction, split.test, steering, chosen.alpha, settings=settings
            )
        report["methods"][name] = {
            "curve": [asdict(p) for p in curve],
            "chosen_alpha": None if chosen is None else chosen.alpha,
            "validation": None if chosen is None else asdict(chosen),
            "test": None if tested is None else asdict(tested),
            "trained_items": _training(steering).get("items"),
        }
    return report


def prompting_gain(report: Mapping[str, Any]) -> float:
    """How much prompting raises the follow rate over the unsteered model on the validation prompts."""
    baselines = report["baselines"]
    return float(baselines["prompting"]["validation"]["score"] - baselines["unsteered"]["validation"]["score"])


# The fields of a point that a summary row keeps (the per-prompt outcomes and examples stay in the report).
_ROW_KEYS: tuple[str, ...] = (
    "alpha",
    "n",
    "score",
    "score_ci95",
    "coherence",
    "score_and_coherent",
    "score_and_coherent_ci95",
    "median_ppl",
    "mean_repetition",
)


def summary_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per method on the test prompts (steering at its validation-chosen alpha); "-" rows (None values)
    for a method where no alpha met the coherence target."""
    rows = [{"method": name, **{k: v["test"][k] for k in _ROW_KEYS}} for name, v in report["baselines"].items()]
    for name, result in report["methods"].items():
        point = result["test"]
        rows.append({"method": name, **{k: None if point is None else point[k] for k in _ROW_KEYS}})
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


def _rate(value: float | None, interval: Sequence[float] | None) -> str:
    if value is None or interval is None:
        return "-"
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the split, the test table with intervals, the validation curves, examples."""
    settings, split = report["settings"], report["split"]
    lines = [
        f"# PSR evaluation: {report['instruction']['name']}",
        "",
        f'Instruction: "{report["instruction"]["text"]}" (check: {report["instruction"]["check"]["kind"]}); '
        f"model {report['model']}; {settings['max_new_tokens']} new tokens, greedy.",
        "",
        f"Prompts: {split['source']}, split with seed {split['seed']} into {split['train']} training, "
        f"{split['validation']} validation and {split['test']} test prompts. Alpha is chosen on the "
        f"validation prompts; the table is on the {split['test']} test prompts (95% Wilson intervals).",
        "",
        f"Coherent: perplexity under the unsteered model (given the instructed prompt) <= {settings['ppl_max']} "
        f"and 3-gram repetition <= {settings['rep_max']}. Alpha: best validation score with coherent share >= "
        f"{settings['coherence_target']}.",
        "",
        "| method | alpha | follows | coherent | follows and coherent | median ppl | repetition |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary_rows(report):
        lines.append(
            f"| {row['method']} | {_fmt(row['alpha'])} | {_rate(row['score'], row['score_ci95'])} | "
            f"{_fmt(row['coherence'])} | {_rate(row['score_and_coherent'], row['score_and_coherent_ci95'])} | "
            f"{_fmt(row['median_ppl'])} | {_fmt(row['mean_repetition'])} |"
        )
    validation = report["baselines"]
    lines += [
        "",
        f"On the validation prompts: prompting follows {validation['prompting']['validation']['score']:.2f}, "
        f"unsteered {validation['unsteered']['validation']['score']:.2f}.",
    ]
    if report["methods"]:
        lines += ["", "![score vs alpha](score_vs_alpha.png)", "", "## Alpha search on the validation prompts", ""]
        for name, result in report["methods"].items():
            points = ", ".join(
                f"{_fmt(p['alpha'])}: {_fmt(p['score'])}/{_fmt(p['coherence'])}" for p in result["curve"]
            )
            lines.append(f"- {name} (alpha: score/coherent; chosen {_fmt(result['chosen_alpha'])}): {points}")
    lines += ["", "## Examples (test prompts)", ""]
    sources = {
        **{name: point["test"] for name, point in report["baselines"].items()},
        **{name: result["test"] for name, result in report["methods"].items() if result["test"]},
    }
    for name, point in sources.items():
        for example in point["examples"][:2]:
            lines.append(f"- **{name}** ({_cell(example['prompt'])}): {_cell(example['response'])}")
    return "\n".join(lines) + "\n"


def table(reports: Sequence[Mapping[str, Any]], min_gain: float = DEFAULT_MIN_GAIN) -> str:
    """The README's PSR table: one row per report (every candidate instruction), test rates with intervals.

    An instruction is steered only where prompting raises the validation follow rate by at least ``min_gain``
    over the unsteered model (:func:`prompting_gain`); the others keep their row, marked as not steered.
    Steering cells: follow rate [95% interval] / coherent share on test, at the alpha chosen on validation.
    """
    # A column per PSR kind, even where no instruction was steered, then any other method by name.
    others = {name for report in reports for name in report["methods"] if name not in PSR_KINDS}
    names = [*PSR_KINDS, *sorted(others)]
    header = ["instruction", "check", "test prompts", "validation gain", "prompting: follows / coherent",
              "unsteered", *names]
    rows = [header, [":---", ":---"] + ["---:"] * (len(header) - 2)]
    for report in reports:
        baselines = report["baselines"]
        prompting, unsteered = baselines["prompting"]["test"], baselines["unsteered"]["test"]
        gain = prompting_gain(report)
        instruction = report["instruction"]
        row = [
            f'{instruction["name"]} ("{instruction["text"]}")',
            instruction["check"]["kind"],
            str(prompting["n"]),
            f"{gain:+.2f}",
            f"{_rate(prompting['score'], prompting['score_ci95'])} / {prompting['coherence']:.2f}",
            _rate(unsteered["score"], unsteered["score_ci95"]),
        ]
        for name in names:
            result = report["methods"].get(name)
            if gain < min_gain:
                row.append("not steered: not followed")
            elif result is None:
                row.append("-")
            elif result["test"] is None:
                row.append("no alpha met the coherence target")
            else:
                point = result["test"]
                row.append(
                    f"{_rate(point['score'], point['score_ci95'])} / {point['coherence']:.2f} "
                    f"(alpha {point['alpha']:g})"
                )
        rows.append(row)
    return "".join("| " + " | ".join(_cell(c) for c in row) + " |\n" for row in rows)


def _figure_bytes(fig: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    # No creation time or software version in the file: the same report gives the same bytes.
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def plot_curves(report: Mapping[str, Any], path: str | Path) -> None:
    """Validation score and coherent share vs alpha per method; prompting and unsteered as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "score", "instruction following"),
        (axes[1], "coherence", "coherent share"),
    ):
        for name, result in report["methods"].items():
            curve = result["curve"]
            ax.plot([p["alpha"] for p in curve], [p[key] for p in curve], marker="o", label=name)
            if result["validation"] is not None:
                ax.scatter(
                    [result["validation"]["alpha"]],
                    [result["validation"][key]],
                    s=120,
                    facecolors="none",
                    edgecolors="black",
                )
        for name, style in (("prompting", "--"), ("unsteered", ":")):
            ax.axhline(report["baselines"][name]["validation"][key], color="grey", linestyle=style, label=name)
        if key == "coherence":
            ax.axhline(report["settings"]["coherence_target"], color="red", linewidth=0.8, label="target")
        alphas = [p["alpha"] for result in report["methods"].values() for p in result["curve"]]
        if alphas and min(alphas) > 0:  # grids are usually geometric
            ax.set_xscale("log", base=2)
        ax.set_xlabel("alpha")
        ax.set_ylabel(f"{label} (validation)")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['instruction']['name']}: {report['instruction']['text']}")
    fig.tight_layout()
    _write_bytes(Path(path), _figure_bytes(fig))
    plt.close(fig)


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and, when there are methods, ``score_vs_alpha.png`` into
    ``out_dir``; return the paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "report.json", folder / "report.md"]
    _write_bytes(paths[0], (json.dumps(report, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    _write_bytes(paths[1], markdown(report).encode("utf-8"))
    if report["methods"]:
        paths.append(folder / "score_vs_alpha.png")
        plot_curves(report, paths[2])
    return paths


@dataclass(frozen=True)
class _Recorder:
    """Steers like ``psr`` and keeps each token's coefficient (from the stream it saw, steered above)."""

    psr: PSRModel
    seen: dict[int, torch.Tensor]

    @property
    def layer_indices(self) -> list[int]:
        return self.psr.layer_indices

    @property
    def hidden_size(self) -> int:
        return self.psr.hidden_size

    def delta(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        self.seen[layer] = self.psr.coefficients(layer, hidden).detach()
        return self.psr.delta(layer, hidden)


def token_coefficients(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    psr: PSRModel,
    instruction: str,
    prompt: str,
    *,
    max_new_tokens: int = 48,
    alpha: float = 1.0,
) -> dict[str, Any]:
    """Per response token: the PSR coefficient at each layer, and how far the prompt really moves the stream.

    The response is the one the model gives WITH the instruction; it is teacher-forced without it, steered by
    ``psr`` at ``alpha``. ``prompt_effect[layer]`` is the norm of (prompted - plain) activation per token.
    """
    prefix = render_ids(tokenizer, prompt, instruction)
    response = generate_ids(model, tokenizer, [prefix], max_new_tokens)[0]
    if not response:
        raise ConfigError(f"the model gave an empty response to {prompt!r}")
    item = Item(prompt, decode(tokenizer, response), response, prefix, render_ids(tokenizer, prompt, None))
    pad = int(tokenizer.pad_token_id or 0)
    layers = psr.layer_indices
    with_prompt = record(model, [item], layers, prompted=True, pad=pad)
    without = record(model, [item], layers, prompted=False, pad=pad)
    seen: dict[int, torch.Tensor] = {}
    ids = torch.tensor([item.sequence(False)], device=next(model.parameters()).device)
    with torch.no_grad(), steer(model, _Recorder(psr, seen), alpha):
        model(input_ids=ids)
    start = item.start(False)
    # Row j is the position predicting token j, so token j's own coefficient sits one position later.
    span = slice(start + 1, start + 1 + len(response))
    tokens = [tokenizer.decode([t]) for t in response]
    return {
        "prompt": prompt,
        "instruction": instruction,
        "tokens": tokens,
        "alpha": alpha,
        "coefficients": {str(layer): seen[layer][0, span].tolist() for layer in layers},
        "z_norm": {str(layer): float(psr.z[layer].norm()) for layer in layers},
        "prompt_effect": {str(layer): _token_norms(with_prompt[layer], without[layer]) for layer in layers},
    }


def _token_norms(prompted: torch.Tensor, plain: torch.Tensor) -> list[float]:
    # Rows are prediction positions; shifted by one, value j belongs to token j (the last is unknown).
    norms = (prompted - plain).norm(dim=1).tolist()
    return [*norms[1:], float("nan")]


def write_coefficient_view(view: dict[str, Any], png: str | Path, page: str | Path) -> None:
    """A PNG (coefficient per token and layer, and the prompt's real effect) and an HTML page of tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [t.replace("\n", "\\n") for t in view["tokens"]]
    layers = list(view["coefficients"])
    grid = torch.tensor([view["coefficients"][layer] for layer in layers])
    effect = torch.tensor([view["prompt_effect"][layer] for layer in layers])
    fig, axes = plt.subplots(
        2, 1, figsize=(max(8.0, 0.28 * len(tokens)), 2.5 + 0.35 * len(layers) * 2), sharex=True
    )
    for ax, values, title in (
        (axes[0], grid, "PSR coefficient relu(w.h+b)"),
        (axes[1], effect, "prompt effect |h_prompted - h_plain|"),
    ):
        image = ax.imshow(values.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers], fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.02)
    axes[1].set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
    fig.suptitle(f"{view['instruction']} | {view['prompt']}", fontsize=9)
    fig.tight_layout()
    _write_bytes(Path(png), _figure_bytes(fig))
    plt.close(fig)
    rows = []
    for layer in layers:
        values = view["coefficients"][layer]
        top = max(max(values), 1e-9)
        spans = "".join(
            f'<span title="{value:.3f}" style="background: rgba(255, 140, 0, {value / top:.3f})">'
            f"{html.escape(token)}</span>"
            for token, value in zip(view["tokens"], values, strict=True)
        )
        rows.append(
            f"<h3>layer {layer} (|z| = {view['z_norm'][layer]:.3g}, max coefficient {top:.3g})</h3>"
            f'<p class="tokens">{spans}</p>'
        )
    document = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>PSR coefficients</title><style>'
        ".tokens{white-space:pre-wrap;font-family:monospace;line-height:1.8}</style></head><body>"
        f"<h2>{html.escape(view['instruction'])}</h2><p>Prompt: {html.escape(view['prompt'])}</p>"
        "<p>Each token of the instructed response is shaded by the coefficient the PSR model gives it "
        "(hover for the value).</p>" + "".join(rows) + "</body></html>\n"
    )
    _write_bytes(Path(page), document.encode("utf-8"))
