"""Tile grid and the merge of per-tile cells: a synthetic instance map cut into tiles must come back whole."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import shapely
from scipy import ndimage

from medvit.apps.cell_seg.tiling import CellMerger, PlacedCell, Tile, merge_cells, tile_grid

TILE, OVERLAP = 128, 32
W, H = 520, 430


@dataclass
class _Cell:
    """The attributes of ``postproc.Cell`` (the merge only reads attributes)."""

    id: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    contour: np.ndarray
    area: int
    type: int
    type_prob: float
    prob: float


def label_cells(inst: np.ndarray) -> list[_Cell]:
    """Tiny stand-in for post-processing: connected components of the foreground, with contours."""
    lab, _ = ndimage.label(inst > 0)
    cells = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        m = lab[sl] == i
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contour = max(contours, key=len).reshape(-1, 2) + np.array([sl[1].start, sl[0].start])
        ys, xs = np.nonzero(m)
        centroid = (float(xs.mean() + sl[1].start), float(ys.mean() + sl[0].start))
        bbox = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        cells.append(_Cell(i, bbox, centroid, contour, int(m.sum()), 1 + i % 5, 1.0, 0.9))
    return cells


def _nuclei_map(seed: int = 0) -> np.ndarray:
    """Ellipses on purpose across tile edges, in overlap bands and in the 4-tile corners, plus random ones."""
    rng = np.random.default_rng(seed)
    xs = sorted({t.x for t in tile_grid(W, H, TILE, OVERLAP)})
    ys = sorted({t.y for t in tile_grid(W, H, TILE, OVERLAP)})
    centres = []
    for a, b in zip(xs[:-1], xs[1:], strict=True):
        for y in rng.uniform(10, H - 10, 4):
            centres += [(a + TILE - 2, y), (b + 1, y), ((b + a + TILE) / 2, y)]  # cut right / cut left / middle
    for a, b in zip(ys[:-1], ys[1:], strict=True):
        for x in rng.uniform(10, W - 10, 4):
            centres += [(x, a + TILE - 2), (x, b + 1)]
        for c0, c1 in zip(xs[:-1], xs[1:], strict=True):
            centres.append(((c1 + c0 + TILE) / 2, (b + a + TILE) / 2))  # seen whole by four tiles
    centres += [tuple(p) for p in rng.uniform((8, 8), (W - 8, H - 8), (60, 2))]
    inst = np.zeros((H, W), np.int32)
    placed: list[tuple[float, float, float]] = []
    for cx, cy in centres:
        r = float(rng.uniform(4, 9))
        if any(np.hypot(cx - px, cy - py) < r + pr + 3 for px, py, pr in placed):
            continue
        placed.append((cx, cy, r))
        axes = (round(r), max(3, round(r * rng.uniform(0.6, 1.0))))
        cv2.ellipse(inst, (round(cx), round(cy)), axes, float(rng.uniform(0, 180)), 0, 360, len(placed), -1)
    return inst


def _tile_cells(inst: np.ndarray, tiles: list[Tile]) -> list[tuple[Tile, list[_Cell]]]:
    return [(t, label_cells(inst[t.y : t.y + t.h, t.x : t.x + t.w])) for t in tiles]


def _gt_id(inst: np.ndarray, cell: PlacedCell) -> int:
    x, y = (round(v) for v in cell.centroid)
    return int(inst[y, x])


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap"),
    [(520, 430, 128, 32), (256, 256, 256, 64), (257, 100, 256, 64), (1000, 700, 256, 64), (300, 300, 64, 0)],
)
def test_grid_covers_every_pixel_and_cores_partition(width: int, height: int, tile: int, overlap: int) -> None:
    tiles = tile_grid(width, height, tile, overlap)
    cover = np.zeros((height, width), np.int32)
    owner = np.zeros((height, width), np.int32)
    for t in tiles:
        assert (t.w, t.h) == (tile, tile)
        if width >= tile and height >= tile:
            assert 0 <= t.x <= width - tile and 0 <= t.y <= height - tile  # shifted, never past the border
        cover[t.y : t.y + t.h, t.x : t.x + t.w] += 1
        x0, y0, x1, y1 = t.core
        owner[y0:y1, x0:x1] += 1
        assert t.x <= x0 < x1 <= t.x + t.w and t.y <= y0 < y1 <= t.y + t.h
    assert (cover >= 1).all() and (owner == 1).all()
    xs = sorted({t.x for t in tiles})
    assert all(b - a <= tile - overlap for a, b in zip(xs[:-1], xs[1:], strict=True))  # overlap >= requested
    assert [(t.row, t.col) for t in tiles] == sorted((t.row, t.col) for t in tiles)  # raster order


def test_grid_regular_stride_and_neighbours() -> None:
    tiles = tile_grid(520, 430, 128, 32)
    assert sorted({t.x for t in tiles}) == [0, 96, 192, 288, 384, 392]  # 5 strides end at 512: one more, shifted
    assert sorted({t.y for t in tiles}) == [0, 96, 192, 288, 302]
    first, last = tiles[0], tiles[-1]
    assert first.neighbours == (False, True, True, False) and first.core == (0, 0, 112, 112)
    assert last.neighbours == (True, False, False, True) and last.core == (
        452,
        359,
        520,
        430,
    )  # middles of the last overlaps


def test_every_nucleus_once_with_its_full_polygon() -> None:
    inst = _nuclei_map()
    tiles = tile_grid(W, H, TILE, OVERLAP)
    merged = merge_cells(tiles, _tile_cells(inst, tiles))
    ids = [_gt_id(inst, c) for c in merged]
    n = int(inst.max())
    assert sorted(ids) == list(range(1, n + 1))  # each nucleus exactly once, no background centroid
    reference = {_gt_id(inst, c): c for c in label_cells(inst)}
    for cell, gid in zip(merged, ids, strict=True):
        a, b = shapely.Polygon(cell.contour), shapely.Polygon(reference[gid].contour)
        assert a.intersection(b).area / a.union(b).area > 0.95
        assert cell.area == reference[gid].area
        assert cell.centroid == pytest.approx(reference[gid].centroid)
    # The map really exercises the merge: nuclei inside 1, 2 and 4 tiles, and nuclei cut by a tile edge.
    seen = {
        gid: sum(
            t.x <= c.bbox[1] and c.bbox[3] <= t.x + t.w and t.y <= c.bbox[0] and c.bbox[2] <= t.y + t.h for t in tiles
        )
        for gid, c in reference.items()
    }
    assert {1, 2, 4} <= set(seen.values())
    cut = sum(any(c.bbox[3] == t.w or c.bbox[2] == t.h for c in cells) for t, cells in _tile_cells(inst, tiles))
    assert cut >= 10


def test_streaming_equals_all_at_once_and_holds_only_a_band() -> None:
    inst = _nuclei_map(seed=3)
    tiles = tile_grid(W, H, TILE, OVERLAP)
    per_tile = _tile_cells(inst, tiles)
    stream = CellMerger(tiles)
    emitted_before_last_row: list[PlacedCell] = []
    out: list[PlacedCell] = []
    for tile, cells in per_tile:
        got = stream.add(tile, cells)
        out += got
        if tile.row < max(t.row for t in tiles):
            emitted_before_last_row += got
    out += stream.finish()
    reference = CellMerger(tiles, stream=False)
    ref: list[PlacedCell] = []
    for tile, cells in per_tile:
        ref += reference.add(tile, cells)
    ref += reference.finish()

    def keyed(cells: list[PlacedCell]) -> list[tuple]:
        return sorted((c.tile, c.id) for c in cells)

    assert keyed(out) == keyed(ref)
    assert stream.stats.candidates == reference.stats.candidates > 0
    assert stream.stats.max_pending < reference.stats.max_pending  # rows resolved as they complete
    assert len(emitted_before_last_row) > len(out) // 2


def test_merge_rejects_out_of_order_tiles() -> None:
    tiles = tile_grid(W, H, TILE, OVERLAP)
    merger = CellMerger(tiles)
    merger.add(tiles[6], [])
    with pytest.raises(ValueError, match="row by row"):
        merger.add(tiles[0], [])
    with pytest.raises(ValueError, match="twice"):
        merger.add(tiles[6], [])


def test_nucleus_longer_than_the_overlap_keeps_its_largest_piece() -> None:
    # Cut by both tiles' edges: no tile sees it whole; CellViT would drop both pieces, here the larger one stays.
    inst = np.zeros((128, 224), np.int32)
    cv2.ellipse(inst, (118, 64), (40, 5), 0, 0, 360, 1, -1)  # spans x 78..158 across the 96..128 overlap
    tiles = tile_grid(224, 128, 128, 32)
    merged = merge_cells(tiles, _tile_cells(inst, tiles))
    assert len(merged) == 1
    assert merged[0].tile == (0, 1) and merged[0].bbox[3] == 159  # right tile holds 96..158, the larger piece


def test_skipped_tile_does_not_lose_its_neighbours_cells() -> None:
    inst = _nuclei_map(seed=5)
    tiles = tile_grid(W, H, TILE, OVERLAP)
    skipped = next(t for t in tiles if (t.row, t.col) == (1, 1))
    merged = merge_cells(tiles, [(t, c) for t, c in _tile_cells(inst, tiles) if t is not skipped])
    ids = [_gt_id(inst, c) for c in merged]
    assert len(ids) == len(set(ids))  # still no duplicates
    sx, sy = skipped.x, skipped.y
    outside = {
        gid
        for gid, c in ((_gt_id(inst, c), c) for c in label_cells(inst))
        if c.bbox[3] <= sx or c.bbox[1] >= sx + TILE or c.bbox[2] <= sy or c.bbox[0] >= sy + TILE
    }
    assert outside <= set(ids)


def test_tiles_that_disagree_still_give_each_nucleus_once() -> None:
    # Real tiles segment a nucleus slightly differently; here every other tile sees each nucleus one pixel thinner
    # (eroded: shapes stay apart), so copies are never identical and the pixel overlap decides.
    inst = _nuclei_map(seed=11)
    tiles = tile_grid(W, H, TILE, OVERLAP)
    kernel = np.ones((3, 3), np.uint8)
    per_tile = []
    for t in tiles:
        crop = inst[t.y : t.y + t.h, t.x : t.x + t.w]
        if (t.row + t.col) % 2:
            crop = cv2.erode((crop > 0).astype(np.uint8), kernel)
        per_tile.append((t, label_cells(crop)))
    merged = merge_cells(tiles, per_tile)
    ids = [_gt_id(inst, c) for c in merged]
    assert sorted(ids) == list(range(1, int(inst.max()) + 1))
    full = {_gt_id(inst, c): c.area for c in label_cells(inst)}
    assert sum(c.area == full[g] for c, g in zip(merged, ids, strict=True)) > 0.6 * len(ids)  # the larger copy won
