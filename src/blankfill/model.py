"""THE GLM model (Du et al., ACL 2022), read top to bottom.

Axis legend used in every shape comment:
    B  batch            T  query tokens (this call)     S  key tokens (cache + this call)
    H  heads            Dh head dim                      D  hidden size (h)
    V  vocabulary (padded to a multiple of 128)          L  layers

Vocabulary of the paper: a text is corrupted into **Part A** (the text with each span replaced by
one mask token) followed by **Part B** (the spans, each opened by [sop]). ``context_len`` (the
official ``sep``) is |Part A|: Part A attends to all of Part A; Part B attends to all of Part A and
causally to itself (GLM §2.2). Each token carries two position ids (GLM §2.3): channel 0 is the
position in Part A (a Part-B token takes its span's mask position), channel 1 the block position
(0 in Part A, 1..len+1 inside a span).

The module tree and parameter names equal the official checkpoint keys (spec §1.1), so official
weights load with no renaming. The model knows nothing of devices, DDP or FSDP, and has no loss.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from .config import ModelConfig
from .kv_cache import KVCache

# The official masking constant (spec §1.3): masked scores are *replaced* by -65504 (the fp16
# minimum), so a fully masked row becomes uniform attention instead of NaN.
MASKED_SCORE = -65504.0
# Attention scores computed at once by the CPU training path (attention_with_dropout): about a
# core's L2-to-L3 working set, so softmax, dropout and their backward run from cache.
ATTENTION_CHUNK = 2**21


# --------------------------------------------------------------------------------------------
# Attention mask
# --------------------------------------------------------------------------------------------


def build_attention_mask(
    context_len: torch.Tensor | int | None, T: int, S: int, device: torch.device | None = None
) -> torch.Tensor:
    """The GLM mask from a per-sample context length: True where query i may attend to key j.

    Queries are the last ``T`` of the ``S`` key positions (the first ``S - T`` are cached). Key j is
    visible to query i (absolute index ``S - T + i``) iff ``j < context_len`` (Part A, seen by all)
    or ``j <= S - T + i`` (causal). ``context_len`` None or 0 gives a fully causal mask.

    Args:
        context_len: int or LongTensor [B], |Part A| per sample (the official ``sep``).
        T: number of query tokens.
        S: number of key tokens (cached + new).

    Returns:
        Bool tensor [B or 1, 1, T, S].
    """
    q = torch.arange(S - T, S, device=device).view(T, 1)  # [T, 1] absolute query positions
    k = torch.arange(S, device=device).view(1, S)  # [1, S]
    causal = k <= q  # [T, S]
    if context_len is None:
        return causal.view(1, 1, T, S)
    sep = torch.as_tensor(context_len, device=device).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    return causal.view(1, 1, T, S) | (k.view(1, 1, 1, S) < sep)  # [B, 1, T, S]


def build_segment_mask(segment_ids: torch.Tensor, context_end: torch.Tensor) -> torch.Tensor:
    """The GLM mask of packed rows (several samples per row) from per-token segment ids.

    Query q sees key k iff both are in the same segment (sample) and k is in that sample's
    Part A (``k < context_end[q]``) or ``k <= q`` (causal): ``build_attention_mask`` for each
    sample, and nothing across samples. ``collate_pack`` gives every padding token a segment of
    its own, so padding attends to itself only and no row is empty.

    Args:
        segment_ids: int [B, T]: the segment (sample of the row) of each token.
        context_end: int [B, T]: row index where the Part A of each token's sample ends (the
            sample's first index + its ``context_len``).

    Returns:
        Bool tensor [B, 1, T, T].
    """
    T = segment_ids.shape[-1]
    idx = torch.arange(T, device=segment_ids.device)
    q, k = idx.view(T, 1), idx.view(1, T)  # [T, 1], [1, T]
    same = segment_ids.unsqueeze(-1) == segment_ids.unsqueeze(-2)  # [B, T, T]
    seen = (k <= q) | (k < context_end.unsqueeze(-1))  # [B, T, T]
    return (same & seen).unsqueeze(1)  # [B, 1, T, T]


def flex_block_mask(
    context_len: torch.Tensor | int | None,
    attention_mask: torch.Tensor | None,
    B: int,
    T: int,
    device: torch.device | None = None,
    *,
    segment_ids: torch.Tensor | None = None,
    context_end: torch.Tensor | None = None,
) -> BlockMask:
    """The same mask as ``build_attention_mask`` (or ``build_segment_mask`` from packed rows'
    ``segment_ids``/``context_end`` [B, T], or an explicit [B, 1, T, T] one) as a FlexAttention
    ``BlockMask``, built once per batch. Blocks that no query of a tile may see (Part A's view of
    Part B, other samples of a packed row) are skipped, not computed.
    """
    if attention_mask is not None:
        dense = attention_mask.bool()  # [B or 1, 1, T, T]

        def mask_mod(b, h, q, k):
            return dense[b if dense.shape[0] > 1 else 0, 0, q, k]

    elif segment_ids is not None:
        assert context_end is not None, "segment_ids need their context_end"
        seg, end = segment_ids, context_end  # [B, T] each

        def mask_mod(b, h, q, k):
            return (seg[b, q] == seg[b, k]) & ((k <= q) | (k < end[b, q]))

    else:
        sep = torch.as_tensor(0 if context_len is None else context_len, device=device)
        sep = sep.view(-1).expand(B)  # [B]

        def mask_mod(b, h, q, k):
            return (k <= q) | (k < sep[b])

    return create_block_mask(mask_mod, B, None, T, T, device=device)


@functools.cache
def _compiled_flex_attention():
    """flex_attention compiled once per process (its fused kernels need torch.compile)."""
    return torch.compile(flex_attention, dynamic=False)


def use_flex(attention: str, device: torch.device, dropout: float, cached: bool) -> bool:
    """FlexAttention for a full forward on CUDA (SDPA elsewhere): it has no dropout and no
    incremental-decoding form, so attention dropout in training and KV caches keep SDPA."""
    return attention == "sdpa" and device.type == "cuda" and dropout == 0.0 and not cached


# --------------------------------------------------------------------------------------------
# Dropout on CPU
# --------------------------------------------------------------------------------------------


def keep_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """A CPU mask of ``shape``, each entry 1 (kept) with probability ``1 - p``, else 0.

    Cheaper than ``bernoulli_`` (an mt19937 draw per entry; ~10% of a CPU training step): 16 bits
    per entry from an SFC64 stream seeded from torch's generator (so ``manual_seed`` and saved RNG
    states reproduce it), compared into ``dtype`` (a 0/1 float mask multiplies ~5x faster than
    ``torch.where``; a 16-bit float's is int16 0/1 times 1.0's bits: bf16 1.5x faster, Intel Xeon
    with AMX). ``p`` is quantised to a multiple of 2^-16 (0.1 -> 0.100006).
    """
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**62, ()))  # drawn from torch's generator
    words = np.random.SFC64(seed).random_raw(-(-n // 4))  # uint64 [ceil(n / 4)]
    bits = torch.from_numpy(words.view(np.int16)[:n]).view(shape)  # uniform in [-32768, 32767]
    one = {torch.bfloat16: 0x3F80, torch.float16: 0x3C00}.get(dtype)  # 1.0's bits, else None
    out = torch.empty(shape, dtype=dtype if one is None else torch.int16)
    torch.ge(bits, round(p * 65536) - 32768, out=out)
    return out if one is None else out.mul_(one).view(dtype)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` (zero with probability ``p``, scale the rest by 1 / (1 - p)); on CPU with
    the cheaper ``keep_mask``, elsewhere torch's own fused kernel."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return x * keep_mask(tuple(x.shape), p, x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout` (the cheaper mask on CPU); no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention_extent(mask: torch.Tensor) -> tuple[int, int]:
    """(R, K) of a mask [c, 1, T, S]: rows [0, R) of every sample see only keys [0, K) (Part A; a
    fully masked row ends them), or (0, S) where under 1/16 of the rows would skip (no gain)."""
    T, S = mask.shape[-2:]
    first = mask[:, 0, 0]  # [c, S]
    if not bool(first.any(-1).all()):
        return 0, S
    K = S - int(first.flip(-1).int().argmax(-1).min())  # after every sample's last key of row 0
    full = (mask[:, 0, :, K:].any(-1) | ~mask[:, 0].any(-1)).any(0)  # [T] rows needing all keys
    R = int(full.int().argmax()) if bool(full.any()) else T
    return (R, K) if K < S and 16 * R >= T else (0, S)  # a causal mask (R = 1): 5-7% slower


def masked_scores(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """q [c, H, T, Dh] @ k [c, H, S, Dh]^T + bias [c, 1, T, S] -> [c, H, T, S]. One bf16/fp16
    sample: the bias added inside the GEMM (``baddbmm``, the same bits; the glm-small bf16 step
    1.02x, fp32 0.99x: Intel Xeon with AMX, 2026-12-03, 6 and 4 alternated pairs)."""
    if q.shape[0] != 1 or q.dtype == torch.float32:
        return q @ k.transpose(-1, -2) + bias
    return torch.baddbmm(bias[0], q[0], k[0].transpose(-1, -2)).unsqueeze(0)


def attention_with_dropout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    p: float,
    chunk: int = ATTENTION_CHUNK,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(Dh) + mask) with dropout ``p`` on the probabilities, times V, for
    CPU training (SDPA's fused CPU kernel has no dropout; its math path is ~2.5x slower).

    A few samples at a time (``ATTENTION_CHUNK`` scores), so each block of scores stays in cache
    through the softmax, the dropout and the product with V (and back). Masked scores get -65504
    added (spec §1.3); the 1 / (1 - p) scale is applied to the [B, H, T, Dh] output. In fp32 the
    rows that see only Part A skip Part B's keys (``attention_extent``: attention 1.09x, step 1.02x
    on an Intel Xeon with AMX; in bf16 the split measured no faster there).

    Args:
        q: [B, H, T, Dh]; k, v: [B, H, S, Dh].
        mask: bool [B or 1, 1, T, S], True where a query may attend.
        p: dropout probability.
        chunk: scores computed at once (whole samples, at least one).
    """
    B, H, T, Dh = q.shape
    S = k.shape[2]
    # One copy of each, not one per chunk and product: bmm copied bf16 heads strided in the fused
    # QKV output (the glm-small bf16 step 1.028x, fp32 1.005x; Intel Xeon with AMX, 2026-12-03).
    q, k, v = (t.contiguous() for t in (q, k, v))
    bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, MASKED_SCORE)
    bias = bias.expand(B, -1, -1, -1)  # [B, 1, T, S]
    keep = keep_mask((B, H, T, S), p, q.dtype)  # 0/1 in the compute dtype
    q = q * (1.0 / math.sqrt(Dh))
    # Samples per chunk: a glm-small one is 8 x 566 x 566 = 2.6 M scores; small models take many.
    c = max(1, chunk // (H * T * S))
    # split, not q[i:j]: its backward concatenates the chunks' gradients once instead of
    # zero-filling a full [B, H, T, Dh] copy per chunk.
    chunks = [t.split(c) for t in (q, k, v, bias, keep, mask.expand(B, -1, -1, -1))]
    outs = []
    for qc, kc, vc, bc, keep_c, mc in zip(*chunks, strict=True):
        R, K = attention_extent(mc) if q.dtype == torch.float32 else (0, S)
        parts, rows = [], (t.split([R, T - R], 2) for t in (qc, bc, keep_c))
        for qp, bp, kp, n in zip(*rows, (K, S), strict=True):
            if qp.shape[2]:
                scores = masked_scores(qp, kc[:, :, :n], bp[..., :n])  # [c, H, rows, n]
                parts.append((torch.softmax(scores, dim=-1) * kp[..., :n]) @ vc[:, :, :n])
        outs.append(torch.cat(parts, 2) if len(parts) > 1 else parts[0])  # [c, H, T, Dh]
    return torch.cat(outs) * (1.0 / (1.0 - p))  # [B, H, T, Dh]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused QKV, rows laid out [Q; K; V] (spec §1.1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attention_dropout = Dropout(cfg.attention_dropout_prob)
        self.output_dropout = Dropout(cfg.output_dropout_prob)
        self.eager = cfg.attention == "eager"

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | BlockMask | None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        first_row: int = 0,
    ) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.query_key_value(x)  # [B, T, 3D]
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).unbind(2)  # 3 x [B, T, H, Dh]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, Dh]
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # [B, H, S, Dh]
        S = k.shape[2]
        if first_row:  # the queries of rows [first_row, T) only; every row's keys and values
            if mask is None:
                mask = build_attention_mask(None, T, S, x.device)
            q, mask, T = q[:, :, first_row:], mask[:, :, first_row:], T - first_row
        if isinstance(mask, BlockMask):  # FlexAttention (chosen in GLM.hidden; CUDA)
            flex = _compiled_flex_attention() if q.is_cuda else flex_attention
            out = flex(q, k, v, block_mask=mask)  # [B, H, T, Dh]
        elif self.eager:
            # The official arithmetic: scores with masked entries replaced by -65504, then softmax.
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [B, H, T, S]
            if mask is not None:
                scores = scores.masked_fill(~mask, MASKED_SCORE)
            elif T > 1:
                scores = scores.masked_fill(
                    ~build_attention_mask(None, T, S, x.device), MASKED_SCORE
                )
            probs = self.attention_dropout(torch.softmax(scores, dim=-1))
            out = probs @ v  # [B, H, T, Dh]
        else:
            p = self.attention_dropout.p if self.training else 0.0
            if p > 0.0 and q.device.type == "cpu":
                if mask is None:
                    mask = build_attention_mask(None, T, S, x.device)
                out = attention_with_dropout(q, k, v, mask, p)
            elif mask is None:
                # No explicit mask: fully causal. With a cache, T == 1 sees every key anyway.
                causal = T > 1
                if causal and S != T:
                    mask, causal = build_attention_mask(None, T, S, x.device), False
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal
                )
            else:
                # A fully masked row (batch padding) would be NaN in SDPA; let it see every key.
                # Only such rows differ from the eager path (uniform there), and no loss uses them.
                mask = mask | ~mask.any(dim=-1, keepdim=True)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = out.transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        return self.output_dropout(self.dense(out))


