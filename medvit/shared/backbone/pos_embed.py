"""Fixed sin-cos position embeddings (2D and 3D) and N-d resampling of position embeddings.

Channel layouts differ between codebases, which is why converters copy position embeddings as
tensors and never regenerate them:

* 2D (MAE ``util/pos_embed.py``): the first D/2 channels encode the column (x/w) coordinate, the last
  D/2 the row (y/h); each half is ``[sin(D/4 freqs), cos(D/4 freqs)]``, ``omega_k = 1/10000^(k/(D/4))``.
* 3D (Hi-End-MAE ``networks``): ``[sin h, cos h, sin w, cos w, sin d, cos d]`` with D/6 frequencies per
  axis. When D is not a multiple of 6 the remainder channels are zero (documented extension).

Tokens are ordered row-major over the grid (last axis fastest), matching ``conv(x).flatten(2)``.

References:
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (facebookresearch/mae).
    Tang et al., "Hi-End-MAE", Medical Image Analysis 2025 (FengheTan9/Hi-End-MAE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``[sin(pos*omega), cos(pos*omega)]`` with ``dim//2`` frequencies.

    Args:
        dim: output channels (even).
        pos: positions ``[M]``.

    Returns:
        ``[M, dim]`` float64.
    """
    half = dim // 2
    omega = torch.arange(half, dtype=torch.float64) / max(half, 1)
    omega = 1.0 / (10000.0**omega)
    out = pos.double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: Sequence[int]) -> torch.Tensor:
    """MAE's 2D sin-cos embedding.

    Args:
        embed_dim: D, a multiple of 4.
        grid_size: ``(gh, gw)``.

    Returns:
        ``[gh*gw, D]`` float32, row-major over (h, w).
    """
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    gh, gw = grid_size
    hh, ww = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb_w = _sincos_1d(embed_dim // 2, ww.reshape(-1))  # first half: column coordinate (MAE layout)
    emb_h = _sincos_1d(embed_dim // 2, hh.reshape(-1))
    return torch.cat([emb_w, emb_h], dim=1).float()


def sincos_pos_embed_3d(embed_dim: int, grid_size: Sequence[int]) -> torch.Tensor:
    """Hi-End-MAE's 3D sin-cos embedding, channel order ``[sin h, cos h, sin w, cos w, sin d, cos d]``.

    Args:
        embed_dim: D. Per axis ``2*(D//6)`` channels are used; the rest (``D mod 6``) stay zero.
        grid_size: ``(gh, gw, gd)``.

    Returns:
        ``[gh*gw*gd, D]`` float32, row-major over (h, w, d).
    """
    per_axis = 2 * (embed_dim // 6)
    if per_axis == 0:
        raise ValueError(f"3D sin-cos position embedding needs embed_dim >= 6, got {embed_dim}")
    gh, gw, gd = grid_size
    hh, ww, dd = torch.meshgrid(torch.arange(gh), torch.arange(gw), torch.arange(gd), indexing="ij")
    parts = [_sincos_1d(per_axis, axis.reshape(-1)) for axis in (hh, ww, dd)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < embed_dim:
        emb = F.pad(emb, (0, embed_dim - emb.shape[1]))
    return emb.float()


def sincos_pos_embed(embed_dim: int, grid_size: Sequence[int]) -> torch.Tensor:
    """2D or 3D sin-cos embedding chosen by ``len(grid_size)``; ``[prod(grid), D]``."""
    if len(grid_size) == 2:
        return sincos_pos_embed_2d(embed_dim, grid_size)
    if len(grid_size) == 3:
        return sincos_pos_embed_3d(embed_dim, grid_size)
    raise ValueError(f"grid must be 2D or 3D, got {tuple(grid_size)}")


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    old_grid: Sequence[int] | None = None,
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Resample a learned position embedding to a new token grid (bicubic in 2D, trilinear in 3D).

    timm's ``resample_abs_pos_embed`` is 2D-only; CT needs 3D.

    Args:
        pos_embed: ``[1, P + prod(old_grid), D]``; the first ``num_prefix_tokens`` rows (cls / quality /
            register slots) are kept as they are.
        new_grid: target grid, 2 or 3 entries.
        old_grid: source grid; inferred for square/cubic grids when omitted.
        num_prefix_tokens: P.

    Returns:
        ``[1, P + prod(new_grid), D]`` in the input dtype.
    """
    nd = len(new_grid)
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid_tokens.shape[1]
    if old_grid is None:
        side = round(n ** (1.0 / nd))
        if side**nd != n:
            raise ValueError(f"cannot infer a {nd}D grid for {n} position tokens; pass old_grid")
        old_grid = (side,) * nd
    if math.prod(old_grid) != n:
        raise ValueError(f"old_grid {tuple(old_grid)} does not match {n} position tokens")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = grid_tokens.shape[-1]
    dtype = grid_tokens.dtype
    grid = grid_tokens.float().reshape(1, *old_grid, dim).movedim(-1, 1)  # [1, D, *old_grid]
    mode = "bicubic" if nd == 2 else "trilinear"
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False)
    grid = grid.movedim(1, -1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)
