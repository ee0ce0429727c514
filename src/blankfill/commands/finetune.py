"""``blankfill finetune``: fine-tune a model folder on a cloze task or on seq2seq pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import FinetuneRunConfig, load_config, to_dict
from ..device import resolve_device
from ..finetune.tasks import TASKS

HELP = "fine-tune on a cloze or seq2seq task"
CONFIG = FinetuneRunConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True,
                   help=f"{', '.join(TASKS)}, a task .toml, or seq2seq")  # fmt: skip
    p.add_argument("--train", required=True, help="training data file")
    p.add_argument("--valid", required=True, help="validation data file (evaluated every epoch)")
    p.add_argument("--model", required=True, help="pretrained model folder (with tokenizer)")
    p.add_argument("--out", default=None, help="run folder (default: runs/finetune-<task>)")
    p.add_argument("--config", default=None, help="TOML with [finetune] and [optim] tables")
    p.add_argument("--limit", type=int, default=None, help="use the first N training examples")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.epilog = "E.g. --optim.lr=2e-5 --finetune.epochs=3 --finetune.head=classifier."


def _tick(bar, s: dict) -> None:
    bar.update(1)
    bar.set_postfix(epoch=s["epoch"] + 1, loss=f"{s['loss']:.4f}", lr=f"{s['lr']:.2e}")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..folder import load_model_and_tokenizer

    cfg = load_config(FinetuneRunConfig, args.config, args.overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    device = resolve_device(cfg.finetune.device, key="finetune.device")
    model, tokenizer = load_model_and_tokenizer(args.model, device=device)
    out = Path(args.out or f"runs/finetune-{Path(args.task).stem}")
    if args.task == "seq2seq":
        from ..finetune.seq2seq import finetune_seq2seq, read_pairs

        train, valid = read_pairs(args.train), read_pairs(args.valid)
        train = train[: args.limit] if args.limit else train
        bar = tqdm(desc="finetune seq2seq", unit="step")
        result = finetune_seq2seq(model, tokenizer, train, valid, cfg, out_dir=out,
                                  on_step=lambda s: _tick(bar, s))  # fmt: skip
    else:
        from ..eval import majority_baseline
        from ..finetune.runner import finetune_cloze
        from ..finetune.tasks import get_task

        task = get_task(args.task)
        train, valid = task.load(args.train), task.load(args.valid)
        train = train[: args.limit] if args.limit else train
        bar = tqdm(desc=f"finetune {task.name}", unit="step")
        result = finetune_cloze(model, tokenizer, task, train, valid, cfg, out_dir=out,
                                on_step=lambda s: _tick(bar, s))  # fmt: skip
        if not task.multi_token:
            result["majority_baseline"] = majority_baseline(task, train, valid)
    bar.close()
    keys = ("best", "best_epoch", "majority_baseline")
    summary = {k: result[k] for k in keys if k in result}
    print(json.dumps({**summary, "checkpoint": str(out / "best")}, indent=2))
    return 0
