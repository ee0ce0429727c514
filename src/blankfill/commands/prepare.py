"""``blankfill prepare``: tokenize a text corpus into a token store."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from ..data.sources import ReadStats, iter_documents, list_input_files
from ..data.store import TokenStore, prepare
from . import at_least

log = logging.getLogger(__name__)


HELP = "tokenize a text corpus into a token store"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help=".txt/.jsonl files (or .gz) and folders of them",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="store folder to create")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", metavar="DIR", help="a saved tokenizer folder")
    tok.add_argument(
        "--train-tokenizer",
        action="store_true",
        help="train a byte-level BPE tokenizer on the inputs first",
    )
    p.add_argument("--vocab-size", type=at_least(265), default=None,
                   help="with --train-tokenizer (default 8192)")  # fmt: skip
    p.add_argument(
        "--txt-mode",
        choices=("file", "blank_lines"),
        default="file",
        help=".txt: one document per file, or documents separated by blank lines",
    )
    p.add_argument("--text-field", default="text", help=".jsonl: the field holding the text")
    p.add_argument(
        "--workers", type=at_least(0), default=1, metavar="N",
        help="tokenizer processes (default 1: one process, the tokenizer's threads on every "
        "core; 0: one per core); the store is the same for every N",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument(
        "--append", action="store_true",
        help="add the inputs to the existing store --out as a new shard (same --tokenizer)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")  # fmt: skip


def _tokenizer(args: argparse.Namespace, files: list[Path]):
    from .. import tokenizer as tk

    if args.tokenizer:
        return tk.load_tokenizer(args.tokenizer)
    stats = ReadStats()
    texts = [
        doc
        for f in files
        for doc in iter_documents(f, stats, txt_mode=args.txt_mode, text_field=args.text_field)
    ]
    t0 = time.perf_counter()
    tok = tk.train_tokenizer(texts, vocab_size=args.vocab_size or 8192)
    log.info("trained a %d-token tokenizer in %.1fs", tok.vocab_size, time.perf_counter() - t0)
    return tok


def run(args: argparse.Namespace) -> int:
    if args.vocab_size is not None and not args.train_tokenizer:
        raise ValueError(
            "--vocab-size applies with --train-tokenizer only (--tokenizer has its own)"
        )
    files = list_input_files(args.input)
    kinds = {f.name.lower().split(".")[1] for f in files}
    if args.text_field != "text" and "jsonl" not in kinds:
        raise ValueError("--text-field applies to .jsonl inputs only, and there are none")
    if args.txt_mode != "file" and "txt" not in kinds:
        raise ValueError("--txt-mode applies to .txt inputs only, and there are none")
    out = Path(args.out)
    if args.append and args.train_tokenizer:
        raise ValueError(
            f"--append keeps the store's tokenizer: pass --tokenizer {out / 'tokenizer'}"
        )
    if args.append:
        TokenStore(out)  # a one-line error when --out is not a store, before any reading
    elif out.exists() and not args.overwrite:
        raise FileExistsError(
            f"{out} already exists; pass --overwrite, --append, or choose another --out"
        )
    tokenizer = _tokenizer(args, files)
    total = sum(f.stat().st_size for f in files)
    bar = None
    if not args.no_progress:
        from ..progress import progress_bar

        bar = progress_bar(total, unit="B", unit_scale=True, desc="tokenizing")
    t0 = time.perf_counter()
    try:
        manifest = prepare(
            args.input, out, tokenizer, txt_mode=args.txt_mode, text_field=args.text_field,
            overwrite=args.overwrite, append=args.append, workers=args.workers or (os.cpu_count() or 1),
            progress=bar.update if bar is not None else None,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    store = TokenStore(out)
    shards = f" in {len(store.shards)} shards" if len(store.shards) > 1 else ""
    print(
        f"wrote {out}{shards}: {store.num_documents} documents, {store.num_tokens} tokens "
        f"({manifest['dtype']}), {manifest['num_sentence_ends']} sentence ends, "
        f"{size / 2**20:.1f} MiB, {wall:.1f}s"
    )
    print(
        f"input: {manifest['files']} files, {manifest['input_bytes']} bytes; "
        f"empty documents skipped: {manifest['empty_documents_skipped']}; "
        f"undecodable byte sequences replaced: {manifest['undecodable_replaced']}"
    )
    return 0
