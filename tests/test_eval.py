"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest

from blankfill.eval import (
    accuracy,
    cloze_metrics,
    f1_macro,
    multirc_scores,
    normalize_answer,
    record_scores,
    token_f1,
)
from blankfill.finetune.tasks import TASKS


def test_accuracy_and_macro_f1():
    assert accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    # label 0: tp1 fp0 fn0 -> 1; label 1: tp1 fp1 fn0 -> 2/3; label 2: tp1 fp0 fn1 -> 2/3
    assert f1_macro([0, 1, 1, 2], [0, 1, 2, 2], 3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert f1_macro([0, 0], [0, 0], 3) == pytest.approx(1 / 3)  # absent labels count as 0
    with pytest.raises(ValueError, match="2 predictions for 1"):
        accuracy([0, 1], [0])


def test_multirc_f1a_over_answers_and_em_per_question():
    preds = [1, 0, 1, 1, 0]
    golds = [1, 0, 0, 1, 0]
    groups = ["q1", "q1", "q1", "q2", "q2"]
    out = multirc_scores(preds, golds, groups)
    assert out["f1a"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert out["em"] == 0.5


def test_record_squad_normalisation_and_max_over_answers():
    assert normalize_answer("The  Beatles!") == "beatles"
    assert token_f1("Paul McCartney", "McCartney") == pytest.approx(2 / 3)
    out = record_scores(
        ["the Beatles", "Paul McCartney"], [["Beatles", "x"], ["John", "McCartney"]]
    )
    assert out["em"] == 0.5 and out["f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_cloze_metrics_per_task_kind():
    cb = [{"label": 0}, {"label": 1}, {"label": 2}]
    out = cloze_metrics(TASKS["cb"], cb, [[3, 1, 0], [0, 2, 1], [0, 2, 1]])
    assert out["accuracy"] == pytest.approx(2 / 3) and "f1_macro" in out
    wsc = [{"label": 1}, {"label": 0}, {"label": 0}]
    assert cloze_metrics(TASKS["wsc"], wsc, [[2, 1], [2, 1], [0, 5]])["accuracy"] == pytest.approx(
        2 / 3
    )
    rec = [{"label": 0, "candidates": [" A", " B"], "gold": ["A"]}]
    assert cloze_metrics(TASKS["record"], rec, [[0.0, 1.0]]) == {
        "accuracy": 0.0,
        "f1": 0.0,
        "em": 0.0,
    }
