"""Gradient-map reconstruction targets (Uni4Eye's second decoder branch), 2D and 3D.

Uni4Eye (Cai et al., MICCAI 2022) trains one decoder to reconstruct the image and a second one to reconstruct its
*gradient map*; the paper does not define that map precisely, and the successor code (Davidczy/Uni4Eye_pp,
``octa500.py``) builds it with OpenCV on a [0, 1]-scaled uint8-saturated image (5x5 Sobel in x and y,
``convertScaleAbs``, blended 0.5/0.5), so its scale is ill-defined and it has no 3D version. This module defines
the target explicitly; this definition is ours:

1. ``g = mean over channels`` of the (already normalised) input ``[B, C, *spatial] -> [B, 1, *spatial]``;
2. :func:`gradient_map`: the Euclidean magnitude of the Sobel derivatives along every spatial axis, with the
   **3x3** (2D) / **3x3x3** (3D) Sobel operator scaled to give the derivative per pixel: the central difference
   ``[-1, 0, 1] / 2`` along the derivative axis times the smoothing ``[1, 2, 1] / 4`` along each other axis
   (2D: the classic Sobel kernel / 8; 3D: / 32). A linear ramp ``a*h + b*w`` therefore maps to exactly
   ``sqrt(a^2 + b^2)`` away from the border; borders are replicate-padded, so a constant image maps to 0
   everywhere and a step edge is non-zero only on the two pixel rows (planes) next to the step.
   3x3 rather than the successor's 5x5: the smallest support keeps an edge one pixel either side of the step,
   and the 2D and 3D operators are the same construction;
3. :func:`gradient_target`: patchify (``(p1, p2[, p3])`` order, one value per pixel) and normalise each patch by
   its mean and unbiased std (eps 1e-6), as MAE's ``norm_pix_loss``, so the target's scale does not depend on the
   input's contrast. A flat patch (zero gradient) becomes all zeros.

The targets are computed in float32 without gradients (they are constants of the loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medvit.pretrain.mae import normalize_patches, patchify

__all__ = ["gradient_map", "gradient_target", "sobel_kernels"]

_DERIV = (-0.5, 0.0, 0.5)  # central difference: derivative per pixel
_SMOOTH = (0.25, 0.5, 0.25)  # Sobel's [1, 2, 1], normalised to sum 1


def sobel_kernels(
    spatial_dims: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """Sobel derivative kernels, one per spatial axis, scaled to the derivative per pixel.

    Args:
        spatial_dims: 2 or 3.
        dtype: kernel dtype.
        device: kernel device.

    Returns:
        ``[nd, 1, 3, 3]`` (2D) or ``[nd, 1, 3, 3, 3]`` (3D); kernel ``k`` differentiates along spatial axis ``k``
        (0 = H, 1 = W, 2 = D) and smooths along the others.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    deriv = torch.tensor(_DERIV, dtype=torch.float64)
    smooth = torch.tensor(_SMOOTH, dtype=torch.float64)
    kernels = []
    for axis in range(spatial_dims):
        k = torch.ones((1,) * spatial_dims, dtype=torch.float64)
        for other in range(spatial_dims):
            shape = [1] * spatial_dims
            shape[other] = 3
            k = k * (deriv if other == axis else smooth).reshape(shape)
        kernels.append(k)
    return torch.stack(kernels)[:, None].to(dtype=dtype, device=device)


def _filter1d(x: torch.Tensor, axis: int, taps: tuple[float, float, float]) -> torch.Tensor:
    """Valid 3-tap filter along ``axis`` (the axis shrinks by 2): ``t0 * x[i] + t1 * x[i + 1] + t2 * x[i + 2]``."""
    n = x.shape[axis]
    out = x.narrow(axis, 0, n - 2) * taps[0]
    if taps[1]:
        out = out + x.narrow(axis, 1, n - 2) * taps[1]
    return out + x.narrow(axis, 2, n - 2) * taps[2]


@torch.no_grad()
def gradient_map(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the channel mean (step 1-2 of the module docstring).

    The Sobel kernels of :func:`sobel_kernels` are separable; they are applied as 1D filters along each axis
    (the same numbers as the 3x3(x3) convolution, several times faster on a CPU).

    Args:
        x: images ``[B, C, H, W]`` or volumes ``[B, C, H, W, D]`` (any float dtype; computed in float32).

    Returns:
        ``[B, 1, *spatial]`` float32, ``>= 0``: the gradient magnitude in intensity units per pixel.
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"expected [B, C, H, W] or [B, C, H, W, D], got shape {tuple(x.shape)}")
    nd = x.ndim - 2
    g = F.pad(x.float().mean(dim=1, keepdim=True), (1, 1) * nd, mode="replicate")
    axes = range(2, 2 + nd)
    total = None
    for k in axes:
        d = g
        for a in axes:
            d = _filter1d(d, a, _DERIV if a == k else _SMOOTH)
        total = d * d if total is None else total + d * d
    return total.sqrt()


@torch.no_grad()
def gradient_target(x: torch.Tensor, patch_size: Sequence[int], *, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised gradient-map patches (the gradient decoder's target).

    Args:
        x: ``[B, C, *spatial]``, every spatial size divisible by its patch size.
        patch_size: ``(p1, p2)`` or ``(p1, p2, p3)``.
        eps: added to the patch variance.

    Returns:
        ``[B, L, prod(p)]`` float32, zero mean and (about) unit unbiased variance per patch.
    """
    return normalize_patches(patchify(gradient_map(x), patch_size), unbiased=True, eps=eps)
