"""The shared ViT backbone (2D and 3D), its registry and weight IO.

Importing this package imports torch; the CLI imports it lazily.
"""

from medvit.shared.backbone.features import evenly_spaced_taps, take_indices, tokens_to_spatial
from medvit.shared.backbone.registry import (
    PretrainedCfg,
    backbone_kwargs,
    create_backbone,
    list_backbones,
    register_backbone,
)
from medvit.shared.backbone.vit import VisionTransformer

__all__ = [
    "PretrainedCfg",
    "VisionTransformer",
    "backbone_kwargs",
    "create_backbone",
    "evenly_spaced_taps",
    "list_backbones",
    "register_backbone",
    "take_indices",
    "tokens_to_spatial",
]
