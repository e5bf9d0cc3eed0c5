"""The shared ViT backbone (2D and 3D), its registry and weight IO.

Re-exports are lazy: importing the package (e.g. for the torch-free :mod:`~medvit.shared.backbone.formats`
registry) does not import torch; the first use of a re-exported name does.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "evenly_spaced_taps": "medvit.shared.backbone.features",
    "take_indices": "medvit.shared.backbone.features",
    "tokens_to_spatial": "medvit.shared.backbone.features",
    "PretrainedCfg": "medvit.shared.backbone.registry",
    "backbone_kwargs": "medvit.shared.backbone.registry",
    "create_backbone": "medvit.shared.backbone.registry",
    "list_backbones": "medvit.shared.backbone.registry",
    "register_backbone": "medvit.shared.backbone.registry",
    "VisionTransformer": "medvit.shared.backbone.vit",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medvit.shared.backbone' has no attribute {name!r}")


__all__ = sorted(_LAZY)
