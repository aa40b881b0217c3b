"""Hub folders: a vector chosen by a run survives save_pretrained / from_pretrained exactly, its card states the
facts of its file and report, and bad folders are clear errors. (push_to_hub uploads this same folder; offline here.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_model, build_tokenizer
from test_experiment import small_config, toy_items

from steerlab import from_pretrained, save_pretrained, steer
from steerlab.core.vector import SteeringVector
from steerlab.errors import VectorFileError
from steerlab.experiment.runner import run_task
from steerlab.interop.hub import CARD_FILE, VECTOR_FILE, Effect, model_card

COMMAND = "steerlab run --task toy.jsonl --method caa --layers 0,1"


@pytest.fixture(scope="module")
def chosen() -> tuple[SteeringVector, Effect]:
    result = run_task(build_model("llama"), build_tokenizer(), toy_items(), small_config())
    return result.vectors["caa"], Effect.from_report(result.report.to_dict())


def test_a_folder_round_trip_is_exact_and_steers_the_same(chosen: tuple[SteeringVector, Effect],
                                                          tmp_path: Path) -> None:
    vector, effect = chosen
    folder = save_pretrained(vector, tmp_path / "a", effect=effect, command=COMMAND)
    loaded = from_pretrained(folder)
    assert loaded.layers.keys() == vector.layers.keys()
    assert all(torch.equal(loaded.layers[i], vector.layers[i]) for i in vector.layers)
    assert loaded.recipe == vector.recipe and loaded.recipe is not None
    assert loaded.metadata["command"] == COMMAND and Effect(**loaded.metadata["effect"]) == effect
    # The same inputs give the same bytes: a re-push changes nothing.
    again = save_pretrained(vector, tmp_path / "b", effect=effect, command=COMMAND)
    for name in (VECTOR_FILE, CARD_FILE):
        assert (folder / name).read_bytes() == (again / name).read_bytes()
    model, tok = build_model("llama"), build_tokenizer()
    ids = tok(["w20 w21 w22 w23"], return_tensors="pt")
    with steer(model, vector):
        expected = model(**ids).logits
    with steer(model, loaded):
        assert torch.equal(model(**ids).logits, expected)
    assert from_pretrained(folder / VECTOR_FILE).recipe == vector.recipe  # the file itself loads too


def test_the_card_states_the_recipe_the_effect_and_the_command(chosen: tuple[SteeringVector, Effect],
                                                                tmp_path: Path) -> None:
    vector, effect = chosen
    card = (save_pretrained(vector, tmp_path, effect=effect, command=COMMAND, repo_id="me/toy-caa")
            / CARD_FILE).read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "steerlab" and "steering-vector" in front["tags"]
    assert vector.metadata["model"] == "LlamaForCausalLM" and "base_model" not in front  # a class name, no repo id
    for model, base in (("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
                        (str(tmp_path), None), ("/models/my: model", None)):
        named = SteeringVector(dict(vector.layers), {**vector.metadata, "model": model})
        assert yaml.safe_load(model_card(named).split("---\n")[1]).get("base_model") == base
    recipe = vector.recipe
    assert recipe is not None
    rows = dict(line.strip("| ").split(" | ", 1) for line in card.splitlines()
                if line.startswith("| ") and line.count("|") == 3)
    assert rows["task"] == "toy" and rows["method"] == "caa"
    assert rows["layers"] == ", ".join(map(str, recipe.layers))
    assert rows["strength"] == f"{recipe.strength:g} ({recipe.unit})" and rows["positions"] == recipe.positions
    assert effect.low is not None and effect.high is not None
    assert rows["measured effect"] == (f"test accuracy delta (steered - unsteered): {effect.value:+.3f} "
                                       f"[95% CI {effect.low:+.3f}, {effect.high:+.3f}]; verdict: {effect.verdict}")
    assert f"```bash\n{COMMAND}\n```" in card and 'from_pretrained("me/toy-caa")' in card


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(VectorFileError, match=re.escape(f"{tmp_path} has no {VECTOR_FILE}")):
        from_pretrained(tmp_path)
    with pytest.raises(VectorFileError, match=re.escape("./missing/folder does not exist")):
        from_pretrained("./missing/folder")
    (tmp_path / VECTOR_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(VectorFileError, match=re.escape(VECTOR_FILE)):
        from_pretrained(tmp_path)
