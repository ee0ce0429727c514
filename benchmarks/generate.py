"""Decoding speed: blankfill ``generate`` (GLM-small) against HF ``GPT2LMHeadModel.generate``.

Both models have the same shape (6 layers, d 512, 8 heads, vocabulary 8192, random weights) and
decode greedily the same number of new tokens after the same prompt length; the two are timed
alternately in one process. Prints one JSON line per timed run, then one summary line per batch
size: tokens/s (median wall clock) and the speed ratio ours / HF, the median over back-to-back
pairs of wall-clock time and of process CPU time (the latter ignores time lost to other processes).

    python benchmarks/generate.py [--batch-sizes 1 8] [--prompt-len 128] [--new-tokens 64]
        [--precisions fp32 bf16 int8]

Each decoding precision (``blankfill.quantize``) is its own peer; the fp32 one is the headline
figure; bf16 and int8 run by default only where the CPU has native bf16 (on a Zen 3 without
it, 2026-12-02, they decoded 12-36x slower than fp32). ``fills_equal_fp32`` counts the greedy
fills identical to the fp32 model's. ``matmul_floor`` times one step's matmuls alone (fp32, the
same rows through every weight matrix once; no attention, no prompt, no sampling): a step streams
every weight from memory, so its tokens/s over HF's is about the most any fp32 decoder could reach
over HF here; ``share_of_fp32_matmul_floor`` is how close each precision comes to it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from common import emulated_bf16, machine

from blankfill.generate import InfillIds, decoding_layout_, generate
from blankfill.model import GLM
from blankfill.presets import preset
from blankfill.quantize import PRECISIONS, decoding_precision_

PAD, SOP, EOP, GMASK = 0, 1, 2, 3
IDS = InfillIds(blanks=(GMASK,), sop=SOP, eop=EOP, pad=PAD)


def build(seed: int) -> tuple[GLM, torch.nn.Module]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = preset(
        "glm-small", embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0
    )
    ours = decoding_layout_(GLM(cfg).eval())  # column-major weights, as HF's Conv1D
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_sequence_length,
        n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_attention_heads,
        activation_function="gelu_new",  # the tanh GeLU, as GLM
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=SOP,
        eos_token_id=EOP,
        pad_token_id=PAD,
    )
    theirs = GPT2LMHeadModel(hf_cfg).eval()
    return ours, theirs


def matmul_floor(model: GLM, rows: int, repeats: int = 7) -> float:
    """Seconds of one decoding step's matmuls alone: ``rows`` rows through every block matrix and
    the output layer once, fp32, the faster of the model's own kernels (``blankfill.kernels``) and
    ``F.linear`` on row-major copies (fastest of ``repeats`` steps); no attention, no prompt."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    copies = [m.weight.detach().contiguous() for m in linears]
    copies.append(model.word_embeddings.weight.detach().contiguous())
    xs = {n: torch.randn(rows, n) for n in {w.shape[1] for w in copies}}
    own = [*linears, model.word_embeddings.attend]
    chains = {
        "own": lambda: [f(xs[w.shape[1]]) for f, w in zip(own, copies, strict=True)],
        "f_linear": lambda: [F.linear(xs[w.shape[1]], w) for w in copies],
    }
    best = float("inf")
    with torch.inference_mode():
        for chain in chains.values():  # each chain on its own, as a decoder repeats its step:
            chain()  # alternating two copies of the weights would evict each other from cache
            for _ in range(repeats):
                t0 = time.perf_counter()
                chain()
                best = min(best, time.perf_counter() - t0)
    return best


def fills_of(model: GLM, prompts: torch.Tensor, new_tokens: int) -> list[tuple[int, ...]]:
    rows = generate(model, prompts, ids=IDS, max_new_tokens=new_tokens, min_length=new_tokens)
    return [f.token_ids for row in rows for f in row]


def run_ours(model: GLM, prompts: torch.Tensor, new_tokens: int) -> int:
    return sum(map(len, fills_of(model, prompts, new_tokens)))


