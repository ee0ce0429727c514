"""Blank filling: cache vs recomputation, beams, batching, filters, a trained toy model, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blankfill.config import ConfigError, DecodingConfig
from blankfill.filters import FILTERS
from blankfill.generate import InfillIds, decoding_layout_, generate
from blankfill.kernels import PackedEmbedding, PackedLinear, onednn_available
from blankfill.model import GLM
from blankfill.testing import tiny_config

PAD, CLS, EOS, MASK, SOP, EOP, SEP, GMASK = range(8)
IDS = InfillIds(blanks=(MASK, GMASK), sop=SOP, eop=EOP, pad=PAD, stop=(EOS,))


@pytest.fixture(scope="module")
def model() -> GLM:
    torch.manual_seed(1)
    return GLM(tiny_config()).eval()


def reference_greedy(model: GLM, prompt: list[int], max_new: int) -> list[list[int]]:
    """Greedy filling recomputing the whole sequence (Part A + Part B so far) at every step."""
    blanks = [i for i, t in enumerate(prompt) if t in IDS.blanks]
    part_b: list[tuple[int, int, int]] = []  # (token, position, block position)
    fills = []
    for m in blanks:
        part_b.append((SOP, m, 1))
        fill: list[int] = []
        for step in range(max_new):
            toks = prompt + [t for t, _, _ in part_b]
            pos = list(range(len(prompt))) + [p for _, p, _ in part_b]
            block = [0] * len(prompt) + [k for _, _, k in part_b]
            ids = torch.tensor([toks])
            position_ids = torch.tensor([[pos, block]])
            with torch.no_grad():
                logits = model(ids, position_ids, context_len=len(prompt))[0, -1]
            tok = int(logits.argmax())
            if tok in (EOP, EOS):
                break
            fill.append(tok)
            if step < max_new - 1 or m != blanks[-1]:
                part_b.append((tok, m, step + 2))
        fills.append(fill)
    return fills


PROMPTS = [
    [CLS, 20, 21, MASK, 22, 23, MASK, 24, EOS],
    [CLS, 30, MASK, 31, EOS],
    [CLS, 40, 41, 42, 43, 44, 45, GMASK],
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_with_cache_equals_recomputation(model, prompt):
    got = generate(model, [prompt], ids=IDS, max_new_tokens=6)[0]
    want = reference_greedy(model, prompt, 6)
    assert [list(f.token_ids) for f in got] == want
    assert [f.position for f in got] == [i for i, t in enumerate(prompt) if t in IDS.blanks]
    assert all(len(f.logprobs) == len(f.token_ids) for f in got)
    assert all(lp <= 0 for f in got for lp in f.logprobs)


def test_beam_size_one_equals_greedy(model):
    greedy = generate(model, PROMPTS, ids=IDS, max_new_tokens=7)
    beam = generate(model, PROMPTS, ids=IDS, max_new_tokens=7, strategy="beam", num_beams=1)
    assert [[f.token_ids for f in row] for row in beam] == [
        [f.token_ids for f in row] for row in greedy
    ]


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batch_equals_one_by_one(model, strategy):
    batch = generate(model, PROMPTS, ids=IDS, max_new_tokens=5, strategy=strategy, num_beams=3)
    for prompt, row in zip(PROMPTS, batch, strict=True):
        single = generate(
            model, [prompt], ids=IDS, max_new_tokens=5, strategy=strategy, num_beams=3
        )
        assert [f.token_ids for f in row] == [f.token_ids for f in single[0]]
        for a, b in zip(row, single[0], strict=True):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs))


def test_beam_search_finds_at_least_greedy_score(model):
    for prompt in PROMPTS:
        g = generate(
            model,
            [prompt[: prompt.index(MASK) + 1] if MASK in prompt else prompt],
            ids=IDS,
            max_new_tokens=4,
        )
        b = generate(
            model,
            [prompt[: prompt.index(MASK) + 1] if MASK in prompt else prompt],
            ids=IDS,
            max_new_tokens=4,
            strategy="beam",
            num_beams=4,
            length_penalty=0.0,
        )
        assert b[0][-1].logprob >= g[0][-1].logprob - 1e-5


def test_sampling_is_seeded(model):
    kw = dict(ids=IDS, max_new_tokens=6, strategy="sample", temperature=1.5)
    a = generate(model, PROMPTS, seed=3, **kw)
    b = generate(model, PROMPTS, seed=3, **kw)
    c = generate(model, PROMPTS, seed=4, **kw)
    assert a == b
    assert a != c
    top1 = generate(model, PROMPTS, seed=5, ids=IDS, max_new_tokens=6, strategy="sample", top_k=1)
    assert [[f.token_ids for f in r] for r in top1] == [
        [f.token_ids for f in r] for r in generate(model, PROMPTS, ids=IDS, max_new_tokens=6)
    ]


def test_streaming_callback_sees_every_token(model):
    seen: dict[tuple[int, int], list[int]] = {}
    out = generate(
        model,
        PROMPTS,
        ids=IDS,
        max_new_tokens=5,
        on_token=lambda b, r, toks: seen.setdefault((b, r), []).extend(toks),
    )
    for b, row in enumerate(out):
        for r, f in enumerate(row):
            assert seen.get((b, r), []) == list(f.token_ids)


def test_filters():
    cfg = DecodingConfig(
        strategy="sample",
        top_k=2,
        top_p=0.5,
        repetition_penalty=2.0,
        no_repeat_ngram_size=2,
        min_length=3,
    )
    stop = torch.tensor([EOP])
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, -1.0, 4.0]])
    assert torch.isinf(FILTERS["top_k"](logits, None, cfg, stop)).sum() == 4
    probs = logits.softmax(-1)[0]
    kept = ~torch.isinf(FILTERS["top_p"](logits, None, cfg, stop))[0]
    assert kept.tolist() == [False, False, False, False, False, True] and probs[5] > 0.5
    rep = FILTERS["repetition_penalty"](logits, torch.tensor([[3, 4]]), cfg, stop)
    assert rep[0, 3] == 1.5 and rep[0, 4] == -2.0 and rep[0, 2] == 2.0
    ngram = FILTERS["no_repeat_ngram"](logits, torch.tensor([[1, 2, 1]]), cfg, stop)
    assert torch.isinf(ngram[0]).nonzero().flatten().tolist() == [2]
    assert torch.isinf(
        FILTERS["min_length"](logits, torch.zeros(1, 2, dtype=torch.long), cfg, stop)[0, EOP]
    )
    assert not torch.isinf(
        FILTERS["min_length"](logits, torch.zeros(1, 3, dtype=torch.long), cfg, stop)
    ).any()


def test_min_length_and_no_repeat_are_applied(model):
    out = generate(model, PROMPTS, ids=IDS, max_new_tokens=8, min_length=8)
    assert all(len(f.token_ids) == 8 and not f.ended for row in out for f in row)
    for strategy in ("greedy", "beam"):
        out = generate(
            model,
            PROMPTS,
            ids=IDS,
            max_new_tokens=8,
            no_repeat_ngram_size=1,
            strategy=strategy,
            num_beams=2,
        )
        assert all(len(set(f.token_ids)) == len(f.token_ids) for row in out for f in row)


def _toy_batch(gen: torch.Generator, n: int):
    """Two patterns. Successor: [CLS k MASK EOS] -> k+1 k+2. Copy: [CLS MASK SEP MASK EOS] ->
    x (random in 50..65), then x x: the second blank can only be right by reading the first fill."""
    T = 10
    ids = torch.full((n, T), PAD)
    pos = torch.zeros(n, 2, T, dtype=torch.long)
    labels = torch.full((n, T), -100)
    sep = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        if i % 2:
            k = int(torch.randint(10, 40, (1,), generator=gen))
            a, spans = [CLS, k, MASK, EOS], [(2, [k + 1, k + 2])]
        else:
            x = int(torch.randint(50, 66, (1,), generator=gen))
            a, spans = [CLS, MASK, SEP, MASK, EOS], [(1, [x]), (3, [x, x])]
        toks, p, blk, tgt = list(a), list(range(len(a))), [0] * len(a), [-100] * len(a)
        for m, span in spans:
            toks += [SOP] + span
            p += [m] * (len(span) + 1)
            blk += list(range(1, len(span) + 2))
            tgt += span + [EOP]
        L = len(toks)
        ids[i, :L], pos[i, 0, :L], pos[i, 1, :L] = (
            torch.tensor(toks),
            torch.tensor(p),
            torch.tensor(blk),
        )
        labels[i, :L] = torch.tensor(tgt)
        sep[i] = len(a)
    return ids, pos, labels, sep


@pytest.fixture(scope="module")
def toy_model() -> GLM:
    """A tiny GLM trained for a few seconds on the two patterns of ``_toy_batch``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only contend (15x slower on a busy box)
    try:
        torch.manual_seed(0)
        model = GLM(tiny_config())
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(400):
            ids, pos, labels, sep = _toy_batch(gen, 32)
            loss = F.cross_entropy(model(ids, pos, context_len=sep).flatten(0, 1), labels.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_tiny_trained_model_fills_the_pattern(toy_model):
    model = toy_model
    successor = [[CLS, k, MASK, EOS] for k in (12, 25, 33)]
    out = generate(model, successor, ids=IDS, max_new_tokens=5)
    assert [list(r[0].token_ids) for r in out] == [[k + 1, k + 2] for k in (12, 25, 33)]
    assert all(r[0].ended for r in out)
    copy = [CLS, MASK, SEP, MASK, EOS]
    firsts = set()
    for seed in range(6):
        ((f1, f2),) = generate(
            model, [copy], ids=IDS, strategy="sample", seed=seed, max_new_tokens=4
        )
        assert len(f1.token_ids) == 1 and list(f2.token_ids) == [f1.token_ids[0]] * 2
        firsts.add(f1.token_ids)
    assert len(firsts) > 1  # different first fills, each copied: the second blank read the first


def test_errors(model):
    with pytest.raises(ValueError, match="prompt 1 is 70 tokens, 6 more than"):
        generate(model, [PROMPTS[0], [CLS] + [20] * 68 + [MASK]], ids=IDS)
    with pytest.raises(ValueError, match="prompt 0 has no blank"):
        generate(model, [[CLS, 20, EOS]], ids=IDS)
    with pytest.raises(ConfigError, match="unknown config key 'decoding.top_q'.*top_p"):
        generate(model, PROMPTS, ids=IDS, top_q=0.5)
    with pytest.raises(ConfigError, match="decoding.top_p must be in"):
        generate(model, PROMPTS, ids=IDS, top_p=0.0)
    with pytest.raises(ConfigError, match="decoding.strategy must be one of"):
        generate(model, PROMPTS, ids=IDS, strategy="nucleus")
    with pytest.raises(ValueError, match="max_new_tokens=64 .* use at most 63"):
        generate(model, PROMPTS, ids=IDS, max_new_tokens=64)
    with pytest.raises(
        ValueError, match=r"decoding.min_length must be in \[0, max_new_tokens=63\]"
    ):
        generate(model, PROMPTS, ids=IDS, min_length=70)
    with pytest.raises(ValueError, match="outside the model's 384 rows"):
        generate(model, [[CLS, 999, MASK]], ids=IDS)


def test_decoding_layout_keeps_values_and_results(model):
    import copy

    col = decoding_layout_(copy.deepcopy(model))
    qkv = col.transformer.layers[0].attention.query_key_value
    if onednn_available():  # oneDNN-packed matmuls, the same parameters
        assert isinstance(qkv, PackedLinear) and isinstance(col.word_embeddings, PackedEmbedding)
    else:  # column-major weights for MKL
        assert qkv.weight.stride() == (1, qkv.weight.shape[0])
    assert decoding_layout_(col) is col and len(col.state_dict()) == len(model.state_dict())
    for (k, a), b in zip(model.state_dict().items(), col.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    want = generate(model, PROMPTS, ids=IDS, max_new_tokens=5)
    assert [
        [f.token_ids for f in r] for r in generate(col, PROMPTS, ids=IDS, max_new_tokens=5)
    ] == [[f.token_ids for f in r] for r in want]


def test_decoding_layout_still_trains_the_same(model):
    import copy

    row, col = copy.deepcopy(model).train(), decoding_layout_(copy.deepcopy(model)).train()
    ids = torch.randint(10, 300, (2, 12))
    for m in (row, col):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        F.cross_entropy(
            m(ids, context_len=6)[:, :-1].flatten(0, 1), ids[:, 1:].flatten()
        ).backward()
        opt.step()
    for (k, a), b in zip(row.state_dict().items(), col.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_wide_beam_search_is_exhaustive(model):
    """With every other token banned and more beams than hypotheses, beam search must return the
    best of all fills by brute force, under the length-penalised score."""
    allowed = [20, 21, 22]
    ids = InfillIds(
        blanks=(MASK,),
        sop=SOP,
        eop=EOP,
        pad=PAD,
        banned=tuple(i for i in range(384) if i not in [*allowed, EOP]),
    )
    prompt, M = [CLS, 30, MASK, 31, EOS], 3

    def logprobs(seq: list[int]) -> list[float]:
        toks = prompt + [SOP] + seq[:-1]
        pos = [list(range(5)) + [2] * len(seq), [0] * 5 + list(range(1, len(seq) + 1))]
        with torch.no_grad():
            lp = model(torch.tensor([toks]), torch.tensor([pos]), context_len=5)[0, 5:].log_softmax(
                -1
            )
        return [float(lp[i, t]) for i, t in enumerate(seq)]

    for penalty in (0.0, 1.0, 2.0):
        best, best_score = None, float("-inf")
        for n in range(M + 1):
            for seq in (
                torch.cartesian_prod(*[torch.tensor(allowed)] * n).view(-1, n).tolist()
                if n
                else [[]]
            ):
                full = seq + [EOP] if n < M else seq  # at M tokens a fill is cut without [eop]
                score = sum(logprobs(full)) / len(full) ** penalty
                if score > best_score:
                    best, best_score = seq, score
        ((f,),) = generate(
            model,
            [prompt],
            ids=ids,
            strategy="beam",
            num_beams=64,
            max_new_tokens=M,
            length_penalty=penalty,
        )[0:1]
        assert list(f.token_ids) == best, penalty


def test_int8_linear_is_close_to_the_float_linear():
    from blankfill.quantize import INT8_MAX_ROWS, Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = Int8Linear(lin)
    assert q.qweight.dtype == torch.int8 and q.scale.shape == (96,)
    for rows in (1, 3, INT8_MAX_ROWS + 5):  # the int8 kernel, and the bf16 many-row path
        x = torch.randn(2, rows, 64)
        want, got = lin(x), q(x).float()
        assert got.shape == want.shape
        err = (got - want).abs().max() / want.abs().max()
        assert err < 0.02, (rows, float(err))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_decoding_precision_keeps_logits_close_and_cache_consistent(model, precision):
    import copy

    from blankfill.quantize import decoding_precision_

    low = decoding_precision_(copy.deepcopy(model), precision)
    assert low.word_embeddings.weight.dtype == torch.bfloat16
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        want = model(ids, context_len=ids.shape[1])
        full = low(ids, context_len=ids.shape[1]).float()
        # Incremental: one token at a time through the cache (the int8 kernel path).
        cache = low.new_kv_cache()
        steps = [
            low(ids[:, :4], context_len=4, kv_cache=cache).float()[:, -1],
            *(low(ids[:, t : t + 1], kv_cache=cache).float()[:, -1] for t in range(4, 9)),
        ]
    scale = want.abs().max()
    assert (full - want).abs().max() / scale < 0.05
    # Causal from position 4 on: the cached steps see what the full causal-from-4 forward sees.
    with torch.no_grad():
        ref = low(ids, context_len=4).float()[0, 3:]
    assert (torch.cat(steps) - ref).abs().max() / scale < 0.05
    got = generate(low, PROMPTS, ids=IDS, max_new_tokens=5)
    assert [len(r) for r in got] == [2, 1, 1]


def test_decoding_precision_rejects_an_unknown_one(model):
    from blankfill.quantize import decoding_precision_

    with pytest.raises(ValueError, match="fp32, bf16, int8"):
        decoding_precision_(model, "fp16")


def test_auto_decoding_precision_needs_native_bf16():
    from blankfill.hardware import choose_decoding_precision

    cpu = torch.device("cpu")
    none = choose_decoding_precision(cpu, flags=frozenset({"avx2"}))
    assert none.precision == "fp32" and "no native bf16" in none.reason
    has = choose_decoding_precision(cpu, measure=False, flags=frozenset({"avx512_bf16"}))
    assert has.precision == "bf16" and "avx512_bf16" in has.reason
    measured = choose_decoding_precision(cpu, flags=frozenset({"amx_bf16"}))
    assert measured.precision in ("fp32", "bf16") and "bf16 decoding matmul" in measured.reason
    assert choose_decoding_precision(torch.device("meta")).precision == "fp32"
