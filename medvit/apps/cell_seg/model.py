"""CellVTA: the adapter-wrapped ViT, CellViT's three-branch HoVer-style decoder and a tissue classifier.

Outputs (all logits/raw, at the input resolution): ``nuclei_binary_map`` ``[B, 2, H, W]`` (background/nucleus),
``hv_map`` ``[B, 2, H, W]`` (channel 0 horizontal/x, channel 1 vertical/y, no tanh), ``nuclei_type_map``
``[B, C + 1, H, W]`` and ``tissue_types`` ``[B, T]``.

Decoder (CellVTA's; the adapter already gives 1/2 .. 1/16 features, so the skips need no deconvolutions). Widths
at ``decoder_width=1`` (the paper); every decoder channel count is multiplied by ``decoder_width`` (rounded, at least
1) for small test and CPU models. ``bottleneck`` = 512 for D >= 512, else 312 (CellViT's rule).

* shared skips: ``decoder0`` image -> 32 -> 64 @ H; ``decoder1`` f1 -> 128 -> 128 @ H/2; ``decoder2`` f2 -> 256 ->
  256 @ H/4; ``decoder3`` f3 -> bottleneck x 2 @ H/8 (Conv-BN-ReLU 3x3 blocks);
* per branch (``nuclei_binary_map_decoder``, ``hv_map_decoder``, ``nuclei_type_maps_decoder``):
  ``bottleneck_upsampler`` f4 -> deconv block -> bottleneck @ H/8; ``decoder3_upsampler`` cat(skip3, b4) -> 3 conv
  blocks -> ConvT -> 256 @ H/4; ``decoder2_upsampler`` cat(skip2, .) -> 2 conv blocks -> ConvT -> 128 @ H/2;
  ``decoder1_upsampler`` cat(skip1, .) -> 2 conv blocks -> ConvT -> 64 @ H; ``decoder0_header`` cat(skip0, .) ->
  2 conv blocks -> 1x1 conv -> outputs.

Parameter counts with ViT-L/16 (D = 1024), 5 nuclei classes, 19 tissues: adapter 22,277,504, decoder 62,121,674,
tissue head 19,475 + the backbone's final LayerNorm 2,048; trainable with the backbone frozen 84,420,701.

Tissue head (``tissue_head``), reading the final tokens through the backbone's final norm:

* ``"pooled"`` (default): the mean of the final patch tokens; the prefix tokens run through the blocks.
* ``"cls"``: the class token, which runs through every block (ViT-Adapter's ``InteractionBlockWithCls``).
* ``"official"``: the published behaviour: the class token bypasses every block, so the head sees
  ``cls_token + pos_embed[0]`` whatever the image (a learned constant; CellVTA's reported tissue accuracy equals the
  majority-class share). Only for parity with released checkpoints, whose patch features were computed without
  the class token in attention.

Deviations from the official code (CellVTA at d323bc3, ``cellvit.py``), on purpose:

* The tissue head sees the image (``"pooled"`` / ``"cls"``), see above; ``"official"`` keeps the published one.
* The shared skip features (``decoder0..3``) are computed once per forward instead of once per branch: identical
  outputs, but in training their BatchNorm running statistics are updated once per step, not three times (the
  original's effective momentum is ``1 - 0.9^3 = 0.271``).
* No Dropout modules in the decoder blocks (the published rate is 0) and no ``regression_loss`` channels.
* Any 2D patch-16 backbone of the registry, any input whose sides are multiples of 16.

Freezing (:meth:`CellVTA.freeze_backbone`): the published frozen set is the backbone's patch embedding, prefix
tokens, position embedding and blocks; its final norm, the adapter, the decoder and the tissue head train. Frozen
blocks stay in whatever mode the model is in (``model.train()`` keeps the backbone's stochastic depth and dropout
active, as published); nothing here switches them to eval.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medvit.apps.cell_seg.adapter import CellVTAEncoder
from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["ADAPTER_DEFAULTS", "TISSUE_HEADS", "CellVTA", "Conv2DBlock", "Deconv2DBlock", "build_cell_model"]

TISSUE_HEADS = ("pooled", "cls", "official")

#: Keyword arguments of :class:`CellVTA` after the class counts, with their defaults (the paper's settings).
ADAPTER_DEFAULTS: dict[str, Any] = {
    "conv_inplane": 64,
    "n_points": 4,
    "deform_num_heads": 8,
    "deform_ratio": 0.5,
    "cffn_ratio": 0.25,
    "init_values": 1e-5,
    "n_segments": 4,
    "extra_extractors": True,
    "drop_path_rate": 0.4,
    "decoder_width": 1.0,
    "tissue_head": "pooled",
}


class Conv2DBlock(nn.Module):
    """``Conv2d(k, same padding) -> BatchNorm2d -> ReLU`` (keys ``block.0``, ``block.1``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, 1, (kernel_size - 1) // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Deconv2DBlock(nn.Module):
    """``ConvTranspose2d(2, stride 2) -> Conv2d(3x3) -> BatchNorm2d -> ReLU``: doubles the resolution."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 2, 2),
            nn.Conv2d(cout, cout, kernel_size, 1, (kernel_size - 1) // 2),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _branch(d: int, ch: Mapping[str, int], n_out: int) -> nn.Sequential:
    """One upsampling branch (CellViT's ``create_upsampling_branch`` layout and names)."""
    bott, c256, c128, c64 = ch["bottleneck"], ch["256"], ch["128"], ch["64"]
    return nn.Sequential(
        OrderedDict(
            [
                ("bottleneck_upsampler", nn.Sequential(Deconv2DBlock(d, bott))),
                (
                    "decoder3_upsampler",
                    nn.Sequential(
                        Conv2DBlock(2 * bott, bott),
                        Conv2DBlock(bott, bott),
                        Conv2DBlock(bott, bott),
                        nn.ConvTranspose2d(bott, c256, 2, 2),
                    ),
                ),
                (
                    "decoder2_upsampler",
                    nn.Sequential(
                        Conv2DBlock(2 * c256, c256), Conv2DBlock(c256, c256), nn.ConvTranspose2d(c256, c128, 2, 2)
                    ),
                ),
                (
                    "decoder1_upsampler",
                    nn.Sequential(
                        Conv2DBlock(2 * c128, c128), Conv2DBlock(c128, c128), nn.ConvTranspose2d(c128, c64, 2, 2)
                    ),
                ),
                (
                    "decoder0_header",
                    nn.Sequential(Conv2DBlock(2 * c64, c64), Conv2DBlock(c64, c64), nn.Conv2d(c64, n_out, 1)),
                ),
            ]
        )
    )


def decoder_channels(embed_dim: int, decoder_width: float) -> dict[str, int]:
    """Decoder channel counts: the paper's 32, 64, 128, 256 and bottleneck (512, or 312 below D = 512), scaled."""
    base = {"32": 32, "64": 64, "128": 128, "256": 256, "bottleneck": 512 if embed_dim >= 512 else 312}
    return {k: max(1, int(round(v * decoder_width))) for k, v in base.items()}


class CellVTA(nn.Module):
    """CellVTA nucleus segmentation and classification network on a registry ViT.

    Args:
        backbone: a 2D patch-16 :class:`~medvit.shared.backbone.vit.VisionTransformer` without a classifier head
            (``num_classes=0``).
        num_nuclei_classes: C nucleus types (the type map has C + 1 channels, 0 = background).
        num_tissue_classes: T tissue types (>= 1).
        conv_inplane, n_points, deform_num_heads, deform_ratio, cffn_ratio, init_values, n_segments,
            extra_extractors, drop_path_rate: adapter settings, see
            :class:`~medvit.apps.cell_seg.adapter.CellVTAEncoder`.
        decoder_width: factor on every decoder channel count (1.0 = the paper).
        tissue_head: ``"pooled"``, ``"cls"`` or ``"official"`` (module docstring).
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        num_nuclei_classes: int,
        num_tissue_classes: int,
        *,
        conv_inplane: int = 64,
        n_points: int = 4,
        deform_num_heads: int = 8,
        deform_ratio: float = 0.5,
        cffn_ratio: float = 0.25,
        init_values: float = 1e-5,
        n_segments: int = 4,
        extra_extractors: bool = True,
        drop_path_rate: float = 0.4,
        decoder_width: float = 1.0,
        tissue_head: str = "pooled",
    ) -> None:
        super().__init__()
        _check_args(backbone, num_nuclei_classes, num_tissue_classes, decoder_width, tissue_head)
        self.num_nuclei_classes = num_nuclei_classes
        self.num_tissue_classes = num_tissue_classes
        self.tissue_head_mode = tissue_head
        self.decoder_width = decoder_width
        self.encoder = CellVTAEncoder(
            backbone,
            conv_inplane=conv_inplane,
            n_points=n_points,
            deform_num_heads=deform_num_heads,
            deform_ratio=deform_ratio,
            cffn_ratio=cffn_ratio,
            init_values=init_values,
            n_segments=n_segments,
            extra_extractors=extra_extractors,
            drop_path_rate=drop_path_rate,
            prefix_through_blocks=tissue_head != "official",
        )
        d = backbone.embed_dim
        self.tissue_head = nn.Linear(d, num_tissue_classes)
        nn.init.trunc_normal_(self.tissue_head.weight, std=0.02)
        nn.init.zeros_(self.tissue_head.bias)
        ch = decoder_channels(d, decoder_width)
        self.decoder0 = nn.Sequential(Conv2DBlock(3, ch["32"]), Conv2DBlock(ch["32"], ch["64"]))
        self.decoder1 = nn.Sequential(Conv2DBlock(d, ch["128"]), Conv2DBlock(ch["128"], ch["128"]))
        self.decoder2 = nn.Sequential(Conv2DBlock(d, ch["256"]), Conv2DBlock(ch["256"], ch["256"]))
        self.decoder3 = nn.Sequential(Conv2DBlock(d, ch["bottleneck"]), Conv2DBlock(ch["bottleneck"], ch["bottleneck"]))
        self.nuclei_binary_map_decoder = _branch(d, ch, 2)
        self.hv_map_decoder = _branch(d, ch, 2)
        self.nuclei_type_maps_decoder = _branch(d, ch, num_nuclei_classes + 1)
        self.backbone_frozen = False
        self.spec: dict[str, Any] | None = None  # set by build_cell_model

    @property
    def backbone(self) -> VisionTransformer:
        """The wrapped ViT (``encoder.backbone``)."""
        return self.encoder.backbone

    def decoder_modules(self) -> list[nn.Module]:
        """The decoder: shared skips and the three branches."""
        return [
            self.decoder0,
            self.decoder1,
            self.decoder2,
            self.decoder3,
            self.nuclei_binary_map_decoder,
            self.hv_map_decoder,
            self.nuclei_type_maps_decoder,
        ]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict the maps and tissue logits.

        Args:
            x: normalised images ``[B, 3, H, W]``, H and W multiples of 16.

        Returns:
            ``nuclei_binary_map [B, 2, H, W]``, ``hv_map [B, 2, H, W]``, ``nuclei_type_map [B, C + 1, H, W]``
            (logits / raw values) and ``tissue_types [B, T]`` (logits).
        """
        (f1, f2, f3, f4), tokens = self.encoder(x)
        skips = (self.decoder0(x), self.decoder1(f1), self.decoder2(f2), self.decoder3(f3))
        return {
            "nuclei_binary_map": _upsample(skips, f4, self.nuclei_binary_map_decoder),
            "hv_map": _upsample(skips, f4, self.hv_map_decoder),
            "nuclei_type_map": _upsample(skips, f4, self.nuclei_type_maps_decoder),
            "tissue_types": self.tissue_head(self._tissue_features(tokens)),
        }

    def _tissue_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, P + L, D]`` final tokens -> ``[B, D]`` normed tissue features."""
        bb = self.backbone
        pooled = self.tissue_head_mode == "pooled"
        feat = tokens[:, bb.num_prefix_tokens :].mean(dim=1) if pooled else tokens[:, 0]
        # One of norm / fc_norm is a LayerNorm, the other Identity (which one depends on the backbone's pooling).
        return bb.fc_norm(bb.norm(feat))

    def frozen_backbone_parameters(self) -> list[nn.Parameter]:
        """The published frozen set: patch embedding, prefix tokens, position embedding, blocks."""
        bb = self.backbone
        params = list(bb.patch_embed.parameters()) + list(bb.prefix_parameters()) + list(bb.blocks.parameters())
        if bb.pos_embed is not None:
            params.append(bb.pos_embed)
        return params

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the backbone's patch embedding, prefix tokens, position embedding and blocks.

        The backbone's final norm stays trainable. A fixed sin-cos position embedding stays frozen either way.
        Modes are not touched: frozen blocks keep running in train mode under ``model.train()``.
        """
        bb = self.backbone
        for p in self.frozen_backbone_parameters():
            p.requires_grad_(not frozen)
        if bb.pos_embed is not None and bb.pos_embed_type != "learn":
            bb.pos_embed.requires_grad_(False)
        self.backbone_frozen = frozen


def _upsample(skips: tuple[torch.Tensor, ...], f4: torch.Tensor, branch: nn.Module) -> torch.Tensor:
    """One branch: bottleneck at 1/8, then concatenate each skip and upsample to full resolution."""
    s0, s1, s2, s3 = skips
    b = branch.bottleneck_upsampler(f4)
    b = branch.decoder3_upsampler(torch.cat([s3, b], dim=1))
    b = branch.decoder2_upsampler(torch.cat([s2, b], dim=1))
    b = branch.decoder1_upsampler(torch.cat([s1, b], dim=1))
    return branch.decoder0_header(torch.cat([s0, b], dim=1))


def _check_args(
    backbone: VisionTransformer, num_nuclei: int, num_tissue: int, decoder_width: float, tissue_head: str
) -> None:
    if tissue_head not in TISSUE_HEADS:
        raise ValueError(f"tissue_head must be one of {', '.join(TISSUE_HEADS)}, got {tissue_head!r}")
    if tissue_head != "pooled" and not backbone.has_class_token:
        raise ValueError(f"tissue_head={tissue_head!r} reads the class token; the backbone has none (use 'pooled')")
    if int(num_nuclei) != num_nuclei or num_nuclei < 1:
        raise ValueError(f"num_nuclei_classes must be a positive integer, got {num_nuclei!r}")
    if int(num_tissue) != num_tissue or num_tissue < 1:
        raise ValueError(f"num_tissue_classes must be a positive integer, got {num_tissue!r}")
    if not 0 < decoder_width <= 4:
        raise ValueError(f"decoder_width must be in (0, 4], got {decoder_width!r}")
    if backbone.num_classes:
        raise ValueError("the backbone must have no classifier head (num_classes=0); CellVTA has its own tissue head")


_SPEC_KEYS = ("backbone", "backbone_overrides", "num_nuclei_classes", "num_tissue_classes", "adapter")


def resolve_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a model spec and fill the adapter defaults (the JSON-able form stored beside the weights).

    Raises:
        ConfigError: a missing or unknown key, naming it.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"cell model spec must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise ConfigError(f"cell model spec: unknown key(s) {', '.join(unknown)}; known: {', '.join(_SPEC_KEYS)}")
    for key in ("backbone", "num_nuclei_classes", "num_tissue_classes"):
        if key not in spec:
            raise ConfigError(f"cell model spec: missing key {key!r}")
    adapter = dict(spec.get("adapter") or {})
    bad = sorted(set(adapter) - set(ADAPTER_DEFAULTS))
    if bad:
        raise ConfigError(
            f"cell model spec: unknown adapter key(s) {', '.join(bad)}; known: {', '.join(ADAPTER_DEFAULTS)}"
        )
    overrides = spec.get("backbone_overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError("cell model spec: backbone_overrides must be a mapping")
    return {
        "backbone": str(spec["backbone"]),
        "backbone_overrides": dict(overrides),
        "num_nuclei_classes": spec["num_nuclei_classes"],
        "num_tissue_classes": spec["num_tissue_classes"],
        "adapter": {**ADAPTER_DEFAULTS, **adapter},
    }


def build_cell_model(spec: Mapping[str, Any]) -> CellVTA:
    """Build a randomly initialised CellVTA from its spec.

    Args:
        spec: ``{"backbone": registry name, "backbone_overrides": {...}, "num_nuclei_classes": C,
            "num_tissue_classes": T, "adapter": {CellVTA keyword arguments}}``.

    Returns:
        The model; ``model.spec`` holds the resolved spec (defaults filled in, JSON-able).

    Raises:
        ConfigError: a bad spec key or value (naming it). WeightsError: an unknown backbone name.
    """
    from medvit.shared.backbone.registry import create_backbone

    resolved = resolve_spec(spec)
    backbone = create_backbone(resolved["backbone"], **resolved["backbone_overrides"])
    try:
        model = CellVTA(backbone, resolved["num_nuclei_classes"], resolved["num_tissue_classes"], **resolved["adapter"])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"cell model spec: {err}") from None
    model.spec = resolved
    return model
