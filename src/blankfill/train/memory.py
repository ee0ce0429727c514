"""How much memory a training step needs per device: an estimate, and a CPU measurement.

``estimate_memory`` adds up, per device:

- weights: fp32 masters (autocast keeps weights fp32); bf16/fp16 add the per-step low-precision
  copies autocast caches (2 bytes per parameter);
- gradients: fp32, one per trained parameter;
- optimizer state: AdamW's two fp32 moments (8 bytes per trained parameter);
- activations: what backward keeps per token and layer. Counted on our model (saved-tensor hooks
  over a block, ``tests/train/test_memory.py``): about 17.3 fp32 values x hidden size per token
  and layer in fp32 (69 bytes x D), 48 bytes x D under bf16/fp16 autocast (layer-norm inputs and
  residuals stay fp32), plus 3.5 bytes per [B, T, T] entry and layer for the attention mask (the
  boolean mask a block keeps and SDPA's temporaries, measured on CPU), plus 2 bytes
  x D of dropout masks when dropout is on. Activation checkpointing keeps only each block's
  input (4 bytes x D) and one block's activations at a time. The output layer runs on the target
  rows only (``target_fraction`` of the tokens): logits, their fp32 copy and log-softmax; the
  last block runs on the rows from the first target column on (``last_block_rows``);
- FSDP (``fsdp=True``) divides weights, gradients and optimizer state by the world size and adds
  the unsharded root (embeddings) and two unsharded blocks (the one running, the one prefetched).

The total is not the sum of the parts: backward frees each block's activations while it creates
that block's gradients, so the peak is weights + optimizer state + the larger of (activations +
the output layer's gradient, made first) and all gradients.

The estimate assumes flash/memory-efficient attention (no [B, H, T, T] probabilities kept; CUDA,
or CPU without attention dropout). Temporaries of one op at a time are not counted, so the true
peak is somewhat higher when activations are small; ``measure_peak`` measures a real CPU step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import ModelConfig

GiB = 2**30

#: Bytes kept for backward per token, layer and hidden unit (measured on our block, see above).
ACT_BYTES_PER_D = {"fp32": 69.0, "bf16": 48.0, "fp16": 48.0}
#: Bytes per [B, T, T] entry and layer: the boolean mask a block keeps and SDPA's temporaries
#: (measured on CPU: 3.5).
MASK_BYTES = 3.5


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    early_gradients: float = 0.0  # gradients that exist while all activations still do

    @property
    def total(self) -> float:
        """The peak: backward frees a block's activations as it creates the block's gradients,
        so only the gradients made first (the tied output layer's) add to all activations."""
        during = max(self.activations + self.early_gradients, self.gradients)
        return self.weights + self.optimizer + during

    def rows(self) -> list[tuple[str, float]]:
        """(name, GiB) per part and the total."""
        parts = ("weights", "gradients", "optimizer", "activations", "total")
        return [(name, getattr(self, name) / GiB) for name in parts]


def parameter_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(all parameters, parameters of one block)."""
    h = cfg.hidden_size
    block = 12 * h * h + 13 * h  # qkv, dense, 4h MLP (+ biases), two LayerNorms
    tables = cfg.vocab_size * h + cfg.position_rows * h
    tables += cfg.position_rows * h if cfg.block_position_encoding else 0
    return tables + cfg.num_layers * block + 2 * h, block


def estimate_memory(
    cfg: ModelConfig,
    *,
    batch_size: int,
    seq_len: int,
    world_size: int = 1,
    precision: str = "fp32",
    fsdp: bool = False,
    activation_checkpointing: bool = False,
    target_fraction: float = 0.15,
    dropout: bool | None = None,
    lora_rank: int = 0,
    last_block_rows: float = 1.0,
) -> MemoryEstimate:
    """Per-device memory of one training step (AdamW, every parameter trained).

    Args:
        cfg: the model.
        batch_size: rows per micro-batch on each device.
        seq_len: tokens per row (Part A + Part B).
        world_size: devices (only FSDP divides by it).
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; weights stay fp32).
        fsdp: shard weights, gradients and optimizer state (FSDP2, per block then root).
        activation_checkpointing: recompute each block in backward.
        target_fraction: share of tokens that are targets (GLM pretraining: ~15% + [eop]s;
            a cloze task: one or a few per row).
        dropout: dropout masks counted (default: whether the config has dropout).
        lora_rank: LoRA adapters of this rank on the block's linear layers are the only trained
            weights (``finetune.lora_rank``): gradients and AdamW state for them only.
        last_block_rows: share of the rows the last block keeps activations for (pretraining:
            the rows from the first target column on, ``TargetLogits``; all of them under
            FlexAttention; default 1, an upper bound).
    """
    if precision not in ACT_BYTES_PER_D:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    n, block = parameter_counts(cfg)
    h, L, tokens = cfg.hidden_size, cfg.num_layers, batch_size * seq_len
    low = precision != "fp32"
    shard = world_size if fsdp else 1
    weights = 4 * n / shard + (2 * n / shard if low else 0)
    if fsdp and world_size > 1:
        root = n - L * block
        weights += (4 + (2 if low else 0)) * (root + 2 * block)  # unsharded while in use
    dropout = cfg.output_dropout_prob > 0 if dropout is None else dropout
    per_layer = tokens * h * (ACT_BYTES_PER_D[precision] + (2 if dropout else 0))
    per_layer += MASK_BYTES * batch_size * seq_len * seq_len  # the attention mask
    if activation_checkpointing:
        layers = L * tokens * h * 4 + per_layer  # block inputs + one block recomputed
    else:
        layers = (L - 1 + last_block_rows) * per_layer
    targets = max(1, int(tokens * target_fraction))
    head = targets * cfg.vocab_size * ((2 if low else 4) + 4 + 4)  # logits, fp32 copy, log-softmax
    embed = tokens * h * (4 * 3)  # embedding sum, final LayerNorm input and output
    trained = n if not lora_rank else L * 16 * lora_rank * h  # r x (in + out) of 4 linears
    weights += 4 * (trained if lora_rank else 0) / shard
    return MemoryEstimate(
        weights=weights,
        gradients=4 * trained / shard,
        optimizer=8 * trained / shard,
        activations=layers + head + embed,
        early_gradients=4 * cfg.vocab_size * h / shard,
    )


def measure_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by torch on the CPU while ``fn`` runs, above what was allocated
    before (the profiler's allocation events, summed in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def format_estimate(est: MemoryEstimate) -> str:
    """A small table: one line per part, GiB, and how the total is made."""
    lines = [f"{name:<12} {gib:10.2f} GiB" for name, gib in est.rows()]
    lines.append("(total = weights + optimizer + the larger of activations + the output layer's "
                 "gradient and all gradients: backward frees activations as gradients appear)")  # fmt: skip
    return "\n".join(lines)


__all__ = [
    "ACT_BYTES_PER_D",
    "MASK_BYTES",
    "MemoryEstimate",
    "estimate_memory",
    "format_estimate",
    "measure_peak",
    "parameter_counts",
]
