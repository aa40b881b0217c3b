"""The playground page at ``/`` in a real headless Chromium: pick a vector, move the slider, generate; the page
shows the unsteered and the steered answer, each equal to what the API returns for that request.

Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/setup.sh installs them when it runs as root) and
``selenium`` (the dev extra); skipped, saying so, where they are missing. The model is a tiny one: the page is
what is tested here.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from steerlab.core.vector import SteeringVector
from steerlab.serve.launch import background_server, build_service
from steerlab.serve.settings import ServeSettings
from tests.conftest import HIDDEN, build_model, build_tokenizer

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="needs Debian's chromium and chromium-driver (apt-get install)")


def _api(url: str, steering: list[dict[str, Any]] | None, prompt: str, max_tokens: int) -> str:
    body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, **({"steering": steering} if steering else {})}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.loads(response.read())["choices"][0]["message"]["content"])


def test_the_page_streams_plain_and_steered_answers_side_by_side(tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    for name, seed in (("alpha", 0), ("beta", 1)):
        direction = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))
        SteeringVector({1: direction}).save(tmp_path / f"{name}.safetensors")
    model = build_model("llama")
    model.generation_config.eos_token_id = None
    service = build_service(model, build_tokenizer(), tmp_path, ServeSettings(model_id="tiny"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    with background_server(service) as url:
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
        try:
            browser.get(f"{url}/")
            wait = WebDriverWait(browser, 30)
            wait.until(lambda b: len(Select(b.find_element(By.ID, "vector")).options) == 2)
            Select(browser.find_element(By.ID, "vector")).select_by_value("beta")
            browser.execute_script("const s = document.getElementById('strength'); s.value = '3.5';"
                                   "s.dispatchEvent(new Event('input'));")
            prompt = browser.find_element(By.ID, "prompt")
            prompt.clear()
            prompt.send_keys("w5 w6 w7")
            browser.find_element(By.ID, "max-tokens").clear()
            browser.find_element(By.ID, "max-tokens").send_keys("12")
            browser.find_element(By.ID, "go").click()
            wait.until(lambda b: b.find_element(By.ID, "go").is_enabled()
                       and b.find_element(By.ID, "steered").text != "")
            shown = {side: browser.find_element(By.ID, side).text for side in ("plain", "steered")}
            assert browser.find_element(By.ID, "strength-value").text == "3.5"
            assert browser.find_element(By.ID, "status").text == ""
        finally:
            browser.quit()
        plain = _api(url, None, "w5 w6 w7", 12)
        steered = _api(url, [{"vector": "beta", "strength": 3.5}], "w5 w6 w7", 12)
    assert shown == {"plain": plain.strip(), "steered": steered.strip()}  # the DOM's text is whitespace-trimmed
    assert plain != steered
