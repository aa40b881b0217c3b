"""Evaluating prompt steering replacement against prompting and the constant vector, at matched coherence.

Every method answers the same held-out prompts without the instruction (prompting answers with it). A response
*follows* when its instruction check passes (:mod:`steerlab.psr.checks`) and is *coherent* when its perplexity
under the unsteered model, given the prompt WITH the instruction (so that, say, French is not penalised for
being French), is at most ``ppl_max`` and its 3-gram repetition rate at most ``rep_max``. For each steering
method the strength alpha is searched over a grid, then refined by bisection at the edge of the coherence
target; the chosen
alpha is the best-scoring one that keeps the coherent share at or above the target. Example::

    from steerlab import load_model
    from steerlab.psr.checks import resolve_instruction
    from steerlab.files import load_steering
    from steerlab.psr.data import load_prompts, split_prompts
    from steerlab.psr.evaluate import evaluate, write_report
    model, tok = load_model()
    held_out = split_prompts(load_prompts(), builtin=True)[1][:32]
    report = evaluate(model, tok, resolve_instruction("french"), held_out,
                      {"s-psr": load_steering("french.safetensors")})
    write_report(report, "french-report")
"""

from __future__ import annotations

import html
import json
import statistics
from collections.abc import Sequence
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
from steerlab.psr.data import Item, decode, generate_ids, record, render_ids
from steerlab.psr.model import PSRModel

DEFAULT_ALPHAS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


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


@dataclass(frozen=True)
class Point:
    """One method at one alpha (None for prompting) on the held-out prompts."""

    alpha: float | None
    score: float
    coherence: float
    score_and_coherent: float
    median_ppl: float
    mean_repetition: float
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
    n = len(prompts)
    examples = [
        {"prompt": prompts[i], "response": texts[i], "follows": ok[i], "ppl": ppl[i], "repetition": reps[i]}
        for i in range(min(4, n))
    ]
    both = sum(a and b for a, b in zip(ok, coherent, strict=True)) / n
    return Point(
        None if steering is None else alpha,
        sum(ok) / n,
        sum(coherent) / n,
        both,
        statistics.median(ppl),
        sum(reps) / n,
        examples,
    )


