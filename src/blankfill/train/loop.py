"""The pretraining loop: setup -> (lr -> micro-steps -> clip -> step -> log -> eval/ckpt) -> done.

The loop receives its model and data as arguments (tests inject small ones). ``data`` is an
iterable of ``Batch`` with ``state_dict()`` / ``load_state_dict()`` (the data-loader position);
everything resumable (model, optimizer, step, data position, RNG states) is checkpointed together.

Loss (spec §3.3 notes, style §3.4): the sum of target-token cross-entropies over every micro-batch
of every rank, divided by the global count of target tokens, so that varying Part-B lengths weigh
tokens, not samples. Logits are computed only on target rows (``model.logits(h[mask])``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig, to_dict
from ..data.batch import OBJECTIVES, Batch
from ..model import GLM
from ..pretrained import load_weights
from ..progress import progress_bar
from ..safeio import RunLock
from . import checkpoint as ckpt_io
from .distributed import DistInfo, all_reduce_max, all_reduce_sum, no_grad_sync, wrap_model
from .metrics import MetricSink, NullSink, default_sinks, peak_flops, train_flops
from .optim import build_optimizer, lr_at, set_lr

log = logging.getLogger(__name__)

N_OBJ = len(OBJECTIVES)


class TrainingDiverged(ValueError):
    """Too many consecutive non-finite steps; the last good state was checkpointed."""


class TargetLogits(nn.Module):
    """The GLM with the pretraining head: logits of the target rows only, [N, V]."""

    def __init__(self, glm: GLM) -> None:
        super().__init__()
        self.glm = glm

    def forward(self, batch: Batch) -> torch.Tensor:
        h = self.glm.hidden(
            batch.input_ids, batch.position_ids, batch.context_len, batch.attention_mask
        )  # [B, T, D]
        return self.glm.logits(h[batch.loss_mask > 0])  # [N, V]


def loss_sums(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed target cross-entropy (with grad) and detached stats.

    Args:
        logits: [N, V] for the N target rows of ``batch``.
        batch: the micro-batch.

    Returns:
        ``(ce_sum, stats)``: ``ce_sum`` a scalar; ``stats`` float64 [2 + 2 * objectives]:
        ce sum, target count, per-objective ce sums, per-objective counts.
    """
    target = batch.loss_mask > 0  # [B, T]
    weight = batch.loss_mask[target].float()  # [N]
    ce = F.cross_entropy(logits.float(), batch.labels[target], reduction="none") * weight  # [N]
    obj = batch.objective[target].clamp(0, N_OBJ - 1)  # [N]
    stats = torch.zeros(2 + 2 * N_OBJ, dtype=torch.float64, device=logits.device)
    stats[0] = ce.detach().sum()
    stats[1] = weight.sum()
    stats[2 : 2 + N_OBJ].index_add_(0, obj, ce.detach().double())
    stats[2 + N_OBJ :].index_add_(0, obj, weight.double())
    return ce.sum(), stats


