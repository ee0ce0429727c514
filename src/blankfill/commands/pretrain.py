"""``blankfill pretrain``: a RunConfig from TOML + dotted overrides -> the training loop.

blankfill pretrain --config configs/pretrain/tiny.toml --train.max_steps=20 [--resume auto]
torchrun --nproc-per-node 8 -m blankfill pretrain --config configs/pretrain/glm-base.toml
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
from pathlib import Path

import torch

from ..config import RunConfig, load_config, to_dict
from ..device import resolve_device
from ..model import GLM
from ..train.checkpoint import list_checkpoints
from ..train.distributed import env_dist_info, init_distributed, teardown
from ..train.loop import train
from ..train.metrics import NullSink

log = logging.getLogger(__name__)


HELP = "pretrain a GLM on a token store (torchrun for many)"
CONFIG = RunConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config TOML (configs/pretrain/*.toml)")
    p.add_argument(
        "--resume",
        metavar="auto|DIR",
        help="continue: 'auto' = newest good checkpoint in train.out_dir (fresh if none), "
        "or a checkpoint folder",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build everything, run one step (no checkpoint), report parameters and peak memory",
    )
    p.epilog = "E.g. --train.max_steps=20 --optim.lr=3e-4 --data.store=stores/wiki."


def _load_tokenizer(cfg: RunConfig):
    from ..tokenizer import load_tokenizer

    if cfg.train.tokenizer:
        return load_tokenizer(cfg.train.tokenizer)
    if not cfg.data.store:
        raise ValueError("set data.store (a `blankfill prepare` folder) or train.tokenizer")
    return load_tokenizer(Path(cfg.data.store) / "tokenizer")


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA, allocated)"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return f"{rss_kib / 2**20:.2f} GiB (process peak RSS)"


def run(args: argparse.Namespace) -> int:
    cfg = load_config(RunConfig, args.config, args.overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    run_dir = Path(cfg.train.out_dir)
    if not args.resume and not args.dry_run and list_checkpoints(run_dir):
        raise ValueError(
            f"{run_dir} already holds checkpoints; pass --resume auto to continue, or set "
            "--train.out_dir to a new folder"
        )
    from ..data.loader import PretrainLoader

    device = resolve_device(cfg.train.device, env_dist_info().local_rank, key="train.device")
    info = init_distributed(cfg.dist, device)
    try:
        tokenizer = _load_tokenizer(cfg)
        if tokenizer.vocab_size > cfg.model.vocab_size:
            raise ValueError(
                f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                f"{tokenizer.vocab_size} tokens; set --model.vocab_size="
                f"{tokenizer.padded_vocab_size}"
            )

        def loader(split: str) -> PretrainLoader:
            return PretrainLoader(
                cfg.data.store,
                cfg.data,
                cfg.corrupt,
                tokenizer.special,
                rank=info.rank,
                world_size=info.world_size,
                split=split,
            )

        data = loader("train")
        has_valid = cfg.data.valid_fraction > 0 or bool(getattr(cfg.data, "valid_store", ""))
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        model = GLM(cfg.model)
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "model: %s parameters, %d layers, hidden %d; device %s, %d process(es), %s",
            f"{n_params:,}",
            cfg.model.num_layers,
            cfg.model.hidden_size,
            device,
            info.world_size,
            cfg.dist.strategy if info.distributed else "single",
        )
        result = train(
            cfg,
            model,
            data,
            info=info,
            device=device,
            valid=(lambda: loader("valid")) if has_valid else None,
            tokenizer=tokenizer,
            resume=args.resume,
            sink=NullSink() if args.dry_run else None,
            dry_run=args.dry_run,
        )
        if info.is_main:
            if args.dry_run:
                print(
                    f"dry run OK: {n_params:,} parameters; one step, loss "
                    f"{result.metrics.get('loss', float('nan')):.4f}; peak memory "
                    f"{_peak_memory(device)}"
                )
            elif result.status in ("interrupted", "out of time"):
                print(
                    f"stopped ({result.status}) at step {result.step}; checkpoint {result.checkpoint}. Continue "
                    f"with: blankfill pretrain --config {args.config} --resume auto",
                    file=sys.stderr,
                )
            else:
                print(f"done: {result.step} steps; checkpoint {result.checkpoint}")
    finally:
        teardown(info)
    return 0
