"""The pretraining loop: learning, exact resume, checkpoints, guards, signals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from blankfill.config import RunConfig, from_dict, to_dict
from blankfill.model import GLM
from blankfill.pretrained import load_pretrained
from blankfill.testing import SyntheticBatches, tiny_config
from blankfill.train import checkpoint as ck
from blankfill.train.loop import TrainingDiverged, loss_sums, train
from blankfill.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def run_config(out_dir, **sections) -> RunConfig:
    data = {
        "model": to_dict(tiny_config()),
        "data": {"seq_len": 64},
        "optim": {"lr": 3e-3, "warmup": 0.05},
        "train": {"out_dir": str(out_dir), "max_steps": 10, "save_every": 0, "precision": "fp32"},
        "log": {"progress": False, "tensorboard": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(RunConfig, data)


def test_loss_is_token_average_over_targets():
    batch = SyntheticBatches(3).batch(0)
    model = GLM(tiny_config())
    full = model(batch.input_ids, batch.position_ids, batch.context_len)  # [B, T, V]
    mask = batch.loss_mask > 0
    ce_sum, stats = loss_sums(full[mask], batch)
    ref = torch.nn.functional.cross_entropy(full[mask], batch.labels[mask], reduction="sum")
    torch.testing.assert_close(ce_sum, ref)
    assert stats[1].item() == mask.sum().item()
    assert stats[2:5].sum().item() == pytest.approx(ce_sum.item(), rel=1e-5)


def test_overfit_one_batch(tmp_path):
    cfg = run_config(tmp_path, train={"max_steps": 80}, optim={"lr": 3e-3})
    result = train(cfg, GLM(cfg.model), SyntheticBatches(8, repeat=True))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[0]["loss"] > 4.0 and result.metrics["loss"] < 0.1
    assert {"loss/MASK", "loss/sMASK", "loss/gMASK", "lr", "grad_norm", "tokens_per_s"} <= set(
        rows[-1]
    )
    # the last checkpoint is a model folder
    model = load_pretrained(result.checkpoint)
    batch = SyntheticBatches(8).batch(0)
    assert torch.isfinite(model(batch.input_ids, batch.position_ids, batch.context_len)).all()


def test_grad_accum_normalises_by_global_target_count(tmp_path):
    """The same micro-batch accumulated twice equals one step on it: loss and grads are
    divided by the global target count, not summed per micro-batch."""
    a = run_config(tmp_path / "a", train={"max_steps": 3, "grad_accum": 2})
    b = run_config(tmp_path / "b", train={"max_steps": 3})
    torch.manual_seed(0)
    train(a, GLM(a.model), SyntheticBatches(4, repeat=True))
    torch.manual_seed(0)
    train(b, GLM(b.model), SyntheticBatches(4, repeat=True))
    ra = read_metrics(tmp_path / "a" / "metrics.jsonl")
    rb = read_metrics(tmp_path / "b" / "metrics.jsonl")
    for x, y in zip(ra, rb, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)


# --------------------------------------------------------------------------------------------
# Exact resume after SIGKILL (CPU fp32, one thread: bitwise)
# --------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import logging, os, signal, sys, torch
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    from blankfill.config import RunConfig, from_dict, to_dict
    from blankfill.model import GLM
    from blankfill.testing import SyntheticBatches, tiny_config
    from blankfill.train.loop import train
    from blankfill.train.metrics import JsonlSink
    out, kill_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    cfg = from_dict(RunConfig, {
        "model": to_dict(tiny_config(embedding_dropout_prob=0.1, output_dropout_prob=0.1)),
        "data": {"seq_len": 64},
        "optim": {"lr": 3e-3, "warmup": 0.1},
        "train": {"out_dir": out, "max_steps": 12, "save_every": 3, "keep_last": 2,
                  "cpu_linears": "onednn"},
        "log": {"progress": False, "tensorboard": False},
    })
    class Killer(JsonlSink):
        def log(self, step, metrics):
            super().log(step, metrics)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    torch.manual_seed(0)
    data = SyntheticBatches(4, seed=1)
    train(cfg, GLM(cfg.model), data, sink=Killer(out + "/metrics.jsonl"),
          resume="auto" if resume else None)
    """
)


