"""Part-B layouts after pretraining: what perplexity, cloze and decoding feed a model equals what
the pretraining pipeline gave it (2D, 1D, sentinel); KV-cache decoding equals the full forward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from blankfill.config import CorruptConfig
from blankfill.data.corrupt import build_blocks, build_suffix
from blankfill.data.objectives import TOKEN, Corruptor, RawSample
from blankfill.finetune import lm
from blankfill.finetune.cloze import ClozeInput, collate
from blankfill.generate import InfillIds, generate
from blankfill.layout import PartBLayout, model_layout
from blankfill.model import GLM
from blankfill.testing import tiny_config
from blankfill.tokenizer import SpecialTokens

SP = SpecialTokens(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7, sep=8, unk=9)
SENTINEL_START, SENTINELS = 200, 8  # [MASK_1] = 200 (ids past the text tokens used here)
CORRUPT = {
    "2d": CorruptConfig(),
    "1d": CorruptConfig(block_positions=False),
    "sentinel": CorruptConfig(sentinels=SENTINELS, sentinel_start=SENTINEL_START),
}


def layout_of(name: str) -> PartBLayout:
    model_cfg = tiny_config(block_position_encoding=name != "1d")
    return PartBLayout.of(model_cfg, CORRUPT[name], SP)


def sentinel_ids(name: str) -> list[int] | None:
    return list(range(SENTINEL_START, SENTINEL_START + SENTINELS)) if name == "sentinel" else None


class Recorder(GLM):
    """A GLM that keeps the (input_ids, position_ids) of every call to ``hidden``."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hidden(self, input_ids, position_ids=None, *args, **kwargs):
        assert position_ids is not None, "Part B needs explicit position ids"
        self.seen.append((input_ids.clone(), position_ids.clone()))
        return super().hidden(input_ids, position_ids, *args, **kwargs)


def test_the_layout_is_read_from_the_model_and_corrupt_configs():
    assert PartBLayout.of(tiny_config()) == PartBLayout()
    assert not PartBLayout.of(tiny_config(block_position_encoding=False)).block_positions
    sent = layout_of("sentinel")
    assert sent.block_positions and sent.sentinel_blanks[0] == SP.mask
    assert sent.sentinel_blanks[1:] == tuple(range(SENTINEL_START, SENTINEL_START + SENTINELS))
    with pytest.raises(ValueError, match="special ids"):
        PartBLayout.of(tiny_config(), CORRUPT["sentinel"])
    one_d_data = PartBLayout.of(tiny_config(), CorruptConfig(block_positions=False))
    assert one_d_data == PartBLayout(block_positions=False)  # a block table trained on 1s only
    model = GLM(tiny_config(block_position_encoding=False))
    assert model_layout(model) == PartBLayout(block_positions=False)
    assert model_layout(model, sent) is sent


