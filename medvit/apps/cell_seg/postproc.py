"""HoVer-Net post-processing: nucleus probability + HV map (+ type probabilities) -> instance map and cells.

The method of HoVer-Net (Graham et al. 2019) as CellViT and CellVTA run it, step by step for one tile:

1. foreground ``blb = nuclei_prob > 0.5`` (= the argmax of the two NP softmax channels), connected components
   (4-connectivity) smaller than 10 px removed;
2. ``h``, ``v`` = HV ch0 / ch1 min-max normalised to ``[0, 1]`` over the tile;
3. ``sobel_h = 1 - minmax(Sobel_x(h))``, ``sobel_v = 1 - minmax(Sobel_y(v))`` with ``cv2.Sobel`` of aperture 21
   at 40x (11 at 20x): the x-map differentiated along x, the y-map along y;
4. ``overall = max(sobel_h, sobel_v) - (1 - blb)``, negatives set to 0 (high on instance borders);
5. energy ``dist = -GaussianBlur((1 - overall) * blb, 3x3)``;
6. markers: ``blb - (overall >= 0.4)`` clipped at 0, holes filled, opened with a 5x5 ellipse, labelled, markers
   smaller than 10 px (40x) / 3 px (20x) removed;
7. ``watershed(dist, markers, mask=blb)`` (scikit-image);
8. per instance: bounding box, centroid (first moments), the first outer contour of ``cv2.findContours``
   (``RETR_TREE``, ``CHAIN_APPROX_SIMPLE``) in image coordinates, area, mean nucleus probability;
9. type: majority vote of the per-pixel type argmax inside the instance; if background wins and another class
   has votes, the most voted class among ``1..C`` (ties: the lowest id); ``type_prob`` = its pixel fraction.

Speed: the published code loops over the instances doing full-image work for each (an ``inst == i`` mask, its
bounding box, moments, an ``np.unique`` vote). Here every per-instance quantity is one pass over the tile: areas,
centroid sums, nucleus-probability sums and the ``(instance, type)`` vote table are ``np.bincount`` sums (the type
argmax only over instance pixels), bounding boxes come from one ``scipy.ndimage.find_objects``, and only the
contour is computed per instance, on its bounding-box crop. Hole filling is one flood fill of the background
from the tile border instead of scipy's iterated dilation, and components are counted with OpenCV's labelling
(markers numbered in raster order of their first pixel, as ``scipy.ndimage.label`` numbers them). The result is
the same instance map and cells (``benchmarks/cell_postproc.py`` asserts it against a straightforward
per-instance implementation and measures the speed-up).

Deviations from the official code (CellViT ``cell_segmentation/utils/post_proc_cellvit.py``), on purpose:

* An instance whose contour has fewer than 3 points (a line or a single pixel) is removed from the instance map
  *and* the list; the official code drops only its record and leaves it in the map, so map and records disagree
  (metrics computed from per-class maps then lose it anyway).
* An instance every pixel of which votes background gets the class ``1..C`` with the largest summed type
  probability inside it, with ``type_prob = 0.0`` (no pixel voted for it); the official code labels it type 0,
  which no class list can name. Without type probabilities (``type_prob=None``) every cell has ``type = 0`` and
  ``type_prob = 0.0`` (untyped).
* ``type_prob`` is the exact vote fraction (the official code divides by ``area + 1e-6``).
* The nucleus probability of each cell (mean of ``nuclei_prob`` inside it) is reported too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from medvit.shared.errors import ConfigError

__all__ = [
    "BINARY_MIN_SIZE",
    "MAGNIFICATION_SETTINGS",
    "MARKER_THRESHOLD",
    "Cell",
    "cells_from_instances",
    "fill_holes",
    "postprocess",
    "type_argmax",
]

#: Foreground components smaller than this many pixels are removed, at any magnification (as published).
BINARY_MIN_SIZE = 10
#: magnification -> (Sobel aperture, minimum marker size in pixels).
MAGNIFICATION_SETTINGS: dict[int, tuple[int, int]] = {40: (21, 10), 20: (11, 3)}
#: Marker threshold on the combined Sobel map.
MARKER_THRESHOLD = 0.4


@dataclass
class Cell:
    """One detected nucleus.

    Attributes:
        id: its id in the instance map.
        bbox: ``(row0, col0, row1, col1)``, exclusive ends.
        centroid: ``(x, y)`` = (column, row), pixels.
        contour: ``[K, 2]`` int32 ``(x, y)`` points, ``K >= 3``, closed implicitly.
        area: pixels.
        type: class ``1..C`` (0 when no type probabilities were given).
        type_prob: fraction of the instance's pixels whose type argmax is ``type``.
        prob: mean nucleus probability inside the instance.
    """

    id: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    contour: np.ndarray
    area: int
    type: int
    type_prob: float
    prob: float


def postprocess(
    nuclei_prob: np.ndarray, hv: np.ndarray, type_prob: np.ndarray | None, *, magnification: int = 40
) -> tuple[np.ndarray, list[Cell]]:
    """Instance map and cells of one tile.

    Args:
        nuclei_prob: ``[H, W]`` nucleus probability in ``[0, 1]`` (softmax channel 1 of the NP branch).
        hv: ``[2, H, W]`` HV prediction (ch0 horizontal, ch1 vertical).
        type_prob: ``[C+1, H, W]`` type softmax (channel 0 background), or None for untyped cells.
        magnification: 40 or 20 (selects the Sobel aperture and the marker size threshold).

    Returns:
        ``(inst_map, cells)``: int32 ``[H, W]`` (0 background, ids not necessarily contiguous) and one
        :class:`Cell` per id of the map, in increasing id order.
    """
    if magnification not in MAGNIFICATION_SETTINGS:
        known = sorted(MAGNIFICATION_SETTINGS)
        raise ConfigError(f"postprocess magnification: must be one of {known}, got {magnification}")
    _check_shapes(nuclei_prob, hv, type_prob)
    ksize, marker_min = MAGNIFICATION_SETTINGS[magnification]
    blb = _foreground(nuclei_prob)
    markers = None
    if blb.any():
        dist, markers = _energy_and_markers(blb, hv, ksize, marker_min)
    if markers is None or not markers.any():
        return np.zeros(nuclei_prob.shape, np.int32), []
    inst = watershed(dist, markers=markers, mask=blb).astype(np.int32, copy=False)
    cells = _describe(inst, nuclei_prob, type_prob)
    return inst, cells


def cells_from_instances(
    inst: np.ndarray, nuclei_prob: np.ndarray | None = None, type_prob: np.ndarray | None = None
) -> tuple[np.ndarray, list[Cell]]:
    """Steps 8-9 alone: the cells of an existing instance map (e.g. a ground-truth one).

    Args:
        inst: ``[H, W]`` integer instance map (0 background); not modified.
        nuclei_prob: ``[H, W]`` nucleus probability, or None (every ``Cell.prob`` is then 1.0).
        type_prob: ``[C+1, H, W]`` type scores whose per-pixel argmax votes (a one-hot type map works), or None.

    Returns:
        ``(inst_map, cells)``: an int32 copy of ``inst`` without the instances whose contour has < 3 points, and
        one :class:`Cell` per remaining id, in increasing id order.
    """
    if inst.ndim != 2 or (inst.size and inst.min() < 0):
        raise ValueError(f"cells_from_instances: inst must be [H, W] with ids >= 0, got shape {inst.shape}")
    if nuclei_prob is None:
        nuclei_prob = np.ones(inst.shape, np.float32)
    _check_shapes(nuclei_prob, None, type_prob)
    out = np.array(inst, dtype=np.int32)
    return out, _describe(out, nuclei_prob, type_prob) if out.any() else []


def _check_shapes(nuclei_prob: np.ndarray, hv: np.ndarray | None, type_prob: np.ndarray | None) -> None:
    if nuclei_prob.ndim != 2:
        raise ValueError(f"postprocess: nuclei_prob must be [H, W], got {nuclei_prob.shape}")
    if hv is not None and hv.shape != (2, *nuclei_prob.shape):
        raise ValueError(f"postprocess: hv must be [2, H, W] = {(2, *nuclei_prob.shape)}, got {hv.shape}")
    if type_prob is not None and (
        type_prob.ndim != 3 or type_prob.shape[1:] != nuclei_prob.shape or not 2 <= type_prob.shape[0] <= 256
    ):
        raise ValueError(f"postprocess: type_prob must be [C+1, H, W] with 2 <= C+1 <= 256, got {type_prob.shape}")


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (default structure) by one flood fill.

    scipy dilates an all-ones border into the background (4-connectivity) until nothing changes and keeps the
    complement of what it reached; here the background reachable from a one-pixel frame around the image is
    flood-filled once (4-connectivity) and everything else is kept. Same set, a few tens of times faster.

    Args:
        mask: ``[H, W]`` bool.

    Returns:
        ``[H, W]`` bool, ``mask`` with its holes filled.
    """
    framed = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)
    framed[1:-1, 1:-1] = mask
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    return framed[1:-1, 1:-1] != 2


