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
        help="show the machine (CPU, bf16 flags, threads, GPU), the precision that "
        "train.precision=auto picks here (at the width of MODEL if given, else 512) and the "
        "one decoding (fill/serve) uses by default, and why (~1 s of checks)",
    )
    p.add_argument("--device", default="auto", help="with --hardware: the device to choose for")
    m = p.add_argument_group("--memory: per-device estimate of one training step (AdamW)")
    m.add_argument("--memory", action="store_true", help="print the memory estimate")
    m.add_argument("--world-size", type=int, default=1, help="devices (FSDP divides by it)")
    m.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    m.add_argument("--fsdp", action="store_true", help="shard weights, gradients, optimizer")
    m.add_argument("--activation-checkpointing", action="store_true")
    m.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch per device")
    m.add_argument("--seq-len", type=int, default=512, help="tokens per row")
    m.add_argument("--targets", type=float, default=0.15,
                   help="share of tokens with a loss (0.15 pretraining; ~0.01 cloze)")  # fmt: skip


def _model_config(name: str):
    path = Path(name)
    return read_model_config(path / "config.json") if path.is_dir() else preset(name)


def run(args: argparse.Namespace) -> int:
    if args.hardware:
        from .. import hardware
        from ..device import resolve_device

        device = resolve_device(args.device, key="--device")
        width = None if args.model is None else _model_config(args.model).hidden_size
        choice = hardware.choose_precision(device, width=width)
        info = {**hardware.describe(), "device": str(device)}
        info["precision"] = {"auto": choice.precision, "reason": choice.reason}
        dec = hardware.choose_decoding_precision(device)
        info["decoding_precision"] = {"auto": dec.precision, "reason": dec.reason}
        info["training_matmuls"] = hardware.training_kernels(device, choice.precision)
        info["decoding_matmuls"] = hardware.decoding_kernels(device)
        if device.type == "cpu":  # what the trainers do with train.keep_freed_memory=true
            from ..allocator import describe

            info["training_memory"] = describe()
        print(json.dumps(info, indent=2))
        return 0
    if args.model is None:
        raise ValueError("name a preset or a model folder, or pass --hardware")
    cfg = _model_config(args.model)
    if not args.memory:
        print(json.dumps({**to_dict(cfg), "parameters": count_parameters(cfg)}, indent=2))
        return 0
    from ..train.memory import estimate_memory, format_estimate

    for name in ("world_size", "batch_size", "seq_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.targets <= 1:
        raise ValueError("--targets must be in (0, 1]")
    est = estimate_memory(cfg, batch_size=args.batch_size, seq_len=args.seq_len,
                          world_size=args.world_size, precision=args.precision, fsdp=args.fsdp,
                          activation_checkpointing=args.activation_checkpointing,
                          target_fraction=args.targets)  # fmt: skip
    setup = (f"{args.model}: {count_parameters(cfg):,} parameters; per device, batch "
             f"{args.batch_size} x {args.seq_len} tokens, {args.precision}"
             f"{', FSDP over ' + str(args.world_size) if args.fsdp else ''}"
             f"{', activation checkpointing' if args.activation_checkpointing else ''}")  # fmt: skip
    print(f"{setup} (an estimate: blankfill.train.memory)\n{format_estimate(est)}")
    return 0
