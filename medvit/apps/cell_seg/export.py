"""What ``cell predict`` writes for its user: QuPath detections (GeoJSON), a cell table (CSV), overlays.

Cells are objects with ``postproc.Cell``'s attributes (``contour`` ``[K, 2]`` (x, y), ``centroid`` (x, y), ``bbox``
(row0, col0, row1, col1) exclusive ends, ``area`` pixels, ``type``, ``type_prob``, ``prob``) on the working grid,
e.g. :class:`~medvit.apps.cell_seg.tiling.PlacedCell`.

Coordinates in the files are **level-0 pixels of the input** (x = column, y = row), so a slide processed at 20x
still overlays at full resolution in QuPath: pixel centres map by ``(v + 0.5) * scale - 0.5`` and box edges by
``e * scale`` (``scale`` = :attr:`~medvit.apps.cell_seg.slide.ImageSource.scale`, level-0 pixels per working
pixel); areas are multiplied by ``scale ** 2``.

GeoJSON: a ``FeatureCollection`` of QuPath detection objects, the layout QuPath 0.4+ writes and reads
(*File > Import objects*, or drag and drop)::

    {"type": "Feature", "id": "<uuid>",
     "geometry": {"type": "Polygon", "coordinates": [[[x, y], ..., [x0, y0]]]},
     "properties": {"objectType": "detection", "isLocked": false,
                    "classification": {"name": "Neoplastic", "color": [255, 0, 0]},
                    "measurements": {"cell_id": 1, "probability": 0.93, "type_prob": 0.88, "area_px": 143.0}}}

Rings are closed (first point repeated), have at least 4 positions and are valid polygons: an outline that
touches itself (a one-pixel neck) is repaired with shapely's ``make_valid`` and its largest part kept; a degenerate
one (a line of pixels) becomes its half-pixel-wide hull. ``id`` is a UUID5 of the image name and the cell's index,
so a rerun gives the same ids. The CSV's ``id`` is the same index (``measurements.cell_id`` in the GeoJSON).

Both writers stream: one feature / row at a time into a temp file beside the target, renamed onto it by
:meth:`close` (:func:`medvit.shared.files.atomic_path`); an error before that leaves no final file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np

from medvit.shared.files import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "CELL_CSV_COLUMNS",
    "CONIC_COLOURS",
    "PANNUKE_COLOURS",
    "CellsCSVWriter",
    "GeoJSONWriter",
    "Overview",
    "cell_ring",
    "cells_to_label_maps",
    "class_colours",
    "draw_overlay",
    "overview",
    "validate_geojson",
    "write_cells_csv",
    "write_geojson",
]

RGB = tuple[int, int, int]

PANNUKE_COLOURS: dict[str, RGB] = {
    "neoplastic": (255, 0, 0),
    "inflammatory": (34, 221, 77),
    "connective": (35, 92, 236),
    "dead": (254, 255, 0),
    "epithelial": (255, 159, 68),
}
"""PanNuke classes: the red/green/blue/yellow/orange scheme of PanNuke figures and CellViT's viewers."""

CONIC_COLOURS: dict[str, RGB] = {
    "neutrophil": (200, 0, 200),
    "epithelial": (255, 159, 68),
    "lymphocyte": (34, 221, 77),
    "plasma": (0, 190, 210),
    "eosinophil": (255, 90, 150),
    "connective": (35, 92, 236),
}
"""CoNIC (Lizard) classes; epithelial and connective as in PanNuke, lymphocytes in the inflammatory green."""

FALLBACK_PALETTE: tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
"""Colours (matplotlib's tab10) for class names outside the tables, by type id."""

_SYNONYMS = {"lymphocytes": "lymphocyte", "neutrophils": "neutrophil", "eosinophils": "eosinophil"}
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "medvit/cell/detections")

CELL_CSV_COLUMNS: tuple[str, ...] = (
    "id", "centroid_x", "centroid_y", "area", "class", "class_name", "probability", "type_prob",
    "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
)  # fmt: skip
"""Columns of ``<stem>.cells.csv`` (level-0 pixels; ``class`` is the type id, ``bbox_x1/y1`` exclusive)."""


def class_colours(class_names: Sequence[str]) -> list[RGB]:
    """Display colour of every type id (index = type id; index 0, background, is grey).

    Args:
        class_names: Names by type id, e.g. ``["Background", "Neoplastic", ...]`` (dataset.json's nuclei_types).

    Returns:
        One RGB tuple per name: PanNuke / CoNIC names from their tables (case-insensitive), others from
        :data:`FALLBACK_PALETTE`.
    """
    out: list[RGB] = []
    for i, name in enumerate(class_names):
        key = name.strip().lower()
        key = _SYNONYMS.get(key, key)
        if i == 0:
            out.append((128, 128, 128))
        elif key in PANNUKE_COLOURS:
            out.append(PANNUKE_COLOURS[key])
        elif key in CONIC_COLOURS:
            out.append(CONIC_COLOURS[key])
        else:
            out.append(FALLBACK_PALETTE[(i - 1) % len(FALLBACK_PALETTE)])
    return out


