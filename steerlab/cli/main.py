"""The ``steerlab`` command: a thin layer over the Python API (argument parsing, progress bars, tables, errors).

Every subcommand loads what it needs, calls one library function, and prints. Any steerlab error becomes one line
on stderr and exit code 2; an interrupt exits with 130 (a re-run with the same ``--out`` resumes).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from steerlab.cli import condition, psr, run, serve, suite, vectors
from steerlab.cli.common import run_command


def build_parser() -> argparse.ArgumentParser:
    from steerlab._version import __version__

    parser = argparse.ArgumentParser(
        prog="steerlab", description="Activation steering for Hugging Face causal LMs. "
                                     "Layer i = the output of decoder block i (0-based).")
    parser.add_argument("--version", action="version", version=f"steerlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(sub)
    vectors.register(sub)
    psr.register(sub)
    condition.register(sub)
    suite.register(sub)
    serve.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
