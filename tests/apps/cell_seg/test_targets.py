"""HV target (HoVer-Net ``gen_instance_hv_map``): hand-computed values, independence, agreement with a loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medvit.apps.cell_seg.targets import hv_map
from medvit.shared.data.synth import _rng
from medvit.shared.data.synth_cells import draw_cells_image


def _rectangle() -> np.ndarray:
    inst = np.zeros((8, 10), dtype=np.int32)
    inst[2:5, 3:8] = 7  # 3 rows x 5 columns
    return inst


def test_rectangle_by_hand_hovernet_one_based() -> None:
    # centre of mass (row 3, col 5) -> int(com + 0.5) in the crop; HoVer-Net indexes crop columns/rows from 1, so
    # x = col + 1 - 5 over cols 3..7 = -1, 0, 1, 2, 3 -> negatives / 1, positives / 3
    # y = row + 1 - 3 over rows 2..4 = 0, 1, 2 -> positives / 2
    hv = hv_map(_rectangle())
    assert hv.shape == (2, 8, 10) and hv.dtype == np.float32
    x_row = np.array([-1.0, 0.0, 1 / 3, 2 / 3, 1.0], dtype=np.float32)
    y_col = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    np.testing.assert_allclose(hv[0, 2:5, 3:8], np.tile(x_row, (3, 1)), rtol=0, atol=1e-7)
    np.testing.assert_allclose(hv[1, 2:5, 3:8], np.tile(y_col[:, None], (1, 5)), rtol=0, atol=1e-7)
    outside = np.ones((8, 10), bool)
    outside[2:5, 3:8] = False
    assert not hv[:, outside].any()


def test_rectangle_by_hand_centred() -> None:
    hv = hv_map(_rectangle(), one_based=False)
    np.testing.assert_allclose(hv[0, 3, 3:8], [-1.0, -0.5, 0.0, 0.5, 1.0], atol=1e-7)
    np.testing.assert_allclose(hv[1, 2:5, 4], [-1.0, 0.0, 1.0], atol=1e-7)


def test_single_pixel_and_full_image_instances() -> None:
    one = np.zeros((5, 5), dtype=np.int32)
    one[2, 2] = 3
    hv = hv_map(one)
    assert hv[:, 2, 2].tolist() == [1.0, 1.0]  # 1-based: x = y = +1, divided by the max (1)
    full = np.full((3, 4), 9, dtype=np.int32)  # no background pixel at all
    hv = hv_map(full)
    np.testing.assert_allclose(hv[0, 0], [-1.0, 0.0, 0.5, 1.0])  # com col 1.5 -> 2 -> x = col - 1


def test_instances_are_independent_and_ids_arbitrary() -> None:
    a = np.zeros((20, 20), dtype=np.int32)
    a[1:6, 2:9] = 5
    b = np.zeros((20, 20), dtype=np.int32)
    b[6:15, 9:13] = 1000  # touches a diagonally, large id
    b[14, 13] = 1000
    both = a + b
    np.testing.assert_array_equal(hv_map(both), hv_map(a) + hv_map(b))
    np.testing.assert_array_equal(hv_map(both), hv_map(np.where(both == 1000, 2, both)))  # ids do not matter


def test_empty_map_gives_zeros_and_bad_input_raises() -> None:
    hv = hv_map(np.zeros((6, 7), dtype=np.int64))
    assert hv.shape == (2, 6, 7) and hv.dtype == np.float32 and not hv.any()
    with pytest.raises(ValueError, match="2-D"):
        hv_map(np.zeros((2, 3, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="negative"):
        hv_map(np.array([[0, -1]]))


def _hovernet_loop(inst_map: np.ndarray) -> np.ndarray:
    """Literal per-instance transcription of HoVer-Net's steps: bbox + 2 px, crop, com, 1-based aranges."""
    x_map = np.zeros(inst_map.shape, np.float32)
    y_map = np.zeros(inst_map.shape, np.float32)
    for inst_id in np.unique(inst_map[inst_map > 0]):
        mask = (inst_map == inst_id).astype(np.uint8)
        rows, cols = np.nonzero(mask)
        r0, r1 = max(rows.min() - 2, 0), min(rows.max() + 3, mask.shape[0])
        c0, c1 = max(cols.min() - 2, 0), min(cols.max() + 3, mask.shape[1])
        crop = mask[r0:r1, c0:c1]
        com = ndimage.center_of_mass(crop)
        com_r, com_c = int(com[0] + 0.5), int(com[1] + 0.5)
        xs, ys = np.meshgrid(np.arange(1, crop.shape[1] + 1) - com_c, np.arange(1, crop.shape[0] + 1) - com_r)
        xs = np.where(crop > 0, xs, 0).astype(np.float32)
        ys = np.where(crop > 0, ys, 0).astype(np.float32)
        for arr in (xs, ys):
            if (arr < 0).any():
                arr[arr < 0] /= -arr[arr < 0].min()
            if (arr > 0).any():
                arr[arr > 0] /= arr[arr > 0].max()
        x_map[r0:r1, c0:c1][crop > 0] = xs[crop > 0]
        y_map[r0:r1, c0:c1][crop > 0] = ys[crop > 0]
    return np.stack([x_map, y_map])


def test_matches_per_instance_loop_on_touching_synthetic_nuclei() -> None:
    _, inst, _, _ = draw_cells_image(_rng(3, 10, 1), (96, 96))
    assert np.unique(inst).size > 5
    np.testing.assert_allclose(hv_map(inst), _hovernet_loop(inst), rtol=0, atol=1e-6)
