"""Any steerlab file, loaded by the kind written in its header: a steering vector, a PSR model or a conditional
program."""

from __future__ import annotations

from pathlib import Path

from steerlab.conditional.program import PROGRAM_KIND, ConditionalProgram
from steerlab.core.vector import VECTOR_KIND, SteeringVector, read_steering_file
from steerlab.errors import VectorFileError
from steerlab.psr.model import PSR_KIND, PSRModel


def load_steering(path: str | Path) -> SteeringVector | PSRModel | ConditionalProgram:
    """A steering vector, a PSR model or a conditional program, whichever the file holds.

    Example::

        steering = load_steering("french.safetensors")
    """
    kind = read_steering_file(path)[0]
    if kind == VECTOR_KIND:
        return SteeringVector.load(path)
    if kind == PSR_KIND:
        return PSRModel.load(path)
    if kind == PROGRAM_KIND:
        return ConditionalProgram.load(path)
    raise VectorFileError(f"{path}: steerlab files of kind {kind!r} cannot steer")
