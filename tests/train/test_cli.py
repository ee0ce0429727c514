"""Shipped configs load; `blankfill pretrain` / `plot` on the tiny config run in seconds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from blankfill import cli
from blankfill.config import ConfigError, RunConfig, load_config
from blankfill.presets import PRESETS
from blankfill.testing import tiny_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "pretrain").glob("*.toml"))


def test_every_shipped_pretrain_config_loads():
    names = {p.stem for p in CONFIGS}
    assert {"tiny", "demo", "glm-small", "glm-base", "glm-large", "glm-10b"} <= names
    for path in CONFIGS:
        cfg = load_config(RunConfig, path)
        assert cfg.data.seq_len <= cfg.model.max_sequence_length, path
    for name in ("glm-small", "glm-base", "glm-large", "glm-10b"):
        assert load_config(RunConfig, REPO / f"configs/pretrain/{name}.toml").model == PRESETS[name]
    assert load_config(RunConfig, REPO / "configs/pretrain/tiny.toml").model == tiny_config()


def test_paper_hyperparameters_in_configs():
    base = load_config(RunConfig, REPO / "configs/pretrain/glm-base.toml")
    assert (base.optim.lr, base.optim.decay_steps, base.train.max_steps) == (4e-4, 120000, 150000)
    big = load_config(RunConfig, REPO / "configs/pretrain/glm-10b.toml")
    assert (big.optim.beta2, big.optim.eps, big.optim.min_lr_ratio) == (0.95, 1e-8, 0.1)
    assert (big.corrupt.token_prob, big.corrupt.sentence_prob, big.corrupt.document_prob) == (
        0.5,
        0.3,
        0.2,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_stepz=2", "--train.max_stepz: unknown key; did you mean train.max_steps?"),
        ("optim.lr=fast", "optim.lr must be a number"),
        ("optim.warmup=2", "optim.warmup must be in [0, 1)"),
        ("data.seq_len=4096", "exceeds model.max_sequence_length"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(RunConfig, REPO / "configs/pretrain/tiny.toml", [override])


def test_cli_config_error_is_one_line(capsys):
    tiny = str(REPO / "configs/pretrain/tiny.toml")
    assert cli.main(["pretrain", "--config", tiny, "--train.max_stepz=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and "--train.max_stepz: unknown key; did you mean train.max_steps?" in err
    )
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--config", tiny, "stray"])


def test_cli_help_and_print_config(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "pretrain" in out and "plot" in out
    tiny = str(REPO / "configs/pretrain/tiny.toml")
    assert cli.main(["pretrain", "--config", tiny, "--print-config", "--optim.lr=1e-3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 1e-3 and printed["model"]["hidden_size"] == 64


@pytest.fixture
def tiny_store(tmp_path) -> Path:
    store_mod = pytest.importorskip("blankfill.data.store")
    from blankfill.tokenizer import train_tokenizer

    words = "the cat sat on a mat . why is the sky blue ? it rains ; the ground is wet !".split()
    texts = [" ".join(words[(i * 3) % 7 :] + words[: (i * 3) % 7]) * 6 for i in range(20)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, t in enumerate(texts):
        (corpus / f"{i}.txt").write_text(t)
    tok = train_tokenizer(texts, vocab_size=384)
    store_mod.prepare([corpus], tmp_path / "store", tok)
    return tmp_path / "store"


def test_cli_pretrain_tiny_resume_dry_run_and_plot(tiny_store, tmp_path, capsys):
    tiny = str(REPO / "configs/pretrain/tiny.toml")
    out = tmp_path / "run"
    common = ["pretrain", "--config", tiny, f"--data.store={tiny_store}", f"--train.out_dir={out}"]
    common += ["--log.progress=false", "--data.valid_fraction=0.1", "--train.eval_every=2"]
    assert cli.main([*common, "--train.max_steps=2"]) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert any("valid/loss" in r for r in rows)
    ckpt = out / "checkpoints" / "step-00000002"
    assert (ckpt / "tokenizer.json").is_file() and json.loads((ckpt / "config.json").read_text())
    # a second run without --resume refuses to mix runs; with it, it continues
    assert cli.main([*common, "--train.max_steps=3"]) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert cli.main([*common, "--train.max_steps=3", "--resume", "auto"]) == 0
    assert (out / "checkpoints" / "step-00000003").is_dir()
    assert cli.main([*common, "--dry-run"]) == 0
    assert "dry run OK" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "loss.png").stat().st_size > 1000


def test_cli_vocab_too_small_is_one_line(tiny_store, tmp_path, capsys):
    tiny = str(REPO / "configs/pretrain/tiny.toml")
    args = ["pretrain", "--config", tiny, f"--data.store={tiny_store}"]
    args += [f"--train.out_dir={tmp_path / 'r'}", "--model.vocab_size=128"]
    assert cli.main(args) == 2
    assert "set --model.vocab_size=384" in capsys.readouterr().err


def test_sigterm_prints_a_continue_command_that_works_when_pasted(tiny_store, tmp_path, capsys):
    """Killed with SIGTERM under overrides: exit 143, and the printed command (the run folder's
    own config.json) finishes the run; run again, it says the run is already finished."""
    import os
    import shlex
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = ["pretrain", "--config", str(REPO / "configs/pretrain/tiny.toml"),
            f"--data.store={tiny_store}", f"--train.out_dir={out}", "--train.max_steps=40",
            "--train.save_every=100", "--log.every=1", "--log.progress=false",
            "--optim.lr=2e-3"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "blankfill", *argv], env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = next(x for x in err.splitlines() if "Continue with: " in x)
    command = shlex.split(line.split("Continue with: ", 1)[1])
    assert command[:2] == ["blankfill", "pretrain"] and "--data.store" not in line
    assert cli.main(command[1:]) == 0  # pasted: the overrides come from RUN/config.json
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 40 and rows[0]["lr"] < 2e-3  # warmup of the run
    assert (out / "checkpoints" / "step-00000040").is_dir()
    capsys.readouterr()
    assert cli.main(command[1:]) == 0
    assert "is already finished: step 40 of train.max_steps=40" in capsys.readouterr().out