def _class_name(class_names: Sequence[str], t: int) -> str:
    return class_names[t] if 0 <= t < len(class_names) else f"Type {t}"


def _colour(colours: Sequence[RGB], t: int) -> RGB:
    return tuple(colours[t]) if 0 <= t < len(colours) else FALLBACK_PALETTE[t % len(FALLBACK_PALETTE)]  # type: ignore[return-value]


def _finite(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None  # JSON has no NaN; QuPath reads null as a missing value


# --------------------------------------------------------------------------------------------- geometry


def cell_ring(contour: np.ndarray, bbox: Sequence[int] | None = None) -> np.ndarray:
    """A valid closed polygon ring for a cell outline (working-grid coordinates).

    Args:
        contour: ``[K, 2]`` (x, y) outline points, closed implicitly.
        bbox: ``(row0, col0, row1, col1)``: the last resort for an empty outline.

    Returns:
        ``[M, 2]`` float64 with ``M >= 4`` and ``ring[0] == ring[-1]``, a valid simple polygon.
    """
    import shapely

    pts = np.asarray(contour, dtype=np.float64).reshape(-1, 2)
    if len(pts) > 1:
        keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)  # drop repeated consecutive points
        pts = pts[keep] if keep.any() else pts[:1]
    if len(pts) >= 3:
        poly = shapely.Polygon(pts)
        if poly.is_valid and poly.area > 0:
            return np.vstack([pts, pts[:1]])
        poly = shapely.make_valid(poly)
        parts = [g for g in getattr(poly, "geoms", [poly]) if g.geom_type == "Polygon" and g.area > 0]
        if parts:
            return np.asarray(max(parts, key=lambda g: g.area).exterior.coords, dtype=np.float64)
    if len(pts) == 0 and bbox is not None:
        r0, c0, r1, c1 = bbox
        pts = np.array([[c0, r0], [c1 - 1, r1 - 1]], dtype=np.float64)
    hull = shapely.MultiPoint(pts).convex_hull.buffer(0.5, quad_segs=2)
    return np.asarray(hull.exterior.coords, dtype=np.float64)


class _Placement:
    """Working grid -> level-0 pixels (see the module docstring)."""

    def __init__(self, scale: float, precision: int) -> None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)
        self.precision = precision

    def points(self, xy: np.ndarray) -> list[list[float]] | list[list[int]]:
        if self.scale == 1.0 and np.all(xy == np.round(xy)):
            return np.asarray(xy, dtype=np.int64).tolist()
        return np.round((np.asarray(xy) + 0.5) * self.scale - 0.5, self.precision).tolist()

    def point(self, x: float, y: float) -> tuple[float, float]:
        s = self.scale
        return round((x + 0.5) * s - 0.5, self.precision), round((y + 0.5) * s - 0.5, self.precision)

    def edge(self, e: float) -> float | int:
        return int(e) if self.scale == 1.0 else round(e * self.scale, self.precision)

    def area(self, a: float) -> float | int:
        if self.scale == 1.0 and float(a).is_integer():
            return int(a)
        return round(float(a) * self.scale**2, self.precision)


# ---------------------------------------------------------------------------------------------- writers


