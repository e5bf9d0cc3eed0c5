"""Param groups (weight-decay exclusions, layer-wise LR decay) and the LR schedule against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from medvit.shared.engine.fit import TrainConfig
from medvit.shared.engine.optim import build_param_groups, lr_at, no_weight_decay_names
from medvit.shared.errors import ConfigError


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)


class TinyBackbone(nn.Module):
    """The backbone surface the engine relies on: ``blocks``, ``layer_id``, ``no_weight_decay`` (MAE convention)."""

    def __init__(self, dim: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_tokens = nn.Parameter(torch.zeros(1, 2, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def layer_id(self, name: str) -> int:
        if name.startswith(("patch_embed", "cls_token", "reg_tokens", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


class Task(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.head = nn.Linear(4, 3)
        self.logit_scale = nn.Parameter(torch.ones(1, 1))  # 2-D, excluded only through no_weight_decay()
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale"}


def groups_by_name(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for g in groups:
        assert len(g["params"]) == len(g["param_names"])
        for name in g["param_names"]:
            assert name not in out, f"{name} in two groups"
            out[name] = g
    return out


def test_no_weight_decay_names_are_prefixed() -> None:
    assert no_weight_decay_names(Task()) == {"logit_scale", "backbone.pos_embed", "backbone.cls_token"}


def test_weight_decay_split() -> None:
    task = Task()
    by_name = groups_by_name(build_param_groups(task, weight_decay=0.05))
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert set(by_name) == trainable and not any(n.startswith("frozen.") for n in by_name)
    decayed = {n for n, g in by_name.items() if g["weight_decay"] == 0.05}
    assert decayed == {
        "backbone.patch_embed.weight",
        "backbone.blocks.0.fc.weight",
        "backbone.blocks.1.fc.weight",
        "head.weight",
    }
    no_decay = {n for n, g in by_name.items() if g["weight_decay"] == 0.0}
    assert {
        "backbone.pos_embed",
        "backbone.cls_token",
        "backbone.reg_tokens",
        "logit_scale",
        "head.bias",
        "backbone.norm.weight",
        "backbone.blocks.0.norm.weight",
        "backbone.blocks.1.fc.bias",
    } <= no_decay
    assert all(g["lr_scale"] == 1.0 for g in by_name.values())


@pytest.mark.parametrize("decay", [0.5, 0.75])
def test_layer_decay_scales(decay: float) -> None:
    by_name = groups_by_name(build_param_groups(Task(), weight_decay=0.05, layer_decay=decay))
    num_layers = 3  # depth 2 + 1
    expected_layer = {
        "backbone.patch_embed.weight": 0,
        "backbone.cls_token": 0,
        "backbone.pos_embed": 0,
        "backbone.blocks.0.fc.weight": 1,
        "backbone.blocks.0.norm.bias": 1,
        "backbone.blocks.1.fc.weight": 2,
        "backbone.norm.weight": 3,
    }
    for name, layer in expected_layer.items():
        assert by_name[name]["layer_id"] == layer
        assert by_name[name]["lr_scale"] == pytest.approx(decay ** (num_layers - layer))
    for name in ("head.weight", "head.bias", "logit_scale"):  # outside the backbone
        assert by_name[name]["lr_scale"] == 1.0 and by_name[name]["layer_id"] == -1
    # decay and no-decay params of one layer stay in separate groups
    assert by_name["backbone.blocks.0.fc.weight"] is not by_name["backbone.blocks.0.fc.bias"]


def test_layer_decay_on_bare_backbone_and_missing_layer_id() -> None:
    by_name = groups_by_name(build_param_groups(TinyBackbone(), weight_decay=0.0, layer_decay=0.5))
    assert by_name["pos_embed"]["lr_scale"] == pytest.approx(0.125)
    with pytest.raises(ConfigError, match="layer_id"):
        build_param_groups(nn.Linear(2, 2), weight_decay=0.0, layer_decay=0.5)


def test_groups_feed_adamw() -> None:
    opt = torch.optim.AdamW(build_param_groups(Task(), 0.05, 0.75), lr=1e-3)
    assert all("lr_scale" in g for g in opt.param_groups)
    assert opt.state_dict()["param_groups"][0]["param_names"]  # names travel into checkpoints


def sched(**kw: Any) -> TrainConfig:
    return TrainConfig(**{"steps": 100, "lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 10, **kw})


@pytest.mark.parametrize(
    ("cfg", "step", "expected"),
    [
        (sched(), 0, 0.0),
        (sched(), 5, 5e-4),
        (sched(), 10, 1e-3),
        (sched(), 55, 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5))),
        (sched(), 100, 1e-5),
        (sched(warmup_steps=0, warmup_fraction=0.2), 10, 5e-4),
        (sched(warmup_steps=0, warmup_fraction=0.2), 20, 1e-3),
        (sched(schedule="linear"), 55, (1e-3 + 1e-5) / 2),
        (sched(schedule="linear"), 100, 1e-5),
        (sched(schedule="constant"), 90, 1e-3),
        (sched(warmup_steps=0), 0, 1e-3),
        # ExponentialLR per epoch (CellViT/CellVTA): 10 steps per epoch, gamma 0.95, after 10 warmup steps
        (sched(schedule="exponential", decay_every=10, min_lr=0.0), 19, 1e-3),
        (sched(schedule="exponential", decay_every=10, min_lr=0.0), 20, 1e-3 * 0.95),
        (sched(schedule="exponential", decay_every=10, min_lr=0.0), 100, 1e-3 * 0.95**9),
        (sched(schedule="exponential", decay_every=1, lr_gamma=0.5), 30, 1e-5),  # floored at min_lr
    ],
)
def test_lr_schedule(cfg: TrainConfig, step: int, expected: float) -> None:
    assert lr_at(step, cfg) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_lr_needs_resolved_steps() -> None:
    with pytest.raises(ConfigError, match="steps"):
        lr_at(0, TrainConfig(epochs=3))
