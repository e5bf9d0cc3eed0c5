"""Backbone registry: ``@register_backbone`` entrypoints, ``create_backbone``, ``list_backbones``.

Names are ``arch`` or ``arch.tag``; a tag names a weight file described by a :class:`PretrainedCfg`
(local files only: nothing is downloaded). Each entrypoint is one line of architecture kwargs; the class
lives in ``vit.py``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.errors import ConfigError, WeightsError
from medvit.shared.schema import SchemaError, check_arch_kwargs

_ENTRYPOINTS: dict[str, Callable[..., VisionTransformer]] = {}
_DEFAULT_KWARGS: dict[str, dict[str, Any]] = {}
_PRETRAINED: dict[str, PretrainedCfg] = {}


@dataclass(frozen=True)
class PretrainedCfg:
    """Metadata of one weight file (timm's ``PretrainedCfg``, trimmed to what medvit needs).

    Attributes:
        file: path relative to ``MEDVIT_WEIGHTS`` (or absolute).
        source_format: ``medvit|timm|mae|hi-end-mae|monai``.
        intensity: HU window or mean/std the weights expect.
        spacing: voxel spacing in mm (3D CT weights).
    """

    file: str
    source_format: str = "medvit"
    intensity: dict[str, Any] = field(default_factory=dict)
    spacing: tuple[float, ...] | None = None
    data_card: str | None = None
    license: str | None = None
    paper: str | None = None
    notes: str = ""


def register_backbone(fn: Callable[..., VisionTransformer]) -> Callable[..., VisionTransformer]:
    """Register an entrypoint under its function name."""
    _ENTRYPOINTS[fn.__name__] = fn
    return fn


def register_pretrained(name: str, cfg: PretrainedCfg) -> None:
    """Describe a local weight file for ``arch.tag``."""
    arch = name.split(".")[0]
    if arch not in _ENTRYPOINTS:
        raise KeyError(f"unknown architecture {arch!r} for pretrained tag {name!r}")
    _PRETRAINED[name] = cfg


def list_backbones(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Sorted registered names matching a shell pattern (with tags when ``pretrained``)."""
    names = _PRETRAINED if pretrained else _ENTRYPOINTS
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def backbone_kwargs(name: str) -> dict[str, Any]:
    """Architecture kwargs of a registered entrypoint (without overrides)."""
    arch = name.split(".")[0]
    if arch not in _DEFAULT_KWARGS:
        raise WeightsError(f"unknown backbone {name!r}; see `medvit weights list`")
    return dict(_DEFAULT_KWARGS[arch])


def create_backbone(name: str, pretrained: bool | str = False, **overrides: Any) -> VisionTransformer:
    """Build a registered backbone.

    Args:
        name: ``arch`` or ``arch.tag``.
        pretrained: False, True (use the tag's ``PretrainedCfg.file``) or a path to a local file.
        **overrides: architecture kwargs replacing the entrypoint's (e.g. ``in_chans=1``, ``img_size=...``).

    Returns:
        The model; when weights are loaded, its ``load_report`` attribute holds the ``LoadReport``.
    """
    arch, _, tag = name.partition(".")
    if arch not in _ENTRYPOINTS:
        close = fnmatch.filter(_ENTRYPOINTS, f"*{arch.split('_')[0]}*")[:5]
        raise WeightsError(f"unknown backbone {arch!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    _check_overrides(arch, overrides)
    model = _ENTRYPOINTS[arch](**overrides)
    if pretrained:
        from medvit.shared.backbone.weights import load_pretrained
        from medvit.shared.paths import weights_dir

        if isinstance(pretrained, str):
            path = pretrained
        else:
            if name not in _PRETRAINED:
                raise WeightsError(f"no pretrained weights registered for {name!r}; pass a local file instead")
            path = str(weights_dir() / _PRETRAINED[name].file)
        model.load_report = load_pretrained(model, path)  # type: ignore[attr-defined]
    return model


def _check_overrides(arch: str, overrides: dict[str, Any]) -> None:
    """Refuse overrides of a one-line entrypoint that are unknown, malformed or make the model absurdly large.

    Raises:
        ConfigError: naming the backbone and the problem (they come from a config's ``backbone_overrides``).
    """
    if arch not in _DEFAULT_KWARGS:
        return  # a custom entrypoint takes its own keywords
    try:
        check_arch_kwargs(overrides, partial=True)
        check_arch_kwargs({**_DEFAULT_KWARGS[arch], **overrides})
    except SchemaError as err:
        raise ConfigError(f"backbone {arch!r} overrides: {err}") from None


def _define(name: str, **kwargs: Any) -> None:
    """Register ``name`` as an entrypoint with default kwargs (the one-line-per-model idiom)."""

    def entry(**overrides: Any) -> VisionTransformer:
        return VisionTransformer(**{**kwargs, **overrides})

    entry.__name__ = name
    entry.__doc__ = f"{name}: {kwargs}"
    _DEFAULT_KWARGS[name] = dict(kwargs)
    register_backbone(entry)


# ----------------------------------------------------------------------------- 2D (timm sizes)
_define("vit_tiny_patch16_224", img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)
_define("vit_small_patch16_224", img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)
_define("vit_base_patch16_224", img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
_define("vit_large_patch16_224", img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16)

# ----------------------------------------------------------------------------- 3D, 1-channel CT, 96^3
# Fixed 3D sin-cos position embedding without prefix slots (Hi-End-MAE layout).
_3D = dict(img_size=96, patch_size=(16, 16, 16), in_chans=1, pos_embed="sincos", pos_embed_prefix=False)
_define("vit_tiny_patch16_3d", **_3D, embed_dim=192, depth=12, num_heads=3)
_define("vit_small_patch16_3d", **_3D, embed_dim=384, depth=12, num_heads=6)
_define("vit_base_patch16_3d", **_3D, embed_dim=768, depth=12, num_heads=12)
_define("vit_large_patch16_3d", **_3D, embed_dim=1024, depth=24, num_heads=16)
# Hi-End-MAE's released encoder: 1536 wide, 12 blocks, 16 heads, 12^3 patches on 96^3 crops (512 tokens).
_define(
    "vit_hiend_large_patch12_3d",
    **{**_3D, "patch_size": (12, 12, 12)},
    embed_dim=1536,
    depth=12,
    num_heads=16,
)
_define("vit_hiend_base_patch16_3d", **_3D, embed_dim=768, depth=12, num_heads=12)

# ----------------------------------------------------------------------------- ViT-FIQA face ViT
# insightface arcface_torch geometry: 112 px, patch 9 -> 12x12 = 144 tokens; ReLU6 MLP, no qkv bias;
# a learnable quality token at position 0 with a learned position embedding (145 slots).
_FIQA = dict(
    img_size=112,
    patch_size=9,
    in_chans=3,
    embed_dim=512,
    num_heads=8,
    qkv_bias=False,
    act="relu6",
    class_token=False,
    extra_tokens=("quality",),
    pos_embed="learn",
    global_pool="none",
    drop_path_rate=0.1,
)
_define("vit_fiqa_small_patch9_112", **_FIQA, depth=12)
_define("vit_fiqa_base_patch9_112", **_FIQA, depth=24)

# ----------------------------------------------------------------------------- tiny models for tests
_define("test_vit_2d", img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
_define(
    "test_vit_3d",
    img_size=32,
    patch_size=(8, 8, 8),
    in_chans=1,
    embed_dim=48,
    depth=4,
    num_heads=2,
    pos_embed="sincos",
    pos_embed_prefix=False,
)
_define(
    "test_vit_fiqa",
    **{**_FIQA, "drop_path_rate": 0.0, "embed_dim": 64, "num_heads": 2},
    depth=2,
)
