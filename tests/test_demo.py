"""``python -m blankfill.demo`` end to end on a small corpus (a few training steps)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from blankfill import cli, demo

DEMO_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "demo.toml")

WORDS = "my lord good king queen love night day sweet death heart sir the of and to".split()


@pytest.fixture()
def corpus(tmp_path):
    rng = random.Random(0)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for d in range(24):
        lines = [" ".join(rng.choices(WORDS, k=8)).capitalize() + "." for _ in range(40)]
        (folder / f"play{d:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_demo_trains_fills_and_reuses(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.setattr(demo, "PROMPTS", ["Good [MASK], my lord.", "KING.\n[gMASK]"])
    out_dir = tmp_path / "demo"
    args = ["demo", "--dir", str(out_dir), "--config", DEMO_CONFIG, "--corpus", str(corpus)]
    args += ["--log.every=1"]  # the demo takes the run config's overrides too
    args += ["--steps", "2", "--eval-batches", "1"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    # the small corpus gives a smaller vocabulary than the config's: the model follows it
    assert "blanks filled by blankfill.fill" in first
    assert "\n        Good [" in first and "], my lord." in first
    assert "\n        KING. / [" in first
    assert json.loads((out_dir / "run" / demo.FINISHED).read_text())["step"] == 2
    assert "blankfill fill --model" in first

    assert cli.main(args[:-4] + ["--eval-batches", "1"]) == 0  # no --steps: reuse everything
    second = capsys.readouterr().out
    assert "tokenizer: reusing" in second and "token store: reusing" in second
    assert "pretraining: reusing" in second and "step-00000002" in second
    assert "--train.max_steps=4 " in second  # "train longer" doubles the run's own steps


def test_show_marks_each_fill():
    from blankfill.filling import FillResult
    from blankfill.generate import Fill

    def f(i, text):
        return Fill(blank=i, position=i, token_ids=(), logprobs=(), ended=True, text=text)

    r = FillResult(
        prompt="Good [MASK], my [MASK].\n[gMASK]",
        text="",
        fills=(f(0, " morrow"), f(1, "lord"), f(2, " Exit.\nEnter KING")),
        prompt_ids=(),
    )
    assert demo._show(r) == "Good [morrow], my [lord]. / [Exit. / Enter KING]"
