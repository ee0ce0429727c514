"""The README's "what fits where" table, from ``blankfill.train.memory.estimate_memory``.

    PYTHONPATH=src python benchmarks/memory_table.py [--markdown]

For each model (glm-large, glm-2b, glm-10b), job and machine, the largest micro-batch
(1, 2, 4, 8, 16) whose *estimated* per-device peak stays under 90% of the device's memory, trying
in order: plain (DDP), activation checkpointing, FSDP, FSDP + activation checkpointing. bf16
autocast (fp32 weights, gradients and AdamW state). Fine-tuning: SuperGLUE-style cloze, 256
tokens per row, ~2% of them targets; pretraining: 512 tokens, 15% targets. Estimates only, not
measurements; one JSON line per cell, then the table with --markdown.
"""

from __future__ import annotations

import argparse
import json

from blankfill.presets import preset
from blankfill.train.memory import GiB, estimate_memory

MODELS = ("glm-large", "glm-2b", "glm-10b")
MACHINES = {"1x24GB": (1, 24), "1x80GB": (1, 80), "8x40GB": (8, 40), "8x80GB": (8, 80)}
JOBS = {"fine-tuning": (256, 0.02, 0), "fine-tuning, LoRA r=8": (256, 0.02, 8),
        "pretraining": (512, 0.15, 0)}  # fmt: skip
PLANS = (("ddp", False, False), ("ddp+ac", False, True), ("fsdp", True, False),
         ("fsdp+ac", True, True))  # fmt: skip


def best_fit(model: str, job: str, machine: str) -> dict:
    cfg = preset(model)
    world, gib = MACHINES[machine]
    seq, targets, lora = JOBS[job]

    def estimate(batch: int, fsdp: bool, ac: bool):
        return estimate_memory(cfg, batch_size=batch, seq_len=seq, world_size=world,
                               precision="bf16", fsdp=fsdp, activation_checkpointing=ac,
                               target_fraction=targets, lora_rank=lora)  # fmt: skip

    best = None  # the largest micro-batch; among equals, the first plan
    for plan, fsdp, ac in PLANS:
        if fsdp and world == 1:
            continue
        fits = [b for b in (16, 8, 4, 2, 1) if estimate(b, fsdp, ac).total < 0.9 * gib * GiB]
        if fits and (best is None or fits[0] > best[1]):
            best = (plan, fits[0], estimate(fits[0], fsdp, ac).total)
    if best is not None:
        return {"model": model, "job": job, "machine": machine, "plan": best[0],
                "micro_batch": best[1], "gib_per_device": round(best[2] / GiB, 1)}  # fmt: skip
    est = estimate(1, world > 1, True)
    return {"model": model, "job": job, "machine": machine, "plan": None, "micro_batch": 0,
            "gib_per_device": round(est.total / GiB, 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--markdown", action="store_true", help="also print the README table")
    args = p.parse_args()
    cells = [best_fit(m, j, h) for m in MODELS for j in JOBS for h in MACHINES]
    for c in cells:
        print(json.dumps(c))
    if args.markdown:
        print("\n| model | job | " + " | ".join(MACHINES) + " |")
        print("|---|---|" + "---|" * len(MACHINES))
        for m in MODELS:
            for j in JOBS:
                row = [c for c in cells if c["model"] == m and c["job"] == j]
                text = [f"{c['plan']}, batch {c['micro_batch']} ({c['gib_per_device']} GiB)"
                        if c["plan"] else f"no ({c['gib_per_device']} GiB at batch 1)"
                        for c in row]  # fmt: skip
                print(f"| {m} | {j} | " + " | ".join(text) + " |")


if __name__ == "__main__":
    main()
