"""The CellVTA adapter: a CNN spatial prior and deformable cross-attention around any 2D ViT of the registry.

CellVTA (Zheng et al. 2025) wraps a frozen ViT-L/16 (UNI) with a ViT-Adapter-style side network moved to twice the
resolution, so that the decoder gets features at 1/2, 1/4, 1/8 and 1/16 of the input:

1. **Spatial prior module** (:class:`SpatialPriorModule`): a 3x3-conv stem to 1/2 and three stride-2 stages to
   1/4, 1/8, 1/16 (``conv_inplane`` 64 -> 128 -> 256 -> 256 channels), each mapped to the ViT width D by a 1x1
   conv. The 1/4, 1/8, 1/16 maps become the adapter tokens ``c`` (with a learned level embedding per scale); the
   1/2 map is kept for the output.
2. **Interaction blocks** (:class:`InteractionBlock`), one around each of ``n_segments`` equal runs of ViT blocks:
   the *injector* adds deformable attention from the ViT patch tokens (queries, one reference point per patch)
   to the 3 adapter levels, scaled by a per-channel ``gamma`` (init ``init_values``); the ViT blocks run; the
   *extractor* updates the adapter tokens by deformable attention to the ViT tokens (1 level) plus a ConvFFN (a
   depthwise 3x3 conv, one kernel shared by the 3 scales, each applied on its own 2-D grid) under DropPath. The
   last block has two extra extractors.
3. **Output fusion**: ``c1 = ConvTranspose(c2) + spm_c1``; the patch tokens after each segment (not normed) are
   bilinearly upsampled x8, x4, x2, x1 and added to c1..c4; a BatchNorm per level gives f1..f4.

Shapes for a 256 x 256 input and D = 1024: adapter tokens 64^2 + 32^2 + 16^2 = 5376, ViT tokens 16^2 = 256;
f1 ``[B, 1024, 128, 128]``, f2 ``[B, 1024, 64, 64]``, f3 ``[B, 1024, 32, 32]``, f4 ``[B, 1024, 16, 16]``.

The backbone needs patch size 16 (its tokens are the 1/16 level) and inputs whose sides are multiples of 16; the
adapter width is the backbone's ``embed_dim``. Block segments: ``depth`` blocks split into ``n_segments`` runs as
equal as possible, the first ``depth % n_segments`` runs one block longer (24 blocks / 4 = CellVTA's [0-5],
[6-11], [12-17], [18-23]). The four fused ViT features are the outputs of segments ``ceil(k * n / 4) - 1`` for
k = 1..4 (segments 1..4 when n = 4; with fewer segments a segment output feeds several levels).

Deviations from the official code (CellVTA at d323bc3, ``cellvit_adapter.py`` and ViT-Adapter's
``adapter_modules.py``), on purpose:

* Prefix tokens (section "tissue head" of :mod:`medvit.apps.cell_seg.model`): CellVTA strips the class token
  before every segment and re-attaches it untouched, so no transformer block ever sees it and the tissue head is a
  constant. Here ``prefix_through_blocks=True`` (the default of the model's ``"pooled"`` and ``"cls"`` tissue heads)
  runs the prefix tokens (class, registers) through every block together with the patch tokens, as ViT-Adapter's
  ``InteractionBlockWithCls`` does; the injector and extractor still see patch tokens only. ``False`` is the
  published behaviour (tissue head ``"official"``), which released checkpoints need to reproduce their outputs.
* Deformable attention runs on PyTorch's ``grid_sample`` (CPU and GPU) instead of the compiled CUDA kernel (same
  formula, see :mod:`medvit.apps.cell_seg.deform_attn`).
* Initialisation: ViT-Adapter's (Linear trunc-normal 0.02, convolutions He-normal on fan-out, norms 1/0, level
  embedding N(0, 1), then the Deformable-DETR init of every deformable attention). CellVTA's encoder constructor
  afterwards runs timm's ViT init over the whole encoder, which re-draws every adapter Linear (deformable offsets
  and attention weights included) from trunc-normal 0.02 with zero bias (read in the code, not executed); the
  intended Deformable-DETR init is kept here.
* The ViT is any registry backbone (its own position-embedding resampling, prefix tokens, stochastic depth); the
  ViT-L/16 layout of UNI is one configuration. BatchNorm is plain ``BatchNorm2d`` (ViT-Adapter used SyncBN).

References:
    Zheng et al., "CellVTA: Enhancing Vision Foundation Models for Accurate Cell Segmentation and Classification",
    arXiv 2504.00784 (https://github.com/JieZheng-ShanghaiTech/CellVTA).
    Chen et al., "Vision Transformer Adapter for Dense Predictions", ICLR 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath
from torch import nn

from medvit.apps.cell_seg.deform_attn import MSDeformAttn, reference_points
from medvit.shared.backbone.vit import VisionTransformer

__all__ = [
    "PATCH",
    "CellVTAEncoder",
    "ConvFFN",
    "Extractor",
    "Injector",
    "InteractionBlock",
    "SpatialPriorModule",
    "fusion_taps",
    "segment_bounds",
]

PATCH = 16  # the ViT tokens are the 1/16 level of the adapter


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """CNN stem at 1/2 .. 1/16 (CellVTA's version of ViT-Adapter's SPM, one octave finer).

    Args:
        inplanes: stem width c; the stages have c, 2c, 4c, 4c channels before the 1x1 projections.
        embed_dim: output width D of every level.
    """

    def __init__(self, inplanes: int = 64, embed_dim: int = 1024) -> None:
        super().__init__()
        c = inplanes
        # The stride-2 conv ending the stem has no norm/activation (it replaces ViT-Adapter's max-pool).
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, c, 1),
            *_conv_bn_relu(c, c, 1),
            *_conv_bn_relu(c, c, 1),
            nn.Conv2d(c, c, 3, 2, 1, bias=False),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(c, c, 1), *_conv_bn_relu(c, 2 * c, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * c, 2 * c, 1), *_conv_bn_relu(2 * c, 4 * c, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * c, 4 * c, 1), *_conv_bn_relu(4 * c, 4 * c, 2))
        self.fc1 = nn.Conv2d(c, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * c, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * c, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * c, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` -> maps ``[B, D, H / 2^k, W / 2^k]`` for k = 1, 2, 3, 4."""
        s1 = self.stem(x)
        s2 = self.conv2(s1)
        s3 = self.conv3(s2)
        s4 = self.conv4(s3)
        return self.fc1(s1), self.fc2(s2), self.fc3(s3), self.fc4(s4)


