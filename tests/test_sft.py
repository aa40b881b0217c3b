"""LoRA fine-tuning beside PAS on a tiny model: the targets, the loss, training, the adapter file, and ``--compare sft``
testing on exactly PAS's test items."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import build_model, build_tokenizer

from steerlab.data.items import MCItem, shuffle_choices
from steerlab.data.prompts import PromptStyle, encode, encode_continuation, lettered_prompt, question_text
from steerlab.experiment.config import RunConfig
from steerlab.experiment.report import render_markdown
from steerlab.experiment.runner import run_task
from steerlab.finetune.lora import (
    LoraSettings,
    choice_predictions,
    example_losses,
    fit_lora,
    load_fit,
    training_examples,
)
from steerlab.methods.pas import TaskFormat
from steerlab.runtime.scoring import letter_token_ids

STYLE = PromptStyle(chat=True)
WORDS = [f"w{i}" for i in range(11, 60)]


def toy_items(n: int, seed: int = 0) -> list[MCItem]:
    rng = random.Random(seed)
    return [MCItem(f"i{k}", " ".join(rng.choice(WORDS) for _ in range(4)),
                   tuple(" ".join(rng.choice(WORDS) for _ in range(2)) for _ in range(2)), k % 2)
            for k in range(n)]


def test_examples_are_the_scored_prompt_with_the_correct_answer() -> None:
    tok, items = build_tokenizer(), toy_items(4)
    for ex, item in zip(training_examples(tok, items, TaskFormat("likelihood", STYLE)), items, strict=True):
        prompt, answer = encode_continuation(tok, STYLE.render(tok, question_text(item.question)),
                                             item.choices[item.answer], templated=True)
        assert (ex.ids, ex.start, ex.targets) == (tuple(prompt + answer), len(prompt), tuple((t,) for t in answer))
    letters = letter_token_ids(tok, ["A", "B"])
    for ex, item in zip(training_examples(tok, items, TaskFormat("letters", STYLE)), items, strict=True):
        prompt = encode(tok, STYLE.render(tok, lettered_prompt(item.question, item.choices)), templated=True)
        assert (ex.ids, ex.start, ex.targets) == (tuple(prompt), len(prompt), (tuple(letters[item.answer]),))


def test_batched_loss_equals_a_direct_cross_entropy_per_example() -> None:
    model, tok, items = build_model("llama"), build_tokenizer(), toy_items(5)
    for scoring in ("likelihood", "letters"):
        examples = training_examples(tok, items, TaskFormat(scoring, STYLE))  # type: ignore[arg-type]
        with torch.no_grad():
            batched = example_losses(model, examples)
            for k, ex in enumerate(examples):
                logits = model(torch.tensor([ex.ids])).logits[0].double()
                rows = logits[ex.start - 1:ex.start - 1 + len(ex.targets)]
                if scoring == "likelihood":
                    direct = F.cross_entropy(rows, torch.tensor([t[0] for t in ex.targets]))
                else:
                    probs = torch.softmax(rows[0], dim=-1)
                    direct = -torch.log(probs[list(ex.targets[0])].sum())
                assert float(batched[k]) == pytest.approx(float(direct), rel=1e-4)


def test_training_lowers_the_loss_and_the_adapter_round_trips(tmp_path: Path) -> None:
    model, tok, items = build_model("llama"), build_tokenizer(), toy_items(24)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    fmt = TaskFormat("likelihood", STYLE)
    fit = fit_lora(model, tok, items[:16], items[16:], fmt,
                   LoraSettings(learning_rates=(3e-2,), max_epochs=3, batch_size=8))
    losses = [row["train_loss"] for row in fit.report.grid]
    assert losses[2] < losses[0] - 0.2 and losses[1] < losses[0]  # measured 4.66 -> 4.0x
    examples = training_examples(tok, items[:16], fmt)
    with torch.no_grad():
        assert float(example_losses(fit.model, examples).mean()) < float(example_losses(model, examples).mean()) - 0.2
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the base is untouched
    # llama: PEFT's default targets are q_proj and v_proj; rank 8 on 3 layers of width 32 (k/v width 16)
    assert fit.report.trainable_parameters == 3 * (8 * (32 + 32) + 8 * (32 + 16))
    fit.save_adapter(tmp_path)
    assert fit.report.adapter_bytes == (tmp_path / "adapter_model.safetensors").stat().st_size
    reloaded = load_fit(model, tmp_path, fit.report)
    ids = torch.tensor([list(examples[0].ids)])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(ids).logits, fit.model(ids).logits)
        assert not torch.allclose(model(ids).logits, fit.model(ids).logits)
    assert choice_predictions(reloaded.model, tok, items, fmt) == choice_predictions(fit.model, tok, items, fmt)


def test_compare_sft_tests_on_pas_items_and_runs_pas_on_the_tuned_model(tmp_path: Path) -> None:
    model, tok, items = build_model("llama"), build_tokenizer(), toy_items(40)
    config = RunConfig(task="toy", methods=("caa",), layers=(0, 1), strengths=(0.5, 2.0), n_train=12, n_val=6,
                       n_test=10, random_directions=2, icl_k=1, scoring="likelihood", compare_sft=True)
    result = run_task(model, tok, items, config, out_dir=tmp_path)
    assert result.sft is not None and result.report.sft is not None
    comparison = result.report.sft
    pas = result.report.chosen.seeds[0]
    assert comparison.test_ids == [pas.test_ids]
    assert comparison.pas.correct == [pas.steered]
    # LoRA's test accuracy is the fitted model's answers on those same items, scored as PAS scores them.
    by_id = {item.id: item for item in items}
    test = [shuffle_choices(by_id[i], 0) for i in pas.test_ids]  # as the run showed them (seed 0)
    report = comparison.lora_reports[0]
    fit = load_fit(model, next(tmp_path.glob(".steerlab-cache/*.adapter")), report)
    picks = choice_predictions(fit.model, tok, test, TaskFormat("likelihood", STYLE))
    assert comparison.lora.correct == [[float(p == i.answer) for p, i in zip(picks, test, strict=True)]]
    assert comparison.lora.delta.value == pytest.approx(
        sum(a - b for a, b in zip(comparison.lora.correct[0], pas.baseline, strict=True)) / len(test))
    assert (report.learning_rate, report.epochs) in {(r["learning_rate"], r["epoch"]) for r in report.grid}
    assert len(comparison.lora_pas.correct[0]) == len(test)
    assert comparison.pas_on_lora[0]["method"] == "caa"
    assert "## PAS, LoRA and LoRA + PAS" in render_markdown(result.report.to_dict())
    # A second identical run reloads the adapter instead of training again, and reports the same numbers.
    again = run_task(model, tok, items, config, out_dir=tmp_path)
    assert again.report.sft is not None and again.report.sft.summary() == comparison.summary()


def test_cli_retain_and_compare_write_the_report_adapter_and_vector(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from steerlab.cli.main import main
    from steerlab.core.vector import SteeringVector

    model_dir = tmp_path / "tiny"
    build_model("llama").save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"id": i.id, "question": i.question, "choices": list(i.choices),
                                        "answer": i.answer}) + "\n" for i in toy_items(40)))
    out = tmp_path / "run"
    common = ["run", "--model", str(model_dir), "--data", str(data), "--method", "caa", "--layers", "0,1",
              "--strengths", "0.5,2", "--n-train", "12", "--n-val", "6", "--n-test", "10", "--random-directions", "2",
              "--scoring", "likelihood", "--out", str(out), "--quiet"]
    assert main([*common, "--retain", "copa:8", "--compare", "sft"]) == 0
    printed = capsys.readouterr().out
    assert "retention: " in printed and "lora+pas" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["retention"]["task"] == "copa" and report["retention"]["items"] == 8
    assert [a["name"] for a in report["sft"]["arms"]] == ["pas", "lora", "lora+pas"]
    assert (out / "sft" / "adapter" / "adapter_model.safetensors").stat().st_size == \
        report["sft"]["arms"][1]["bytes_stored"]
    assert SteeringVector.load(out / "sft" / "pas-on-lora.safetensors").recipe is not None
    assert "## Retention" in (out / "report.md").read_text()
    assert main([*common, "--retain", str(data)]) == 2  # retention on the task the steering was selected on
    assert "retention is measured on a task the steering was not selected on" in capsys.readouterr().err


def test_the_side_by_side_text_names_the_runs_own_seeds() -> None:
    from steerlab.experiment.compare import markdown

    estimate = {"value": 0.1, "low": None, "high": None}
    arm = {"name": "pas", "test_accuracy": estimate, "delta": estimate, "seconds": 1.0, "bytes_stored": 10}
    point = {"method": "caa", "layers": [1], "strength": 2.0, "positions": "answer", "verdict": "directional",
             "delta_vs_lora": estimate}
    text = markdown({"arms": [arm], "pas_minus_lora": estimate,
                     "lora": [{"learning_rate": 1e-3, "epochs": 2, "val_accuracy": 0.5}] * 2,
                     "pas_on_lora": [{**point, "seed": 5}, {**point, "seed": 6}]})  # --seed 5 --seeds 2
    assert "LoRA chosen on validation: seed 5: rate 0.001, 2 epoch(s), validation 0.500; seed 6: rate" in text
    assert "PAS on top of LoRA: seed 5: caa at layers [1]" in text
