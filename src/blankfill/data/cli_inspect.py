"""``blankfill inspect``: show how a sample becomes Part A + Part B, with positions and the mask."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..config import CorruptConfig, DataConfig
from .corrupt import Example
from .objectives import Corruptor, RawSample
from .store import sentence_end_table, special_to_dict

_MIX = {"token": (1.0, 0.0, 0.0), "sentence": (0.0, 1.0, 0.0), "document": (0.0, 0.0, 1.0)}


def configure_parser(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("store", nargs="?", help="a token store folder (from blankfill prepare)")
    src.add_argument("--text", help="raw text to corrupt instead of a store sample")
    p.add_argument("--tokenizer", metavar="DIR", help="with --text: a saved tokenizer folder")
    p.add_argument("--index", type=int, default=0, help="global sample index in the stream")
    p.add_argument("--split", choices=("train", "valid"), default="train")
    p.add_argument("--valid-fraction", type=float, default=0.0)
    p.add_argument("--seq-len", type=int, default=512, help="tokens per raw sample")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--objective", choices=tuple(_MIX), default="token")
    p.add_argument("--no-shuffle", action="store_true", help="Part B in text order")
    p.add_argument("--max-rows", type=int, default=60, help="token table rows to print")


def render_mask(ex: Example, width: int = 48) -> str:
    """A character picture of the attention mask ('#' visible), strided to at most ``width``."""
    T, sep = len(ex), ex.context_len
    idx = np.unique(np.linspace(0, T - 1, min(T, width)).astype(int))
    q, k = idx[:, None], idx[None, :]
    vis = (k < sep) | (k <= q)
    return "\n".join("".join("#" if v else "." for v in row) for row in vis)


def describe(ex: Example, tokenizer: Any, special: Any, max_rows: int = 60) -> str:
    """Part A and Part B as text, a token table and the mask, as one printable string."""

    def text(ids) -> str:
        return tokenizer.decode([int(i) for i in ids]) if tokenizer is not None else str(list(ids))

    sep = ex.context_len
    ids, labels, (pos, blk) = ex.input_ids, ex.labels, ex.position_ids
    lines = [f"objective {('MASK', 'sMASK', 'gMASK')[ex.objective]}, length {len(ex)}, "
             f"context_len (|Part A|) {sep}, sample {ex.sample_index}",
             "", "Part A:", "  " + text(ids[:sep]).replace("\n", "\\n"), "", "Part B:"]  # fmt: skip
    starts = [i for i in range(sep, len(ids)) if blk[i] == 1]
    for s, e in zip(starts, [*starts[1:], len(ids)], strict=False):
        span = text(labels[s : e - 1]).replace("\n", "\\n")
        lines.append(f"  at position {pos[s]}: [sop] {span} [eop]")
    lines += ["", f"{'t':>4} {'input':>8} {'label':>8} {'pos':>4} {'blk':>4} {'loss':>4}  token"]
    for t in range(min(len(ids), max_rows)):
        tok = text([ids[t]]).replace("\n", "\\n") if tokenizer is not None else ""
        lines.append(
            f"{t:>4} {ids[t]:>8} {labels[t]:>8} {pos[t]:>4} {blk[t]:>4} {ex.loss_mask[t]:>4.0f}  {tok}"
        )
    if len(ids) > max_rows:
        lines.append(f"  ... {len(ids) - max_rows} more rows (--max-rows)")
    lines += ["", "attention (row = query, '#' = may attend; strided to 48 columns):",
              render_mask(ex)]  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    tp, sp, dp = _MIX[args.objective]
    ccfg = CorruptConfig(
        token_prob=tp, sentence_prob=sp, document_prob=dp, shuffle_spans=not args.no_shuffle
    )
    if args.text is not None:
        if not args.tokenizer:
            raise ValueError("--text needs --tokenizer DIR (a saved tokenizer folder)")
        from ..tokenizer import load_tokenizer  # type: ignore[attr-defined]

        tok = load_tokenizer(args.tokenizer)
        special = tok.special
        ids = np.array([special.cls, *tok.encode(args.text), special.eos], dtype=np.int64)
        table = sentence_end_table(tok.token_strings(), special_to_dict(special).values())
        lm = np.ones(len(ids), np.float32)
        lm[0] = 0
        sample = RawSample(tokens=ids, loss_mask=lm, sentence_end=table[ids], index=args.index)
        ex = Corruptor(ccfg, special)(sample, np.random.default_rng([args.seed, 0, args.index]))
    else:
        from .loader import PretrainLoader
        from .store import TokenStore

        store = TokenStore(args.store)
        special = store.special
        dcfg = DataConfig(seq_len=args.seq_len, batch_size=1, seed=args.seed,
                          valid_fraction=args.valid_fraction)  # fmt: skip
        loader = PretrainLoader(store.path, dcfg, ccfg, special, split=args.split)
        ex = loader.examples(args.index, 1)[0]
        try:
            tok = store.load_tokenizer()
        except (ImportError, OSError, ValueError):
            tok = None
    print(describe(ex, tok, special, args.max_rows))
    return 0
