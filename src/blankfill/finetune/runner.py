"""Cloze fine-tuning and evaluation as library calls (the CLI is a thin layer over these).

result = finetune_cloze(model, tokenizer, get_task("cb"), train_records, valid_records, cfg,
                        out_dir="runs/cb")
metrics = evaluate_cloze(model, tokenizer, get_task("cb"), valid_records)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..config import FinetuneRunConfig
from ..device import resolve_device
from ..eval import cloze_metrics
from .cloze import (
    ClassifierHead,
    collate,
    encode_record,
    is_single_token,
    loss_fn,
    score,
    score_all,
    to_device,
)
from .loop import HEAD_NAME, INFO_NAME, Recipe, train
from .tasks import ClozeTask


def cloze_settings(task: ClozeTask, cfg: FinetuneRunConfig, model) -> dict[str, int]:
    """Pattern id, epochs, batch size and max length: the config's, else the task's official."""
    ft = cfg.finetune
    pid = task.pattern_id if ft.pattern_id is None else ft.pattern_id
    task.check_pattern_id(pid)
    max_len = min(ft.max_seq_len or task.max_seq_len, model.config.max_sequence_length)
    return {"pattern_id": pid, "epochs": ft.epochs or task.epochs,
            "batch_size": ft.batch_size or task.batch_size, "max_seq_len": max_len}  # fmt: skip


def evaluate_cloze(
    model,
    tokenizer,
    task: ClozeTask,
    records: Sequence[dict],
    *,
    pattern_id: int | None = None,
    max_seq_len: int | None = None,
    batch_size: int = 32,
    length_penalty: float = 0.0,
    head: ClassifierHead | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score every record and return the task's metrics (zero-shot or fine-tuned model)."""
    pid = task.pattern_id if pattern_id is None else pattern_id
    task.check_pattern_id(pid)
    max_len = min(max_seq_len or task.max_seq_len, model.config.max_sequence_length)
    single = head is not None or is_single_token(task, tokenizer, pid)
    xs = [encode_record(task, r, tokenizer, pattern_id=pid, max_seq_len=max_len, single_token=single)
          for r in records]  # fmt: skip
    sp = tokenizer.special
    scores = score_all(model, xs, sop=sp.sop, pad=sp.pad, single_token=single,
                       batch_size=batch_size, length_penalty=length_penalty, head=head,
                       progress=progress)  # fmt: skip
    return {**cloze_metrics(task, records, scores), "examples": len(records)}


def finetune_cloze(
    model,
    tokenizer,
    task: ClozeTask,
    train_records: Sequence[dict],
    valid_records: Sequence[dict],
    cfg: FinetuneRunConfig,
    *,
    out_dir=None,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune on a cloze task (or with the classifier head, ``finetune.head="classifier"``)."""
    s = cloze_settings(task, cfg, model)
    device = resolve_device(cfg.finetune.device, key="finetune.device")
    model.to(device)
    head = None
    if cfg.finetune.head == "classifier":
        if task.multi_token:
            raise ValueError(f"task {task.name} has per-example candidates; the classifier head "
                             "needs fixed labels (use finetune.head=cloze)")  # fmt: skip
        torch.manual_seed(cfg.finetune.seed)
        head = ClassifierHead(model.config.hidden_size, len(task.labels),
                              model.config.output_dropout_prob).to(device)  # fmt: skip
    single = head is not None or is_single_token(task, tokenizer, s["pattern_id"])
    train_xs = [encode_record(task, r, tokenizer, pattern_id=s["pattern_id"],
                              max_seq_len=s["max_seq_len"], single_token=single)
                for r in train_records]  # fmt: skip
    train_xs = [x for x in train_xs if x.target >= 0]  # e.g. WSC trains on its true examples
    sp = tokenizer.special

    def loss(items) -> torch.Tensor:
        batch = to_device(collate(items, sp.sop, sp.pad, single), device)
        scores = score(model, batch, single_token=single,
                       length_penalty=cfg.finetune.length_penalty, head=head)  # fmt: skip
        return loss_fn(scores, batch.target)

    def evaluate() -> dict[str, float]:
        out = evaluate_cloze(model, tokenizer, task, valid_records, pattern_id=s["pattern_id"],
                             max_seq_len=s["max_seq_len"], batch_size=cfg.finetune.eval_batch_size,
                             length_penalty=cfg.finetune.length_penalty, head=head)  # fmt: skip
        out.pop("examples")
        return out

    info = {"kind": "cloze", "pattern_id": s["pattern_id"], "head": cfg.finetune.head,
            "max_seq_len": s["max_seq_len"], "length_penalty": cfg.finetune.length_penalty}  # fmt: skip
    recipe = Recipe(name=task.name, loss=loss, evaluate=evaluate, info=info, head=head)
    return train(model, recipe, train_xs, cfg, epochs=s["epochs"], batch_size=s["batch_size"],
                 out_dir=out_dir, tokenizer=tokenizer, on_step=on_step)  # fmt: skip


def read_finetune_info(path: str | Path) -> dict[str, Any]:
    """A fine-tuned folder's ``finetune.json`` (pattern id, head, lengths); ``{}`` if absent."""
    info_path = Path(path) / INFO_NAME
    return json.loads(info_path.read_text()) if info_path.is_file() else {}


def load_head(path: str | Path, model, task: ClozeTask, info: dict) -> ClassifierHead | None:
    """The classifier head saved with a fine-tuned folder (``finetune.head="classifier"``)."""
    if info.get("head") != "classifier":
        return None
    head = ClassifierHead(model.config.hidden_size, len(task.labels))
    head.load_state_dict(load_file(str(Path(path) / HEAD_NAME)))
    return head.to(next(model.parameters()).device).eval()
