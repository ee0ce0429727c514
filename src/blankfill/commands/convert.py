"""``blankfill convert --from DIR --to DIR``: official GLM folders (hub, mp_rank_*) to/from ours."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..config import ConfigError, ModelConfig, apply_overrides
from ..folder import convert_folder
from . import overrides

HELP = "official GLM checkpoints (hub, mp_rank_*) to/from ours"


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """``blankfill convert``: ``--model.KEY=VALUE`` replaces a field of the source's config."""

    model: ModelConfig = field(default_factory=ModelConfig)


CONFIG = ConvertConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from", dest="src", required=True, help="a model folder: ours, hub, or mp_rank_*"
    )
    p.add_argument("--to", dest="dst", required=True, help="the folder to write (created)")
    p.add_argument(
        "--to-format",
        choices=("blankfill", "hub"),
        default="blankfill",
        help="blankfill: config.json + model.safetensors; hub: the official hub layout",
    )
    p.add_argument(
        "--weights",
        choices=("safetensors", "bin"),
        default="safetensors",
        help="hub weights file: model.safetensors or pytorch_model.bin (tensors only)",
    )
    p.add_argument(
        "--copy-gmask-row",
        action="store_true",
        help="glm-10b-chinese training checkpoints: copy embedding row 50007 to 50009 (the hub "
        "tokenizer's [gMASK]), as the official hub converter does",
    )
    p.add_argument(
        "--set",
        dest="set_",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="same as --model.KEY=VALUE, e.g. --set num_attention_heads=16 (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    for item in args.set_:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE (= --model.KEY=VALUE)")
    items = [f"model.{item}" for item in args.set_] + overrides(args)
    changes = apply_overrides({}, items, ConvertConfig).get("model", {})
    out = convert_folder(
        args.src, args.dst, args.to_format, args.weights, args.copy_gmask_row, **changes
    )
    print(out)
    return 0
