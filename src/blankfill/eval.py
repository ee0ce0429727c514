"""Metrics (accuracy, macro-F1, MultiRC F1a/EM, ReCoRD F1/EM): a leaf module (imports nothing of ours).

Metrics are pure functions of predictions and gold values. ``cloze_metrics(task, records, scores)``
turns per-record candidate scores into the task's official metric (spec §4.1, §5).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .finetune.tasks import ClozeTask


def accuracy(preds: Sequence[Any], golds: Sequence[Any]) -> float:
    """Fraction of predictions equal to the gold value."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold values")
    return sum(p == g for p, g in zip(preds, golds, strict=True)) / max(len(golds), 1)


def f1_macro(preds: Sequence[int], golds: Sequence[int], num_labels: int) -> float:
    """Unweighted mean over labels of the per-label F1 (CB's official F1)."""
    f1s = []
    for c in range(num_labels):
        tp = sum(p == c and g == c for p, g in zip(preds, golds, strict=True))
        fp = sum(p == c and g != c for p, g in zip(preds, golds, strict=True))
        fn = sum(p != c and g == c for p, g in zip(preds, golds, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / num_labels


def multirc_scores(
    preds: Sequence[int], golds: Sequence[int], groups: Sequence[str]
) -> dict[str, float]:
    """MultiRC: F1a = binary F1 over all answers (positive = 1); EM = fraction of questions
    (groups) whose answers are all predicted correctly."""
    tp = sum(p == 1 and g == 1 for p, g in zip(preds, golds, strict=True))
    fp = sum(p == 1 and g == 0 for p, g in zip(preds, golds, strict=True))
    fn = sum(p == 0 and g == 1 for p, g in zip(preds, golds, strict=True))
    f1a = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    exact: dict[str, bool] = {}
    for p, g, q in zip(preds, golds, groups, strict=True):
        exact[q] = exact.get(q, True) and p == g
    return {"f1a": f1a, "em": sum(exact.values()) / max(len(exact), 1)}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(pred: str, gold: str) -> float:
    """SQuAD token-overlap F1 of two answers after normalisation."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def record_scores(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """ReCoRD: F1 and EM of each predicted entity, the max over that query's gold answers."""
    f1 = em = 0.0
    for pred, gold in zip(preds, golds, strict=True):
        if gold:
            f1 += max(token_f1(pred, g) for g in gold)
            em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in gold)
    n = max(len(preds), 1)
    return {"f1": f1 / n, "em": em / n}


def cloze_metrics(
    task: ClozeTask, records: Sequence[dict], scores: Sequence[Sequence[float]]
) -> dict[str, float]:
    """The task's metric from per-record candidate scores (highest score = prediction).

    Args:
        task: the cloze task.
        records: the evaluated records (with ``label``, and ``gold``/``group`` where the task needs).
        scores: one sequence of candidate scores per record.

    Returns:
        Metric name -> value in [0, 1]; ``accuracy`` is always present.
    """
    preds = [max(range(len(s)), key=lambda i, s=s: s[i]) for s in scores]
    golds = [r["label"] for r in records]
    if task.metric == "record":
        texts = [r["candidates"][p].strip() for r, p in zip(records, preds, strict=True)]
        out = record_scores(texts, [r["gold"] for r in records])
        return {"accuracy": out["em"], **out}
    if task.metric == "wsc":  # true iff span1 (candidate 0) wins
        return {"accuracy": accuracy([int(p == 0) for p in preds], golds)}
    out = {"accuracy": accuracy(preds, golds)}
    if task.metric == "f1_macro":
        out["f1_macro"] = f1_macro(preds, golds, len(task.labels))
    elif task.metric == "multirc":
        out.update(multirc_scores(preds, golds, [r["group"] for r in records]))
    return out


def majority_baseline(task: ClozeTask, train: Sequence[dict], valid: Sequence[dict]) -> dict:
    """The metric of always predicting the most frequent training label (fixed-label tasks)."""
    counts = collections.Counter(r["label"] for r in train if r["label"] >= 0)
    top = counts.most_common(1)[0][0] if counts else 0
    n = len(task.labels)
    return cloze_metrics(task, valid, [[float(i == top) for i in range(n)] for _ in valid])
