"""The fine-tuning loop shared by cloze and seq2seq tasks: epochs -> steps -> eval -> best checkpoint.

Stages per optimizer step: ``lr_at(step)`` -> forward/loss -> backward -> clip -> step. After each
epoch the validation set is scored and, when the selection metric improves, the model is written to
``out_dir/best`` atomically (written to a temporary folder, then renamed). One JSON line per epoch
goes to ``out_dir/metrics.jsonl``. The data order depends only on (seed, epoch).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ..config import FinetuneRunConfig, to_dict
from ..pretrained import atomic_write_text, save_pretrained
from ..train.optim import build_optimizer, lr_at, set_lr

log = logging.getLogger(__name__)

HEAD_NAME = "head.safetensors"
INFO_NAME = "finetune.json"


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What the loop needs to know about a task kind (cloze or seq2seq)."""

    name: str  # task name, written to finetune.json
    loss: Callable[[Sequence[Any]], torch.Tensor]  # a list of train items -> mean loss
    evaluate: Callable[[], dict[str, float]]  # validation metrics (model in eval mode inside)
    info: dict[str, Any]  # extra fields for finetune.json (pattern id, head, ...)
    head: nn.Module | None = None  # trainable parameters beside the GLM (classifier head)


def selection_score(metrics: dict[str, float]) -> float:
    """The number the best checkpoint is chosen by: the mean of the task's metrics (higher is
    better; losses are reported but not used)."""
    values = [v for k, v in metrics.items() if not k.endswith("loss")]
    return sum(values) / max(len(values), 1)


def save_finetuned(model, out: Path, tokenizer, head: nn.Module | None, info: dict) -> None:
    """Write a loadable model folder (+ head, + finetune.json) to ``out`` atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(model, tmp, tokenizer)
    if head is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(tmp / HEAD_NAME))
    atomic_write_text(tmp / INFO_NAME, json.dumps(info, indent=2) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


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
) -> dict[str, Any]:
    """Fine-tune ``model`` (+ ``recipe.head``) on ``train_items``; evaluate after each epoch.

    Args:
        model: a GLM, already on its device.
        recipe: the task's loss and evaluation.
        train_items: encoded training examples (whatever ``recipe.loss`` takes).
        cfg: the run config (``optim`` section: AdamW and the schedule).
        epochs, batch_size: resolved values (task defaults applied by the caller).
        out_dir: where ``best/`` and ``metrics.jsonl`` go; None writes nothing.
        tokenizer: saved with the best checkpoint.
        on_step: called after each step with {"step", "epoch", "loss", "lr"} (a progress bar).

    Returns:
        {"best": metrics of the best epoch, "best_epoch", "history": one dict per epoch}.
    """
    if not train_items:
        raise ValueError("the training set is empty")
    params = nn.ModuleList([model] + ([recipe.head] if recipe.head is not None else []))
    optimizer = build_optimizer(params, cfg.optim)
    steps_per_epoch = math.ceil(len(train_items) / batch_size)
    total = epochs * steps_per_epoch
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    history, best, best_epoch, step = [], None, -1, 0
    for epoch in range(epochs):
        params.train()
        order = np.random.default_rng([cfg.finetune.seed, epoch]).permutation(len(train_items))
        losses, t0 = [], time.perf_counter()
        for start in range(0, len(order), batch_size):
            items = [train_items[i] for i in order[start : start + batch_size]]
            lr = lr_at(step, cfg.optim, total)
            set_lr(optimizer, lr)
            loss = recipe.loss(items)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip_grad > 0:
                nn.utils.clip_grad_norm_(params.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step({"step": step, "epoch": epoch, "loss": losses[-1], "lr": lr})
        metrics = recipe.evaluate()
        row = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
               "seconds": round(time.perf_counter() - t0, 2), **metrics}  # fmt: skip
        history.append(row)
        log.info("epoch %d: %s", epoch + 1, json.dumps(row))
        improved = best is None or selection_score(metrics) > selection_score(best)
        if improved:
            best, best_epoch = metrics, epoch + 1
        if out is not None:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            if improved:
                info = {"task": recipe.name, **recipe.info, "epoch": epoch + 1, "metrics": metrics}
                save_finetuned(model, out / "best", tokenizer, recipe.head, info)
    return {"best": best, "best_epoch": best_epoch, "history": history}