class MLP(nn.Module):
    """4h feed-forward with GeLU (tanh approximation in the official code, erf in the hub port)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, 4 * cfg.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * cfg.hidden_size, cfg.hidden_size)
        self.dropout = Dropout(cfg.output_dropout_prob)
        self.approximate = "tanh" if cfg.gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.dense_h_to_4h(x), approximate=self.approximate)  # [B, T, 4D]
        return self.dropout(self.dense_4h_to_h(h))


class Block(nn.Module):
    """Pre-LN Transformer block (the paper's rearranged LayerNorm order, spec §1.4)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.attention = SelfAttention(cfg)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        kv_cache: KVCache | None,
        layer: int,
        first_row: int = 0,
    ) -> torch.Tensor:
        """[B, T, D] -> [B, T - first_row, D]: the rows from ``first_row`` on (seeing all keys)."""
        h = self.attention(self.input_layernorm(x), mask, kv_cache, layer, first_row)
        x = x[:, first_row:] + h
        return x + self.mlp(self.post_attention_layernorm(x))


class WordEmbedding(nn.Embedding):
    """The word embedding, tied to the single output layer (no bias, spec §1.5)."""

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer: hidden [..., D] -> logits [..., V]."""
        return F.linear(hidden, self.weight)


class Transformer(nn.Module):
    """Position tables, the blocks and the final LayerNorm (official ``transformer.*`` keys)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.position_embeddings = nn.Embedding(cfg.position_rows, cfg.hidden_size)
        if cfg.block_position_encoding:
            self.block_position_embeddings = nn.Embedding(cfg.position_rows, cfg.hidden_size)
        self.embedding_dropout = Dropout(cfg.embedding_dropout_prob)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)