class _StreamWriter:
    """A text file written through :func:`atomic_path`: renamed onto ``path`` by :meth:`close` only."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        fh = open(tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close() / abort()
        self._fh: TextIO = self._stack.enter_context(fh)
        self.count = 0
        self._open = True

    def _finish(self) -> None:
        """Write the file's ending (subclasses)."""

    def close(self) -> Path:
        """Finish the file and rename it onto its final name."""
        if self._open:
            self._open = False
            try:
                self._finish()
            except BaseException as exc:
                self._stack.__exit__(type(exc), exc, exc.__traceback__)
                raise
            self._stack.close()
        return self.path

    def abort(self) -> None:
        """Drop the temp file; the final file (if an earlier run wrote one) stays as it was."""
        if self._open:
            self._open = False
            err = RuntimeError(f"writing {self.path} was aborted")
            with contextlib.suppress(RuntimeError):
                self._stack.__exit__(RuntimeError, err, None)

    def __enter__(self) -> _StreamWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class GeoJSONWriter(_StreamWriter):
    """Stream cells into a QuPath-importable GeoJSON ``FeatureCollection`` (see the module docstring).

    Args:
        path: Final file (e.g. ``<stem>.cells.geojson``).
        class_names: Names by type id (index 0 = background).
        image_name: Seeds the deterministic feature UUIDs (use the input's file name).
        scale: Level-0 pixels per working pixel (``ImageSource.scale``).
        mpp: Microns per working pixel (``ImageSource.mpp``): adds an ``area_um2`` measurement when given.
        colours: Colour per type id; default :func:`class_colours`.
        precision: Decimals of non-integer coordinates.

    Use::

        with GeoJSONWriter(out / "a.cells.geojson", class_names=names, image_name="a.svs", scale=src.scale) as w:
            for tile, cells in results:
                w.write_many(merger.add(tile, cells))
            w.write_many(merger.finish())
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        class_names: Sequence[str],
        image_name: str,
        scale: float = 1.0,
        mpp: float | None = None,
        colours: Sequence[RGB] | None = None,
        precision: int = 2,
    ) -> None:
        self._place = _Placement(scale, precision)  # validate before a temp file exists
        super().__init__(path)
        self.class_names = list(class_names)
        self.colours = list(colours) if colours is not None else class_colours(self.class_names)
        self.image_name = image_name
        self.mpp = mpp
        self._fh.write('{"type":"FeatureCollection","features":[')

    def feature(self, cell: Any, index: int) -> dict[str, Any]:
        """The GeoJSON feature of one cell (``index``: its 1-based number in the file)."""
        t = int(cell.type)
        ring = cell_ring(cell.contour, getattr(cell, "bbox", None))
        measurements: dict[str, Any] = {
            "cell_id": index,
            "probability": _finite(cell.prob),
            "type_prob": _finite(cell.type_prob),
            "area_px": self._place.area(cell.area),
        }
        if self.mpp is not None:
            measurements["area_um2"] = round(float(cell.area) * self.mpp**2, 4)
        return {
            "type": "Feature",
            "id": str(uuid.uuid5(_UUID_NAMESPACE, f"{self.image_name}:{index}")),
            "geometry": {"type": "Polygon", "coordinates": [self._place.points(ring)]},
            "properties": {
                "objectType": "detection",
                "classification": {"name": _class_name(self.class_names, t), "color": list(_colour(self.colours, t))},
                "measurements": measurements,
                "isLocked": False,
            },
        }

    def write(self, cell: Any) -> int:
        """Append one cell; returns its index (1-based, the CSV's ``id``)."""
        self.count += 1
        text = json.dumps(self.feature(cell, self.count), separators=(",", ":"), allow_nan=False)
        self._fh.write(("," if self.count > 1 else "") + "\n" + text)
        return self.count

    def write_many(self, cells: Iterable[Any]) -> int:
        """Append cells; returns how many."""
        n = 0
        for cell in cells:
            self.write(cell)
            n += 1
        return n

    def _finish(self) -> None:
        self._fh.write("\n]}\n")


class CellsCSVWriter(_StreamWriter):
    """Stream cells into a CSV table with :data:`CELL_CSV_COLUMNS` (level-0 pixels).

    Args:
        path: Final file (e.g. ``<stem>.cells.csv``).
        class_names: Names by type id.
        scale: Level-0 pixels per working pixel.
        precision: Decimals of coordinates and areas.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, class_names: Sequence[str], scale: float = 1.0, precision: int = 2
    ) -> None:
        self._place = _Placement(scale, precision)
        super().__init__(path)
        self.class_names = list(class_names)
        self._csv = csv.writer(self._fh)
        self._csv.writerow(CELL_CSV_COLUMNS)

    def write(self, cell: Any) -> int:
        """Append one cell; returns its id (1-based, same numbering as :class:`GeoJSONWriter`)."""
        self.count += 1
        t = int(cell.type)
        r0, c0, r1, c1 = cell.bbox
        cx, cy = self._place.point(*cell.centroid)
        prob, tprob = _finite(cell.prob), _finite(cell.type_prob)
        edge = self._place.edge
        self._csv.writerow(
            [
                self.count, cx, cy, self._place.area(cell.area), t, _class_name(self.class_names, t),
                "" if prob is None else round(prob, 6), "" if tprob is None else round(tprob, 6),
                edge(c0), edge(r0), edge(c1), edge(r1),
            ]
        )  # fmt: skip
        return self.count

    def write_many(self, cells: Iterable[Any]) -> int:
        """Append cells; returns how many."""
        n = 0
        for cell in cells:
            self.write(cell)
            n += 1
        return n


def write_geojson(path: str | os.PathLike[str], cells: Iterable[Any], **kwargs: Any) -> int:
    """Write cells to a GeoJSON file in one go (keyword arguments: :class:`GeoJSONWriter`); returns the count."""
    with GeoJSONWriter(path, **kwargs) as w:
        return w.write_many(cells)


def write_cells_csv(path: str | os.PathLike[str], cells: Iterable[Any], **kwargs: Any) -> int:
    """Write cells to a CSV file in one go (keyword arguments: :class:`CellsCSVWriter`); returns the count."""
    with CellsCSVWriter(path, **kwargs) as w:
        return w.write_many(cells)


def validate_geojson(data: Mapping[str, Any] | str | os.PathLike[str]) -> int:
    """Check a detections file the way QuPath will read it; returns the number of features.

    Checks: a ``FeatureCollection``; every feature a ``Feature`` with an ``id``, a ``Polygon`` whose rings are
    closed, have >= 4 positions of 2 finite numbers, and form a valid polygon (shapely); ``properties`` with
    ``objectType`` ``"detection"``, a ``classification`` with a ``name`` and an RGB ``color``, and numeric (or null)
    ``measurements``.

    Raises:
        ValueError: The first problem found, naming the feature.
    """
    import shapely.geometry

    if not isinstance(data, Mapping):
        data = json.loads(Path(data).read_text(encoding="utf-8"))
    if data.get("type") != "FeatureCollection" or not isinstance(data.get("features"), list):
        raise ValueError("not a GeoJSON FeatureCollection")
    for k, feat in enumerate(data["features"]):
        problem = _feature_problem(feat, shapely.geometry.shape)
        if problem:
            raise ValueError(f"feature {k}: {problem}")
    return len(data["features"])


def _feature_problem(feat: Any, shape: Any) -> str | None:
    if not isinstance(feat, Mapping) or feat.get("type") != "Feature" or not feat.get("id"):
        return "not a Feature with an id"
    geom = feat.get("geometry") or {}
    if geom.get("type") != "Polygon" or not geom.get("coordinates"):
        return "geometry is not a Polygon"
    for ring in geom["coordinates"]:
        if len(ring) < 4 or ring[0] != ring[-1]:
            return "ring not closed or shorter than 4 positions"
        if not all(len(p) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in p) for p in ring):
            return "coordinates are not finite (x, y) numbers"
    if not shape(geom).is_valid:
        return "invalid polygon"
    props = feat.get("properties") or {}
    cls = props.get("classification") or {}
    if props.get("objectType") != "detection" or not isinstance(cls.get("name"), str):
        return "properties lack objectType 'detection' or a classification name"
    colour = cls.get("color")
    rgb_ok = isinstance(colour, list) and len(colour) == 3
    if not (rgb_ok and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
        return "classification color is not [r, g, b]"
    meas = props.get("measurements")
    if not isinstance(meas, Mapping) or not all(v is None or isinstance(v, (int, float)) for v in meas.values()):
        return "measurements are not a name -> number mapping"
    return None


# -------------------------------------------------------------------------------------------- rasters


def cells_to_label_maps(cells: Iterable[Any], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw cells into an instance map and a type map (the ``<stem>.labels.npz`` schema).

    Cell ``k`` (in iteration order) gets instance id ``k + 1`` (never 0: the first cell is not lost to the
    background); a later cell overwrites an earlier one where outlines overlap.

    Returns:
        ``(inst_map int32 [H, W], type_map uint8 [H, W])``.
    """
    import cv2

    inst = np.zeros((height, width), np.int32)
    types = np.zeros((height, width), np.uint8)
    for k, cell in enumerate(cells, start=1):
        pts = [np.asarray(cell.contour, dtype=np.int32).reshape(-1, 1, 2)]
        cv2.fillPoly(inst, pts, k)
        cv2.fillPoly(types, pts, int(cell.type))
    return inst, types


def _legend(width: int, entries: Sequence[tuple[str, RGB]]) -> np.ndarray:
    """A white strip with a colour swatch and a label per entry, wrapped to ``width``."""
    import cv2

    font, fs, line = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 16
    placed: list[tuple[int, int, str, RGB]] = []
    x, row = 4, 0
    for label, colour in entries:
        (tw, _), _ = cv2.getTextSize(label, font, fs, 1)
        item = 14 + tw + 10
        if x + item > width and x > 4:
            x, row = 4, row + 1
        placed.append((x, row, label, colour))
        x += item
    strip = np.full(((row + 1) * line + 4, width, 3), 255, np.uint8)
    for x, r, label, colour in placed:
        y = 4 + r * line
        cv2.rectangle(strip, (x, y + 2), (x + 9, y + 11), tuple(int(c) for c in colour), -1)
        cv2.putText(strip, label, (x + 13, y + 11), font, fs, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _legend_entries(counts: Mapping[int, int], class_names: Sequence[str], colours: Sequence[RGB]) -> list:
    return [(f"{_class_name(class_names, t)} {n}", _colour(colours, t)) for t, n in sorted(counts.items())]


def draw_overlay(
    image: np.ndarray,
    cells: Iterable[Any],
    colours: Sequence[RGB] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    thickness: int = 1,
    legend: bool = True,
) -> np.ndarray:
    """Cell outlines drawn on an image in their class colours, with a legend strip below the image.

    Args:
        image: RGB uint8 ``[H, W, 3]`` on the cells' grid (a tile or a plain image at the working resolution).
        cells: Cells (``contour``, ``type``).
        colours: Colour per type id; default :func:`class_colours` of ``class_names``.
        class_names: Names by type id for the legend (default ``Type k``).
        thickness: Outline width in pixels.
        legend: Append the legend (class name, count, swatch) below the image.

    Returns:
        RGB uint8 ``[H + legend, W, 3]`` (a copy; ``image`` is not changed).
    """
    import cv2

    names = list(class_names) if class_names is not None else []
    cols = list(colours) if colours is not None else class_colours(names) if names else list(FALLBACK_PALETTE)
    out = np.ascontiguousarray(image[..., :3], dtype=np.uint8).copy()
    by_type: dict[int, list[np.ndarray]] = {}
    for cell in cells:
        by_type.setdefault(int(cell.type), []).append(np.asarray(cell.contour, np.int32).reshape(-1, 1, 2))
    for t, contours in by_type.items():
        cv2.polylines(out, contours, True, tuple(int(c) for c in _colour(cols, t)), thickness)
    if not legend:
        return out
    counts = {t: len(c) for t, c in by_type.items()}
    return np.vstack([out, _legend(out.shape[1], _legend_entries(counts, names, cols))])


class Overview:
    """A downsampled picture of a whole slide with its cells, built while the cells stream past.

    Args:
        thumbnail: RGB uint8 ``[h, w, 3]`` of the whole working grid (``ImageSource.thumbnail``).
        factor: Working pixels per thumbnail pixel.
        class_names: Names by type id.
        colours: Colour per type id; default :func:`class_colours`.
    """

    def __init__(
        self,
        thumbnail: np.ndarray,
        factor: float,
        *,
        class_names: Sequence[str],
        colours: Sequence[RGB] | None = None,
    ) -> None:
        self.canvas = np.ascontiguousarray(thumbnail, dtype=np.uint8).copy()
        self.factor = float(factor)
        self.class_names = list(class_names)
        self.colours = list(colours) if colours is not None else class_colours(self.class_names)
        self.counts: dict[int, int] = {}

    def add(self, cells: Iterable[Any]) -> None:
        """Draw cells: outlines where a nucleus is still >= 4 thumbnail pixels wide, else a dot."""
        import cv2

        f = self.factor
        for cell in cells:
            t = int(cell.type)
            self.counts[t] = self.counts.get(t, 0) + 1
            colour = tuple(int(c) for c in _colour(self.colours, t))
            r0, c0, r1, c1 = cell.bbox
            if max(r1 - r0, c1 - c0) / f >= 4:
                pts = np.round((np.asarray(cell.contour, np.float64) + 0.5) / f - 0.5).astype(np.int32)
                cv2.polylines(self.canvas, [pts.reshape(-1, 1, 2)], True, colour, 1)
            else:
                cx, cy = cell.centroid
                cv2.circle(self.canvas, (round((cx + 0.5) / f - 0.5), round((cy + 0.5) / f - 0.5)), 1, colour, -1)

    def image(self, legend: bool = True) -> np.ndarray:
        """The picture so far (RGB uint8), with the legend strip below it."""
        if not legend:
            return self.canvas.copy()
        entries = _legend_entries(self.counts, self.class_names, self.colours)
        return np.vstack([self.canvas, _legend(self.canvas.shape[1], entries)])


def overview(
    source: Any,
    cells: Iterable[Any],
    *,
    class_names: Sequence[str],
    colours: Sequence[RGB] | None = None,
    max_side: int = 4096,
) -> np.ndarray:
    """One-shot :class:`Overview` of a source (``ImageSource``) and its cells; RGB uint8 with a legend."""
    thumb, factor = source.thumbnail(max_side)
    view = Overview(thumb, factor, class_names=class_names, colours=colours)
    view.add(cells)
    return view.image()
