"""`blankfill finetune` and `blankfill evaluate` end to end on a tiny model and a TOML task."""

from __future__ import annotations

import json

import pytest

from blankfill import cli
from blankfill.model import GLM
from blankfill.pretrained import save_pretrained
from blankfill.testing import tiny_config
from blankfill.tokenizer import train_tokenizer

ROWS = [("an apple and a cherry", "red"), ("grass and a leaf", "green")] * 8


@pytest.fixture
def folders(tmp_path):
    model_dir = tmp_path / "model"
    tok = train_tokenizer([t for t, _ in ROWS] + [" Colour: red green."] * 5, 384)
    save_pretrained(GLM(tiny_config()), model_dir, tok)
    task = tmp_path / "colour.toml"
    task.write_text('name = "colour"\nformat = "csv"\npattern = "{text} Colour: __."\n'
                    'epochs = 2\nbatch_size = 8\n[verbalizer]\nred = " red"\ngreen = " green"\n')  # fmt: skip
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in ROWS))
    return model_dir, task, data


def test_finetune_then_evaluate_write_checkpoint_metrics_and_json(folders, tmp_path, capsys):
    model_dir, task, data = folders
    out = tmp_path / "run"
    argv = ["finetune", "--task", str(task), "--train", str(data), "--valid", str(data),
            "--model", str(model_dir), "--out", str(out), "--optim.lr=1e-3", "--finetune.device=cpu", "--finetune.precision=fp32"]  # fmt: skip
    assert cli.main(argv) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "best" / "model.safetensors").is_file()
    capsys.readouterr()
    argv = ["evaluate", "--task", str(task), "--data", str(data), "--model", str(out / "best"),
            "--out", str(tmp_path / "eval.json")]  # fmt: skip
    assert cli.main(argv) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["examples"] == 16 and 0.0 <= result["accuracy"] <= 1.0


def test_cli_errors_are_one_line(folders, tmp_path, capsys):
    model_dir, task, data = folders
    argv = ["finetune", "--task", "cb", "--train", str(data), "--valid", str(data),
            "--model", str(model_dir), "--optim.lr=-1"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "optim.lr must be > 0" in capsys.readouterr().err
    assert cli.main(argv[:-1] + ["--finetune.epoch=3"]) == 2
    assert "--finetune.epoch: unknown key; did you mean finetune.epochs?" in capsys.readouterr().err
    argv = ["evaluate", "--task", "cb", "--data", str(data), "--model", str(model_dir)]
    assert cli.main(argv) == 2
    assert "data.csv:1: not valid JSON" in capsys.readouterr().err
    # evaluate takes --decoding.* only; a wrong section is named before any file is read
    assert (
        cli.main(["evaluate", "--task", "cb", "--data", "x", "--model", "y", "--optim.lr=1"]) == 2
    )
    assert capsys.readouterr().err.startswith("blankfill evaluate: error: --optim.lr: unknown key")
    assert (
        cli.main(
            ["evaluate", "--task", "cb", "--data", "x", "--model", "y", "--decoding.num_beam=2"]
        )
        == 2
    )
    assert "did you mean decoding.num_beams?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--task", "cb", "--data", "x", "--model", "y", "stray"])
