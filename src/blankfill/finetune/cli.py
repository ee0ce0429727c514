"""``blankfill finetune`` and ``blankfill evaluate``: thin layers over the library calls."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..config import load_finetune_config, to_dict

log = logging.getLogger(__name__)

LM_TASKS = ("lambada", "ppl", "wikitext")


def load_model_and_tokenizer(path: str, device: str = "cpu") -> tuple[Any, Any, dict]:
    """A model folder's GLM, tokenizer and (for a fine-tuned folder) its ``finetune.json``."""
    from ..pretrained import load_folder_tokenizer, load_pretrained

    model = load_pretrained(path)
    tokenizer = load_folder_tokenizer(path)
    if tokenizer is None:
        raise ValueError(f"{path} has no tokenizer files; save the model with its tokenizer")
    info_path = Path(path) / "finetune.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return model.to(device), tokenizer, info


def configure_finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True,
                   help="boolq, cb, copa, rte, wic, wsc, multirc, record, sst2, a task .toml, "
                   "or seq2seq")  # fmt: skip
    p.add_argument("--train", required=True, help="training data file")
    p.add_argument("--valid", required=True, help="validation data file (evaluated every epoch)")
    p.add_argument("--model", required=True, help="pretrained model folder (with tokenizer)")
    p.add_argument("--out", default=None, help="run folder (default: runs/finetune-<task>)")
    p.add_argument("--config", default=None, help="TOML with [finetune] and [optim] tables")
    p.add_argument("--limit", type=int, default=None, help="use the first N training examples")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.epilog = ("Any config key can be overridden as --section.key=value, e.g. --optim.lr=2e-5 "
                "--finetune.epochs=3 --finetune.head=classifier.")  # fmt: skip
    p.set_defaults(_dotted_overrides=True)


def run_finetune(args: argparse.Namespace) -> int:

    from ..train.distributed import env_dist_info, init_distributed, resolve_device, teardown

    cfg = load_finetune_config(args.config, getattr(args, "dotted_overrides", []))
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    device = resolve_device(cfg.finetune.device, env_dist_info())
    info = init_distributed(cfg.dist, device)
    try:
        return _finetune(args, cfg, device, info)
    finally:
        teardown(info)


def _finetune(args, cfg, device, info) -> int:
    from tqdm import tqdm

    model, tokenizer, _ = load_model_and_tokenizer(args.model, str(device))
    out = Path(args.out or f"runs/finetune-{Path(args.task).stem}")
    if args.task == "seq2seq":
        from .seq2seq import finetune_seq2seq, read_pairs

        train, valid = read_pairs(args.train), read_pairs(args.valid)
        train = train[: args.limit] if args.limit else train
        bar = tqdm(desc="finetune seq2seq", unit="step", disable=not info.is_main)
        result = finetune_seq2seq(model, tokenizer, train, valid, cfg, out_dir=out,
                                  on_step=lambda s: _tick(bar, s), info=info)  # fmt: skip
    else:
        from .runner import finetune_cloze
        from .tasks import get_task

        task = get_task(args.task)
        train, valid = task.load(args.train), task.load(args.valid)
        train = train[: args.limit] if args.limit else train
        bar = tqdm(desc=f"finetune {task.name}", unit="step", disable=not info.is_main)
        result = finetune_cloze(model, tokenizer, task, train, valid, cfg, out_dir=out,
                                on_step=lambda s: _tick(bar, s), info=info)  # fmt: skip
        if not task.multi_token:
            from ..eval import majority_baseline

            result["majority_baseline"] = majority_baseline(task, train, valid)
    bar.close()
    keys = ("best", "best_epoch", "majority_baseline")
    summary = {k: result[k] for k in keys if k in result}
    if info.is_main:
        print(json.dumps({**summary, "checkpoint": str(out / "best")}, indent=2))
    return 0


def _tick(bar, s: dict) -> None:
    bar.total = s.get("total", bar.total)
    bar.update(1)
    bar.set_postfix(epoch=s["epoch"] + 1, lr=f"{s['lr']:.2e}")


def run_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    model, tokenizer, info = load_model_and_tokenizer(args.model, args.device)
    name = args.task.lower()
    if name in LM_TASKS:
        from . import lm

        if name == "lambada":
            result = lm.lambada(model, tokenizer, args.data, unidirectional=args.unidirectional,
                                limit=args.limit, max_seq_len=args.max_seq_len)  # fmt: skip
        else:
            result = lm.perplexity(model, tokenizer, args.data, stride=args.stride,
                                   unidirectional=args.unidirectional,
                                   max_seq_len=args.max_seq_len)  # fmt: skip
    elif name == "seq2seq":
        from .seq2seq import evaluate_seq2seq, parse_decoding, read_pairs

        pairs = read_pairs(args.data)[: args.limit or None]
        result = evaluate_seq2seq(model, tokenizer, pairs, **parse_decoding(args.decoding))
    else:
        from .runner import evaluate_cloze
        from .tasks import get_task

        task = get_task(args.task)
        records = task.load(args.data)[: args.limit or None]
        head = _load_head(args.model, model, task, info)
        pid = args.pattern_id if args.pattern_id is not None else info.get("pattern_id")
        bar = tqdm(total=len(records), desc=f"evaluate {task.name}", unit="ex")
        result = evaluate_cloze(
            model, tokenizer, task, records, pattern_id=pid, batch_size=args.batch_size,
            max_seq_len=args.max_seq_len or info.get("max_seq_len"),
            length_penalty=args.length_penalty if args.length_penalty is not None
            else info.get("length_penalty", 0.0), head=head, progress=bar.update,
        )  # fmt: skip
        bar.close()
    result = {"task": args.task, "data": str(args.data), "model": str(args.model), **result}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def _load_head(path: str, model, task, info: dict):
    if info.get("head") != "classifier":
        return None
    from safetensors.torch import load_file

    from .cloze import ClassifierHead
    from .loop import HEAD_NAME

    head = ClassifierHead(model.config.hidden_size, len(task.labels))
    head.load_state_dict(load_file(str(Path(path) / HEAD_NAME)))
    return head.to(next(model.parameters()).device).eval()
