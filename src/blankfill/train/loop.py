"""The pretraining loop, in named stages: set-up/resume -> (train_step -> metrics -> eval/save)*.

The loop receives its model and data as arguments (tests inject small ones). ``data`` is an
iterable of ``Batch`` with ``state_dict()`` / ``load_state_dict()`` (the data-loader position);
everything resumable (model, optimizer, step, data position, RNG states) is checkpointed together.

Stages (style §3.4): ``setup`` (resume or ``train.init_from``, then the ``Engine``: placement,
DDP/FSDP2, precision, checkpointing, compile), ``train_step`` (``lr_at(step)`` -> micro-steps ->
clip -> guarded step, all on the device), ``flush_metrics`` (the one host read-back, every
``min(log.every, train.max_bad_steps)`` steps and before every evaluation or checkpoint: each
step's row goes to the sink, the guard counts non-finite steps), ``evaluate_and_save``.

The learning-rate schedule is fixed when a run starts (``optim.decay_steps``, else the first
``train.max_steps``) and saved in every checkpoint; a resumed run with a larger
``train.max_steps`` keeps it (the LR stays at its floor after the schedule ends) unless
``optim.decay_steps`` is set explicitly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, to_dict
from ..data.batch import Batch
from ..model import GLM
from ..pretrained import load_weights
from ..progress import progress_bar
from ..safeio import RunLock
from . import checkpoint as ckpt_io
from . import dcp as dcp_io
from .distributed import DistInfo, all_reduce_sum
from .engine import Engine
from .metrics import MetricSink, NullSink, default_sinks, peak_flops, train_flops
from .objective import N_OBJ, TargetLogits, evaluate, loss_sums, summarize, to_device
from .optim import lr_at
from .report import Pending, log_line, take
from .resume import StopFlag, find_resume, init_from, pinned_choice, rng_state, set_rng_state

log = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """Too many consecutive non-finite steps; the last finite weights were checkpointed."""


@dataclass
class TrainResult:
    step: int  # optimizer steps taken
    status: str  # "done" | "interrupted" | "out of time" | "dry-run" | "already finished"
    checkpoint: Path | None  # the last checkpoint written (or resumed from)
    metrics: dict[str, float]  # the last step's metrics
    signal: int | None = None  # the signal that stopped the run ("interrupted")


@dataclass
class Run:
    """What the stages share: config, engine, data, counters, sinks."""

    cfg: RunConfig
    model: GLM
    engine: Engine
    data: Iterable[Batch]
    batches: Iterator[Batch]
    info: DistInfo
    tokenizer: Any
    sink: MetricSink
    bar: Any
    show_bar: bool
    peak: float
    step: int = 0
    tokens_seen: int = 0
    schedule_steps: int = 0  # the LR schedule's length (decay_steps or the first max_steps)
    bad_steps: int = 0  # consecutive non-finite steps
    resumed_from: Path | None = None
    last_ckpt: Path | None = None  # written by this run
    last_good: Path | None = None  # newest checkpoint known to hold finite weights
    deadline: float = math.inf
    pending: list[Pending] = field(default_factory=list)
    interval_start: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    lock: RunLock | None = None  # held until the run closes: "RUN is in use by process N"

    @property
    def device(self) -> torch.device:
        return self.engine.device


# --------------------------------------------------------------------------------------------
# Stage 1: set-up and resume
# --------------------------------------------------------------------------------------------


def setup(
    cfg: RunConfig,
    model: GLM,
    data: Iterable[Batch],
    *,
    info: DistInfo,
    device: torch.device,
    tokenizer: Any,
    resume: str | None,
    sink: MetricSink | None,
    show_bar: bool,
    dry_run: bool,
) -> Run:
    """Resume (or ``train.init_from``), build the engine, restore optimizer and RNG states."""
    tc, run_dir = cfg.train, Path(cfg.train.out_dir)
    lock = RunLock(run_dir) if info.is_main and not dry_run else None
    if info.is_main and not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    found = find_resume(run_dir, resume, info)  # weights go in before wrapping, the rest after
    loaded = found[1] if found else None
    if loaded is not None and "model" in loaded:  # a sharded (DCP) one loads after wrapping
        load_weights(model, loaded["model"], source=str(found[0] / "model.safetensors"))
    if loaded is not None:
        if "loader" in loaded["rank"] and hasattr(data, "load_state_dict"):
            data.load_state_dict(loaded["rank"]["loader"])  # type: ignore[attr-defined]
        log.info("resumed from %s (step %d)", found[0], loaded["meta"]["step"])
    else:
        if tc.init_from:
            init_from(tc.init_from, model, tokenizer)
        torch.manual_seed(tc.seed + info.rank)  # dropout streams differ per rank
    engine = Engine(TargetLogits(model), list(model.transformer.layers), cfg.optim, info=info,
                    device=device, strategy=cfg.dist.strategy,
                    precision=pinned_choice(tc.precision, loaded, "precision", device),
                    compile=tc.compile, activation_checkpointing=tc.activation_checkpointing,
                    clip_grad=cfg.optim.clip_grad, keep_freed_memory=tc.keep_freed_memory,
                    cpu_linears=pinned_choice(tc.cpu_linears, loaded, "cpu_linears", device))  # fmt: skip
    start = loaded["meta"]["step"] if loaded is not None else 0
    run = Run(cfg=cfg, model=model, engine=engine, data=data, batches=iter(data), info=info,
              tokenizer=tokenizer, show_bar=show_bar, peak=peak_flops(device, cfg.log.peak_flops),
              sink=sink or (default_sinks(run_dir, cfg.log.tensorboard, start_step=start)
                            if info.is_main else NullSink()), lock=lock,
              bar=None, schedule_steps=cfg.optim.decay_steps or tc.max_steps)  # fmt: skip
    if loaded is not None:
        meta = loaded["meta"]
        if "dcp" in loaded:
            dcp_io.load_sharded(loaded["dcp"], engine.module, engine.optimizer)
        else:
            ckpt_io.load_optimizer_state(engine.module, engine.optimizer, loaded["optimizer"],
                                         engine.sharded)  # fmt: skip
        set_rng_state(loaded["rank"]["rng"], device)
        run.step, run.tokens_seen = meta["step"], meta.get("tokens_seen", 0)
        run.resumed_from = run.last_good = found[0]
        saved = meta.get("schedule_steps")
        if saved and not cfg.optim.decay_steps:
            run.schedule_steps = saved
            if saved != tc.max_steps:
                log.info("keeping the LR schedule of %d steps (train.max_steps is now %d); set "
                         "optim.decay_steps to re-plan it", saved, tc.max_steps)  # fmt: skip
    run.bar = progress_bar(tc.max_steps, initial=run.step, disable=not show_bar, desc="pretrain",
                           unit="step")  # fmt: skip
    run.deadline = time.monotonic() + 60 * tc.max_minutes if tc.max_minutes else math.inf
    run.interval_start = time.perf_counter()
    return run


# --------------------------------------------------------------------------------------------
# Stage 2: one optimizer step (no host sync)
# --------------------------------------------------------------------------------------------


def _pretrain_loss(module: torch.nn.Module, item: tuple[Batch, torch.Tensor, int]):
    batch, index, first = item
    return loss_sums(module(batch, index, first), batch, index)


def _target_count(item: tuple[Batch, torch.Tensor, int]) -> torch.Tensor:
    return item[0].loss_mask.sum()


def train_step(run: Run) -> Pending:
    """Take ``train.grad_accum`` micro-batches and make one optimizer step on them."""
    cfg, device = run.cfg, run.device
    lr = lr_at(run.step, cfg.optim, run.schedule_steps)
    host = [next(run.batches) for _ in range(cfg.train.grad_accum)]
    micro = [to_device(b, device) for b in host]
    result = run.engine.step(micro, _pretrain_loss, _target_count, lr)
    run.step += 1
    run.bar.update(1)
    flops = sum(train_flops(cfg.model, b.input_ids.numel(), b.input_ids.shape[1], 0) for b in host)
    pending = Pending(step=run.step, lr=lr, result=result, samples=torch.cat(
        [b.sample_index.flatten() for b in host]), tokens=sum(b.input_ids.numel() for b in host),
        flops=flops)  # fmt: skip
    run.pending.append(pending)
    return pending


# --------------------------------------------------------------------------------------------
# Stage 3: metrics (the one host read-back), the guard, evaluation, checkpoints
# --------------------------------------------------------------------------------------------


def flush_metrics(run: Run, stop: bool = False) -> bool:
    """Read the pending steps back (one sync), log a row per step; returns the agreed stop."""
    if not run.pending:
        return stop
    cfg, info, pending = run.cfg, run.info, run.pending
    host = torch.tensor([sum(p.tokens for p in pending), sum(p.flops for p in pending),
                         float(stop)], dtype=torch.float64, device=run.device)  # fmt: skip
    all_reduce_sum(host, info)
    rows = torch.stack(
        [
            torch.cat(
                [
                    p.result.stats,
                    p.result.count.view(1),
                    p.result.grad_norm.double().view(1),
                    p.result.finite.double().view(1),
                ]
            )
            for p in pending
        ]
    )
    values, (tokens, flops, stops) = rows.cpu(), host.tolist()  # fmt: skip
    seconds = max(time.perf_counter() - run.interval_start, 1e-9)
    head = train_flops(cfg.model, 0, 1, int(values[:, 2 + 2 * N_OBJ].sum()))  # output layer
    rates = {"tokens_per_s": tokens / seconds}
    if run.peak:
        rates["mfu"] = (flops + head) / seconds / (run.peak * info.world_size)
    for p, v in zip(pending, values, strict=True):
        finite = bool(v[-1])
        run.bad_steps = 0 if finite else run.bad_steps + 1
        metrics = {**summarize(v[: 2 + 2 * N_OBJ]), "lr": p.lr, "grad_norm": float(v[-2]),
                   **rates, "skipped": float(not finite)}  # fmt: skip
        if not finite:
            log.warning("step %d: non-finite loss %s / grad norm %s; skipped (rank %d samples %s)",
                        p.step - 1, metrics["loss"], metrics["grad_norm"], info.rank,
                        p.samples.tolist()[:32])  # fmt: skip
        run.sink.log(p.step, metrics)
        if p.step % cfg.log.every == 0 or p.step == cfg.train.max_steps:
            line = log_line(p.step, cfg.train.max_steps, metrics)
            run.bar.write(line) if run.show_bar else log.info(line)
        run.metrics = metrics
    run.tokens_seen += int(tokens)
    run.bar.set_postfix(loss=f"{run.metrics['loss']:.3f}", tok_s=f"{rates['tokens_per_s']:.0f}")
    run.pending, run.interval_start = [], time.perf_counter()
    return stops > 0


def save(run: Run) -> Path | None:
    """Checkpoint everything resumable; None (and a warning) if the weights are not finite."""
    if not run.engine.weights_finite():
        log.error("step %d: the weights are not finite; not saving them", run.step)
        return None
    rank_state: dict[str, Any] = {"rng": rng_state(run.device)}
    if hasattr(run.data, "state_dict"):
        rank_state["loader"] = run.data.state_dict()  # type: ignore[attr-defined]
    engine, tc, dc = run.engine, run.cfg.train, run.cfg.dist
    meta = {"tokens_seen": run.tokens_seen, "schedule_steps": run.schedule_steps,
            "cpu_linears": "onednn" if engine.onednn_linears else "mkl",
            "precision": engine.precision, "device_type": run.device.type}  # fmt: skip
    sharded = dcp_io.use_sharded(dc.checkpoint, dc.strategy, run.info)
    states = dcp_io.save_states(engine.module, engine.optimizer, engine.sharded, sharded)
    meta.update({"format": dcp_io.FORMAT} if sharded else {})
    path = ckpt_io.save_checkpoint(tc.out_dir, run.step, info=run.info, rank_state=rank_state,
                                   config=to_dict(run.cfg), meta=meta, tokenizer=run.tokenizer,
                                   keep_last=tc.keep_last, **states)  # fmt: skip
    run.last_ckpt = run.last_good = path
    return path


def _check_guard(run: Run, dry_run: bool) -> None:
    if run.bad_steps < run.cfg.train.max_bad_steps:
        return
    path = None if dry_run else save(run)  # skipped steps leave the weights as they were
    if path is not None:
        where = f"the last finite weights are saved in {path}"
    else:
        where = "the weights are not finite, so nothing was saved" + (
            f"; the newest checkpoint with finite weights is {run.last_good}"
            if run.last_good else "")  # fmt: skip
    _close(run)
    raise TrainingDiverged(
        f"{run.bad_steps} consecutive non-finite steps (last at step {run.step}); {where}. "
        "Lower optim.lr, check the data, or use train.precision=fp32"
    )


def _evaluate(run: Run, valid: Callable[[], Iterable[Batch]]) -> None:
    tc = run.cfg.train
    ev = evaluate(run.engine.wrapped, take(valid(), tc.eval_batches), run.device, run.info,
                  run.engine.autocast)  # fmt: skip
    ev = {f"valid/{k}": v for k, v in ev.items()}
    run.sink.log(run.step, ev)
    run.bar.write(log_line(run.step, tc.max_steps, ev)) if run.show_bar else log.info(ev)


def after_step(run: Run, flag: StopFlag, valid, dry_run: bool) -> str | None:
    """Flush metrics, evaluate and save when due; a status string when the loop must stop.

    Every rank flushes at the same steps (a function of the step only), so the collective calls
    inside match; one process also flushes as soon as it is signalled or out of time."""
    tc, step = run.cfg.train, run.step
    out_of_time = time.monotonic() > run.deadline
    local_stop = flag.stop or out_of_time
    save_due = bool(tc.save_every and step % tc.save_every == 0) or step == tc.max_steps
    eval_due = valid is not None and tc.eval_every and step % tc.eval_every == 0
    sync_every = min(run.cfg.log.every, tc.max_bad_steps)
    due = step % sync_every == 0 or save_due or eval_due or dry_run
    stop = False
    if due or (local_stop and not run.info.distributed):
        stop = flush_metrics(run, local_stop)
        _check_guard(run, dry_run)
    if dry_run:
        return "dry-run"
    if eval_due:
        _evaluate(run, valid)
    if stop or save_due:
        save(run)
    if stop:
        return "out of time" if out_of_time and not flag.stop else "interrupted"
    return None


def _close(run: Run) -> None:
    run.bar.close()
    run.sink.close()
    if run.lock is not None:
        run.lock.release()


def train(
    cfg: RunConfig,
    model: GLM,
    data: Iterable[Batch],
    *,
    info: DistInfo | None = None,
    device: torch.device | str = "cpu",
    valid: Callable[[], Iterable[Batch]] | None = None,
    tokenizer: Any = None,
    resume: str | None = None,
    sink: MetricSink | None = None,
    progress: bool | None = None,
    dry_run: bool = False,
) -> TrainResult:
    """Pretrain ``model`` on ``data`` for ``cfg.train.max_steps`` optimizer steps.

    Args:
        cfg: the run config (the loop reads train, optim, dist and log; writes it to config.json).
        model: a GLM, already initialised (identically on every rank).
        data: micro-batches for this rank, forever; ``state_dict``/``load_state_dict`` if resumable.
        info: this process (one process when None).
        device: where to train.
        valid: builds a fresh held-out iterable for each evaluation (``cfg.train.eval_batches``
            micro-batches are taken from it).
        tokenizer: saved into every checkpoint when given (and checked against
            ``train.init_from``'s).
        resume: None (start fresh), ``"auto"`` (newest good checkpoint in the run folder, else
            fresh) or a checkpoint folder.
        sink: where per-step metrics go (default: metrics.jsonl + TensorBoard on rank 0).
        progress: tqdm bar (default ``cfg.log.progress``; rank 0 only).
        dry_run: one step, no checkpoint.

    Returns:
        A ``TrainResult``; status "already finished" (nothing trained) when the resumed
        checkpoint is at ``train.max_steps`` already.

    Raises:
        TrainingDiverged: after ``cfg.train.max_bad_steps`` consecutive non-finite steps.
    """
    info = info or DistInfo()
    show_bar = bool(cfg.log.progress if progress is None else progress) and info.is_main
    run = setup(cfg, model, data, info=info, device=torch.device(device), tokenizer=tokenizer,
                resume=resume, sink=sink, show_bar=show_bar, dry_run=dry_run)  # fmt: skip
    if run.resumed_from is not None and run.step >= cfg.train.max_steps:
        _close(run)
        return TrainResult(step=run.step, status="already finished",
                           checkpoint=run.resumed_from, metrics={})  # fmt: skip
    status = "done"
    run.engine.wrapped.train()
    with StopFlag() as flag:
        while run.step < cfg.train.max_steps:
            train_step(run)
            stopped = after_step(run, flag, valid, dry_run)
            if stopped:
                status = stopped
                break
    _close(run)
    return TrainResult(step=run.step, status=status, checkpoint=run.last_ckpt,
                       metrics=run.metrics, signal=flag.signum if status == "interrupted"
                       else None)  # fmt: skip


__all__ = ["Run", "TargetLogits", "TrainResult", "TrainingDiverged", "after_step", "evaluate",
           "flush_metrics", "init_from", "loss_sums", "save", "setup", "train", "train_step"]  # fmt: skip