def _foreground(nuclei_prob: np.ndarray) -> np.ndarray:
    """Step 1: bool map of the thresholded nucleus probability without (4-connected) components < 10 px."""
    fg = np.ascontiguousarray(nuclei_prob > 0.5)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    keep = stats[:, cv2.CC_STAT_AREA] >= BINARY_MIN_SIZE
    keep[0] = False
    return keep[labels]


def _minmax(x: np.ndarray) -> np.ndarray:
    return cv2.normalize(x, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)


def _energy_and_markers(blb: np.ndarray, hv: np.ndarray, ksize: int, marker_min: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-6 on the foreground ``blb`` (bool ``[H, W]``): the watershed energy and the labelled markers.

    Returns:
        ``(dist, markers)``: float64 ``[H, W]`` and int32 ``[H, W]``.
    """
    h = _minmax(np.asarray(hv[0], np.float32))
    v = _minmax(np.asarray(hv[1], np.float32))
    sobel = np.maximum(
        1.0 - _minmax(cv2.Sobel(h, cv2.CV_64F, 1, 0, ksize=ksize)),
        1.0 - _minmax(cv2.Sobel(v, cv2.CV_64F, 0, 1, ksize=ksize)),
    )
    # The published "max(sobel_h, sobel_v) - (1 - blb), clipped at 0" in float64: the float32 maximum inside the
    # foreground, exactly 0 outside (there the maximum, <= 1, minus 1 is <= 0).
    overall = np.where(blb, sobel.astype(np.float64), 0.0)
    dist = -cv2.GaussianBlur(np.where(blb, 1.0 - overall, 0.0), (3, 3), 0)
    marker = fill_holes(blb & (overall < MARKER_THRESHOLD)).view(np.uint8)
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    # Markers are numbered in raster order of their first pixel (as scipy.ndimage.label); they become the ids.
    _, markers, stats, _ = cv2.connectedComponentsWithStats(marker, connectivity=4, ltype=cv2.CV_32S)
    too_small = stats[:, cv2.CC_STAT_AREA] < marker_min
    too_small[0] = False
    if too_small.any():
        markers[too_small[markers]] = 0
    return dist, markers


def type_argmax(type_prob: np.ndarray) -> np.ndarray:
    """``np.argmax(type_prob, axis=0)`` (ties -> lowest channel) one plane at a time, a few times faster.

    Args:
        type_prob: ``[K, ...]``.

    Returns:
        ``[...]`` uint8 (K <= 256).
    """
    best = type_prob[0].copy()
    winner = np.zeros(best.shape, np.uint8)
    for c in range(1, type_prob.shape[0]):
        better = type_prob[c] > best  # strict: an equal later channel does not win, as np.argmax
        np.putmask(winner, better, c)
        np.maximum(best, type_prob[c], out=best)
    return winner


def _type_votes(
    inst: np.ndarray, type_prob: np.ndarray, area: np.ndarray, slices: list[tuple[slice, slice] | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Step 9 for every id at once: ``(type [n_ids + 1] int, type_prob [n_ids + 1] float)``, index = id."""
    n_ids, k = len(slices), type_prob.shape[0]
    flat = inst.ravel()
    inside = flat > 0  # only instance pixels vote: the argmax of the other pixels is never used
    voted = type_argmax(np.compress(inside, type_prob.reshape(k, -1), axis=1))
    # One vote table for all instances: row = instance id, column = voted type.
    votes = np.bincount(flat[inside].astype(np.intp) * k + voted, minlength=(n_ids + 1) * k)
    votes = votes.reshape(n_ids + 1, k)
    winner = votes.argmax(axis=1)  # ties -> lowest id, as a stable sort of np.unique's counts
    fg = votes[:, 1:]
    has_fg = fg.max(axis=1) > 0
    swap = (winner == 0) & has_fg
    winner[swap] = fg[swap].argmax(axis=1) + 1
    fraction = votes[np.arange(n_ids + 1), winner] / np.maximum(area, 1)
    for i in np.nonzero((area > 0) & ~has_fg)[0]:
        sl = slices[i - 1] if i > 0 else None
        if sl is not None:  # an instance (area > 0, so find_objects found it)
            winner[i] = _all_background_type(inst, type_prob, int(i), sl)
            fraction[i] = 0.0
    return winner, fraction


def _all_background_type(inst: np.ndarray, type_prob: np.ndarray, i: int, sl: tuple[slice, slice]) -> int:
    """Class ``1..C`` with the largest summed probability inside instance ``i`` (rare: every pixel voted 0)."""
    inside = inst[sl] == i
    return int(type_prob[1:, sl[0], sl[1]][:, inside].sum(axis=1).argmax()) + 1


def _describe(inst: np.ndarray, nuclei_prob: np.ndarray, type_prob: np.ndarray | None) -> list[Cell]:
    """Steps 8-9: one :class:`Cell` per instance; instances with a contour of < 3 points are erased from ``inst``."""
    n_ids = int(inst.max())
    slices = ndimage.find_objects(inst, max_label=n_ids)
    ids, boxes, contours = _contours(inst, slices)
    flat = inst.ravel()  # after the erasures, so the sums below cover the kept instances only
    height, width = inst.shape
    area = np.bincount(flat, minlength=n_ids + 1)
    # Sums of integers, exact in float64: the same m10, m01 as cv2.moments.
    col, row = _pixel_coordinates(height, width)
    sum_x = np.bincount(flat, weights=col, minlength=n_ids + 1)
    sum_y = np.bincount(flat, weights=row, minlength=n_ids + 1)
    sum_p = np.bincount(flat, weights=nuclei_prob.ravel().astype(np.float64), minlength=n_ids + 1)
    if type_prob is None:
        types, fractions = np.zeros(n_ids + 1, np.int64), np.zeros(n_ids + 1)
    else:
        types, fractions = _type_votes(inst, type_prob, area, slices)
    idx = np.asarray(ids, np.intp)
    n = area[idx]
    r0, c0 = boxes[:, 0], boxes[:, 1]
    # As the moments of the bounding-box crop plus its offset (the reference's rounding): local mean + origin.
    cx = (sum_x[idx] - n * c0) / n + c0
    cy = (sum_y[idx] - n * r0) / n + r0
    columns = zip(
        ids,
        map(tuple, boxes.tolist()),
        zip(cx.tolist(), cy.tolist(), strict=True),
        contours,
        n.tolist(),
        types[idx].tolist(),
        fractions[idx].tolist(),
        (sum_p[idx] / n).tolist(),
        strict=True,
    )
    return [Cell(*fields) for fields in columns]


@functools.lru_cache(maxsize=8)
def _pixel_coordinates(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row index of every pixel of a ``height`` x ``width`` tile, flattened (float64, read-only); cached
    because every tile of a run has the same size."""
    col = np.tile(np.arange(width, dtype=np.float64), height)
    row = np.repeat(np.arange(height, dtype=np.float64), width)
    col.flags.writeable = row.flags.writeable = False
    return col, row


def _contours(
    inst: np.ndarray, slices: list[tuple[slice, slice] | None]
) -> tuple[list[int], np.ndarray, list[np.ndarray]]:
    """First contour of every instance from its bounding-box crop; instances with < 3 points erased from ``inst``.

    Returns:
        ``(ids, boxes, contours)``: kept ids, their ``[n, 4]`` int64 ``(row0, col0, row1, col1)`` and ``[K, 2]``
        int32 ``(x, y)`` contours in image coordinates.
    """
    ids, boxes, contours = [], [], []
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        rows, cols = sl
        crop = np.equal(inst[sl], i)
        found = cv2.findContours(
            crop.view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE, offset=(cols.start, rows.start)
        )
        contour = found[0][0][:, 0, :]
        if contour.shape[0] < 3:
            inst[sl][crop] = 0
            continue
        ids.append(i)
        boxes.append((rows.start, cols.start, rows.stop, cols.stop))
        contours.append(contour)
    return ids, np.array(boxes, np.int64).reshape(-1, 4), contours
