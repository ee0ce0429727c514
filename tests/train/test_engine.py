"""The training engine: precision, activation checkpointing, the guard, resume of the schedule."""

from __future__ import annotations

import pytest
import torch

from blankfill.config import OptimConfig, RunConfig, from_dict, to_dict
from blankfill.model import GLM
from blankfill.testing import SyntheticBatches, tiny_config
from blankfill.train import checkpoint as ck
from blankfill.train.distributed import DistInfo
from blankfill.train.engine import Engine, resolve_precision
from blankfill.train.loop import train
from blankfill.train.memory import estimate_memory, measure_peak
from blankfill.train.metrics import read_metrics
from blankfill.train.objective import TargetLogits, loss_sums, target_index


def run_config(out_dir, **train_kw) -> RunConfig:
    return from_dict(RunConfig, {
        "model": to_dict(tiny_config()),
            "data": {"seq_len": 64}, "optim": {"lr": 3e-3, "warmup": 0.1},
        "train": {"out_dir": str(out_dir), "max_steps": 6, "save_every": 0, "precision": "fp32",
                  **train_kw},
        "log": {"progress": False, "tensorboard": False},
    })  # fmt: skip


def make_engine(model: GLM, **kw) -> Engine:
    return Engine(TargetLogits(model), list(model.transformer.layers), OptimConfig(lr=1e-3),
                  info=DistInfo(), device=torch.device("cpu"), **kw)  # fmt: skip


def pretrain_step(engine: Engine, batch):
    item = (batch, target_index(batch))
    return engine.step([item], lambda m, it: loss_sums(m(it[0], it[1]), it[0], it[1]),
                       lambda it: it[0].loss_mask.sum(), 1e-3)  # fmt: skip


def test_activation_checkpointing_same_losses_lower_peak():
    cfg = tiny_config(hidden_size=128, num_layers=4, max_sequence_length=300, vocab_size=1024)
    peaks, losses = {}, {}
    for ac in (False, True):
        torch.manual_seed(0)
        engine = make_engine(GLM(cfg), precision="fp32", activation_checkpointing=ac)
        data = SyntheticBatches(8, seq_len=256, vocab=200)
        pretrain_step(engine, next(data))  # the optimizer state exists from here on
        out = []
        peaks[ac] = measure_peak(
            lambda e=engine, d=data, o=out: o.append(pretrain_step(e, next(d)))
        )
        out += [pretrain_step(engine, next(data)) for _ in range(2)]
        losses[ac] = [float(r.stats[0] / r.count) for r in out]
    assert losses[True] == losses[False]  # recomputation is exact (same kernels, same order)
    assert peaks[True] < 0.6 * peaks[False], peaks  # measured: ~24 vs ~75 MiB above weights+state


def test_memory_estimate_within_20_percent_of_measured_cpu_peak():
    """Two small configs, fp32 (Intel Xeon with AMX, 2026-12-03: estimate/measured 0.96 and 0.89)."""
    for h, layers, batch, seq in ((128, 4, 8, 256), (256, 2, 4, 128)):
        cfg = tiny_config(hidden_size=h, num_layers=layers, max_sequence_length=seq + 8,
                          vocab_size=1024)  # fmt: skip
        model = GLM(cfg)
        engine = make_engine(model, precision="fp32")
        data = SyntheticBatches(batch, seq_len=seq, vocab=200)
        pretrain_step(engine, next(data))
        state = [t for st in engine.optimizer.state.values() for t in st.values()]
        before = sum(p.numel() * 4 for p in model.parameters())
        before += sum(t.numel() * t.element_size() for t in state if torch.is_tensor(t))
        sample = data.batch(data.index)
        measured = before + measure_peak(lambda e=engine, d=data: pretrain_step(e, next(d)))
        T = sample.input_ids.shape[1]
        first = int((sample.loss_mask > 0).any(0).int().argmax())  # the last block's first row
        est = estimate_memory(cfg, batch_size=batch, seq_len=T, last_block_rows=(T - first) / T,
                              target_fraction=float(sample.loss_mask.mean()))  # fmt: skip
        assert 0.8 < est.total / measured < 1.2, (h, est, measured)


