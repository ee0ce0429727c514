"""Cloze fine-tuning and evaluation as library calls (the CLI is a thin layer over these).

result = finetune_cloze(model, tokenizer, get_task("cb"), train_records, valid_records, cfg,
                        out_dir="runs/cb")
metrics = evaluate_cloze(model, tokenizer, get_task("cb"), valid_records)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..config import FinetuneRunConfig
from ..device import resolve_device
from ..eval import cloze_metrics
from ..layout import PartBLayout, model_layout
from ..train.distributed import DistInfo
from .cloze import (
    ClassifierHead,
    collate,
    encode_record,
    is_single_token,
    score,
    score_all,
    to_device,
)
from .lm import check_at_least
from .loop import HEAD_NAME, INFO_NAME, EvalContext, Recipe, local_context, train
from .tasks import ClozeTask

log = logging.getLogger(__name__)


def cloze_settings(task: ClozeTask, cfg: FinetuneRunConfig, model) -> dict[str, int]:
    """Pattern id, epochs, batch size and max length: the config's, else the task's official."""
    ft = cfg.finetune
    pid = task.pattern_id if ft.pattern_id is None else ft.pattern_id
    task.check_pattern_id(pid)
    max_len = capped_length(ft.max_seq_len or task.max_seq_len, model, "finetune.max_seq_len")
    return {"pattern_id": pid, "epochs": ft.epochs or task.epochs,
            "batch_size": ft.batch_size or task.batch_size, "max_seq_len": max_len}  # fmt: skip


def capped_length(requested: int, model, key: str) -> int:
    """``requested`` capped by the model's ``max_sequence_length``; a cap is logged (once per
    call site: callers resolve the length once per run)."""
    rows = model.config.max_sequence_length
    if requested > rows:
        log.info("%s=%d is more than the model's max_sequence_length; using %d", key, requested,
                 rows)  # fmt: skip
    return min(requested, rows)


def require_labels(
    task: ClozeTask, records: Sequence[dict], what: str = "evaluation data", source: str = ""
) -> None:
    """Raise a one-line ValueError unless there are records and every one has a gold label
    (metrics over zero or label-less examples would read as a score of 0.0). ``source``: the
    file, named in the message."""
    if not records:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}the {what} has no examples; give a non-empty, labelled file")
    unlabelled = [r for r in records if not (r.get("gold") if task.metric == "record"
                                             else r.get("label", -1) >= 0)]  # fmt: skip
    if unlabelled:
        where = unlabelled[0].get("_where", "?")
        raise ValueError(
            f"{where}: {len(unlabelled)} of {len(records)} {what} examples have no label; "
            "metrics need gold labels (use a labelled split, e.g. val rather than test)"
        )


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
    context: EvalContext | None = None,
    layout: PartBLayout | None = None,
) -> dict[str, Any]:
    """Score every record and return the task's metrics (zero-shot or fine-tuned model).

    ``context`` (inside fine-tuning): each rank scores its share of the records through the
    training engine and the scores are gathered, so every rank returns the same metrics.
    ``layout``: the model's Part-B positions (default: read from ``model.config``)."""
    require_labels(task, records)
    check_at_least(batch_size=(batch_size, 1), max_seq_len=(max_seq_len, 8))
    pid = task.pattern_id if pattern_id is None else pattern_id
    task.check_pattern_id(pid)
    max_len = capped_length(max_seq_len or task.max_seq_len, model, "max_seq_len")
    single = head is not None or is_single_token(task, tokenizer, pid)
    xs = [encode_record(task, r, tokenizer, pattern_id=pid, max_seq_len=max_len, single_token=single)
          for r in records]  # fmt: skip
    sp = tokenizer.special
    layout = model_layout(model, layout)
    ctx = context or local_context(model, head)
    if context is None:
        scores = score_all(model, xs, sop=sp.sop, pad=sp.pad, single_token=single,
                           batch_size=batch_size, length_penalty=length_penalty, head=head,
                           progress=progress, layout=layout)  # fmt: skip
    else:
        mine = score_all(None, ctx.shard(xs), sop=sp.sop, pad=sp.pad, single_token=single,
                         batch_size=batch_size, length_penalty=length_penalty, progress=progress,
                         run=ctx.run, device=ctx.device, layout=layout)  # fmt: skip
        scores = ctx.gather(mine, len(xs))
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
    info: DistInfo | None = None,
    layout: PartBLayout | None = None,
) -> dict[str, Any]:
    """Fine-tune on a cloze task (or with the classifier head, ``finetune.head="classifier"``).

    ``info``: this process under torchrun (the caller joined the process group); one process
    when None. ``layout``: the model's Part-B positions (default: read from ``model.config``)."""
    require_labels(task, valid_records, "validation data")
    info = info or DistInfo()
    s = cloze_settings(task, cfg, model)
    device = resolve_device(cfg.finetune.device, info.local_rank, key="finetune.device")
    head = None
    if cfg.finetune.head == "classifier":
        if task.multi_token:
            raise ValueError(f"task {task.name} has per-example candidates; the classifier head "
                             "needs fixed labels (use finetune.head=cloze)")  # fmt: skip
        torch.manual_seed(cfg.finetune.seed)
        head = ClassifierHead(model.config.hidden_size, len(task.labels),
                              model.config.output_dropout_prob)  # fmt: skip
    single = head is not None or is_single_token(task, tokenizer, s["pattern_id"])
    train_xs = [encode_record(task, r, tokenizer, pattern_id=s["pattern_id"],
                              max_seq_len=s["max_seq_len"], single_token=single)
                for r in train_records]  # fmt: skip
    train_xs = [x for x in train_xs if x.target >= 0]  # e.g. WSC trains on its true examples
    sp = tokenizer.special
    layout = model_layout(model, layout)

    def loss(glm, head_, items) -> torch.Tensor:
        batch = to_device(collate(items, sp.sop, sp.pad, single, layout), device)
        scores = score(glm, batch, single_token=single,
                       length_penalty=cfg.finetune.length_penalty, head=head_)  # fmt: skip
        return F.cross_entropy(scores, batch.target, ignore_index=-1, reduction="sum")

    def evaluate(ctx: EvalContext) -> dict[str, float]:
        out = evaluate_cloze(model, tokenizer, task, valid_records, pattern_id=s["pattern_id"],
                             max_seq_len=s["max_seq_len"], batch_size=cfg.finetune.eval_batch_size,
                             length_penalty=cfg.finetune.length_penalty, head=head,
                             context=ctx, layout=layout)  # fmt: skip
        out.pop("examples")
        return out

    info_json = {"kind": "cloze", "pattern_id": s["pattern_id"], "head": cfg.finetune.head,
                 "max_seq_len": s["max_seq_len"], "length_penalty": cfg.finetune.length_penalty}  # fmt: skip
    recipe = Recipe(name=task.name, loss=loss, count=lambda items: sum(x.target >= 0 for x in items),
                    evaluate=evaluate, info=info_json, head=head)  # fmt: skip
    return train(model, recipe, train_xs, cfg, epochs=s["epochs"], batch_size=s["batch_size"],
                 out_dir=out_dir, tokenizer=tokenizer, on_step=on_step, info=info,
                 device=device)  # fmt: skip


def read_finetune_info(path: str | Path) -> dict[str, Any]:
    """A fine-tuned folder's ``finetune.json`` (pattern id, head, lengths); ``{}`` if absent."""
    info_path = Path(path) / INFO_NAME
    if not info_path.is_file():
        return {}
    try:
        return json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{info_path}: not valid JSON ({e})") from None


def load_head(path: str | Path, model, task: ClozeTask, info: dict) -> ClassifierHead | None:
    """The classifier head saved with a fine-tuned folder (``finetune.head="classifier"``)."""
    if info.get("head") != "classifier":
        return None
    head = ClassifierHead(model.config.hidden_size, len(task.labels))
    head.load_state_dict(load_file(str(Path(path) / HEAD_NAME)))
    return head.to(next(model.parameters()).device).eval()
