"""``blankfill pretrain``: a RunConfig from TOML + dotted overrides -> the training loop.

blankfill pretrain --config configs/pretrain/tiny.toml --train.max_steps=20 [--resume auto]
torchrun --nproc-per-node 8 -m blankfill pretrain --config configs/pretrain/glm-base.toml
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shlex
import signal
import sys
import time
from pathlib import Path

import torch

from ..config import RunConfig, load_config, to_dict
from ..data.store import TokenStore
from ..device import resolve_device
from ..model import GLM
from ..safeio import check_run_free
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
        tokenizer = load_tokenizer(cfg.train.tokenizer)
        if cfg.data.store:  # the store's token ids must be this tokenizer's
            TokenStore(cfg.data.store).check_tokenizer(tokenizer, "train.tokenizer")
        return tokenizer
    if not cfg.data.store:
        raise ValueError("set data.store (a `blankfill prepare` folder) or train.tokenizer")
    return load_tokenizer(Path(cfg.data.store) / "tokenizer")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} hours"


def dry_run_eta(cfg: RunConfig, done: int, first_s: float, step_s: float, cpu: bool) -> str:
    """The measured step time and what it means for the whole run (``done``: steps before)."""
    left = max(cfg.train.max_steps - max(done, 0), 0)
    line = (
        f"step time {step_s:.2f} s (measured on a second step; the first, with warm-up, took "
        f"{first_s:.2f} s); {left} steps to train.max_steps={cfg.train.max_steps}: ETA "
        f"{_duration(left * step_s)}"
    )
    if cfg.train.max_minutes:
        line += f" (train.max_minutes={cfg.train.max_minutes:g} stops it earlier)"
    if left * step_s > 24 * 3600 and cpu:
        line += "; this config is meant for a GPU: on a CPU use configs/pretrain/cpu.toml"
    return line


def _estimate(cfg: RunConfig, info, device: torch.device) -> float:
    from ..hardware import choose_precision
    from ..train.memory import GiB, estimate_memory

    precision = cfg.train.precision
    if precision == "auto":
        precision = choose_precision(device, measure=False, width=cfg.model.hidden_size).precision
    est = estimate_memory(cfg.model, batch_size=cfg.data.batch_size,
                          seq_len=cfg.data.seq_len + cfg.data.seq_len // 10,  # + 2 per span
                          world_size=info.world_size, precision=precision,
                          fsdp=cfg.dist.strategy == "fsdp" and info.wrapped,
                          activation_checkpointing=cfg.train.activation_checkpointing)  # fmt: skip
    return est.total / GiB


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
    check_run_free(run_dir)  # "RUN is in use by process N" before any other advice
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
        c = cfg.corrupt
        if c.sentinels and not (
            tokenizer.vocab_size <= c.sentinel_start
            and c.sentinel_start + c.sentinels <= cfg.model.vocab_size
        ):
            raise ValueError(
                f"corrupt.sentinels ids {c.sentinel_start}..{c.sentinel_start + c.sentinels - 1} "
                f"must lie in [tokenizer vocab_size {tokenizer.vocab_size}, model.vocab_size "
                f"{cfg.model.vocab_size}); set --corrupt.sentinel_start={tokenizer.vocab_size} "
                "and model.vocab_size large enough"
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
            cfg.dist.strategy if info.wrapped else "single",
        )

        def run_train(resume: str | None):
            t0 = time.perf_counter()
            out = train(
                cfg,
                model,
                data,
                info=info,
                device=device,
                valid=(lambda: loader("valid")) if has_valid else None,
                tokenizer=tokenizer,
                resume=resume,
                sink=NullSink() if args.dry_run else None,
                dry_run=args.dry_run,
            )
            return out, time.perf_counter() - t0

        result, first_s = run_train(args.resume)
        done = result.step - 1  # steps before this run (a resumed checkpoint's)
        if args.dry_run:  # a second step, warm, gives the step time (the first has warm-up)
            result, step_s = run_train(None)
        if info.is_main:
            if args.dry_run:
                print(
                    f"dry run OK: {n_params:,} parameters; loss "
                    f"{result.metrics.get('loss', float('nan')):.4f}; peak memory "
                    f"{_peak_memory(device)}; estimated {_estimate(cfg, info, device):.3g} GiB per "
                    "device (blankfill info --memory)"
                )
                print(dry_run_eta(cfg, done, first_s, step_s, device.type == "cpu"))
            else:
                _report(result, cfg, info)
        code = _exit_code(result)
    finally:
        teardown(info)
    return code


#: Exit codes of a run that stopped early with a checkpoint: 128 + the signal (shell style:
#: 130 SIGINT, 143 SIGTERM), 75 (EX_TEMPFAIL) when train.max_minutes ran out.
OUT_OF_TIME = 75


def _exit_code(result) -> int:
    if result.status == "interrupted":
        return 128 + (result.signal or signal.SIGINT)
    return OUT_OF_TIME if result.status == "out of time" else 0


def _report(result, cfg: RunConfig, info) -> None:
    run_dir = Path(cfg.train.out_dir)
    if result.status == "already finished":
        print(f"{run_dir} is already finished: step {result.step} of train.max_steps="
              f"{cfg.train.max_steps} (checkpoint {result.checkpoint}). To train on, raise "
              "--train.max_steps (the learning-rate schedule is kept; --optim.decay_steps=N "
              "plans a new one)")  # fmt: skip
    elif result.status in ("interrupted", "out of time"):
        launcher = (f"torchrun --nproc-per-node {info.world_size} -m blankfill"
                    if info.distributed else "blankfill")  # fmt: skip
        again = shlex.quote(str(run_dir / "config.json"))  # the resolved config, overrides in
        print(f"stopped ({result.status}) at step {result.step}; checkpoint {result.checkpoint}. "
              f"Continue with: {launcher} pretrain --config {again} --resume auto",
              file=sys.stderr)  # fmt: skip
    else:
        print(f"done: {result.step} steps; checkpoint {result.checkpoint}")
