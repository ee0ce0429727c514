"""Sharded (DCP) FSDP checkpoints: saved by 2 processes, resumed by 1 and by 4, and back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from blankfill import cli
from blankfill.config import RunConfig, from_dict, to_dict
from blankfill.model import GLM
from blankfill.pretrained import load_pretrained
from blankfill.testing import SyntheticBatches, tiny_config
from blankfill.train import checkpoint as ck
from blankfill.train.dcp import is_sharded
from blankfill.train.loop import train
from blankfill.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from blankfill.config import RunConfig, from_dict
    from blankfill.model import GLM
    from blankfill.testing import SyntheticBatches
    from blankfill.train.distributed import init_distributed, teardown
    from blankfill.train.loop import train
    cfg = from_dict(RunConfig, json.loads(sys.argv[1]))
    info = init_distributed(cfg.dist, torch.device("cpu"))
    torch.manual_seed(0)
    data = SyntheticBatches(4, rank=info.rank, world_size=info.world_size)
    train(cfg, GLM(cfg.model), data, info=info, resume=sys.argv[2] or None)
    teardown(info)
    """
)


def config(out: Path, max_steps: int, grad_accum: int = 1, **dist) -> dict:
    return {
        "model": to_dict(tiny_config()), "data": {"seq_len": 64},
        "optim": {"lr": 3e-3, "warmup": 0.2, "decay_steps": 8},
        "train": {"out_dir": str(out), "max_steps": max_steps, "save_every": 4,
                  "grad_accum": grad_accum, "precision": "fp32", "keep_last": 5},
        "dist": {"strategy": "fsdp", "backend": "gloo", **dist},
        "log": {"progress": False, "tensorboard": False},
    }  # fmt: skip


def launch(nproc: int, cfg: dict, resume: str = "") -> None:
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    script = Path(cfg["train"]["out_dir"]).parent / "run.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(nproc), str(script), json.dumps(cfg), resume]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def single(cfg: dict, resume: str | None = None) -> None:
    run = from_dict(RunConfig, cfg)
    torch.manual_seed(0)
    train(run, GLM(run.model), SyntheticBatches(4), resume=resume)


def assert_rows_close(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5, abs=1e-6), g["step"]
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4), g["step"]


@pytest.mark.slow
def test_dcp_save_on_2_resume_on_1_and_4_and_back(tmp_path):
    # reference: one process, the same global batch (2 micro-batches per step), 8 steps
    single(config(tmp_path / "ref", 8, grad_accum=2, checkpoint="full"))
    want = read_metrics(tmp_path / "ref" / "metrics.jsonl")

    # 2 processes, FSDP2, sharded checkpoint at step 4 (no model.safetensors anywhere)
    launch(2, config(tmp_path / "two", 4))
    step4 = ck.checkpoint_path(tmp_path / "two", 4)
    assert is_sharded(step4) and not (step4 / "model.safetensors").exists()
    assert sorted(p.name for p in (step4 / "dcp").iterdir() if p.suffix == ".distcp")
    # its weights are those of the one-process run at step 4
    with pytest.raises(ValueError, match="is a sharded .FSDP. checkpoint; write a model folder"):
        load_pretrained(step4)
    folder = tmp_path / "step4-folder"
    assert cli.main(["convert", "--from", str(step4), "--to", str(folder)]) == 0
    ref4 = load_pretrained(ck.checkpoint_path(tmp_path / "ref", 4)).state_dict()
    for k, v in load_pretrained(folder).state_dict().items():
        torch.testing.assert_close(v, ref4[k], rtol=1e-4, atol=1e-5, msg=k)

    # resumed by 1 process: continues as the reference did
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    single(config(tmp_path / "one", 8, grad_accum=2), resume="auto")
    assert_rows_close(read_metrics(tmp_path / "one" / "metrics.jsonl")[4:], want[4:])

    # resumed by 4 processes (same weights and optimizer, re-sharded 4 ways); it trains on
    shutil.copytree(tmp_path / "two", tmp_path / "four")
    launch(4, config(tmp_path / "four", 6), resume="auto")
    rows = read_metrics(tmp_path / "four" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[-1]["loss"] < rows[0]["loss"]

    # the reverse: one process writes a sharded checkpoint, 2 processes continue identically
    single(config(tmp_path / "rev", 4, grad_accum=2, checkpoint="sharded"))
    assert is_sharded(ck.checkpoint_path(tmp_path / "rev", 4))
    launch(2, config(tmp_path / "rev", 8), resume="auto")
    assert_rows_close(read_metrics(tmp_path / "rev" / "metrics.jsonl")[4:], want[4:])


def test_sharded_checkpoint_in_one_process_damaged_one_skipped_bitwise_resume(tmp_path, caplog):
    ref = config(tmp_path / "ref", 6, checkpoint="full")
    single(ref)
    run = config(tmp_path / "run", 4, checkpoint="sharded")
    run["train"]["save_every"] = 2  # step 2 is the good one to fall back on
    single(run)
    newest = ck.list_checkpoints(tmp_path / "run")[0]
    assert is_sharded(newest) and newest.name == "step-00000004"
    shard = next((newest / "dcp").glob("*.distcp"))
    with open(shard, "r+b") as f:  # damaged: the size no longer matches trainer.json
        f.truncate(100)
    again = config(tmp_path / "run", 6, checkpoint="sharded")
    again["train"]["save_every"] = 2
    single(again, resume="auto")
    assert "skipping checkpoint step-00000004" in caplog.text
    want = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    got = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for w, g in zip(want[2:], got[2:], strict=True):  # resumed from step 2, bitwise (CPU fp32)
        assert (g["loss"], g["grad_norm"]) == (w["loss"], w["grad_norm"]), g["step"]
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
