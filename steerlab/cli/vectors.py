"""``steerlab train``, ``generate``, ``info``, ``export-gguf`` and ``import-gguf``: vectors from pairs and their use."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from steerlab.cli.common import (
    Bars,
    add_common,
    count,
    floats,
    ints,
    load_model_from_args,
    note,
    output_file,
    prompt_style,
)
from steerlab.core.positions import POSITIONS
from steerlab.errors import ConfigError


def cmd_train(args: argparse.Namespace) -> int:
    from steerlab.data.items import load_pairs
    from steerlab.methods.train import train_vector

    pairs = load_pairs(args.pairs)
    model, tok = load_model_from_args(args)
    token: str | int = int(args.token) if args.token.lstrip("-").isdigit() else args.token
    bars = Bars(not args.quiet)
    start = time.perf_counter()
    vector = train_vector(model, tok, pairs, args.layers, method=args.method, token=token, style=prompt_style(args),
                          batch_size=args.batch_size, progress=bars,
                          extra_metadata={"source": {"pairs": str(args.pairs)}})
    bars.close()
    vector.save(args.out)
    norms = ", ".join(f"{layer}: {float(t.norm()):.3g}" for layer, t in sorted(vector.layers.items()))
    print(f"wrote {args.out}: {args.method} vector from {len(pairs)} pairs in {time.perf_counter() - start:.1f} s "
          f"(layer norms {norms})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from steerlab.cli.condition import conditional_column
    from steerlab.conditional.program import ConditionalProgram
    from steerlab.files import load_steering
    from steerlab.runtime.generate import generate

    steering = load_steering(args.vector) if args.vector else None
    if steering is None and (args.strength is not None or args.layers is not None):
        raise ConfigError("--strength and --layers need --vector")
    model, tok = load_model_from_args(args)
    if steering is not None and hasattr(steering, "check_compatible"):
        from steerlab.models import hidden_size, model_name, num_layers

        steering.check_compatible(hidden_size(model), num_layers(model), model_name(model))
    prompts = list(args.prompt)
    common: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "style": prompt_style(args),
                              "do_sample": args.sample, "temperature": args.temperature, "seed": args.seed}
    columns: list[tuple[str, list[str]]] = []
    if steering is None or not args.no_baseline:
        columns.append(("unsteered", generate(model, tok, prompts, **common)))
    if args.condition or isinstance(steering, ConditionalProgram):
        columns.append(conditional_column(args, model, tok, prompts, steering, common))
    elif steering is not None:
        recipe = getattr(steering, "recipe", None)
        if recipe is not None and args.strength is None:
            note(args, f"applying the vector's recipe: layers {list(recipe.layers)}, strength {recipe.strength:g} "
                       f"({recipe.unit}), positions {args.positions or recipe.positions}")
        for strength in args.strength or (None,):
            texts = generate(model, tok, prompts, steering=steering, strength=strength, layers=args.layers,
                             positions=args.positions, **common)
            label = f"{1.0 if strength is None else strength:g}"
            if strength is None and recipe is not None:
                label = "the recipe's"
            columns.append((f"steered, strength {label}", texts))
            _warn_incoherent(args, tok, label, texts)
    if args.json:
        print(json.dumps([{"prompt": p, **{name: texts[k] for name, texts in columns}}
                          for k, p in enumerate(prompts)], indent=2, ensure_ascii=False))
        return 0
    for k, prompt in enumerate(prompts):
        print(f"=== prompt: {prompt}")
        for name, texts in columns:
            print(f"--- {name}:\n{texts[k].strip()}\n")
    return 0


REPETITION_WARNING = 0.3  # share of repeated 3-grams, the PSR evaluation's coherence threshold


def _warn_incoherent(args: argparse.Namespace, tok: Any, label: str, texts: list[str]) -> None:
    from steerlab.psr.checks import repetition_rate

    rates = [repetition_rate(tok(text, add_special_tokens=False)["input_ids"]) for text in texts]
    broken = [r for r in rates if r > REPETITION_WARNING]
    if broken:
        note(args, f"warning: at strength {label}, {len(broken)} of {len(texts)} responses repeat themselves "
                   f"(3-gram repetition up to {max(broken):.2f} > {REPETITION_WARNING}): this strength breaks "
                   "coherence; try a smaller one")


def cmd_info(args: argparse.Namespace) -> int:
    from steerlab.core.vector import VECTOR_KIND, SteeringVector, read_steering_file

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
    recipe = summary.get("metadata", {}).get("recipe")
    if recipe:
        print(f"  recipe       layers {recipe['layers']}, strength {recipe['strength']:g} ({recipe['unit']}), "
              f"positions {recipe['positions']}, target {recipe.get('target', 'residual')}: what steer() and "
              "generate apply by default")
    extra = {k: v for k, v in summary.get("metadata", {}).items()
             if k not in ("model", "method", "token", "normalized", "hidden_size", "layers", "recipe")}
    for key, value in sorted(extra.items()):
        print(f"  {key:<12} {json.dumps(value, sort_keys=True, default=str)}")
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from steerlab.core.vector import SteeringVector
    from steerlab.interop.llamacpp import export_gguf

    vector = SteeringVector.load(args.vector)
    export_gguf(vector, args.out, model_hint=args.model_hint)
    print(f"wrote {args.out}: llama.cpp control vector, layers {sorted(vector.layers)} "
          f"(direction.N = output of block N)")
    recipe = vector.recipe
    if recipe is not None:
        print(f"apply it as selected with llama.cpp's --control-vector-scaled {args.out} {recipe.strength:g}")
        if recipe.positions != "all":
            print(f"note: the vector was selected steering positions '{recipe.positions}', but a GGUF control "
                  "vector cannot store positions and llama.cpp steers every position; expect a different effect")
    return 0


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from steerlab.interop.llamacpp import import_gguf

    vector = import_gguf(args.gguf)
    vector.save(args.out)
    print(f"wrote {args.out}: steerlab vector, layers {sorted(vector.layers)}")
    return 0



def register(sub: Any) -> None:
    """Add the vector commands to the ``steerlab`` subparsers."""
    p = sub.add_parser("train", help="a steering vector from contrastive pairs")
    p.add_argument("--pairs", required=True, help="JSONL or JSON list: positive/negative[/prompt] or "
                                                  "prompt/chosen/rejected")
    p.add_argument("--layers", type=ints, required=True)
    p.add_argument("--method", choices=("mean-diff", "pca", "probe"), default="mean-diff")
    p.add_argument("--token", default="diff", help="diff (first differing token, CAA), answer, last, mean, "
                                                   "or an integer index")
    p.add_argument("--system", help="system prompt for chat-formatted pairs")
    p.add_argument("--batch-size", type=count, default=16)
    p.add_argument("--out", type=output_file, required=True)
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="generate, unsteered and steered side by side")
    p.add_argument("--prompt", action="append", required=True, help="a user message (repeatable)")
    p.add_argument("--vector", help="a steerlab vector or learned steering file")
    p.add_argument("--strength", type=floats,
                   help="one or more strengths, e.g. --strength=-1,1 (default: the file's recipe, else 1)")
    p.add_argument("--layers", type=ints, help="steer only these layers of the file")
    p.add_argument("--positions", choices=POSITIONS, help="steered positions (default: the file's recipe, else all)")
    p.add_argument("--max-new-tokens", type=count, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--no-baseline", action="store_true", help="only the steered generations")
    p.add_argument("--condition", action="append", default=[],
                   help="a condition file (steerlab condition train): steer only the prompts where it holds "
                        "(repeatable; all must hold unless --rule says otherwise)")
    p.add_argument("--rule", action="append", default=[], help="with --condition: e.g. 'if harmful and not "
                                                               "medical then vector' (the --vector is 'vector')")
    p.add_argument("--json", action="store_true")
    add_common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="what a steerlab file holds")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export-gguf", help="write a vector as a llama.cpp control vector")
    p.add_argument("vector")
    p.add_argument("out", type=output_file)
    p.add_argument("--model-hint", help="controlvector.model_hint (default: the vector's model)")
    p.set_defaults(func=cmd_export_gguf)

    p = sub.add_parser("import-gguf", help="read a llama.cpp control vector into a steerlab vector")
    p.add_argument("gguf")
    p.add_argument("out", type=output_file)
    p.set_defaults(func=cmd_import_gguf)
