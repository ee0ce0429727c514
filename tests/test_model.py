"""The model: parity with the official code and the hub port, mask semantics, KV cache, presets."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from blankfill import GLM, build_attention_mask, count_parameters, preset
from blankfill.hub import read_model_config
from blankfill.presets import PRESETS
from blankfill.testing import brute_force_mask, tiny_config

ATOL = 1e-5


def _golden_model(golden_dir, gelu, attention="sdpa"):
    cfg = read_model_config(golden_dir / "config.json", gelu=gelu, attention=attention)
    model = GLM(cfg).eval()
    model.load_state_dict(load_file(str(golden_dir / "model.safetensors")), strict=True)
    return model


def _golden(golden_dir):
    return (
        load_file(str(golden_dir / "inputs_logits.safetensors")),
        {
            "erf": load_file(str(golden_dir / "inputs_logits.safetensors")),
            "tanh": load_file(str(golden_dir / "logits_orig.safetensors")),
        },
    )


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("gelu", ["erf", "tanh"])  # erf: set A (hub port); tanh: set B (official)
@torch.no_grad()
def test_parity_with_golden_logits(golden_dir, gelu, attention):
    inp, refs = _golden(golden_dir)
    ref = refs[gelu]
    model = _golden_model(golden_dir, gelu, attention)

    out = model(inp["input_ids"], inp["position_ids"], context_len=inp["attention_mask"])
    torch.testing.assert_close(out, ref["logits"], atol=ATOL, rtol=ATOL)

    out = model(inp["causal.input_ids"])  # no positions, no mask: the hub port's defaults
    torch.testing.assert_close(out, ref["causal.logits"], atol=ATOL, rtol=ATOL)

    mask = inp["mask4d.attention_mask"]
    out = model(inp["mask4d.input_ids"], inp["mask4d.position_ids"], attention_mask=mask)
    assert torch.isfinite(out).all()
    rows = mask.any(-1).squeeze(1)  # the fully masked padding row is uniform in the references
    torch.testing.assert_close(out[rows], ref["mask4d.logits"][rows], atol=ATOL, rtol=ATOL)
    if attention == "eager":  # the eager path reproduces the -65504 arithmetic exactly
        torch.testing.assert_close(out, ref["mask4d.logits"], atol=ATOL, rtol=ATOL)

    # The multiple-choice score of the hub port: sum of choice-token log-probs.
    logp = out.log_softmax(-1)
    idx, ids = inp["mask4d.choice_indices"], inp["mask4d.choice_ids"]
    valid = idx >= 0
    gathered = logp[torch.arange(2).view(2, 1, 1), idx.clamp(min=0), ids.clamp(min=0)]
    mc = (gathered * valid).sum(-1)
    torch.testing.assert_close(mc, ref["mask4d.mc_log_probs"], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("gelu", ["erf", "tanh"])
@torch.no_grad()
def test_parity_incremental_decoding_with_kv_cache(golden_dir, gelu):
    inp, refs = _golden(golden_dir)
    ref = refs[gelu]
    model = _golden_model(golden_dir, gelu)
    cache = model.new_kv_cache()
    ctx = "mems.context."
    out = model(
        inp[ctx + "input_ids"],
        inp[ctx + "position_ids"],
        context_len=inp[ctx + "attention_mask"],
        kv_cache=cache,
    )
    torch.testing.assert_close(out, ref[ctx + "logits"], atol=ATOL, rtol=ATOL)
    for k in range(1, 6):
        s = f"mems.step{k}."
        out = model(inp[s + "input_ids"], inp[s + "position_ids"], kv_cache=cache)
        torch.testing.assert_close(out, ref[s + "logits"], atol=ATOL, rtol=ATOL)
    assert len(cache) == 15
    full = model(
        inp["mems.full.input_ids"],
        inp["mems.full.position_ids"],
        context_len=inp["mems.full.attention_mask"],
    )
    torch.testing.assert_close(full, ref["mems.full.logits"], atol=ATOL, rtol=ATOL)


def test_wrong_gelu_fails_parity(golden_dir):
    """The tolerance is tight enough to tell the two GeLUs apart (so the parity test can fail)."""
    inp, refs = _golden(golden_dir)
    model = _golden_model(golden_dir, "tanh")
    with torch.no_grad():
        out = model(inp["input_ids"], inp["position_ids"], context_len=inp["attention_mask"])
    assert (out - refs["erf"]["logits"]).abs().max() > 10 * ATOL


def test_mask_matches_brute_force():
    seps = [0, 3, 7, 10]
    got = build_attention_mask(torch.tensor(seps), 10, 10)
    assert torch.equal(got, brute_force_mask(seps, 10))
    # With a cache of 4 tokens the queries are the last 3 of 7 keys.
    got = build_attention_mask(torch.tensor([2]), 3, 7)
    assert torch.equal(got, brute_force_mask([2], 7)[:, :, 4:, :])


def _random_sample(cfg, T=12, sep=7, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    pos = torch.stack(
        [
            torch.arange(T).clamp(max=sep - 1).expand(B, T),
            torch.cat([torch.zeros(sep), torch.arange(1, T - sep + 1)]).long().expand(B, T),
        ],
        1,
    )
    return ids, pos


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_part_a_never_sees_part_b_and_part_b_is_causal(attention):
    cfg = tiny_config(attention=attention)
    model = GLM(cfg).eval()
    T, sep = 12, 7
    ids, pos = _random_sample(cfg, T, sep)
    base = model(ids, pos, context_len=sep)
    for j in range(sep, T):  # change one Part-B token
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % cfg.vocab_size
        out = model(changed, pos, context_len=sep)
        torch.testing.assert_close(out[:, :j], base[:, :j], atol=1e-6, rtol=0)  # A and earlier B
        assert (out[:, j:] - base[:, j:]).abs().max() > 1e-4  # it does change itself and later B
    # Part A is bidirectional: changing the last Part-A token changes the first one's output.
    changed = ids.clone()
    changed[:, sep - 1] = (changed[:, sep - 1] + 1) % cfg.vocab_size
    assert (model(changed, pos, context_len=sep)[:, 0] - base[:, 0]).abs().max() > 1e-4


@torch.no_grad()
def test_sdpa_equals_eager():
    sdpa = GLM(tiny_config(attention="sdpa")).eval()
    eager = GLM(tiny_config(attention="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    ids, pos = _random_sample(sdpa.config)
    for kw in ({}, {"context_len": torch.tensor([7, 12])}, {"context_len": 0}):
        torch.testing.assert_close(
            sdpa(ids, pos, **kw), eager(ids, pos, **kw), atol=1e-5, rtol=1e-5
        )
    mask = build_attention_mask(torch.tensor([3, 9]), 12, 12)
    torch.testing.assert_close(
        sdpa(ids, pos, attention_mask=mask),
        eager(ids, pos, attention_mask=mask),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@torch.no_grad()
def test_kv_cache_equals_full_forward(attention):
    model = GLM(tiny_config(attention=attention)).eval()
    T, sep = 12, 7
    ids, pos = _random_sample(model.config, T, sep)
    full = model(ids, pos, context_len=sep)
    cache = model.new_kv_cache()
    parts = [model(ids[:, :sep], pos[:, :, :sep], context_len=sep, kv_cache=cache)]
    parts.append(
        model(ids[:, sep : sep + 2], pos[:, :, sep : sep + 2], kv_cache=cache)
    )  # 2 at once
    for t in range(sep + 2, T):  # then one token at a time
        parts.append(model(ids[:, t : t + 1], pos[:, :, t : t + 1], kv_cache=cache))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    # index_select reorders the batch like a beam search would.
    flipped = cache.index_select(torch.tensor([1, 0]))
    assert torch.equal(flipped.keys[0][0, :, :T], cache.keys[0][1, :, :T])


def test_fully_masked_row_gives_no_nan():
    model = GLM(tiny_config()).eval()
    ids, pos = _random_sample(model.config, 6, 3)
    mask = build_attention_mask(torch.tensor([3, 3]), 6, 6).clone()
    mask[0, 0, 5] = False  # a padding row with no visible key
    for attention in ("sdpa", "eager"):
        model.transformer.layers[0].attention.eager = attention == "eager"
        with torch.no_grad():
            assert torch.isfinite(model(ids, pos, attention_mask=mask)).all()


def test_one_dimensional_positions_ablation():
    cfg = tiny_config(block_position_encoding=False)
    model = GLM(cfg).eval()
    assert not hasattr(model.transformer, "block_position_embeddings")
    assert model.transformer.position_embeddings.num_embeddings == cfg.max_sequence_length
    ids = torch.randint(0, cfg.vocab_size, (2, 10))
    out = model(ids, torch.arange(10).expand(2, 10), context_len=5)
    assert out.shape == (2, 10, cfg.vocab_size)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_parameters


def test_state_dict_keys_are_the_official_ones():
    keys = set(GLM(tiny_config()).state_dict())
    layer = {
        f"transformer.layers.0.{n}.{p}"
        for n in (
            "input_layernorm",
            "attention.query_key_value",
            "attention.dense",
            "post_attention_layernorm",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
        )
        for p in ("weight", "bias")
    }
    assert layer <= keys
    assert {
        "word_embeddings.weight",
        "transformer.position_embeddings.weight",
        "transformer.block_position_embeddings.weight",
        "transformer.final_layernorm.weight",
        "transformer.final_layernorm.bias",
    } <= keys
    assert len(keys) == 3 + 2 * 12 + 2  # 29 tensors for 2 layers, as in the golden checkpoint


def test_official_initialisation():
    cfg = preset("tiny", num_layers=8, hidden_size=256, num_attention_heads=4)
    model = GLM(cfg)
    blk = model.transformer.layers[0]
    assert abs(model.word_embeddings.weight.std().item() - 0.02) < 0.002
    assert abs(blk.attention.query_key_value.weight.std().item() - 0.02) < 0.002
    assert abs(blk.mlp.dense_4h_to_h.weight.std().item() - 0.02 / 4) < 0.0005  # 0.02/sqrt(2L)
    assert blk.attention.dense.bias.abs().max() == 0 and blk.input_layernorm.weight.min() == 1


@pytest.mark.parametrize(
    ("name", "millions"),
    [
        ("glm-base", 109.3),
        ("glm-large", 334.7),
        ("glm-roberta-large", 354.9),
        ("glm-2b", 1920),
        ("glm-10b", 9880),
    ],
)
def test_preset_parameter_counts(name, millions):
    cfg = PRESETS[name]
    n = count_parameters(cfg)  # on the meta device
    assert n == cfg.num_parameters
    assert abs(n / 1e6 - millions) / millions < 0.001 + 0.05 / millions


def test_tied_output_and_positions_past_the_table_are_an_error():
    model = GLM(tiny_config())
    ids = torch.zeros(1, 3, dtype=torch.long)
    h = model.hidden(ids)
    torch.testing.assert_close(model(ids), h @ model.word_embeddings.weight.T)
    too_far = torch.tensor([[[0, 1, 70], [0, 0, 0]]])
    with pytest.raises(ValueError, match="outside the model's 65 positions"):
        model(ids, too_far)


def test_keep_mask_rate_and_reproducibility():
    from blankfill.model import keep_mask

    torch.manual_seed(0)
    a = keep_mask((1000, 1000), 0.1)
    torch.manual_seed(0)
    b = keep_mask((1000, 1000), 0.1)
    assert a.dtype == torch.bool and a.shape == (1000, 1000)
    assert torch.equal(a, b)  # torch's generator seeds it
    assert abs(a.float().mean().item() - 0.9) < 0.002
    assert not torch.equal(keep_mask((1000, 1000), 0.1), a)  # the generator moved on
    assert keep_mask((7,), 0.0).all()  # odd sizes; p = 0 keeps everything
    for dtype in (torch.bfloat16, torch.float16, torch.float32):  # 16-bit: built from int16 bits
        torch.manual_seed(0)
        m = keep_mask((1000, 1000), 0.1, dtype)
        assert m.dtype == dtype and m.is_contiguous() and torch.equal(m, a.to(dtype))


def test_cpu_dropout_zeroes_p_and_rescales():
    from blankfill.model import Dropout

    drop = Dropout(0.25)
    x = torch.ones(500, 400)
    y = drop.train()(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.005
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.75))
    assert torch.equal(drop.eval()(x), x)


def _dropout_masks(kind: str, T: int) -> torch.Tensor:
    """Masks for 3 samples that attention_with_dropout must treat exactly as the math does."""
    from blankfill.model import build_segment_mask

    if kind == "glm":  # Part A of 4 (split at 4), fully causal (split at 1), all Part A (none)
        return build_attention_mask(torch.tensor([4, 0, 9]), T, T)
    if kind == "broadcast":  # one [1, 1, T, T] mask for every sample
        return build_attention_mask(3, T, T)
    if kind == "packed":  # two samples in each row, the first with Part A of 2 or 3
        seg = torch.tensor([[0] * 5 + [1] * 4, [0] * 3 + [1] * 6, [0] * 9])
        end = torch.tensor([[3] * 5 + [7] * 4, [2] * 3 + [5] * 6, [6] * 9])
        return build_segment_mask(seg, end)
    mask = build_attention_mask(torch.tensor([4, 5, 3]), T, T).clone()
    mask[0, :, 0] = False  # a sample whose row 0 is empty: nothing skipped
    mask[1:, :, 2] = False  # an empty row inside Part A: it sees every key (uniform), ends it
    return mask


def test_attention_extent_bounds_the_rows_that_see_only_part_a():
    from blankfill.model import attention_extent, build_segment_mask

    T = 9
    for sep in range(T + 1):  # Part A of sep: rows [0, sep) see keys [0, sep); sep 0 is causal
        expected = (0, T) if sep == T else (max(sep, 1), max(sep, 1))
        assert attention_extent(build_attention_mask(torch.tensor([sep]), T, T)) == expected
    # Several samples: keys up to the longest Part A, rows until one sees a key beyond it.
    assert attention_extent(build_attention_mask(torch.tensor([4, 6, 5]), T, T)) == (6, 6)
    assert attention_extent(build_attention_mask(torch.tensor([2, 0]), T, T)) == (2, 2)
    seg, end = torch.tensor([[0] * 5 + [1] * 4]), torch.tensor([[3] * 5 + [7] * 4])
    assert attention_extent(build_segment_mask(seg, end)) == (3, 3)
    assert attention_extent(_dropout_masks("empty rows", T)[:1]) == (0, T)
    assert attention_extent(_dropout_masks("empty rows", T)[1:]) == (2, 5)
    # Too few rows to skip (here fewer than 4 of 64, a causal mask among them): no split.
    assert attention_extent(build_attention_mask(torch.tensor([3]), 64, 64)) == (0, 64)
    assert attention_extent(build_attention_mask(torch.tensor([0]), 64, 64)) == (0, 64)
    assert attention_extent(build_attention_mask(torch.tensor([4]), 64, 64)) == (4, 4)


@pytest.mark.parametrize("kind", ["glm", "broadcast", "packed", "empty rows"])
@pytest.mark.parametrize("chunk", [1, 2 * 9 * 9 * 2, 2**21])  # per sample, 2 samples, all
def test_attention_with_dropout_equals_the_reference_math(chunk, kind):
    import math

    from blankfill.model import attention_with_dropout, keep_mask

    B, H, T, Dh, p = 3, 2, 9, 8, 0.3
    q, k, v = (torch.randn(B, H, T, Dh, requires_grad=True) for _ in range(3))
    mask = _dropout_masks(kind, T)
    torch.manual_seed(5)
    out = attention_with_dropout(q, k, v, mask, p, chunk=chunk)
    torch.manual_seed(5)
    keep = keep_mask((B, H, T, T), p)
    # -65504 added where masked: as replacing (spec §1.3) except on a row with no key at all,
    # which then attends to every key by its score (as the SDPA path lets it) instead of evenly.
    scores = q @ k.transpose(-1, -2) / math.sqrt(Dh) + (~mask) * -65504.0
    ref = (torch.softmax(scores, -1) * keep / (1 - p)) @ v
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_training_forward_sdpa_equals_eager_with_the_same_dropout_draws():
    # On CPU both draw their masks with keep_mask in the same order, so the fast per-sample path
    # (attention_with_dropout) must equal the official arithmetic, dropout included.
    drop = dict(embedding_dropout_prob=0.1, attention_dropout_prob=0.2, output_dropout_prob=0.1)
    sdpa = GLM(tiny_config(attention="sdpa", **drop)).train()
    eager = GLM(tiny_config(attention="eager", **drop)).train()
    eager.load_state_dict(sdpa.state_dict())
    ids, pos = _random_sample(sdpa.config)
    for kw in ({"context_len": torch.tensor([7, 12])}, {}):
        torch.manual_seed(3)
        a = sdpa(ids, pos, **kw)
        torch.manual_seed(3)
        b = eager(ids, pos, **kw)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.manual_seed(4)
    assert not torch.allclose(sdpa(ids, pos), a)  # dropout is on


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_first_row_gives_the_full_forward_rows_and_the_same_cache(attention):
    model = GLM(tiny_config(attention=attention)).eval()
    T, sep = 12, 7
    ids, pos = _random_sample(model.config, T, sep)
    mask = build_attention_mask(torch.tensor([7, 10]), T, T).clone()
    mask[1, 0, 11] = False  # a padding row with no visible key
    for kw in ({"context_len": torch.tensor([7, 10])}, {}, {"attention_mask": mask}):
        with torch.no_grad():
            full = model.hidden(ids, pos, **kw)
            for first in (1, sep, T - 1):
                part = model.hidden(ids, pos, first_row=first, **kw)
                assert part.shape == (2, T - first, model.config.hidden_size)
                torch.testing.assert_close(part, full[:, first:], atol=1e-5, rtol=1e-5)
    # The cache holds every row's keys and values: the next step sees the whole prompt.
    with torch.no_grad():
        ref, cut = model.new_kv_cache(), model.new_kv_cache()
        model.hidden(ids[:, :sep], pos[:, :, :sep], context_len=sep, kv_cache=ref)
        model.hidden(ids[:, :sep], pos[:, :, :sep], context_len=sep, kv_cache=cut, first_row=6)
        for a, b in zip(ref.keys + ref.values, cut.keys + cut.values, strict=True):
            torch.testing.assert_close(a[:, :, :sep], b[:, :, :sep], atol=1e-6, rtol=1e-6)
        step = [
            model(ids[:, sep : sep + 1], pos[:, :, sep : sep + 1], kv_cache=c) for c in (ref, cut)
        ]
        torch.testing.assert_close(step[0], step[1], atol=1e-5, rtol=1e-5)
    # Gradients flow as through the full forward's rows.
    model.train()
    grads = []
    for first in (0, sep):
        model.zero_grad()
        h = model.hidden(ids, pos, context_len=sep, first_row=first)
        h[:, sep - first :].square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):  # sums of squares: gradients of order 1
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for bad in (-1, T):
        with pytest.raises(ValueError, match="first_row"):
            model.hidden(ids, pos, first_row=bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("samples", [1, 2])
def test_masked_scores_are_the_product_plus_the_bias_bit_for_bit(dtype, samples):
    from blankfill.model import MASKED_SCORE, masked_scores

    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(samples, 4, 40, 16, generator=g).to(dtype).requires_grad_() for _ in "qk")
    mask = build_attention_mask(torch.tensor([25] * samples), 40, 40).clone()
    mask[0, 0, -2:] = False  # empty rows: all scores carry -65504
    bias = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, MASKED_SCORE)
    got, ref = masked_scores(q, k, bias), q @ k.transpose(-1, -2) + bias
    assert got.shape == (samples, 4, 40, 40) and torch.equal(got, ref)
    w = torch.randn(got.shape, generator=g).to(dtype)
    for a, b in zip(*(torch.autograd.grad((s * w).sum(), (q, k)) for s in (got, ref)), strict=True):
        assert torch.equal(a, b)
