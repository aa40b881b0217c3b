"""The ``steerlab`` command: a thin layer over the Python API (argument parsing, progress bars, tables, errors).

Every subcommand loads what it needs, calls one library function, and prints. Any steerlab error becomes one line
on stderr and exit code 2; an interrupt exits with 130 (a re-run with the same ``--out`` resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError, SteerlabError


def _ints(text: str) -> tuple[int, ...]:
    """``"10,12,14"`` or ``"8-12"`` (inclusive) or a mix."""
    values: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            low, dash, high = part.partition("-")
            if dash and low:
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 10,12,14 or 8-12, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return tuple(values)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like -4,4 or 0.5,1,2, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


class Bars:
    """A tqdm bar per phase: a library ``Progress`` callback that draws on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._what = ""

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self._bar is None or what != self._what or total != self._bar.total:
            self.close()
            self._bar = tqdm(total=total, desc=what, unit="it", leave=False, dynamic_ncols=True, file=sys.stderr)
            self._what = what
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _model(args: argparse.Namespace) -> Any:
    from steerlab.models import load_model

    _note(args, f"loading {args.model or 'the embedded SmolLM2-135M-Instruct'} ...")
    return load_model(args.model, gguf_file=getattr(args, "gguf_file", None))


def _note(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def _style(args: argparse.Namespace) -> Any:
    from steerlab.prompts import PromptStyle

    return PromptStyle(chat=not args.no_chat, system=getattr(args, "system", None))


def _load_steering(path: str) -> Any:
    """A vector or any learned steering model, by the kind written in the file."""
    from steerlab.vectors import VECTOR_KIND, SteeringVector, read_steering_file

    kind = read_steering_file(path)[0]
    if kind == VECTOR_KIND:
        return SteeringVector.load(path)
    try:
        from steerlab.psr import load_steering
    except ImportError:
        raise ConfigError(f"{path}: steering files of kind '{kind}' are not supported by this steerlab") from None
    return load_steering(path)


def cmd_train(args: argparse.Namespace) -> int:
    from steerlab.data import load_pairs
    from steerlab.train import train_vector

    pairs = load_pairs(args.pairs)
    model, tok = _model(args)
    token: str | int = int(args.token) if args.token.lstrip("-").isdigit() else args.token
    bars = Bars(not args.quiet)
    start = time.perf_counter()
    vector = train_vector(model, tok, pairs, args.layers, method=args.method, token=token, style=_style(args),
                          batch_size=args.batch_size, progress=bars,
                          extra_metadata={"source": {"pairs": str(args.pairs)}})
    bars.close()
    vector.save(args.out)
    norms = ", ".join(f"{layer}: {float(t.norm()):.3g}" for layer, t in sorted(vector.layers.items()))
    print(f"wrote {args.out}: {args.method} vector from {len(pairs)} pairs in {time.perf_counter() - start:.1f} s "
          f"(layer norms {norms})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from steerlab.generate import generate

    steering = _load_steering(args.vector) if args.vector else None
    if steering is None and (args.strength is not None or args.layers is not None):
        raise ConfigError("--strength and --layers need --vector")
    model, tok = _model(args)
    if steering is not None and hasattr(steering, "check_compatible"):
        from steerlab.models import hidden_size, model_name, num_layers

        steering.check_compatible(hidden_size(model), num_layers(model), model_name(model))
    prompts = list(args.prompt)
    common: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "style": _style(args),
                              "do_sample": args.sample, "temperature": args.temperature, "seed": args.seed}
    columns: list[tuple[str, list[str]]] = []
    if steering is None or not args.no_baseline:
        columns.append(("unsteered", generate(model, tok, prompts, **common)))
    if steering is not None:
        strengths = args.strength or (_default_strength(steering),)
        for strength in strengths:
            texts = generate(model, tok, prompts, steering=steering, strength=strength, layers=args.layers,
                             positions=args.positions, **common)
            columns.append((f"steered, strength {strength:g}", texts))
    if args.json:
        print(json.dumps([{"prompt": p, **{name: texts[k] for name, texts in columns}}
                          for k, p in enumerate(prompts)], indent=2, ensure_ascii=False))
        return 0
    for k, prompt in enumerate(prompts):
        print(f"=== prompt: {prompt}")
        for name, texts in columns:
            print(f"--- {name}:\n{texts[k].strip()}\n")
    return 0


def _default_strength(steering: Any) -> float:
    metadata = getattr(steering, "metadata", {}) or {}
    value = metadata.get("strength", metadata.get("alpha", 1.0))
    return float(value)


def cmd_info(args: argparse.Namespace) -> int:
    from steerlab.vectors import VECTOR_KIND, SteeringVector, read_steering_file

    kind, tensors, metadata = read_steering_file(args.file)
    if kind == VECTOR_KIND:
        summary = SteeringVector.load(args.file).summary()
        summary["metadata"] = {k: v for k, v in metadata.items() if k not in ("kind",)}
    else:
        summary = {"kind": kind, "tensors": {name: list(t.shape) for name, t in sorted(tensors.items())},
                   "metadata": metadata}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return 0
    print(f"{args.file}: steerlab {kind} file (format version {summary.get('format_version', '?')})")
    for key in ("model", "method", "token", "normalized", "hidden_size"):
        if key in summary:
            print(f"  {key:<12} {summary[key]}")
    if "layers" in summary:
        print("  layers       " + ", ".join(f"{layer} (norm {norm:.4g})" for layer, norm in summary["layers"].items()))
    elif "tensors" in summary:
        for name, shape in summary["tensors"].items():
            print(f"  {name:<24} {shape}")
    extra = {k: v for k, v in summary.get("metadata", {}).items()
             if k not in ("model", "method", "token", "normalized", "hidden_size")}
    for key, value in sorted(extra.items()):
        print(f"  {key:<12} {json.dumps(value, sort_keys=True, default=str)}")
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from steerlab.llamacpp import export_gguf
    from steerlab.vectors import SteeringVector

    vector = SteeringVector.load(args.vector)
    export_gguf(vector, args.out, model_hint=args.model_hint)
    print(f"wrote {args.out}: llama.cpp control vector, layers {sorted(vector.layers)} "
          f"(direction.N = output of block N)")
    return 0


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from steerlab.llamacpp import import_gguf

    vector = import_gguf(args.gguf)
    vector.save(args.out)
    print(f"wrote {args.out}: steerlab vector, layers {sorted(vector.layers)}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from steerlab.tasks import list_tasks

    infos = list_tasks()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    width = max(len(info.name) for info in infos)
    print(f"{'task':<{width}}  {'items':>6}  {'kind':<9}  description")
    for info in infos:
        print(f"{info.name:<{width}}  {info.size:>6}  {info.kind:<9}  {info.description}")
    return 0


def _items(args: argparse.Namespace) -> tuple[str, Any]:
    from steerlab.data import FieldMap, load_items
    from steerlab.tasks import load_task

    if args.data:
        fields = FieldMap(**{name: value for name in ("id", "question", "choices", "answer", "context")
                             if (value := getattr(args, f"{name}_field")) is not None})
        return str(args.data), load_items(args.data, fields=fields, split=args.split, config=args.config)
    return args.task, load_task(args.task)


def cmd_run(args: argparse.Namespace) -> int:
    from steerlab.pas import PAS_METHODS
    from steerlab.report import result_table, write_report
    from steerlab.run import DEFAULT_STRENGTHS, RunConfig, run_task

    methods = PAS_METHODS if args.method == "all" else tuple(m.strip() for m in args.method.split(","))
    for method in methods:
        if method not in PAS_METHODS:
            raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(PAS_METHODS)} or all")
    task, items = _items(args)
    out = Path(args.out or Path("steerlab-runs") / task.replace("/", "_").replace(":", "_"))
    config = RunConfig(task=task, methods=methods, layers=args.layers, strengths=args.strengths or DEFAULT_STRENGTHS,
                       n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seeds=args.seeds, seed=args.seed,
                       scoring=args.scoring, length_normalize=args.length_normalize, chat=not args.no_chat,
                       steer_all=args.positions == "all", icl_k=args.icl_k, batch_size=args.batch_size)
    model, tok = _model(args)
    bars = Bars(not args.quiet)
    result = run_task(model, tok, items, config, out_dir=out, progress=bars)
    bars.close()
    written = write_report(result.report, out)
    best = result.report["method"]
    (out / "vectors").mkdir(exist_ok=True)
    for method, vector in sorted(result.vectors.items()):
        vector.save(out / "vectors" / f"{method}.safetensors")
    result.vectors[best].save(out / "vector.safetensors")
    print(result_table(result.report))
    print(f"\nwrote {out}/: vector.safetensors ({best}), vectors/, " + ", ".join(p.name for p in written))
    return 0


def _common(parser: argparse.ArgumentParser, *, model: bool = True, chat: bool = True) -> None:
    if model:
        parser.add_argument("--model", help="hub id, local folder or .gguf file (default: the embedded "
                                            "SmolLM2-135M-Instruct)")
        parser.add_argument("--gguf-file", help="the .gguf file inside --model when --model is a folder")
    if chat:
        parser.add_argument("--no-chat", action="store_true", help="do not apply the model's chat template")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes on stderr")


def build_parser() -> argparse.ArgumentParser:
    from steerlab import __version__

    parser = argparse.ArgumentParser(
        prog="steerlab", description="Activation steering for Hugging Face causal LMs. "
                                     "Layer i = the output of decoder block i (0-based).")
    parser.add_argument("--version", action="version", version=f"steerlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="PAS: steering vectors from a labelled multiple-choice dataset, layer and "
                                   "strength picked on validation, tested on a held-out split")
    p.add_argument("--task", default="caa/survival-instinct", help="built-in task (see `steerlab tasks`)")
    p.add_argument("--data", help="a JSONL/CSV/JSON file or hf:DATASET_ID instead of a built-in task")
    for name in ("id", "question", "choices", "answer", "context"):
        p.add_argument(f"--{name}-field", help=f"field holding the {name} in --data (default: {name})")
    p.add_argument("--split", help="split of an hf: dataset")
    p.add_argument("--config", help="configuration of an hf: dataset")
    p.add_argument("--method", default="ipas-wo",
                   help="pas-full, ipas-all, ipas-wo (default), caa, a comma list, or all (one report comparing them)")
    p.add_argument("--layers", type=_ints, help="layers to sweep (default: 10 spread over 25-80%% of depth)")
    p.add_argument("--strengths", type=_floats, help="strengths to sweep (default 0.5,1,2,4,8,16)")
    p.add_argument("--n-train", type=int, default=64, help="training items (default 64)")
    p.add_argument("--n-val", type=int, default=32, help="validation items for the sweep (default 32)")
    p.add_argument("--n-test", type=int, default=64, help="held-out test items (default 64)")
    p.add_argument("--seeds", type=int, default=1, help="re-splits; the interval is over seeds when > 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scoring", choices=("auto", "letters", "likelihood"), default="auto")
    p.add_argument("--length-normalize", action="store_true", help="choice likelihood per token")
    p.add_argument("--positions", choices=("last", "all"), default="last",
                   help="steer the last prompt token / answer tokens (last), or every position (all)")
    p.add_argument("--icl-k", type=int, default=4, help="in-context examples for the ICL controls")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="output folder (default steerlab-runs/<task>); re-running resumes")
    _common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="a steering vector from contrastive pairs")
    p.add_argument("--pairs", required=True, help="JSONL or JSON list: positive/negative[/prompt] or "
                                                  "prompt/chosen/rejected")
    p.add_argument("--layers", type=_ints, required=True)
    p.add_argument("--method", choices=("mean-diff", "pca", "probe"), default="mean-diff")
    p.add_argument("--token", default="diff", help="diff (first differing token, CAA), answer, last, mean, "
                                                   "or an integer index")
    p.add_argument("--system", help="system prompt for chat-formatted pairs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate, unsteered and steered side by side")
    p.add_argument("--prompt", action="append", required=True, help="a user message (repeatable)")
    p.add_argument("--vector", help="a steerlab vector or learned steering file")
    p.add_argument("--strength", type=_floats, help="one or more strengths, e.g. --strength=-4,4 (default: the file's)")
    p.add_argument("--layers", type=_ints, help="steer only these layers of the file")
    p.add_argument("--positions", choices=("all", "prompt", "generated", "last_prompt"), default="all")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--no-baseline", action="store_true", help="only the steered generations")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="what a steerlab file holds")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export-gguf", help="write a vector as a llama.cpp control vector")
    p.add_argument("vector")
    p.add_argument("out")
    p.add_argument("--model-hint", help="controlvector.model_hint (default: the vector's model)")
    p.set_defaults(func=cmd_export_gguf)

    p = sub.add_parser("import-gguf", help="read a llama.cpp control vector into a steerlab vector")
    p.add_argument("gguf")
    p.add_argument("out")
    p.set_defaults(func=cmd_import_gguf)

    p = sub.add_parser("tasks", help="the built-in tasks and their sizes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)

    _register_extensions(sub)
    return parser


def _register_extensions(sub: Any) -> None:
    try:
        from steerlab import psr_cli
    except ImportError:
        return
    psr_cli.register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SteerlabError as exc:
        print(f"steerlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"steerlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"steerlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
