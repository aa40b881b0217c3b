"""Conditional programs in requests (``"program": NAME``): the server's answer and gate for a prompt are exactly
``generate_conditional``'s, alone or batched with other requests; a row whose gate stays off answers as the plain
model does. Tiny model, a program whose condition holds on chosen prompts."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from steerlab.conditional.gating import generate_conditional
from steerlab.conditional.program import Behaviour, Condition, ConditionalProgram
from steerlab.conditional.reading import read_prompts
from steerlab.conditional.rules import parse_rule
from steerlab.core.vector import SteeringVector
from steerlab.serve.launch import background_server, build_service
from steerlab.serve.settings import ServeSettings
from tests.conftest import HIDDEN, build_model, build_tokenizer

PROMPTS = ["w5 w6 w7 w8 w9 w10", "w30", "w40 w41 w42", "w50 w51"]
MATCHING = (0, 2)  # the prompts the program's condition holds on
TOKENS = 8


def _program(model: Any, tok: Any) -> ConditionalProgram:
    reads = read_prompts(model, tok, PROMPTS, [1])[1].double()
    targets = torch.tensor([1.0 if i in MATCHING else -1.0 for i in range(len(PROMPTS))], dtype=torch.float64)
    direction = (torch.linalg.pinv(reads) @ targets).float()  # projection +1 on the matching prompts, -1 elsewhere
    behaviour = SteeringVector({2: 4 * torch.randn(HIDDEN, generator=torch.Generator().manual_seed(4))})
    return ConditionalProgram((Condition("topic", {1: direction}, "cosine", 0.0, ">"),),
                              (Behaviour("push", behaviour, 1.5),), (parse_rule("if topic then push"),),
                              positions="answer")


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _ask(url: str, prompt: str, program: str | None) -> dict[str, Any]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": TOKENS,
            "temperature": 0, **({"program": program} if program else {})}
    status, reply = _post(url, body)
    assert status == 200, reply
    return reply


def test_programs_gate_each_request_as_generate_conditional_does(tmp_path: Path) -> None:
    model, tok = build_model("llama"), build_tokenizer()
    model.generation_config.eos_token_id = None
    program = _program(model, tok)
    program.save(tmp_path / "topic-push.safetensors")
    SteeringVector({1: torch.ones(HIDDEN)}).save(tmp_path / "plain-vector.safetensors")
    expected = [generate_conditional(model, tok, [prompt], program, max_new_tokens=TOKENS) for prompt in PROMPTS]
    assert [out.gates["push"] for out in expected] == [[i in MATCHING] for i in range(len(PROMPTS))]
    with background_server(build_service(model, tok, tmp_path, ServeSettings(model_id="tiny"))) as url:
        alone = [_ask(url, prompt, "topic-push") for prompt in PROMPTS]
        plain = [_ask(url, prompt, None) for prompt in PROMPTS]
        with ThreadPoolExecutor(8) as pool:  # every prompt with and without the program, all at once
            batched = list(pool.map(lambda job: _ask(url, *job), [(p, "topic-push") for p in PROMPTS] +
                                    [(p, None) for p in PROMPTS]))
        refusals = [
            _post(url, {"model": "tiny", "messages": [{"role": "user", "content": "w1"}], "program": "plain-vector"}),
            _post(url, {"model": "tiny", "messages": [{"role": "user", "content": "w1"}],
                        "steering": [{"vector": "topic-push"}]}),
            _post(url, {"model": "tiny", "program": "topic-push", "messages": [
                {"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"},
                {"role": "user", "content": "w3"}]}),
        ]
    texts = [reply["choices"][0]["message"]["content"] for reply in alone]
    assert texts == [out.texts[0] for out in expected]
    assert [reply["conditional"] for reply in alone] == [
        {"program": "topic-push", "held": {"topic": i in MATCHING}, "gates": {"push": i in MATCHING}}
        for i in range(len(PROMPTS))]
    plain_texts = [reply["choices"][0]["message"]["content"] for reply in plain]
    for i in range(len(PROMPTS)):  # gate off: the plain model's answer; gate on: a different one
        assert (texts[i] == plain_texts[i]) == (i not in MATCHING)
    assert [reply["choices"][0]["message"]["content"] for reply in batched] == texts + plain_texts
    assert [code for code, _ in refusals] == [400, 400, 400]
    assert "is a steering vector, not a conditional program" in refusals[0][1]["error"]["message"]
    assert "is a conditional program: send it as 'program'" in refusals[1][1]["error"]["message"]
    assert "reads one user turn" in refusals[2][1]["error"]["message"]
