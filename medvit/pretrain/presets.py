"""Model presets of the pretraining methods: encoder from the backbone registry + decoder sizes + crop size.

Hi-End-MAE (FengheTan9/Hi-End-MAE ``networks/vit.py`` builders):

========  =============================================  =======  ================  ==========
preset    encoder                                        crop    decoder           params (*)
========  =============================================  =======  ================  ==========
paper     ``vit_hiend_large_patch12_3d`` 1536/12/16 p12  96^3    528 wide, 16 h    368 M
base      ``vit_hiend_base_patch16_3d`` 768/12/12 p16    96^3    384 wide, 12 h    102 M
small     ``vit_small_patch16_3d`` 384/12/6 p16          96^3    264 wide, 8 h     30 M
tiny      96 wide, 4 blocks, 4 heads, p16                48^3    96 wide, 8 h      2.0 M
========  =============================================  =======  ================  ==========

(*) whole pretraining model, fixed position tables included.

``small`` is ours (the official code has no small model): its decoder keeps the paper's head width 33
(264 = 8 x 33, also a multiple of 6 so the 3D sin-cos embedding has no zero channels). ``tiny`` exists for CPU
tests and the demo (27 tokens: few enough that one batch is overfit within 50 CPU steps). All Hi-End-MAE
presets use 2 self-attention + 3 cross-attention decoder blocks with taps
:func:`~medvit.pretrain.hi_end_mae.hiend_taps` (3, 6, 9 for 12 blocks; 1, 2, 3 for 4).

Plain MAE: 3D presets for CT (``tiny``, ``small``, ``base``) and 2D presets (``tiny_2d``, ``small_2d``
= Medical MAE's ``mae_vit_small_patch16_dec512d2b`` with mask ratio 0.9, ``base_2d`` = MAE ViT-B/16 with the
512-wide, 8-block decoder).

Encoder position embedding: every preset pretrains with a **fixed sin-cos table** (``pos_embed="sincos"``, a
``Parameter`` with ``requires_grad=False``), as the reference code does: MAE ``models_mae.py`` (2D table
``[1, 1 + L, D]`` whose cls slot is zero, MAE ``util/pos_embed.py`` channel layout; the thorax Medical MAE recipe
uses the same model code) and Hi-End-MAE (3D table without a cls slot). The 2D presets build on the timm-sized
registry backbones, whose own default is a learned table, so they set ``sincos`` explicitly; a learned, trainable
table stays available as an override::

    build_model(get_preset("mae", "small_2d"), pos_embed="learn")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from medvit.shared.backbone.registry import create_backbone
from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.errors import ConfigError

__all__ = ["METHODS", "Preset", "build_encoder", "build_model", "get_preset", "list_presets"]

METHODS = ("hi-end-mae", "mae")


@dataclass(frozen=True)
class Preset:
    """One named model configuration of a method.

    Attributes:
        method: ``hi-end-mae`` or ``mae``.
        name: preset name.
        backbone: registered backbone name.
        backbone_overrides: architecture kwargs replacing the registry's.
        decoder_embed_dim: decoder width.
        decoder_num_heads: decoder heads.
        decoder_depth: decoder self-attention blocks (Hi-End-MAE: before the cross-attention blocks).
        crop_size: input crop, one value per spatial axis.
        mask_ratio: default mask ratio.
        norm_pix_loss: per-patch normalised targets (always on for Hi-End-MAE).
        lr: default peak learning rate (official Hi-End-MAE: 1e-4, not scaled with the batch).
        description: one line for ``--help`` and logs.
    """

    method: str
    name: str
    backbone: str
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    decoder_embed_dim: int = 512
    decoder_num_heads: int = 16
    decoder_depth: int = 2
    crop_size: tuple[int, ...] = (96, 96, 96)
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    lr: float = 1e-4
    description: str = ""

    @property
    def spatial_dims(self) -> int:
        return len(self.crop_size)


# The CPU-sized 3D model both methods share (tests and the demo): encoder 96/4/4 with 16^3 patches on 48^3 crops,
# decoder 96 wide with 8 heads, lr 1e-3.
_TINY_3D: dict[str, Any] = {
    "backbone": "test_vit_3d",
    "backbone_overrides": {
        "img_size": 48,
        "patch_size": (16, 16, 16),
        "in_chans": 1,
        "embed_dim": 96,
        "depth": 4,
        "num_heads": 4,
        "pos_embed": "sincos",
        "pos_embed_prefix": False,
    },
    "decoder_embed_dim": 96,
    "decoder_num_heads": 8,
    "crop_size": (48, 48, 48),
    "lr": 1e-3,
}

_PRESETS: dict[tuple[str, str], Preset] = {
    (p.method, p.name): p
    for p in (
        # ---------------------------------------------------------------- Hi-End-MAE
        Preset(
            "hi-end-mae",
            "paper",
            "vit_hiend_large_patch12_3d",
            decoder_embed_dim=528,
            decoder_num_heads=16,
            description="released configuration: ViT 1536/12/16, 12^3 patches on 96^3 crops, decoder 528/16",
        ),
        Preset(
            "hi-end-mae",
            "base",
            "vit_hiend_base_patch16_3d",
            decoder_embed_dim=384,
            decoder_num_heads=12,
            description="official base: ViT-B 768/12/12, 16^3 patches on 96^3, decoder 384/12",
        ),
        Preset(
            "hi-end-mae",
            "small",
            "vit_small_patch16_3d",
            decoder_embed_dim=264,
            decoder_num_heads=8,
            description="ViT-S 384/12/6, 16^3 patches on 96^3, decoder 264/8",
        ),
        Preset(
            method="hi-end-mae",
            name="tiny",
            **_TINY_3D,
            description="CPU tests and demo: ViT 96/4/4, 16^3 patches on 48^3 (27 tokens), decoder 96/8",
        ),
        # ---------------------------------------------------------------- MAE, 3D
        Preset(
            method="mae",
            name="tiny",
            **_TINY_3D,
            decoder_depth=2,
            description="CPU tests and demo: ViT 96/4/4 3D, 16^3 patches on 48^3, decoder 96 x 2 blocks",
        ),
        Preset(
            "mae",
            "small",
            "vit_small_patch16_3d",
            decoder_embed_dim=256,
            decoder_num_heads=8,
            decoder_depth=4,
            description="ViT-S 3D, 16^3 patches on 96^3, decoder 256 x 4 blocks",
        ),
        Preset(
            "mae",
            "base",
            "vit_base_patch16_3d",
            decoder_embed_dim=512,
            decoder_num_heads=16,
            decoder_depth=8,
            description="ViT-B 3D, 16^3 patches on 96^3, MAE decoder 512 x 8 blocks",
        ),
        # ---------------------------------------------------------------- MAE, 2D
        Preset(
            "mae",
            "tiny_2d",
            "test_vit_2d",
            backbone_overrides={"in_chans": 1, "pos_embed": "sincos"},
            decoder_embed_dim=32,
            decoder_num_heads=2,
            decoder_depth=1,
            crop_size=(32, 32),
            lr=1e-3,
            description="CPU tests: 2D ViT 32/4/2 on 32^2 grey images",
        ),
        Preset(
            "mae",
            "small_2d",
            "vit_small_patch16_224",
            backbone_overrides={"pos_embed": "sincos"},  # MAE's fixed 2D table (cls slot zero), not learned
            decoder_embed_dim=512,
            decoder_num_heads=16,
            decoder_depth=2,
            crop_size=(224, 224),
            mask_ratio=0.9,
            description="Medical MAE (thorax): ViT-S/16 224, decoder 512 x 2 blocks, mask ratio 0.9",
        ),
        Preset(
            "mae",
            "base_2d",
            "vit_base_patch16_224",
            backbone_overrides={"pos_embed": "sincos"},
            decoder_embed_dim=512,
            decoder_num_heads=16,
            decoder_depth=8,
            crop_size=(224, 224),
            description="MAE ViT-B/16 224, decoder 512 x 8 blocks",
        ),
    )
}


def list_presets(method: str | None = None) -> list[str]:
    """Preset names (of one method, or ``method:name`` for all)."""
    if method is None:
        return [f"{m}:{n}" for m, n in _PRESETS]
    return [n for m, n in _PRESETS if m == method]


def get_preset(method: str, name: str) -> Preset:
    """Look up a preset.

    Raises:
        ConfigError: unknown method or preset (listing the valid ones).
    """
    if method not in METHODS:
        raise ConfigError(f"method: unknown {method!r}; choose one of {', '.join(METHODS)}")
    try:
        return _PRESETS[(method, name)]
    except KeyError:
        raise ConfigError(
            f"preset: unknown {name!r} for method {method}; choose one of {', '.join(list_presets(method))}"
        ) from None


def build_encoder(preset: Preset, **overrides: Any) -> VisionTransformer:
    """The preset's backbone, with its crop size as ``img_size`` (plus ``overrides``)."""
    kwargs = {**preset.backbone_overrides, "img_size": list(preset.crop_size), **overrides}
    return create_backbone(preset.backbone, **kwargs)


