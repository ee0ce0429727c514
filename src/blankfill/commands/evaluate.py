"""``blankfill evaluate``: cloze metrics, LAMBADA, perplexity or ROUGE of a model folder."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DecodingConfig, apply_overrides
from ..finetune.tasks import TASKS
from ..train.metrics import finite_or_none
from . import at_least

HELP = "evaluate: cloze metrics, LAMBADA, perplexity, ROUGE"
LM_TASKS = ("lambada", "ppl", "wikitext")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """``--task seq2seq``: ``--decoding.KEY=VALUE`` changes the decoding (default: beam search
    with 5 beams and no repeated 3-grams, ``finetune.seq2seq.evaluate_seq2seq``)."""

    decoding: DecodingConfig = field(default_factory=DecodingConfig)


CONFIG = EvaluateConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True,
                   help=f"a cloze task ({', '.join(TASKS)}, or a task .toml); lambada; ppl "
                   "(perplexity of a text file); or seq2seq")  # fmt: skip
    p.add_argument("--data", required=True, help="data file (.jsonl, .tsv, .txt, .source)")
    p.add_argument("--model", required=True, help="model folder (weights + tokenizer), "
                   "pretrained (zero-shot) or written by blankfill finetune")  # fmt: skip
    p.add_argument("--out", default=None, help="also write the result JSON to this file")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto ...")
    p.add_argument("--pattern-id", type=at_least(0), default=None,
                   help="cloze: pattern (task default)")  # fmt: skip
    p.add_argument("--batch-size", type=at_least(1), default=None,
                   help="examples per forward (default: cloze 16, lambada 16, ppl 8, seq2seq 8)")  # fmt: skip
    p.add_argument("--max-seq-len", type=at_least(8), default=None,
                   help="default: task/model maximum")  # fmt: skip
    p.add_argument("--length-penalty", type=at_least(-100.0, float), default=None,
                   help="cloze, multi-token answers: score / len**length_penalty (default 0)")  # fmt: skip
    p.add_argument("--limit", type=at_least(1), default=None,
                   help="evaluate the first N examples (ppl: windows) only")  # fmt: skip
    p.add_argument("--unidirectional", action="store_true",
                   help="lambada/ppl: left-to-right only (no bidirectional Part A)")  # fmt: skip
    p.add_argument("--stride", type=at_least(1), default=None,
                   help="ppl: new tokens scored per window (default 256)")  # fmt: skip
    p.epilog = ("seq2seq decoding, e.g. --decoding.num_beams=5 --decoding.length_penalty=0.7 "
                "--decoding.min_length=55 --decoding.no_repeat_ngram_size=3.")  # fmt: skip


#: Options that apply to some tasks only (kind -> flags); given for another task, they are an
#: error rather than silently ignored.
ONLY_FOR = {
    "--pattern-id": ("cloze",),
    "--length-penalty": ("cloze",),
    "--unidirectional": ("lambada", "ppl"),
    "--stride": ("ppl",),
    "--decoding.*": ("seq2seq",),
}


def task_kind(task: str) -> str:
    name = task.lower()
    return (
        "ppl"
        if name in ("ppl", "wikitext")
        else name
        if name in ("lambada", "seq2seq")
        else "cloze"
    )


def check_options(args: argparse.Namespace) -> None:
    """A one-line error for an option the task does not use (it would be silently ignored)."""
    kind = task_kind(args.task)
    given = {
        "--pattern-id": args.pattern_id is not None,
        "--length-penalty": args.length_penalty is not None,
        "--unidirectional": args.unidirectional,
        "--stride": args.stride is not None,
        "--decoding.*": bool(args.overrides),
    }
    for flag, kinds in ONLY_FOR.items():
        if given[flag] and kind not in kinds:
            raise ValueError(f"{flag} applies to --task {' or '.join(kinds)} only, not {args.task}")


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..folder import load_model_and_tokenizer
    from ..progress import progress_bar as tqdm

    check_options(args)
    decoding = apply_overrides({}, args.overrides, EvaluateConfig).get("decoding", {})
    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
    device = resolve_device(args.device, key="--device")
    model, tokenizer = load_model_and_tokenizer(args.model, device=device)
    name = args.task.lower()
    if name in LM_TASKS:
        from ..finetune import lm

        if name == "lambada":
            result = lm.lambada(model, tokenizer, args.data, unidirectional=args.unidirectional,
                                limit=args.limit, max_seq_len=args.max_seq_len, **batch)  # fmt: skip
        else:
            result = lm.perplexity(model, tokenizer, args.data, stride=args.stride or 256,
                                   unidirectional=args.unidirectional, limit=args.limit,
                                   max_seq_len=args.max_seq_len, **batch)  # fmt: skip
    elif name == "seq2seq":
        from ..finetune.seq2seq import evaluate_seq2seq, read_pairs, require_pairs

        pairs = read_pairs(args.data)[: args.limit or None]
        require_pairs(pairs, source=str(args.data))
        result = evaluate_seq2seq(model, tokenizer, pairs, max_seq_len=args.max_seq_len,
                                  **batch, **decoding)  # fmt: skip
    else:
        from ..finetune.runner import evaluate_cloze, load_head, read_finetune_info, require_labels
        from ..finetune.tasks import get_task

        task = get_task(args.task)
        info = read_finetune_info(args.model)
        records = task.load(args.data)[: args.limit or None]
        require_labels(task, records, source=str(args.data))
        head = load_head(args.model, model, task, info)
        pid = args.pattern_id if args.pattern_id is not None else info.get("pattern_id")
        bar = tqdm(total=len(records), desc=f"evaluate {task.name}", unit="ex")
        result = evaluate_cloze(
            model, tokenizer, task, records, pattern_id=pid, batch_size=args.batch_size or 16,
            max_seq_len=args.max_seq_len or info.get("max_seq_len"),
            length_penalty=args.length_penalty if args.length_penalty is not None
            else info.get("length_penalty", 0.0), head=head, progress=bar.update,
        )  # fmt: skip
        bar.close()
    result = {"task": args.task, "data": str(args.data), "model": str(args.model), **result}
    text = json.dumps(finite_or_none(result), indent=2)  # an overflowing ppl is null, not Infinity
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0
