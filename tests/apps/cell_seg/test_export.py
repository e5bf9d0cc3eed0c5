"""Outputs of ``cell predict``: QuPath GeoJSON, the cell CSV, overlays, label maps."""

from __future__ import annotations

import csv
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import shapely.geometry

from medvit.apps.cell_seg.export import (
    CELL_CSV_COLUMNS,
    FALLBACK_PALETTE,
    PANNUKE_COLOURS,
    CellsCSVWriter,
    GeoJSONWriter,
    Overview,
    cell_ring,
    cells_to_label_maps,
    class_colours,
    draw_overlay,
    validate_geojson,
    write_cells_csv,
    write_geojson,
)

PANNUKE = ["Background", "Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"]


@dataclass
class _Cell:
    id: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    contour: np.ndarray
    area: int
    type: int
    type_prob: float
    prob: float


def _square(x0: int, y0: int, side: int, t: int = 1, prob: float = 0.9) -> _Cell:
    c = np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]])
    mid = x0 + side / 2, y0 + side / 2
    return _Cell(1, (y0, x0, y0 + side + 1, x0 + side + 1), mid, c, (side + 1) ** 2, t, 0.75, prob)


def _awkward_cells() -> list[_Cell]:
    """Outlines that post-processing can produce and that are not valid polygons as they stand."""
    figure8 = np.array([[0, 0], [4, 0], [4, 4], [8, 4], [8, 8], [4, 8], [4, 4], [0, 4]]) + 30  # touches itself
    line = np.array([[50, 50], [51, 50], [52, 50]])  # a one-pixel-high nucleus: zero area
    repeated = np.array([[60, 60], [60, 60], [66, 60], [66, 66], [66, 66], [60, 66]])
    two = np.array([[70, 70], [71, 71]])
    return [
        _square(5, 5, 10, t=1),
        _Cell(2, (30, 30, 39, 39), (34.0, 34.0), figure8, 40, 2, 0.6, float("nan")),
        _Cell(3, (50, 50, 51, 53), (51.0, 50.0), line, 3, 3, 1.0, 0.7),
        _Cell(4, (60, 60, 67, 67), (63.0, 63.0), repeated, 49, 9, 0.5, 0.8),  # type beyond the names
        _Cell(5, (70, 70, 72, 72), (70.5, 70.5), two, 3, 5, 1.0, 0.9),
    ]


