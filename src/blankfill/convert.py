"""Official GLM checkpoints in and out: one key table, model-parallel merge/split, hub config.

Our parameter names *are* the official ``GLMModel`` state-dict keys (spec §1.1, model.py), so the
table below has one key column: the only renaming is the hub port's optional ``glm.`` prefix
(``base_model_prefix``). What the table adds per key is what differs between layouts: the shape
the config implies (checked before anything is built) and how a model-parallel rank of the
original Megatron-style training code holds the tensor (``mpu`` layers, ``change_mp.py``):

- ``replicated``: every rank holds the whole tensor (LayerNorms, position tables, and the biases
  of row-parallel layers, which are added after the all-reduce).
- ``rows``: split along dim 0 (``VocabParallelEmbedding``; ``ColumnParallelLinear`` weight/bias).
- ``cols``: split along dim 1 (``RowParallelLinear`` weight: its input features).
- ``qkv``: ``ColumnParallelLinear`` with stride 3: rank r holds ``[q_r; k_r; v_r]``, so merging
  de-interleaves into the MP=1 layout ``[Q; K; V]``.

``to_theirs``/``from_theirs`` and ``merge_model_parallel``/``split_model_parallel`` are all
generated from ``KEY_TABLE``. The hub ``config.json`` is ``blankfill.hub``; reading and writing
folders is ``blankfill.folder.convert_folder`` (the ``blankfill convert`` command).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .config import ConfigError, ModelConfig, from_dict

log = logging.getLogger(__name__)

Partition = Literal["replicated", "rows", "cols", "qkv"]

#: The hub port's ``base_model_prefix``: ``GLMFor*`` heads store the model under ``glm.``.
HUB_PREFIX = "glm."
#: glm-2b's hub checkpoint carries an unused classification head (GLM issue #178).
HEAD_PREFIXES = ("dense.", "out_proj.")
#: All GLM releases use 64-dimensional heads (spec §1.10); used only when no config is given.
RELEASE_HEAD_DIM = 64


@dataclass(frozen=True, kw_only=True)
class KeyRule:
    """One state-dict key template of the table."""

    key: str  # ours == official GLMModel key; "{}" stands for the layer index
    shape: tuple[str, ...]  # symbols: V vocab, P position rows, D hidden, 3D, 4D
    partition: Partition  # how a model-parallel rank holds it (see module docstring)


def _rule(key: str, shape: str, partition: Partition) -> KeyRule:
    return KeyRule(key=key, shape=tuple(shape.split()), partition=partition)


_L = "transformer.layers.{}."
KEY_TABLE: tuple[KeyRule, ...] = (
    _rule("word_embeddings.weight", "V D", "rows"),
    _rule("transformer.position_embeddings.weight", "P D", "replicated"),
    _rule("transformer.block_position_embeddings.weight", "P D", "replicated"),
    _rule(_L + "input_layernorm.weight", "D", "replicated"),
    _rule(_L + "input_layernorm.bias", "D", "replicated"),
    _rule(_L + "attention.query_key_value.weight", "3D D", "qkv"),
    _rule(_L + "attention.query_key_value.bias", "3D", "qkv"),
    _rule(_L + "attention.dense.weight", "D D", "cols"),
    _rule(_L + "attention.dense.bias", "D", "replicated"),
    _rule(_L + "post_attention_layernorm.weight", "D", "replicated"),
    _rule(_L + "post_attention_layernorm.bias", "D", "replicated"),
    _rule(_L + "mlp.dense_h_to_4h.weight", "4D D", "rows"),
    _rule(_L + "mlp.dense_h_to_4h.bias", "4D", "rows"),
    _rule(_L + "mlp.dense_4h_to_h.weight", "D 4D", "cols"),
    _rule(_L + "mlp.dense_4h_to_h.bias", "D", "replicated"),
    _rule("transformer.final_layernorm.weight", "D", "replicated"),
    _rule("transformer.final_layernorm.bias", "D", "replicated"),
)
_PATTERNS = [(re.compile(re.escape(r.key).replace(r"\{\}", r"(\d+)") + "$"), r) for r in KEY_TABLE]


def rule_for(key: str) -> KeyRule | None:
    """The table row a concrete key belongs to, or None for a key GLMModel does not have."""
    for pattern, rule in _PATTERNS:
        if pattern.match(key):
            return rule
    return None


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key the config implies, with its shape (no model is built)."""
    d = cfg.hidden_size
    sizes = {"V": cfg.vocab_size, "P": cfg.position_rows, "D": d, "3D": 3 * d, "4D": 4 * d}
    out = {}
    for rule in KEY_TABLE:
        if "block_position" in rule.key and not cfg.block_position_encoding:
            continue
        keys = (
            [rule.key.format(i) for i in range(cfg.num_layers)] if "{}" in rule.key else [rule.key]
        )
        for key in keys:
            out[key] = tuple(sizes[s] for s in rule.shape)
    return out


def check_state(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> None:
    """Raise a one-line error for a missing key or a tensor whose shape does not fit ``cfg``."""
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in state]
    if missing:
        raise ConfigError(
            f"{source}: missing {len(missing)} weight(s), first {missing[0]!r}; is this a GLM "
            "checkpoint of the same configuration?"
        )
    for key, shape in want.items():
        got = tuple(state[key].shape)
        if got != shape:
            raise ConfigError(
                f"{source}: tensor {key!r} has shape {got} but the config needs {shape}; "
                "the checkpoint and its config do not match"
            )


