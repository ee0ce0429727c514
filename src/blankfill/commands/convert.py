"""``blankfill convert --from DIR --to DIR``: official GLM folders (hub, mp_rank_*) to/from ours."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, ModelConfig, apply_overrides
from ..folder import convert_folder
from ..train.dcp import is_sharded, sharded_to_folder
from . import overrides

HELP = "official GLM checkpoints (hub, mp_rank_*) to/from ours"


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """``blankfill convert``: ``--model.KEY=VALUE`` replaces a field of the source's config."""

    model: ModelConfig = field(default_factory=ModelConfig)


CONFIG = ConvertConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="src",
        required=True,
        help="a model folder (ours, hub, mp_rank_*) or a sharded checkpoint RUN/checkpoints/step-N",
    )
    p.add_argument("--to", dest="dst", required=True, help="the folder to write (created)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --to folder")
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
    if Path(args.dst).exists() and not args.overwrite:
        raise FileExistsError(f"{args.dst} already exists; pass --overwrite or choose another --to")
    items = [f"model.{item}" for item in args.set_] + overrides(args)
    changes = apply_overrides({}, items, ConvertConfig).get("model", {})
    src = Path(args.src)
    if is_sharded(src):  # a sharded FSDP training checkpoint: gather it in this one process
        plain = Path(args.dst).with_name(f".{Path(args.dst).name}.from-dcp")
        shutil.rmtree(plain, ignore_errors=True)
        src = sharded_to_folder(src, plain)
    try:
        out = convert_folder(
            src, args.dst, args.to_format, args.weights, args.copy_gmask_row, **changes
        )
    finally:
        if src != Path(args.src):
            shutil.rmtree(src, ignore_errors=True)
    print(out)
    return 0
