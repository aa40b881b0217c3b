"""What every ``steerlab`` command shares: list parsers, progress bars, model loading, common flags, error handling."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerlab.errors import SteerlabError


def ints(text: str) -> tuple[int, ...]:
    """``"10,12,14"`` or ``"8-12"`` (inclusive) or a mix."""
    values: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            low, dash, high = part.partition("-")
            if dash and low:
                if int(high) < int(low):
                    raise argparse.ArgumentTypeError(f"the range {part} runs backwards: write {high}-{low}")
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 10,12,14 or 8-12, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return tuple(values)


def retain_settings(spec: str | None) -> dict[str, Any]:
    """``--retain TASK[:N]`` as RunConfig settings (none when the flag is absent)."""
    from steerlab.experiment.retention import parse_spec

    if spec is None:
        return {}
    task, count = parse_spec(spec)
    return {"retain": task, "retain_n": count}


RETAIN_HELP = ("what the chosen steering costs: N items (default 100) of a built-in task it was not selected on "
               "(default mmlu) unsteered vs steered, and KL / perplexity on neutral requests")


def output_file(text: str) -> Path:
    """A file written when the work is done: its folder is checked now, not after an hour of training."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist: create it first")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder: give the file to write")
    return path


def count(text: str) -> int:
    """A count of at least 1: ``--limit -1`` would otherwise drop the last prompt, ``--batch-size 0`` hang."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count of at least 1, got {value}")
    return value


def floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like -4,4 or 0.5,1,2, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got '{text}'")
    return values


class Bars:
    """A tqdm bar per phase: a library ``Progress`` callback that draws on stderr. Phases named ``overall...``
    (:data:`steerlab.progress.OVERALL`) get a bar of their own that stays above the phase bars."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._what = ""
        self._overall: Any = None

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        from steerlab.progress import OVERALL

        if what.startswith(OVERALL):
            if self._overall is None or total != self._overall.total:
                if self._overall is not None:
                    self._overall.close()
                self._overall = tqdm(total=total, desc=what, unit="unit", position=0, leave=False,
                                     dynamic_ncols=True, file=sys.stderr)
            self._overall.update(done - self._overall.n)
            return
        if self._bar is None or what != self._what or total != self._bar.total:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=total, desc=what, unit="it", leave=False, dynamic_ncols=True, file=sys.stderr,
                             position=1 if self._overall is not None else 0)
            self._what = what
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        for bar in (self._bar, self._overall):
            if bar is not None:
                bar.close()
        self._bar = self._overall = None


def load_model_from_args(args: argparse.Namespace) -> Any:
    from steerlab.models import load_model

    note(args, f"loading {args.model or 'the embedded SmolLM2-135M-Instruct'} ...")
    return load_model(args.model, gguf_file=getattr(args, "gguf_file", None), dtype=getattr(args, "dtype", "fp32"),
                      device=getattr(args, "device", None), device_map=getattr(args, "device_map", None))


def note(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def prompt_style(args: argparse.Namespace) -> Any:
    from steerlab.data.prompts import PromptStyle

    return PromptStyle(chat=not args.no_chat, system=getattr(args, "system", None))


def add_common(parser: argparse.ArgumentParser, *, model: bool = True, chat: bool = True) -> None:
    if model:
        parser.add_argument("--model", help="hub id, local folder or .gguf file (default: the embedded "
                                            "SmolLM2-135M-Instruct)")
        parser.add_argument("--gguf-file", help="the .gguf file inside --model when --model is a folder")
        add_device_flags(parser)
    if chat:
        parser.add_argument("--no-chat", action="store_true", help="do not apply the model's chat template")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes on stderr")



def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype and --device-map: where the model's weights live and in which precision."""
    parser.add_argument("--device", help="torch device for the model, e.g. cuda, cuda:1, mps (default: cpu)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="weights and activations precision (default fp32); part of every stored result's key")
    parser.add_argument("--device-map", help="spread the blocks over the devices with accelerate: auto, balanced "
                                             "(instead of --device)")


def run_command(args: argparse.Namespace) -> int:
    """Call the handler in ``args.func``: a steerlab error becomes one line on stderr and exit 2, ^C exit 130."""
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (SteerlabError, OSError) as exc:
        print(f"steerlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"steerlab {args.command}: interrupted", file=sys.stderr)
        return 130
