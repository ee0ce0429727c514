"""Do bf16 autocast and fp32 train the same? 300-step loss curves of a small GLM, plotted.

    python benchmarks/bf16_curve.py [--steps 300] [--seeds 3] [--out benchmarks/bf16_curve.png]

For each of ``--seeds`` dropout seeds, an fp32 run and a bf16-autocast run from the same initial
weights, all on the same batches (seq 128, batch 16, token-level objective, AdamW lr 1e-3), their
steps interleaved in one process. ``gap`` is the mean absolute difference of the 20-step moving
averages over the last 100 steps: ``gap_bf16_vs_fp32`` between the two runs of a seed (rounding
is all that differs), averaged over seeds; ``gap_seed_vs_fp32`` between the fp32 runs of two
seeds (dropout is all that differs), averaged over the pairs: the noise a user sees anyway. bf16
matches fp32 "within noise" when ``gap_ratio`` = the first over the second is <= ~1. The final
losses (last 20 steps) are given per run and as mean and standard deviation per precision.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time

import numpy as np
import torch
from common import REPO, emit, machine, token_store

from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.loader import PretrainLoader
from blankfill.data.store import TokenStore
from blankfill.model import GLM
from blankfill.presets import preset
from blankfill.train.objective import target_cross_entropy


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
        loss = target_cross_entropy(logits, batch.labels[target]).mean()  # the trainer's loss
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
    p.add_argument("--seeds", type=int, default=3, help="dropout seeds (>= 2), each in both")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "bf16_curve.png"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    emit({"what": "machine", **machine()})
    store = TokenStore(token_store())
    loader = PretrainLoader(store.path, DataConfig(seq_len=128, batch_size=16), CorruptConfig(),
                            store.special)  # fmt: skip
    seeds = range(1, max(2, args.seeds) + 1)
    runs = {f"{prec}_seed{k}": make(prec, k) for k in seeds for prec in ("fp32", "bf16")}
    losses = {k: [] for k in runs}
    cpu = dict.fromkeys(runs, 0.0)
    for s in range(args.steps):
        batch = loader.batch(s)
        for name, step in runs.items():
            c0 = time.process_time()
            losses[name].append(step(batch))
            cpu[name] += time.process_time() - c0
    curves = {k: np.array(v) for k, v in losses.items()}
    sm = {k: smooth(v)[-100:] for k, v in curves.items()}  # the last 100 steps
    gap_bf16 = np.mean([np.abs(sm[f"bf16_seed{k}"] - sm[f"fp32_seed{k}"]).mean() for k in seeds])
    gap_ref = np.mean([np.abs(sm[f"fp32_seed{a}"] - sm[f"fp32_seed{b}"]).mean()
                       for a, b in itertools.combinations(seeds, 2)])  # fmt: skip
    final = {k: float(v[-20:].mean()) for k, v in curves.items()}
    per_prec = {prec: [final[f"{prec}_seed{k}"] for k in seeds] for prec in ("fp32", "bf16")}
    cpu_prec = {prec: sum(cpu[f"{prec}_seed{k}"] for k in seeds) for prec in ("fp32", "bf16")}
    emit({"what": "bf16_curve", "steps": args.steps, "seeds": len(seeds),
          "final_loss": {k: round(v, 4) for k, v in final.items()},
          "final_loss_mean_sd": {prec: [round(float(np.mean(v)), 4), round(float(np.std(v, ddof=1)), 4)]
                                 for prec, v in per_prec.items()},
          "gap_bf16_vs_fp32": round(float(gap_bf16), 4), "gap_seed_vs_fp32": round(float(gap_ref), 4),
          "gap_ratio": round(float(gap_bf16 / max(gap_ref, 1e-9)), 2),
          "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
          "bf16_speedup_cpu": round(cpu_prec["fp32"] / cpu_prec["bf16"], 2), "plot": args.out})  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in curves.items():
        v = smooth(v)
        ax.plot(np.arange(len(v)) + 20, v, label=name, ls="--" if name.startswith("bf16") else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (20-step mean)")
    ax.set_title("GLM 2x128, seq 128, batch 16: bf16 autocast vs fp32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()