def test_fp16_trains_with_a_loss_scaler(tmp_path):
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.Linear(4, 4)(torch.ones(1, 4))
    except RuntimeError as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"this torch cannot autocast to fp16 on the CPU: {e}")
    cfg = run_config(tmp_path, precision="fp16", max_steps=30)
    torch.manual_seed(0)
    model = GLM(cfg.model)
    result = train(cfg, model, SyntheticBatches(8, repeat=True))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"], [r["loss"] for r in rows]
    assert result.step == 30 and all(torch.isfinite(p).all() for p in model.parameters())
    engine = make_engine(GLM(cfg.model), precision="fp16")
    assert engine.scaler is not None and engine.scaler.get_scale() == 2.0**16
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())  # fp32 masters


def test_precision_auto_follows_the_hardware_choice():
    from blankfill.hardware import choose_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == choose_precision(cpu).precision
    # The model's width decides: a d-64 model trains in fp32 on every CPU.
    assert make_engine(GLM(tiny_config()), precision="auto").precision == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp8", torch.device("cpu"))


def test_guard_skips_on_device_and_leaves_weights_and_moments(tmp_path):
    model = GLM(tiny_config())
    engine = make_engine(model, precision="fp32")
    pretrain_step(engine, SyntheticBatches(4).batch(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [t.clone() for st in engine.optimizer.state.values() for t in st.values()]
    handle = model.transformer.final_layernorm.register_forward_hook(lambda m, a, o: o * torch.nan)
    result = pretrain_step(engine, SyntheticBatches(4).batch(1))
    handle.remove()
    assert not bool(result.finite)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    after = [t for st in engine.optimizer.state.values() for t in st.values()]
    assert all(torch.equal(a, b) for a, b in zip(moments, after, strict=True))  # step count too


def test_resume_finished_run_and_extended_run_keeps_the_schedule(tmp_path):
    cfg = run_config(tmp_path, max_steps=6, save_every=3)
    train(cfg, GLM(cfg.model), SyntheticBatches(4))
    again = train(cfg, GLM(cfg.model), SyntheticBatches(4), resume="auto")
    assert again.status == "already finished" and again.step == 6
    assert again.checkpoint == ck.checkpoint_path(tmp_path, 6)
    longer = run_config(tmp_path, max_steps=9, save_every=3)
    result = train(longer, GLM(longer.model), SyntheticBatches(4), resume="auto")
    assert result.status == "done" and result.step == 9
    rows = read_metrics(tmp_path / "metrics.jsonl")
    floor = cfg.optim.min_lr_ratio * cfg.optim.lr
    # the 6-step schedule ended at its floor: the extension continues there, no jump to lr
    assert [r["lr"] for r in rows[6:]] == pytest.approx([floor] * 3)
    replanned = run_config(tmp_path / "b", max_steps=6, save_every=3)
    train(replanned, GLM(replanned.model), SyntheticBatches(4))
    data = to_dict(replanned)
    data["optim"]["decay_steps"], data["train"]["max_steps"] = 12, 9
    explicit = from_dict(RunConfig, data)
    train(explicit, GLM(explicit.model), SyntheticBatches(4), resume="auto")
    lrs = [r["lr"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert lrs[6] > floor * 1.5  # optim.decay_steps asked for a new schedule


@pytest.mark.parametrize("layout", ["ours", "hub"])
def test_init_from_continues_from_the_source_weights(tmp_path, layout):
    from blankfill.pretrained import convert_folder, load_pretrained

    src_cfg = run_config(tmp_path / "src", max_steps=40)
    torch.manual_seed(0)
    src = train(src_cfg, GLM(src_cfg.model), SyntheticBatches(8, repeat=True)).checkpoint
    folder = src if layout == "ours" else convert_folder(src, tmp_path / "hub", to_format="hub")
    batch = SyntheticBatches(4).batch(0)
    with torch.no_grad():
        ce, stats = loss_sums(TargetLogits(load_pretrained(src))(batch), batch)
    source_loss = float(ce / stats[1])
    losses = {}
    for name, init in (("continued", str(folder)), ("fresh", "")):
        cfg = run_config(tmp_path / name, max_steps=1, init_from=init)
        torch.manual_seed(1)
        train(cfg, GLM(cfg.model), SyntheticBatches(4))
        losses[name] = read_metrics(tmp_path / name / "metrics.jsonl")[0]["loss"]
    assert losses["continued"] == pytest.approx(source_loss, rel=1e-5)
    assert losses["continued"] < 0.5 * losses["fresh"], (losses, source_loss)


def test_init_from_checks_the_tokenizer_and_the_model_shape(tmp_path):
    from blankfill.pretrained import save_pretrained
    from blankfill.tokenizer import train_tokenizer

    ours = train_tokenizer(["red green blue"] * 20, 300)
    theirs = train_tokenizer(["one two three four"] * 20, 300)
    save_pretrained(GLM(tiny_config()), tmp_path / "src", theirs)
    cfg = run_config(tmp_path / "run", max_steps=1, init_from=str(tmp_path / "src"))
    with pytest.raises(ValueError, match="another tokenizer than this run's"):
        train(cfg, GLM(cfg.model), SyntheticBatches(4), tokenizer=ours)
    data = to_dict(cfg)
    data["model"]["hidden_size"] = 32
    other = from_dict(RunConfig, data)
    with pytest.raises(ValueError, match="hidden_size=64 .run: 32."):
        train(other, GLM(other.model), SyntheticBatches(4))


def test_info_memory_prints_the_estimate(capsys):
    from blankfill import cli
    from blankfill.presets import preset
    from blankfill.train.memory import GiB

    argv = ["info", "glm-10b", "--memory", "--world-size", "8", "--precision", "bf16", "--fsdp",
            "--activation-checkpointing", "--batch-size", "4", "--seq-len", "512"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    est = estimate_memory(preset("glm-10b"), batch_size=4, seq_len=512, world_size=8,
                          precision="bf16", fsdp=True, activation_checkpointing=True)  # fmt: skip
    assert f"{'total':<12} {est.total / GiB:10.2f} GiB" in out and "FSDP over 8" in out
    plain = estimate_memory(preset("glm-10b"), batch_size=4, seq_len=512, precision="bf16")
    assert est.total < plain.total / 4  # sharding over 8 and checkpointing
    assert cli.main(["info", "tiny", "--memory", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("measured_faster", [True, False])
def test_fp32_cpu_linears_by_onednn_only_where_measured_faster(monkeypatch, measured_faster):
    from torch import nn

    from blankfill import kernels
    from blankfill.train import engine as engine_mod

    if not kernels.onednn_available():
        pytest.skip("this PyTorch has no oneDNN")
    monkeypatch.setattr(engine_mod, "training_by_onednn", lambda: measured_faster)
    torch.manual_seed(0)
    model = GLM(tiny_config())
    engine = make_engine(model, precision="fp32")
    assert engine.onednn_linears is measured_faster
    kinds = {type(m) for m in model.transformer.layers.modules() if isinstance(m, nn.Linear)}
    assert kinds == ({kernels.TrainingLinear} if measured_faster else {nn.Linear})
    assert not make_engine(GLM(tiny_config()), precision="bf16").onednn_linears


def test_onednn_linears_train_as_plain_ones(monkeypatch):
    from blankfill import kernels
    from blankfill.train import engine as engine_mod

    if not kernels.onednn_available():
        pytest.skip("this PyTorch has no oneDNN")
    torch.manual_seed(0)
    models = [GLM(tiny_config()), GLM(tiny_config())]
    models[1].load_state_dict(models[0].state_dict())
    stats = []
    for model, by_onednn in zip(models, (True, False), strict=True):
        monkeypatch.setattr(engine_mod, "training_by_onednn", lambda v=by_onednn: v)
        engine = make_engine(model, precision="fp32")
        assert engine.onednn_linears is by_onednn
        data = SyntheticBatches(4, seq_len=32, vocab=200)
        torch.manual_seed(1)  # the same dropout draws
        stats.append([pretrain_step(engine, next(data)).stats for _ in range(3)])
    torch.testing.assert_close(stats[0], stats[1], rtol=1e-4, atol=1e-5)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_engine_keeps_freed_memory_unless_told_not_to(monkeypatch, keep):
    from blankfill.train import engine as engine_mod

    calls = []
    monkeypatch.setattr(engine_mod.allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    engine = make_engine(GLM(tiny_config()), precision="fp32", keep_freed_memory=keep)
    assert engine.memory_kept is keep and len(calls) == int(keep)


def test_train_keep_freed_memory_reaches_the_engine(tmp_path, monkeypatch):
    from blankfill.train import engine as engine_mod

    calls = []
    monkeypatch.setattr(engine_mod.allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    for folder, kw in (("a", {}), ("b", {"keep_freed_memory": False})):
        cfg = run_config(tmp_path / folder, max_steps=1, **kw)
        train(cfg, GLM(cfg.model), SyntheticBatches(4))
    assert calls == [1]


def test_resumed_run_keeps_the_checkpoints_cpu_linears(tmp_path, monkeypatch):
    from blankfill import kernels
    from blankfill.train import engine as engine_mod

    if not kernels.onednn_available():
        pytest.skip("this PyTorch has no oneDNN")
    monkeypatch.setattr(engine_mod, "training_by_onednn", lambda: True)  # measured: oneDNN
    cfg = run_config(tmp_path, max_steps=2, save_every=2)
    train(cfg, GLM(cfg.model), SyntheticBatches(4))
    first = ck.list_checkpoints(tmp_path)[0]
    assert ck.read_trainer_json(first)["cpu_linears"] == "onednn"
    monkeypatch.setattr(engine_mod, "training_by_onednn", lambda: False)  # now: MKL
    longer = run_config(tmp_path, max_steps=4, save_every=2)
    train(longer, GLM(longer.model), SyntheticBatches(4), resume="auto")
    last = ck.list_checkpoints(tmp_path)[0]
    assert last != first and ck.read_trainer_json(last)["cpu_linears"] == "onednn"
    fresh = run_config(tmp_path / "fresh", max_steps=2, save_every=2)
    train(fresh, GLM(fresh.model), SyntheticBatches(4))  # a new run measures again
    assert ck.read_trainer_json(ck.list_checkpoints(tmp_path / "fresh")[0])["cpu_linears"] == "mkl"
    with pytest.raises(ValueError, match="cpu_linears"):
        make_engine(GLM(tiny_config()), cpu_linears="fast")


def test_resumed_run_keeps_the_checkpoints_auto_precision(tmp_path, monkeypatch):
    from blankfill import hardware

    def choose(precision):
        monkeypatch.setattr(hardware, "choose_precision",
                            lambda *a, **k: hardware.PrecisionChoice(precision, "test"))  # fmt: skip

    choose("bf16")  # measured at the start: bf16 autocast
    cfg = run_config(tmp_path, max_steps=2, save_every=2, precision="auto")
    train(cfg, GLM(cfg.model), SyntheticBatches(4))
    first = ck.list_checkpoints(tmp_path)[0]
    assert ck.read_trainer_json(first)["precision"] == "bf16"
    choose("fp32")  # a new measurement would now say fp32
    longer = run_config(tmp_path, max_steps=4, save_every=2, precision="auto")
    train(longer, GLM(longer.model), SyntheticBatches(4), resume="auto")
    last = ck.list_checkpoints(tmp_path)[0]
    assert last != first and ck.read_trainer_json(last)["precision"] == "bf16"
    explicit = run_config(tmp_path, max_steps=6, save_every=2, precision="fp32")
    train(explicit, GLM(explicit.model), SyntheticBatches(4), resume="auto")  # set: it wins
    assert ck.read_trainer_json(ck.list_checkpoints(tmp_path)[0])["precision"] == "fp32"
