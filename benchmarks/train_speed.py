"""Training speed: GLM-small steps against HF GPT-2 and BERT, and against the matmul peaks.

    python benchmarks/train_speed.py [--batch 8] [--repeats 2] [--steps 1] [--threads 1]

Same shapes for all (6 layers, d 512, 8 heads, vocabulary 8192, dropout 0.1, AdamW): GLM trains
on a real corrupted batch from the loader (seq 512 -> ~560 tokens per row, the blank-infilling
mask, logits on the Part-B targets only, as the trainer does; in fp32 its Linears run by oneDNN
where ``blankfill.kernels`` measures that faster than MKL, as the engine does); HF
``GPT2LMHeadModel`` and ``BertForMaskedLM`` (``attn_implementation="sdpa"``) train on rows of
the same length with labels on every token (what a user of those models runs). Each repeat times every implementation back
to back, in a new order each time; ratios are medians over repeats of the paired times. Times
are process CPU seconds (one thread by default: on a shared machine wall time also counts other
processes' turns, and a descheduled thread stalls its partner); wall times are reported too.
Memory: the GLM rows run as the trainer does on the CPU, with glibc's malloc keeping freed
memory for the next step (``blankfill.allocator``); HF's rows run as its users run them, with
malloc's usual limits, and again (``_kept``) with freed memory kept, for a like-for-like ratio.
The setting is process-wide, so it is set before each implementation's turn, followed by one
untimed step so the heap settles in the new mode. GLM bf16 runs only on CPUs with native bf16
(AMX or AVX512-BF16; elsewhere it is emulated and many times slower than fp32). The fp32 and
bf16 matmul peaks (``hardware.matmul_flops``, same threads) are measured between the repeats;
``share_of_peak`` = model FLOP/s (6 x matmul parameters x tokens, the tied output layer only on
the rows that get logits, plus 12 L T D attention FLOPs per token; the last block's work past
its keys and values only on the rows from the first target column on, as the trainer computes
them, ``TargetLogits``) over the peak.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from common import emit, emulated_bf16, machine, token_store

from blankfill import allocator, hardware
from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.loader import PretrainLoader
from blankfill.data.store import TokenStore
from blankfill.kernels import onednn_training_speedup, training_by_onednn, training_kernels_
from blankfill.model import GLM
from blankfill.presets import preset
from blankfill.train.objective import (
    TargetLogits,
    first_target_row,
    target_cross_entropy,
    target_index,
)

L, D, H, V = 6, 512, 8, 8192


def glm_batch(batch_size: int):
    store = TokenStore(token_store())
    dcfg = DataConfig(seq_len=512, batch_size=batch_size)
    return PretrainLoader(store.path, dcfg, CorruptConfig(), store.special).batch(0)


def flops_per_step(tokens: int, logit_rows: int, T: int, last_rows: int | None = None) -> float:
    """Matmul FLOPs of one forward + backward (6 per parameter per row, 12 L T D attention) as
    computed: the last block's queries, dense output and MLP (10 of its 12 D^2 per row) and its
    attention on ``last_rows`` rows only (``GLM.hidden(first_row=...)``; None: every row)."""
    last = tokens if last_rows is None else last_rows
    blocks = (L - 1) * 12 * tokens + 2 * tokens + 10 * last  # x D^2 per row
    return 6 * (blocks * D * D + V * D * logit_rows) + 12 * T * D * ((L - 1) * tokens + last)


def make_glm(batch, precision: str, compile_: bool = False):
    torch.manual_seed(0)
    cfg = preset("glm-small", max_sequence_length=1024)
    model = GLM(cfg).train()
    if precision == "fp32" and not compile_ and training_by_onednn():
        training_kernels_(model)  # what the engine does here (blankfill.kernels, measured)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    index = target_index(batch)
    labels = batch.labels.flatten()[index]
    B, T = batch.input_ids.shape
    first = first_target_row(index, T)  # found once, as to_device does for the trainer
    head = TargetLogits(model)  # the trainer's: the last block from the first target column on
    cast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )
    if compile_:
        model.hidden = torch.compile(model.hidden)

    def step() -> None:
        with cast():
            logits = head(batch, index, first)
        target_cross_entropy(logits, labels).mean().backward()  # the trainer's loss
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, B * T, flops_per_step(B * T, len(index), T, B * (T - first))


def make_hf(kind: str, B: int, T: int):
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=D, n_layer=L, n_head=H,
                         activation_function="gelu_new")  # fmt: skip
        model = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa")
    else:
        cfg = BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                         intermediate_size=4 * D, max_position_embeddings=T)  # fmt: skip
        model = BertForMaskedLM._from_config(cfg, attn_implementation="sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(8, V, (B, T), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, B * T, flops_per_step(B * T, B * T, T)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="timed steps per implementation per repeat")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd GLM (fp32)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    emit({"what": "machine", **machine()})
    emit({"what": "training_linears", "onednn": training_by_onednn(),
          "onednn_over_mkl": round(onednn_training_speedup(), 3)})  # fmt: skip
    batch = glm_batch(args.batch)
    B, T = batch.input_ids.shape
    gpt2, bert = make_hf("gpt2", B, T), make_hf("bert", B, T)
    if why := emulated_bf16():
        emit({"what": "skipped", "impl": "glm_bf16", "why": why})
    impls = {  # name: (step, tokens, FLOPs)
        "glm_fp32": make_glm(batch, "fp32"),
        **({} if why else {"glm_bf16": make_glm(batch, "bf16")}),
        "hf_gpt2_fp32": gpt2,
        "hf_bert_fp32": bert,
        "hf_gpt2_fp32_kept": gpt2,
        "hf_bert_fp32_kept": bert,
    }
    if args.compile:
        impls["glm_fp32_compiled"] = make_glm(batch, "fp32", compile_=True)
    kept = {name: not name.startswith("hf_") or name.endswith("_kept") for name in impls}
    emit({"what": "malloc", "kept_for": [k for k, v in kept.items() if v],
          "glibc": allocator.keep_freed_memory(False)})  # fmt: skip
    for step, _, _ in impls.values():
        step()  # warm-up (oneDNN kernels, optimizer state)
    times: dict[str, list[float]] = {k: [] for k in impls}
    walls: dict[str, list[float]] = {k: [] for k in impls}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    names = list(impls)
    for rep in range(args.repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate the order
            step = impls[name][0]
            allocator.keep_freed_memory(kept[name])
            step()  # untimed: the heap settles in this mode
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            times[name].append((time.process_time() - c0) / args.steps)
            walls[name].append((time.perf_counter() - t0) / args.steps)
        peaks["fp32"].append(hardware.matmul_flops(torch.float32))
        peaks["bf16"].append(hardware.matmul_flops(torch.bfloat16))
    allocator.keep_freed_memory(False)
    peak = {k: max(v) for k, v in peaks.items()}
    emit({"what": "matmul_peak", "threads": torch.get_num_threads(),
          "fp32_gflops": round(peak["fp32"] / 1e9, 1), "bf16_gflops": round(peak["bf16"] / 1e9, 1)})  # fmt: skip
    for name, (_, tokens, flops) in impls.items():
        dt = statistics.median(times[name])
        prec = "bf16" if "bf16" in name else "fp32"
        row = {"what": "train_step", "impl": name, "batch": B, "tokens_per_step": tokens,
               "cpu_seconds_per_step": round(dt, 3), "tokens_per_s": round(tokens / dt, 1),
               "wall_seconds_per_step": round(statistics.median(walls[name]), 3),
               "gflops": round(flops / dt / 1e9, 1),
               "share_of_peak": round(flops / dt / peak[prec], 3), "peak": prec,
               "malloc_keeps_freed_memory": kept[name]}  # fmt: skip
        emit(row)
    base = times["glm_fp32"]
    for name in names[1:]:  # the paired CPU times of each repeat
        if name.startswith("glm_"):  # our other variants: their speed-up over GLM fp32
            pairs = [g / o for g, o in zip(base, times[name], strict=True)]
            emit({"what": "ratio", "variant": name, "speedup_over_glm_fp32":
                  round(statistics.median(pairs), 3)})  # fmt: skip
        else:  # a peer: GLM fp32's speed-up over it
            pairs = [o / g for g, o in zip(base, times[name], strict=True)]
            emit({"what": "ratio", "glm_fp32_over": name,
                  "speedup": round(statistics.median(pairs), 3)})  # fmt: skip


if __name__ == "__main__":
    main()
