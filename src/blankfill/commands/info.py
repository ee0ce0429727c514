"""``blankfill info``: a model preset or folder's config and parameter count, or the machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import to_dict
from ..hub import read_model_config
from ..model import count_parameters
from ..presets import PRESETS, preset

HELP = "show a model preset or model folder (config, parameters), or --hardware: the machine"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help=f"a preset ({', '.join(PRESETS)}) or a model folder")
    p.add_argument(
        "--hardware",
        action="store_true",
        help="show the machine (CPU, bf16 flags, threads, GPU) and the precision that "
        "train.precision=auto picks here, and why (runs a ~1 s matmul check)",
    )
    p.add_argument("--device", default="auto", help="with --hardware: the device to choose for")


def run(args: argparse.Namespace) -> int:
    if args.hardware:
        from .. import hardware
        from ..device import resolve_device

        device = resolve_device(args.device, key="--device")
        choice = hardware.choose_precision(device)
        info = {**hardware.describe(), "device": str(device)}
        info["precision"] = {"auto": choice.precision, "reason": choice.reason}
        print(json.dumps(info, indent=2))
        return 0
    if args.model is None:
        raise ValueError("name a preset or a model folder, or pass --hardware")
    path = Path(args.model)
    cfg = read_model_config(path / "config.json") if path.is_dir() else preset(args.model)
    print(json.dumps({**to_dict(cfg), "parameters": count_parameters(cfg)}, indent=2))
    return 0