def build_model(
    preset: Preset,
    *,
    mask_ratio: float | None = None,
    norm_pix_loss: bool | None = None,
    encoder: VisionTransformer | None = None,
    **encoder_overrides: Any,
) -> nn.Module:
    """Build the full pretraining model (encoder + decoder) of a preset.

    Args:
        preset: from :func:`get_preset`.
        mask_ratio: override of the preset's ratio.
        norm_pix_loss: override for MAE (Hi-End-MAE always normalises targets).
        encoder: an existing encoder to wrap instead of a new one.
        **encoder_overrides: architecture kwargs for the new encoder (e.g. ``drop_path_rate``, or
            ``pos_embed="learn"`` for a learned position table instead of the presets' fixed sin-cos one).

    Returns:
        :class:`~medvit.pretrain.hi_end_mae.HiEndMAE` or :class:`~medvit.pretrain.mae.MAE`.
    """
    enc = encoder if encoder is not None else build_encoder(preset, **encoder_overrides)
    ratio = preset.mask_ratio if mask_ratio is None else mask_ratio
    try:
        if preset.method == "hi-end-mae":
            from medvit.pretrain.hi_end_mae import HiEndMAE

            return HiEndMAE(
                enc,
                decoder_embed_dim=preset.decoder_embed_dim,
                decoder_num_heads=preset.decoder_num_heads,
                decoder_depth=preset.decoder_depth,
                mask_ratio=ratio,
            )
        from medvit.pretrain.mae import MAE

        return MAE(
            enc,
            decoder_embed_dim=preset.decoder_embed_dim,
            decoder_depth=preset.decoder_depth,
            decoder_num_heads=preset.decoder_num_heads,
            mask_ratio=ratio,
            norm_pix_loss=preset.norm_pix_loss if norm_pix_loss is None else norm_pix_loss,
        )
    except ValueError as err:
        raise ConfigError(f"preset {preset.method}:{preset.name}: {err}") from None
