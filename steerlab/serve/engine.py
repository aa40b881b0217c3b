"""The continuous batcher: one worker thread owns the model; requests join and leave between decode steps.

Each loop turn the worker prefills a few newly arrived requests, one at a time and unpadded (so a prompt's prefill
is the same computation whether or not others are being served), adds them as rows of the shared left-padded KV
cache (:mod:`steerlab.serve.kv`), then runs one decode step for every live row, with each row's own steering
(:mod:`steerlab.core.rows`). Sampled tokens go back through each request's sink, called on the worker thread.

Example (tiny or real, any causal LM)::

    from steerlab import load_model
    from steerlab.serve.engine import Engine, Job, Sampling
    model, tok = load_model()
    engine = Engine(model, tok)
    engine.start()
    ticket = engine.submit(Job(tuple(tok("Hello")["input_ids"]), Sampling(max_tokens=8)), print)
    ticket.finished.wait()
    engine.stop()
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from steerlab.conditional.gating import Decisions, steer_program
from steerlab.conditional.program import ConditionalProgram
from steerlab.core.rows import RowTerm, apply_row_steering, row_term
from steerlab.errors import ConfigError, SteerlabError
from steerlab.models import cache_kwarg
from steerlab.serve.kv import KVBatch

# New requests prefilled per loop turn: bounds how long live rows wait for a burst of arrivals.
PREFILLS_PER_TURN = 4


class Overloaded(SteerlabError):
    """Every batch slot and queue place is taken; the client should retry later."""


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # run to max_tokens (benchmarks: equal work per request)


@dataclass(frozen=True)
class Job:
    prompt: tuple[int, ...]
    sampling: Sampling
    terms: tuple[RowTerm, ...] = ()
    program: ConditionalProgram | None = None  # gated at prefill from the prompt's user turn, then frozen
    span: tuple[int, int] | None = None  # the user turn's [start, end) tokens in the prompt, for ``program``
    turn: int = 0  # tokens before the user's last turn, for ``turn`` positions


@dataclass(frozen=True)
class Decision:
    """What a conditional program decided for one request: which conditions held, which behaviours apply."""

    held: dict[str, bool]
    gates: dict[str, bool]


@dataclass(frozen=True)
class Chunk:
    """New text of a request (may be empty while a multi-byte character or a possible stop string is held back)."""

    text: str
    token: int


@dataclass(frozen=True)
class Done:
    reason: str  # "stop" (end of sequence or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    tokens: tuple[int, ...]  # the sampled tokens, end-of-sequence excluded
    decision: Decision | None = None


@dataclass(frozen=True)
class Failed:
    message: str


Event = Chunk | Done | Failed
Sink = Callable[[Event], None]


@dataclass(eq=False)
class Ticket:
    """A submitted request: ``cancel()`` drops it before its next step; ``finished`` is set after its last event."""

    job: Job
    sink: Sink
    finished: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, event: Event) -> None:
        try:
            self.sink(event)
        except RuntimeError:  # the receiver is gone (its event loop closed): drop the request, not the batch
            self.cancelled = True
        if not isinstance(event, Chunk):
            self.finished.set()


@dataclass(eq=False)
class _Row:
    ticket: Ticket
    generator: torch.Generator | None
    terms: tuple[RowTerm, ...]  # the request's own terms, plus its program's behaviours that were switched on
    decision: Decision | None = None
    tokens: list[int] = field(default_factory=list)
    sampled: int = 0
    sent: int = 0  # characters of the text already sent
    done: bool = False


class Engine:
    """A batcher of up to ``max_batch`` live rows and ``max_queue`` waiting requests."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, max_batch: int = 32,
                 max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ConfigError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos: frozenset[int] = frozenset(eos if isinstance(eos, list) else [] if eos is None else [int(eos)])
        self._device = next(model.parameters()).device
        self._last_logit_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._pending: deque[Ticket] = deque()
        self._rows: list[_Row] = []
        self._kv = KVBatch.empty()
        self._cond = threading.Condition()
        self._stopping = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self.cancelled = 0  # requests dropped because their client cancelled (went away or timed out)

    # The caller's side (any thread).

    def start(self) -> None:
        if self._thread is not None:
            raise ConfigError("the engine is already started")
        self._thread = threading.Thread(target=self._loop, name="steerlab-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job, sink: Sink) -> Ticket:
        """Queue ``job``; raise :class:`Overloaded` when the batch and the queue are full."""
        if job.sampling.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {job.sampling.max_tokens}")
        if not job.prompt:
            raise ConfigError("the prompt has no tokens")
        if job.program is not None and job.span is None:
            raise ConfigError("a conditional program needs the user turn's span in the prompt")
        ticket = Ticket(job, sink)
        with self._cond:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if len(self._pending) + len(self._rows) >= self.max_batch + self.max_queue:
                raise Overloaded(f"{len(self._rows)} requests running and {len(self._pending)} waiting "
                                 f"(limits {self.max_batch} and {self.max_queue})")
            self._pending.append(ticket)
            self._cond.notify()
        return ticket

    def load(self) -> tuple[int, int]:
        """(running rows, waiting requests)."""
        with self._cond:
            return len(self._rows), len(self._pending)

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; finish the admitted ones (``drain``) or cancel them; wait for the worker."""
        with self._cond:
            self._stopping, self._drain = True, drain
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # The worker's side.

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._rows or self._stopping):
                    self._cond.wait()
                if self._stopping and not self._drain:
                    for ticket in [*self._pending, *(row.ticket for row in self._rows)]:
                        ticket.send(Failed("the server shut down before the request finished"))
                    self._pending.clear()
                    return
                if self._stopping and not (self._pending or self._rows):
                    return
                admitted: list[Ticket] = []
                while self._pending and len(self._rows) + len(admitted) < self.max_batch \
                        and len(admitted) < PREFILLS_PER_TURN:
                    admitted.append(self._pending.popleft())
            for ticket in admitted:
                if ticket.cancelled:
                    self._dropped(ticket)
                else:
                    self._guard([ticket], functools.partial(self._prefill, ticket))
            cancelled = [row.ticket for row in self._rows if row.ticket.cancelled]
            self._forget(lambda row: row.ticket.cancelled)
            for ticket in cancelled:
                self._dropped(ticket)
            if self._rows:
                self._guard([row.ticket for row in self._rows], self._decode)

    def _dropped(self, ticket: Ticket) -> None:
        with self._cond:
            self.cancelled += 1
        ticket.finished.set()

    def _guard(self, tickets: list[Ticket], step: Callable[[], None]) -> None:
        """Run ``step``; on an unexpected error fail ``tickets`` instead of killing the worker."""
        try:
            step()
        except Exception as exc:  # the worker must outlive any one request
            message = f"generation failed: {type(exc).__name__}: {exc}"
            self._forget(lambda row: row.ticket in tickets)
            for ticket in tickets:
                if not ticket.finished.is_set():
                    ticket.send(Failed(message))

    def _forget(self, gone: Callable[[_Row], bool]) -> None:
        """Drop the rows ``gone`` selects from the batch (their tickets' last events are the caller's to send)."""
        keep = [i for i, row in enumerate(self._rows) if not gone(row)]
        if len(keep) != len(self._rows):
            with self._cond:
                self._kv.keep(keep)
                self._rows = [self._rows[i] for i in keep]

    def _forward(self, rows: list[tuple[tuple[RowTerm, ...], Job]], ids: torch.Tensor, cache: DynamicCache,
                 **extra: Any) -> torch.Tensor:
        """Last-position logits (rows, vocab) in float32, each row steered by its own terms."""
        if self._last_logit_only:
            extra = {**extra, "logits_to_keep": 1}
        with torch.no_grad(), apply_row_steering(self.model, [terms for terms, _ in rows],
                                                 [len(job.prompt) for _, job in rows], [job.turn for _, job in rows]):
            out = self.model(input_ids=ids.to(self._device), use_cache=True, **cache_kwarg(self.model, cache),
                             **extra)
        return out.logits[:, -1].float()

    def _prefill(self, ticket: Ticket) -> None:
        job = ticket.job
        seed = job.sampling.seed
        generator = None
        if job.sampling.temperature > 0:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        row = _Row(ticket, generator, job.terms)
        # Without the model's config every layer keeps its whole past: a sliding-window layer's own cache keeps only
        # the window and could not share the batch's columns and mask; the model applies the window in its mask.
        cache = DynamicCache()
        with ExitStack() as stack:
            decisions = None
            if job.program is not None and job.span is not None:
                decisions = stack.enter_context(steer_program(self.model, job.program, [job.span]))
            logits = self._forward([(job.terms, job)], torch.tensor([job.prompt]), cache)
        if job.program is not None and decisions is not None:
            row.decision, row.terms = _decided(job.program, decisions, job.terms)
        done = self._emit(row, logits[0])
        if done is not None:
            ticket.send(done)
        else:
            with self._cond:
                self._kv.join(KVBatch.from_cache(cache))
                self._rows.append(row)

    def _decode(self) -> None:
        kv = self._kv
        ids = torch.tensor([[row.tokens[-1]] for row in self._rows])
        mask = torch.cat([kv.mask, torch.ones((kv.rows, 1), dtype=kv.mask.dtype)], dim=1)
        positions = kv.mask.sum(dim=1, keepdim=True)  # real tokens already cached = this token's position
        cache = kv.as_cache()
        logits = self._forward([(row.terms, row.ticket.job) for row in self._rows], ids,
                               cache, attention_mask=mask.to(self._device), position_ids=positions.to(self._device))
        kv.absorb(cache, 1)
        finals = [(row, self._emit(row, row_logits)) for row, row_logits in zip(self._rows, logits, strict=True)]
        self._forget(lambda row: row.done)  # before the last events, so that a finished request holds no row
        for row, done in finals:
            if done is not None:
                row.ticket.send(done)

    def _emit(self, row: _Row, logits: torch.Tensor) -> Done | None:
        """Sample the row's next token and send its new text; the final event, when this was the last token."""
        sampling = row.ticket.job.sampling
        token = _choose(logits, sampling, row.generator)
        row.sampled += 1
        finished = None
        if token in self.eos and not sampling.ignore_eos:
            finished = "stop"
        else:
            row.tokens.append(token)
        text = str(self.tokenizer.decode(row.tokens, skip_special_tokens=True))
        cut = min((i for i in (text.find(s) for s in sampling.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, finished = text[:cut], "stop"
        elif finished is None and row.sampled >= sampling.max_tokens:
            finished = "length"
        ready = text if finished else _settled(text, sampling.stop)
        if len(ready) > row.sent or finished is None:
            row.ticket.send(Chunk(ready[row.sent:], token))
            row.sent = max(row.sent, len(ready))
        if finished is None:
            return None
        row.done = True
        return Done(finished, len(row.ticket.job.prompt), row.sampled, tuple(row.tokens), row.decision)


def _decided(program: ConditionalProgram, decisions: Decisions,
             terms: tuple[RowTerm, ...]) -> tuple[Decision, tuple[RowTerm, ...]]:
    """The prefill's decision, and the terms that apply it to generated tokens (every one of them is an answer
    token, so ``turn``, ``answer`` and ``all`` programs steer all of them; ``prompt`` ones none)."""
    held = {name: bool(rows[0]) for name, rows in decisions.held.items()}
    gates = {name: bool(rows[0]) for name, rows in decisions.gates.items()}
    if program.positions not in ("prompt", "last_prompt"):
        terms += tuple(row_term(b.vector, b.strength, positions="answer") for b in program.behaviours
                       if gates.get(b.name))
    return Decision(held, gates), terms


def _settled(text: str, stops: tuple[str, ...]) -> str:
    """The part of ``text`` that can be sent now: not a half-decoded character, not the start of a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:size]):
                end -= size
                break
    return text[:end]


def _choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    if sampling.temperature <= 0 or generator is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.cpu() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = ordered.cumsum(dim=0) - ordered >= sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order, ordered.masked_fill(drop, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))

