"""AdamW parameter groups (weight-decay exclusions, layer-wise LR decay) and the per-iteration LR schedule.

References:
    - MAE ``util/lr_decay.py: param_groups_lrd`` (layer-wise decay, ``num_layers = depth + 1``, scale
      ``decay ** (num_layers - layer_id)``) and ``util/lr_sched.py`` (linear warmup, half-cycle cosine to
      ``min_lr``, applied every iteration): https://github.com/facebookresearch/mae
    - timm ``optim/_param_groups.py: param_groups_weight_decay`` (no decay on 1-D params and
      ``no_weight_decay()`` names).
    - BEiT (Bao et al., 2021) introduced layer-wise LR decay for ViT fine-tuning.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

from medvit.shared.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ScheduleConfig", "build_param_groups", "lr_at", "no_weight_decay_names", "warmup_steps_of"]

# Last name component ending like this is a learned token (cls/mask/register/prefix/quality/dist).
_TOKEN_SUFFIXES = ("token", "tokens")
# Any name component containing one of these is a position table (absolute or relative).
_POSITION_KEYS = ("pos_embed", "position_embedding", "relative_position")


class ScheduleConfig(Protocol):
    """The fields of :class:`~medvit.shared.engine.fit.TrainConfig` that :func:`lr_at` reads."""

    steps: int | None
    lr: float
    min_lr: float
    warmup_steps: int
    warmup_fraction: float | None
    schedule: str
    lr_gamma: float
    decay_every: int | None


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names (relative to ``model``) that any submodule's ``no_weight_decay()`` method lists.

    Every module in the tree that defines ``no_weight_decay()`` (timm convention: a set of parameter names
    relative to that module) contributes, with its own prefix, so a task that holds a backbone under
    ``task.backbone`` gets ``backbone.pos_embed`` and so on.

    Args:
        model: The root module (a task or a bare backbone).

    Returns:
        Fully qualified names or name prefixes that must not be weight-decayed.
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if not callable(fn):
            continue
        for name in fn():
            names.add(f"{prefix}.{name}" if prefix else name)
    return names


def _is_no_decay(name: str, param: nn.Parameter, listed: set[str]) -> bool:
    if param.ndim <= 1 or name.endswith(".bias"):  # biases, norm weights/biases, scalars (gamma, temperature)
        return True
    if name in listed or any(name.startswith(f"{n}.") for n in listed):
        return True
    parts = name.split(".")
    if parts[-1].endswith(_TOKEN_SUFFIXES):
        return True
    return any(key in part for part in parts for key in _POSITION_KEYS)


def _layer_decay_owners(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost submodules that define ``layer_id`` (a backbone inside a task; the model itself if it has one)."""
    owners: list[tuple[str, nn.Module]] = []
    for prefix, module in model.named_modules():
        if not callable(getattr(module, "layer_id", None)):
            continue
        if any(prefix == p or prefix.startswith(f"{p}.") or p == "" for p, _ in owners):
            continue  # nested inside an owner already found
        owners.append((prefix, module))
    return owners


def _num_layers(prefix: str, module: nn.Module) -> int:
    blocks = getattr(module, "blocks", None)
    if blocks is None:
        raise ConfigError(
            f"layer_decay: module {prefix or type(module).__name__!r} defines layer_id() but has no `blocks`, "
            "so its depth (num_layers = len(blocks) + 1) is unknown"
        )
    return len(blocks) + 1


