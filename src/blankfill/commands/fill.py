"""``blankfill fill --model DIR [TEXT | -]``: fill the blanks of prompts, streamed or batched."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..config import DecodingConfig, load_config
from ..filling import BlankFiller, Streamer, build_prompt
from ..quantize import PRECISIONS
from . import add_aliases, overrides

HELP = "fill the blanks ([MASK] [sMASK] [gMASK]) of prompts with a model"


@dataclass(frozen=True, kw_only=True)
class FillConfig:
    """``blankfill fill``: overrides ``--decoding.KEY=VALUE``."""

    decoding: DecodingConfig = field(default_factory=DecodingConfig)


CONFIG = FillConfig
#: Short flags kept from earlier releases (README): ``--top-p 0.9`` = ``--decoding.top_p=0.9``.
ALIASES = ("strategy", "max_new_tokens", "num_beams", "temperature", "top_k", "top_p", "seed")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help="a prompt; '-' or absent: one prompt per line of stdin")
    p.add_argument("--model", required=True, help="model folder (save_pretrained)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one in --model)")
    p.add_argument("--file", help="read prompts from this file, one per line")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per batch (1: stream)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt")
    p.add_argument("--mark", action="store_true", help="show each fill between [ and ]")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="decoding precision: auto (default: bf16 on a GPU with bf16 or a CPU with native "
        "bf16 where it measures faster, else fp32), fp32 (exact fills), bf16, or weight-only "
        "int8 (opt-in); all but fp32 can change fills",
    )
    add_aliases(p.add_argument_group("decoding (aliases)"), "decoding", ALIASES)


def _prompts(args: argparse.Namespace) -> Iterator[tuple[int, str]]:
    """(input line number, prompt); blank lines are skipped."""
    if args.text is not None and args.text != "-" and not args.file:
        yield 1, args.text
        return
    if args.file:
        from ..finetune.readers import read_utf8

        fh: Any = read_utf8(args.file).splitlines()
    else:
        fh = sys.stdin
    with contextlib.nullcontext(fh):
        for i, line in enumerate(fh, 1):
            if line.strip():
                yield i, line.rstrip("\n")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(FillConfig, None, overrides(args)).decoding  # fails before the model loads
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if args.file and args.text is not None:
        raise ValueError("give a prompt or --file, not both (the prompt would be ignored)")
    filler = BlankFiller.from_pretrained(args.model, args.tokenizer, precision=args.precision)
    stream = args.batch_size == 1 and not args.json
    mark = ("[", "]") if args.mark else ("", "")
    batch: list[str] = []
    lines: list[int] = []

    def flush() -> None:
        if not batch:
            return
        try:
            decode_batch()
        except ValueError as e:  # name the input line, not the index inside the batch
            raise ValueError(
                re.sub(r"prompt (\d+)", lambda m: f"prompt on line {lines[int(m[1])]}", str(e))
            ) from None
        batch.clear()
        lines.clear()

    def decode_batch() -> None:
        if stream:
            n = sum(
                t in filler.tokenizer.mask_ids for t in build_prompt(filler.tokenizer, batch[0])
            )
            printer = Streamer(filler.tokenizer, batch[0], n, sys.stdout, mark)
            filler.fill(batch, cfg, on_token=lambda b, r, ids: printer.token(r, ids))
            printer.finish()
        else:
            for r in filler.fill(batch, cfg):
                if args.json:
                    fills = [{**dataclasses.asdict(f), "logprob": f.logprob} for f in r.fills]
                    print(json.dumps({"prompt": r.prompt, "text": r.text, "fills": fills}))
                else:
                    print(r.marked(*mark))
            sys.stdout.flush()

    for line_no, line in _prompts(args):
        batch.append(line)
        lines.append(line_no)
        if len(batch) == args.batch_size:
            flush()
    flush()
    return 0
