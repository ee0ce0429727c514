"""Data pipeline throughput on one core vs what glm-small consumes on a GPU (prints JSON lines).

    python benchmarks/data_throughput.py [--store DIR] [--seconds 2]

For each (objective mix, layout, seq_len): samples/s and tokens/s of ``PretrainLoader.batch``
(raw sampling + corruption + batching) on one core, timed in process CPU time (on a shared machine
wall time also counts other processes' turns) and in wall time, with the packing efficiency. The peer is what one GPU at a
stated FLOP rate consumes for glm-small (6 N + attention FLOPs per token, N with embeddings):
``data_over_gpu`` is data tokens/s per core over that (target >= 5x, goal 10x). Without
``--store``, a store of ``../shared/data/corpus`` (or a synthetic corpus) is made in ``.bench/``.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import emit, machine, token_store

from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.loader import PretrainLoader
from blankfill.data.store import TokenStore
from blankfill.model import count_parameters
from blankfill.presets import preset

MIXES = {"token": (1.0, 0.0, 0.0), "multi": (0.5, 0.25, 0.25)}


def data_rate(store: TokenStore, mix: str, layout: str, seq_len: int, seconds: float) -> dict:
    probs = MIXES[mix]
    ccfg = CorruptConfig(token_prob=probs[0], sentence_prob=probs[1], document_prob=probs[2])
    dcfg = DataConfig(
        seq_len=seq_len, batch_size=16, layout=layout, sample_across_doc=layout == "pad"
    )
    loader = PretrainLoader(store.path, dcfg, ccfg, store.special)
    loader.batch(0)  # warm-up (memmaps, the epoch's window order)
    B = dcfg.batch_size
    slots = steps = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while (dt := time.perf_counter() - t0) < seconds:
        batch = loader.batch(steps)  # raw sampling + corruption + collation
        slots += batch.input_ids.numel()
        steps += 1
    dc = time.process_time() - c0
    # the tokens of those batches, counted outside the timing (the same samples as Examples)
    lengths = [len(e) for s in range(steps) for e in loader.examples(s * B, B)]
    samples, tokens = len(lengths), sum(lengths)
    return {
        "what": "data", "mix": mix, "layout": layout, "seq_len": seq_len, "batches": steps,
        "samples_per_s": round(samples / dc, 1), "tokens_per_s": round(tokens / dc),
        "tokens_per_s_wall": round(tokens / dt), "packing_efficiency": round(tokens / slots, 4),
    }  # fmt: skip


def gpu_consumption(name: str, seq_len: int, tflops: float) -> dict:
    cfg = preset(name)
    n = count_parameters(cfg)
    T = seq_len + seq_len // 8
    flops = 6 * n + 12 * cfg.num_layers * cfg.hidden_size * T  # per token, fwd + bwd
    return {"what": "model_gpu_estimate", "preset": name, "assumed_tflops": tflops,
            "flops_per_token": flops, "tokens_per_s": round(tflops * 1e12 / flops)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="")
    p.add_argument("--seconds", type=float, default=2.0, help="per configuration")
    p.add_argument("--gpu-tflops", type=float, default=300.0, help="sustained bf16 TFLOP/s")
    args = p.parse_args()
    torch.set_num_threads(1)
    emit({"what": "machine", **machine()})
    store = TokenStore(args.store or token_store())
    gpu = gpu_consumption("glm-small", 512, args.gpu_tflops)
    emit(gpu)
    for mix in MIXES:
        for layout in ("pad", "pack"):
            row = data_rate(store, mix, layout, 512, args.seconds)
            row["data_over_gpu"] = round(row["tokens_per_s"] / gpu["tokens_per_s"], 2)
            emit(row)
    emit(data_rate(store, "token", "pad", 64, args.seconds))


if __name__ == "__main__":
    main()
