"""``blankfill inspect``: show how a sample becomes Part A + Part B, with positions and the mask."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import CorruptConfig, DataConfig, load_config
from ..data.corrupt import Example
from ..data.objectives import Corruptor, RawSample
from ..data.store import sentence_end_table, special_to_dict
from . import add_aliases, at_least, overrides

_MIX = {"token": (1.0, 0.0, 0.0), "sentence": (0.0, 1.0, 0.0), "document": (0.0, 0.0, 1.0)}


HELP = "show a corrupted sample: Part A/B, positions, mask"


@dataclass(frozen=True, kw_only=True)
class InspectConfig:
    """``blankfill inspect``: how samples are drawn (``data``) and corrupted (``corrupt``)."""

    data: DataConfig = field(default_factory=DataConfig)
    corrupt: CorruptConfig = field(default_factory=CorruptConfig)


CONFIG = InspectConfig


def configure(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("store", nargs="?", help="a token store folder (from blankfill prepare)")
    src.add_argument("--text", help="raw text to corrupt instead of a store sample")
    p.add_argument("--tokenizer", metavar="DIR", help="with --text: a saved tokenizer folder")
    p.add_argument("--index", type=at_least(0), default=0,
                   help="global sample index in the stream")  # fmt: skip
    p.add_argument("--split", choices=("train", "valid"), default="train")
    add_aliases(p, "data", ("valid_fraction", "seq_len", "seed"))
    p.add_argument("--objective", choices=tuple(_MIX), default="token",
                   help="sets corrupt.token_prob / sentence_prob / document_prob")  # fmt: skip
    p.add_argument("--no-shuffle", action="store_true", help="Part B in text order")
    p.add_argument("--max-rows", type=at_least(1), default=60, help="token table rows to print")


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
    starts = [i for i in range(sep, len(ids)) if blk[i] == 1]
    k = len(starts)
    lines = [f"objective {('MASK', 'sMASK', 'gMASK')[ex.objective]}, length {len(ex)}, "
             f"context_len (|Part A|) {sep}, sample {ex.sample_index}",
             f"length {len(ex)} = {len(ex) - 2 * k} sample tokens ([CLS] + text, at most "
             f"--seq-len) + 2 per span x {k} span(s): each span leaves a blank in Part A and "
             "opens with [sop] in Part B",
             "", "Part A:", "  " + text(ids[:sep]).replace("\n", "\\n"), "", "Part B:"]  # fmt: skip
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
    names = ("token_prob", "sentence_prob", "document_prob")
    mix = dict(zip(names, _MIX[args.objective], strict=True))
    preset = [f"corrupt.{k}={v}" for k, v in mix.items()]
    preset += ["corrupt.shuffle_spans=false"] if args.no_shuffle else []
    cfg = load_config(CONFIG, None, preset + overrides(args))
    ccfg = cfg.corrupt
    if args.text is None and args.tokenizer:
        raise ValueError("--tokenizer applies with --text only (a store has its own tokenizer)")
    if args.text is not None and args.split != "train":
        raise ValueError("--split applies to a store sample only, not to --text")
    if args.text is not None:
        if not args.tokenizer:
            raise ValueError("--text needs --tokenizer DIR (a saved tokenizer folder)")
        from ..tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        special = tok.special
        ids = np.array([special.cls, *tok.encode(args.text), special.eos], dtype=np.int64)
        table = sentence_end_table(tok.token_strings(), special_to_dict(special).values())
        lm = np.ones(len(ids), np.float32)
        lm[0] = 0
        sample = RawSample(tokens=ids, loss_mask=lm, sentence_end=table[ids], index=args.index)
        ex = Corruptor(ccfg, special)(sample, np.random.default_rng([cfg.data.seed, 0, args.index]))
    else:
        from ..data.loader import PretrainLoader
        from ..data.store import TokenStore

        store = TokenStore(args.store)
        special = store.special
        dcfg = dataclasses.replace(cfg.data, batch_size=1)
        loader = PretrainLoader(store.path, dcfg, ccfg, special, split=args.split)
        ex = loader.examples(args.index, 1)[0]
        try:
            tok = store.load_tokenizer()
        except (ImportError, OSError, ValueError):
            tok = None
    print(describe(ex, tok, special, args.max_rows))
    return 0
