"""Batch mixing for fine-tuning: Mixup, CutMix and CutMix with Token-Label Alignment (TL-Align).

Mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019) in timm's batch mode: one ratio per batch,
image ``i`` mixed with image ``B - 1 - i`` (the batch flipped), ratio ``lam ~ Beta(alpha, alpha)``. CutMix pastes a
box of the partner whose sides are ``sqrt(1 - lam)`` of the image's (cube root for volumes) around a uniform centre,
clipped at the border, and then corrects ``lam`` to the area actually kept (timm's ``correct_lam``); 3D volumes get
a cuboid the same way. The target of image ``i`` is ``lam * y_i + (1 - lam) * y_partner``; for multi-label targets a
finding unknown (NaN) in either image is ignored.

**TL-Align** (Xiao, Zheng, Zhu, Lu, Zhou - "Token-Label Alignment for Vision Transformers", ICCV 2023; official code
Euphoria16/TL-Align): the area ratio is a poor label once attention moves information between tokens. Each token
carries a label, here the pair ``(w_A, w_B)`` of the two images' shares (the official code carries the whole mixed
class vector; with two images and linear propagation both give the same target); choices made here:

- **Box on the token grid.** As in the official code, a ``tl-align`` CutMix box is drawn on the patch grid (sides of
  ``int(g * sqrt(1 - lam))`` tokens for a grid side ``g``, cube root in 3D) and scaled to pixels, so every token comes
  wholly from one image and ``lam`` is the token ratio. :func:`initial_token_labels` also takes pixel boxes (plain
  ``cutmix``), giving a patch cut by the box border the fraction of its pixels from image A.
- **Initial token labels.** Patch tokens: 1 / 0 for image A / B (the mask pooled over each patch). Prefix tokens
  (class token, registers) start from the ratio ``lam``, the official code's initial class-token label.
- **Propagation.** At every block the labels follow the attention's residual path: ``y <- y + A_mean @ y``, then
  each token's pair is renormalised to sum to 1 (the paper's normalisation); ``A_mean`` is that block's softmax
  attention averaged over heads, taken from the same attention call as the features (the labels ride along as
  extra value channels of the fused kernel, :meth:`medvit.shared.backbone.layers.Attention.forward_carry`: no second
  forward and no materialised attention matrix). The MLP, drop path and LayerScale leave labels unchanged (they act
  within a token). With ``A = I`` every label is unchanged, so the target is the area ratio again.
- **Target.** The label of what the head reads: the class token's with token pooling, the mean over the patch
  tokens' labels with global average pooling (the thorax recipe; the official code reads the class token), used as
  ``w_A`` in ``w_A * y_A + w_B * y_B``. Targets carry no gradient.
- A Mixup batch (``switch_prob``) gives every token the same pair, which attention keeps: its target is ``lam``.

:func:`propagate_token_labels` is the explicit reference (attention matrices given), used by the tests to check the
fused path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "MixPlan",
    "aligned_weight",
    "apply_mix",
    "cutmix_box",
    "draw_mix",
    "initial_token_labels",
    "mix_targets",
    "propagate_token_labels",
]


@dataclass(frozen=True)
class MixPlan:
    """One batch's mixing.

    Attributes:
        kind: ``mixup`` or ``cutmix``.
        lam: share of the batch's own images (after CutMix's area correction).
        box: CutMix: ``((lo, hi), ...)`` per spatial axis, the pasted region (half-open); None for Mixup.
        align: whether the target is the TL-Align aligned label (CutMix batches of ``tl-align``).
    """

    kind: str
    lam: float
    box: tuple[tuple[int, int], ...] | None = None
    align: bool = False


def _beta(alpha: float) -> float:
    # torch's Beta draws from the CPU global generator, which the training checkpoints hold (exact resume)
    a = torch.tensor([float(alpha)])
    return float(torch.distributions.Beta(a, a).sample().item())


def _randint(high: int) -> int:
    return int(torch.randint(0, max(high, 1), (1,)).item())


def cutmix_box(
    lam: float, shape: Sequence[int], unit: Sequence[int] | None = None
) -> tuple[tuple[tuple[int, int], ...], float]:
    """A CutMix box for ratio ``lam`` on a spatial ``shape`` (timm's ``rand_bbox`` with ``correct_lam``).

    Sides are ``int(s * (1 - lam) ** (1 / ndim))``, the centre uniform over the image, the box clipped to it. With
    ``unit`` (the patch size) the box is drawn on the grid of ``shape // unit`` cells and scaled back to pixels
    (TL-Align's token-level box), and ``lam`` is the share of cells kept.

    Args:
        lam: Wanted share of the original image, in [0, 1].
        shape: Spatial shape ``(H, W)`` or ``(R, C, S)``.
        unit: Cell size per axis, or None for pixels.

    Returns:
        ``(box, lam_corrected)``: the box as ``(lo, hi)`` per axis (pixels) and ``1 - box volume / volume``.
    """
    unit = tuple(unit) if unit is not None else (1,) * len(shape)
    grid = [s // u for s, u in zip(shape, unit, strict=True)]
    ratio = (1.0 - lam) ** (1.0 / len(shape))
    box = []
    for g in grid:
        cut = int(g * ratio)
        centre = _randint(g)
        box.append((min(max(centre - cut // 2, 0), g), min(max(centre + cut // 2, 0), g)))
    kept = 1.0 - math.prod(hi - lo for lo, hi in box) / math.prod(grid)
    return tuple((lo * u, hi * u) for (lo, hi), u in zip(box, unit, strict=True)), kept


def draw_mix(
    mode: str,
    spatial: Sequence[int],
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    prob: float,
    switch_prob: float,
    patch: Sequence[int] | None = None,
) -> MixPlan | None:
    """Decide one batch's mixing (all draws from torch's CPU generator).

    Args:
        mode: ``none``, ``mixup``, ``cutmix`` or ``tl-align``.
        spatial: The batch's spatial shape.
        mixup_alpha: Beta parameter of Mixup.
        cutmix_alpha: Beta parameter of CutMix.
        prob: Probability of mixing this batch.
        switch_prob: ``cutmix`` / ``tl-align``: probability of Mixup instead.
        patch: ``tl-align``: the patch size, to draw the box on the token grid.

    Returns:
        The plan, or None (batch left as it is).
    """
    if mode == "none" or float(torch.rand(())) >= prob:
        return None
    use_mixup = mode == "mixup" or (switch_prob > 0 and float(torch.rand(())) < switch_prob)
    if use_mixup:
        return MixPlan("mixup", _beta(mixup_alpha))
    align = mode == "tl-align"
    box, lam = cutmix_box(_beta(cutmix_alpha), spatial, patch if align else None)
    return MixPlan("cutmix", lam, box, align=align)


def _box_slices(box: Sequence[tuple[int, int]]) -> tuple[slice, ...]:
    return tuple(slice(lo, hi) for lo, hi in box)


def apply_mix(x: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """Mix a batch ``[B, C, *spatial]`` with itself flipped along the batch (returns a new tensor)."""
    partner = x.flip(0)
    if plan.kind == "mixup":
        return x * plan.lam + partner * (1.0 - plan.lam)
    out = x.clone()
    region = (slice(None), slice(None), *_box_slices(plan.box or ()))
    out[region] = partner[region]
    return out


def initial_token_labels(
    plan: MixPlan, batch: int, spatial: Sequence[int], patch: Sequence[int], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """TL-Align's starting labels ``(w_A, w_B)`` of the patch tokens and of the prefix tokens.

    Args:
        plan: The batch's plan (CutMix: the box; Mixup: every token ``lam``).
        batch: ``B``.
        spatial: Spatial shape of the input.
        patch: Patch size per axis (tokens cover ``floor(s / p)`` patches per axis; a border that does not fill a
            patch is dropped, as by the patch embedding).
        device: Device of the result.

    Returns:
        ``(patches [B, L, 2], prefix [B, 2])`` float32, each row summing to 1, patches in the tokens' row-major
        grid order.
    """
    grid = [s // p for s, p in zip(spatial, patch, strict=True)]
    n_tokens = math.prod(grid)
    if plan.kind == "mixup" or plan.box is None:
        share = torch.full((n_tokens,), plan.lam, device=device)
    else:
        covered = [g * p for g, p in zip(grid, patch, strict=True)]
        mask = torch.ones(1, 1, *covered, device=device)
        region = tuple(slice(min(lo, c), min(hi, c)) for (lo, hi), c in zip(plan.box, covered, strict=True))
        mask[(slice(None), slice(None), *region)] = 0.0
        pool = F.avg_pool2d if len(patch) == 2 else F.avg_pool3d
        share = pool(mask, kernel_size=tuple(patch), stride=tuple(patch)).flatten()
    patches = torch.stack([share, 1.0 - share], dim=-1).expand(batch, -1, -1)
    prefix = torch.tensor([plan.lam, 1.0 - plan.lam], device=device).expand(batch, -1)
    return patches.contiguous(), prefix.contiguous()


def propagate_token_labels(labels: torch.Tensor, attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Reference TL-Align propagation with explicit attention: per block ``y <- normalise(y + A_mean @ y)``.

    Args:
        labels: ``[B, N, K]`` token labels (rows summing to 1).
        attentions: Per block, the head-averaged attention ``[B, N, N]`` (rows summing to 1).

    Returns:
        ``[B, N, K]`` labels after the blocks.
    """
    y = labels.float()
    for a in attentions:
        y = y + a.float() @ y
        y = y / y.sum(-1, keepdim=True)
    return y


def aligned_weight(labels: torch.Tensor, num_prefix: int, global_pool: str) -> torch.Tensor:
    """Share of image A in what the head reads: the mean patch-token label (``avg``) or the first token's.

    Args:
        labels: ``[B, P + L, 2]`` propagated labels.
        num_prefix: ``P``.
        global_pool: ``avg`` or ``token``.

    Returns:
        ``[B]`` weights ``w_A`` in [0, 1].
    """
    pair = labels[:, num_prefix:].mean(1) if global_pool == "avg" else labels[:, 0]
    return (pair[:, 0] / pair.sum(-1)).clamp(0.0, 1.0)


def mix_targets(target: torch.Tensor, weight_a: torch.Tensor | float) -> torch.Tensor:
    """``w_A * y + (1 - w_A) * y_partner`` with the partner the batch flipped; NaN (ignored) in either stays NaN.

    Args:
        target: ``[B, K]`` float targets (one-hot / smoothed class targets, or multi-label 0/1 with NaN).
        weight_a: ``[B]`` per-image weights or one float.

    Returns:
        ``[B, K]``.
    """
    w = torch.as_tensor(weight_a, dtype=target.dtype, device=target.device)
    if w.ndim == 1:
        w = w[:, None]
    return target * w + target.flip(0) * (1.0 - w)