def test_geojson_is_what_qupath_reads(tmp_path: Path) -> None:
    path = tmp_path / "a.cells.geojson"
    n = write_geojson(path, _awkward_cells(), class_names=PANNUKE, image_name="a.png", mpp=0.25)
    assert n == 5 and validate_geojson(path) == 5
    data = json.loads(path.read_text())
    for feat in data["features"]:
        geom = shapely.geometry.shape(feat["geometry"])
        assert geom.geom_type == "Polygon" and geom.is_valid and geom.area > 0
        ring = feat["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4
        uuid.UUID(feat["id"])
        props = feat["properties"]
        assert props["objectType"] == "detection" and props["isLocked"] is False
    first, second, _, fourth, _ = data["features"]
    assert first["properties"]["classification"] == {"name": "Neoplastic", "color": list(PANNUKE_COLOURS["neoplastic"])}
    assert first["geometry"]["coordinates"] == [[[5, 5], [15, 5], [15, 15], [5, 15], [5, 5]]]  # integers at scale 1
    m = first["properties"]["measurements"]
    assert m == {"cell_id": 1, "probability": 0.9, "type_prob": 0.75, "area_px": 121.0, "area_um2": 7.5625}
    assert second["properties"]["measurements"]["probability"] is None  # NaN is not JSON
    assert fourth["properties"]["classification"]["name"] == "Type 9"
    # The self-touching outline keeps its larger lobe's area; nothing is invented.
    assert shapely.geometry.shape(second["geometry"]).area == pytest.approx(16.0)


def test_geojson_ids_are_deterministic_and_per_image(tmp_path: Path) -> None:
    cells = [_square(0, 0, 5), _square(10, 10, 5)]
    ids = []
    for name, image in (("1", "a.svs"), ("2", "a.svs"), ("3", "b.svs")):
        write_geojson(tmp_path / f"{name}.geojson", cells, class_names=PANNUKE, image_name=image)
        ids.append([f["id"] for f in json.loads((tmp_path / f"{name}.geojson").read_text())["features"]])
    assert ids[0] == ids[1] and len(set(ids[0])) == 2 and not set(ids[0]) & set(ids[2])


def test_coordinates_are_level0_pixels(tmp_path: Path) -> None:
    # Inference at 20x on a 40x slide: scale 2. Pixel centre j -> (j + 0.5) * 2 - 0.5, box edges e -> 2 e.
    cell = _square(10, 20, 4)
    write_geojson(tmp_path / "s.geojson", [cell], class_names=PANNUKE, image_name="s.svs", scale=2.0)
    feat = json.loads((tmp_path / "s.geojson").read_text())["features"][0]
    assert feat["geometry"]["coordinates"][0][:3] == [[20.5, 40.5], [28.5, 40.5], [28.5, 48.5]]
    assert feat["properties"]["measurements"]["area_px"] == 100.0  # 25 working pixels, 4 level-0 pixels each
    write_cells_csv(tmp_path / "s.csv", [cell], class_names=PANNUKE, scale=2.0)
    with open(tmp_path / "s.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert (float(row["centroid_x"]), float(row["centroid_y"])) == (24.5, 44.5)
    assert [float(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")] == [20.0, 40.0, 30.0, 50.0]
    assert float(row["area"]) == 100.0


def test_validator_rejects_what_qupath_would_not_read(tmp_path: Path) -> None:
    write_geojson(tmp_path / "ok.geojson", [_square(0, 0, 5)], class_names=PANNUKE, image_name="x")
    good = json.loads((tmp_path / "ok.geojson").read_text())
    breakages = {
        "not closed": lambda f: f["geometry"]["coordinates"][0].pop(),
        "detection": lambda f: f["properties"].update(objectType="annotation"),
        "color": lambda f: f["properties"]["classification"].update(color="red"),
        "finite": lambda f: f["geometry"]["coordinates"][0][1].__setitem__(0, float("inf")),
        "invalid polygon": lambda f: f["geometry"].update(coordinates=[[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]),
    }
    for what, breaks in breakages.items():
        data = json.loads(json.dumps(good))
        breaks(data["features"][0])
        with pytest.raises(ValueError, match="feature 0"):
            validate_geojson(data)
        assert what


def test_writers_are_atomic(tmp_path: Path) -> None:
    path = tmp_path / "a.cells.geojson"
    with (
        pytest.raises(RuntimeError, match="model crashed"),
        GeoJSONWriter(path, class_names=PANNUKE, image_name="a") as w,
    ):
        w.write(_square(0, 0, 5))
        assert not path.exists()  # nothing final while streaming
        raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []  # no final file, no temp left
    write_geojson(path, [_square(0, 0, 5)], class_names=PANNUKE, image_name="a")
    before = path.read_bytes()
    csv_path = tmp_path / "a.cells.csv"
    writer = CellsCSVWriter(csv_path, class_names=PANNUKE)
    writer.write(_square(0, 0, 5))
    writer.abort()
    with pytest.raises(KeyboardInterrupt), GeoJSONWriter(path, class_names=PANNUKE, image_name="a") as w:
        w.write(_square(9, 9, 5))
        raise KeyboardInterrupt
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.cells.geojson"]


def test_csv_columns_and_numbering(tmp_path: Path) -> None:
    cells = _awkward_cells()
    path = tmp_path / "a.cells.csv"
    assert write_cells_csv(path, cells, class_names=PANNUKE) == 5
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CELL_CSV_COLUMNS
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["class_name"] for r in rows] == ["Neoplastic", "Inflammatory", "Connective", "Type 9", "Epithelial"]
    assert rows[0]["probability"] == "0.9" and rows[1]["probability"] == ""  # NaN left empty
    assert [rows[0][k] for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "area")] == ["5", "5", "16", "16", "121"]


def test_overlay_colours_the_contours(tmp_path: Path) -> None:
    image = np.full((64, 80, 3), 200, np.uint8)
    cells = [_square(10, 10, 20, t=1), _square(40, 30, 10, t=3)]
    out = draw_overlay(image, cells, class_names=PANNUKE)
    assert out.shape[1] == 80 and out.shape[0] > 64 and out.dtype == np.uint8  # legend strip below
    red, blue = PANNUKE_COLOURS["neoplastic"], PANNUKE_COLOURS["connective"]
    for x, y in ((10, 10), (20, 10), (30, 25), (10, 30)):
        assert tuple(out[y, x]) == red
    assert tuple(out[30, 45]) == blue and tuple(out[35, 50]) == blue
    assert tuple(out[20, 20]) == (200, 200, 200) and (image == 200).all()  # inside untouched, input not changed
    legend = out[64:]
    assert (legend == red).all(axis=-1).any() and (legend == blue).all(axis=-1).any()
    plain = draw_overlay(image, cells, class_names=PANNUKE, legend=False)
    assert plain.shape == image.shape and np.array_equal(plain, out[:64])


def test_overview_draws_outlines_and_dots() -> None:
    thumb = np.full((50, 50, 3), 255, np.uint8)
    view = Overview(thumb, 4.0, class_names=PANNUKE)
    view.add([_square(40, 40, 60, t=2), _square(160, 120, 6, t=5)])  # 15 thumbnail px wide vs 1.75
    img = view.image()
    green, orange = PANNUKE_COLOURS["inflammatory"], PANNUKE_COLOURS["epithelial"]
    assert tuple(img[10, 10]) == green and tuple(img[10, 25]) == green  # outline corner (40 -> 10) and edge
    assert tuple(img[18, 18]) == (255, 255, 255)  # the outline is not filled
    assert tuple(img[30, 40]) == orange  # a dot at the small cell's centre (163, 123) / 4
    assert img.shape[0] > 50 and view.counts == {2: 1, 5: 1}


def test_label_maps_keep_the_first_cell() -> None:
    cells = [_square(2, 2, 4, t=4), _square(10, 3, 3, t=2)]
    inst, types = cells_to_label_maps(cells, 16, 16)
    assert inst.dtype == np.int32 and types.dtype == np.uint8
    assert (inst == 1).sum() == 25 and (inst == 2).sum() == 16
    assert set(np.unique(types[inst == 1])) == {4} and set(np.unique(types[inst == 2])) == {2}


def test_class_colours_tables_and_fallback() -> None:
    cols = class_colours(PANNUKE)
    assert cols[0] == (128, 128, 128) and cols[1] == (255, 0, 0) and cols[5] == PANNUKE_COLOURS["epithelial"]
    conic = class_colours(
        ["Background", "Neutrophil", "Epithelial", "Lymphocyte", "Plasma", "Eosinophil", "Connective"]
    )
    assert len(set(conic[1:])) == 6 and conic[2] == cols[5]
    assert class_colours(["bg", "mystery", "other"])[1:] == [FALLBACK_PALETTE[0], FALLBACK_PALETTE[1]]


def test_cell_ring_is_always_a_valid_closed_polygon() -> None:
    for cell in _awkward_cells():
        ring = cell_ring(cell.contour, cell.bbox)
        poly = shapely.geometry.Polygon(ring)
        assert len(ring) >= 4 and (ring[0] == ring[-1]).all() and poly.is_valid and poly.area > 0
