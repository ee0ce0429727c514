"""``blankfill finetune``: fine-tune a model folder on a cloze task or on seq2seq pairs."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ..config import FinetuneConfig, FinetuneRunConfig, load_config, to_dict
from ..device import resolve_device
from ..finetune.tasks import TASKS
from . import at_least

HELP = "fine-tune on a cloze or seq2seq task"
CONFIG = FinetuneRunConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True,
                   help=f"{', '.join(TASKS)}, a task .toml, or seq2seq")  # fmt: skip
    p.add_argument("--train", required=True, help="training data file")
    p.add_argument("--valid", required=True, help="validation data file (evaluated every epoch)")
    p.add_argument("--model", required=True, help="pretrained model folder (with tokenizer)")
    p.add_argument("--out", default=None, help="run folder (default: runs/finetune-<task>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--config", default=None, help="TOML with [finetune] and [optim] tables")
    p.add_argument("--limit", type=at_least(1), default=None,
                   help="use the first N training examples")  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.epilog = (
        "E.g. --optim.lr=2e-5 --finetune.epochs=3 --finetune.head=classifier "
        "--finetune.precision=bf16 --finetune.grad_accum=4 --finetune.lora_rank=8. Under "
        "torchrun (--nproc-per-node N) add --dist.strategy=ddp|fsdp."
    )


def _tick(bar, s: dict) -> None:
    if s.get("total") and bar.total != s["total"]:  # known once epochs and batch size are
        bar.total = s["total"]
    bar.update(1)
    bar.set_postfix(epoch=s["epoch"] + 1, lr=f"{s['lr']:.2e}")


def _check_out(out: Path, overwrite: bool) -> None:
    """An existing run folder is replaced only with --overwrite (its metrics.jsonl is cleared)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite or choose another --out")
        (out / "metrics.jsonl").unlink(missing_ok=True)  # best/ is replaced after epoch 1


#: finetune.* keys that one task kind uses; set for the other kind they would be ignored.
ONLY_FOR = {
    "cloze": ("pattern_id", "head", "length_penalty"),
    "seq2seq": ("max_target_len", "label_smoothing"),
}


def check_applicable(cfg: FinetuneRunConfig, task: str) -> None:
    """A one-line error for a finetune.* key the task kind does not use (it would be ignored)."""
    kind = "seq2seq" if task == "seq2seq" else "cloze"
    default = FinetuneConfig()
    for other, keys in ONLY_FOR.items():
        for key in keys if other != kind else ():
            if getattr(cfg.finetune, key) != getattr(default, key):
                raise ValueError(f"finetune.{key} applies to {other} tasks only, not --task {task}")


def run(args: argparse.Namespace) -> int:
    from ..train.distributed import env_dist_info, init_distributed, teardown

    cfg = load_config(FinetuneRunConfig, args.config, args.overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    check_applicable(cfg, args.task)
    local_rank = env_dist_info().local_rank
    device = resolve_device(cfg.finetune.device, local_rank, key="finetune.device")
    out = Path(args.out or f"runs/finetune-{Path(args.task).stem}")
    _check_out(out, args.overwrite)
    info = init_distributed(cfg.dist, device)
    try:
        return _finetune(args, cfg, out, device, info)
    finally:
        teardown(info)


def _finetune(args: argparse.Namespace, cfg: FinetuneRunConfig, out: Path, device, info) -> int:
    from ..folder import load_model_and_tokenizer
    from ..progress import progress_bar as tqdm

    model, tokenizer = load_model_and_tokenizer(args.model, device=device)
    if args.task == "seq2seq":
        from ..finetune.seq2seq import finetune_seq2seq, read_pairs, require_pairs

        train, valid = read_pairs(args.train), read_pairs(args.valid)
        require_pairs(valid, "validation data", str(args.valid))
        train = train[: args.limit] if args.limit else train
        bar = tqdm(desc="finetune seq2seq", unit="step", disable=not info.is_main)
        result = finetune_seq2seq(model, tokenizer, train, valid, cfg, out_dir=out,
                                  on_step=lambda s: _tick(bar, s), info=info)  # fmt: skip
    else:
        from ..eval import majority_baseline
        from ..finetune.runner import finetune_cloze, require_labels
        from ..finetune.tasks import get_task

        task = get_task(args.task)
        train, valid = task.load(args.train), task.load(args.valid)
        require_labels(task, valid, "validation data", str(args.valid))
        train = train[: args.limit] if args.limit else train
        bar = tqdm(desc=f"finetune {task.name}", unit="step", disable=not info.is_main)
        result = finetune_cloze(model, tokenizer, task, train, valid, cfg, out_dir=out,
                                on_step=lambda s: _tick(bar, s), info=info)  # fmt: skip
        if not task.multi_token:
            result["majority_baseline"] = majority_baseline(task, train, valid)
    bar.close()
    keys = ("best", "best_epoch", "majority_baseline")
    summary = {k: result[k] for k in keys if k in result}
    if info.is_main:
        print(json.dumps({**summary, "checkpoint": str(out / "best")}, indent=2))
    if result.get("out_of_time"):  # finetune.max_minutes: the partial epoch evaluated, best/ kept
        print(f"stopped: finetune.max_minutes={cfg.finetune.max_minutes:g} ran out in epoch "
              f"{len(result['history'])}; {out / 'best'} holds the best epoch so far",
              file=sys.stderr)  # fmt: skip
        from .pretrain import OUT_OF_TIME

        return OUT_OF_TIME
    if result.get("interrupted"):  # SIGTERM/SIGINT: the partial epoch was evaluated, best/ kept
        print(f"stopped by a signal in epoch {len(result['history'])}; {out / 'best'} holds the "
              "best epoch so far (fine-tuning does not resume; rerun to train in full)",
              file=sys.stderr)  # fmt: skip
        return 128 + (result.get("signal") or signal.SIGINT)
    return 0