class DWConv(nn.Module):
    """One depthwise 3x3 conv applied to each level of a multi-level token sequence on its own 2-D grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, level_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """``[B, sum(h*w), C]`` -> same shape; levels in ``level_shapes`` order, each row-major."""
        b, _, ch = x.shape
        parts = x.split([h * w for h, w in level_shapes], dim=1)
        out = [
            self.dwconv(p.transpose(1, 2).reshape(b, ch, h, w)).flatten(2).transpose(1, 2)
            for p, (h, w) in zip(parts, level_shapes, strict=True)
        ]
        return torch.cat(out, dim=1)


class ConvFFN(nn.Module):
    """``Linear(D -> h)``, depthwise conv per level, GELU, ``Linear(h -> D)``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, level_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), level_shapes)))
        return self.drop(self.fc2(x))


class Injector(nn.Module):
    """ViT tokens <- adapter levels: ``x + gamma * MSDA(LN(x), ref, LN(c))`` (gamma per channel)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        n_levels: int,
        deform_ratio: float,
        init_values: float,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, n_levels, num_heads, n_points, deform_ratio)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, feat: torch.Tensor, shapes: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        """``query [B, Lq, D]``, ``feat [B, S, D]`` -> ``[B, Lq, D]``."""
        return query + self.gamma * self.attn(self.query_norm(query), reference, self.feat_norm(feat), shapes)


class Extractor(nn.Module):
    """Adapter tokens <- ViT tokens: ``c + MSDA(LN(c), ref, LN(x))``, then ``c + DropPath(ConvFFN(LN(c)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        deform_ratio: float,
        cffn_ratio: float,
        drop_path: float,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, 1, num_heads, n_points, deform_ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        feat: torch.Tensor,
        feat_shape: tuple[int, int],
        level_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """``query [B, Lc, D]`` (adapter tokens of ``level_shapes``), ``feat [B, h*w, D]`` -> ``[B, Lc, D]``."""
        query = query + self.attn(self.query_norm(query), reference, self.feat_norm(feat), [feat_shape])
        return query + self.drop_path(self.ffn(self.ffn_norm(query), level_shapes))


@dataclass(frozen=True)
class _Geometry:
    """Token grids of one input size: adapter levels (1/4, 1/8, 1/16), the ViT grid and reference points."""

    levels: tuple[tuple[int, int], ...]
    vit: tuple[int, int]
    ref_inject: torch.Tensor  # [1, h16*w16, 1, 2]: ViT patch centres
    ref_extract: torch.Tensor  # [1, sum(levels), 1, 2]: adapter token centres


class InteractionBlock(nn.Module):
    """Injector before a run of ViT blocks, extractor (plus optional extra extractors) after it."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        deform_ratio: float,
        cffn_ratio: float,
        init_values: float,
        drop_path: float,
        extra_extractor: bool,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, 3, deform_ratio, init_values, norm_eps)
        args = (dim, num_heads, n_points, deform_ratio, cffn_ratio, drop_path, norm_eps)
        self.extractor = Extractor(*args)
        self.extra_extractors = nn.ModuleList([Extractor(*args), Extractor(*args)]) if extra_extractor else None

    def inject(self, x: torch.Tensor, c: torch.Tensor, geom: _Geometry) -> torch.Tensor:
        """Patch tokens ``x [B, L, D]`` attend to the adapter tokens ``c``."""
        return self.injector(x, geom.ref_inject, c, geom.levels)

    def extract(self, x: torch.Tensor, c: torch.Tensor, geom: _Geometry) -> torch.Tensor:
        """Adapter tokens ``c [B, Lc, D]`` attend to the patch tokens ``x``."""
        c = self.extractor(c, geom.ref_extract, x, geom.vit, geom.levels)
        for extractor in self.extra_extractors or ():
            c = extractor(c, geom.ref_extract, x, geom.vit, geom.levels)
        return c


def segment_bounds(depth: int, n_segments: int) -> list[tuple[int, int]]:
    """Split ``depth`` blocks into ``n_segments`` runs ``[start, end)``, the first ``depth % n`` one block longer.

    >>> segment_bounds(24, 4)
    [(0, 6), (6, 12), (12, 18), (18, 24)]
    >>> segment_bounds(10, 4)
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    if not 1 <= n_segments <= depth:
        raise ValueError(f"n_segments must be in [1, depth={depth}], got {n_segments}")
    base, extra = divmod(depth, n_segments)
    bounds, start = [], 0
    for i in range(n_segments):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def fusion_taps(n_segments: int) -> tuple[int, int, int, int]:
    """Segment whose output is fused into f1..f4: ``ceil(k * n / 4) - 1`` for k = 1..4 ((0, 1, 2, 3) for n = 4)."""
    return tuple(math.ceil(k * n_segments / 4) - 1 for k in range(1, 5))  # type: ignore[return-value]


def _init_adapter_weights(m: nn.Module) -> None:
    """ViT-Adapter's init of its own layers."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _check_backbone(backbone: VisionTransformer) -> None:
    if getattr(backbone, "spatial_dims", 2) != 2:
        raise ValueError("the CellVTA adapter needs a 2D backbone (patch_size with 2 entries)")
    patch = tuple(backbone.patch_embed.patch_size)
    if patch != (PATCH, PATCH):
        raise ValueError(
            f"the CellVTA adapter needs a patch-16 backbone (its tokens are the 1/16 level), got patch size {patch}"
        )


class CellVTAEncoder(nn.Module):
    """A registry ViT wrapped by the CellVTA adapter; returns the fused features f1..f4 and the final tokens.

    Args:
        backbone: a 2D :class:`~medvit.shared.backbone.vit.VisionTransformer` with patch size 16 (kept as
            ``self.backbone``; its ``norm`` is not applied here).
        conv_inplane: spatial prior stem width.
        n_points: sampling points per head and level.
        deform_num_heads: heads of every deformable attention.
        deform_ratio: value width / D of the deformable attentions.
        cffn_ratio: ConvFFN hidden width / D.
        init_values: initial injector ``gamma``.
        n_segments: number of interaction blocks (equal runs of ViT blocks).
        extra_extractors: two extra extractors in the last interaction block.
        drop_path_rate: DropPath of the extractors' ConvFFN (the same in every block).
        prefix_through_blocks: run the prefix tokens through the ViT blocks (True) or let them bypass (the
            published behaviour).
    """

    def __init__(
        self,
        backbone: VisionTransformer,
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
        prefix_through_blocks: bool = True,
    ) -> None:
        super().__init__()
        _check_backbone(backbone)
        dim = backbone.embed_dim
        self.backbone = backbone
        self.embed_dim = dim
        self.prefix_through_blocks = prefix_through_blocks
        self.segments = segment_bounds(len(backbone.blocks), n_segments)
        self.taps = fusion_taps(n_segments)
        self.spm = SpatialPriorModule(conv_inplane, dim)
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.interactions = nn.ModuleList(
            InteractionBlock(
                dim,
                deform_num_heads,
                n_points,
                deform_ratio,
                cffn_ratio,
                init_values,
                drop_path_rate,
                extra_extractor=extra_extractors and i == n_segments - 1,
            )
            for i in range(n_segments)
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1 = nn.BatchNorm2d(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.norm3 = nn.BatchNorm2d(dim)
        self.norm4 = nn.BatchNorm2d(dim)
        self.init_adapter_weights()

    def init_adapter_weights(self) -> None:
        """(Re-)initialise the adapter parts; the backbone is left alone."""
        for part in (self.up, self.spm, self.interactions, self.norm1, self.norm2, self.norm3, self.norm4):
            part.apply(_init_adapter_weights)
        for m in self.interactions.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not the backbone's."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def _geometry(self, h: int, w: int, device: torch.device) -> _Geometry:
        levels = ((h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16))
        return _Geometry(levels, levels[2], reference_points([levels[2]], device), reference_points(levels, device))

    def _run_blocks(
        self, prefix: torch.Tensor, x: torch.Tensor, start: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``start..end-1`` on the patch tokens, with or without the prefix tokens."""
        bb = self.backbone
        n_prefix = prefix.shape[1] if self.prefix_through_blocks else 0
        t = torch.cat([prefix, x], dim=1) if n_prefix else x
        for blk in bb.blocks[start:end]:
            if bb.grad_checkpointing and self.training and torch.is_grad_enabled():
                t = torch.utils.checkpoint.checkpoint(blk, t, use_reentrant=False)
            else:
                t = blk(t)
        return (t[:, :n_prefix], t[:, n_prefix:]) if n_prefix else (prefix, t)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Adapter + ViT.

        Args:
            x: images ``[B, 3, H, W]``, H and W multiples of 16.

        Returns:
            ``[f1, f2, f3, f4]`` (``[B, D, H/2^k, W/2^k]`` for k = 1..4) and the final tokens ``[B, P + L, D]``
            (prefix then patch tokens, before the backbone's final norm).
        """
        h, w = x.shape[-2:]
        if h % PATCH or w % PATCH:
            raise ValueError(f"CellVTA needs input sides that are multiples of {PATCH}, got {h} x {w}")
        geom = self._geometry(h, w, x.device)
        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat([m.flatten(2).transpose(1, 2) + self.level_embed[i] for i, m in enumerate((c2, c3, c4))], dim=1)
        tokens, _ = self.backbone.embed(x)
        n_prefix = self.backbone.num_prefix_tokens
        prefix, xs = tokens[:, :n_prefix], tokens[:, n_prefix:]
        outs = []
        for block, (start, end) in zip(self.interactions, self.segments, strict=True):
            xs = block.inject(xs, c, geom)
            prefix, xs = self._run_blocks(prefix, xs, start, end)
            c = block.extract(xs, c, geom)
            outs.append(xs)
        return self._fuse(c, c1, outs, geom), torch.cat([prefix, xs], dim=1)

    def _fuse(self, c: torch.Tensor, c1: torch.Tensor, outs: list[torch.Tensor], geom: _Geometry) -> list[torch.Tensor]:
        """Adapter levels + upsampled ViT segment outputs, BatchNorm per level."""
        b, d = c.shape[0], self.embed_dim
        sizes = [hh * ww for hh, ww in geom.levels]
        maps = [
            t.transpose(1, 2).reshape(b, d, hh, ww) for t, (hh, ww) in zip(c.split(sizes, 1), geom.levels, strict=True)
        ]
        c1 = self.up(maps[0]) + c1
        adapter = [c1, *maps]
        norms = (self.norm1, self.norm2, self.norm3, self.norm4)
        feats = []
        for level, (a, tap, norm) in enumerate(zip(adapter, self.taps, norms, strict=True)):
            vit = outs[tap].transpose(1, 2).reshape(b, d, *geom.vit)
            if level < 3:
                vit = F.interpolate(vit, size=a.shape[-2:], mode="bilinear", align_corners=False)
            feats.append(norm(a + vit))
        return feats
