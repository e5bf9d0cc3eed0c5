"""HoVer-Net post-processing on analytic nucleus/HV maps: splitting, removal, type votes, cell fields, contours."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from medvit.apps.cell_seg.postproc import (
    Cell,
    cells_from_instances,
    fill_holes,
    postprocess,
    type_argmax,
)
from medvit.shared.errors import ConfigError


def _discs(shape: tuple[int, int], discs: list[tuple[float, float, float]]) -> np.ndarray:
    """Instance map of discs ``(cy, cx, r)``; a pixel inside several goes to the nearest centre."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.stack([np.hypot(yy - cy, xx - cx) / r for cy, cx, r in discs])
    return np.where(d.min(axis=0) <= 1, d.argmin(axis=0) + 1, 0).astype(np.int32)


def _hv(inst: np.ndarray) -> np.ndarray:
    """Analytic HV map: per instance ``x - cx`` and ``y - cy`` scaled to [-1, 1] (ch0 x, ch1 y)."""
    hv = np.zeros((2, *inst.shape), np.float32)
    for i in np.unique(inst)[1:]:
        ys, xs = np.nonzero(inst == i)
        for ch, d in ((0, xs - xs.mean()), (1, ys - ys.mean())):
            hv[ch, ys, xs] = d / np.abs(d).max()
    return hv


def _maps(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.where(inst > 0, 0.95, 0.02).astype(np.float32), _hv(inst)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _matches(pred: np.ndarray, true: np.ndarray) -> list[float]:
    """Best IoU of each true instance against the predicted ones."""
    return [max(_iou(true == t, pred == p) for p in np.unique(pred)[1:]) for t in np.unique(true)[1:]]


def test_two_touching_nuclei_are_separated() -> None:
    true = _discs((64, 64), [(32, 22, 10), (32, 39, 10)])  # centres 17 px apart: the discs overlap
    assert ndimage.label(true > 0)[1] == 1  # one foreground blob
    inst, cells = postprocess(*_maps(true), None)
    assert len(cells) == 2 and len(np.unique(inst)) == 3
    assert min(_matches(inst, true)) > 0.8


def test_single_nucleus_stays_one_and_fields_match_the_map() -> None:
    true = _discs((48, 56), [(20, 30, 9)])
    prob, hv = _maps(true)
    prob[true > 0] = np.linspace(0.6, 1.0, int((true > 0).sum()))
    inst, cells = postprocess(prob, hv, None)
    assert inst.dtype == np.int32 and inst.shape == true.shape
    assert len(cells) == 1 and _matches(inst, true)[0] > 0.9
    _assert_consistent(inst, cells, prob)
    assert cells[0].type == 0 and cells[0].type_prob == 0.0  # untyped without type probabilities


def _assert_consistent(inst: np.ndarray, cells: list[Cell], prob: np.ndarray) -> None:
    assert [c.id for c in cells] == np.unique(inst)[1:].tolist()
    for c in cells:
        m = inst == c.id
        ys, xs = np.nonzero(m)
        assert c.area == m.sum()
        assert c.bbox == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        assert c.centroid == pytest.approx((xs.mean(), ys.mean()), abs=1e-9)
        assert c.prob == pytest.approx(float(prob[m].astype(np.float64).mean()), rel=1e-9)
        assert c.contour.ndim == 2 and c.contour.shape[1] == 2 and len(c.contour) >= 3
        # every contour point is an instance pixel with a 4-neighbour outside the instance (or off the image)
        padded = np.pad(m, 1)
        for x, y in c.contour:
            assert m[y, x]
            assert not (padded[y, x + 1] and padded[y + 2, x + 1] and padded[y + 1, x] and padded[y + 1, x + 2])


def test_many_nuclei_fields_and_contours_are_consistent() -> None:
    rng = np.random.default_rng(1)
    discs = [(cy, cx, rng.uniform(5, 9)) for cy in range(12, 100, 22) for cx in range(12, 100, 20)]
    true = _discs((104, 104), [(cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3), r) for cy, cx, r in discs])
    prob, hv = _maps(true)
    prob = np.clip(prob + rng.normal(0, 0.02, prob.shape), 0, 1).astype(np.float32)
    types = rng.random((4, *true.shape)).astype(np.float32)
    inst, cells = postprocess(prob, hv, types / types.sum(0))
    assert len(cells) == len(discs)
    assert min(_matches(inst, true)) > 0.8
    _assert_consistent(inst, cells, prob)
    # the type vote against a straightforward per-instance count (with the background rule)
    winner = np.argmax(types, axis=0)
    for c in cells:
        counts = np.bincount(winner[inst == c.id], minlength=4)
        best = int(counts.argmax()) if counts.argmax() != 0 else int(counts[1:].argmax()) + 1
        assert (c.type, c.type_prob) == (best, pytest.approx(counts[best] / c.area))


