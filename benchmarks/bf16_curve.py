"""Do bf16 autocast and fp32 train the same? 300-step loss curves of a small GLM, plotted.

    python benchmarks/bf16_curve.py [--steps 300] [--out benchmarks/bf16_curve.png]

Three runs on the same batches (seq 128, batch 16, token-level objective, AdamW lr 1e-3): fp32,
bf16 autocast (same initial weights and dropout seed) and, as the noise reference, fp32 with
another dropout seed. Their steps are interleaved in one process. ``gap`` is the mean absolute
difference of the 20-step moving averages over the last 100 steps; bf16 matches fp32 "within
noise" when its gap to fp32 is no larger than the reference run's gap (ratio <= ~1).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import REPO, emit, machine, token_store

from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.loader import PretrainLoader
from blankfill.data.store import TokenStore
from blankfill.model import GLM
from blankfill.presets import preset


def make(precision: str, dropout_seed: int):
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=8192, num_layers=2, hidden_size=128, num_attention_heads=4,
                 max_sequence_length=256)  # fmt: skip
    model = GLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(dropout_seed)
    cast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )

    def step(batch) -> float:
        target = batch.loss_mask > 0
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))  # the dropout draw
        with cast():
            h = model.hidden(batch.input_ids, batch.position_ids, batch.context_len)
            logits = model.logits(h[target])
        loss = F.cross_entropy(logits.float(), batch.labels[target])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return step


def smooth(x: np.ndarray, w: int = 20) -> np.ndarray:
    return np.convolve(x, np.ones(w) / w, mode="valid")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "bf16_curve.png"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    emit({"what": "machine", **machine()})
    store = TokenStore(token_store())
    loader = PretrainLoader(store.path, DataConfig(seq_len=128, batch_size=16), CorruptConfig(),
                            store.special)  # fmt: skip
    runs = {"fp32": make("fp32", 1), "bf16": make("bf16", 1), "fp32_seed2": make("fp32", 2)}
    losses = {k: [] for k in runs}
    cpu = dict.fromkeys(runs, 0.0)
    for s in range(args.steps):
        batch = loader.batch(s)
        for name, step in runs.items():
            c0 = time.process_time()
            losses[name].append(step(batch))
            cpu[name] += time.process_time() - c0
    curves = {k: np.array(v) for k, v in losses.items()}
    sm = {k: smooth(v) for k, v in curves.items()}
    tail = slice(-100, None)
    gap_bf16 = float(np.abs(sm["bf16"][tail] - sm["fp32"][tail]).mean())
    gap_ref = float(np.abs(sm["fp32_seed2"][tail] - sm["fp32"][tail]).mean())
    emit({"what": "bf16_curve", "steps": args.steps,
          "final_loss": {k: round(float(v[-20:].mean()), 4) for k, v in curves.items()},
          "gap_bf16_vs_fp32": round(gap_bf16, 4), "gap_seed_vs_fp32": round(gap_ref, 4),
          "gap_ratio": round(gap_bf16 / max(gap_ref, 1e-9), 2),
          "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
          "bf16_speedup_cpu": round(cpu["fp32"] / cpu["bf16"], 2), "plot": args.out})  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in sm.items():
        ax.plot(np.arange(len(v)) + 20, v, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (20-step mean)")
    ax.set_title("GLM 2x128, seq 128, batch 16: bf16 autocast vs fp32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()
