"""UNETR-style segmentation network on any 2D/3D :class:`~medvit.shared.backbone.vit.VisionTransformer`.

The decoder is the one of UNETR (Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation",
WACV 2022), assembled from MONAI's blocks (``UnetrBasicBlock``, ``UnetrUpBlock``, ``UnetOutBlock``,
``UnetResBlock``; their norms, residual blocks and 1x1x1 convolutions then swapped for the same-keyed, same-valued
faster forms of :mod:`medvit.apps.ct_seg.fast_blocks`) around our ViT's ``forward_intermediates``; unlike
``monai.networks.nets.UNETR`` it is not tied to patch 16, 12 blocks, taps (3, 6, 9) or 96^3 crops, and unlike
Hi-End-MAE's downstream copy it needs no trilinear ``Upsample`` to a fixed size.

Geometry. With ``n = len(taps)`` the decoder has ``n`` upsampling stages and ``n + 1`` levels: level 0 is the
input resolution, level ``n`` the token grid. Stage ``j`` (``1..n``) multiplies the resolution of level ``j``
by an integer factor per axis; the factors of every axis multiply to that axis's patch size. By default a
patch is factorised into primes, the ``x2`` stages go next to the image (as in a U-Net) and larger factors
next to the token grid; with fewer primes than stages the coarsest stages get factor 1 (a same-resolution
level), with more the smallest are merged. For 4 taps: patch 16 -> ``(2, 2, 2, 2)``, patch 12 ->
``(2, 2, 3, 1)`` (levels at 1, 1/2, 1/4, 1/12, 1/12 of the input), patch 8 -> ``(2, 2, 2, 1)``.
Any input whose size the patch divides works; nothing is hard-wired to a crop size.

Taps (documented convention). ``taps`` are 0-based block indices, ascending. The shallower ``n - 1`` taps
are **raw** block outputs (no final norm), projected and upsampled (``UnetrPrUpBlock`` style) to levels
``1..n-1`` (shallowest -> finest). The deepest tap feeds the bottom of the decoder **after the encoder's
final LayerNorm**: with the last tap on the last block (the default) this is the encoder's normal output,
which is what MONAI UNETR and Hi-End-MAE's downstream network use (their ``x`` from ``ViT.forward``).
Blocks after the deepest tap would get no gradient, so the encoder is pruned to it.
Default taps: :func:`~medvit.shared.backbone.features.evenly_spaced_taps` ``(depth, 4)`` = (2, 5, 8, 11)
for 12 blocks, i.e. blocks 3/6/9/12 (1-based) as in the UNETR paper. MONAI's code uses
``hidden_states_out[3], [6], [9]`` + final (= our ``(3, 6, 9, 11)``, Project-MONAI/MONAI#4520); so does
Hi-End-MAE's downstream UNETR, and so do :meth:`UNETR.from_monai_unetr` and :meth:`UNETR.from_hi_end_mae` by
default. :meth:`UNETR.from_monai_unetr` then reproduces MONAI's UNETR exactly.

Hi-End-MAE's downstream network (FengheTan9/Hi-End-MAE ``downstream/``, the network behind the paper's
segmentation numbers) is not reproduced exactly by :meth:`UNETR.from_hi_end_mae` alone: its ``factory.py`` loads
the pretrained encoder into a MONAI ``ViT``, which (1) has no cls token, so the pretrained one is dropped and the
sequence holds patch tokens only; (2) uses LayerNorm eps 1e-5 where pretraining used 1e-6; (3) trains the position
embedding (copied from the fixed sin-cos table, then learnable); and (4) has no stochastic depth. medvit by
default keeps the encoder as it was pretrained (cls token, eps 1e-6, fixed table: the network the weights were
trained as) and uses drop path 0.1; :func:`official_downstream_encoder` makes (1)-(3) the official way and ct-seg's
``model.official_downstream`` switch (on in the ``paper`` preset) does that and turns (4) off; with the same
weights the two are different networks (their tap outputs differ). Differences that remain by choice: the last
decoder stage is a transposed convolution, where the official one is a trilinear ``Upsample`` to a fixed 96^3 that
ties the network to 96^3 crops (this decoder runs on any crop the patch divides); the patch embedding is a
``Conv3d``, which gives the same values as the official perceptron ``Linear`` on flattened 1-channel patches. The
training recipe's differences are listed in ``presets/paper.yaml``.

Channels: level ``k < n`` has ``feature_size * 2**k`` channels (MONAI: 16, 32, 64, 128); the bottom has the
ViT width. Module names are MONAI UNETR's (``encoder1..n``, ``decoder2..n+1``, ``out``), so a MONAI UNETR
decoder state dict loads into the 4-tap, patch-16 configuration unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetResBlock, get_conv_layer
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from torch import nn

from medvit.apps.ct_seg.fast_blocks import use_fast_blocks
from medvit.shared.backbone.features import evenly_spaced_taps, tokens_to_spatial
from medvit.shared.backbone.registry import create_backbone
from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.backbone.weights import (
    LoadReport,
    build_vit,
    convert_state_dict,
    detect_format,
    infer_architecture,
    load_backbone,
    load_pretrained,
    read_checkpoint,
    strip_prefixes,
)
from medvit.shared.errors import WeightsError

logger = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL_DOWNSTREAM_NORM_EPS",
    "UNETR",
    "ProjUpBlock",
    "build_encoder_from_checkpoint",
    "official_downstream_encoder",
    "stage_factors",
    "upstream_taps",
]

#: LayerNorm eps of Hi-End-MAE's downstream encoder (a MONAI ``ViT``: PyTorch's default), vs 1e-6 in pretraining.
OFFICIAL_DOWNSTREAM_NORM_EPS = 1e-5

# Keys of a MONAI UNETR outside its ViT: the decoder this module reproduces.
_MONAI_DECODER_PREFIXES = ("encoder1.", "encoder2.", "encoder3.", "encoder4.", "decoder", "out.")


def _prime_factors(n: int) -> list[int]:
    out, d = [], 2
    while n > 1:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 1
    return out


def _axis_factors(patch: int, n_stages: int) -> list[int]:
    """Factors of one axis, fine -> coarse (stage 1 first), multiplying to ``patch``."""
    factors = sorted(_prime_factors(patch))
    while len(factors) > n_stages:  # merge the two smallest: keeps the stages balanced
        a, b = factors[0], factors[1]
        factors = sorted([a * b, *factors[2:]])
    return factors + [1] * (n_stages - len(factors))  # pad at the coarse end


def stage_factors(patch_size: Sequence[int], n_stages: int) -> tuple[tuple[int, ...], ...]:
    """Per-stage, per-axis upsampling factors of the decoder (see the module docstring).

    Args:
        patch_size: the ViT patch size per spatial axis.
        n_stages: number of decoder stages (= number of taps).

    Returns:
        ``n_stages`` tuples, stage 1 (next to the image) first; the product over stages equals ``patch_size``.
    """
    if n_stages < 1:
        raise ValueError(f"need at least one decoder stage, got {n_stages}")
    per_axis = [_axis_factors(int(p), n_stages) for p in patch_size]
    return tuple(tuple(ax[j] for ax in per_axis) for j in range(n_stages))


def upstream_taps(depth: int) -> tuple[int, ...]:
    """MONAI UNETR / Hi-End-MAE downstream taps: raw outputs ``hidden_states_out[round(k * depth / 4)]``, k = 1..3,
    plus the last block (normed).

    (3, 6, 9, 11) for 12 blocks: 0-based, i.e. blocks 4, 7, 10, 12 (1-based). Encoders too shallow for four
    distinct taps this way (fewer than 5 blocks) fall back to :func:`evenly_spaced_taps`.
    """
    taps = sorted({round(k * depth / 4) for k in (1, 2, 3)} | {depth - 1})
    if len(taps) == 4 and taps[-1] == depth - 1:
        return tuple(taps)
    return evenly_spaced_taps(depth, min(4, depth))


class ProjUpBlock(nn.Module):
    """MONAI ``UnetrPrUpBlock`` with a stride per layer: projects a token map up by several stages.

    ``transp_conv_init`` (ViT width -> ``out_channels``) then ``blocks[i] = Sequential(transposed conv,
    residual conv block)``. Key names equal MONAI's, so MONAI UNETR weights load when the strides agree.

    Args:
        spatial_dims: 2 or 3.
        in_channels: ViT width D.
        out_channels: channels of the target level.
        strides: per-layer upsampling factors (tuples per axis), coarse -> fine; one transposed conv each.
        norm_name: MONAI norm name (``instance``).
        res_block: residual (``UnetResBlock``) or plain (``UnetBasicBlock``) conv blocks.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: Sequence[Sequence[int]],
        norm_name: str | tuple = "instance",
        res_block: bool = True,
    ) -> None:
        super().__init__()
        if not strides:
            raise ValueError("ProjUpBlock needs at least one upsampling layer")
        first, rest = tuple(strides[0]), [tuple(s) for s in strides[1:]]
        self.transp_conv_init = get_conv_layer(
            spatial_dims, in_channels, out_channels, kernel_size=first, stride=first, conv_only=True, is_transposed=True
        )
        conv_cls = UnetResBlock if res_block else UnetBasicBlock
        self.blocks = nn.ModuleList(
            nn.Sequential(
                get_conv_layer(
                    spatial_dims,
                    out_channels,
                    out_channels,
                    kernel_size=s,
                    stride=s,
                    conv_only=True,
                    is_transposed=True,
                ),
                conv_cls(spatial_dims, out_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name),
            )
            for s in rest
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, *grid] -> [B, out_channels, *grid * prod(strides)]``."""
        x = self.transp_conv_init(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class UNETR(nn.Module):
    """UNETR decoder on a shared ViT encoder (see the module docstring for geometry and tap conventions).

    Args:
        encoder: a :class:`VisionTransformer` (2D or 3D); pruned in place to the deepest tap.
        num_classes: output channels (background included).
        taps: 0-based block indices, strictly ascending, at least 1; default
            ``evenly_spaced_taps(depth, min(4, depth))``.
        feature_size: channels of the full-resolution level (MONAI: 16; Hi-End-MAE: 32).
        upsample_factors: per-stage factors, stage 1 (next to the image) first, each an int or one int per
            axis; default :func:`stage_factors`. Their product per axis must equal the patch size.
        norm_name: MONAI norm of the conv blocks.
        res_block: residual conv blocks (UNETR default) or plain ones.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        num_classes: int,
        *,
        taps: Sequence[int] | None = None,
        feature_size: int = 16,
        upsample_factors: Sequence[int | Sequence[int]] | None = None,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise TypeError(f"encoder must be a VisionTransformer, got {type(encoder).__name__}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if feature_size < 1:
            raise ValueError(f"feature_size must be >= 1, got {feature_size}")
        depth = len(encoder.blocks)
        taps = tuple(int(t) for t in (taps if taps is not None else evenly_spaced_taps(depth, min(4, depth))))
        self.taps = validate_taps(taps, depth)
        n = len(self.taps)
        sd = encoder.spatial_dims
        patch = tuple(encoder.patch_embed.patch_size)
        if upsample_factors is None:
            factors = stage_factors(patch, n)
        else:
            factors = tuple(
                (int(f),) * sd if isinstance(f, int) else tuple(int(v) for v in f) for f in upsample_factors
            )
            if len(factors) != n:
                raise ValueError(f"upsample_factors has {len(factors)} stages but there are {n} taps")
            if any(len(f) != sd or min(f) < 1 for f in factors):
                raise ValueError(f"upsample_factors {factors}: each stage needs {sd} factors >= 1")
            prod = tuple(math.prod(f[a] for f in factors) for a in range(sd))
            if prod != patch:
                raise ValueError(f"upsample_factors {factors} multiply to {prod}, not the patch size {patch}")
        self.upsample_factors = factors
        if self.taps[-1] < depth - 1:
            logger.info("UNETR: deepest tap is block %d of %d; pruning the blocks after it", self.taps[-1], depth)
            encoder.prune_intermediate_layers(list(self.taps))
        self.encoder = encoder
        self.num_classes = num_classes
        self.feature_size = feature_size
        self.spatial_dims = sd
        self.in_chans = encoder.patch_embed.proj.in_channels
        self.norm_name = norm_name
        self.res_block = res_block
        width = encoder.embed_dim
        ch = [feature_size * 2**k for k in range(n)]  # level k < n

        # Level 0: the raw image, the highest-resolution skip.
        self.encoder1 = UnetrBasicBlock(
            sd, self.in_chans, ch[0], kernel_size=3, stride=1, norm_name=norm_name, res_block=res_block
        )
        # Levels 1..n-1: skip taps (shallowest -> finest level), upsampled by the stages above them.
        for k in range(1, n):
            strides = [factors[j] for j in range(n - 1, k - 1, -1)]  # stage n first (coarse -> fine)
            self.add_module(f"encoder{k + 1}", ProjUpBlock(sd, width, ch[k], strides, norm_name, res_block))
        # Decoder: level k+1 -> level k, concatenated with that level's skip.
        for k in range(n - 1, -1, -1):
            in_ch = width if k == n - 1 else ch[k + 1]
            block = UnetrUpBlock(
                sd,
                in_ch,
                ch[k],
                kernel_size=3,
                upsample_kernel_size=factors[k],
                norm_name=norm_name,
                res_block=res_block,
            )
            self.add_module(f"decoder{k + 2}", block)
        self.out = UnetOutBlock(sd, ch[0], num_classes)
        use_fast_blocks(self)  # same keys and values; faster norms and 1x1x1 convs, in-place norms without autograd

    # ------------------------------------------------------------------ description
    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.encoder.patch_embed.patch_size)

    def decoder_kwargs(self) -> dict[str, Any]:
        """JSON-able constructor arguments besides the encoder (for run sidecars)."""
        return {
            "num_classes": self.num_classes,
            "taps": list(self.taps),
            "feature_size": self.feature_size,
            "upsample_factors": [list(f) for f in self.upsample_factors],
            "norm_name": self.norm_name if isinstance(self.norm_name, str) else list(self.norm_name),
            "res_block": self.res_block,
        }

    def extra_repr(self) -> str:
        return f"taps={self.taps}, factors={self.upsample_factors}, feature_size={self.feature_size}"

    def check_input_size(self, spatial: Sequence[int]) -> None:
        """Raise ``ValueError`` unless the patch size divides every axis of ``spatial``."""
        bad = [(s, p) for s, p in zip(spatial, self.patch_size, strict=True) if s % p or s < p]
        if bad:
            raise ValueError(
                f"input size {tuple(spatial)} is not a multiple of the patch size {self.patch_size} on every axis"
            )

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every voxel.

        Args:
            x: ``[B, C, *spatial]`` with every spatial size a multiple of the patch size.

        Returns:
            ``[B, num_classes, *spatial]`` logits.
        """
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a [B, C, {', '.join('S' * self.spatial_dims)}] input, got {tuple(x.shape)}")
        self.check_input_size(x.shape[2:])
        grid = tuple(s // p for s, p in zip(x.shape[2:], self.patch_size, strict=True))
        final, inter = self.encoder.forward_intermediates(x, list(self.taps), output_fmt="spatial", stop_early=True)
        bottom = tokens_to_spatial(final[:, self.encoder.num_prefix_tokens :], grid)
        n = len(self.taps)
        y = bottom
        for k in range(n - 1, -1, -1):  # each skip is built when its stage needs it: a smaller peak of memory
            skip = self.encoder1(x) if k == 0 else getattr(self, f"encoder{k + 1}")(inter[k - 1])
            y = getattr(self, f"decoder{k + 2}")(y, skip)
            del skip
        return self.out(y).contiguous()  # the blocks work channels-last on CPU; callers get the usual layout

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_registry(
        cls,
        name: str,
        num_classes: int,
        *,
        backbone_overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> UNETR:
        """A randomly initialised network on a registered backbone (``vit_base_patch16_3d``, ``test_vit_3d``...).

        Args:
            name: registry name.
            num_classes: output channels.
            backbone_overrides: architecture kwargs (``img_size``, ``drop_path_rate``...).
            **kwargs: :class:`UNETR` arguments.
        """
        return cls(create_backbone(name, **dict(backbone_overrides or {})), num_classes, **kwargs)

    @classmethod
    def from_export(
        cls, path: str | Path, num_classes: int, *, backbone_overrides: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> UNETR:
        """Encoder from a medvit export (safetensors + sidecar, e.g. written by ``medvit pretrain``).

        The sidecar is kept as ``model.encoder_meta`` (it may carry ``spacing`` and ``hu_window``); the load
        report as ``model.load_report``.
        """
        enc, side = load_backbone(path, expected_missing=("head.*",), **dict(backbone_overrides or {}))
        model = cls(enc, num_classes, **kwargs)
        model.encoder_meta = side  # type: ignore[assignment]
        model.load_report = enc.load_report  # type: ignore[attr-defined]
        return model

    @classmethod
    def from_hi_end_mae(
        cls,
        source: str | Path | Mapping[str, torch.Tensor],
        num_classes: int,
        *,
        num_heads: int | None = None,
        backbone_overrides: Mapping[str, Any] | None = None,
        taps: Sequence[int] | None = None,
        official_downstream: bool = False,
        **kwargs: Any,
    ) -> UNETR:
        """Encoder from the official Hi-End-MAE checkpoint (``{'state_dict': {'module.encoder.*', ...}}``).

        Loaded: ``encoder.*`` (cls token, Conv3d patch embedding, 12 blocks, final norm) and
        ``encoder_pos_embed`` (copied as a fixed sin-cos table, no cls slot). Dropped: the MAE decoder,
        ``decoder_pos_embed``, ``encoder_to_decoder.*``, ``mask_token``. The UNETR decoder starts random, as in
        the official fine-tuning. Taps default to the official downstream ones (3, 6, 9, 11) for 12 blocks.

        The encoder stays as it was pretrained (cls token, LayerNorm eps 1e-6, fixed position table); the official
        downstream network differs from it in four ways (module docstring): pass ``official_downstream=True`` for
        (1)-(3) and ``backbone_overrides={"drop_path_rate": 0.0}`` for (4).
        """
        enc, report = build_encoder_from_checkpoint(
            source, source_format="hi-end-mae", num_heads=num_heads, overrides=backbone_overrides
        )
        if official_downstream:
            enc = official_downstream_encoder(enc)
        depth = len(enc.blocks)
        model = cls(enc, num_classes, taps=taps if taps is not None else upstream_taps(depth), **kwargs)
        model.load_report = report  # type: ignore[attr-defined]
        return model

    @classmethod
    def from_monai_unetr(
        cls,
        source: str | Path | Mapping[str, torch.Tensor],
        num_classes: int | None = None,
        *,
        num_heads: int | None = None,
        load_decoder: bool = True,
        taps: Sequence[int] | None = None,
        feature_size: int | None = None,
        backbone_overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> UNETR:
        """Network from a ``monai.networks.nets.UNETR`` state dict (or a MONAI ``ViT`` one).

        Loaded: the ViT (``vit.*``: conv or perceptron patch embedding, learned position embedding, blocks with
        ``out_proj``/``linear1/2`` renamed, final norm; MONAI>=1.4's unused cross-attention keys dropped) always;
        with ``load_decoder`` also ``encoder1..4``, ``decoder2..5`` and ``out`` when the geometry matches (4 taps,
        factors 2 per stage, same ``feature_size``), which reproduces MONAI's output exactly with the default
        taps (3, 6, 9, 11). ``out.*`` is left random when ``num_classes`` differs from the checkpoint's. What was
        and was not taken is in ``model.load_report`` (``dropped`` lists the checkpoint keys left out,
        ``missing`` the decoder keys left random).

        Args:
            source: file or state dict.
            num_classes: output channels; default the checkpoint's.
            num_heads: attention heads (a state dict does not record them; standard widths are guessed).
            load_decoder: take the MONAI decoder too.
            taps: default MONAI's (3, 6, 9, 11) for 12 blocks.
            feature_size: default the checkpoint's (``encoder1`` output channels).
            backbone_overrides: architecture kwargs.
            **kwargs: further :class:`UNETR` arguments.
        """
        sd, _ = _read_state_dict(source)
        if not any(k.startswith(("vit.", "patch_embedding.")) for k in sd):
            raise WeightsError("not a MONAI UNETR/ViT state dict (no vit.* or patch_embedding.* keys)")
        decoder_sd = {k: v for k, v in sd.items() if k.startswith(_MONAI_DECODER_PREFIXES)}
        ck_fs = _monai_feature_size(decoder_sd)
        ck_classes = int(decoder_sd["out.conv.conv.weight"].shape[0]) if "out.conv.conv.weight" in decoder_sd else None
        if num_classes is None:
            if ck_classes is None:
                raise WeightsError("the MONAI checkpoint has no out.conv.conv.weight: pass num_classes")
            num_classes = ck_classes
        enc, report = build_encoder_from_checkpoint(
            {k: v for k, v in sd.items() if k not in decoder_sd},
            source_format="monai",
            num_heads=num_heads,
            overrides=backbone_overrides,
            patch_hint=_monai_patch_hint(sd, backbone_overrides),
        )
        depth = len(enc.blocks)
        fs = feature_size if feature_size is not None else (ck_fs or 16)
        model = cls(
            enc,
            num_classes,
            taps=taps if taps is not None else upstream_taps(depth),
            feature_size=fs,
            **kwargs,
        )
        report.dropped = sorted(set(report.dropped) - {k for k in decoder_sd})
        model._load_monai_decoder(decoder_sd, report, take=load_decoder)
        model.load_report = report  # type: ignore[attr-defined]
        return model

    def _load_monai_decoder(self, decoder_sd: Mapping[str, torch.Tensor], report: Any, *, take: bool) -> None:
        """Load the MONAI decoder tensors whose name and shape match ours (``take``), and complete ``report``.

        Args:
            decoder_sd: the checkpoint's decoder tensors (``encoder1..4``, ``decoder2..5``, ``out``).
            report: the encoder's load report: the decoder tensors not taken join ``dropped``, ours left random
                join ``missing``.
            take: load them (else all are dropped).
        """
        target = self.state_dict()
        decoder_keys = sorted(k for k in target if not k.startswith("encoder."))
        taken: list[str] = []
        if take and decoder_sd:
            for k, v in decoder_sd.items():
                if k in target and tuple(target[k].shape) == tuple(v.shape):
                    taken.append(k)
                else:
                    report.dropped.append(k)
            self.load_state_dict({k: decoder_sd[k].to(target[k].dtype) for k in taken}, strict=False)
        else:
            report.dropped.extend(decoder_sd)
        report.dropped.sort()
        report.missing = sorted(set(report.missing) | (set(decoder_keys) - set(taken)))
        report.source_format = "monai-unetr"
        logger.info(
            "MONAI UNETR: encoder loaded, %d/%d decoder tensors loaded (%d left random)",
            len(taken),
            len(decoder_keys),
            len(decoder_keys) - len(taken),
        )


def official_downstream_encoder(encoder: VisionTransformer) -> VisionTransformer:
    """The encoder as Hi-End-MAE's official downstream network holds the same weights.

    FengheTan9/Hi-End-MAE ``downstream/factory.py`` (``load_hi_end_mae_10k``) copies the pretrained encoder into a
    MONAI ``ViT`` (``downstream/models/UNETR``): no cls token (the pretrained one is dropped), LayerNorm eps 1e-5
    (PyTorch's default; pretraining used 1e-6), and the position table becomes a trainable parameter initialised
    with the pretrained values. Drop path (the fourth difference: the official network has none) is an
    architecture argument of the caller's, kept as it is here.

    Args:
        encoder: an encoder without prefix tokens other than the cls token (possibly pruned by :class:`UNETR`).

    Returns:
        A new encoder with ``class_token=False``, ``norm_eps=1e-5`` and a learned position table without prefix
        slots; every other argument, the depth and every other tensor are ``encoder``'s.

    Raises:
        ValueError: the encoder has extra or register tokens (the official network has no prefix tokens at all).
    """
    if encoder.extra_token_names or encoder.num_reg_tokens:
        raise ValueError(
            "official_downstream: the official network has no prefix tokens; this encoder has "
            f"{encoder.prefix_token_names()}"
        )
    kwargs = dict(encoder.arch_kwargs)
    kwargs.update(class_token=False, norm_eps=OFFICIAL_DOWNSTREAM_NORM_EPS)
    if kwargs.get("global_pool") == "token":
        kwargs.update(global_pool="avg", fc_norm=False)  # nothing left to pool from; as for MONAI imports
    if encoder.pos_embed is not None:
        kwargs.update(pos_embed="learn", pos_embed_prefix=False)
    new = VisionTransformer(**kwargs)
    if len(new.blocks) > len(encoder.blocks):
        new.prune_intermediate_layers([len(encoder.blocks) - 1])
    sd = {k: v for k, v in encoder.state_dict().items() if k != "cls_token"}
    if encoder.pos_embed is not None and encoder.pos_embed_prefix and encoder.num_prefix_tokens:
        sd["pos_embed"] = sd["pos_embed"][:, encoder.num_prefix_tokens :]  # the cls slot goes with the cls token
    new.load_state_dict(sd)
    new.train(encoder.training)
    return new


def validate_taps(taps: Sequence[int], depth: int) -> tuple[int, ...]:
    """Check 0-based, strictly ascending taps inside a ``depth``-block encoder.

    Raises:
        ValueError: empty, out of range, negative, repeated or unsorted (naming the taps and the depth).
    """
    taps = tuple(int(t) for t in taps)
    if not taps:
        raise ValueError("taps: need at least one block index")
    if any(t < 0 or t >= depth for t in taps):
        raise ValueError(f"taps {taps}: 0-based block indices must lie in 0..{depth - 1} for a {depth}-block encoder")
    if any(b <= a for a, b in zip(taps, taps[1:], strict=False)):
        raise ValueError(f"taps {taps}: must be strictly ascending (shallow -> deep)")
    return taps


def _read_state_dict(source: str | Path | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    if isinstance(source, (str, Path)):
        return read_checkpoint(source)
    return {strip_prefixes(k, ("module.", "_orig_mod.")): v for k, v in source.items()}, {}


def _monai_feature_size(decoder_sd: Mapping[str, torch.Tensor]) -> int | None:
    for key in ("encoder1.layer.conv1.conv.weight", "encoder1.layer.conv1.weight"):
        if key in decoder_sd:
            return int(decoder_sd[key].shape[0])
    return None


def _monai_patch_hint(sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any] | None) -> tuple[int, ...] | None:
    """MONAI perceptron weights do not record the patch; UNETR's is always 16 (overridable)."""
    if overrides and "patch_size" in overrides:
        p = overrides["patch_size"]
        return tuple(p) if not isinstance(p, int) else (p,) * 3
    if any(k.endswith("patch_embedding.patch_embeddings.1.weight") for k in sd):
        return (16, 16, 16)
    return None


def build_encoder_from_checkpoint(
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    source_format: str = "auto",
    num_heads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    patch_hint: Sequence[int] | None = None,
) -> tuple[VisionTransformer, LoadReport]:
    """Build a ViT whose architecture is read from a foreign checkpoint, and load it strictly.

    Args:
        source: file or state dict (timm / MAE / Hi-End-MAE / MONAI ViT or UNETR).
        source_format: ``auto`` or one of the formats of :mod:`medvit.shared.backbone.weights`.
        num_heads: heads (not recorded in weights; standard widths are guessed otherwise).
        overrides: further architecture kwargs.
        patch_hint: patch size for MONAI perceptron weights.

    Returns:
        (encoder, load report); ``head.*`` / ``fc_norm.*`` keys of a classifier are dropped.
    """
    sd, info = _read_state_dict(source)
    fmt = detect_format(sd, info) if source_format == "auto" else source_format
    hints: dict[str, Any] = {}
    if patch_hint is not None:
        hints = {"patch_size": tuple(int(p) for p in patch_hint), "in_chans": 1}
        key = next((k for k in sd if k.endswith("patch_embedding.patch_embeddings.1.weight")), None)
        if key is not None:
            hints["in_chans"] = int(sd[key].shape[1]) // math.prod(hints["patch_size"])
    converted, dropped = convert_state_dict(sd, fmt, hints)
    img_size = (overrides or {}).get("img_size")
    pe: torch.Tensor | None = None
    try:
        kwargs = infer_architecture(converted, fmt)
    except WeightsError:
        # A learned position embedding of a non-cubic grid (e.g. MONAI UNETR trained on 96x96x64) does not say
        # which grid it is: the caller must name the input size it was trained on.
        if "pos_embed" not in converted:
            raise
        if img_size is None:
            n = int(converted["pos_embed"].shape[1])
            raise WeightsError(
                f"the checkpoint's position embedding has {n} tokens, not a cubic grid: give the input size it was "
                "trained on (ct-seg: --set model.checkpoint_img_size=[X,Y,Z])"
            ) from None
        pe = converted.pop("pos_embed")
        kwargs = infer_architecture(converted, fmt)
        patch = kwargs["patch_size"]
        grid = math.prod(int(s) // int(p) for s, p in zip(img_size, patch, strict=True))
        kwargs.update(pos_embed="learn", pos_embed_prefix=int(pe.shape[1]) != grid)
    kwargs["num_classes"] = 0  # a classifier of the checkpoint is not used by the segmentation network
    if num_heads is not None:
        kwargs["num_heads"] = int(num_heads)
    kwargs.setdefault("dynamic_img_size", True)
    where = str(source) if isinstance(source, (str, Path)) else "the encoder checkpoint"
    enc = build_vit(kwargs, source=where, overrides=overrides)
    expected, allowed = ("fc_norm.*",), ("head.*", "fc_norm.*")
    if pe is None:
        report = load_pretrained(enc, sd, source_format=fmt, expected_missing=expected, allow_unexpected=allowed)
        return enc, report
    # Non-cubic grid: the shared loader only resamples cubic tables, so the keys are loaded as already converted
    # (identity "timm" conversion) and the position table, which must fit exactly, is copied here.
    assert enc.pos_embed is not None
    if tuple(pe.shape) != tuple(enc.pos_embed.shape):
        raise WeightsError(
            f"pos_embed: checkpoint {tuple(pe.shape)} does not fit img_size {list(img_size)} "
            f"(model {tuple(enc.pos_embed.shape)})"
        )
    report = load_pretrained(
        enc, converted, source_format="timm", expected_missing=(*expected, "pos_embed"), allow_unexpected=allowed
    )
    with torch.no_grad():
        enc.pos_embed.copy_(pe.to(enc.pos_embed.dtype))
    report.source_format, report.missing = fmt, [k for k in report.missing if k != "pos_embed"]
    report.dropped = sorted({*report.dropped, *dropped})
    return enc, report