def _child(out: Path, kill_at: int, resume: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(out), str(kill_at), "1" if resume else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    kill_at = random.Random(os.getpid()).randint(4, 11)
    ref = _child(tmp_path / "ref", -1, False)  # a subprocess too: same threads, same flags
    assert ref.returncode == 0, ref.stderr
    killed = _child(tmp_path / "run", kill_at, False)
    assert killed.returncode == -signal.SIGKILL
    resumed = _child(tmp_path / "run", -1, True)
    assert resumed.returncode == 0, resumed.stderr
    # killed inside the log call of step kill_at, before that step's checkpoint (every 3 steps)
    assert f"(step {(kill_at - 1) // 3 * 3})" in resumed.stderr
    want = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    got = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(got) == len(want) == 12
    for w, g in zip(want, got, strict=True):
        for key in ("loss", "loss/MASK", "grad_norm", "lr"):
            assert w[key] == g[key], (kill_at, w["step"], key)
    names = [p.name for p in ck.list_checkpoints(tmp_path / "run")]
    assert names == ["step-00000012", "step-00000009"]  # keep_last=2


# --------------------------------------------------------------------------------------------
# Checkpoints: atomic layout, corrupt ones skipped, weights_only loading
# --------------------------------------------------------------------------------------------


def test_corrupt_checkpoint_is_skipped_with_warning(tmp_path, caplog):
    cfg = run_config(tmp_path, train={"max_steps": 4, "save_every": 2})
    train(cfg, GLM(cfg.model), SyntheticBatches(4))
    newest, older = ck.list_checkpoints(tmp_path)
    assert newest.name == "step-00000004"
    meta = json.loads((newest / "trainer.json").read_text())
    assert meta["step"] == 4 and "model.safetensors" in meta["files"]
    with open(newest / "model.safetensors", "r+b") as f:  # truncate
        f.truncate(100)
    (tmp_path / "checkpoints" / ".tmp-step-00000006").mkdir()  # a kill mid-write
    found = ck.load_latest(tmp_path, ck.DistInfo())
    assert found is not None and found[0] == older
    assert "skipping checkpoint step-00000004" in caplog.text and "truncated" in caplog.text
    # loaded states are plain tensors/containers (torch.load(weights_only=True) succeeded)
    assert isinstance(found[1]["rank"]["rng"]["torch"], torch.Tensor)
    # resume continues from step 2 to max_steps 5
    cfg5 = run_config(tmp_path, train={"max_steps": 5, "save_every": 2})
    result = train(cfg5, GLM(cfg5.model), SyntheticBatches(4), resume="auto")
    assert result.step == 5 and result.checkpoint.name == "step-00000005"


def test_resume_from_explicit_bad_folder_is_one_line_error(tmp_path):
    cfg = run_config(tmp_path)
    with pytest.raises(ck.CheckpointError, match="incomplete"):
        train(cfg, GLM(cfg.model), SyntheticBatches(4), resume=str(tmp_path))


# --------------------------------------------------------------------------------------------
# Guards and signals
# --------------------------------------------------------------------------------------------


def test_nonfinite_step_is_skipped_then_training_continues(tmp_path, caplog):
    cfg = run_config(tmp_path, train={"max_steps": 4})
    model = GLM(cfg.model)
    calls = {"n": 0}

    def poison_second_forward(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output

    model.transformer.final_layernorm.register_forward_hook(poison_second_forward)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(cfg, model, SyntheticBatches(4))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in rows] == [0.0, 1.0, 0.0, 0.0]
    assert "step 1: non-finite loss" in caplog.text and "samples [4, 5, 6, 7]" in caplog.text
    assert result.step == 4 and all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_consecutive_nonfinite_steps_abort_with_the_last_finite_weights(tmp_path):
    cfg = run_config(tmp_path, train={"max_steps": 10, "max_bad_steps": 3, "save_every": 2})
    model = GLM(cfg.model)
    calls = {"n": 0}

    def poison_from_the_third_forward(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output

    model.transformer.final_layernorm.register_forward_hook(poison_from_the_third_forward)
    # the guard reads the flags back every min(log.every, max_bad_steps) = 3 steps
    with pytest.raises(TrainingDiverged, match="4 consecutive non-finite steps") as err:
        train(cfg, model, SyntheticBatches(4))
    newest = ck.list_checkpoints(tmp_path)[0]
    assert "last finite weights are saved in" in str(err.value) and newest.name in str(err.value)
    # skipped steps change nothing: the saved weights are those after step 2, and finite
    saved = load_pretrained(newest).state_dict()
    after_two = load_pretrained(ck.checkpoint_path(tmp_path, 2)).state_dict()
    for k, v in saved.items():
        assert torch.isfinite(v).all() and torch.equal(v, after_two[k]), k


def test_nonfinite_weights_are_never_saved(tmp_path):
    cfg = run_config(tmp_path, train={"max_steps": 10, "max_bad_steps": 3})
    model = GLM(cfg.model)
    with torch.no_grad():
        model.transformer.final_layernorm.weight.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="weights are not finite, so nothing was saved"):
        train(cfg, model, SyntheticBatches(4))
    assert ck.list_checkpoints(tmp_path) == []


def test_sigterm_saves_and_stops(tmp_path):
    cfg = run_config(tmp_path, train={"max_steps": 50})

    class TermAtThree(SyntheticBatches):
        def __next__(self):
            if self.index == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__next__()

    result = train(cfg, GLM(cfg.model), TermAtThree(4))
    assert result.status == "interrupted" and result.step == 4
    assert ck.list_checkpoints(tmp_path)[0].name == "step-00000004"
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored


def test_resume_into_another_model_config_is_one_line_error(tmp_path):
    cfg = run_config(tmp_path, train={"max_steps": 1})
    train(cfg, GLM(cfg.model), SyntheticBatches(4))
    other = run_config(tmp_path, train={"max_steps": 2}, model={"hidden_size": 32})
    with pytest.raises(ValueError, match="has shape .* but the config needs"):
        train(other, GLM(other.model), SyntheticBatches(4), resume="auto")


def test_mfu_is_reported_with_a_peak_and_flops_formula(tmp_path):
    from blankfill.train.metrics import train_flops

    cfg = run_config(tmp_path, train={"max_steps": 2}, log={"peak_flops": 1e12})
    train(cfg, GLM(cfg.model), SyntheticBatches(4))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert all(0.0 < r["mfu"] < 1.0 for r in rows)
    m = tiny_config()  # 3 x (2 x 12 h^2 L + 4 L T h) per token + 3 x 2 V h per target
    assert train_flops(m, 10, 8, 2) == 3 * (
        10 * (24 * 64 * 64 * 2 + 4 * 2 * 8 * 64) + 2 * 2 * 384 * 64
    )
