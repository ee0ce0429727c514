"""Optimizer groups and the learning-rate schedule (spec §3.4)."""

from __future__ import annotations

import math

import pytest
import torch

from blankfill.config import OptimConfig
from blankfill.model import GLM
from blankfill.testing import tiny_config
from blankfill.train.optim import build_optimizer, lr_at, param_groups, schedule_steps


def test_param_groups_no_decay_on_biases_and_layernorm():
    model = GLM(tiny_config())
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith(".weight") and "layernorm" not in n for n in decay["names"])
    assert "word_embeddings.weight" in decay["names"]
    assert "transformer.position_embeddings.weight" in decay["names"]
    assert all(n.endswith("bias") or "layernorm" in n for n in no_decay["names"])
    assert "transformer.final_layernorm.weight" in no_decay["names"]
    n_params = sum(1 for _ in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_params


def test_param_groups_skip_frozen_and_shared():
    lin = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(lin, lin, torch.nn.LayerNorm(4))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    names = [n for g in groups for n in g["names"]]
    assert names == ["0.weight", "0.bias", "2.bias"]


def test_build_optimizer_hyperparameters_and_state_roundtrip():
    model = GLM(tiny_config())
    cfg = OptimConfig()
    opt = build_optimizer(model, cfg)
    g = opt.param_groups[0]
    assert g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6 and g["weight_decay"] == 0.1
    assert opt.param_groups[1]["weight_decay"] == 0.0
    model(torch.randint(0, 300, (1, 8))).sum().backward()
    opt.step()
    opt2 = build_optimizer(model, cfg)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )


def test_lr_cosine_warmup_then_floor():
    cfg = OptimConfig(lr=1e-3, warmup=0.1, decay_steps=100, min_lr_ratio=0.05)
    assert schedule_steps(cfg) == (10, 100)
    lrs = [lr_at(s, cfg) for s in range(150)]
    assert lrs[0] == pytest.approx(1e-3 / 11)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # warmup rises to the peak
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))  # then never rises
    mid = 10 + 45
    assert lrs[mid] == pytest.approx(0.05e-3 + 0.95e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[100] == pytest.approx(0.05e-3) and lrs[149] == pytest.approx(0.05e-3)


def test_lr_linear_constant_and_max_steps_fallback():
    lin = OptimConfig(lr=1.0, warmup=0.0, schedule="linear", min_lr_ratio=0.0)
    assert [lr_at(s, lin, max_steps=4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    const = OptimConfig(lr=2.0, warmup=0.5, decay_steps=10, schedule="constant")
    assert lr_at(9, const) == 2.0 and lr_at(0, const) < 2.0
    with pytest.raises(ValueError, match="decay_steps"):
        lr_at(0, OptimConfig())


@pytest.mark.parametrize(
    "kw, key", [({"lr": 0}, "optim.lr"), ({"warmup": 1.5}, "optim.warmup"), ({"beta2": 1}, "beta2")]
)
def test_optim_config_validation(kw, key):
    with pytest.raises(ValueError, match=key):
        OptimConfig(**kw)