def summarize(stats: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """``{loss, loss/MASK, ...}`` from summed stats (objectives with no targets are omitted)."""
    s = stats.tolist()
    out = {f"{prefix}loss": s[0] / max(s[1], 1.0)}
    for i, name in enumerate(OBJECTIVES):
        if s[2 + N_OBJ + i] > 0:
            out[f"{prefix}loss/{name}"] = s[2 + i] / s[2 + N_OBJ + i]
    return out


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast where it runs natively (CUDA with bf16 support) or when asked; else fp32."""
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Batch], device: torch.device, info: DistInfo, autocast=None
) -> dict[str, float]:
    """Token-averaged held-out loss (and per objective) of a ``TargetLogits`` over ``batches``."""
    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    total = torch.zeros(2 + 2 * N_OBJ, dtype=torch.float64, device=device)
    for batch in batches:
        batch = batch.to(device)
        with autocast():
            logits = model(batch)
        total += loss_sums(logits, batch)[1]
    model.train(was_training)
    return summarize(all_reduce_sum(total, info))


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after each step, saves and returns."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop = True
        log.warning("received %s: saving a checkpoint, then stopping", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class TrainResult:
    step: int  # optimizer steps taken
    status: str  # "done" | "interrupted" | "out of time" | "dry-run"
    checkpoint: Path | None  # the last checkpoint written
    metrics: dict[str, float]  # the last step's metrics


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


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
        tokenizer: saved into every checkpoint when given.
        resume: None (start fresh), ``"auto"`` (newest good checkpoint in the run folder, else
            fresh) or a checkpoint folder.
        sink: where per-step metrics go (default: metrics.jsonl + TensorBoard on rank 0).
        progress: tqdm bar (default ``cfg.log.progress``; rank 0 only).
        dry_run: one step, no checkpoint.

    Returns:
        A ``TrainResult``.

    Raises:
        TrainingDiverged: after ``cfg.train.max_bad_steps`` consecutive non-finite steps.
    """
    info = info or DistInfo()
    device = torch.device(device)
    tc, run_dir = cfg.train, Path(cfg.train.out_dir)
    sharded = info.distributed and cfg.dist.strategy == "fsdp"
    if info.is_main and not dry_run:
        _lock = RunLock(run_dir)  # held until train() returns: "RUN is in use by process N"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))

    # ---- resume: weights go in before wrapping, the rest after -------------------------------
    step, tokens_seen, loaded = 0, 0, None
    if resume:
        found = (
            ckpt_io.load_latest(run_dir, info)
            if resume == "auto"
            else (Path(resume), ckpt_io.load_checkpoint(resume, info))
        )
        if found:
            path, loaded = found
            load_weights(model, loaded["model"], source=str(path / "model.safetensors"))
            step, tokens_seen = loaded["meta"]["step"], loaded["meta"].get("tokens_seen", 0)
            if "loader" in loaded["rank"] and hasattr(data, "load_state_dict"):
                data.load_state_dict(loaded["rank"]["loader"])  # type: ignore[attr-defined]
            log.info("resumed from %s (step %d)", path, step)
        else:
            log.info("no checkpoint in %s: starting fresh", run_dir / ckpt_io.CHECKPOINTS)
    if loaded is None:
        torch.manual_seed(tc.seed + info.rank)  # dropout streams differ per rank

    head = TargetLogits(model.to(device))
    wrapped = wrap_model(head, list(model.transformer.layers), cfg.dist.strategy, info, device)
    if tc.compile:
        wrapped = torch.compile(wrapped)
    optimizer = build_optimizer(head, cfg.optim)
    if loaded is not None:
        ckpt_io.load_optimizer_state(head, optimizer, loaded["optimizer"], sharded)
        _set_rng_state(loaded["rank"]["rng"], device)
        del loaded
    params = [p for p in head.parameters() if p.requires_grad]
    autocast = autocast_for(tc.precision, device)
    sink = sink or (
        default_sinks(run_dir, cfg.log.tensorboard, start_step=step) if info.is_main else NullSink()
    )
    show_bar = (cfg.log.progress if progress is None else progress) and info.is_main
    peak = peak_flops(device, cfg.log.peak_flops)
    last_ckpt: Path | None = None
    metrics: dict[str, float] = {}
    status = "done"

    def save() -> Path:
        rank_state: dict[str, Any] = {"rng": _rng_state(device)}
        if hasattr(data, "state_dict"):
            rank_state["loader"] = data.state_dict()
        return ckpt_io.save_checkpoint(
            run_dir,
            step,
            info=info,
            model_state=_strip(ckpt_io.full_model_state(head, sharded)),
            optimizer_state=ckpt_io.full_optimizer_state(head, optimizer, sharded),
            rank_state=rank_state,
            config=to_dict(cfg),
            meta={"tokens_seen": tokens_seen},
            tokenizer=tokenizer,
            keep_last=tc.keep_last,
        )

    bar = progress_bar(
        tc.max_steps, initial=step, disable=not show_bar, desc="pretrain", unit="step"
    )
    batches = iter(data)
    bad_steps = 0
    deadline = time.monotonic() + 60 * tc.max_minutes if tc.max_minutes else math.inf
    wrapped.train()
    with _StopFlag() as flag:
        while step < tc.max_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg.optim, tc.max_steps)
            set_lr(optimizer, lr)
            micro = [next(batches).to(device) for _ in range(tc.grad_accum)]
            count = torch.tensor([float(b.loss_mask.sum()) for b in micro], dtype=torch.float64)
            global_count = float(all_reduce_sum(count.sum().to(device), info).item())
            scale = info.world_size / max(global_count, 1.0)  # wrappers average over ranks
            stats = torch.zeros(2 + 2 * N_OBJ, dtype=torch.float64, device=device)
            for i, batch in enumerate(micro):
                with no_grad_sync(wrapped, cfg.dist.strategy, info, sync=i == len(micro) - 1):
                    with autocast():
                        ce_sum, s = loss_sums(wrapped(batch), batch)
                    (ce_sum * scale).backward()
                stats += s
            all_reduce_sum(stats, info)
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad or math.inf)
            if hasattr(gnorm, "full_tensor"):
                gnorm = gnorm.full_tensor()
            gnorm_f = float(gnorm)
            metrics = {**summarize(stats), "lr": lr, "grad_norm": gnorm_f}
            if math.isfinite(metrics["loss"]) and math.isfinite(gnorm_f):
                optimizer.step()
                bad_steps = 0
            else:
                bad_steps += 1
                idx = torch.cat([b.sample_index.flatten().cpu() for b in micro]).tolist()
                log.warning(
                    "step %d: non-finite loss %s / grad norm %s; skipped (rank %d samples %s)",
                    step, metrics["loss"], gnorm_f, info.rank, idx[:32],
                )  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            step += 1
            n_tokens = float(sum(b.input_ids.numel() for b in micro))
            n_tokens = float(all_reduce_sum(torch.tensor(n_tokens, device=device), info).item())
            tokens_seen += int(n_tokens)
            dt = time.perf_counter() - t0
            metrics["tokens_per_s"] = n_tokens / dt
            metrics["skipped"] = float(bad_steps > 0)
            if peak:
                flops = info.world_size * sum(
                    train_flops(model.config, b.input_ids.numel(), b.input_ids.shape[1], n)
                    for b, n in zip(micro, count.tolist(), strict=True)
                )
                metrics["mfu"] = flops / dt / (peak * info.world_size)
            sink.log(step, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            if step % cfg.log.every == 0 or step == tc.max_steps:
                line = _log_line(step, tc.max_steps, metrics)
                bar.write(line) if show_bar else log.info(line)
            if bad_steps >= tc.max_bad_steps:
                path = save() if not dry_run else None
                bar.close()
                sink.close()
                raise TrainingDiverged(
                    f"{bad_steps} consecutive non-finite steps (last at step {step}); the last good "
                    f"state is saved in {path}. Lower optim.lr, check the data, or use "
                    "train.precision=fp32"
                )
            if dry_run:
                status = "dry-run"
                break
            if valid is not None and tc.eval_every and step % tc.eval_every == 0:
                ev = evaluate(wrapped, _take(valid(), tc.eval_batches), device, info, autocast)
                ev = {f"valid/{k}": v for k, v in ev.items()}
                sink.log(step, ev)
                bar.write(_log_line(step, tc.max_steps, ev)) if show_bar else log.info(ev)
            out_of_time = time.monotonic() > deadline
            stop = torch.tensor(float(flag.stop or out_of_time), device=device)
            stop = bool(all_reduce_max(stop, info).item())
            if stop or (tc.save_every and step % tc.save_every == 0) or step == tc.max_steps:
                last_ckpt = save()
            if stop:
                status = "out of time" if out_of_time and not flag.stop else "interrupted"
                break
    bar.close()
    sink.close()
    return TrainResult(step=step, status=status, checkpoint=last_ckpt, metrics=metrics)


def _strip(state: dict[str, torch.Tensor], prefix: str = "glm.") -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _take(it: Iterable[Batch], n: int) -> Iterable[Batch]:
    for i, b in enumerate(it):
        if i >= n:
            return
        yield b


def _log_line(step: int, total: int, m: dict[str, float]) -> str:
    parts = [f"step {step}/{total}"]
    for k, v in m.items():
        if k == "skipped":
            continue
        fmt = ".2e" if k == "lr" else (".1%" if k == "mfu" else (".0f" if "per_s" in k else ".4f"))
        parts.append(f"{k} {v:{fmt}}")
    return " | ".join(parts)


__all__ = ["TargetLogits", "TrainResult", "TrainingDiverged", "evaluate", "loss_sums", "train"]
