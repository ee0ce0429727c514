"""``blankfill info``: a model preset or folder's config and parameter count."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import to_dict
from ..hub import read_model_config
from ..model import count_parameters
from ..presets import PRESETS, preset

HELP = "show a model preset or model folder: config and parameter count"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}) or a model folder")


def run(args: argparse.Namespace) -> int:
    path = Path(args.model)
    cfg = read_model_config(path / "config.json") if path.is_dir() else preset(args.model)
    print(json.dumps({**to_dict(cfg), "parameters": count_parameters(cfg)}, indent=2))
    return 0
