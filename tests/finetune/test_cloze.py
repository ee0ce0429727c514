"""Cloze scoring: the shared-Part-A batched scorer equals a brute-force per-candidate forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blankfill.finetune.cloze import (
    ClassifierHead,
    collate,
    encode_record,
    is_single_token,
    loss_fn,
    score,
    score_all,
)
from blankfill.finetune.tasks import TASKS
from blankfill.model import GLM
from blankfill.testing import tiny_config
from blankfill.tokenizer import train_tokenizer

COPA = [
    {"premise": "The man fell", "choice1": "he slipped on the wet ice", "choice2": "he ate",
     "question": "cause", "label": 0, "_where": "x:1"},
    {"premise": "It rained all day", "choice1": "wet", "choice2": "the grass grew very tall",
     "question": "effect", "label": 1, "_where": "x:2"},
    {"premise": "She smiled", "choice1": "good news", "choice2": "bad", "question": "cause",
     "label": 0, "_where": "x:3"},
]  # fmt: skip
CB = [
    {"premise": "A man sleeps on a long red couch", "hypothesis": "Someone rests", "label": 1},
    {"premise": "Rain", "hypothesis": "It is dry", "label": 0},
]


@pytest.fixture
def setup():
    texts = [" ".join(map(str, r.values())) for r in COPA + CB] + [" No Yes Maybe because so"] * 9
    tok = train_tokenizer(texts, vocab_size=384)
    model = GLM(tiny_config()).eval()
    return tok, model


def brute_force(model, x, sp, single):
    """One full forward per candidate, [Part A, sop, a_1..a_{n-1}], context_len = |Part A|."""
    scores = []
    for ans in x.answers:
        piece = [sp.sop] if single else [sp.sop, *ans[:-1]]
        ids = torch.tensor([list(x.part_a) + piece])
        pos = list(range(len(x.part_a))) + [x.mask_pos] * len(piece)
        blk = [0] * len(x.part_a) + list(range(1, len(piece) + 1))
        logits = model(ids, torch.tensor([[pos, blk]]), context_len=len(x.part_a))[0]
        if single:
            scores.append(float(logits[len(x.part_a), ans[0]]))
        else:
            lp = F.log_softmax(logits[len(x.part_a) :], dim=-1)
            scores.append(sum(float(lp[i, t]) for i, t in enumerate(ans)))
    return scores


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_multi_token_scores_equal_brute_force(setup, attention):
    tok, _ = setup
    model = GLM(tiny_config(attention=attention)).eval()
    task = TASKS["copa"]
    recs = [r for row in COPA for r in task.prepare(row)]
    assert not is_single_token(task, tok, 0)
    xs = [
        encode_record(task, r, tok, pattern_id=0, max_seq_len=64, single_token=False) for r in recs
    ]
    assert all(x.answers[0][-1] == tok.special.eop for x in xs)
    batch = collate(xs, tok.special.sop, tok.special.pad, single_token=False)
    assert batch.first_row == min(len(x.part_a) for x in xs) > 0  # the last block starts there
    with torch.no_grad():
        got = score(model, batch, single_token=False)
        want = [brute_force(model, x, tok.special, False) for x in xs]
        for row, w in enumerate(want):
            torch.testing.assert_close(got[row, : len(w)], torch.tensor(w), atol=1e-4, rtol=1e-4)
        lens = [[len(a) for a in x.answers] for x in xs]
        normed = score(model, batch, single_token=False, length_penalty=1.0)
        for row, (w, n) in enumerate(zip(want, lens, strict=True)):
            torch.testing.assert_close(
                normed[row, : len(w)], torch.tensor(w) / torch.tensor(n, dtype=torch.float),
                atol=1e-4, rtol=1e-4,
            )  # fmt: skip
    # one record alone gives the same scores as inside a padded batch
    alone = score_all(model, xs[1:2], sop=tok.special.sop, pad=tok.special.pad, single_token=False)
    assert alone[0] == pytest.approx(want[1], abs=1e-4)


def test_single_token_scores_are_verbalizer_logits_at_sop(setup):
    tok, model = setup
    task = TASKS["cb"]
    assert is_single_token(task, tok, 3)
    xs = [encode_record(task, r, tok, pattern_id=3, max_seq_len=64, single_token=True) for r in CB]
    assert [len(a) for a in xs[0].answers] == [1, 1, 1]
    batch = collate(xs, tok.special.sop, tok.special.pad, single_token=True)
    assert batch.first_row == min(len(x.part_a) for x in xs) > 0
    with torch.no_grad():
        got = score(model, batch, single_token=True)
        for row, x in enumerate(xs):
            want = brute_force(model, x, tok.special, True)
            torch.testing.assert_close(got[row], torch.tensor(want), atol=1e-4, rtol=1e-4)
    loss = loss_fn(got, batch.target)
    assert loss == pytest.approx(float(F.cross_entropy(got, torch.tensor([1, 0]))))
    head = ClassifierHead(64, 3).eval()
    with torch.no_grad():  # the head reads the [CLS] row: no row is cut for it
        got = score(model, batch, single_token=True, head=head)
        h = model.hidden(batch.input_ids, batch.position_ids, attention_mask=batch.attention_mask)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, head(h[:, 0]))


def test_truncation_cuts_the_shortenable_field_and_keeps_the_blank(setup):
    tok, _ = setup
    task = TASKS["cb"]
    rec = dict(CB[0], premise=" ".join(["word"] * 100))
    x = encode_record(task, rec, tok, pattern_id=3, max_seq_len=32, single_token=True)
    assert len(x.part_a) + 1 == 32 and tok.special.mask in x.part_a
    assert x.part_a[0] == tok.special.cls and x.part_a[-1] == tok.special.eos
    with pytest.raises(ValueError, match="does not fit max_seq_len=4"):
        encode_record(task, CB[0], tok, pattern_id=3, max_seq_len=4, single_token=True)


def test_multi_token_verbalizer_warning_is_given_once(setup, caplog, monkeypatch):
    from blankfill.finetune import cloze

    tok, _ = setup
    monkeypatch.setattr(cloze, "_WARNED", set())
    for _ in range(3):  # finetune asks at every evaluation
        assert not is_single_token(TASKS["cb"], tok, 4)  # " false" " true" " neither"
    warned = [r for r in caplog.records if "is not single-token" in r.getMessage()]
    assert len(warned) == 1
