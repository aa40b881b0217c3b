"""``steerlab condition train|eval|combine`` and ``steerlab generate --condition`` on a tiny saved model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_model, build_tokenizer

from steerlab.cli.main import main
from steerlab.conditional import ConditionalProgram
from steerlab.core.vector import SteeringVector
from steerlab.runtime.generate import generate

POSITIVE = [f"w10 w11 w{12 + i} w10" for i in range(16)]
NEGATIVE = [f"w60 w61 w{62 + i} w61" for i in range(16)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_model("llama").save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("condition")
    (folder / "pos.txt").write_text("\n".join(POSITIVE) + "\n")
    (folder / "neg.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in NEGATIVE))
    out = folder / "tens.safetensors"
    assert main(["condition", "train", "--positive", str(folder / "pos.txt"), "--negative", str(folder / "neg.jsonl"),
                 "--name", "tens", "--layers", "0-2", "--out", str(out), "--model", str(model_dir), "-q"]) == 0
    return out


def test_train_writes_the_condition_and_its_plot(trained: Path) -> None:
    program = ConditionalProgram.load(trained)
    condition = program.conditions[0]
    assert condition.report is not None and condition.report.test.f1.value == 1.0
    assert program.metadata["weights"] and not program.behaviours
    assert trained.with_suffix(".scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_output(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.txt").write_text("\n".join(POSITIVE))
    (tmp_path / "n.txt").write_text("\n".join(NEGATIVE))
    out = tmp_path / "c.safetensors"
    assert main(["condition", "train", "--positive", str(tmp_path / "p.txt"), "--negative", str(tmp_path / "n.txt"),
                 "--layers", "1", "--out", str(out), "--model", str(model_dir), "-q"]) == 0
    printed = capsys.readouterr().out
    condition = ConditionalProgram.load(out).conditions[0]
    assert f"layers [1], cosine {condition.comparator} {condition.threshold:.4f}" in printed
    assert "held out  F1 1.000" in printed and "on 4 positive / 4 negative prompts" in printed


def test_eval_reports_on_given_sets(trained: Path, model_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.txt").write_text("w10 w11 w40 w10\nw10 w11 w41 w10\n")
    (tmp_path / "n.txt").write_text("w60 w61 w80 w61\nw10 w11 w42 w10\n")  # the second is a positive: one FP
    assert main(["condition", "eval", "--condition", str(trained), "--positive", str(tmp_path / "p.txt"),
                 "--negative", str(tmp_path / "n.txt"), "--model", str(model_dir), "-q"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("tens: F1 0.800") and "precision 0.667" in line and "recall 1.000" in line


def test_generate_with_condition_steers_only_matching_prompts(trained: Path, model_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    vector = SteeringVector({2: torch.randn(32, generator=torch.Generator().manual_seed(4)) * 4})
    vector.save(tmp_path / "v.safetensors")
    prompts = ["w10 w11 w30 w10", "w60 w61 w90 w61"]
    argv = ["generate", "--vector", str(tmp_path / "v.safetensors"), "--condition", str(trained), "--max-new-tokens",
            "6", "--json", "--model", str(model_dir), "-q"]
    for prompt in prompts:
        argv += ["--prompt", prompt]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    model, tok = build_model("llama"), build_tokenizer()
    always = generate(model, tok, prompts, steering=vector, strength=1.0, max_new_tokens=6)
    plain = generate(model, tok, prompts, max_new_tokens=6)
    assert [r["unsteered"] for r in rows] == plain
    assert [r["conditional"] for r in rows] == [always[0], plain[1]]


def test_combine_then_generate_with_the_program(trained: Path, model_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    vector = SteeringVector({2: torch.randn(32, generator=torch.Generator().manual_seed(4)) * 4})
    vector.save(tmp_path / "v.safetensors")
    program = tmp_path / "p.safetensors"
    assert main(["condition", "combine", "--condition", str(trained), "--behaviour",
                 f"push={tmp_path / 'v.safetensors'}@-2", "--rule", "if not tens then push", "--out",
                 str(program)]) == 0
    loaded = ConditionalProgram.load(program)
    assert [(b.name, b.strength) for b in loaded.behaviours] == [("push", -2.0)]
    assert main(["generate", "--vector", str(program), "--prompt", "w60 w61 w90 w61", "--max-new-tokens", "4",
                 "--json", "--model", str(model_dir), "-q"]) == 0
    rows = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the line combine printed
    model, tok = build_model("llama"), build_tokenizer()
    # "not tens" holds for this prompt, so the vector is added at the program's strength, -2.
    assert rows[0]["conditional"] == generate(model, tok, ["w60 w61 w90 w61"], steering=vector, strength=-2.0,
                                              max_new_tokens=4)[0]
    assert rows[0]["conditional"] != rows[0]["unsteered"]
    # Behaviours with no rule to apply them would make a program that never steers: refused, nothing written.
    assert main(["condition", "combine", "--condition", str(trained), "--behaviour",
                 f"push={tmp_path / 'v.safetensors'}", "--out", str(tmp_path / "never.safetensors")]) == 2
    assert "--behaviour needs a --rule that applies it" in capsys.readouterr().err
    assert not (tmp_path / "never.safetensors").exists()


@pytest.mark.parametrize(("case", "expected"), [
    ("empty", "empty.txt: holds no prompts"),
    ("one-sided", "the negative set has 3 prompt(s); a condition needs at least 8"),
    ("unknown-rule", "rule 'if tens and not medical then vector': unknown condition(s) medical"),
    ("wide", "made for a model of hidden size 16"),
])
def test_errors_are_one_line_naming_the_file_or_rule(case: str, expected: str, trained: Path, model_dir: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pos, neg = tmp_path / "pos.txt", tmp_path / "empty.txt"
    pos.write_text("\n".join(POSITIVE))
    neg.write_text("")
    vector = tmp_path / "v.safetensors"
    SteeringVector({2: torch.ones(32)}).save(vector)
    if case == "empty":
        argv = ["condition", "train", "--positive", str(pos), "--negative", str(neg), "--out", str(tmp_path / "c")]
    elif case == "one-sided":
        neg.write_text("w60\nw61\nw62\n")
        argv = ["condition", "train", "--positive", str(pos), "--negative", str(neg), "--out", str(tmp_path / "c")]
        expected = f"{pos} / {neg}: {expected}"
    elif case == "unknown-rule":
        argv = ["generate", "--prompt", "w10", "--vector", str(vector), "--condition", str(trained), "--rule",
                "if tens and not medical then vector"]
    else:
        condition = ConditionalProgram.load(trained).conditions[0]
        condition.directions = {0: torch.ones(16)}
        wide = tmp_path / "wide.safetensors"
        ConditionalProgram((condition,)).save(wide)
        argv = ["generate", "--prompt", "w10", "--vector", str(vector), "--condition", str(wide)]
        expected = f"{wide}: {expected}"
    assert main([*argv, "--model", str(model_dir), "-q"]) == 2
    # The last line (transformers may draw a weight-loading bar before it) is the whole error.
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"steerlab {argv[0]}: error: ") and expected in err
    assert not (tmp_path / "c").exists()
