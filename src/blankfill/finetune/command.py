"""``blankfill finetune`` (the implementation is in ``finetune/cli.py``)."""

from .cli import configure_finetune as configure_parser
from .cli import run_finetune as run

__all__ = ["configure_parser", "run"]
