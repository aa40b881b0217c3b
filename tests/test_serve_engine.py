"""The continuous batcher (steerlab.serve.engine) and its KV batch, on a tiny model: tokens against transformers'
own generate, batched against alone, cancellation, overload, stop strings, sampling, shutdown."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tf

from steerlab.core.hooks import steer
from steerlab.core.rows import RowTerm, row_term
from steerlab.core.vector import SteeringVector
from steerlab.models import cache_kwarg
from steerlab.serve.engine import Chunk, Done, Engine, Event, Failed, Job, Overloaded, Sampling, Ticket
from steerlab.serve.kv import KVBatch
from tests.conftest import HIDDEN, build_model, build_tokenizer, random_ids

STEPS = 12


# gemma2's sliding window (4 tokens) is shorter than every request: its layers' own caches would keep only the window.
@pytest.fixture(scope="module", params=["llama", "gemma2"])
def engine(request: pytest.FixtureRequest) -> Any:
    model, tok = build_model(request.param), build_tokenizer()
    model.generation_config.eos_token_id = None  # random weights: never stop early, every step is compared
    engine = Engine(model, tok, max_batch=8, max_queue=16)
    engine.start()
    yield engine
    engine.stop()


def _vector(seed: int) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: 2 * torch.randn(HIDDEN, generator=generator) for layer in (0, 1)})


class Collect:
    """A sink that keeps a request's events."""

    def __init__(self, on_chunk: Callable[[int], None] | None = None) -> None:
        self.events: list[Event] = []
        self.on_chunk = on_chunk

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Chunk) and self.on_chunk is not None:
            self.on_chunk(len(self.events))

    @property
    def done(self) -> Done:
        last = self.events[-1]
        assert isinstance(last, Done), last
        return last

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Chunk))


def _job(index: int, terms: tuple[RowTerm, ...] = (), **sampling: Any) -> Job:
    """Request ``index``: a random prompt of 4 to 8 tokens."""
    return Job(tuple(random_ids(4 + index % 5, seed=100 + index)), Sampling(**{"max_tokens": STEPS, **sampling}),
               terms)


def _run(engine: Engine, jobs: list[Job]) -> list[Collect]:
    sinks = [Collect() for _ in jobs]
    tickets = [engine.submit(job, sink) for job, sink in zip(jobs, sinks, strict=True)]
    for ticket in tickets:
        assert ticket.finished.wait(60)
    return sinks


