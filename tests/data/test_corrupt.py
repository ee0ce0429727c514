"""The Part A / Part B layout: golden vectors from the official code, and properties."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blankfill.data.corrupt import (
    build_blocks,
    build_suffix,
    document_segments,
    place_spans,
    reconstruct,
    sample_span_lengths,
    sentence_spans,
    span_length_pmf,
)

# The golden file's made-up special ids.
PAD, CLS, MASK, SOP, EOP, EOS, GMASK, SMASK = 0, 1, 2, 3, 4, 5, 6, 7


def _golden(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "golden_layout.json").read_text())


def _case_example(case: dict):
    inp = case["input"]
    text = inp["text"]
    if case["name"] == "gpt_suffix":
        return build_suffix(
            text, inp["generation_length"], gmask_id=GMASK, sop_id=SOP, loss_mask=inp["loss_mask"]
        )
    spans = [tuple(s) for s in inp["spans"]]
    order = [spans.index(tuple(s)) for s in case["span_order_used"]]
    mask_id = {"bert": MASK, "gap_sentence": SMASK, "generation": GMASK}[inp["task"]]
    return build_blocks(text, spans, mask_id=mask_id, sop_id=SOP, eop_id=EOP, order=order)


def test_golden_layout_cases(golden_dir):
    data = _golden(golden_dir)
    assert data["special_tokens"] == {
        "pad": PAD, "ENC": CLS, "MASK": MASK, "sop": SOP, "eop": EOP, "eos": EOS,
        "gMASK": GMASK, "sMASK": SMASK, "dBLOCK": 8,
    }  # fmt: skip
    assert len(data["cases"]) == 6
    for case in data["cases"]:
        ex, out = _case_example(case), case["output"]
        assert ex.input_ids.tolist() == out["tokens"], case["name"]
        assert ex.labels.tolist() == out["targets"], case["name"]
        assert ex.loss_mask.astype(int).tolist() == out["loss_mask"], case["name"]
        assert ex.position_ids.tolist() == out["position_ids"], case["name"]
        assert ex.context_len == out["sep"], case["name"]


def test_golden_padded_batch(golden_dir):
    from blankfill.data.pack import collate_pad

    data = _golden(golden_dir)
    bert = [_case_example(c) for c in data["cases"] if c["input"].get("task") == "bert"]
    batch = collate_pad(bert)
    ref = data["padded_batch"]
    assert batch.input_ids.tolist() == ref["tokens"]
    assert batch.labels.tolist() == ref["targets"]
    assert batch.loss_mask.int().tolist() == ref["loss_mask"]
    assert batch.position_ids.tolist() == ref["position_ids"]
    assert batch.context_len.tolist() == ref["attention_mask"]


def test_golden_unshuffled_order_is_text_order(golden_dir):
    case = next(c for c in _golden(golden_dir)["cases"] if c["name"] == "bert_3spans_sorted")
    ex = build_blocks(
        case["input"]["text"], case["input"]["spans"], mask_id=MASK, sop_id=SOP, eop_id=EOP
    )
    assert ex.input_ids.tolist() == case["output"]["tokens"]


@st.composite
def text_and_spans(draw):
    n = draw(st.integers(1, 60))
    text = draw(st.lists(st.integers(10, 500), min_size=n, max_size=n))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=12))))
    pairs = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b]
    perm = draw(st.permutations(list(range(len(pairs)))))
    return text, pairs, perm


@settings(max_examples=150, deadline=None)
@given(text_and_spans(), st.booleans())
def test_build_blocks_properties(data, shuffled):
    text, spans, perm = data
    order = perm if shuffled else None
    ex = build_blocks(text, spans, mask_id=MASK, sop_id=SOP, eop_id=EOP, order=order)
    n, k, sep = len(text), len(spans), ex.context_len
    ids, labels, (pos, blk) = ex.input_ids, ex.labels, ex.position_ids
    # length n + 2k; Part A = n - covered + k
    assert len(ids) == n + 2 * k == len(labels) == pos.shape[0] == len(ex.loss_mask)
    assert sep == n - sum(e - s for s, e in spans) + k
    # blanks = spans = sops
    assert (ids[:sep] == MASK).sum() == k == (ids[sep:] == SOP).sum() == (labels[sep:] == EOP).sum()
    # Part A and Part B reconstruct the original
    assert reconstruct(ex, sop_id=SOP, eop_id=EOP).tolist() == list(text)
    # each Part-B token points at its blank; block ids 1..len+1; labels end in eop
    starts = np.flatnonzero(ids == SOP).tolist()
    assert all(s >= sep for s in starts)
    expected_order = order if order is not None else sorted(range(k), key=lambda i: spans[i][0])
    for j, (s, e) in enumerate(zip(starts, [*starts[1:], len(ids)], strict=False)):
        span = spans[expected_order[j]]
        assert ids[pos[s]] == MASK and (pos[s:e] == pos[s]).all()
        assert blk[s:e].tolist() == list(range(1, span[1] - span[0] + 2))
        assert labels[s:e].tolist() == [*text[span[0] : span[1]], EOP]
        assert ids[s + 1 : e].tolist() == text[span[0] : span[1]]
    # Part A: positions 0..sep-1, block 0, labels = inputs, loss 0; Part B loss 1
    assert pos[:sep].tolist() == list(range(sep)) and not blk[:sep].any()
    assert (labels[:sep] == ids[:sep]).all()
    assert not ex.loss_mask[:sep].any() and ex.loss_mask[sep:].all()


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 60), st.data())
def test_build_suffix_properties(n, data):
    g = data.draw(st.integers(1, n - 1))
    text = list(range(10, 10 + n))
    ex = build_suffix(text, g, gmask_id=GMASK, sop_id=SOP)
    s = n - g
    assert len(ex) == n + 1 and ex.context_len == s + 1
    assert ex.input_ids[s] == GMASK and ex.input_ids[s + 1] == SOP
    assert ex.labels[s + 1 :].tolist() == text[s:]
    assert (ex.position_ids[0, s:] == s).all() and ex.position_ids[1, s + 1 :].tolist() == list(
        range(1, g + 1)
    )
    assert not ex.loss_mask[: s + 1].any() and ex.loss_mask[s + 1 :].all()


def test_one_dimensional_positions():
    """Official --no-block-position: Part B keeps its blank's position, block position 1."""
    ex = build_blocks(
        list(range(10, 20)), [(2, 4)], mask_id=MASK, sop_id=SOP, eop_id=EOP, block_positions=False
    )
    assert ex.position_ids[0].tolist() == [*range(9), 2, 2, 2]
    assert ex.position_ids[1].tolist() == [0] * 9 + [1, 1, 1]
    suffix = build_suffix(list(range(10, 20)), 4, gmask_id=GMASK, sop_id=SOP, block_positions=False)
    assert suffix.position_ids[0].tolist() == [*range(7), 6, 6, 6, 6]
    assert suffix.position_ids[1].tolist() == [0] * 7 + [1] * 4


