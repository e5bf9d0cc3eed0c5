"""Multi-scale deformable attention (Deformable-DETR ``MSDeformAttn`` with ViT-Adapter's value ratio), pure PyTorch.

Each query looks at ``P`` points per head and per level of a multi-level value map, placed around its reference
point by learned offsets, and mixes the bilinearly sampled values with learned weights (softmax over the
``L * P`` points of a head)::

    loc[n, q, m, l, p] = ref[n, q, l] + offset[n, q, m, l, p] / (W_l, H_l)          (x, y in [0, 1])
    out[n, q, m]       = sum_{l, p} a[n, q, m, l, p] * bilinear(V_l[n, m], loc[n, q, m, l, p])

Bilinear sampling follows ``F.grid_sample(align_corners=False, padding_mode="zeros")`` on ``2 * loc - 1``: a
location ``x`` lies at pixel coordinate ``x * W - 0.5`` (pixel centres at ``(i + 0.5) / W``) and neighbours outside
the map contribute zero. This is the formulation of the Deformable-DETR CUDA kernel, which CellVTA calls; here it
runs on CPU and GPU alike. The sampling runs in float32 even under autocast, as the original kernel does
(``custom_fwd(cast_inputs=torch.float32)``); the linear projections follow autocast.

:func:`ms_deform_attn_loop` is a direct, slow reference (explicit loops and hand-written bilinear interpolation,
no ``grid_sample``) that the tests compare :func:`ms_deform_attn` with.

References:
    Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection", ICLR 2021.
    Chen et al., "Vision Transformer Adapter for Dense Predictions", ICLR 2023 (value ratio ``deform_ratio``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformAttn", "ms_deform_attn", "ms_deform_attn_loop", "reference_points"]

SpatialShapes = Sequence[tuple[int, int]]


def _check_shapes(value: torch.Tensor, spatial_shapes: SpatialShapes, locations: torch.Tensor) -> None:
    total = sum(h * w for h, w in spatial_shapes)
    if value.shape[1] != total:
        raise ValueError(
            f"value has {value.shape[1]} positions but the spatial shapes {list(spatial_shapes)} sum to {total}"
        )
    if locations.shape[3] != len(spatial_shapes):
        raise ValueError(f"sampling locations have {locations.shape[3]} levels, spatial shapes {len(spatial_shapes)}")


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample and mix multi-level values (the core of deformable attention), via ``grid_sample``.

    Args:
        value: ``[N, S, M, Dh]``: M heads of width Dh at S = sum(H_l * W_l) positions, levels concatenated
            in order, each level row-major.
        spatial_shapes: ``(H_l, W_l)`` per level.
        sampling_locations: ``[N, Lq, M, L, P, 2]`` normalised ``(x, y)``; ``(0, 0)`` is the top-left corner of
            the map, ``(1, 1)`` the bottom-right corner.
        attention_weights: ``[N, Lq, M, L, P]``.

    Returns:
        ``[N, Lq, M * Dh]`` (heads concatenated).
    """
    _check_shapes(value, spatial_shapes, sampling_locations)
    n, _, m, dh = value.shape
    lq, p = sampling_locations.shape[1], sampling_locations.shape[4]
    grids = 2 * sampling_locations - 1
    levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    out = value.new_zeros(n * m, dh, lq)
    for lvl, ((h, w), v) in enumerate(zip(spatial_shapes, levels, strict=True)):
        v = v.permute(0, 2, 3, 1).reshape(n * m, dh, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, lq, p, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # [NM, Dh, Lq, P]
        a = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(n * m, 1, lq, p)
        # Accumulated per level instead of stacking all levels: the stack is the largest tensor here.
        out = out + (sampled * a).sum(-1)
    return out.view(n, m * dh, lq).transpose(1, 2).contiguous()


def _bilinear_zero_pad(plane: torch.Tensor, h: int, w: int, x: float, y: float) -> torch.Tensor:
    """Value of a ``[h * w, D]`` map at normalised ``(x, y)``: bilinear between pixel centres, zeros outside."""
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    acc = torch.zeros(plane.shape[-1], dtype=plane.dtype)
    for yy, wy in ((y0, 1.0 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1.0 - fx), (x0 + 1, fx)):
            if 0 <= yy < h and 0 <= xx < w:
                acc = acc + wy * wx * plane[yy * w + xx]
    return acc


def ms_deform_attn_loop(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Slow reference of :func:`ms_deform_attn`: loops over batch, heads, queries, levels and points (float64).

    Same arguments and result shape; for tests only (tiny inputs).
    """
    _check_shapes(value, spatial_shapes, sampling_locations)
    n, _, m, dh = value.shape
    lq, nl, p = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    val = value.detach().double().cpu()
    loc = sampling_locations.detach().double().cpu()
    att = attention_weights.detach().double().cpu()
    starts = [0]
    for h, w in spatial_shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(n, lq, m * dh, dtype=torch.float64)
    for b in range(n):
        for head in range(m):
            for q in range(lq):
                acc = torch.zeros(dh, dtype=torch.float64)
                for lvl in range(nl):
                    h, w = spatial_shapes[lvl]
                    plane = val[b, starts[lvl] : starts[lvl + 1], head]
                    for pt in range(p):
                        x, y = float(loc[b, q, head, lvl, pt, 0]), float(loc[b, q, head, lvl, pt, 1])
                        acc = acc + float(att[b, q, head, lvl, pt]) * _bilinear_zero_pad(plane, h, w, x, y)
                out[b, q, head * dh : (head + 1) * dh] = acc
    return out


def reference_points(spatial_shapes: SpatialShapes, device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised pixel centres of each level's grid, levels concatenated: ``[1, sum(H_l * W_l), 1, 2]`` (x, y).

    The centre of cell ``(i, j)`` of an ``H x W`` grid is ``((j + 0.5) / W, (i + 0.5) / H)``; the trailing level
    axis of size 1 broadcasts one reference point over every value level.
    """
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1))
    return torch.cat(refs, dim=0)[None, :, None, :]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with a value width of ``ratio * d_model``.

    Args:
        d_model: query / input width C.
        n_levels: number of value levels L.
        n_heads: heads M (``ratio * d_model`` must be divisible by it).
        n_points: sampling points P per head and level.
        ratio: value width / ``d_model`` (ViT-Adapter's ``deform_ratio``; 1.0 = Deformable DETR).
    """

    def __init__(
        self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, ratio: float = 1.0
    ) -> None:
        super().__init__()
        value_dim = int(d_model * ratio)
        if value_dim < n_heads or value_dim % n_heads:
            raise ValueError(
                f"value width {value_dim} (d_model {d_model} x ratio {ratio}) is not divisible by {n_heads} heads"
            )
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable-DETR init: zero offset weights, offset bias on a head-direction grid, uniform attention.

        Head ``h`` points in direction ``2 pi h / M``, scaled so the larger of ``|cos|``, ``|sin|`` is 1, and
        point ``k`` (0-based) sits ``k + 1`` cells out along it, the same on every level. Attention weights and
        biases are zero (uniform softmax); value and output projections are xavier-uniform with zero bias.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: SpatialShapes,
    ) -> torch.Tensor:
        """Attend from each query to ``n_points`` learned locations per head and level.

        Args:
            query: ``[N, Lq, C]``.
            reference: ``[N or 1, Lq, L or 1, 2]`` normalised ``(x, y)`` reference points.
            value: ``[N, S, C]``, the L levels flattened row-major and concatenated.
            spatial_shapes: ``(H_l, W_l)`` of the L levels.

        Returns:
            ``[N, Lq, C]``.
        """
        if len(spatial_shapes) != self.n_levels:
            raise ValueError(f"{len(spatial_shapes)} value levels given, the module has {self.n_levels}")
        n, lq, _ = query.shape
        m, nl, p = self.n_heads, self.n_levels, self.n_points
        v = self.value_proj(value)
        out_dtype = v.dtype
        v = v.view(n, v.shape[1], m, self.value_dim // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, nl, p, 2)
        logits = self.attention_weights(query).view(n, lq, m, nl * p)
        device_type = query.device.type
        # Autocast off for the sampling (devices without autocast, such as "meta", need no context).
        no_autocast = (
            torch.autocast(device_type=device_type, enabled=False)
            if torch.amp.is_autocast_available(device_type)
            else contextlib.nullcontext()
        )
        with no_autocast:
            weights = logits.float().softmax(-1).view(n, lq, m, nl, p)
            norm = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.float32, device=query.device)
            loc = reference.float()[:, :, None, :, None, :] + offsets.float() / norm[None, None, None, :, None, :]
            out = ms_deform_attn(v.float(), spatial_shapes, loc, weights)
        return self.output_proj(out.to(out_dtype))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, levels={self.n_levels}, heads={self.n_heads}, points={self.n_points}, "
            f"value_dim={self.value_dim}"
        )