def _reference(model: tf.PreTrainedModel, job: Job, vector: SteeringVector | None, strength: float) -> list[int]:
    ids = torch.tensor([job.prompt])
    kwargs: dict[str, Any] = dict(max_new_tokens=STEPS, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        if vector is None:
            out = model.generate(ids, **kwargs)
        else:
            with steer(model, vector, strength, positions="answer"):
                out = model.generate(ids, **kwargs)
    return out[0, len(job.prompt):].tolist()


def test_alone_tokens_equal_transformers_generate(engine: Engine) -> None:
    vector = _vector(1)
    plain, steered = _job(0), _job(0, (row_term(vector, 1.5, positions="answer"),))
    got = [s.done.tokens for s in (_run(engine, [plain])[0], _run(engine, [steered])[0])]
    assert list(got[0]) == _reference(engine.model, plain, None, 0.0)
    assert list(got[1]) == _reference(engine.model, steered, vector, 1.5)
    assert got[0] != got[1]


def test_batched_requests_get_what_they_get_alone(engine: Engine) -> None:
    # Six requests with four steering set-ups; three join while the first three are decoding.
    a, b = _vector(2), _vector(3)
    specs: list[tuple[RowTerm, ...]] = [
        (), (row_term(a, 1.0),), (row_term(b, -1.5, layers=[1], positions="answer"),),
        (row_term(a, 0.5), row_term(b, 0.5, positions="prompt")), (), (row_term(a, 1.0),),
    ]
    jobs = [_job(seed, terms) for seed, terms in enumerate(specs)]
    alone = [_run(engine, [job])[0].done.tokens for job in jobs]
    late: list[Ticket] = []
    late_sinks = [Collect() for _ in jobs[3:]]
    joined = threading.Event()

    def join_late(count: int) -> None:
        if count == 3 and not joined.is_set():  # called on the worker thread, between two decode steps
            joined.set()
            late.extend(engine.submit(job, sink) for job, sink in zip(jobs[3:], late_sinks, strict=True))

    early_sinks = [Collect(join_late), Collect(), Collect()]
    early = [engine.submit(job, sink) for job, sink in zip(jobs[:3], early_sinks, strict=True)]
    for ticket in early:
        assert ticket.finished.wait(60)
    for ticket in late:
        assert ticket.finished.wait(60)
    assert joined.is_set()
    batched = [sink.done.tokens for sink in early_sinks + late_sinks]
    assert batched == alone
    assert len(set(alone)) >= 4  # not a trivial batch: the set-ups lead to different answers


def test_an_unsteered_row_ignores_its_neighbours_steering(engine: Engine) -> None:
    vector = _vector(4)
    quiet = _job(7)
    with_steered = _run(engine, [_job(8, (row_term(vector, 3.0),)), quiet, _job(9, (row_term(vector, -3.0),))])
    with_plain = _run(engine, [_job(8), quiet, _job(9)])
    assert with_steered[1].done.tokens == with_plain[1].done.tokens == _run(engine, [quiet])[0].done.tokens
    assert with_steered[0].done.tokens != with_plain[0].done.tokens


def test_a_cancelled_request_leaves_the_others_intact(engine: Engine) -> None:
    jobs = [_job(10), _job(11, (row_term(_vector(5), 1.0),)), _job(12)]
    alone = [_run(engine, [job])[0].done.tokens for job in jobs]
    tickets: list[Ticket] = []
    sinks = [Collect(lambda count: tickets[0].cancel() if count == 2 else None), Collect(), Collect()]
    tickets.extend(engine.submit(job, sink) for job, sink in zip(jobs, sinks, strict=True))
    for ticket in tickets:
        assert ticket.finished.wait(60)
    assert not any(isinstance(e, Done) for e in sinks[0].events) and len(sinks[0].events) <= 3
    assert [sinks[1].done.tokens, sinks[2].done.tokens] == alone[1:]
    assert engine.load() == (0, 0)


def test_stop_strings_and_finish_reasons(engine: Engine) -> None:
    tok = engine.tokenizer
    full = _run(engine, [_job(13)])[0]
    assert (full.done.reason, full.done.completion_tokens, len(full.done.tokens)) == ("length", STEPS, STEPS)
    assert full.text == tok.decode(list(full.done.tokens), skip_special_tokens=True)
    stop = tok.decode([full.done.tokens[4]])
    cut = full.text.index(stop)
    stopped = _run(engine, [_job(13, stop=(stop,))])[0]
    assert (stopped.done.reason, stopped.text) == ("stop", full.text[:cut])
    assert stopped.done.completion_tokens <= 5


def test_sampling_is_seeded_and_top_p_keeps_the_head(engine: Engine) -> None:
    greedy = _run(engine, [_job(14)])[0].done.tokens
    first, again, other, narrow = _run(engine, [_job(14, temperature=1.5, seed=1), _job(14, temperature=1.5, seed=1),
                                               _job(14, temperature=1.5, seed=2),
                                               _job(14, temperature=1.5, top_p=1e-6, seed=3)])
    assert first.done.tokens == again.done.tokens != other.done.tokens
    assert first.done.tokens != greedy
    assert narrow.done.tokens == greedy  # a vanishing nucleus is the argmax token alone


def test_overload_and_bad_jobs_are_refused() -> None:
    model, tok = build_model("llama"), build_tokenizer()
    engine = Engine(model, tok, max_batch=1, max_queue=1)  # not started: nothing leaves the queue
    engine.submit(_job(0), Collect())
    engine.submit(_job(1), Collect())
    with pytest.raises(Overloaded, match=r"0 requests running and 2 waiting \(limits 1 and 1\)"):
        engine.submit(_job(2), Collect())
    with pytest.raises(Exception, match="max_tokens must be >= 1"):
        engine.submit(_job(3, max_tokens=0), Collect())


def test_the_end_token_stops_a_request_unless_ignored() -> None:
    model, tok = build_model("llama"), build_tokenizer()
    model.generation_config.eos_token_id = None
    first = _run_alone(model, tok, _job(15))[0]
    model.generation_config.eos_token_id = first  # the greedy first token now ends the sequence
    stopped, ignored = _run_alone(model, tok, _job(15)), _run_alone(model, tok, _job(15, ignore_eos=True))
    assert stopped == () and len(ignored) == STEPS and ignored[0] == first


def _run_alone(model: tf.PreTrainedModel, tok: Any, job: Job) -> tuple[int, ...]:
    engine = Engine(model, tok)
    engine.start()
    try:
        return _run(engine, [job])[0].done.tokens
    finally:
        engine.stop()


@pytest.mark.parametrize("drain", [True, False])
def test_shutdown_drains_or_fails_admitted_requests(drain: bool) -> None:
    model, tok = build_model("llama"), build_tokenizer()
    model.generation_config.eos_token_id = None
    engine = Engine(model, tok)
    sinks = [Collect(), Collect()]
    for seed, sink in enumerate(sinks):
        engine.submit(_job(seed, max_tokens=40), sink)
    engine.start()
    engine.stop(drain=drain)
    for sink in sinks:
        last = sink.events[-1]
        assert isinstance(last, Done if drain else Failed)
    if drain:
        assert [s.done.completion_tokens for s in sinks] == [40, 40]
    with pytest.raises(Overloaded, match="shutting down"):
        engine.submit(_job(0), Collect())


def test_kv_batch_join_and_keep_match_separate_caches() -> None:
    # One decode step over a joined, left-padded batch against each row decoded alone.
    model = build_model("llama")
    prompts = [random_ids(n, seed=n) for n in (6, 3, 5)]
    alone, parts = [], []
    for prompt in prompts:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
            parts.append(KVBatch.from_cache(out.past_key_values))
            step = model(input_ids=torch.tensor([[30]]), use_cache=True, **cache_kwarg(model, out.past_key_values))
        alone.append(step.logits[0, -1])
    batch = KVBatch.empty()
    for part in parts:
        batch.join(part)
    assert batch.mask.tolist() == [[1] * 6, [0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    assert torch.equal(batch.layers[0][0][1, :, :3], torch.zeros_like(batch.layers[0][0][1, :, :3]))
    batch.keep([2, 1])  # row 0 leaves: the first column is padding everywhere and is cut
    assert batch.mask.tolist() == [[1] * 5, [0, 0, 1, 1, 1]]
    cache = batch.as_cache()
    mask = torch.cat([batch.mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[30], [30]]), attention_mask=mask, use_cache=True,
                       position_ids=batch.mask.sum(dim=1, keepdim=True), **cache_kwarg(model, cache)).logits[:, -1]
    batch.absorb(cache, 1)
    assert batch.mask.shape == (2, 6) and batch.layers[0][0].shape[2] == 6
    # Padded attention sums the same terms in another order: equal to float rounding, not bit for bit.
    torch.testing.assert_close(logits[0], alone[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1], alone[1], rtol=1e-5, atol=1e-5)
