"""The ``blankfill`` command line: dispatch only. ``blankfill VERB ...`` -> ``commands/VERB.py``.

To add a verb: add its name to ``VERBS`` and write ``blankfill/commands/<verb>.py``.

Each verb's module (``blankfill.commands.<verb>``, a dash becoming ``_``) defines ``HELP``,
``configure(parser)`` and ``run(args) -> int``; one that sets ``CONFIG`` (a dataclass of config
sections) also takes ``--section.key=value`` overrides, checked here against ``CONFIG`` and handed
to ``run`` as ``args.overrides``. Logging is configured here and nowhere else. Errors aimed at
users (``ValueError`` and ``OSError`` subclasses) print one line and exit 2; set
``BLANKFILL_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from .commands import build_parser

#: The one list of verbs, in the order of the workflow (``blankfill --help`` shows them so).
VERBS: tuple[str, ...] = (
    "prepare",
    "inspect",
    "pretrain",
    "plot",
    "finetune",
    "evaluate",
    "fill",
    "serve",
    "lm-eval",
    "convert",
    "info",
    "demo",
)


class _RankZeroFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(verbose: bool = False, rank: int = 0) -> None:
    from .progress import LogHandler  # through tqdm.write on a terminal: bars stay whole

    handler = LogHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(_RankZeroFilter(rank))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)  # Python warnings as log lines (one format, bar-safe)


def _is_override(arg: str) -> bool:
    return arg.startswith("--") and "." in arg.split("=", 1)[0]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(VERBS)
    args, extra = parser.parse_known_args(argv)
    config = getattr(args._module, "CONFIG", None)
    if extra and not (config is not None and all(map(_is_override, extra))):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [e[2:] for e in extra]
    from .train.distributed import env_dist_info  # the one reader of RANK/WORLD_SIZE

    setup_logging(args.verbose, env_dist_info().rank)
    try:
        if config is not None:
            from .configtools import apply_overrides

            apply_overrides({}, args.overrides, config)  # an unknown key fails before any work
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        if os.environ.get("BLANKFILL_DEBUG"):
            raise
        from .safeio import DiskFullError, is_no_space

        if is_no_space(e) and not isinstance(e, DiskFullError):  # a write we did not guard
            where = getattr(e, "filename", None) or "while writing"
            e = OSError(f"{where}: no space left on device; free some space and run again")
        print(f"blankfill {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
