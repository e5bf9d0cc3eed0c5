"""medvit: Vision Transformers for medical and face imaging.

One shared ViT backbone (2D and 3D), MAE-family pretraining methods and task apps, all behind the
``medvit`` command. Importing this package is cheap: torch is only imported when a backbone helper
is first used.
"""

from __future__ import annotations

import os
from typing import Any

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


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `medvit --help` free of the torch import (PEP 562).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medvit' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
