"""Synthetic fundus photographs (DR grades) and OCT volumes (normal / fluid / drusen): determinism, files the eye
readers accept, and labels visible to simple detectors."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, uniform_filter

from medvit.shared.data.eye import find_fov, read_fundus, read_oct
from medvit.shared.data.synth import _rng
from medvit.shared.data.synth_eye import (
    OCT_CLASSES,
    clear_eye_outputs,
    render_fundus,
    render_oct,
    synth_fundus,
    synth_oct,
)
from medvit.shared.errors import ConfigError


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC: probability that a positive scores above a negative (ties half)."""
    pos, neg = score[y.astype(bool)], score[~y.astype(bool)]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / pos.size / neg.size)


# ------------------------------------------------------------------------------------------------ fundus


def test_fundus_files_deterministic_and_tables(tmp_path: Path) -> None:
    a = synth_fundus(tmp_path / "a", n=3, seed=1, size=96)
    synth_fundus(tmp_path / "b", n=5, seed=1, size=96)
    synth_fundus(tmp_path / "c", n=3, seed=2, size=96)
    for k in range(3):
        rel = f"fundus/fundus_{k:05d}.png"
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
        assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()
    labels = _rows(tmp_path / "b" / "labels.csv")
    lesions = _rows(tmp_path / "b" / "lesions.csv")
    assert list(labels[0]) == ["path", "grade"] and len(labels) == 5
    assert a.kind == "fundus" and a.counts["images"] == 3 and sum(a.counts[f"grade_{g}"] for g in range(5)) == 3
    for lab, les in zip(labels, lesions, strict=True):
        grade = int(lab["grade"])
        total = sum(int(les[c]) for c in ("microaneurysms", "haemorrhages", "exudates", "cotton_wool"))
        assert (total == 0) == (grade == 0) and (int(les["haemorrhages"]) > 0) == (grade >= 2)
        assert int(les["neovascularisation"]) == (grade == 4) and les["eye"] in ("OD", "OS")
    img, meta = read_fundus(tmp_path / "b" / labels[0]["path"], size=64)
    assert img.shape == (64, 64, 3) and meta.original_shape == (96, 96)


def test_fundus_fov_matches_the_written_geometry() -> None:
    for k in range(8):
        img, det = render_fundus(_rng(9, 0, k), 160, grade=k % 5, clip_fraction=0.5)  # half are cut by the frame
        cx, cy, r = det["fov"]
        fov = find_fov(img)
        assert fov.found and abs(fov.cx - cx) < 2 and abs(fov.cy - cy) < 2 and abs(fov.radius - r) < 2
        assert fov.clipped == (r > 80)


def test_fundus_grade_is_visible() -> None:
    """Pixels deviating from a 9x9 median background (lesions, and the vessels every grade has) grow with the
    grade; grade >= 2 is separated from grade 0."""
    size, stats, grades = 128, [], []
    for k in range(40):
        grade = k % 5
        img, det = render_fundus(_rng(3, 0, k), size, grade)
        green = img[..., 1]
        dev = np.abs(green.astype(np.float32) - cv2.medianBlur(green, 9))
        cx, cy, r = det["fov"]
        yy, xx = np.mgrid[0:size, 0:size]
        stats.append(int(((dev > 18) & (np.hypot(xx - cx, yy - cy) < 0.85 * r)).sum()))
        grades.append(grade)
    s, g = np.array(stats), np.array(grades)
    means = [s[g == i].mean() for i in range(5)]
    assert means[0] < means[1] < means[2] < means[3]
    keep = (g == 0) | (g >= 2)
    assert auc(s[keep], g[keep] >= 2) >= 0.95


# ------------------------------------------------------------------------------------------------ OCT


