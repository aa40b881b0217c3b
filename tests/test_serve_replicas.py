"""``steerlab serve --replicas 2`` on a local Ray: two model copies behind Ray Serve's proxy, each with its own
batcher; both answer, and each answers exactly what the single-process server answers. Marked ``real`` (a Ray
start and two replica processes take longer than CI's share); the model is a tiny one saved to a folder."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from steerlab.core.vector import SteeringVector
from steerlab.serve.launch import background_server, build_service, free_port
from steerlab.serve.settings import ServeSettings
from tests.conftest import HIDDEN, build_model, build_tokenizer

pytestmark = pytest.mark.real


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return dict(json.loads(response.read()))


def _chat(url: str, steering: list[dict[str, Any]] | None) -> str:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "w3 w4"}], "max_tokens": 8, "temperature": 0,
            **({"steering": steering} if steering else {})}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(json.loads(response.read())["choices"][0]["message"]["content"])


def test_two_replicas_both_serve_and_agree_with_one_process(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve")
    from steerlab.serve.replicas import start_replicas, stop_replicas

    model, tok = build_model("llama"), build_tokenizer()
    model.generation_config.eos_token_id = None
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    vectors = tmp_path / "vectors"
    vectors.mkdir()
    SteeringVector({1: torch.randn(HIDDEN, generator=torch.Generator().manual_seed(0))}).save(vectors / "a.safetensors")
    settings = ServeSettings(model_id="tiny")
    requests = [None, [{"vector": "a", "strength": 4.0}]] * 8
    with background_server(build_service(model, tok, vectors, settings)) as url:
        expected = [_chat(url, steering) for steering in requests[:2]]
    assert expected[0] != expected[1]
    url = start_replicas(str(tmp_path / "tiny"), vectors, settings, replicas=2, port=free_port(),
                         cpus_per_replica=0.5)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda steering: _chat(url, steering), requests))
            replicas = {health["replica"] for health in pool.map(lambda _: _get(f"{url}/health"), range(32))}
    finally:
        stop_replicas()
    assert answers == expected * 8
    assert len(replicas) == 2
