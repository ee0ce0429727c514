"""Run folders: the lock (case 3), checksums (4), all checkpoints damaged (5), a pickle in
optimizer.pt (9), metrics.jsonl (10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blankfill.model import GLM
from blankfill.safeio import RunInUseError, sha256_file
from blankfill.testing import SyntheticBatches
from blankfill.train import checkpoint as ck
from blankfill.train.loop import train
from blankfill.train.metrics import JsonlSink, read_metrics

from .conftest import error_line, run_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny.toml"


def pretrain_args(store, run, *extra):
    return ("pretrain", "--config", TINY, f"--data.store={store}", f"--train.out_dir={run}",
            "--train.max_steps=2", "--train.save_every=1", "--log.progress=false", *extra)  # fmt: skip


def damage(path: Path, offset: int = -10) -> None:
    """Flip one byte in place: the size stays, the content changes."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_run_folder_lock(tmp_path, store, run_cli):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from blankfill.safeio import RunLock; "
         "lock = RunLock(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, _, err = run_cli(*pretrain_args(store, run))
        line = error_line(err)
        assert rc == 2 and f"{run} is in use by process {holder.pid}" in line, line
        cfg = run_config(run)  # the library call is refused the same way
        with pytest.raises(RunInUseError, match=f"in use by process {holder.pid}"):
            train(cfg, GLM(cfg.model), SyntheticBatches(4))
        assert not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    rc, _, err = run_cli(*pretrain_args(store, run))  # the lock dies with its process
    assert rc == 0, err


def test_checkpoint_damaged_in_place_is_skipped(tmp_path, caplog):
    cfg = run_config(tmp_path)
    train(cfg, GLM(cfg.model), SyntheticBatches(4))
    newest, older = ck.list_checkpoints(tmp_path)
    size = (newest / "model.safetensors").stat().st_size
    damage(newest / "model.safetensors")
    assert (newest / "model.safetensors").stat().st_size == size
    found = ck.load_latest(tmp_path, ck.DistInfo())
    assert found is not None and found[0] == older
    assert "step-00000004: model.safetensors does not match its recorded sha256" in caplog.text


def test_all_checkpoints_damaged_refuses_to_start_over(tmp_path, store, run_cli):
    run = tmp_path / "run"
    assert run_cli(*pretrain_args(store, run))[0] == 0
    ckpts = ck.list_checkpoints(run)
    for c in ckpts:
        damage(c / "optimizer.pt")
    metrics_before = (run / "metrics.jsonl").read_text()
    rc, _, err = run_cli(*pretrain_args(store, run, "--resume", "auto"))
    line = error_line(err)
    assert rc == 2 and "no usable checkpoint" in line and "are all damaged" in line, line
    assert all(c.name in line for c in ckpts) and "move" in line and "train.out_dir" in line
    assert (run / "metrics.jsonl").read_text() == metrics_before
    assert ck.list_checkpoints(run) == ckpts


class Payload:  # unpickling this needs code (tests.faults.test_runs.Payload)
    pass


def test_pickle_in_optimizer_is_refused_in_one_line(tmp_path, store, run_cli):
    run = tmp_path / "run"
    assert run_cli(*pretrain_args(store, run))[0] == 0
    newest = ck.list_checkpoints(run)[0]
    torch.save({"state": Payload()}, newest / "optimizer.pt")
    meta = json.loads((newest / "trainer.json").read_text())  # a consistent, hostile checkpoint
    meta["files"]["optimizer.pt"] = (newest / "optimizer.pt").stat().st_size
    meta["sha256"]["optimizer.pt"] = sha256_file(newest / "optimizer.pt")
    (newest / "trainer.json").write_text(json.dumps(meta))
    rc, _, err = run_cli(*pretrain_args(store, run, "--resume", newest, "--train.max_steps=3"))
    line = error_line(err)
    assert rc == 2 and "optimizer.pt: refused: unpickling it needs code" in line, line
    assert "Payload" in line and "weights_only=False" not in err


def test_metrics_null_for_nonfinite_and_each_step_once(tmp_path):
    sink = JsonlSink(tmp_path / "m.jsonl")
    sink.log(1, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3})
    sink.close()
    line = (tmp_path / "m.jsonl").read_text()
    row = json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in {line}"))
    assert row == {"step": 1, "loss": None, "grad_norm": None, "lr": 1e-3}

    cfg = run_config(tmp_path / "run", log={"every": 1})  # rows reach the file every step

    class KilledAtThree(SyntheticBatches):  # dies after step 3 was logged, before its checkpoint
        def __next__(self):
            if self.index == 3:
                raise RuntimeError("killed")
            return super().__next__()

    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, GLM(cfg.model), KilledAtThree(4))
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    train(cfg, GLM(cfg.model), SyntheticBatches(4), resume="auto")
    steps = [json.loads(s)["step"] for s in (tmp_path / "run" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]