# --------------------------------------------------------------------------------------------
# GLM
# --------------------------------------------------------------------------------------------


class GLM(nn.Module):
    """GLM: word + position + block-position embeddings, pre-LN blocks, tied output layer.

    ``model(input_ids, ...)`` gives logits [B, T, V] (``forward``); ``model.hidden(...)`` the
    final-LayerNorm states [B, T, D] (a classifier head, or logits of some rows: ``logits``).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.word_embeddings = WordEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.transformer = Transformer(cfg)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation (spec §1.7)."""
        std = self.config.initializer_range
        out_std = std / math.sqrt(2.0 * self.config.num_layers)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
                p.normal_(0.0, out_std)
            else:
                p.normal_(0.0, std)

    def new_kv_cache(self, capacity: int = 0) -> KVCache:
        """An empty cache; ``capacity`` preallocates that many positions per layer."""
        return KVCache(self.config.num_layers, capacity)

    def _positions(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, offset: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = input_ids.shape
        if position_ids is None:
            pos = torch.arange(offset, offset + T, device=input_ids.device).expand(B, T)
            # Block position 0 still adds its embedding row (the hub port's default, spec §1.9).
            return pos, torch.zeros_like(pos) if self.config.block_position_encoding else None
        if position_ids.dim() == 2:
            if self.config.block_position_encoding:
                raise ValueError(
                    "position_ids of shape [B, T] given to a model with 2D positions; pass "
                    "[B, 2, T] (channel 0: position, channel 1: block position)"
                )
            return position_ids, None
        if position_ids.dim() != 3 or position_ids.shape[1] != 2 or position_ids.shape[2] != T:
            raise ValueError(
                f"position_ids must be [B, 2, T] = [{B}, 2, {T}], got {tuple(position_ids.shape)}"
            )
        block = position_ids[:, 1] if self.config.block_position_encoding else None
        return position_ids[:, 0], block

    def hidden(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        context_len: torch.Tensor | int | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        *,
        segment_ids: torch.Tensor | None = None,
        context_end: torch.Tensor | None = None,
        first_row: int = 0,
    ) -> torch.Tensor:
        """Final-LayerNorm hidden states [B, T - first_row, D]; arguments as in ``forward``.

        ``first_row``: only rows [first_row, T) are wanted (e.g. a prompt's [sop], the target
        rows): the last block computes their queries, dense output and MLP only (keys, values
        and the cache: every row's)."""
        B, T = input_ids.shape
        if first_row and not 0 < first_row < T:
            raise ValueError(f"first_row={first_row} must be in [0, {T}) for {T} input tokens")
        offset = 0 if kv_cache is None else kv_cache.length
        S = offset + T
        pos, block = self._positions(input_ids, position_ids, offset)
        rows = self.config.position_rows
        # A clear error, not an index error in the embedding. It reads the ids back, so it is
        # skipped under torch.compile and for accelerators' one-token steps (generate checks).
        check = T > 1 or (T == 1 and input_ids.device.type == "cpu")
        if check and not torch.compiler.is_compiling():
            low, high = int(pos.min()), int(pos.max())
            if high >= rows or low < 0:
                raise ValueError(
                    f"position id {high if high >= rows else low} is outside the model's {rows} "
                    f"positions (max_sequence_length={self.config.max_sequence_length}); "
                    "shorten the input"
                )
        x = self.word_embeddings(input_ids) + self.transformer.position_embeddings(pos)  # [B,T,D]
        if block is not None:
            x = x + self.transformer.block_position_embeddings(block)
        x = self.transformer.embedding_dropout(x)

        p = self.config.attention_dropout_prob if self.training else 0.0
        flex = use_flex(self.config.attention, x.device, p, kv_cache is not None)
        if attention_mask is not None:
            shape = attention_mask.shape
            if len(shape) != 4 or shape[-2] != T or shape[-1] < S:
                raise ValueError(
                    f"attention_mask must be [B, 1, T, S] with T={T} and S>={S}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            mask = attention_mask[..., -S:].bool()  # only the last S key columns count (spec §1.3)
            if flex:
                mask = flex_block_mask(None, mask, B, T, x.device)
        elif segment_ids is not None:
            ok = context_end is not None and segment_ids.shape == context_end.shape == (B, T)
            if not ok or kv_cache is not None:
                raise ValueError(
                    f"packed rows need segment_ids and context_end of [B, T] = [{B}, {T}] and no "
                    "kv_cache (incremental decoding: pass an attention_mask)"
                )
            if flex:  # the block mask reads the ids directly: no dense [B, 1, T, T] mask
                mask = flex_block_mask(
                    None, None, B, T, x.device, segment_ids=segment_ids, context_end=context_end
                )
            else:
                mask = build_segment_mask(segment_ids, context_end)
        elif flex:
            mask = flex_block_mask(context_len, None, B, T, x.device)
        elif context_len is not None:
            mask = build_attention_mask(context_len, T, S, input_ids.device)
        else:
            mask = None  # fully causal (the hub port's default); built lazily in attention
        cut, last = 0 if flex else first_row, len(self.transformer.layers) - 1  # flex: all rows
        for i, layer in enumerate(self.transformer.layers):
            x = layer(x, mask, kv_cache, i, cut if i == last else 0)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.transformer.final_layernorm(x[:, first_row - cut :])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The single output layer tied to the word embeddings, no bias (spec §1.5): [..., V]."""
        return self.word_embeddings.attend(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        context_len: torch.Tensor | int | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        *,
        segment_ids: torch.Tensor | None = None,
        context_end: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V]; attention is fully causal with neither ``context_len``,
        ``segment_ids`` nor ``attention_mask``.

        Args:
            input_ids: LongTensor [B, T].
            position_ids: LongTensor [B, 2, T] (position, block position), or [B, T] for a model
                with 1D positions. None: ``offset..offset+T-1`` and block position 0, where offset
                is the cache length.
            context_len: int or LongTensor [B]: |Part A| per sample (official ``sep``). With a cache,
                it counts from the first cached token.
            attention_mask: bool/0-1 tensor [B, 1, T, S'] with S' >= S (cache + T); the last S key
                columns are used. Takes precedence over ``context_len``.
            kv_cache: a ``KVCache`` extended in place with this call's keys and values.
            segment_ids: int [B, T], packed rows (``collate_pack``): the sample of the row each
                token belongs to; with ``context_end`` [B, T] (where that sample's Part A ends)
                the mask is ``build_segment_mask``'s. Takes precedence over ``context_len``;
                ``attention_mask`` over it. No ``kv_cache``.
            context_end: int [B, T], with ``segment_ids``.
        """
        h = self.hidden(
            input_ids, position_ids, context_len, attention_mask, kv_cache,
            segment_ids=segment_ids, context_end=context_end,
        )  # fmt: skip
        return self.logits(h)


def rows_from(index: torch.Tensor, T: int, first_row: int) -> torch.Tensor:
    """Flat indices b * T + t (t >= first_row) of [B, T] rows as indices of the [B, T - first_row]
    rows ``GLM.hidden(first_row=...)`` returns."""
    return index - first_row * (index // T + 1) if first_row else index


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of a model of ``cfg``, counted on the meta device without allocating."""
    with torch.device("meta"):
        model = GLM(cfg)
    return sum(p.numel() for p in model.parameters())