# --------------------------------------------------------------------------------------------
# Key names: ours <-> official (hub)
# --------------------------------------------------------------------------------------------


def from_theirs(
    state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Official keys (with or without ``glm.``) -> ours; the known unused head is dropped.

    Keys that are neither in the table nor the known head are kept; ``load_weights`` warns about
    them, and ``check_state`` reports what is missing.
    """
    if any(k.startswith(HUB_PREFIX) for k in state):
        state = {k.removeprefix(HUB_PREFIX): v for k, v in state.items()}
    head = sorted(k for k in state if k.startswith(HEAD_PREFIXES))
    if head:
        log.warning("%s: ignoring the unused head weights %s", source, ", ".join(head))
    return {k: v for k, v in state.items() if k not in head}


def to_theirs(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Ours -> official keys (``prefix="glm."`` for the hub port's head classes)."""
    unknown = [k for k in state if rule_for(k) is None]
    if unknown:
        raise ConfigError(f"{unknown[0]!r} is not a GLM parameter; cannot name it officially")
    return {prefix + k: v for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# Model parallelism of the original training code
# --------------------------------------------------------------------------------------------


def _partition(key: str) -> Partition:
    rule = rule_for(key)
    if rule is None:
        raise ConfigError(f"model-parallel checkpoint: unknown key {key!r}; not a GLMModel key")
    return rule.partition


def merge_model_parallel(shards: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Merge the ``module`` state dicts of MP ranks 0..n-1 into one MP=1 state dict.

    Args:
        shards: per rank, in rank order; the stride-3 QKV of each rank is ``[q_r; k_r; v_r]``.

    Returns:
        The MP=1 state dict: QKV rows ``[Q; K; V]``, vocabulary rows concatenated.
    """
    keys = list(shards[0])
    for r, shard in enumerate(shards[1:], 1):
        if set(shard) != set(keys):
            diff = sorted(set(shard) ^ set(keys))
            raise ConfigError(f"model-parallel rank {r} and rank 0 differ in key {diff[0]!r}")
    merged = {}
    for key in keys:
        parts = [s[key] for s in shards]
        how = _partition(key)
        if how == "replicated":
            merged[key] = parts[0]
        elif how == "rows":
            merged[key] = torch.cat(parts, 0)
        elif how == "cols":
            merged[key] = torch.cat(parts, 1)
        else:  # qkv: [q_0;k_0;v_0], [q_1;k_1;v_1] -> [q_0;q_1; k_0;k_1; v_0;v_1]
            thirds = [p.chunk(3, 0) for p in parts]
            merged[key] = torch.cat([t[i] for i in range(3) for t in thirds], 0)
    return merged


def split_model_parallel(
    state: dict[str, torch.Tensor], ways: int
) -> list[dict[str, torch.Tensor]]:
    """Split an MP=1 state dict into ``ways`` ranks, as the official ``change_mp.py`` does."""

    def piece(key: str, t: torch.Tensor, r: int) -> torch.Tensor:
        how = _partition(key)
        dim = 1 if how == "cols" else 0
        n = t.shape[dim] // (3 if how == "qkv" else 1)
        if how != "replicated" and n % ways:
            raise ValueError(f"{key}: size {t.shape[dim]} does not split {ways} ways")
        if how == "replicated":
            return t.clone()
        if how == "qkv":  # rank r takes its slice of each of Q, K, V (stride 3)
            return torch.cat([third.chunk(ways, 0)[r] for third in t.chunk(3, 0)], 0).clone()
        return t.chunk(ways, dim)[r].clone()

    return [{k: piece(k, v, r) for k, v in state.items()} for r in range(ways)]


#: glm-10b-chinese was trained with [gMASK] = 50007 (= eop); the hub tokenizer uses 50009, so the
#: official converter copies embedding row 50007 to 50009 (spec §2).
CHINESE_10B_GMASK_ROWS = (50007, 50009)


def copy_gmask_row(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """glm-10b-chinese: copy embedding row 50007 to 50009, as the official hub converter does."""
    src, dst = CHINESE_10B_GMASK_ROWS
    emb = state["word_embeddings.weight"]
    if emb.shape[0] <= dst:
        raise ConfigError(f"--copy-gmask-row: the vocabulary has only {emb.shape[0]} rows")
    emb = emb.clone()
    emb[dst] = emb[src]
    return {**state, "word_embeddings.weight": emb}


def infer_config(state: dict[str, torch.Tensor], **overrides: Any) -> ModelConfig:
    """A ModelConfig read off the tensor shapes (for training checkpoints without config.json).

    Heads are not visible in the shapes: ``hidden_size // 64`` (every release) unless overridden.
    """
    try:
        vocab, hidden = state["word_embeddings.weight"].shape
        rows = state["transformer.position_embeddings.weight"].shape[0]
    except KeyError as e:
        raise ConfigError(f"cannot infer the config: no {e.args[0]!r} in the checkpoint") from None
    layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
    block = "transformer.block_position_embeddings.weight" in state
    data: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_layers": len(layers),
        "num_attention_heads": max(1, hidden // RELEASE_HEAD_DIM),
        "max_sequence_length": rows - 1 if block else rows,
        "block_position_encoding": block,
    }
    if "num_attention_heads" not in overrides:
        log.warning(
            "no config.json: inferred the config from the shapes, with %d heads of %d (pass "
            "num_attention_heads=N if that is wrong)",
            data["num_attention_heads"],
            RELEASE_HEAD_DIM,
        )
    return from_dict(ModelConfig, {**data, **overrides})
