"""Overlapping tiles over a large image, and the merge that puts each nucleus cut by a tile border in once.

Grid (:func:`tile_grid`). Tiles of ``tile x tile`` working pixels start every ``stride = tile - overlap`` pixels;
the last row and column are shifted back to end exactly at the image border (so they overlap their neighbour by
more than ``overlap``), hence no tile but those of an image smaller than one tile ever reads past the border (those
are padded with white by :meth:`~medvit.apps.cell_seg.slide.ImageSource.read_region`). Every pixel is covered. Each
tile *owns* a core: the part of the plane nearer to it than to its neighbours, i.e. its rectangle minus half the
overlap on every side that has a neighbour (the middle of the actual overlap for the shifted last tile); the cores
partition the image.

Merge (:class:`CellMerger`, :func:`merge_cells`), after CellViT's post-processing of overlapping patches
(Hörst et al., CellViT, Medical Image Analysis 2024; the same in CellVTA's whole-slide inference):

1. a cell whose bounding box meets no other tile's rectangle cannot have a copy in another tile: kept at once;
2. every other cell is a candidate; a candidate whose box touches a tile side that has a neighbour is *cut*. A cut
   cell is dropped when another processed tile covers its whole box (that tile saw this part of the nucleus
   without the cut, CellViT's rule; it also removes slivers that do not overlap the neighbour's slightly
   different outline);
3. candidates of different tiles whose filled outlines overlap by more than 1 % of either area
   (``overlap_threshold``, CellViT's value; pairs found with a shapely ``STRtree`` over the boxes, overlap counted
   in pixels) are copies of one nucleus: the complete one wins over a cut one, then the **largest** (pixel area),
   then the one whose centroid lies in its tile's core, then the earlier tile. Chains are resolved greedily in that
   order (a winner removes every candidate it overlaps, as CellViT's repeated keep-the-largest passes do).

Deviation from CellViT: CellViT drops a cut cell whenever the neighbouring tile exists. Here a cut cell that no
other processed tile covers stays a (weakest) candidate, so a nucleus is still reported, by its largest piece,
when no tile sees it whole (a nucleus longer than the overlap) or when the neighbour tile was skipped (no
tissue).

Memory. Tiles arrive in raster order (row by row). A candidate can only overlap cells of tiles whose rectangles
its box meets, so once tile row ``r`` is complete, every group of overlapping candidates that reaches no later row
is final: it is resolved and emitted, and its outlines are freed. Only the candidates of about one band of
overlap across the image are ever held (the kept cells are handed back at once, for a streaming writer).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CellMerger", "MergeStats", "PlacedCell", "Tile", "merge_cells", "place_cell", "tile_grid"]


@dataclass(frozen=True)
class Tile:
    """One tile of the grid, in working-grid pixels.

    Attributes:
        x: Left column of the tile.
        y: Top row.
        w: Width (the tile size; may reach past the image for an image smaller than a tile).
        h: Height.
        row: Tile row (raster order: rows top to bottom, columns left to right).
        col: Tile column.
        core: ``(x0, y0, x1, y1)`` the region this tile owns (exclusive ends, clipped to the image).
        neighbours: ``(top, right, bottom, left)``: whether the grid has a tile beyond that side.
    """

    x: int
    y: int
    w: int
    h: int
    row: int
    col: int
    core: tuple[int, int, int, int]
    neighbours: tuple[bool, bool, bool, bool]

    def owns(self, cx: float, cy: float) -> bool:
        """Whether an image point lies in this tile's core."""
        x0, y0, x1, y1 = self.core
        return x0 <= cx < x1 and y0 <= cy < y1


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride``, the last one moved back to end at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _bounds(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """Owned interval of each tile along an axis: split at the middle of each overlap."""
    cuts = [(starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)]
    lows = [0, *cuts]
    highs = [*cuts, length]
    return list(zip(lows, highs, strict=True))


def tile_grid(width: int, height: int, tile: int = 256, overlap: int = 64) -> list[Tile]:
    """Overlapping tiles covering a ``width x height`` image, in raster order.

    Args:
        width: Image width (working pixels).
        height: Image height.
        tile: Tile side.
        overlap: Pixels shared by neighbouring tiles (at least; the last row/column shares more).

    Returns:
        Tiles row by row; ``tiles[k].row``/``.col`` give the grid position.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile} overlap={overlap}")
    xs, ys = _starts(width, tile, tile - overlap), _starts(height, tile, tile - overlap)
    xb, yb = _bounds(xs, tile, width), _bounds(ys, tile, height)
    tiles = []
    for r, y in enumerate(ys):
        for c, x in enumerate(xs):
            nb = (r > 0, c < len(xs) - 1, r < len(ys) - 1, c > 0)
            core = (xb[c][0], yb[r][0], xb[c][1], yb[r][1])
            tiles.append(Tile(x, y, tile, tile, r, c, core, nb))
    return tiles


# ------------------------------------------------------------------------------------------------ cells


@dataclass
class PlacedCell:
    """A cell in image (working-grid) coordinates: the attributes of ``postproc.Cell`` plus its tile.

    Attributes:
        id: Its id in its tile's instance map.
        bbox: ``(row0, col0, row1, col1)`` exclusive ends, image pixels.
        centroid: ``(x, y)`` image pixels.
        contour: ``[K, 2]`` int (x, y) image pixels, closed implicitly.
        area: Pixels.
        type: Class id 1..C (0 when the tile's cell had none).
        type_prob: Fraction of the instance's pixels voting for ``type``.
        prob: Mean nucleus probability inside the instance.
        tile: ``(row, col)`` of the tile it was taken from.
    """

    id: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    contour: np.ndarray
    area: int
    type: int
    type_prob: float
    prob: float
    tile: tuple[int, int] = (0, 0)


def place_cell(cell: Any, tile: Tile) -> PlacedCell:
    """Move a tile's cell (anything with ``postproc.Cell``'s attributes) into image coordinates."""
    r0, c0, r1, c1 = (int(v) for v in cell.bbox)
    cx, cy = cell.centroid
    contour = np.asarray(cell.contour).reshape(-1, 2).astype(np.int64) + np.array([tile.x, tile.y])
    return PlacedCell(
        id=int(getattr(cell, "id", 0)),
        bbox=(r0 + tile.y, c0 + tile.x, r1 + tile.y, c1 + tile.x),
        centroid=(float(cx) + tile.x, float(cy) + tile.y),
        contour=contour,
        area=int(cell.area),
        type=int(getattr(cell, "type", 0)),
        type_prob=float(getattr(cell, "type_prob", 1.0)),
        prob=float(getattr(cell, "prob", 1.0)),
        tile=(tile.row, tile.col),
    )


def _is_cut(cell: Any, tile: Tile) -> bool:
    """Whether a tile-local box touches a tile side that has a neighbour (the nucleus continues there)."""
    r0, c0, r1, c1 = (int(v) for v in cell.bbox)
    top, right, bottom, left = tile.neighbours
    return (top and r0 <= 0) or (left and c0 <= 0) or (bottom and r1 >= tile.h) or (right and c1 >= tile.w)


def _pixel_overlap(a: PlacedCell, b: PlacedCell) -> int:
    """Pixels shared by two cells' filled outlines (rasterised inside the intersection of their boxes)."""
    import cv2

    r0, c0 = max(a.bbox[0], b.bbox[0]), max(a.bbox[1], b.bbox[1])
    r1, c1 = min(a.bbox[2], b.bbox[2]), min(a.bbox[3], b.bbox[3])
    if r1 <= r0 or c1 <= c0:
        return 0
    if a.contour.shape == b.contour.shape and np.array_equal(a.contour, b.contour):
        return a.area  # the same outline from two tiles: the common case, and the slowest one for polygon overlay
    origin = np.array([c0, r0])
    ma = np.zeros((r1 - r0, c1 - c0), np.uint8)
    mb = np.zeros_like(ma)
    cv2.fillPoly(ma, [(a.contour - origin).astype(np.int32)], 1)
    cv2.fillPoly(mb, [(b.contour - origin).astype(np.int32)], 1)
    return int(np.count_nonzero(ma & mb))


@dataclass
class _Candidate:
    cell: PlacedCell
    key: tuple[int, int, int, int, int]  # larger wins: (not cut, area, owned, -tile order, -index)
    last_row: int
    serial: int


@dataclass
class MergeStats:
    """Counts of one merge.

    Attributes:
        received: Cells handed in by the tiles.
        direct: Kept at once (their box meets no other tile).
        candidates: Went through the overlap resolution.
        dropped: Candidates removed as copies of a kept one.
        max_pending: Most candidates held at one time (the memory high-water mark).
    """

    received: int = 0
    direct: int = 0
    candidates: int = 0
    dropped: int = 0
    max_pending: int = 0


class CellMerger:
    """Streaming merge of per-tile cells (see the module docstring for the rules).

    Feed the tiles in raster order (row by row; any order inside a row) with :meth:`add`; tiles without tissue
    may be left out. Each call returns the cells that became final; :meth:`finish` returns the rest.

    Overlaps are looked up only among the pending candidates of the tiles that the new cells' boxes meet (a
    shapely ``STRtree`` over that neighbourhood), once per pair, when the later tile arrives; cells of one tile
    never count as copies of each other (they are distinct instances of one instance map).

    Args:
        tiles: The complete grid from :func:`tile_grid` (all tiles, also those that will be skipped).
        overlap_threshold: Two polygons are copies of one nucleus when their intersection exceeds this fraction
            of either one's area.
        stream: Resolve after each completed tile row (``False``: everything at :meth:`finish`, the reference).
    """

    def __init__(self, tiles: Sequence[Tile], *, overlap_threshold: float = 0.01, stream: bool = True) -> None:
        if not tiles:
            raise ValueError("CellMerger needs the tile grid")
        self.threshold = float(overlap_threshold)
        self.stream = stream
        self._tile_size = (tiles[0].w, tiles[0].h)
        self._xs = sorted({t.x for t in tiles})
        self._ys = sorted({t.y for t in tiles})
        self._ncols = len(self._xs)
        self._by_tile: dict[tuple[int, int], list[_Candidate]] = {}
        self._edges: dict[int, list[int]] = {}
        self._serial = 0
        self._n_pending = 0
        self._seen: set[tuple[int, int]] = set()
        self._row = -1
        self.stats = MergeStats()

    def _span(self, starts: list[int], size: int, lo: int, hi: int) -> tuple[int, int]:
        """First and last tile index along an axis whose interval ``[s, s + size)`` meets ``[lo, hi)``."""
        first = bisect.bisect_right(starts, lo - size)  # s + size > lo
        last = bisect.bisect_left(starts, hi) - 1  # s < hi
        return first, last

    def add(self, tile: Tile, cells: Iterable[Any]) -> list[PlacedCell]:
        """Add one tile's cells (tile-local coordinates, ``postproc.Cell`` attributes).

        Returns:
            Cells that are final now, in image coordinates.

        Raises:
            ValueError: A tile of an earlier row after a later one, or the same tile twice.
        """
        if tile.row < self._row:
            raise ValueError(f"tiles must come row by row: tile row {tile.row} after row {self._row}")
        if (tile.row, tile.col) in self._seen:
            raise ValueError(f"tile (row {tile.row}, col {tile.col}) was added twice")
        self._seen.add((tile.row, tile.col))
        out: list[PlacedCell] = []
        if tile.row > self._row:
            if self.stream:
                out.extend(self._resolve(done_row=tile.row - 1))
            self._row = tile.row
        order = tile.row * self._ncols + tile.col
        tw, th = self._tile_size
        new: list[tuple[PlacedCell, tuple[int, int, int, int, int], tuple[int, int], tuple[int, int]]] = []
        for index, cell in enumerate(cells):
            self.stats.received += 1
            placed = place_cell(cell, tile)
            r0, c0, r1, c1 = placed.bbox
            rows, cols = self._span(self._ys, th, r0, r1), self._span(self._xs, tw, c0, c1)
            if rows == (tile.row, tile.row) and cols == (tile.col, tile.col):
                self.stats.direct += 1
                out.append(placed)
                continue
            key = (int(not _is_cut(cell, tile)), placed.area, int(tile.owns(*placed.centroid)), -order, -index)
            new.append((placed, key, rows, cols))
        if new:
            self._insert(tile, new)
        return out

    def _insert(self, tile: Tile, new: list[tuple[PlacedCell, Any, tuple[int, int], tuple[int, int]]]) -> None:
        """Make the new cells pending candidates and record their overlaps with earlier tiles' candidates."""
        cands = []
        for placed, key, rows, _ in new:
            cands.append(_Candidate(placed, key, rows[1], self._serial))
            self._serial += 1
        r_lo, r_hi = min(r[0] for *_, r, _ in new), max(r[1] for *_, r, _ in new)
        c_lo, c_hi = min(c[0] for *_, c in new), max(c[1] for *_, c in new)
        near = [
            cand
            for r in range(r_lo, r_hi + 1)
            for c in range(c_lo, c_hi + 1)
            if (r, c) != (tile.row, tile.col)
            for cand in self._by_tile.get((r, c), ())
        ]
        if near:
            for i, j in self._overlaps(cands, near):
                a, b = cands[i].serial, near[j].serial
                self._edges.setdefault(a, []).append(b)
                self._edges.setdefault(b, []).append(a)
        self._by_tile.setdefault((tile.row, tile.col), []).extend(cands)
        self.stats.candidates += len(cands)
        self._n_pending += len(cands)
        self.stats.max_pending = max(self.stats.max_pending, self._n_pending)

    def _overlaps(self, new: list[_Candidate], old: list[_Candidate]) -> list[tuple[int, int]]:
        """Index pairs (into ``new``, into ``old``) of cells overlapping by more than the threshold.

        A shapely ``STRtree`` over the boxes finds the pairs that can overlap; their overlap is then counted in
        pixels of the filled outlines (exact for outlines traced on a pixel grid, and about 4x faster than a
        polygon intersection, which is slowest for the identical outlines two tiles usually report).
        """
        import shapely

        def boxes(cands: list[_Candidate]) -> np.ndarray:
            b = np.array([c.cell.bbox for c in cands], dtype=np.float64)
            return shapely.box(b[:, 1], b[:, 0], b[:, 3] - 0.5, b[:, 2] - 0.5)

        pairs = shapely.STRtree(boxes(old)).query(boxes(new)).T
        out = []
        for i, j in pairs.tolist():
            a, b = new[i].cell, old[j].cell
            if _pixel_overlap(a, b) > self.threshold * min(a.area, b.area):
                out.append((i, j))
        return out

    def finish(self) -> list[PlacedCell]:
        """Resolve every remaining candidate; returns the last final cells."""
        out = self._resolve(done_row=None)
        logger.debug("cell merge: %s", self.stats)
        return out

    def _components(self, cands: list[_Candidate]) -> np.ndarray:
        """Connected-component label of each pending candidate in the overlap graph."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        where = {c.serial: i for i, c in enumerate(cands)}
        ii = [where[a] for c in cands for a in [c.serial] * len(self._edges.get(c.serial, ()))]
        jj = [where[b] for c in cands for b in self._edges.get(c.serial, ())]
        n = len(cands)
        graph = coo_matrix((np.ones(len(ii)), (ii, jj)), shape=(n, n))
        return connected_components(graph, directed=False)[1]

    def _seen_whole_elsewhere(self, cell: PlacedCell) -> bool:
        """Whether another tile that was added covers the whole box of a cut cell (so it saw the nucleus there)."""
        r0, c0, r1, c1 = cell.bbox
        tw, th = self._tile_size
        rows = range(bisect.bisect_left(self._ys, r1 - th), bisect.bisect_right(self._ys, r0))  # y <= r0, y + th >= r1
        cols = range(bisect.bisect_left(self._xs, c1 - tw), bisect.bisect_right(self._xs, c0))
        return any((r, c) != cell.tile and (r, c) in self._seen for r in rows for c in cols)

    def _resolve(self, done_row: int | None) -> list[PlacedCell]:
        """Resolve the groups of overlapping candidates that no tile after row ``done_row`` can reach."""
        cands = [c for group in self._by_tile.values() for c in group]
        if not cands:
            return []
        comp = self._components(cands)
        if done_row is None:
            ready = np.ones(len(cands), bool)
        else:
            comp_last = np.full(comp.max() + 1, -1)
            np.maximum.at(comp_last, comp, np.array([c.last_row for c in cands]))
            ready = comp_last[comp] <= done_row
        removed: set[int] = set()
        kept: list[_Candidate] = []
        for i in sorted(np.flatnonzero(ready).tolist(), key=lambda k: cands[k].key, reverse=True):
            c = cands[i]
            if c.serial in removed or (not c.key[0] and self._seen_whole_elsewhere(c.cell)):
                continue
            kept.append(c)
            removed.update(self._edges.get(c.serial, ()))
        for i in np.flatnonzero(ready).tolist():
            self._edges.pop(cands[i].serial, None)
        self.stats.dropped += int(ready.sum()) - len(kept)
        self._n_pending -= int(ready.sum())
        done = {cands[i].serial for i in np.flatnonzero(ready).tolist()}
        for key in list(self._by_tile):
            rest = [c for c in self._by_tile[key] if c.serial not in done]
            if rest:
                self._by_tile[key] = rest
            else:
                del self._by_tile[key]
        kept.sort(key=lambda c: (-c.key[3], -c.key[4]))  # tile order, then index
        return [c.cell for c in kept]


def merge_cells(
    tiles: Sequence[Tile],
    tile_cells: Iterable[tuple[Tile, Iterable[Any]]],
    *,
    overlap_threshold: float = 0.01,
) -> list[PlacedCell]:
    """Merge every tile's cells into one list in image coordinates, each nucleus once.

    Args:
        tiles: The complete grid (:func:`tile_grid`).
        tile_cells: ``(tile, cells)`` pairs in raster order (tiles without tissue may be missing); the cells are in
            tile-local coordinates with ``postproc.Cell``'s attributes.
        overlap_threshold: See :class:`CellMerger`.

    Returns:
        The merged cells. For a slide, prefer :class:`CellMerger` and write each batch of final cells at once.
    """
    merger = CellMerger(tiles, overlap_threshold=overlap_threshold)
    out: list[PlacedCell] = []
    for tile, cells in tile_cells:
        out.extend(merger.add(tile, cells))
    out.extend(merger.finish())
    return out
