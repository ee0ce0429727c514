"""Evaluation of each experiment model, through blankfill's own loader, LM and fine-tuning code.

Per model (``eval.json`` in its run folder):
- ``infill``: on the corpus's test split, corrupted by the model's own ``corrupt`` section (the
  same text windows for every model): target loss (total, per objective), token accuracy (of all
  targets, and of the text tokens alone, without the easy [eop] that closes each span), and the
  exact match of short spans (<= 3 tokens; every token argmax-correct, which under teacher forcing
  equals greedy decoding for the autoregressive Part B; the masked LM predicts its tokens at once);
- ``ppl_heldout`` / ``ppl_wikitext2``: sliding-window perplexity (``finetune.lm.perplexity``,
  windows of 128, stride 64) on held-out documents and WikiText-2 valid: GLM through its
  generation blank (``[gMASK]`` when it was trained, else ``[MASK]``), the causal LM causally;
- ``lastword``: LAMBADA-style accuracy (``finetune.lm.lambada``) on held-out paragraphs.
Per model and seed (``finetune.json``): cloze fine-tuning on SST-2 (fixed subsamples: 500
training, 300 dev sentences), CB and COPA (all of train and val); the classifier head for the masked LM (BERT's way) and, as
the ablation, for GLM (a).

Each model is evaluated and fine-tuned in its own pretraining format (``blankfill.layout``, read
from its run config; ``part_b_layout`` in both files, and in the LM-mode column): (d) the 1D
layout, a span's Part B at its blank's position with block position 1 (the model reads only the
position row); (e) the blank the sentinel model was trained with for a single span: ``[MASK]``,
opened by ``[sop]`` (sentinels ``[MASK_i]`` start at the second span of Part B), with Part B at
position |Part A| as in its pretraining, not at the blank. The rest use GLM's 2D layout. A file
written in another layout (older files hold none: 2D) is computed again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import re
import time
from pathlib import Path

import torch
from run import say, write_json  # experiments/run.py

SHORT_SPAN = 3  # tokens: "short spans" for the exact match
FT_TASKS = {  # task -> (train file, valid file) under benchmarks/
    "sst2": ("glue-sst2/train.tsv", "glue-sst2/dev.tsv"),
    "cb": ("superglue/CB/train.jsonl", "superglue/CB/val.jsonl"),
    "copa": ("superglue/COPA/train.jsonl", "superglue/COPA/val.jsonl"),
}
FT_EPOCHS = {"sst2": 2, "cb": 5, "copa": 5}
SST2_TRAIN, SST2_DEV = 500, 300  # the fixed SST-2 subsamples (seed 0)


def load_cfg(rd: Path):
    """(checkpoint folder, its run config)."""
    from blankfill.config import RunConfig, from_dict

    ckpt = Path(json.loads((rd / "pretrain.json").read_text())["checkpoint"])
    raw = json.loads((ckpt / "config.json").read_text())
    raw.pop("format", None)
    return ckpt, from_dict(RunConfig, raw)


def load_run(rd: Path):
    from blankfill.pretrained import load_folder_tokenizer, load_pretrained

    ckpt, cfg = load_cfg(rd)
    return load_pretrained(ckpt), load_folder_tokenizer(ckpt), cfg


def layout_name(cfg) -> str:
    """The Part-B layout of a run: "2d", "1d", with "+sentinel" for sentinel blanks."""
    name = "2d" if cfg.model.block_position_encoding else "1d"
    return name + ("+sentinel" if cfg.corrupt.sentinels > 0 else "")


def part_b_layout(cfg, tokenizer):
    """The model's own Part-B layout (``blankfill.layout``), as it was pretrained."""
    from blankfill.layout import PartBLayout

    return PartBLayout.of(cfg.model, cfg.corrupt, tokenizer.special)


def _with_blank(tokenizer, cfg):
    """The tokenizer as lm.py sees it: [gMASK] only for models trained on the document level."""
    if cfg.corrupt.document_prob > 0:
        return tokenizer, "[gMASK]"
    tok = copy.copy(tokenizer)
    tok.special = dataclasses.replace(tokenizer.special, gmask=None)
    return tok, "[MASK]"


