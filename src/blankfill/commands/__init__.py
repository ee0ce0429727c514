"""The command line's verbs, one module each: the only place argparse is used.

A verb's module defines ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``, and
optionally ``CONFIG``: a dataclass whose fields are the config sections the verb accepts as
``--section.key=value`` (``cli.main`` checks them and passes them as ``args.overrides``).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from types import ModuleType


def command_module(verb: str) -> ModuleType:
    """The module of ``verb`` (``lm-eval`` -> ``blankfill.commands.lm_eval``)."""
    return importlib.import_module(f"{__name__}.{verb.replace('-', '_')}")


def _override_epilog(config: type) -> str:
    from ..configtools import field_types

    sections = "; ".join(
        f"{name}: {' '.join(field_types(cls))}" for name, cls in field_types(config).items()
    )
    return f"Config overrides: --section.key=value ({sections})."


def build_parser(verbs: Sequence[str]) -> argparse.ArgumentParser:
    """The ``blankfill`` parser with one subcommand per verb (``_module`` set to its module)."""
    parser = argparse.ArgumentParser(
        prog="blankfill",
        description="GLM: pretraining with autoregressive blank infilling, fine-tuning, filling.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb in verbs:
        mod = command_module(verb)
        p = sub.add_parser(verb, help=mod.HELP, description=mod.HELP)
        mod.configure(p)
        config = getattr(mod, "CONFIG", None)
        if config is not None:
            extra = _override_epilog(config)
            p.epilog = f"{p.epilog} {extra}" if p.epilog else extra
        p.set_defaults(_module=mod)
    return parser


def at_least(least: int | float, kind: type = int):
    """An argparse ``type`` for a number >= ``least`` (``type=at_least(1)``): 0 or a negative
    count would hang or build absurd samples; argparse reports the flag in one line."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value >= least or value in (float("inf"), float("-inf")):  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_aliases(parser: argparse._ActionsContainer, section: str, names: Sequence[str]) -> None:
    """Short flags (``--top-p 0.9``) that stand for ``--section.key=value`` overrides."""
    for name in names:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"_alias__{section}__{name}",
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"same as --{section}.{name}=VALUE",
        )


def overrides(args: argparse.Namespace) -> list[str]:
    """The override strings of ``args``: short-flag aliases first, then ``--section.key=value``."""
    out = []
    for dest, value in vars(args).items():
        if dest.startswith("_alias__") and value is not None:
            _, section, name = dest.split("__")
            out.append(f"{section}.{name}={value}")
    return out + list(getattr(args, "overrides", []))
