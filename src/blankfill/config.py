"""Every config dataclass: one frozen section per component, and the run configs made of them.

Configs are frozen, keyword-only dataclasses. ``__post_init__`` only validates and raises
``ValueError`` naming the dotted key. Derived values are properties. A component receives only its
own section (``GLM(cfg.model)``); only the commands and the training loop see a whole run config.
TOML files and ``--section.key=value`` overrides: ``blankfill.configtools`` (re-exported here);
model presets: ``blankfill.presets``; model ``config.json`` (ours and the hub's): ``blankfill.hub``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .configtools import ConfigError, apply_overrides, from_dict, load_config, read_toml, to_dict

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # auto: hardware.choose_precision


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The GLM Transformer (spec §1). Field names follow the official hub ``config.json``."""

    vocab_size: int = 30592  # rows of the word embedding (padded to a multiple of 128)
    num_layers: int = 12  # Transformer blocks
    hidden_size: int = 768  # model width h
    num_attention_heads: int = 12  # heads; head_dim = hidden_size / heads
    max_sequence_length: int = 512  # position ids stay below this; tables have +1 rows
    block_position_encoding: bool = True  # 2D positions (GLM §2.3); False = 1D ablation
    gelu: Literal["tanh", "erf"] = "tanh"  # tanh: official code; erf: the hub port
    attention: Literal["sdpa", "eager"] = "sdpa"  # eager = plain reference math
    layernorm_epsilon: float = 1e-5
    embedding_dropout_prob: float = 0.1  # after the embedding sum
    attention_dropout_prob: float = 0.1  # on the attention probabilities
    output_dropout_prob: float = 0.1  # after attention.dense and mlp.dense_4h_to_h
    initializer_range: float = 0.02  # std of N(0, std); output projections use std/sqrt(2L)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_layers", "hidden_size", "num_attention_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_sequence_length < 2:
            raise ValueError("model.max_sequence_length must be >= 2")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("embedding_dropout_prob", "attention_dropout_prob", "output_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_rows(self) -> int:
        """Rows of the position tables: max_sequence_length + 1 with 2D positions (spec §1.1)."""
        return self.max_sequence_length + (1 if self.block_position_encoding else 0)

    @property
    def num_parameters(self) -> int:
        """Closed-form parameter count (spec §1.10): 12h²+13h per layer, V·h, position tables, LN."""
        h, rows = self.hidden_size, self.position_rows
        tables = (2 if self.block_position_encoding else 1) * rows * h
        return self.num_layers * (12 * h * h + 13 * h) + self.vocab_size * h + tables + 2 * h

    def replace(self, **changes: Any) -> ModelConfig:
        return from_dict(ModelConfig, {**to_dict(self), **changes})


# --------------------------------------------------------------------------------------------
# Data: corruption (blank infilling) and batching. Owned by blankfill.data; fields may grow.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CorruptConfig:
    """How a text becomes Part A + Part B (GLM §2.1, spec §3). Defaults follow the paper."""

    objective: Literal["glm", "masked_lm", "causal_lm"] = "glm"  # or the BERT / GPT baselines
    mask_ratio: float = 0.15  # token level: fraction of tokens in [MASK] spans
    poisson_lambda: float = 3.0  # token level: span lengths ~ Poisson(lambda)
    max_span_length: int = 40  # token level: span lengths truncated to [1, max_span_length)
    sentence_ratio: float = 0.15  # sentence level: fraction of tokens in whole [sMASK] sentences
    document_min_ratio: float = 0.5  # document level: one [gMASK] span of 50-100% of the text
    document_suffix_prob: float = 0.5  # document level: chance of the suffix (generation) form
    token_prob: float = 1.0  # objective mix: probability of the token-level objective
    sentence_prob: float = 0.0  # ... of the sentence-level objective
    document_prob: float = 0.0  # ... of the document-level objective
    mix_per: Literal["sample", "batch"] = "sample"  # choose the objective per sample or batch
    shuffle_spans: bool = True  # Part B in a random span order (GLM §2.1); False: text order
    block_positions: bool = True  # 2D positions; False: 1D ablation (no offset inside a span)
    sentinels: int = 0  # > 0: token-level span i >= 1 gets its own blank [MASK_i] (Table 6)
    sentinel_start: int = 0  # id of [MASK_1]: the tokenizer's vocab_size (spec §2)

    def __post_init__(self) -> None:
        probs = (self.token_prob, self.sentence_prob, self.document_prob)
        rules = {  # "key must ..." -> holds
            "mask_ratio must be in (0, 1)": 0 < self.mask_ratio < 1,
            "sentence_ratio must be in (0, 1)": 0 < self.sentence_ratio < 1,
            "poisson_lambda must be > 0": self.poisson_lambda > 0,
            "max_span_length must be >= 2": self.max_span_length >= 2,
            "objective must be glm, masked_lm or causal_lm": self.objective
            in ("glm", "masked_lm", "causal_lm"),
            "mix_per must be 'sample' or 'batch'": self.mix_per in ("sample", "batch"),
            "document_suffix_prob must be in [0, 1]": 0 <= self.document_suffix_prob <= 1,
            "document_min_ratio must be in (0, 1]": 0 < self.document_min_ratio <= 1,
            "token_prob + sentence_prob + document_prob must be 1 (each >= 0)": min(probs) >= 0
            and abs(sum(probs) - 1.0) <= 1e-6,
            "sentinels, sentinel_start must be >= 0 (sentinels: glm only)": self.sentinel_start >= 0
            and (self.sentinels == 0 or (self.sentinels > 0 and self.objective == "glm")),
        }
        for rule in (r for r, holds in rules.items() if not holds):
            raise ValueError(f"corrupt.{rule}; got {to_dict(self)}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where samples come from and how they are batched."""

    store: str = ""  # folder written by `blankfill prepare`
    seq_len: int = 512  # tokens of original text per sample (rows grow by 2 per span)
    batch_size: int = 16  # samples per micro-batch on each rank
    layout: Literal["pad", "pack"] = "pad"  # one sample per row, or several packed per row
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 1234  # the sample stream depends on (seed, epoch, sample index) only
    valid_fraction: float = 0.0  # documents held out for validation (by document)
    valid_store: str = ""  # a separate store for validation (overrides valid_fraction)
    sample_across_doc: bool = True  # fill short samples with more documents (official default)
    pack_len: int = 0  # layout "pack": row length in tokens; 0: seq_len + seq_len // 4

    def __post_init__(self) -> None:
        if self.layout not in ("pad", "pack"):
            raise ValueError(f"data.layout must be 'pad' or 'pack', got {self.layout!r}")
        if self.pack_len < 0:
            raise ValueError("data.pack_len must be >= 0 (0: seq_len + seq_len // 4)")
        if self.seq_len < 8:
            raise ValueError("data.seq_len must be >= 8")
        if self.batch_size < 1:
            raise ValueError("data.batch_size must be >= 1")
        if self.num_workers < 0:
            raise ValueError("data.num_workers must be >= 0")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError("data.valid_fraction must be in [0, 1)")


# --------------------------------------------------------------------------------------------
# Optimisation (shared by pretraining and fine-tuning). Owned by blankfill.train.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW and the learning-rate schedule (spec §3.4). Defaults: GLM-Base/Large pretraining."""

    lr: float = 4e-4  # peak learning rate, reached at the end of warmup
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup
    warmup: float = 0.05  # fraction of decay_steps spent in linear warmup from 0
    decay_steps: int = 0  # warmup + decay length in optimizer steps; 0 = the run's max_steps
    min_lr_ratio: float = 0.05  # the decay ends at min_lr_ratio * lr and stays there
    weight_decay: float = 0.1  # AdamW decay; never on biases or LayerNorm parameters
    beta1: float = 0.9  # Adam beta1
    beta2: float = 0.98  # Adam beta2
    eps: float = 1e-6  # Adam epsilon
    clip_grad: float = 1.0  # max global gradient L2 norm; 0 disables clipping

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"optim.warmup must be in [0, 1) (a fraction), got {self.warmup}")
        if self.decay_steps < 0:
            raise ValueError("optim.decay_steps must be >= 0 (0 = train.max_steps)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("optim.min_lr_ratio must be in [0, 1]")
        if self.weight_decay < 0:
            raise ValueError("optim.weight_decay must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"optim.{name} must be in [0, 1)")
        if self.eps <= 0:
            raise ValueError("optim.eps must be > 0")
        if self.clip_grad < 0:
            raise ValueError("optim.clip_grad must be >= 0 (0 disables clipping)")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The pretraining loop: length, precision, checkpoints, guards."""

    out_dir: str = "runs/pretrain"  # run folder: config.json, metrics.jsonl, checkpoints/
    tokenizer: str = ""  # tokenizer folder; "" = the tokenizer saved in data.store
    max_steps: int = 1000  # optimizer steps
    max_minutes: float = 0.0  # wall-clock budget: save and stop when exceeded; 0 = none
    grad_accum: int = 1  # micro-batches per optimizer step on each rank
    precision: Precision = "auto"  # autocast dtype; weights, gradients and AdamW stay fp32
    compile: bool = False  # torch.compile every Transformer block
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    keep_freed_memory: bool = True  # CPU: malloc keeps freed memory for the next step (allocator)
    cpu_linears: Literal["auto", "onednn", "mkl"] = "auto"  # fp32 CPU Linears; auto: measured
    init_from: str = ""  # model folder to start from (continued pretraining); "" = fresh init
    device: str = "auto"  # auto: cuda:LOCAL_RANK when available, else cpu
    seed: int = 1234  # model initialisation and dropout
    save_every: int = 1000  # checkpoint interval in steps (and always at the end); 0 = end only
    keep_last: int = 3  # checkpoints kept; older ones are deleted
    eval_every: int = 0  # held-out loss interval (needs a validation split); 0 = never
    eval_batches: int = 20  # micro-batches per held-out evaluation
    max_bad_steps: int = 5  # consecutive non-finite steps before aborting

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "keep_last", "eval_batches", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "eval_every", "max_minutes"):  # 0 = never / no limit
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not self.out_dir:
            raise ValueError("train.out_dir must name a folder")


@dataclass(frozen=True, kw_only=True)
class DistConfig:
    """Data-parallel training under torchrun (spec-free: our own choice of wrappers)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"  # ddp: replicate; fsdp: FSDP2 fully_shard per block
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    checkpoint: Literal["auto", "sharded", "full"] = "auto"  # auto: DCP shards under FSDP


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """What the loop reports, where, how often."""

    every: int = 10  # steps between log lines (metrics.jsonl gets every step)
    progress: bool = True  # tqdm progress bar on rank 0
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0 = known GPUs only

    def __post_init__(self) -> None:
        if self.every < 1 or self.peak_flops < 0:
            raise ValueError("log.every must be >= 1 and log.peak_flops >= 0")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A pretraining run: one TOML table per section (``[model]``, ``[data]``, ...).

    ``[model]`` lists ModelConfig fields directly (the shipped configs spell out their preset's
    fields; a test checks they equal ``PRESETS``). ``model.vocab_size`` must cover the tokenizer.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    corrupt: CorruptConfig = field(default_factory=CorruptConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if self.data.seq_len > self.model.max_sequence_length:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_sequence_length "
                f"({self.model.max_sequence_length}); position ids would not fit"
            )
        if self.corrupt.block_positions != self.model.block_position_encoding:  # one source
            raise ValueError(
                f"corrupt.block_positions={self.corrupt.block_positions} but "
                f"model.block_position_encoding={self.model.block_position_encoding}: set both "
                "alike (false/false is the 1D-positions ablation)"
            )


# --------------------------------------------------------------------------------------------
# Fine-tuning (spec §4.1-4.2). Owned by blankfill.finetune.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """A fine-tuning run of a cloze or seq2seq task. ``None``: the task's official value."""

    pattern_id: int | None = None  # cloze pattern id; None: the task's official default
    head: Literal["cloze", "classifier"] = "cloze"  # cloze scoring, or the [CLS] head ablation
    epochs: int | None = None  # passes over the training set; None: official per-task epochs
    batch_size: int | None = None  # examples per optimizer step; None: official (16, 64 ...)
    max_seq_len: int | None = None  # tokens per input; None: official (capped by the model)
    length_penalty: float = 0.0  # multi-token answers: score / len ** length_penalty
    max_target_len: int = 160  # seq2seq: target tokens kept (incl. [eop]); CNN/DM uses 160
    label_smoothing: float = 0.1  # seq2seq: weight of the uniform term in the target loss
    eval_batch_size: int = 32  # examples per evaluation forward
    seed: int = 1234  # shuffling and head init depend on (seed, epoch) only
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK if available), "cpu", "cuda", "cuda:1" ...
    precision: Precision = "auto"  # as train.precision
    grad_accum: int = 1  # micro-batches per optimizer step (each rank's share of batch_size)
    compile: bool = False  # torch.compile every Transformer block
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    keep_freed_memory: bool = True  # as train.keep_freed_memory
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank (peft) instead of all weights
    lora_merge: bool = True  # merge the adapters into the saved model (else save them apart)
    max_minutes: float = 0.0  # time budget: stop after the step that runs past it (0: none)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_seq_len"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"finetune.{name} must be >= 1 (or unset for the task default)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("finetune.label_smoothing must be in [0, 1)")
        lows = {"eval_batch_size": 1, "grad_accum": 1, "lora_rank": 0, "pattern_id": 0,
                "max_minutes": 0}  # fmt: skip
        for name, low in lows.items():
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise ValueError(f"finetune.{name} must be >= {low}")


def _finetune_optim() -> OptimConfig:
    # Official task scripts (spec §4.1): lr 1e-5, warmup 0.1, linear decay to 0, wd 0.1, Adam
    # with the official argument defaults (0.9, 0.999), eps 1e-8.
    return OptimConfig(lr=1e-5, schedule="linear", warmup=0.1, min_lr_ratio=0.0, beta2=0.999,
                       eps=1e-8)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class FinetuneRunConfig:
    """``blankfill finetune``: TOML tables ``[finetune]`` and ``[optim]``."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    optim: OptimConfig = field(default_factory=_finetune_optim)
    dist: DistConfig = field(default_factory=DistConfig)  # under torchrun: ddp or fsdp


# --------------------------------------------------------------------------------------------
# Decoding (blank filling, spec §4.2 and §4.4)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DecodingConfig:
    """How each blank is decoded. Defaults: greedy, up to 64 tokens per blank."""

    strategy: Literal["greedy", "sample", "beam"] = "greedy"  # how the next token is chosen
    max_new_tokens: int | None = None  # per blank, [eop] included (HF); None: 64 or model limit
    min_length: int = 0  # [eop] is banned until a fill has this many tokens
    temperature: float = 1.0  # sample: logits are divided by this
    top_k: int = 0  # sample: keep the k most likely tokens (0 = all)
    top_p: float = 1.0  # sample: keep the smallest set with this much probability (nucleus)
    num_beams: int = 4  # beam: hypotheses kept per prompt
    length_penalty: float = 1.0  # beam: hypothesis score = sum log-prob / length**length_penalty
    no_repeat_ngram_size: int = 0  # no n-gram of this size repeats inside a fill (0 = off)
    repetition_penalty: float = 1.0  # CTRL penalty on tokens already in the fill (1 = off)
    seed: int | None = None  # sample: seed of the torch.Generator (None = fresh randomness)

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"decoding.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.min_length < 0 or self.min_length > (self.max_new_tokens or self.min_length):
            raise ValueError(
                f"decoding.min_length must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_length}"
            )
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"decoding.temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"decoding.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"decoding.top_p must be in (0, 1], got {self.top_p}")
        if self.num_beams < 1:
            raise ValueError(f"decoding.num_beams must be >= 1, got {self.num_beams}")
        if not math.isfinite(self.length_penalty):
            raise ValueError("decoding.length_penalty must be a finite number")
        if self.no_repeat_ngram_size < 0:
            raise ValueError("decoding.no_repeat_ngram_size must be >= 0 (0 = off)")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(
                f"decoding.repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}"
            )


def pad_vocab(n: int, multiple: int = 128) -> int:
    """Round a vocabulary size up to a multiple (official ``--make-vocab-size-divisible-by``)."""
    return int(math.ceil(n / multiple) * multiple)


__all__ = ["ConfigError", "CorruptConfig", "DataConfig", "DecodingConfig", "DistConfig",
           "FinetuneConfig", "FinetuneRunConfig", "LogConfig", "ModelConfig", "OptimConfig",
           "RunConfig", "TrainConfig", "apply_overrides", "from_dict", "load_config", "pad_vocab",
           "read_toml", "to_dict"]  # fmt: skip
