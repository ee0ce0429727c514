"""The fine-tuning loop shared by cloze and seq2seq tasks: epochs -> steps -> eval -> best checkpoint.

The task (a ``Recipe``) supplies only its loss and its evaluation; everything else is the
training engine's (``blankfill.train.engine``): device, DDP/FSDP2 under torchrun, precision,
gradient accumulation, clipping, activation checkpointing, compile, the non-finite guard.

Each optimizer step takes the next ``batch_size`` examples of the (seed, epoch) order; under
``torchrun`` rank r takes every world_size-th of them, split into ``finetune.grad_accum``
micro-batches, and the loss is the sum over every example (or target token) of every rank
divided by their global count, so N processes compute what one process computes. Evaluation is
sharded the same way and gathered (``EvalContext``). After each epoch the validation set is
scored and, when the selection metric improves, rank 0 writes the model to ``out_dir/best``
atomically. One JSON line per epoch goes to ``out_dir/metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..config import FinetuneRunConfig, to_dict
from ..pretrained import atomic_write_text, save_state
from ..safeio import guard_write, save_safetensors
from ..train.checkpoint import full_model_state
from ..train.distributed import DistInfo, all_reduce_max, all_reduce_sum, barrier
from ..train.engine import Engine, StepResult, TaskModule
from ..train.metrics import finite_or_none
from ..train.optim import lr_at
from ..train.resume import StopFlag

log = logging.getLogger(__name__)

HEAD_NAME = "head.safetensors"
INFO_NAME = "finetune.json"

#: (glm, head, items) -> the summed loss (with grad) of a list of train items.
TaskLoss = Callable[[nn.Module, "nn.Module | None", Sequence[Any]], torch.Tensor]


@dataclass
class EvalContext:
    """How a task evaluates inside the engine: ``run(fn, *args)`` is ``fn(glm, head, *args)``
    through the wrapped module (no grad, the run's autocast); ``shard``/``gather`` split a list
    across ranks and put it back together in order; ``sum`` adds a tensor over ranks."""

    run: Callable[..., Any]
    info: DistInfo = field(default_factory=DistInfo)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def shard(self, items: Sequence[Any]) -> list[Any]:
        return list(items[self.info.rank :: self.info.world_size])

    def gather(self, mine: list[Any], n: int) -> list[Any]:
        if not self.info.distributed:
            return mine
        parts: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(parts, mine)
        out: list[Any] = [None] * n
        for r, part in enumerate(parts):
            out[r :: self.info.world_size] = part
        return out

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t, self.info)


def local_context(model: nn.Module, head: nn.Module | None = None) -> EvalContext:
    """An ``EvalContext`` for one process and a plain model (evaluation outside training)."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def run(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(model, head, *args)

    return EvalContext(run=run, device=device)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What the loop needs to know about a task kind (cloze or seq2seq)."""

    name: str  # task name, written to finetune.json
    loss: TaskLoss  # the summed loss of a list of train items
    count: Callable[[Sequence[Any]], int]  # what that loss sums over (examples, target tokens)
    evaluate: Callable[[EvalContext], dict[str, float]]  # validation metrics, same on every rank
    info: dict[str, Any]  # extra fields for finetune.json (pattern id, head, ...)
    head: nn.Module | None = None  # trainable parameters beside the GLM (classifier head)


def selection_score(metrics: dict[str, float]) -> float:
    """The number the best checkpoint is chosen by: the mean of the task's metrics (higher is
    better; losses are reported but not used)."""
    values = [v for k, v in metrics.items() if not k.endswith("loss")]
    return sum(values) / max(len(values), 1)


def save_finetuned(
    state: dict[str, torch.Tensor],
    cfg: Any,
    out: Path,
    tokenizer,
    info: dict,
    lora: int = 0,
    merge: bool = True,
) -> None:
    """Write a loadable model folder (+ ``head.*`` weights, + finetune.json) atomically.

    ``state`` holds the GLM's weights as ``glm.*`` and a head's as ``head.*`` (CPU tensors);
    ``lora``: the adapters' rank, merged into the weights or (``merge=False``) saved apart."""
    adapters: dict[str, torch.Tensor] = {}
    if lora:
        from .lora import split_state

        state, adapters = split_state(state, lora, merge)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    glm = {k[4:]: v for k, v in state.items() if k.startswith("glm.")}
    head = {k[5:]: v.contiguous() for k, v in state.items() if k.startswith("head.")}
    with guard_write(out, tmp, hint=f"the previous {out} is intact" if out.exists() else ""):
        save_state(glm, cfg, tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
        if head:
            save_safetensors(head, tmp / HEAD_NAME)
        if adapters:
            from .lora import save_adapter

            save_adapter(tmp, {k[4:]: v for k, v in adapters.items()}, lora)
        atomic_write_text(tmp / INFO_NAME, json.dumps(info, indent=2) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def build_engine(model, recipe: Recipe, cfg: FinetuneRunConfig, info: DistInfo, device) -> Engine:
    """The engine over ``TaskModule(model, recipe.head)`` with the fine-tuning settings."""
    ft = cfg.finetune
    return Engine(TaskModule(model, recipe.head), list(model.transformer.layers), cfg.optim,
                  info=info, device=torch.device(device), strategy=cfg.dist.strategy,
                  precision=ft.precision, compile=ft.compile,
                  activation_checkpointing=ft.activation_checkpointing,
                  clip_grad=cfg.optim.clip_grad, keep_freed_memory=ft.keep_freed_memory)  # fmt: skip


def _micro_batches(items: list[Any], info: DistInfo, accum: int) -> list[tuple[list[Any], float]]:
    """This rank's share of a global batch in ``accum`` pieces, as (items, weight). A rank left
    without items runs one with weight 0, so every rank takes part in the gradient sync."""
    mine = items[info.rank :: info.world_size]
    if not mine:
        return [(items[:1], 0.0)]
    size = math.ceil(len(mine) / accum)
    return [(mine[i : i + size], 1.0) for i in range(0, len(mine), size)]


def train(
    model,
    recipe: Recipe,
    train_items: Sequence[Any],
    cfg: FinetuneRunConfig,
    *,
    epochs: int,
    batch_size: int,
    out_dir: str | Path | None = None,
    tokenizer=None,
    on_step: Callable[[dict], None] | None = None,
    info: DistInfo | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` (+ ``recipe.head``) on ``train_items``; evaluate after each epoch.

    Args:
        model: a GLM (identical on every rank).
        recipe: the task's loss and evaluation.
        train_items: encoded training examples (whatever ``recipe.loss`` takes).
        cfg: the run config (``finetune``, ``optim`` and ``dist`` sections).
        epochs, batch_size: resolved values (task defaults applied by the caller);
            ``batch_size`` examples per optimizer step over all ranks.
        out_dir: where ``best/`` and ``metrics.jsonl`` go (rank 0); None writes nothing.
        tokenizer: saved with the best checkpoint.
        on_step: called after each step with {"step", "epoch", "lr"} (a progress bar).
        info: this process (one process when None).
        device: where to train (default: the model's device).

    Returns:
        {"best": metrics of the best epoch, "best_epoch", "history": one dict per epoch}.
    """
    if not train_items:
        raise ValueError("the training set is empty")
    info = info or DistInfo()
    ft = cfg.finetune
    if ft.lora_rank:
        from .lora import add_lora

        add_lora(model, ft.lora_rank)
    engine = build_engine(model, recipe, cfg, info, device or next(model.parameters()).device)
    total = epochs * math.ceil(len(train_items) / batch_size)
    out = Path(out_dir) if out_dir is not None and info.is_main else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    progress, step = _Progress(out=out, save=out_dir is not None), 0
    with StopFlag() as flag:
        deadline = time.monotonic() + 60 * ft.max_minutes if ft.max_minutes else math.inf
        stop = _stop_check(flag, info, engine.device, deadline)
        for epoch in range(epochs):
            t0 = time.perf_counter()
            results = train_epoch(engine, recipe, train_items, cfg, epoch=epoch, first_step=step,
                                  total=total, batch_size=batch_size, on_step=on_step,
                                  stop=stop)  # fmt: skip
            step += len(results)
            _end_epoch(engine, recipe, model, cfg, tokenizer, results, epoch, step, t0, progress)
            if stop(step, final=True):  # a signal or the time budget: best/ is as good as it got
                progress.history[-1]["interrupted"] = True
                return progress.result(interrupted=True, signal=flag.signum,
                                       out_of_time=flag.signum is None)  # fmt: skip
    return progress.result()


def _stop_check(
    flag: StopFlag, info: DistInfo, device: torch.device, deadline: float = math.inf
) -> Callable[..., bool]:
    """Whether to stop after ``step`` (a signal, or ``deadline`` passed): one process at once;
    several agree every 10 steps (and at the end of an epoch), so that they stop at the same step."""

    def stop(step: int, final: bool = False) -> bool:
        due = flag.stop or time.monotonic() > deadline
        if not info.distributed:
            return due
        if step % 10 and not final:
            return False
        t = torch.tensor(float(due), device=device)
        return bool(all_reduce_max(t, info).item())

    return stop


@dataclass
class _Progress:
    """What the epochs have found so far, and where best/ goes."""

    out: Path | None  # rank 0's run folder
    save: bool  # whether best/ is written at all
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_epoch: int = -1

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "history": self.history,
                **extra}  # fmt: skip


def _end_epoch(engine: Engine, recipe: Recipe, model, cfg: FinetuneRunConfig, tokenizer,
               results: list[StepResult], epoch: int, step: int, t0: float,
               progress: _Progress) -> None:  # fmt: skip
    """Evaluate, log the epoch's row, write best/ when the selection metric improved."""
    ft, p = cfg.finetune, progress
    metrics = recipe.evaluate(_eval_context(engine))
    row = _epoch_row(results, epoch, step, t0, metrics)
    p.history.append(row)
    log.info("epoch %d: %s", epoch + 1, json.dumps(row))
    improved = p.best is None or selection_score(metrics) > selection_score(p.best)
    if improved:
        p.best, p.best_epoch = metrics, epoch + 1
    if p.out is not None:
        with (p.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(finite_or_none(row)) + "\n")  # NaN -> null
    if improved and p.save:
        info_json = {"task": recipe.name, **recipe.info, "epoch": epoch + 1, "metrics": metrics}
        state = full_model_state(engine.module, engine.sharded)  # collective under FSDP
        if p.out is not None:
            save_finetuned(state, model.config, p.out / "best", tokenizer, info_json,
                           lora=ft.lora_rank, merge=ft.lora_merge)  # fmt: skip
        barrier(engine.info)


def train_epoch(
    engine: Engine,
    recipe: Recipe,
    train_items: Sequence[Any],
    cfg: FinetuneRunConfig,
    *,
    epoch: int,
    first_step: int,
    total: int,
    batch_size: int,
    on_step: Callable[[dict], None] | None = None,
    stop: Callable[[int], bool] | None = None,
) -> list[StepResult]:
    """One pass in the (seed, epoch) order: ``Engine.step`` per ``batch_size`` examples; ends
    early when ``stop(step)`` says so (a signal)."""

    def loss(module: nn.Module, micro: tuple[list[Any], float]):
        items, weight = micro
        value = module(recipe.loss, items) * weight
        return value, value.detach().double().view(1)

    def count(micro: tuple[list[Any], float]) -> torch.Tensor:
        # host-side (from the items, no forward): the divisor is known before backward
        return torch.tensor(recipe.count(micro[0]) * micro[1], device=engine.device)

    engine.wrapped.train()
    order = np.random.default_rng([cfg.finetune.seed, epoch]).permutation(len(train_items))
    results, step = [], first_step
    for start in range(0, len(order), batch_size):
        items = [train_items[i] for i in order[start : start + batch_size]]
        micro = _micro_batches(items, engine.info, cfg.finetune.grad_accum)
        lr = lr_at(step, cfg.optim, total)
        results.append(engine.step(micro, loss, count, lr))
        step += 1
        if on_step is not None:
            on_step({"step": step, "epoch": epoch, "lr": lr, "total": total})
        if stop is not None and stop(step):
            break
    return results


def _epoch_row(results: list[StepResult], epoch: int, step: int, t0: float, metrics: dict) -> dict:
    stats = torch.stack(
        [torch.stack([r.stats[0] / r.count.clamp(min=1), r.finite.double()]) for r in results]
    ).cpu()  # one read-back per epoch
    seconds = time.perf_counter() - t0  # training and evaluation of the epoch
    return {"epoch": epoch + 1, "step": step, "train_loss": float(stats[:, 0].mean()),
            "skipped_steps": int((stats[:, 1] == 0).sum()), "seconds": round(seconds, 2),
            **metrics}  # fmt: skip


def _eval_context(engine: Engine) -> EvalContext:
    def run(fn: Callable[..., Any], *args: Any) -> Any:
        was = engine.wrapped.training
        engine.wrapped.eval()
        try:
            with torch.no_grad(), engine.autocast():
                return engine.wrapped(fn, *args)
        finally:
            engine.wrapped.train(was)

    return EvalContext(run=run, info=engine.info, device=engine.device)