@torch.inference_mode()
def run_hf(model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int) -> int:
    out = model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=EOP,
        pad_token_id=PAD,
    )
    return (out.shape[1] - prompts.shape[1]) * out.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--precisions", nargs="+", default=None, choices=PRECISIONS,
        help="default: fp32, and bf16 and int8 where the CPU has native bf16",
    )  # fmt: skip
    # One thread: on a shared 2-core box extra threads only contend and the numbers swing 2x.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps({"what": "machine", **machine()}), flush=True)
    if args.precisions is None:  # int8 computes in bf16: both emulated where bf16 is
        why = emulated_bf16()
        args.precisions = ["fp32"] if why else ["fp32", "bf16", "int8"]
        if why:
            print(json.dumps({"what": "skipped", "precisions": ["bf16", "int8"], "why": why}))
    fp32, theirs = build(0)
    ours = {p: decoding_precision_(copy.deepcopy(fp32), p) for p in args.precisions}
    g = torch.Generator().manual_seed(0)
    for B in args.batch_sizes:
        prompts = torch.randint(8, 8192, (B, args.prompt_len), generator=g)
        prompts[:, -1] = GMASK  # one long blank at the end: left-to-right generation
        names = [f"blankfill_{p}" for p in args.precisions]
        wall: dict[str, list[float]] = {k: [] for k in [*names, "hf"]}
        cpu: dict[str, list[float]] = {k: [] for k in [*names, "hf"]}
        impls = [(f"blankfill_{p}", run_ours, m) for p, m in ours.items()]
        impls.append(("hf", run_hf, theirs))
        for _, fn, model in impls:
            fn(model, prompts, 4)  # warm-up
        reference = fills_of(fp32, prompts, args.new_tokens)
        equal = {
            p: sum(map(tuple.__eq__, reference, fills_of(m, prompts, args.new_tokens)))
            for p, m in ours.items()
        }
        for rep in range(args.repeats):
            for name, fn, model in impls if rep % 2 == 0 else impls[::-1]:  # alternate the order
                t0, c0 = time.perf_counter(), time.process_time()
                n = fn(model, prompts, args.new_tokens)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                assert n == B * args.new_tokens, f"{name} generated {n} tokens"
                wall[name].append(dt)
                cpu[name].append(dc)
                record = {"impl": name, "batch": B, "repeat": rep, "seconds": round(dt, 4)}
                record |= {"cpu_seconds": round(dc, 4), "tokens_per_s": round(n / dt, 1)}
                print(json.dumps(record), flush=True)
        tps = {k: B * args.new_tokens / statistics.median(v) for k, v in wall.items()}
        floor_tps = B / matmul_floor(ours.get("fp32", fp32), B)
        print(json.dumps({"what": "matmul_floor", "batch": B, "precision": "fp32",
                          "tokens_per_s": round(floor_tps, 1),
                          "over_hf": round(floor_tps / tps["hf"], 3)}), flush=True)  # fmt: skip
        for p in args.precisions:
            o = f"blankfill_{p}"
            # Each repeat runs all peers back to back, so a pair shares the machine's load at that
            # moment; CPU time (one thread) counts only the work done, not time lost to others.
            wall_pairs = [h / t for t, h in zip(wall[o], wall["hf"], strict=True)]
            cpu_pairs = [h / t for t, h in zip(cpu[o], cpu["hf"], strict=True)]
            summary = {
                "summary": True,
                "batch": B,
                "precision": p,
                "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens,
                "threads": torch.get_num_threads(),
                "blankfill_tokens_per_s": round(tps[o], 1),
                "hf_tokens_per_s": round(tps["hf"], 1),
                "ratio_wall": round(statistics.median(wall_pairs), 3),
                "ratio_cpu": round(statistics.median(cpu_pairs), 3),
                "fills_equal_fp32": f"{equal[p]}/{len(reference)}",
                "share_of_fp32_matmul_floor": round(tps[o] / floor_tps, 3),
            }
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
