"""The ``blankfill`` command line: one argparse parser, one subcommand per capability.

Each subcommand lives in the module named in ``COMMANDS``; that module defines
``configure_parser(parser)`` and ``run(args) -> int``. Logging is configured here and nowhere else.
Errors aimed at users (``ValueError`` and ``OSError`` subclasses) print one line and exit 2; set
``BLANKFILL_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> (module, one-line help). The single list of subcommands.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("blankfill.info", "show a model preset or model folder: config and parameter count"),
    "fill": (
        "blankfill.filling",
        "fill the blanks ([MASK] [sMASK] [gMASK]) of prompts with a model",
    ),
    "convert": ("blankfill.convert", "official GLM checkpoints (hub, mp_rank_*) to/from ours"),
    "prepare": ("blankfill.data.cli_prepare", "tokenize a text corpus into a token store"),
    "inspect": ("blankfill.data.cli_inspect", "show a corrupted sample: Part A/B, positions, mask"),
    "finetune": ("blankfill.finetune.command", "fine-tune on a cloze or seq2seq task"),
    "evaluate": ("blankfill.eval", "evaluate: cloze metrics, LAMBADA, perplexity, ROUGE"),
    "pretrain": ("blankfill.train.pretrain", "pretrain a GLM on a token store (torchrun for many)"),
    "plot": ("blankfill.train.plot", "draw a run's loss curves to PNG (needs matplotlib)"),
    "lm-eval": ("blankfill.commands.lm_eval", "run lm-evaluation-harness tasks on a model"),
    "serve": ("blankfill.commands.serve", "serve blank filling over HTTP, with a playground page"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blankfill",
        description="GLM: pretraining with autoregressive blank infilling, fine-tuning, filling.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.configure_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


class _RankZeroFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(verbose: bool = False, rank: int = 0) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(_RankZeroFilter(rank))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Subcommands that set ``_dotted_overrides`` take config overrides as --section.key=value.
    if extra and not (
        getattr(args, "_dotted_overrides", False)
        and all(e.startswith("--") and "." in e.split("=")[0] for e in extra)
    ):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.dotted_overrides = [e[2:] for e in extra]
    from .train.distributed import env_dist_info  # the one reader of RANK/WORLD_SIZE

    setup_logging(args.verbose, env_dist_info().rank)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        if os.environ.get("BLANKFILL_DEBUG"):
            raise
        print(f"blankfill {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
