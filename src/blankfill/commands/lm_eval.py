"""``blankfill lm-eval --model DIR --tasks T``: lm-evaluation-harness tasks on a blankfill GLM."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

HELP = "run lm-evaluation-harness tasks on a model (GLM scoring: Part B after [gMASK])"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder (save_pretrained)")
    p.add_argument("--tasks", required=True, help="comma-separated harness task names")
    p.add_argument("--include-path", help="folder of extra task YAML files")
    p.add_argument(
        "--only-included",
        action="store_true",
        help="index only the tasks under --include-path (skips the harness's own; faster)",
    )
    p.add_argument("--limit", type=float, help="examples per task (below 1: a fraction)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt")
    p.add_argument(
        "--unidirectional", action="store_true", help="score continuations left to right"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto (default: cpu)")
    p.add_argument("--output", help="write the harness's results as JSON to this file")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and not args.limit > 0:  # also nan
        raise ValueError(f"--limit must be > 0 (a count, or a fraction below 1), got {args.limit}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.only_included and not args.include_path:
        raise ValueError("--only-included needs --include-path DIR")
    if args.include_path and not Path(args.include_path).is_dir():
        raise ValueError(f"--include-path {args.include_path} is not a folder")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks names no task")
    try:
        from lm_eval.utils import make_table

        from ..harness import evaluate
    except ImportError as e:
        raise ValueError(
            f"blankfill lm-eval needs the harness extra ({e.name} is missing): "
            "pip install 'blankfill[harness]'"
        ) from None
    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    try:
        results = evaluate(
            args.model,
            tasks,
            include_path=args.include_path,
            limit=limit,
            batch_size=args.batch_size,
            num_fewshot=args.num_fewshot,
            unidirectional=args.unidirectional,
            builtin_tasks=not args.only_included,
            device=args.device,
        )
    except KeyError as e:  # the harness names an unknown task this way
        raise ValueError(f"unknown task: {e}") from None
    print(make_table(results))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        body = {k: results[k] for k in ("results", "configs", "versions", "n-shot") if k in results}
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2, default=str)
        os.replace(tmp, out)
    return 0
