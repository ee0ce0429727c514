"""Greedy fills of a trained model in each decoding precision against plain fp32, on held-out text.

The reference is the model exactly as loaded (PyTorch's default kernels, fp32, no
``decoding_layout_``); each peer is ``BlankFiller(model, tok, precision=p)`` (packed kernels, then
``p``). Prompts come from the held-out ("test") documents of the corpus's ``splits.json``: a
passage of ``--words`` words with a short span (1-3 words) replaced by ``[MASK]``, or cut after
it and ended by ``[gMASK]``, alternately. Prints one JSON line per precision: fills equal to the
reference's, tokens equal (first differing position), and CPU seconds for the whole set.

    python benchmarks/precision_agreement.py --model RUN_OR_MODEL_DIR [--prompts 64]
        [--new-tokens 16] [--batch-size 8] [--precisions fp32 bf16 int8]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time

import numpy as np
import torch
from common import CORPUS, machine

from blankfill.filling import BlankFiller, fill
from blankfill.folder import load_model_and_tokenizer


def held_out_prompts(n: int, words: int, seed: int = 0) -> list[str]:
    """``n`` prompts from the corpus's test documents (see the module docstring)."""
    splits = json.loads((CORPUS / "splits.json").read_text())
    docs = [(CORPUS / p).read_text() for p in splits["test"]]
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        toks = re.sub(r"\s+", " ", docs[rng.integers(len(docs))]).split(" ")
        start = int(rng.integers(0, max(1, len(toks) - words)))
        passage = toks[start : start + words]
        cut = int(rng.integers(words // 2, words - 3))
        if len(out) % 2 == 0:  # a short span in the middle
            span = int(rng.integers(1, 4))
            out.append(" ".join(passage[:cut] + ["[MASK]"] + passage[cut + span :]))
        else:  # a continuation
            out.append(" ".join(passage[:cut]) + " [gMASK]")
    return out


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder or a pretraining run")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--words", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not (CORPUS / "splits.json").is_file():
        print(f"no corpus at {CORPUS} (set BENCH_CORPUS): nothing to compare", file=sys.stderr)
        return
    torch.set_num_threads(args.threads)
    print(json.dumps({"what": "machine", **machine()}), flush=True)
    model, tok = load_model_and_tokenizer(args.model)
    model.eval()
    prompts = held_out_prompts(args.prompts, args.words)
    kw = {"strategy": "greedy", "max_new_tokens": args.new_tokens}

    def decode(m) -> tuple[list[tuple[int, ...]], float]:
        c0, fills = time.process_time(), []
        for i in range(0, len(prompts), args.batch_size):
            for r in fill(m, tok, prompts[i : i + args.batch_size], **kw):
                fills += [f.token_ids for f in r.fills]
        return fills, time.process_time() - c0

    reference, ref_cpu = decode(model)
    print(json.dumps({"precision": "reference fp32 (plain)", "cpu_seconds": round(ref_cpu, 3)}))
    for p in args.precisions:
        filler = BlankFiller(copy.deepcopy(model), tok, precision=p)
        decode(filler.model)  # warm-up (packing)
        fills, cpu = decode(filler.model)
        tokens = sum(len(a) for a in reference)
        same_tokens = sum(map(_common_prefix, reference, fills))
        record = {
            "precision": p,
            "fills_equal": f"{sum(map(tuple.__eq__, reference, fills))}/{len(reference)}",
            "tokens_before_first_difference": f"{same_tokens}/{tokens}",
            "cpu_seconds": round(cpu, 3),
            "speedup_vs_reference": round(ref_cpu / cpu, 3),
            "new_tokens": args.new_tokens,
            "batch_size": args.batch_size,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
