"""Synthetic chest X-rays: determinism per item, files and tables, DICOM/16-bit options, findings that a simple
model can see."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from medvit.shared.data.synth import _rng
from medvit.shared.data.synth_xray import CXR_FINDINGS, clear_cxr_outputs, render_cxr, synth_cxr
from medvit.shared.data.xray import read_xray
from medvit.shared.errors import ConfigError


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half): the ROC AUC."""
    pos, neg = score[y.astype(bool)], score[~y.astype(bool)]
    return float(
        ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / pos.size / neg.size
    )


def test_items_depend_only_on_seed_and_index(tmp_path: Path) -> None:
    a = synth_cxr(tmp_path / "a", n=3, seed=7, size=96)
    b = synth_cxr(tmp_path / "b", n=5, seed=7, size=96)
    c = synth_cxr(tmp_path / "c", n=3, seed=8, size=96)
    for k in range(3):
        rel = f"images/cxr_{k:05d}.png"
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
        assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()
    assert a.files[:3] == b.files[:3] and "labels.csv" in a.files and a.kind == "cxr"
    rows = _rows(tmp_path / "b" / "labels.csv")
    assert list(rows[0]) == ["path", *CXR_FINDINGS] and len(rows) == 5
    img = cv2.imread(str(tmp_path / "b" / rows[0]["path"]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (96, 96) and img.dtype == np.uint8
    assert b.counts["images"] == 5 and sum(b.counts[f] for f in CXR_FINDINGS) == sum(
        int(r[f]) for r in rows for f in CXR_FINDINGS
    )
    assert c.params["seed"] == 8


def test_findings_table_matches_labels(tmp_path: Path) -> None:
    synth_cxr(tmp_path, n=24, seed=3, size=64, prevalence=0.5)
    labels, details = _rows(tmp_path / "labels.csv"), _rows(tmp_path / "findings.csv")
    for lab, det in zip(labels, details, strict=True):
        assert lab["path"] == det["path"]
        assert (float(det["ctr"]) > 0.5) == (lab["Cardiomegaly"] == "1")  # CTR above 0.5: cardiomegaly
        assert (det["nodule_r"] != "") == (lab["Nodule"] == "1")
        assert (det["effusion_side"] in ("left", "right")) == (lab["Effusion"] == "1")
        assert (det["pneumothorax_side"] in ("left", "right")) == (lab["Pneumothorax"] == "1")
    assert {lab["Cardiomegaly"] for lab in labels} == {"0", "1"}


def _blob_score(img: np.ndarray, r: float) -> float:
    """Brightest round blob of radius ~r: the smoothed value minus the brightest of 8 points 2r away."""
    a = cv2.GaussianBlur(img, (0, 0), 0.6 * r)
    d = round(2 * r)
    ring = [np.roll(a, (dy, dx), (0, 1)) for dy in (-d, 0, d) for dx in (-d, 0, d) if dy or dx]
    return float((a - np.max(ring, axis=0))[d:-d, d:-d].max())


def test_findings_are_visible() -> None:
    """Cardiomegaly, effusion and pneumothorax are separable by a linear model on 24x24 thumbnails; nodules by a
    blob detector (both trained/evaluated on different images)."""
    size, n = 96, 200
    imgs, y = [], []
    for k in range(n):
        img, det = render_cxr(_rng(5, 0, k), size, prevalence=0.5)
        imgs.append(img)
        y.append([det["findings"][f] for f in CXR_FINDINGS])
    labels = np.array(y, dtype=np.float64)
    thumbs = np.stack([cv2.resize(im, (24, 24), interpolation=cv2.INTER_AREA) for im in imgs]).reshape(n, -1)
    thumbs = (thumbs - thumbs.mean(0)) / (thumbs.std(0) + 1e-6)
    train, test = slice(0, 140), slice(140, n)
    for j, name in enumerate(CXR_FINDINGS):
        if name == "Nodule":
            continue
        w, b = np.zeros(thumbs.shape[1]), 0.0
        for _ in range(300):  # logistic regression, gradient descent with a little weight decay
            g = 1 / (1 + np.exp(-(thumbs[train] @ w + b))) - labels[train, j]
            w -= 0.1 * (thumbs[train].T @ g / 140 + 1e-2 * w)
            b -= 0.1 * float(g.mean())
        assert auc(thumbs[test] @ w + b, labels[test, j]) >= 0.9, name
    nodule = np.array([_blob_score(im, 2.0) for im in imgs])
    assert auc(nodule, labels[:, 2]) >= 0.9


def test_16_bit_and_dicom_options(tmp_path: Path) -> None:
    synth_cxr(tmp_path, n=3, seed=4, size=80, bit_depth=16, n_dicom=2)
    rows = _rows(tmp_path / "labels.csv")
    assert [r["path"] for r in rows] == ["dicom/cxr_00000.dcm", "dicom/cxr_00001.dcm", "images/cxr_00002.png"]
    for k, row in enumerate(rows):
        ref, _ = render_cxr(_rng(4, 0, k), 80, 0.25)
        img, meta = read_xray(tmp_path / row["path"])
        if k < 2:  # 12-bit DICOM with a linear window: the same picture, MONOCHROME1 inverted back
            assert meta.source == "dicom" and meta.inverted == (k == 1) and meta.scaling == "window"
            assert meta.view_position == "PA" and meta.spacing == (0.143, 0.143)
            np.testing.assert_allclose(img, ref, atol=1.5 / 4095)
        else:
            assert meta.bits == 16 and meta.stored_dtype == "uint16"
            np.testing.assert_allclose(img, ref, atol=0.6 / 65535)


def test_chestxray14_layout(tmp_path: Path) -> None:
    synth_cxr(tmp_path, n=12, seed=2, size=64, layout="chestxray14", prevalence=0.5)
    entries = _rows(tmp_path / "Data_Entry_2017.csv")
    labels = _rows(tmp_path / "labels.csv")
    assert list(entries[0])[:7] == [
        "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position"
    ]  # fmt: skip
    for entry, lab in zip(entries, labels, strict=True):
        assert lab["path"] == f"images/{entry['Image Index']}" and (tmp_path / lab["path"]).is_file()
        found = {f for f in CXR_FINDINGS if lab[f] == "1"}
        assert entry["Finding Labels"] == ("|".join(f for f in CXR_FINDINGS if f in found) or "No Finding")
        assert entry["View Position"] == "PA"
    train = (tmp_path / "train_val_list.txt").read_text().split()
    test = (tmp_path / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(e["Image Index"] for e in entries) and test
    patients = {n.split("_")[0] for n in train} & {n.split("_")[0] for n in test}
    assert not patients  # split by patient


def test_clear_and_bad_arguments(tmp_path: Path) -> None:
    synth_cxr(tmp_path, n=2, seed=0, size=64)
    (tmp_path / "mine.txt").write_text("keep")
    removed = clear_cxr_outputs(tmp_path)
    assert sorted(removed) == ["findings.csv", "images", "labels.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    with pytest.raises(ConfigError, match="size must be >= 64"):
        synth_cxr(tmp_path, n=2, size=32)
    with pytest.raises(ConfigError, match="n_dicom"):
        synth_cxr(tmp_path, n=2, n_dicom=3)
    with pytest.raises(ConfigError, match="seed"):
        synth_cxr(tmp_path, n=2, seed=-1)
