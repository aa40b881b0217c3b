"""A model replica: loads one model once and runs that model's units, one after the other.

The serial suite uses it in the calling process and the Ray suite as an actor (one per replica), so both run the
same code and write the same files. A model that fails to load fails each of its units with that error instead of
raising, so the rest of the suite goes on.

Example::

    from steerlab.suite.spec import SuiteSpec
    from steerlab.suite.worker import ModelWorker
    spec = SuiteSpec(tasks=("caa/refusal",))
    worker = ModelWorker(spec, "embedded", "suite-out")
    print(worker.run(spec.units()[0]))
"""

from __future__ import annotations

import os

import torch

from steerlab.suite.spec import SuiteSpec, Unit
from steerlab.suite.unit import UnitStatus, execute_unit, failure, load_unit_model, record_failure


class ModelWorker:
    """Holds ``model`` (loaded per ``spec``'s dtype and device) and runs units into ``out``.

    ``threads`` sets torch's intra-op threads, so replicas sharing a machine do not oversubscribe its cores.
    """

    def __init__(self, spec: SuiteSpec, model: str, out: str, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.spec, self.model_name, self.out = spec, model, out
        self.load_error: str | None = None
        try:
            self.model, self.tokenizer = load_unit_model(spec, model)
        except Exception as exc:  # every unit of this model reports it; other models' units still run
            self.load_error = f"the model {model} did not load: {failure(exc)}"

    def run(self, unit: Unit) -> UnitStatus:
        if self.load_error is not None:
            return record_failure(self.out, unit, self.load_error)
        return execute_unit(self.model, self.tokenizer, self.spec, unit, self.out)

    def pid(self) -> int:
        """The process this replica lives in (a Ray actor's worker process)."""
        return os.getpid()
