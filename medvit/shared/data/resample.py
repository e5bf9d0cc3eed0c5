"""Trilinear resampling between axis-aligned voxel grids, one axis at a time.

Why our own: MONAI's ``SpatialResample`` (``grid_sample``) gathers the 8 corners of every output voxel for every
channel, whatever the two grids are. When the source-to-destination voxel mapping is a scaling, shift, flip and
axis permutation only (a volume reoriented to RAS and resampled to a spacing, mapped back onto its own grid: the
common case in segmentation), trilinear interpolation factorises into three 1D linear interpolations, each a
matrix product with two entries per row: the same values (to fp32 rounding) at a fraction of the work (5-channel
probabilities onto a 256x256x100 grid, one CPU thread: 0.17 s vs 0.53 s). Outside the source grid the values are
zero, as with ``padding_mode="zeros"``.

Voxel convention: integer indices are voxel centres; destination voxel ``j`` samples the source at the continuous
index ``xform @ [j, 1]`` (MONAI's convention, whatever ``align_corners``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["axis_aligned_map", "resample_axis_aligned"]


def axis_aligned_map(xform: np.ndarray, *, tol: float = 1e-6) -> tuple[list[int], list[float], list[float]] | None:
    """Decompose a ``4 x 4`` destination-to-source voxel map into per-axis ``src_axis, scale, shift``.

    Args:
        xform: maps destination voxel indices to source voxel indices.
        tol: entries below ``tol`` times the row's largest are zero.

    Returns:
        ``(axes, scales, shifts)`` for destination axes 0..2 (source axis ``axes[k]`` is sampled at
        ``scales[k] * j + shifts[k]``), or None when the map mixes axes (oblique grids).
    """
    r = np.asarray(xform, dtype=np.float64)[:3, :3]
    t = np.asarray(xform, dtype=np.float64)[:3, 3]
    big = np.abs(r) > tol * np.abs(r).max(axis=1, keepdims=True)
    if not (big.sum(0) == 1).all() or not (big.sum(1) == 1).all():
        return None
    axes = [int(np.argmax(big[:, k])) for k in range(3)]
    return axes, [float(r[axes[k], k]) for k in range(3)], [float(t[axes[k]]) for k in range(3)]


def _weights(n_in: int, pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[n_out, n_in]`` linear-interpolation matrix for float64 positions ``pos``: two entries per row; a
    neighbour outside ``[0, n_in - 1]`` contributes zero (``grid_sample``'s zero padding)."""
    i0 = torch.floor(pos)
    w1 = pos - i0
    i0 = i0.long()
    rows = torch.arange(pos.shape[0], device=pos.device)
    w = torch.zeros(pos.shape[0], n_in + 2, dtype=torch.float64, device=pos.device)  # columns -1 .. n_in
    w[rows, (i0 + 1).clamp(0, n_in + 1)] += 1.0 - w1
    w[rows, (i0 + 2).clamp(0, n_in + 1)] += w1
    return w[:, 1:-1].to(dtype)


def _resample_axis(x: torch.Tensor, dim: int, w: torch.Tensor) -> torch.Tensor:
    """Apply ``w`` ``[n_out, n_in]`` along ``dim`` (1, 2 or 3) of a contiguous ``[C, X, Y, Z]``: one matrix product
    on a view, contiguous result."""
    c, nx, ny, nz = x.shape
    if dim == 3:
        return (x.view(-1, nz) @ w.T).view(c, nx, ny, -1)
    if dim == 2:
        return torch.matmul(w, x.view(c * nx, ny, nz)).view(c, nx, -1, nz)
    return torch.matmul(w, x.view(c, nx, ny * nz)).view(c, -1, ny, nz)


def resample_axis_aligned(
    src: torch.Tensor, axes: Sequence[int], scales: Sequence[float], shifts: Sequence[float], size: Sequence[int]
) -> torch.Tensor:
    """Trilinear resampling of ``src`` ``[C, X, Y, Z]`` onto a ``size`` grid given by :func:`axis_aligned_map`.

    Args:
        src: ``[C, X, Y, Z]`` source values (floating point).
        axes, scales, shifts: per destination axis, the source axis and the affine map of indices.
        size: destination ``(X', Y', Z')``.

    Returns:
        ``[C, *size]`` contiguous, in ``src``'s dtype.
    """
    x = src.permute(0, *(1 + a for a in axes)).contiguous()  # source axes in destination order
    # Shrinking axes first: every later pass then works on fewer voxels.
    for k in sorted(range(3), key=lambda k: size[k] / x.shape[1 + k]):
        if scales[k] == 1.0 and shifts[k] == 0.0 and size[k] == x.shape[1 + k]:
            continue
        pos = torch.arange(int(size[k]), dtype=torch.float64, device=src.device) * scales[k] + shifts[k]
        x = _resample_axis(x, 1 + k, _weights(x.shape[1 + k], pos, x.dtype))
    return x
