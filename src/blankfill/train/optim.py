"""AdamW with GLM's parameter groups, and the learning rate as a pure function of the step.

Spec §3.4: AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.1), no weight decay on biases or
LayerNorm parameters, linear warmup from 0 over ``warmup x decay_steps`` steps, then cosine (or
linear) decay to ``min_lr_ratio x lr`` at ``decay_steps``, constant afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig

#: Module types whose parameters never get weight decay (official code: LayerNorm and biases).
NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.RMSNorm,
)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and an undecayed AdamW group.

    Biases and the parameters of normalisation layers (LayerNorm) get no decay, as in the official
    code; every other parameter (linear weights, word and position embeddings) does. A parameter
    shared by several modules (tied weights) appears once. Frozen parameters are left out.

    Args:
        model: any module (a GLM, or a GLM with a fine-tuning head).
        weight_decay: decay of the first group.

    Returns:
        ``[{"params": decay, "weight_decay": weight_decay, "names": [...]},
        {"params": no_decay, "weight_decay": 0.0, "names": [...]}]``; empty groups are dropped.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, NO_DECAY_MODULES) or pname == "bias" or p.ndim < 2:
                no_decay_ids.add(id(p))
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    decay_names: list[str] = []
    no_decay_names: list[str] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in no_decay_ids:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, *, fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, cfg.weight_decay)`` with the config's betas and eps.

    The learning rate starts at ``cfg.lr``; the training loop sets each step's value from
    ``lr_at`` (``set_lr``) before stepping. ``fused=True`` (the engine) uses the fused kernel,
    which can skip a step on device (``found_inf``).
    """
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters; nothing to optimise")
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=fused,
    )


def schedule_steps(cfg: OptimConfig, max_steps: int = 0) -> tuple[int, int]:
    """(warmup_steps, decay_steps): ``cfg.decay_steps`` or else ``max_steps``."""
    total = cfg.decay_steps or max_steps
    if total < 1:
        raise ValueError("set optim.decay_steps (or train.max_steps) to a positive step count")
    return int(cfg.warmup * total), total


def lr_at(step: int, cfg: OptimConfig, max_steps: int = 0) -> float:
    """The learning rate of optimizer step ``step`` (0-based). Pure.

    Warmup is linear from 0: step ``s < W`` gets ``lr * (s + 1) / (W + 1)``, so the first step
    already moves. Then ``cosine``: ``floor + (lr - floor) * (1 + cos(pi * p)) / 2``, ``linear``:
    ``lr - (lr - floor) * p``, with ``p = (s - W) / (decay_steps - W)`` clipped to [0, 1] and
    ``floor = min_lr_ratio * lr`` (spec §3.4); ``constant`` keeps ``lr`` after warmup.

    Args:
        step: optimizer steps already taken.
        cfg: the optim section.
        max_steps: the run's length, used when ``cfg.decay_steps`` is 0.
    """
    warmup, total = schedule_steps(cfg, max_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    floor = cfg.min_lr_ratio * cfg.lr
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.schedule == "cosine":
        return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.lr - (cfg.lr - floor) * p


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["build_optimizer", "lr_at", "param_groups", "schedule_steps", "set_lr"]
