"""Which demo model learns most in a fixed time? Trains one configuration, prints a JSON line.

    PYTHONPATH=src python benchmarks/demo_sweep.py --store demo/store --minutes 2 NAME \\
        [model.num_layers=2 model.hidden_size=128 optim.lr=4e-3 ...]

The run starts from ``configs/pretrain/demo.toml`` plus the overrides, times a few steps
(``blankfill.demo.steps_per_minute``), plans 95% of the steps that fit in ``--minutes`` (so the
learning rate decays fully), trains on one thread, and reports the held-out infilling loss on the
demo's fixed batches (the base config's data and corruption settings, so every run is scored on
the same batches). Runs go to ``--out/NAME``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from blankfill.config import RunConfig, load_config
from blankfill.data.loader import PretrainLoader
from blankfill.demo import heldout_loss, steps_per_minute
from blankfill.model import GLM
from blankfill.tokenizer import load_tokenizer
from blankfill.train.loop import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "demo.toml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("name")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--store", default="demo/store", help="the demo's token store")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--out", default="/tmp/demo_sweep")
    p.add_argument("--eval-batches", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    base = [
        f"data.store={args.store}",
        f"train.out_dir={Path(args.out) / args.name}",
        "train.save_every=0",
        "log.progress=false",
    ]
    cfg = load_config(RunConfig, CONFIG, base + args.overrides)
    tok = load_tokenizer(Path(args.store) / "tokenizer")
    torch.manual_seed(cfg.train.seed)
    model = GLM(cfg.model)
    spm = steps_per_minute(
        cfg, model, PretrainLoader(args.store, cfg.data, cfg.corrupt, tok.special)
    )
    steps = max(1, int(0.95 * spm * args.minutes))
    timing = [f"train.max_steps={steps}", f"train.max_minutes={1.1 * args.minutes}"]
    cfg = load_config(RunConfig, CONFIG, base + args.overrides + timing)
    t = time.perf_counter()
    data = PretrainLoader(args.store, cfg.data, cfg.corrupt, tok.special)
    result = train(cfg, model, data, tokenizer=tok, progress=False)
    seconds = time.perf_counter() - t
    loss = heldout_loss(model, load_config(RunConfig, CONFIG, base), tok, args.eval_batches)
    print(json.dumps({
        "name": args.name, "overrides": args.overrides,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps_per_min_measured": round(spm, 1), "steps": result.step, "status": result.status,
        "train_s": round(seconds), "heldout_loss": round(loss, 4),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
