"""The server's guard rails on a tiny model (fast): overload (429), timeout (504), chunked oversized bodies (413),
graceful shutdown, the vector folder's checks, the playground page, and the CLI's refusal to listen unprotected."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import torch

from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError, VectorFileError
from steerlab.interop.llamacpp import export_gguf
from steerlab.serve.engine import Event, Job, Sampling
from steerlab.serve.launch import background_server, build_service
from steerlab.serve.service import Service
from steerlab.serve.settings import Limits, ServeSettings
from steerlab.serve.vectors import VectorLibrary
from tests.conftest import CHAT_TEMPLATE, DEPTH, HIDDEN, build_model, build_tokenizer

MODEL = "tiny"


def _vectors(folder: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    SteeringVector({1: torch.randn(HIDDEN, generator=generator)}).save(folder / "alpha.safetensors")
    export_gguf(SteeringVector({1: torch.randn(HIDDEN, generator=generator), 2: torch.randn(HIDDEN)}),
                folder / "beta.gguf")
    (folder / "notes.txt").write_text("not a vector: ignored")
    return folder


def _service(folder: Path, **limits: Any) -> Service:
    model, tok = build_model("llama"), build_tokenizer()
    model.generation_config.eos_token_id = None
    return build_service(model, tok, _vectors(folder), ServeSettings(model_id=MODEL, limits=Limits(**limits)))


def _hold(service: Service) -> threading.Event:
    """Block the engine's worker inside a running row until the returned gate is set."""
    gate, entered = threading.Event(), threading.Event()
    seen: list[Event] = []

    def sink(event: Event) -> None:
        seen.append(event)
        if len(seen) == 2:  # the second token: the row is in the batch, mid decode
            entered.set()
            gate.wait(30)

    service.engine.submit(Job((20, 21, 22), Sampling(max_tokens=3)), sink)
    assert entered.wait(30)
    return gate


def _until(done: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _idle(service: Service) -> None:
    _until(lambda: service.engine.load() == (0, 0))


def _post(url: str, body: bytes | Iterator[bytes], chunked: bool = False,
          path: str = "/v1/chat/completions") -> tuple[int, dict[str, str], Any]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", path, body, {"Content-Type": "application/json"}, encode_chunked=chunked)
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, dict(response.getheaders()), payload


def _chat(max_tokens: int = 4, **extra: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "w1 w2 w3"}],
                       "max_tokens": max_tokens, "temperature": 0, **extra}).encode()


def test_full_batch_and_queue_give_429_with_retry_after(tmp_path: Path) -> None:
    service = _service(tmp_path, max_batch=1, max_queue=0)
    with background_server(service) as url:
        gate = _hold(service)
        try:
            status, headers, body = _post(url, _chat())
            assert status == 429 and headers["retry-after"] == "1", body
            assert body["error"]["type"] == "rate_limit_error" and "1 requests running" in body["error"]["message"]
        finally:
            gate.set()
        _idle(service)
        status, _, body = _post(url, _chat())
        assert status == 200 and body["usage"]["completion_tokens"] == 4


def test_requests_the_model_cannot_take_get_400_and_the_server_keeps_serving(tmp_path: Path) -> None:
    service = _service(tmp_path)
    # Like Llama-2's and Mistral's templates: a conversation must not open with the assistant.
    service.tokenizer.chat_template = ("{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversation "
                                       "roles must alternate user/assistant') }}{% endif %}" + CHAT_TEMPLATE)
    opening = json.dumps({"model": MODEL, "messages": [{"role": "assistant", "content": "w1"}], "max_tokens": 2})
    empty = json.dumps({"model": MODEL, "prompt": "", "max_tokens": 2})
    with background_server(service) as url:
        status, _, body = _post(url, opening.encode())
        assert (status, body["error"]["param"]) == (400, "messages"), body
        assert "chat template refused these messages: Conversation roles must alternate" in body["error"]["message"]
        status, _, body = _post(url, empty.encode(), path="/v1/completions")
        assert (status, body["error"]["param"], body["error"]["message"]) == (400, "prompt", "the prompt has no tokens")
        status, _, body = _post(url, _chat(seed=2**64))
        assert (status, body["error"]["param"]) == (400, "seed"), body
        status, _, body = _post(url, _chat(seed=2**64 - 1, temperature=1.0))
        assert status == 200 and body["usage"]["completion_tokens"] == 4, body