def short_span_matches(
    sel: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor, *, eop: int, in_place: bool
) -> tuple[int, int]:
    """(spans of 1..SHORT_SPAN text tokens, how many of them have every target right).

    Args:
        sel: bool [B, T], the target positions; ``labels`` and ``ok`` (bool, argmax correct) are
            [N] over them in row-major order.
        eop: GLM's Part B closes each span with an ``[eop]`` label (counted in the match, not in
            the length; a suffix span ends with its row).
        in_place: masked LM: a span is a run of adjacent target positions.
    """
    spans = exact = k = 0
    for row in sel:
        ts = torch.nonzero(row).flatten().tolist()
        start = k
        for j, t in enumerate(ts):
            last = j + 1 == len(ts)
            end = (last or ts[j + 1] != t + 1) if in_place else (last or int(labels[k]) == eop)
            k += 1
            if end:
                n_tok = (k - start) - (not in_place and int(labels[k - 1]) == eop)
                if 1 <= n_tok <= SHORT_SPAN:
                    spans += 1
                    exact += int(ok[start:k].all())
                start = k
    return spans, exact


@torch.no_grad()
def infill(model, cfg, shared: Path, batches: int) -> dict:
    """Held-out target loss, token accuracy and short-span exact match (see module doc)."""
    from blankfill.data.batch import OBJECTIVES
    from blankfill.data.loader import PretrainLoader
    from blankfill.tokenizer import load_tokenizer
    from blankfill.train.loop import TargetLogits

    special = load_tokenizer(shared / "tokenizer").special
    data = dataclasses.replace(cfg.data, valid_store="", valid_fraction=0.0, seed=777)
    loader = PretrainLoader(shared / "store-test", data, cfg.corrupt, special)
    head = TargetLogits(model).eval()
    mlm = cfg.corrupt.objective == "masked_lm"
    ce_sum = torch.zeros(len(OBJECTIVES), dtype=torch.float64)
    count = torch.zeros(len(OBJECTIVES), dtype=torch.float64)
    correct = spans = exact = content = content_ok = 0
    for step in range(batches):
        batch = loader.batch(step)
        logits = head(batch).float()  # [N, V]
        sel = batch.loss_mask > 0  # [B, T]
        labels, obj = batch.labels[sel], batch.objective[sel]  # [N]
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        ce_sum.index_add_(0, obj, ce.double())
        count.index_add_(0, obj, torch.ones_like(ce, dtype=torch.float64))
        ok = logits.argmax(-1) == labels  # [N]
        correct += int(ok.sum())
        text = labels != special.eop  # the span tokens themselves (an [eop] is easy to predict)
        content += int(text.sum())
        content_ok += int(ok[text].sum())
        n, e = short_span_matches(sel, labels, ok, eop=special.eop, in_place=mlm)
        spans, exact = spans + n, exact + e
    out = {"loss": float(ce_sum.sum() / count.sum()), "token_acc": correct / float(count.sum()),
           "text_token_acc": content_ok / max(content, 1), "targets": int(count.sum()),
           "batches": batches}  # fmt: skip
    for i, name in enumerate(OBJECTIVES):
        if count[i] > 0:
            out[f"loss/{name}"] = float(ce_sum[i] / count[i])
    if cfg.corrupt.objective != "causal_lm":
        out.update(short_span_em=exact / max(spans, 1), short_spans=spans)
    return out


