"""experiments/: every variant is a valid run config; the runner skips cleanly without data;
`blankfill pretrain` refuses sentinel ids that would overlap the tokenizer's vocabulary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from blankfill import cli
from blankfill.config import RunConfig, load_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import run as experiments  # noqa: E402  (experiments/run.py)


def test_every_variant_is_a_valid_config_of_equal_size_and_tokens(tmp_path):
    cfgs = {
        k: load_config(
            RunConfig, experiments.BASE, experiments.base_overrides(tmp_path, k, 50, 4000)
        )
        for k in experiments.VARIANTS
    }
    assert set(cfgs) == set("abcdefg")
    sizes = {(c.model.num_layers, c.model.hidden_size, c.model.vocab_size, c.data.seq_len,
              c.data.batch_size, c.train.max_steps) for c in cfgs.values()}  # fmt: skip
    assert len(sizes) == 1  # equal size and token budget; only corrupt.* (and (d)'s table) differ
    assert cfgs["a"].corrupt == type(cfgs["a"].corrupt)()  # the paper's token-level defaults
    assert cfgs["b"].corrupt.document_prob > 0 and cfgs["b"].corrupt.sentence_prob > 0
    assert not cfgs["c"].corrupt.shuffle_spans and not cfgs["d"].corrupt.block_positions
    assert not cfgs["d"].model.block_position_encoding  # no block-position table with 1D
    assert cfgs["e"].corrupt.sentinel_start == 4000
    assert cfgs["e"].corrupt.sentinels + 4000 <= cfgs["e"].model.vocab_size
    assert cfgs["f"].corrupt.objective == "masked_lm" and cfgs["f"].corrupt.max_span_length == 2
    assert cfgs["g"].corrupt.objective == "causal_lm"
    assert {c.train.out_dir for c in cfgs.values()} == {cfgs["a"].train.out_dir}


def test_runner_skips_cleanly_without_the_corpus(tmp_path, capsys):
    assert (
        experiments.main(["all", "--smoke", "--data", str(tmp_path), "--out", str(tmp_path)]) == 0
    )
    assert "skipped" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


def test_sentinels_inside_the_vocabulary_are_refused(tmp_path, capsys):
    store_mod = pytest.importorskip("blankfill.data.store")
    from blankfill.tokenizer import train_tokenizer

    texts = ["the cat sat on a mat . why is the sky blue ? it rains ; the ground is wet !" * 4] * 8
    tok = train_tokenizer(texts, vocab_size=300)
    store_mod.prepare([_write(tmp_path, texts)], tmp_path / "store", tok)
    tiny = str(REPO / "configs/pretrain/tiny.toml")
    args = ["pretrain", "--config", tiny, f"--data.store={tmp_path / 'store'}",
            f"--train.out_dir={tmp_path / 'r'}", "--corrupt.sentinels=8", "--train.max_steps=1"]  # fmt: skip
    assert cli.main([*args, "--corrupt.sentinel_start=20"]) == 2  # real tokens
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--corrupt.sentinel_start={tok.vocab_size}" in err
    assert (
        cli.main([*args, f"--corrupt.sentinel_start={tok.vocab_size}", "--log.progress=false"]) == 0
    )


def _write(root: Path, texts: list[str]) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    for i, t in enumerate(texts):
        (corpus / f"{i}.txt").write_text(t)
    return corpus


def test_short_span_exact_match():
    import evaluation  # experiments/evaluation.py
    import torch

    EOP = 7
    # row 0 (GLM Part B): spans [a b eop] [c eop] [d e f g eop]; row 1: a suffix span of 2, no eop
    sel = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [0] * 9 + [1, 1]], dtype=torch.bool)
    labels = torch.tensor([20, 21, EOP, 22, EOP, 23, 24, 25, 26, EOP, 30, 31])
    ok = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.bool)
    # lengths 2 (all right), 1 (its [eop] wrong), 4 (too long), 2 (suffix, right)
    assert evaluation.short_span_matches(sel, labels, ok, eop=EOP, in_place=False) == (3, 2)
    # masked LM: runs of adjacent positions: [1, 2] and [5] in row 0, [3, 4] in row 1
    sel = torch.tensor([[0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    labels, ok = torch.tensor([20, 21, 22, 23, 24]), torch.tensor([1, 0, 1, 1, 1], dtype=torch.bool)
    assert evaluation.short_span_matches(sel, labels, ok, eop=EOP, in_place=True) == (3, 2)


def test_each_variant_is_evaluated_in_its_own_pretraining_layout(tmp_path):
    """(d) the 1D layout, (e) the sentinel layout ([MASK] at |Part A|), the rest 2D."""
    import evaluation  # experiments/evaluation.py

    from blankfill.layout import PartBLayout
    from blankfill.tokenizer import SpecialTokens

    sp = SpecialTokens(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7, sep=8, unk=9)
    tok = type("Tok", (), {"special": sp})()
    names, layouts = {}, {}
    for k in experiments.VARIANTS:
        cfg = load_config(RunConfig, experiments.BASE,
                          experiments.base_overrides(tmp_path, k, 50, 4000))  # fmt: skip
        names[k], layouts[k] = evaluation.layout_name(cfg), evaluation.part_b_layout(cfg, tok)
    assert names == {**dict.fromkeys("abcfg", "2d"), "d": "1d", "e": "2d+sentinel"}
    assert layouts["a"] == PartBLayout() and layouts["d"] == PartBLayout(block_positions=False)
    assert layouts["e"].block_positions and layouts["e"].sentinel_blanks[0] == sp.mask
    assert layouts["e"].sentinel_blanks[1] == 4000  # [MASK_1] = sentinel_start


def test_claim_noise_uses_the_seed_spread_it_has():
    import math

    import evaluation  # experiments/evaluation.py

    both, how = evaluation._noise([1.0, 3.0], [2.0, 2.0, 5.0])
    sd_x, sd_y = math.sqrt(2.0), math.sqrt(3.0)
    assert how == "" and both == pytest.approx(2 * math.sqrt(sd_x**2 / 2 + sd_y**2 / 3))
    one, how = evaluation._noise([4.0], [1.0, 3.0])  # one seed of x: y's spread for both
    assert "one side" in how and one == pytest.approx(2 * sd_x * math.sqrt(1 + 1 / 2))
    assert evaluation._noise([4.0], [1.0]) == (None, "")