@pytest.mark.parametrize("name", ["2d", "1d", "sentinel"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_cloze_rows_equal_the_pretraining_layout_of_one_span(name, data):
    """collate (cloze, seq2seq, LAMBADA) == build_blocks for [CLS] text [eos] with one span."""
    n = data.draw(st.integers(4, 40))
    text = [SP.cls, *data.draw(st.lists(st.integers(16, 150), min_size=n - 2, max_size=n - 2)),
            SP.eos]  # fmt: skip
    start = data.draw(st.integers(1, n - 2))
    end = data.draw(st.integers(start + 1, n - 1))
    ex = build_blocks(text, [(start, end)], mask_id=SP.mask, sop_id=SP.sop, eop_id=SP.eop,
                      block_positions=name != "1d", sentinel_ids=sentinel_ids(name))  # fmt: skip
    sep = ex.context_len
    x = ClozeInput(part_a=tuple(ex.input_ids[:sep].tolist()), mask_pos=start,
                   answers=(tuple(text[start:end]) + (SP.eop,),), target=0)  # fmt: skip
    batch = collate([x], SP.sop, SP.pad, single_token=False, layout=layout_of(name))
    assert batch.input_ids[0].tolist() == ex.input_ids.tolist()
    assert batch.position_ids[0].tolist() == ex.position_ids.tolist()
    assert batch.targets[0, sep:].tolist() == ex.labels[sep:].tolist()
    one = collate([x], SP.sop, SP.pad, single_token=True, layout=layout_of(name))  # [sop] only
    assert one.position_ids[0, :, sep].tolist() == ex.position_ids[:, sep].tolist()


@pytest.mark.parametrize("name", ["2d", "1d", "sentinel"])
def test_cloze_rows_equal_what_the_corruptor_gives_a_single_span(name):
    """Through the pretraining objective itself (mask ratio low enough for exactly one span)."""
    cfg = CorruptConfig(**{**vars(CORRUPT[name]), "mask_ratio": 0.05})
    corrupt = Corruptor(cfg, SP)
    tokens = np.array([SP.cls, *range(20, 45), SP.eos], dtype=np.int64)
    sample = RawSample(tokens=tokens, loss_mask=np.r_[0.0, np.ones(26)].astype(np.float32),
                       sentence_end=np.zeros(27, bool))  # fmt: skip
    checked = 0
    for seed in range(20):
        ex = corrupt(sample, np.random.default_rng(seed), objective=TOKEN)
        sep = ex.context_len
        if int((ex.input_ids[sep:] == SP.sop).sum()) != 1:
            continue
        mask_pos = int(np.flatnonzero(ex.input_ids[:sep] == SP.mask)[0])  # span 0 keeps [MASK]
        x = ClozeInput(part_a=tuple(ex.input_ids[:sep].tolist()), mask_pos=mask_pos,
                       answers=(tuple(ex.labels[sep:].tolist()),), target=0)  # fmt: skip
        batch = collate([x], SP.sop, SP.pad, single_token=False, layout=layout_of(name))
        assert batch.input_ids[0].tolist() == ex.input_ids.tolist()
        assert batch.position_ids[0].tolist() == ex.position_ids.tolist()
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", ["2d", "1d"])
def test_perplexity_rows_equal_the_pretraining_suffix_layout(name):
    """lm's bidirectional window ([gMASK] after the context) == build_suffix of the same text."""
    model = Recorder(tiny_config(block_position_encoding=name == "2d")).eval()
    ctx, tgt = [SP.cls, 30, 31, 32, 33], [40, 41, 42]
    with torch.no_grad():
        lm._score_rows(model, [(ctx + [SP.gmask], tgt)], Tok(), unidirectional=False)
    ex = build_suffix(ctx + tgt, len(tgt), gmask_id=SP.gmask, sop_id=SP.sop,
                      block_positions=name == "2d")  # fmt: skip
    ids, pos = model.seen[-1]
    assert ids[0].tolist() == ex.input_ids.tolist()
    assert pos[0].tolist() == ex.position_ids.tolist()


def test_lambada_through_a_sentinel_layout_puts_the_word_at_context_len(tmp_path):
    """[MASK] (a model trained without [gMASK]) spans sit at |Part A| in the sentinel layout, as
    build_blocks put them; a [gMASK] span keeps its blank's position there (no sentinels at the
    document level); the default (the model's 2D layout) puts the word at the blank."""
    model = Recorder(tiny_config()).eval()
    path = tmp_path / "lw.jsonl"
    path.write_text('{"text": "ab cd ef"}\n')
    no_gmask = Tok(dataclasses.replace(SP, gmask=None))
    lm.lambada(model, no_gmask, path, layout=layout_of("sentinel"))
    ids, pos = model.seen[-1]
    sep = ids[0].tolist().index(SP.sop)  # [CLS] ab cd [MASK] [eos] | [sop] ...
    assert ids[0, sep - 2] == SP.mask
    assert pos[0, 0, sep:].tolist() == [sep] * (ids.shape[1] - sep)
    assert pos[0, 1, sep:].tolist() == list(range(1, ids.shape[1] - sep + 1))
    lm.lambada(model, no_gmask, path)  # default: the model's own 2D layout, at the blank
    _, pos = model.seen[-1]
    assert pos[0, 0, sep:].tolist() == [sep - 2] * (pos.shape[2] - sep)
    lm.lambada(model, Tok(), path, layout=layout_of("sentinel"))  # through [gMASK]
    ids, pos = model.seen[-1]
    assert ids[0, sep - 2] == SP.gmask
    assert pos[0, 0, sep:].tolist() == [sep - 2] * (pos.shape[2] - sep)


class Tok:
    """Bytes + 16, with SP's special ids (what lm needs of a tokenizer)."""

    def __init__(self, special: SpecialTokens = SP) -> None:
        self.special = special

    def encode(self, text: str) -> list[int]:
        return [b + 16 for b in text.encode()]


# [eop] banned: every fill runs to max_new_tokens, so no fill is empty
IDS = InfillIds(blanks=(SP.mask, SP.gmask), sop=SP.sop, eop=SP.eop, pad=SP.pad,
                banned=(SP.eop, SP.eos))  # fmt: skip


@pytest.mark.parametrize("name", ["2d", "1d", "sentinel"])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_kv_cache_decoding_equals_the_full_forward_of_the_pretraining_layout(name, strategy):
    """The fills' log-probs from the cache == a full forward of build_blocks(text with the fills);
    every token fed to the decoder has the position the pretraining layout gives it."""
    torch.manual_seed(3)
    model = Recorder(tiny_config(block_position_encoding=name != "1d")).eval()
    prompt = [SP.cls, 30, 31, SP.mask, 32, 33, 34, SP.eos]
    if name != "sentinel":  # a sentinel model was trained on one [MASK] per sample
        prompt = [SP.cls, 30, SP.mask, 31, 32, SP.mask, 33, SP.eos]
    layout = layout_of(name)
    fills = generate(model, [prompt], ids=IDS, layout=layout, max_new_tokens=4,
                     strategy=strategy, num_beams=2)[0]  # fmt: skip
    fed = [(i, p) for i, p in model.seen]
    text, spans, shift = list(prompt), [], 0
    for f in fills:  # put each fill in place of its blank
        at = f.position + shift
        text[at : at + 1] = f.token_ids
        spans.append((at, at + len(f.token_ids)))
        shift += len(f.token_ids) - 1
    ex = build_blocks(text, spans, mask_id=SP.mask, sop_id=SP.sop, eop_id=SP.eop,
                      block_positions=name != "1d", sentinel_ids=sentinel_ids(name))  # fmt: skip
    assert ex.input_ids[: ex.context_len].tolist() == prompt
    with torch.no_grad():
        logp = F.log_softmax(GLM.forward(model, torch.from_numpy(ex.input_ids)[None],
                             torch.from_numpy(ex.position_ids)[None],
                             context_len=ex.context_len)[0], -1)  # fmt: skip
    sep, off = ex.context_len, ex.context_len
    for f in fills:
        n = len(f.token_ids)
        want = logp[off : off + n].gather(1, torch.tensor(f.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(f.logprobs), want, atol=1e-4, rtol=1e-4)
        off += n + 1
    if strategy == "greedy":  # one row: the tokens fed, in order, are a prefix of the sequence
        ids = torch.cat([i[0] for i, _ in fed])
        pos = torch.cat([p[0] for _, p in fed], dim=1)
        assert ids.tolist() == ex.input_ids[: len(ids)].tolist()
        assert pos.tolist() == ex.position_ids[:, : len(ids)].tolist()
        assert len(ids) >= sep + 4