@pytest.mark.parametrize(
    ("spans", "order", "match"),
    [
        ([(3, 2)], None, "empty or outside"),
        ([(0, 11)], None, "outside"),
        ([(1, 4), (3, 6)], None, "overlap"),
        ([(1, 2), (4, 5)], [0, 0], "permutation"),
    ],
)
def test_build_blocks_rejects_bad_spans(spans, order, match):
    with pytest.raises(ValueError, match=match):
        build_blocks(list(range(10)), spans, mask_id=MASK, sop_id=SOP, eop_id=EOP, order=order)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(20, 400), st.integers(1, 4))
def test_place_spans_properties(seed, n, ndocs):
    rng = np.random.default_rng(seed)
    # [CLS] doc [eos] [CLS] doc [eos] ...
    cuts = np.sort(rng.choice(np.arange(1, n), size=ndocs - 1, replace=False)) if ndocs > 1 else []
    text = []
    for part in np.split(np.arange(n), cuts):
        text += [CLS, *(10 + part).tolist(), EOS]
    text = np.array(text)
    segs = document_segments(text, cls_id=CLS, eos_id=EOS)
    lengths = sample_span_lengths(int(0.15 * len(text)), rng, pmf=span_length_pmf(3.0, 40))
    spans = place_spans(lengths, segs, rng, ratio=0.15)
    if spans is None:
        assert ndocs > 1  # only multi-document texts can fail to hold all spans
        return
    assert sorted(e - s for s, e in spans) == sorted(lengths)
    spans.sort()
    for (_s0, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        assert e0 < s1  # at least one visible token between spans
    for s, e in spans:
        assert (text[s:e] >= 10).all()  # never [CLS] or eos
        assert any(o <= s and e <= o + m for o, m in segs)  # inside one document


def test_same_seed_same_spans():
    pmf = span_length_pmf(3.0, 40)
    a = sample_span_lengths(100, np.random.default_rng([1, 2, 3]), pmf=pmf)
    b = sample_span_lengths(100, np.random.default_rng([1, 2, 3]), pmf=pmf)
    c = sample_span_lengths(100, np.random.default_rng([1, 2, 4]), pmf=pmf)
    assert a == b and a != c and sum(a) >= 100 and sum(a[:-1]) < 100


def test_sentence_spans():
    toks = np.array([CLS, 11, 12, 13, 14, 15, EOS, CLS, 16, 17])
    ends = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    assert sentence_spans(toks, ends, cls_id=CLS, eos_id=EOS) == [(1, 3), (3, 6), (8, 10)]


def test_span_length_pmf_matches_scipy():
    from scipy.stats import poisson

    ref = poisson.pmf(np.arange(1, 40), 3.0)
    assert np.allclose(span_length_pmf(3.0, 40), ref / ref.sum(), rtol=1e-12)


def test_no_global_rng_in_data_package():
    """Style §3.3: every random draw in data/ goes through an explicit np.random.Generator."""
    src = Path(__file__).resolve().parents[2] / "src" / "blankfill" / "data"
    banned = re.compile(
        r"^\s*import random\b|^\s*from random import|\brandom\.(random|randint|shuffle|choice|seed|Random)\("
        r"|np\.random\.(seed|rand|randn|randint|random|choice|shuffle|permutation|RandomState)\("
        r"|torch\.(manual_seed|rand|randn|randint|randperm)\("
    )
    hits = [
        f"{p.name}:{i}: {line.strip()}"
        for p in sorted(src.glob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if banned.search(line)
    ]
    assert not hits, hits
    assert len(list(src.glob("*.py"))) >= 5


def test_public_entry_points():
    import blankfill.data as data
    from blankfill.data.loader import PretrainLoader
    from blankfill.data.store import TokenStore, prepare

    assert data.build_blocks is build_blocks and callable(prepare)
    assert PretrainLoader.state_dict and TokenStore.num_tokens
