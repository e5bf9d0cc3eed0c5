"""medvit: Vision Transformers for medical and face imaging.

One shared ViT backbone (2D and 3D), MAE-family pretraining methods and task apps, all behind the
``medvit`` command. Importing this package is cheap: torch is only imported when a backbone helper
is first used.
"""

from __future__ import annotations

import os

from medvit.shared.lazy import lazy_getattr

# albumentations checks PyPI for updates on import; medvit never reaches the network at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

_LAZY = {
    "create_backbone": "medvit.shared.backbone.registry",
    "list_backbones": "medvit.shared.backbone.registry",
    "load_backbone": "medvit.shared.backbone.weights",
    "save_backbone": "medvit.shared.backbone.weights",
    "load_pretrained": "medvit.shared.backbone.weights",
}


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = ["__version__", *_LAZY]