def test_oct_files_read_back(tmp_path: Path) -> None:
    summary = synth_oct(tmp_path, n=3, seed=5, shape=(32, 24, 16), bscan_folders=True)
    rows = _rows(tmp_path / "labels.csv")
    assert list(rows[0]) == ["path", "label", "label_id", "bscans"]
    assert summary.kind == "oct" and sum(summary.counts[c] for c in OCT_CLASSES) == 3
    for k, row in enumerate(rows):
        assert OCT_CLASSES[int(row["label_id"])] == row["label"]
        vol, meta = read_oct(tmp_path / row["path"], dtype="uint8")
        rng = _rng(5, 0, k)  # synth_oct draws the class first, then the volume, from the item's stream
        assert int(rng.integers(0, 3)) == int(row["label_id"])
        np.testing.assert_array_equal(vol, render_oct(rng, (32, 24, 16), int(row["label_id"])))
        np.testing.assert_allclose(meta.spacing, (2.0 / 32, 6.0 / 24, 6.0 / 16), rtol=1e-6)
        bscans, bmeta = read_oct(tmp_path / row["bscans"], dtype="uint8")  # 1.png .. 16.png, numeric order
        np.testing.assert_array_equal(bscans, vol)
        assert bmeta.source == "bscan-folder"
    again = tmp_path / "again"
    synth_oct(again, n=2, seed=5, shape=(32, 24, 16))
    assert (again / rows[1]["path"]).read_bytes() == (tmp_path / rows[1]["path"]).read_bytes()


def test_oct_classes_are_visible() -> None:
    """Fluid: dark voxels inside the retina; drusen: the RPE rises above a smooth bowl fitted to it."""
    shape = (64, 64, 16)
    fluid, drusen, labels = [], [], []
    xs, ss = np.meshgrid(np.linspace(-1, 1, shape[1]), np.linspace(-1, 1, shape[2]), indexing="ij")
    design = np.stack([np.ones_like(xs), xs, ss, xs * xs, ss * ss, xs * ss], -1).reshape(-1, 6)
    z = np.arange(shape[0])[:, None, None]
    for k in range(30):
        label = k % 3
        vol = render_oct(_rng(4, 0, k), shape, label).astype(np.float32) / 255
        smooth = uniform_filter(vol, size=(3, 5, 3))
        rpe = np.argmax(uniform_filter(vol, size=(3, 9, 3)), axis=0)  # the brightest band, per A-scan
        ilm = np.argmax(smooth > 0.35, axis=0)  # the first bright row: the inner surface
        retina = (z > ilm[None] + 2) & (z < rpe[None] - 2)
        fluid.append(int(((smooth < 0.06) & retina).sum()))
        h = shape[0]
        rpe_fine = (np.argmax(gaussian_filter(vol, sigma=(0.7, 2.0, 1.0))[h // 3 :], axis=0) + h // 3).ravel()
        coef, *_ = np.linalg.lstsq(design, rpe_fine.astype(np.float64), rcond=None)
        drusen.append(float(np.percentile(design @ coef - rpe_fine, 95)))  # rows above the fitted bowl
        labels.append(label)
    y = np.array(labels)
    assert auc(np.array(fluid, float), y == 1) >= 0.9
    assert auc(np.array(drusen), y == 2) >= 0.9


def test_clear_and_bad_arguments(tmp_path: Path) -> None:
    synth_fundus(tmp_path, n=1, seed=0, size=64)
    synth_oct(tmp_path, n=1, seed=0, shape=(16, 16, 16), bscan_folders=True)
    (tmp_path / "keep.txt").write_text("mine")
    assert sorted(clear_eye_outputs("oct", tmp_path)) == ["bscans", "labels.csv", "volumes"]
    assert sorted(clear_eye_outputs("fundus", tmp_path)) == ["fundus", "lesions.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    with pytest.raises(ConfigError, match="shape"):
        synth_oct(tmp_path, n=1, shape=(8, 16, 16))
    with pytest.raises(ConfigError, match="grade_probs"):
        synth_fundus(tmp_path, n=1, grade_probs=[1, 0, 0])
    with pytest.raises(ConfigError, match="unknown synth kind"):
        clear_eye_outputs("cxr", tmp_path)
