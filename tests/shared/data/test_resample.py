"""Axis-aligned trilinear resampling equals MONAI's ``SpatialResample`` (computed in float64) on the same grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from medvit.shared.data.resample import axis_aligned_map, resample_axis_aligned

SRC_AFFINE = np.array([[-1.5, 0, 0, 30.0], [0, 1.5, 0, -20.0], [0, 0, 1.5, 5.0], [0, 0, 0, 1]])
DESTINATIONS = {
    "finer in-plane, coarser z, y flipped": np.array(
        [[0.8, 0, 0, -2.0], [0, -0.8, 0, 7.0], [0, 0, 2.5, 4.0], [0, 0, 0, 1]]
    ),
    "axes permuted": np.array([[0, 0.8, 0, 3.0], [0.8, 0, 0, -12.0], [0, 0, -2.5, 40.0], [0, 0, 0, 1]]),
    "partly outside the source": np.array([[0.7, 0, 0, 10.0], [0, 0.7, 0, -30.0], [0, 0, 1.0, -3.0], [0, 0, 0, 1]]),
}


def _reference(src: torch.Tensor, dst: np.ndarray, size: tuple[int, ...]) -> torch.Tensor:
    mt = MetaTensor(src.double(), affine=torch.as_tensor(SRC_AFFINE))
    out = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float64)(
        mt, dst_affine=torch.as_tensor(dst), spatial_size=size
    )
    return out.as_tensor().double()


@pytest.mark.parametrize("name", sorted(DESTINATIONS))
def test_equals_grid_sample_resampling(name: str) -> None:
    src = torch.rand(3, 17, 13, 11, generator=torch.Generator().manual_seed(1))
    dst = DESTINATIONS[name]
    size = (23, 29, 9)
    mapping = axis_aligned_map(np.linalg.inv(SRC_AFFINE) @ dst)
    assert mapping is not None
    out = resample_axis_aligned(src, *mapping, size)
    assert out.shape == (3, *size) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), _reference(src, dst, size), atol=1e-6, rtol=1e-6)


def test_identity_map_returns_the_values() -> None:
    src = torch.rand(2, 5, 6, 7)
    out = resample_axis_aligned(src, [0, 1, 2], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], (5, 6, 7))
    torch.testing.assert_close(out, src)


def test_oblique_map_is_not_axis_aligned() -> None:
    c, s = np.cos(0.2), np.sin(0.2)
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert axis_aligned_map(rot) is None
    assert axis_aligned_map(np.diag([2.0, -1.0, 0.5, 1.0])) == ([0, 1, 2], [2.0, -1.0, 0.5], [0.0, 0.0, 0.0])