def build_param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Split trainable parameters into AdamW groups by weight decay and layer-wise LR scale.

    No weight decay on: 1-D parameters (biases, norm weights), names ending in ``.bias``, learned tokens
    (last name component ending in ``token``/``tokens``: cls, mask, register, prefix, quality), position
    tables (``pos_embed``, ``relative_position*``) and every name listed by a ``no_weight_decay()`` method
    anywhere in the module tree. Frozen parameters (``requires_grad=False``) are left out, unless marked
    ``param.unfreezable = True`` (a backbone a task unfreezes at some epoch): those join their group from the start
    and AdamW leaves them untouched while they get no gradient.

    With ``layer_decay``, the outermost submodules that define ``layer_id(name) -> int`` (MAE convention:
    0 for patch embedding / tokens / position embedding, ``i + 1`` for ``blocks.i``, ``depth + 1`` for the
    rest) scale their parameters by ``layer_decay ** (num_layers - layer_id)`` with
    ``num_layers = len(blocks) + 1``; ``layer_id`` receives the name relative to that submodule. Parameters
    outside every such submodule (task heads, decoders) get scale 1.

    Args:
        model: The task (or a bare backbone).
        weight_decay: Decay for the decayed groups.
        layer_decay: Per-layer LR decay factor in (0, 1], or None to disable.

    Returns:
        Param-group dicts with ``params``, ``param_names``, ``weight_decay``, ``lr_scale`` and ``layer_id``
        (-1 outside any layer-decayed module), in a deterministic order. The schedule sets
        ``group["lr"] = lr_at(step) * group["lr_scale"]``.

    Raises:
        ConfigError: ``layer_decay`` outside (0, 1], or set while no submodule defines ``layer_id``.
    """
    listed = no_weight_decay_names(model)
    owners: list[tuple[str, nn.Module, int]] = []
    if layer_decay is not None:
        if not 0.0 < layer_decay <= 1.0:
            raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay}")
        owners = [(p, m, _num_layers(p, m)) for p, m in _layer_decay_owners(model)]
        if not owners:
            raise ConfigError(
                f"layer_decay={layer_decay} needs a backbone with a layer_id() method; "
                f"none found in {type(model).__name__}"
            )

    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad and not getattr(param, "unfreezable", False):
            continue
        layer_id, scale = -1, 1.0
        for prefix, module, num_layers in owners:
            if prefix == "" or name.startswith(f"{prefix}."):
                layer_id = int(module.layer_id(name[len(prefix) + 1 :] if prefix else name))
                scale = float(layer_decay) ** (num_layers - layer_id)
                break
        no_decay = _is_no_decay(name, param, listed)
        key = (layer_id, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "weight_decay": 0.0 if no_decay else float(weight_decay),
                "lr_scale": scale,
                "layer_id": layer_id,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


def warmup_steps_of(cfg: ScheduleConfig) -> int:
    """Warmup length in optimizer steps (``warmup_fraction`` of ``steps`` when set, else ``warmup_steps``)."""
    if cfg.warmup_fraction is not None:
        return round(cfg.warmup_fraction * (cfg.steps or 0))
    return cfg.warmup_steps


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """Base learning rate for the optimizer step that follows ``step`` completed steps.

    Linear warmup from 0 to ``lr`` over ``W`` steps (``lr * step / W``), then a half-cycle cosine (or a
    linear ramp when ``cfg.schedule == "linear"``) from ``lr`` at ``step = W`` to ``min_lr`` at
    ``step = steps``; MAE's ``util/lr_sched.py`` with iterations instead of fractional epochs. ``exponential``
    multiplies ``lr`` by ``lr_gamma`` every ``decay_every`` steps after warmup (one epoch: torch's
    ``ExponentialLR`` stepped per epoch), never below ``min_lr``. Param groups multiply it by their ``lr_scale``.

    Args:
        step: Completed optimizer steps, ``0 <= step <= cfg.steps``.
        cfg: A resolved config (``steps`` set).

    Returns:
        The learning rate.
    """
    if cfg.steps is None:
        raise ConfigError("lr_at needs a resolved config: `steps` is None (fit() derives it from `epochs`)")
    warmup = warmup_steps_of(cfg)
    if step < warmup:
        return cfg.lr * step / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "exponential":
        # torch's ExponentialLR stepped once per epoch (CellViT/CellVTA): lr * gamma ** completed epochs.
        every = cfg.decay_every or cfg.steps
        return max(cfg.lr * cfg.lr_gamma ** ((step - warmup) // every), cfg.min_lr)
    span = max(cfg.steps - warmup, 1)
    t = min(max((step - warmup) / span, 0.0), 1.0)
    if cfg.schedule == "linear":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - t)
    if cfg.schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ConfigError(f"schedule must be 'cosine', 'linear', 'constant' or 'exponential', got {cfg.schedule!r}")