def test_a_request_past_its_timeout_gets_504_and_frees_its_place(tmp_path: Path) -> None:
    service = _service(tmp_path, max_batch=1, max_queue=1, timeout_s=0.5)
    with background_server(service) as url:
        gate = _hold(service)
        try:
            status, _, body = _post(url, _chat())
            assert status == 504 and "longer than 0.5 s" in body["error"]["message"], body
        finally:
            gate.set()
        _idle(service)  # the timed-out request was cancelled: it holds no place
        assert _post(url, _chat())[0] == 200


def test_a_client_that_goes_away_has_its_request_dropped(tmp_path: Path) -> None:
    # Non-streaming: the handler notices the closed connection and cancels the queued request; it never runs.
    service = _service(tmp_path, max_batch=1, max_queue=2)
    with background_server(service) as url:
        gate = _hold(service)
        try:
            host, port = url.removeprefix("http://").split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connection.request("POST", "/v1/chat/completions", _chat(max_tokens=100),
                               {"Content-Type": "application/json"})
            _until(lambda: service.engine.load() == (1, 1))
            assert connection.sock is not None
            connection.sock.close()
            _until(lambda: service.engine._pending[0].cancelled)  # the handler polls its connection
        finally:
            gate.set()
        _idle(service)
        assert service.engine.cancelled == 1


def test_an_oversized_chunked_body_gets_413_as_json(tmp_path: Path) -> None:
    service = _service(tmp_path, max_body_bytes=1000)
    with background_server(service) as url:
        pieces = iter([b'{"model": "tiny", "messages": [{"role": "user", "content": "', b"w1 " * 500, b'"}]}'])
        status, _, body = _post(url, pieces, chunked=True)
        assert status == 413 and body["error"]["message"] == "the request body is over the limit of 1000 bytes"
        assert _post(url, _chat())[0] == 200


def test_shutdown_finishes_the_requests_in_flight(tmp_path: Path) -> None:
    service = _service(tmp_path, max_batch=1, max_queue=2)
    stack = ExitStack()
    url = stack.enter_context(background_server(service))
    gate = _hold(service)
    replies: list[tuple[int, dict[str, str], Any]] = []
    waiting = threading.Thread(target=lambda: replies.append(_post(url, _chat(max_tokens=30))))
    waiting.start()
    _until(lambda: service.engine.load() == (1, 1))  # the request is queued behind the held row
    closer = threading.Thread(target=stack.close)
    closer.start()  # shutdown begins while the request waits
    time.sleep(0.5)
    gate.set()
    waiting.join(60)
    closer.join(60)
    assert not closer.is_alive()
    status, _, body = replies[0]
    assert status == 200 and body["usage"]["completion_tokens"] == 30 and body["choices"][0]["finish_reason"] == \
        "length"
    with pytest.raises(OSError):
        _post(url, _chat())


def test_the_vector_folder_is_checked_at_start(tmp_path: Path) -> None:
    model = build_model("llama")
    library = VectorLibrary.load(_vectors(tmp_path), model)
    assert [(e.name, e.format, e.info()["layers"]) for e in library.entries()] == [("alpha", "steerlab", [1]),
                                                                                  ("beta", "gguf", [1, 2])]
    with pytest.raises(ConfigError, match=r"'\.\./alpha' is not a vector name"):
        library.get("../alpha")
    (tmp_path / "alpha.gguf").write_bytes((tmp_path / "beta.gguf").read_bytes())
    with pytest.raises(VectorFileError, match=r"alpha.safetensors: the name 'alpha' is taken by alpha.gguf"):
        VectorLibrary.load(tmp_path, model)
    (tmp_path / "alpha.gguf").unlink()
    SteeringVector({DEPTH: torch.ones(HIDDEN)}).save(tmp_path / "deep.safetensors")
    with pytest.raises(VectorFileError, match=rf"deep.safetensors: layer\(s\) \[{DEPTH}\] out of range"):
        VectorLibrary.load(tmp_path, model)
    (tmp_path / "deep.safetensors").unlink()
    SteeringVector({1: torch.ones(HIDDEN * 2)}).save(tmp_path / "wide.safetensors")
    with pytest.raises(VectorFileError, match=f"wide.safetensors: hidden size {HIDDEN * 2}, but the model has"):
        VectorLibrary.load(tmp_path, model)


def test_the_playground_page_is_served(tmp_path: Path) -> None:
    import urllib.request

    with background_server(_service(tmp_path)) as url, urllib.request.urlopen(f"{url}/", timeout=30) as page:
        html = page.read().decode()
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="strength" type="range"' in html and "/v1/chat/completions" in html and "/v1/steering/vectors" in html


def test_the_cli_refuses_to_listen_beyond_loopback_without_a_key(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from steerlab.cli.main import main

    assert main(["serve", "--vectors", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in capsys.readouterr().err
