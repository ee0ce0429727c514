"""``blankfill plot RUN_DIR``: a run's loss curves (total, per objective, held-out) and LR, as PNG."""

from __future__ import annotations

import argparse

from ..train.plot import plot_run

HELP = "draw a run's loss curves to PNG (needs matplotlib)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a pretraining run folder (holds metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default RUN_DIR/loss.png)")


def run(args: argparse.Namespace) -> int:
    print(plot_run(args.run_dir, args.out))
    return 0