def heldout_files(shared: Path, test_files: list[str], smoke: bool) -> tuple[Path, Path]:
    """held-out.txt (the first 30 paragraphs of every test document) and a LAMBADA-style jsonl
    of held-out paragraphs (>= 12 words, trailing punctuation cut so the text ends in a word)."""
    text_path, lw_path = shared / "heldout.txt", shared / "heldout_lastword.jsonl"
    if text_path.is_file() and lw_path.is_file():
        return text_path, lw_path
    paras_all, lastword = [], []
    for f in test_files:
        paras = [p.strip() for p in Path(f).read_text(encoding="utf-8").split("\n\n") if p.strip()]
        paras_all += paras[:30]
        for p in paras:
            p = re.sub(r"[^A-Za-z]+$", "", " ".join(p.split()))
            words = p.split(" ")
            if len(words) >= 12 and words[-1].isalpha() and len(words[-1]) >= 2:
                lastword.append(p)
    random.Random(0).shuffle(lastword)
    lastword = lastword[: 16 if smoke else 300]
    text_path.write_text("\n\n".join(paras_all) + "\n", encoding="utf-8")
    lw_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lastword), encoding="utf-8")
    return text_path, lw_path


def evaluate_variant(rd: Path, letter: str, shared: Path, data_root: Path, smoke: bool) -> None:
    path = rd / "eval.json"
    _, cfg = load_cfg(rd)
    name = layout_name(cfg)
    if path.is_file() and json.loads(path.read_text()).get("part_b_layout", "2d") == name:
        return
    from blankfill.finetune import lm

    t0 = time.perf_counter()
    model, tokenizer, cfg = load_run(rd)
    say(f"eval ({letter}) {rd.name}")
    prepared = json.loads((shared / "prepared.json").read_text())
    text_path, lw_path = heldout_files(shared, prepared["files"]["test"], smoke)
    out: dict = {"variant": letter, "part_b_layout": name,
                 "infill": infill(model, cfg, shared, 2 if smoke else 40)}  # fmt: skip
    layout = part_b_layout(cfg, tokenizer)
    kind = cfg.corrupt.objective
    if kind == "masked_lm":
        out["generation"] = "n/a: a masked LM has no left-to-right generation"
    else:
        uni = kind == "causal_lm"
        tok, blank = (tokenizer, "causal") if uni else _with_blank(tokenizer, cfg)
        out["lm_mode"] = blank if uni or name == "2d" else f"{blank}, {name} layout"
        limit = 4 if smoke else 200
        ppl = dict(stride=64, max_seq_len=128, unidirectional=uni, limit=limit, layout=layout)
        out["ppl_heldout"] = lm.perplexity(model, tok, text_path, **ppl)
        wt2 = data_root / "benchmarks" / "wikitext-2" / "valid.txt"
        if wt2.is_file():
            out["ppl_wikitext2"] = lm.perplexity(model, tok, wt2, **ppl)
        out["lastword"] = lm.lambada(model, tok, lw_path, unidirectional=uni, max_seq_len=128,
                                     layout=layout)  # fmt: skip
    out["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(path, out)


def _records(task, data_root: Path, smoke: bool) -> tuple[list, list]:
    tr, va = FT_TASKS[task.name]
    train = task.load(data_root / "benchmarks" / tr)
    valid = task.load(data_root / "benchmarks" / va)
    if task.name == "sst2":
        train = random.Random(0).sample(train, min(SST2_TRAIN, len(train)))
        valid = random.Random(0).sample(valid, min(SST2_DEV, len(valid)))
    if smoke:
        train, valid = train[:16], valid[:16]
    return train, valid


def finetune_variant(rd: Path, letter: str, data_root: Path, smoke: bool, *, seeds: int) -> None:
    """Cloze (and classifier-head) fine-tuning; one entry per task, head and seed."""
    path = rd / "finetune.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    from blankfill.config import FinetuneRunConfig, load_config
    from blankfill.finetune.runner import finetune_cloze
    from blankfill.finetune.tasks import get_task

    _, cfg = load_cfg(rd)
    if done.get("part_b_layout", "2d") != layout_name(cfg):
        done = {}  # fine-tuned in another layout than the model's own: again
    done["part_b_layout"] = layout_name(cfg)
    kind = cfg.corrupt.objective
    if kind == "causal_lm":
        jobs = []  # the paper compares GLM with GPT on generation only
        done["note"] = "n/a: NLU is compared between GLM and BERT (the causal LM is for generation)"
    elif kind == "masked_lm":
        jobs = [(t, "classifier") for t in ("sst2", "cb")]  # COPA has per-example candidates
    else:
        jobs = [(t, "cloze") for t in FT_TASKS]
        if letter == "a":
            jobs += [(t, "classifier") for t in ("sst2", "cb")]
    for task_name, head in jobs:
        for seed in range(1, seeds + 1):
            key = f"{task_name}/{head}/seed{seed}"
            if key in done:
                continue
            task = get_task(task_name)
            model, tokenizer, _ = load_run(rd)
            train, valid = _records(task, data_root, smoke)
            ft = load_config(FinetuneRunConfig, None, [
                f"finetune.head={head}", f"finetune.seed={seed}", "finetune.device=cpu",
                f"finetune.epochs={1 if smoke else FT_EPOCHS[task_name]}",
                "finetune.batch_size=16", "finetune.max_seq_len=128", "optim.lr=1e-4",
            ])  # fmt: skip
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            res = finetune_cloze(model, tokenizer, task, train, valid, ft,
                                 layout=part_b_layout(cfg, tokenizer))  # fmt: skip
            hist = res["history"]
            done[key] = {"best": res["best"], "best_epoch": res["best_epoch"],
                         "last": {k: v for k, v in hist[-1].items() if k not in ("step",)},
                         "train": len(train), "valid": len(valid),
                         "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
            say(f"finetune ({letter}) {key}: best {res['best']} (epoch {res['best_epoch']})")
            write_json(path, done)
    write_json(path, done)


# -- report -------------------------------------------------------------------------------------


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "–"
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:.3f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.3f} ± {sd:.3f}"


def report(out: Path, variants: dict) -> None:
    """results.json (everything measured) and tables.md, plus loss-curve PNGs under plots/."""
    rows: dict[str, list[dict]] = {}
    for rd in sorted(out.glob("*-s[0-9]*")):
        letter = rd.name.split("-")[0]
        if letter not in variants or not (rd / "pretrain.json").is_file():
            continue
        entry = {"run": rd.name, "pretrain": json.loads((rd / "pretrain.json").read_text())}
        for name in ("eval", "finetune"):
            if (rd / f"{name}.json").is_file():
                entry[name] = json.loads((rd / f"{name}.json").read_text())
        rows.setdefault(letter, []).append(entry)
    if not rows:
        say("report: no finished runs yet")
        return
    write_json(out / "results.json", rows)
    lines = _tables(rows, variants) + [""] + _claims(rows)
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    _plots(out, rows, variants)
    print("\n".join(lines))


def _get(entry: dict, *keys):
    v = entry
    for k in keys:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def _tables(rows: dict, variants: dict) -> list[str]:
    lines = ["| variant | seeds | held-out target loss | token acc | text-token acc | short-span EM | "
             "ppl held-out | ppl WikiText-2 | last-word acc | LM mode |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for letter, entries in sorted(rows.items()):

        def col(*keys, entries=entries):
            return _mean_sd([v for e in entries if (v := _get(e, "eval", *keys)) is not None])

        mode = next((m for e in entries if (m := _get(e, "eval", "lm_mode"))), "n/a")
        n = sum("eval" in e for e in entries)
        lines.append(
            f"| ({letter}) {variants[letter][0]} | {n} | {col('infill', 'loss')} | "
            f"{col('infill', 'token_acc')} | {col('infill', 'text_token_acc')} | "
            f"{col('infill', 'short_span_em')} | "
            f"{col('ppl_heldout', 'ppl')} | {col('ppl_wikitext2', 'ppl')} | "
            f"{col('lastword', 'accuracy')} | {mode} |"
        )
    lines += ["", "| variant | task | head | seeds × pretrain seeds | best-epoch acc | "
              "last-epoch acc | CB macro-F1 (best) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for letter, entries in sorted(rows.items()):
        keys = sorted({k.rsplit("/", 1)[0] for e in entries for k in e.get("finetune", {})
                       if "/" in k})  # fmt: skip
        for key in keys:
            runs = [v for e in entries for k, v in e.get("finetune", {}).items()
                    if k.rsplit("/", 1)[0] == key]  # fmt: skip
            best = [r["best"]["accuracy"] for r in runs if "accuracy" in r["best"]]
            last = [r["last"]["accuracy"] for r in runs if "accuracy" in r["last"]]
            f1 = [r["best"]["f1_macro"] for r in runs if "f1_macro" in r["best"]]
            task, head = key.split("/")
            lines.append(f"| ({letter}) {variants[letter][0]} | {task} | {head} | {len(runs)} | "
                         f"{_mean_sd(best)} | {_mean_sd(last)} | {_mean_sd(f1)} |")  # fmt: skip
    return lines


def _plots(out: Path, rows: dict, variants: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("report: no matplotlib, no plots (pip install 'blankfill[plot]')")
        return
    from blankfill.train.metrics import METRICS_NAME, read_metrics

    (out / "plots").mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = dict(zip(variants, ("-", "--", ":", "-.", "-", "--", ":"), strict=True))
    for i, (letter, entries) in enumerate(sorted(rows.items())):
        for j, e in enumerate(entries):
            m = read_metrics(out / e["run"] / METRICS_NAME)
            for ax, key in zip(axes, ("loss", "valid/loss"), strict=True):
                pts = [(r["step"], r[key]) for r in m if key in r]
                if pts:
                    label = f"({letter}) {variants[letter][0]}" if j == 0 else None
                    ax.plot(*zip(*pts, strict=True), styles[letter], color=f"C{i}", label=label,
                            marker="o" if key != "loss" else None, linewidth=1, alpha=0.8)  # fmt: skip
    for ax, title in zip(axes, ("training target loss", "validation target loss"), strict=True):
        ax.set_title(title + " (each variant on its own objective)")
        ax.set_xlabel("step")
        ax.set_ylabel("nats / target token")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "plots" / "loss_curves.png", dpi=80)
    plt.close(fig)


def _per_run(rows: dict, letter: str, fn) -> list[float]:
    """fn(entry) for every run of a variant, skipping runs where it is None."""
    return [v for e in rows.get(letter, []) if (v := fn(e)) is not None]


def _nlu(tasks: tuple[str, ...], head: str):
    """Mean best-epoch accuracy over ``tasks`` of one run (None unless all of them finished)."""

    def fn(e: dict) -> float | None:
        accs = []
        for t in tasks:
            got = [v["best"]["accuracy"] for k, v in e.get("finetune", {}).items()
                   if k.startswith(f"{t}/{head}/")]  # fmt: skip
            if not got:
                return None
            accs.append(sum(got) / len(got))
        return sum(accs) / len(accs)

    return fn


def _ev(*keys):
    return lambda e: _get(e, "eval", *keys)


#: (claim, paper's direction, metric name, higher is better, variant x, fn x, variant y, fn y):
#: the paper says x beats y.
CLAIMS = [
    ("span shuffling helps NLU (Table 6: 77.0 vs 68.5 without)", "NLU acc (SST-2, CB, COPA)",
     True, "a", _nlu(("sst2", "cb", "copa"), "cloze"), "c", _nlu(("sst2", "cb", "copa"), "cloze")),
    ("one [MASK] beats sentinels on NLU (Table 6: 77.0 vs 76.0)", "NLU acc (SST-2, CB, COPA)",
     True, "a", _nlu(("sst2", "cb", "copa"), "cloze"), "e", _nlu(("sst2", "cb", "copa"), "cloze")),
    ("2D positions help LM (Fig. 4: lower ppl without 1D)", "held-out infilling loss",
     False, "a", _ev("infill", "loss"), "d", _ev("infill", "loss")),
    ("2D positions help LM (Fig. 4: higher LAMBADA acc)", "last-word acc",
     True, "a", _ev("lastword", "accuracy"), "d", _ev("lastword", "accuracy")),
    ("GLM beats BERT on NLU (Table 1: 70.7 vs 66.1 Base)", "NLU acc (SST-2, CB)",
     True, "a", _nlu(("sst2", "cb"), "cloze"), "f", _nlu(("sst2", "cb"), "classifier")),
    ("cloze beats a classifier head (Table 6: 77.0 vs 70.0)", "NLU acc (SST-2, CB)",
     True, "a", _nlu(("sst2", "cb"), "cloze"), "a", _nlu(("sst2", "cb"), "classifier")),
    ("multi-task GLM generates far better than token-only (Fig. 4: ppl > 100 without)",
     "ppl held-out docs", False, "b", _ev("ppl_heldout", "ppl"), "a", _ev("ppl_heldout", "ppl")),
    ("token-only GLM is (slightly) better on NLU (GLM-Doc 75.7 vs GLM-Large 77.0)",
     "NLU acc (SST-2, CB, COPA)", True, "a", _nlu(("sst2", "cb", "copa"), "cloze"), "b",
     _nlu(("sst2", "cb", "copa"), "cloze")),
    ("GPT beats GLM-Doc on LM at equal size (Fig. 4; GLM needs ~1.2x the size)",
     "ppl WikiText-2", False, "g", _ev("ppl_wikitext2", "ppl"), "b", _ev("ppl_wikitext2", "ppl")),
    ("GPT beats GLM-Doc on LM at equal size (Fig. 4)", "ppl held-out docs", False, "g",
     _ev("ppl_heldout", "ppl"), "b", _ev("ppl_heldout", "ppl")),
    ("GLM with bidirectional context beats GPT on last-word prediction (Fig. 4, LAMBADA)",
     "last-word acc", True, "b", _ev("lastword", "accuracy"), "g", _ev("lastword", "accuracy")),
]  # fmt: skip


def _sd(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0


def _noise(xs: list[float], ys: list[float]) -> tuple[float | None, str]:
    """Twice the standard error of mean(xs) - mean(ys), and how it was estimated.

    Both sides with >= 2 seeds: each side's own spread. One side with a single seed: the other
    side's seed spread stands for both (the variants share size, data and budget, so their seed
    noise is assumed alike; the verdict says so). Neither: None.
    """
    if min(len(xs), len(ys)) >= 2:
        return 2 * math.sqrt(_sd(xs) ** 2 / len(xs) + _sd(ys) ** 2 / len(ys)), ""
    many = xs if len(xs) >= 2 else ys if len(ys) >= 2 else None
    if many is None:
        return None, ""
    return 2 * _sd(many) * math.sqrt(1 / len(xs) + 1 / len(ys)), ", one side's seed spread"


def _claims(rows: dict) -> list[str]:
    """Each claim: the paper's winner x vs y, our difference and a mechanical first verdict."""
    lines = ["| claim (paper: x beats y) | metric | x | y | x − y | seeds | first verdict |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for claim, metric, higher, lx, fx, ly, fy in CLAIMS:
        xs, ys = _per_run(rows, lx, fx), _per_run(rows, ly, fy)
        if not xs or not ys:
            lines.append(f"| {claim} | {metric} | ({lx}) | ({ly}) | – | – | not run |")
            continue
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        diff = mx - my
        noise, how = _noise(xs, ys)
        seeds = f"{len(xs)} / {len(ys)}"
        if noise is None:
            verdict = "too small to tell (one seed)"
        elif abs(diff) <= noise:
            verdict = f"too small to tell (difference within 2 s.e.{how} = {noise:.3g})"
        else:
            verdict = "holds" if (diff > 0) == higher else "does not hold"
            verdict += f" (difference beyond 2 s.e.{how} = {noise:.3g})"
        lines.append(f"| {claim} | {metric} | ({lx}) {_mean_sd(xs)} | ({ly}) {_mean_sd(ys)} | "
                     f"{diff:+.3f} | {seeds} | {verdict} |")  # fmt: skip
    return lines