def test_small_objects_are_removed() -> None:
    true = _discs((48, 48), [(24, 24, 8)])
    prob, hv = _maps(true)
    prob[2:5, 2:5] = 0.9  # 9 px speck: below the 10 px foreground minimum
    prob[40:44, 2:5] = 0.9  # 12 px: kept by step 1, but its marker does not survive the 5x5 opening
    inst, cells = postprocess(prob, hv, None)
    assert len(cells) == 1
    assert not inst[:6, :6].any() and not inst[38:46, :6].any()


def _types_for(shape: tuple[int, int], regions: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Type softmax-like maps: channel ``c`` high where a region says ``c``, background elsewhere."""
    k = 4
    logits = np.zeros((k, *shape), np.float32)
    logits[0] = 1.0
    for mask, c in regions:
        logits[:, mask] = 0.0
        logits[c, mask] = 1.0
    return logits


def test_type_vote_majority_and_background_rule() -> None:
    true = _discs((40, 120), [(20, 20, 8), (20, 60, 8), (20, 100, 8)])
    prob, hv = _maps(true)
    xx = np.mgrid[:40, :120][1]
    regions = [
        (xx < 22, 2),  # nucleus 1: class 2 on the left, class 3 on the right -> class 2 wins
        ((xx >= 22) & (xx < 40), 3),
        ((xx >= 56) & (xx < 60), 1),  # nucleus 2: background (the rest of it) wins, class 1 is second
    ]  # nucleus 3: every pixel votes background
    types = _types_for(true.shape, regions)
    types[3, :, 80:] = 0.5  # among 1..C, class 3 has the largest summed probability inside nucleus 3
    inst, cells = postprocess(prob, hv, types)
    assert len(cells) == 3
    by_x = sorted(cells, key=lambda c: c.centroid[0])
    m = [inst == c.id for c in by_x]
    assert by_x[0].type == 2 and by_x[0].type_prob == pytest.approx((m[0] & (xx < 22)).sum() / by_x[0].area)
    assert (m[0] & (xx < 22)).sum() > (m[0] & (xx >= 22)).sum()
    assert by_x[1].type == 1 and by_x[1].type_prob == pytest.approx((m[1] & (xx < 60) & (xx >= 56)).sum() / m[1].sum())
    assert by_x[1].type_prob < 0.5  # background had the most votes
    assert by_x[2].type == 3 and by_x[2].type_prob == 0.0


def test_twenty_x_settings_split_small_touching_nuclei() -> None:
    true = _discs((40, 40), [(20, 14, 5), (20, 23, 5)])  # 20x: half the size
    prob, hv = _maps(true)
    inst, cells = postprocess(prob, hv, None, magnification=20)
    assert len(cells) == 2 and min(_matches(inst, true)) > 0.7
    with pytest.raises(ConfigError, match="magnification"):
        postprocess(prob, hv, None, magnification=30)


def test_empty_input_gives_no_cells() -> None:
    for prob in (np.zeros((32, 32), np.float32), np.full((32, 32), 0.4, np.float32)):
        inst, cells = postprocess(prob, np.zeros((2, 32, 32), np.float32), np.ones((3, 32, 32), np.float32) / 3)
        assert cells == [] and inst.dtype == np.int32 and not inst.any()


def test_instances_with_degenerate_contours_leave_map_and_list() -> None:
    inst = np.zeros((20, 20), np.int64)
    inst[2:8, 2:8] = 3
    inst[12, 3:9] = 5  # a one-pixel-high line: 2 contour points
    inst[15:18, 15:18] = 7
    given = inst.copy()
    out, cells = cells_from_instances(inst)
    assert np.array_equal(inst, given)  # the input is not modified
    assert out.dtype == np.int32 and [c.id for c in cells] == [3, 7]
    assert not (out == 5).any() and (out == 3).sum() == 36 and (out == 7).sum() == 9
    assert [c.prob for c in cells] == [1.0, 1.0] and cells[0].contour.tolist() == [[2, 2], [2, 7], [7, 7], [7, 2]]
    assert cells_from_instances(np.zeros((5, 5), np.int32))[1] == []


def test_fill_holes_equals_scipy() -> None:
    rng = np.random.default_rng(0)
    for p in (0.3, 0.5, 0.7):
        mask = ndimage.binary_opening(rng.random((40, 50)) < p)
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    assert fill_holes(np.ones((4, 4), bool)).all()


def test_type_argmax_equals_numpy_with_ties() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (5, 30, 30)).astype(np.float32)  # many ties: the lowest channel must win
    assert np.array_equal(type_argmax(x), np.argmax(x, axis=0))


def _published_instances(prob: np.ndarray, hv: np.ndarray, ksize: int = 21, marker_min: int = 10) -> np.ndarray:
    """Steps 1-7 written as the HoVer-Net / CellViT code writes them (scipy labelling and hole filling)."""

    def norm(x: np.ndarray) -> np.ndarray:
        return cv2.normalize(x, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)

    def drop_small(lab: np.ndarray, size: int) -> np.ndarray:
        lab[(np.bincount(lab.ravel()) < size)[lab]] = 0
        return lab

    blb = drop_small(ndimage.label((prob > 0.5).astype(np.int32))[0], 10)
    blb[blb > 0] = 1
    sh = 1 - norm(cv2.Sobel(norm(hv[0]), cv2.CV_64F, 1, 0, ksize=ksize))
    sv = 1 - norm(cv2.Sobel(norm(hv[1]), cv2.CV_64F, 0, 1, ksize=ksize))
    overall = np.maximum(sh, sv) - (1 - blb)
    overall[overall < 0] = 0
    dist = -cv2.GaussianBlur((1.0 - overall) * blb, (3, 3), 0)
    marker = blb - (overall >= 0.4).astype(np.int32)
    marker[marker < 0] = 0
    marker = ndimage.binary_fill_holes(marker).astype(np.uint8)
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    marker = drop_small(ndimage.label(marker)[0], marker_min)
    return watershed(dist, markers=marker, mask=blb)


def test_instance_map_equals_the_published_pipeline() -> None:
    rng = np.random.default_rng(2)
    discs = [(rng.uniform(6, 90), rng.uniform(6, 90), rng.uniform(4, 9)) for _ in range(30)]
    true = _discs((96, 96), discs)
    prob, hv = _maps(true)
    prob = np.clip(prob + rng.normal(0, 0.2, prob.shape), 0, 1).astype(np.float32)  # specks and holes
    hv = (hv + rng.normal(0, 0.05, hv.shape)).astype(np.float32)
    for magnification, (ksize, marker_min) in ((40, (21, 10)), (20, (11, 3))):
        inst, cells = postprocess(prob, hv, None, magnification=magnification)
        expected = _published_instances(prob, hv, ksize, marker_min)
        kept = np.isin(expected, [c.id for c in cells])  # ours also drops instances with degenerate contours
        assert np.array_equal(inst, np.where(kept, expected, 0))
        assert len(cells) > 10 and len(np.unique(expected)) - 1 - len(cells) <= 2
