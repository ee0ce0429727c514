"""``blankfill info``: a model preset or folder's config and parameter count."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import PRESETS, preset, read_model_config, to_dict
from .model import count_parameters


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}) or a model folder")


def run(args: argparse.Namespace) -> int:
    path = Path(args.model)
    cfg = read_model_config(path / "config.json") if path.is_dir() else preset(args.model)
    print(json.dumps({**to_dict(cfg), "parameters": count_parameters(cfg)}, indent=2))
    return 0