def search_alpha(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instruction: Instruction,
    prompts: Sequence[str],
    steering: SteeringSource,
    settings: EvalSettings = EvalSettings(),
    progress: Progress = silent,
    what: str = "alpha search",
) -> tuple[list[Point], Point | None]:
    """The score-vs-alpha curve and the chosen point (None when no alpha meets the coherence target).

    While the largest alpha tried still meets the target, it is doubled (at most ``settings.extend`` times):
    a method must be compared where it starts to cost coherence, not where the grid happened to end. Then
    ``settings.refine`` bisection steps narrow the gap between the largest alpha that meets the target and the
    next one that does not.
    """
    if not settings.alphas:
        raise ConfigError("the alpha grid is empty")
    target = settings.coherence_target
    total = len(settings.alphas) + settings.extend + settings.refine
    points: dict[float, Point] = {}

    def run(alpha: float) -> Point:
        points[alpha] = evaluate_point(
            model, tokenizer, instruction, prompts, steering, alpha, settings=settings
        )
        progress(len(points), total, what)
        return points[alpha]

    for alpha in sorted(settings.alphas):
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
    chosen = max(meeting, key=lambda p: (p.score, p.coherence)) if meeting else None
    return curve, chosen


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instruction: Instruction,
    prompts: Sequence[str],
    methods: dict[str, SteeringSource],
    settings: EvalSettings = EvalSettings(),
    progress: Progress = silent,
) -> dict[str, Any]:
    """Prompting, the unsteered model and each steering method (alpha searched) side by side, as a dict."""
    if not prompts:
        raise ConfigError("no held-out prompts to evaluate on")
    baselines = {
        "prompting": evaluate_point(model, tokenizer, instruction, prompts, prompted=True, settings=settings),
        "unsteered": evaluate_point(model, tokenizer, instruction, prompts, settings=settings),
    }
    report: dict[str, Any] = {
        "model": model_name(model),
        "instruction": asdict(instruction),
        "prompts": list(prompts),
        "settings": asdict(settings),
        "baselines": {k: asdict(v) for k, v in baselines.items()},
        "methods": {},
    }
    for name, steering in methods.items():
        curve, chosen = search_alpha(
            model, tokenizer, instruction, prompts, steering, settings, progress, f"alpha search: {name}"
        )
        report["methods"][name] = {
            "curve": [asdict(p) for p in curve],
            "chosen": None if chosen is None else asdict(chosen),
        }
    return report


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method: alpha, score, coherence, both, median perplexity, repetition (chosen point)."""
    rows = [
        {"method": name, **{k: v for k, v in point.items() if k != "examples"}}
        for name, point in report["baselines"].items()
    ]
    for name, result in report["methods"].items():
        chosen = result["chosen"]
        if chosen is None:
            rows.append(
                {
                    "method": name,
                    "alpha": None,
                    "score": None,
                    "coherence": None,
                    "score_and_coherent": None,
                    "median_ppl": None,
                    "mean_repetition": None,
                }
            )
        else:
            rows.append({"method": name, **{k: v for k, v in chosen.items() if k != "examples"}})
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the matched-coherence table, the curves, and example responses."""
    settings = report["settings"]
    lines = [
        f"# PSR evaluation: {report['instruction']['name']}",
        "",
        f'Instruction: "{report["instruction"]["text"]}" (check: {report["instruction"]["check"]["kind"]}); '
        f"model {report['model']}; {len(report['prompts'])} held-out prompts; "
        f"{settings['max_new_tokens']} new tokens, greedy.",
        "",
        f"Coherent: perplexity under the unsteered model (given the instructed prompt) "
        f"<= {settings['ppl_max']} "
        f"and 3-gram repetition <= {settings['rep_max']}. Alpha: best score with coherent share >= "
        f"{settings['coherence_target']}.",
        "",
        "| method | alpha | score | coherent | score and coherent | median ppl | repetition |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary_rows(report):
        lines.append(
            f"| {row['method']} | {_fmt(row['alpha'])} | {_fmt(row['score'])} | {_fmt(row['coherence'])} | "
            f"{_fmt(row['score_and_coherent'])} | {_fmt(row['median_ppl'])} | "
            f"{_fmt(row['mean_repetition'])} |"
        )
    lines += ["", "![score vs alpha](score_vs_alpha.png)", "", "## Score and coherence vs alpha", ""]
    for name, result in report["methods"].items():
        points = ", ".join(
            f"{_fmt(p['alpha'])}: {_fmt(p['score'])}/{_fmt(p['coherence'])}" for p in result["curve"]
        )
        lines.append(f"- {name} (alpha: score/coherent): {points}")
    lines += ["", "## Examples", ""]
    sources = {**report["baselines"], **{k: v["chosen"] for k, v in report["methods"].items() if v["chosen"]}}
    for name, point in sources.items():
        for example in point["examples"][:2]:
            text = example["response"].replace("\n", " ").replace("|", "\\|")
            lines.append(f"- **{name}** ({example['prompt']}): {text}")
    return "\n".join(lines) + "\n"


def _figure_bytes(fig: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    # No creation time or software version in the file: the same report gives the same bytes.
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def plot_curves(report: dict[str, Any], path: str | Path) -> None:
    """Score and coherent share vs alpha for every method, prompting and unsteered as horizontal lines."""
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
            if result["chosen"] is not None:
                ax.scatter(
                    [result["chosen"]["alpha"]],
                    [result["chosen"][key]],
                    s=120,
                    facecolors="none",
                    edgecolors="black",
                )
        for name, style in (("prompting", "--"), ("unsteered", ":")):
            ax.axhline(report["baselines"][name][key], color="grey", linestyle=style, label=name)
        if key == "coherence":
            ax.axhline(report["settings"]["coherence_target"], color="red", linewidth=0.8, label="target")
        alphas = [p["alpha"] for result in report["methods"].values() for p in result["curve"]]
        if alphas and min(alphas) > 0:  # grids are usually geometric
            ax.set_xscale("log", base=2)
        ax.set_xlabel("alpha")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['instruction']['name']}: {report['instruction']['text']}")
    fig.tight_layout()
    _write_bytes(Path(path), _figure_bytes(fig))
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and ``score_vs_alpha.png`` into ``out_dir``; return the paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "report.json", folder / "report.md", folder / "score_vs_alpha.png"]
    _write_bytes(paths[0], (json.dumps(report, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    _write_bytes(paths[1], markdown(report).encode("utf-8"))
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
