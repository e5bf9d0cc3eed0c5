"""The shared ViT backbone (2D and 3D), its registry and weight IO.

Re-exports are lazy: importing the package (e.g. for the torch-free :mod:`~medvit.shared.backbone.formats`
registry) does not import torch; the first use of a re-exported name does.
"""

from __future__ import annotations

from medvit.shared.lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = sorted(_LAZY)
