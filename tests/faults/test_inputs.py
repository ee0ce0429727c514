"""Bad input: a broken .gz (case 1), a tokenizer that is not the store's (6), empty or label-less
evaluation data (7), folders left by a killed prepare (12), file modes (18), progress in a log (19).
"""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from blankfill.model import GLM
from blankfill.pretrained import save_pretrained
from blankfill.progress import LogProgress
from blankfill.testing import tiny_config
from blankfill.tokenizer import train_tokenizer

from .conftest import error_line, write_jsonl

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny.toml"


@pytest.mark.parametrize("kind", ["truncated", "not gzip"])
def test_broken_gz_names_the_file_and_stops(tmp_path, store, run_cli, kind):
    data = gzip.compress(("some text. " * 500).encode())
    bad = tmp_path / "in" / "bad.txt.gz"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"plain text, no gzip")
    (tmp_path / "in" / "good.txt").write_text("fine text.\n")
    rc, _, err = run_cli("prepare", "--input", tmp_path / "in", "--out", tmp_path / "s",
                         "--tokenizer", store / "tokenizer", "--no-progress")  # fmt: skip
    line = error_line(err)
    assert rc == 2 and f"{bad}: truncated or corrupt gzip file" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no store, no .partial-PID


def test_pretrain_with_another_tokenizer_is_refused(tmp_path, store, run_cli):
    other = train_tokenizer(["Completely different words: zebra, quartz, fjord."] * 50,
                            vocab_size=300).save(tmp_path / "other")  # fmt: skip
    rc, _, err = run_cli("pretrain", "--config", TINY, f"--data.store={store}",
                         f"--train.out_dir={tmp_path / 'run'}", f"--train.tokenizer={other}",
                         "--train.max_steps=1")  # fmt: skip
    line = error_line(err)
    assert rc == 2 and f"train.tokenizer is not the tokenizer {store} was prepared with" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


CB_ROW = {"premise": "It rains.", "hypothesis": "The ground is wet", "label": "entailment"}


def test_empty_or_unlabelled_evaluation_data(tmp_path, model_dir, run_cli):
    train = write_jsonl(tmp_path / "train.jsonl", [CB_ROW] * 4)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    unlabelled = write_jsonl(
        tmp_path / "test.jsonl", [CB_ROW, {k: CB_ROW[k] for k in CB_ROW if k != "label"}]
    )
    rc, _, err = run_cli("finetune", "--task", "cb", "--train", train, "--valid", empty,
                         "--model", model_dir, "--out", tmp_path / "ft")  # fmt: skip
    assert rc == 2 and f"{empty}: the validation data has no examples" in error_line(err)
    assert not (tmp_path / "ft" / "best").exists()
    rc, _, err = run_cli("evaluate", "--task", "cb", "--data", empty, "--model", model_dir)
    assert rc == 2 and f"{empty}: the evaluation data has no examples" in error_line(err)
    rc, _, err = run_cli("evaluate", "--task", "cb", "--data", unlabelled, "--model", model_dir)
    line = error_line(err)
    assert rc == 2 and f"{unlabelled}:2: 1 of 2 evaluation data examples have no label" in line
    rc, _, err = run_cli("evaluate", "--task", "lambada", "--data", empty, "--model", model_dir)
    assert rc == 2 and f"{empty}: no examples" in error_line(err)


def test_prepare_removes_folders_of_killed_runs(tmp_path, corpus, run_cli):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".s.partial-{dead}"
    (stale / "tokenizer").mkdir(parents=True)
    live = tmp_path / f".s.partial-{os.getppid()}"  # a running prepare's folder stays
    live.mkdir()
    rc, _, err = run_cli("prepare", "--input", corpus, "--out", tmp_path / "s",
                         "--train-tokenizer", "--vocab-size", "300", "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert not stale.exists() and live.exists()


def test_files_follow_the_umask(tmp_path, store, run_cli):
    old = os.umask(0o027)
    try:
        rc, _, err = run_cli("pretrain", "--config", TINY, f"--data.store={store}",
                             f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=1",
                             "--log.progress=false")  # fmt: skip
        assert rc == 0, err
        save_pretrained(GLM(tiny_config()), tmp_path / "model")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
             for p in tmp_path.rglob("*") if p.is_file()}  # fmt: skip
    assert "run/checkpoints/step-00000001/model.safetensors" in modes
    assert "model/config.json" in modes and "model/model.safetensors" in modes
    assert set(modes.values()) == {0o640}, modes


def test_progress_in_a_log_is_lines_not_carriage_returns(tmp_path, corpus, caplog):
    bar = LogProgress(100, desc="pretrain", unit="step", interval=0.0)
    bar.update(25)
    bar.set_postfix(loss="1.234")
    bar.update(25)
    bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "blankfill.progress"]
    assert lines[0].startswith("pretrain: 25/100 step (25%)") and "ETA" in lines[0]
    assert lines[-1].startswith("pretrain: 50/100 step (50%)") and "loss=1.234" in lines[-1]
    # a real command with stderr a pipe: no carriage returns, a progress line instead
    r = subprocess.run([sys.executable, "-m", "blankfill", "prepare", "--input", str(corpus),
                        "--out", str(tmp_path / "s"), "--train-tokenizer", "--vocab-size", "300"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "tokenizing: " in r.stderr and "(100%)" in r.stderr


def test_damaged_json_files_are_named(tmp_path, store, run_cli):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / "manifest.json").write_text('{"format": ')
    rc, _, err = run_cli("inspect", copy)
    assert rc == 2 and f"{copy / 'manifest.json'}: not valid JSON" in error_line(err)
