"""``blankfill demo`` (also ``python -m blankfill.demo``, ``make demo``): see ``blankfill.demo``."""

from __future__ import annotations

import argparse

from ..config import RunConfig
from . import at_least

HELP = "pretrain a small GLM on Shakespeare in minutes on a CPU, then fill blanks"
CONFIG = RunConfig  # --section.key=value changes the demo's run (e.g. --model.num_layers=4)


def configure(p: argparse.ArgumentParser) -> None:
    from ..demo import DEMO_CONFIG

    p.add_argument("--dir", default="demo", help="where everything goes (default: demo/)")
    p.add_argument("--config", default=DEMO_CONFIG, help=f"run config (default: {DEMO_CONFIG})")
    p.add_argument("--corpus", help="a folder of .txt files to use instead of Shakespeare")
    p.add_argument(
        "--steps",
        type=at_least(1),
        help="optimizer steps (default: as many as fit in the time limit here, "
        "measured before training, at most the config's train.max_steps)",
    )
    p.add_argument("--minutes", type=at_least(0.01, float),
                   help="training time limit (default: the config's)")  # fmt: skip
    p.add_argument("--eval-batches", type=at_least(1), default=8,
                   help="held-out batches for the loss")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(args.dir, args.config, corpus=args.corpus, steps=args.steps,
                    minutes=args.minutes, eval_batches=args.eval_batches,
                    overrides=args.overrides)  # fmt: skip
