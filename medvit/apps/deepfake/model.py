"""The GGViT-style network: a global stream guiding part streams, a quality block and a fusion attention.

What the paper states (Wu et al., "GGViT: Multistream Vision Transformer Network in Face2Face Facial Reenactment
Detection", ICPR 2022, arXiv 2210.05990; abstract and introduction only):

* a ViT embeds the whole face and this embedding "guides each stream network": it is *added* to the parts of
  the face image that the other streams see;
* an image-quality block extracts compression information and constrains the classification by image quality;
* a fusion-attention block re-weights the streams' predictions, favouring the streams that discriminate better
  at the given quality; a loss is designed for several compression rates.

Everything else is **ours** (no code is public; none of it is verified against the paper):

1. Streams: K part streams on square regions defined from the five landmarks of the aligned crop (``eyes``:
   centred between the eyes, side 2 x the eye distance d; ``nose``: on the nose tip, side 1.1 d; ``mouth``: on
   the mouth centre, side 1.4 d; ``contour``: on the mean of the five points, side 2.8 d, the whole face with its
   outline, cheeks and jaw where blending seams lie). Regions are cut from the full-resolution crop with a
   bilinear affine sampler and resized to ``region_size``; the global stream sees the whole crop at
   ``global_size``.
2. Guidance: g (the global stream's pooled embedding, through a linear map when the widths differ) is added to
   every token of a part stream after its patch and position embedding, before its blocks (``guide="tokens"``,
   default), or to the stream's pooled output (``guide="pooled"``); ``guide="none"`` removes it (ablation).
3. Part streams share one ViT by default (``shared_streams``); the global stream always has its own.
4. Every stream, the global one included, has a linear head giving a fake logit; the fused logit is
   ``sum_k a_k * logit_k`` with attention ``a = softmax(A q + [w_k . h_k]_k)`` over the K+1 streams, where
   ``q`` is the quality block's predicted distribution over raw/c23/c40 (detached: the quality block learns only
   from the compression labels) and ``h_k`` the stream's pooled embedding; so the weights sum to 1 and depend on
   the estimated quality and on what each stream sees.
5. Quality block: LayerNorm -> Linear -> GELU -> Linear(3) on g.
6. Loss (:class:`DeepfakeLoss`): per-frame BCE of the fused logit weighted by the frame's compression level
   (``level_weights``, default 1 / 1.25 / 1.5 for raw / c23 / c40; frames of unknown level use the predicted
   quality mixture of the weights), plus ``stream_weight`` x the mean BCE of the stream logits (deep supervision
   so each stream learns to discriminate on its own) and ``quality_weight`` x the quality cross-entropy.

Input: RGB crops normalised ``(x / 255 - 0.5) / 0.5`` (DeepfakeBench's mean/std 0.5) ``[B, 3, S, S]`` and the
crop's five landmarks ``[B, 5, 2]`` in crop pixels (x, y; ArcFace order: image-left eye, image-right eye, nose,
mouth left, mouth right).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medvit.apps.deepfake.config import LEVELS
from medvit.shared.backbone import create_backbone
from medvit.shared.backbone.vit import VisionTransformer

__all__ = [
    "LEVELS",
    "REGION_GEOMETRY",
    "DeepfakeLoss",
    "GGViTStyle",
    "build_model",
    "preprocess_crops",
    "region_boxes",
    "region_crops",
]

REGION_GEOMETRY: dict[str, tuple[tuple[float, ...], float]] = {
    # name: (weights of the five landmarks giving the centre, side in eye distances)
    "eyes": ((0.5, 0.5, 0.0, 0.0, 0.0), 2.0),
    "nose": ((0.0, 0.0, 1.0, 0.0, 0.0), 1.1),
    "mouth": ((0.0, 0.0, 0.0, 0.5, 0.5), 1.4),
    "contour": ((0.2, 0.2, 0.2, 0.2, 0.2), 2.8),
}
"""Square face regions from the five landmarks (ours; see the module docstring)."""


def preprocess_crops(crops: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """RGB uint8 crops ``[N, S, S, 3]`` -> normalised float ``[N, 3, S, S]`` (mean/std 0.5)."""
    arr = np.ascontiguousarray(np.stack(list(crops)) if not isinstance(crops, np.ndarray) else crops)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def region_boxes(landmarks: torch.Tensor, regions: Sequence[str]) -> torch.Tensor:
    """Centre and half side of each region from the landmarks.

    Args:
        landmarks: ``[B, 5, 2]`` (x, y) pixels.
        regions: names of :data:`REGION_GEOMETRY`.

    Returns:
        ``[B, K, 3]``: (centre x, centre y, half side) in pixels.
    """
    lm = landmarks.float()
    d = (lm[:, 1] - lm[:, 0]).norm(dim=-1).clamp_min(1.0)  # eye distance [B]
    out = []
    for name in regions:
        w, side = REGION_GEOMETRY[name]
        centre = (lm * lm.new_tensor(w)[None, :, None]).sum(1)
        out.append(torch.cat([centre, (0.5 * side * d)[:, None]], dim=1))
    return torch.stack(out, dim=1)


def region_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cut square regions with a bilinear affine sampler (zeros outside the image).

    Args:
        images: ``[B, C, H, W]``.
        boxes: ``[B, K, 3]`` from :func:`region_boxes`.
        size: output side.

    Returns:
        ``[B, K, C, size, size]``.
    """
    b, c, h, w = images.shape
    k = boxes.shape[1]
    cx, cy, half = boxes.unbind(-1)  # [B, K]
    theta = images.new_zeros(b, k, 2, 3)
    # output u in [-1, 1] -> input pixel cx + u * half -> normalised (2 x + 1) / W - 1 (align_corners=False)
    theta[..., 0, 0] = 2 * half / w
    theta[..., 0, 2] = (2 * cx + 1) / w - 1
    theta[..., 1, 1] = 2 * half / h
    theta[..., 1, 2] = (2 * cy + 1) / h - 1
    grid = F.affine_grid(theta.reshape(b * k, 2, 3), [b * k, c, size, size], align_corners=False)
    src = images[:, None].expand(b, k, c, h, w).reshape(b * k, c, h, w)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(b, k, c, size, size)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class GGViTStyle(nn.Module):
    """Global-guided multi-stream ViT with a quality block and a fusion attention (see the module docstring).

    Args:
        global_vit: ViT of the global stream (``num_classes=0``; pooled output of width Dg).
        part_vits: one ViT shared by the part streams, or one per region.
        regions: region names (K).
        global_size: side the crop is resized to for the global stream.
        region_size: side of the region crops.
        guide: ``tokens``, ``pooled`` or ``none``.
        quality_hidden: hidden width of the quality block.
        num_levels: compression classes (3: raw, c23, c40).
    """

    def __init__(
        self,
        global_vit: VisionTransformer,
        part_vits: Sequence[VisionTransformer],
        regions: Sequence[str],
        *,
        global_size: int,
        region_size: int,
        guide: str = "tokens",
        quality_hidden: int = 128,
        num_levels: int = len(LEVELS),
    ) -> None:
        super().__init__()
        if len(part_vits) not in (1, len(regions)):
            raise ValueError(f"need 1 shared or {len(regions)} part ViTs, got {len(part_vits)}")
        if guide not in ("tokens", "pooled", "none"):
            raise ValueError(f"guide must be tokens, pooled or none, got {guide!r}")
        self.global_vit = global_vit
        self.part_vits = nn.ModuleList(part_vits)
        self.regions = tuple(regions)
        self.global_size = int(global_size)
        self.region_size = int(region_size)
        self.guide = guide
        dg, dp = global_vit.embed_dim, part_vits[0].embed_dim
        self.guide_proj: nn.Module = nn.Identity() if dg == dp else nn.Linear(dg, dp)
        n = len(self.regions) + 1
        self.stream_heads = nn.ModuleList([nn.Linear(dg, 1)] + [nn.Linear(dp, 1) for _ in self.regions])
        self.quality = nn.Sequential(
            nn.LayerNorm(dg), nn.Linear(dg, quality_hidden), nn.GELU(), nn.Linear(quality_hidden, num_levels)
        )
        self.fusion_quality = nn.Linear(num_levels, n)
        self.fusion_content = nn.ModuleList(
            [nn.Linear(dg, 1, bias=False)] + [nn.Linear(dp, 1, bias=False) for _ in self.regions]
        )
        for head in (*self.stream_heads, *self.fusion_content, self.fusion_quality):
            nn.init.normal_(head.weight, std=0.01)
            if head.bias is not None:
                nn.init.zeros_(head.bias)

    def part_vit(self, k: int) -> VisionTransformer:
        return self.part_vits[0 if len(self.part_vits) == 1 else k]  # type: ignore[return-value]

    def _part_stream(self, vit: VisionTransformer, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """One part stream: ``[B, 3, r, r]`` and the projected guide ``[B, Dp]`` -> pooled ``[B, Dp]``."""
        tokens, _ = vit.embed(x)
        if self.guide == "tokens":
            tokens = tokens + g[:, None, :]
        for blk in vit.blocks:
            tokens = blk(tokens)
        pooled = vit.forward_head(vit.norm(tokens), pre_logits=True)
        return pooled + g if self.guide == "pooled" else pooled

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score aligned face crops.

        Args:
            x: normalised crops ``[B, 3, S, S]``.
            landmarks: ``[B, 5, 2]`` in crop pixels.

        Returns:
            ``logit [B]`` (fused fake logit), ``stream_logits [B, K+1]`` (global first), ``weights [B, K+1]``
            (fusion attention, rows sum to 1), ``quality_logits [B, L]``, ``embedding [B, Dg]`` (g).
        """
        g = self.global_vit.forward_head(self.global_vit.forward_features(_resize(x, self.global_size)), True)
        guide = self.guide_proj(g)
        crops = region_crops(x, region_boxes(landmarks, self.regions), self.region_size)  # [B, K, 3, r, r]
        feats = [g]
        if len(self.part_vits) == 1 and self.regions:
            # one shared ViT: all regions in one batch (B*K), the guide repeated per region
            b, k = crops.shape[:2]
            pooled = self._part_stream(self.part_vits[0], crops.flatten(0, 1), guide.repeat_interleave(k, 0))
            feats += list(pooled.reshape(b, k, -1).unbind(1))
        else:
            feats += [self._part_stream(self.part_vit(i), crops[:, i], guide) for i in range(len(self.regions))]
        stream_logits = torch.cat([head(f) for head, f in zip(self.stream_heads, feats, strict=True)], dim=1)
        quality_logits = self.quality(g)
        q = quality_logits.detach().softmax(-1)
        content = torch.cat([w(f) for w, f in zip(self.fusion_content, feats, strict=True)], dim=1)
        weights = (self.fusion_quality(q) + content).softmax(-1)
        logit = (weights * stream_logits).sum(-1)
        return {
            "logit": logit,
            "stream_logits": stream_logits,
            "weights": weights,
            "quality_logits": quality_logits,
            "embedding": g,
        }


class DeepfakeLoss(nn.Module):
    """Level-weighted BCE of the fused logit + stream BCE + quality cross-entropy (ours; module docstring).

    Args:
        level_weights: weights of raw, c23, c40 frames.
        stream_weight: weight of the mean per-stream BCE.
        quality_weight: weight of the quality cross-entropy.
    """

    def __init__(
        self, level_weights: Sequence[float] = (1.0, 1.25, 1.5), stream_weight: float = 0.5, quality_weight: float = 0.2
    ) -> None:
        super().__init__()
        self.register_buffer("level_weights", torch.tensor([float(w) for w in level_weights]), persistent=False)
        self.stream_weight = float(stream_weight)
        self.quality_weight = float(quality_weight)

    def forward(
        self, out: Mapping[str, torch.Tensor], label: torch.Tensor, level: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: ``out`` of :class:`GGViTStyle`; ``label [B]`` 0 real / 1 fake; ``level [B]`` 0..L-1 or -1.

        Returns:
            (loss, detached logs: ``bce``, ``stream_bce``, ``quality_ce``, ``acc``, ``quality_acc``).
        """
        y = label.float()
        known = level >= 0
        lw = self.level_weights.to(out["logit"].dtype)
        predicted = out["quality_logits"].detach().float().softmax(-1) @ lw.float()
        w = torch.where(known, lw[level.clamp_min(0)], predicted.to(lw.dtype))
        bce = (F.binary_cross_entropy_with_logits(out["logit"], y, reduction="none") * w).sum() / w.sum().clamp_min(
            1e-6
        )
        sl = out["stream_logits"]
        stream_bce = F.binary_cross_entropy_with_logits(sl, y[:, None].expand_as(sl))
        if known.any():
            quality_ce = F.cross_entropy(out["quality_logits"][known], level[known])
            q_acc = (out["quality_logits"][known].argmax(-1) == level[known]).float().mean()
        else:
            quality_ce = out["quality_logits"].sum() * 0.0
            q_acc = torch.zeros((), device=y.device)
        loss = bce + self.stream_weight * stream_bce + self.quality_weight * quality_ce
        acc = ((out["logit"] > 0).float() == y).float().mean()
        logs = {"bce": bce, "stream_bce": stream_bce, "quality_ce": quality_ce, "acc": acc, "quality_acc": q_acc}
        return loss, {k: v.detach() for k, v in logs.items()}


def _vit(name: str, overrides: Mapping[str, Any], size: int) -> VisionTransformer:
    return create_backbone(name, **{**dict(overrides), "img_size": int(size), "num_classes": 0})


def build_model(spec: Mapping[str, Any]) -> GGViTStyle:
    """A fresh network from a JSON-able spec (the ``model`` section of ``model.json``).

    ``spec`` keys: ``backbone``, ``backbone_overrides``, ``stream_backbone``, ``stream_overrides``,
    ``global_size``, ``region_size``, ``regions``, ``shared_streams``, ``guide``, ``quality_hidden``.
    """
    regions = tuple(spec["regions"])
    gsize, rsize = int(spec["global_size"]), int(spec["region_size"])
    glob = _vit(spec["backbone"], spec.get("backbone_overrides") or {}, gsize)
    part_name = spec.get("stream_backbone") or spec["backbone"]
    part_over = spec.get("stream_overrides") or (
        spec.get("backbone_overrides") or {} if part_name == spec["backbone"] else {}
    )
    n_parts = 1 if spec.get("shared_streams", True) else len(regions)
    parts = [_vit(part_name, part_over, rsize) for _ in range(n_parts)]
    return GGViTStyle(
        glob,
        parts,
        regions,
        global_size=gsize,
        region_size=rsize,
        guide=str(spec.get("guide", "tokens")),
        quality_hidden=int(spec.get("quality_hidden", 128)),
    )
