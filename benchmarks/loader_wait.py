"""Is the loader off the critical path? Consume batches at a simulated GPU rate and count waits.

    python benchmarks/loader_wait.py [--store DIR] [--steps 60] [--gpu-tflops 300 30] [--layout pack]

A consumer takes glm-small batches (seq 512, batch 16, 50/25/25 objective mix) from
``PretrainLoader`` and "computes" each for as long as one GPU at ``--gpu-tflops`` would
(``time.sleep`` of tokens x FLOPs per token / FLOP rate), for ``data.num_workers`` = 0, 1, 2
alternated. A wait is a ``next(batch)`` that blocks longer than ``--wait-ms``; ``stall`` is the
share of wall time spent waiting. The peer is the synchronous loader (``num_workers = 0``), whose
every step waits for its batch. A batch handed over from a worker process costs the trainer a
copy out of shared memory and a small message even when it is ready (~0.5 ms on a busy 2-core
Zen 3, 2026-12-02), so ``median_wait_ms`` near that floor means the workers keep up.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import emit, machine, token_store
from data_throughput import gpu_consumption

from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.loader import PretrainLoader
from blankfill.data.store import TokenStore


def consume(
    store: TokenStore, workers: int, steps: int, gpu_tps: float, wait_ms: float, layout: str
) -> dict:
    ccfg = CorruptConfig(token_prob=0.5, sentence_prob=0.25, document_prob=0.25)
    dcfg = DataConfig(
        seq_len=512, batch_size=16, num_workers=workers, layout=layout,
        sample_across_doc=layout == "pad",
    )  # fmt: skip
    it = iter(PretrainLoader(store.path, dcfg, ccfg, store.special))
    next(it)  # start-up (worker processes, first batch) is not part of the steady state
    waits, waited, tokens, each = 0, 0.0, 0, []
    t0 = time.perf_counter()
    for _ in range(steps):
        w0 = time.perf_counter()
        batch = next(it)
        w = time.perf_counter() - w0
        waited += w
        each.append(w)
        waits += w * 1e3 > wait_ms
        n = batch.input_ids.numel()
        tokens += n
        time.sleep(n / gpu_tps)  # the GPU step this batch feeds
    dt = time.perf_counter() - t0
    del it
    return {
        "what": "loader_wait", "layout": layout, "num_workers": workers, "steps": steps, "waits": waits,
        "stall": round(waited / dt, 3), "tokens_per_s": round(tokens / dt),
        "median_wait_ms": round(sorted(each)[len(each) // 2] * 1e3, 2),
        "gpu_tokens_per_s": round(gpu_tps),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument(
        "--gpu-tflops",
        type=float,
        nargs="+",
        default=[300.0, 30.0],
        help="simulated GPU rates (a lower one shows the waits a slower GPU sees)",
    )
    p.add_argument("--wait-ms", type=float, default=1.0, help="a longer next() is a wait")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--layout", choices=["pad", "pack"], default="pad", help="data.layout")
    args = p.parse_args()
    torch.set_num_threads(1)
    emit({"what": "machine", **machine()})
    store = TokenStore(args.store or token_store())
    for tflops in args.gpu_tflops:
        gpu = gpu_consumption("glm-small", 512, tflops)["tokens_per_s"]
        for rep in range(2):  # alternate the order so load changes hit both
            for w in args.workers if rep == 0 else args.workers[::-1]:
                row = consume(store, w, args.steps // 2, gpu, args.wait_ms, args.layout)
                emit({**row, "gpu_tflops": tflops, "repeat": rep})


if __name__ == "__main__":
    main()
