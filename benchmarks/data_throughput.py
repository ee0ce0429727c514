"""Data pipeline throughput on one core vs what models consume in training (prints JSON lines).

    PYTHONPATH=src python benchmarks/data_throughput.py --store /tmp/store [--seconds 5]

For each (objective mix, layout): samples/s and tokens/s of raw sampling + corruption + batching
on one core, and the packing efficiency. Then training consumption (tokens/s of one forward +
backward + AdamW step) of the ``tiny`` and ``glm-small`` presets measured on this CPU, and for
``glm-small`` an estimate for one GPU at a stated FLOP rate (6 N + attention FLOPs per token).
The ratio lines give data tokens/s over model tokens/s (target >= 20x per model-consuming device).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.loader import PretrainLoader
from blankfill.data.pack import collate_pack, collate_pad
from blankfill.data.store import TokenStore
from blankfill.model import GLM, count_parameters
from blankfill.presets import preset


def data_rate(store: TokenStore, mix: str, layout: str, seq_len: int, seconds: float) -> dict:
    probs = {"token": (1.0, 0.0, 0.0), "multi": (0.5, 0.25, 0.25)}[mix]
    ccfg = CorruptConfig(token_prob=probs[0], sentence_prob=probs[1], document_prob=probs[2])
    dcfg = DataConfig(
        seq_len=seq_len, batch_size=16, layout=layout, sample_across_doc=layout == "pad"
    )
    loader = PretrainLoader(store.path, dcfg, ccfg, store.special)
    samples = tokens = slots = steps = 0
    B = dcfg.batch_size
    row = seq_len + seq_len // 4
    t0 = time.perf_counter()
    while (dt := time.perf_counter() - t0) < seconds:
        exs = loader.examples(steps * B, B)  # raw sampling + corruption
        batch = collate_pad(exs) if layout == "pad" else collate_pack(exs, row_len=row)
        samples += len(exs)
        tokens += sum(len(e) for e in exs)
        slots += batch.input_ids.numel()
        steps += 1
    return {
        "what": "data", "mix": mix, "layout": layout, "seq_len": seq_len,
        "samples_per_s": round(samples / dt, 1), "tokens_per_s": round(tokens / dt),
        "packing_efficiency": round(tokens / slots, 4), "batches": steps,
    }  # fmt: skip


def model_rate(name: str, seq_len: int, batch: int, steps: int) -> dict:
    cfg = preset(name, max_sequence_length=max(seq_len, preset(name).max_sequence_length))
    model = GLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    T = seq_len + seq_len // 8  # blank infilling rows are longer than the text
    ids = torch.randint(0, cfg.vocab_size, (batch, T))
    pos = torch.stack([torch.arange(T).clamp(max=seq_len - 1), torch.zeros(T, dtype=torch.long)])
    pos = pos.expand(batch, 2, T)
    sep = torch.full((batch,), seq_len * 7 // 8)

    def step() -> None:
        logits = model(ids, pos, context_len=sep)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    n = count_parameters(cfg)
    return {"what": "model_cpu", "preset": name, "params": n, "tokens_per_step": batch * T,
            "threads": torch.get_num_threads(), "tokens_per_s": round(batch * T / dt)}  # fmt: skip


def model_gpu_estimate(name: str, seq_len: int, tflops: float) -> dict:
    cfg = preset(name)
    n = count_parameters(cfg)
    T = seq_len + seq_len // 8
    flops = 6 * n + 12 * cfg.num_layers * cfg.hidden_size * T  # per token, fwd + bwd
    return {"what": "model_gpu_estimate", "preset": name, "assumed_tflops": tflops,
            "flops_per_token": flops, "tokens_per_s": round(tflops * 1e12 / flops)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--gpu-tflops", type=float, default=300.0, help="sustained bf16 TFLOP/s")
    args = p.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = TokenStore(args.store)
    rows = []
    for mix in ("token", "multi"):
        for layout in ("pad", "pack"):
            rows.append(data_rate(store, mix, layout, 512, args.seconds))
            print(json.dumps(rows[-1]), flush=True)
    tiny_data = data_rate(store, "token", "pad", 64, args.seconds)
    print(json.dumps(tiny_data), flush=True)
    torch.set_num_threads(threads)
    models = [model_rate("tiny", 64, 32, 10), model_rate("glm-small", 512, 4, 2)]
    models.append(model_gpu_estimate("glm-small", 512, args.gpu_tflops))
    for m in models:
        print(json.dumps(m), flush=True)
    for m, d in ((models[0], tiny_data), (models[1], rows[0]), (models[2], rows[0])):
        print(json.dumps({"what": "ratio", "model": f"{m['preset']} ({m['what']})",
                          "data_over_model": round(d["tokens_per_s"] / m["tokens_per_s"], 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
