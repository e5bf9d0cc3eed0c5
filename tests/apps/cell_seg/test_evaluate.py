"""cell evaluate: metrics.csv / summary.json / plot on tiny label files against hand-computed values."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from medvit.apps.cell_seg.evaluate import evaluate
from medvit.shared.errors import ConfigError, DataError

EPS = 1e-6


def _pq(tp: int, fp: int, fn: int) -> float:
    """PQ by hand with CellViT's 1e-6 terms, every pair here having IoU 1."""
    return tp / (tp + 0.5 * fp + 0.5 * fn + EPS) * tp / (tp + EPS)


ONE, B_BPQ, C_BPQ = _pq(1, 0, 0), _pq(1, 0, 1), _pq(1, 1, 0)  # a perfect nucleus; 1 of 2 found; 1 + 1 FP
NAMES = ["Background", "Neoplastic", "Inflammatory", "Connective"]


def _save(path: Path, inst: np.ndarray, types: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, inst_map=inst.astype(np.int32), type_map=types.astype(np.uint8))


def _square(inst: np.ndarray, types: np.ndarray, r: int, c: int, ident: int, cls: int) -> None:
    inst[r : r + 4, c : c + 4] = ident
    types[r : r + 4, c : c + 4] = cls


def _images() -> dict[str, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """stem -> ((GT inst, GT types), (pred inst, pred types)), 16x16, nuclei are 4x4 squares.

    a: one class-1 nucleus, found exactly.
    b: a class-1 nucleus found exactly and a class-2 nucleus missed.
    c: a class-2 nucleus found exactly and a class-1 false positive.
    """
    out = {}
    z = lambda: np.zeros((16, 16), np.int32)  # noqa: E731
    gi, gt_, pi, pt = z(), z(), z(), z()
    _square(gi, gt_, 2, 2, 1, 1)
    _square(pi, pt, 2, 2, 5, 1)
    out["a"] = ((gi, gt_), (pi, pt))
    gi, gt_, pi, pt = z(), z(), z(), z()
    _square(gi, gt_, 2, 2, 1, 1)
    _square(gi, gt_, 10, 10, 2, 2)
    _square(pi, pt, 2, 2, 3, 1)
    out["b"] = ((gi, gt_), (pi, pt))
    gi, gt_, pi, pt = z(), z(), z(), z()
    _square(gi, gt_, 2, 2, 4, 2)
    _square(pi, pt, 2, 2, 1, 2)
    _square(pi, pt, 10, 10, 2, 1)
    out["c"] = ((gi, gt_), (pi, pt))
    return out


@pytest.fixture
def pred_dir(tmp_path: Path) -> Path:
    pred = tmp_path / "pred"
    for i, (stem, (_, p)) in enumerate(_images().items()):
        _save(pred / f"slide{i % 2}" / f"{stem}.labels.npz", *p)  # found recursively
    return pred


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A prepared dataset: the three images in fold2 (tissues Breast, Breast, Colon), one other image in fold1."""
    root = tmp_path / "ds"
    for stem, (g, _) in _images().items():
        _save(root / "fold2" / "labels" / f"{stem}.npz", *g)
    (root / "fold2" / "types.csv").write_text("img,tissue\na.png,Breast\nb.png,Breast\nc.png,Colon\n")
    _save(root / "fold1" / "labels" / "x.npz", *_images()["a"][0])
    (root / "fold1" / "types.csv").write_text("img,tissue\nx.png,Breast\n")
    info = {
        "format": "medvit-cells",
        "format_version": 1,
        "nuclei_types": NAMES,
        "tissue_types": ["Breast", "Colon"],
        "magnification": 40,
        "folds": ["fold1", "fold2"],
        "splits": {"1": {"train": ["fold1"], "val": ["fold1"], "test": ["fold2"]}},
    }
    (root / "dataset.json").write_text(json.dumps(info))
    return root


@pytest.fixture
def plain_gt(tmp_path: Path) -> Path:
    gt = tmp_path / "gt"
    for stem, (g, _) in _images().items():
        _save(gt / f"{stem}.npz", *g)
    return gt


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {r["stem"]: r for r in csv.DictReader(fh)}


def test_dataset_fold_gives_hand_computed_metrics(pred_dir: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    s = evaluate(pred_dir, dataset, out=out, fold="fold2", quiet=True)
    assert s == json.loads((out / "summary.json").read_text())
    assert s["class_names"] == NAMES[1:] and s["folds"] == ["fold2"] and s["detection_radius_px"] == 12.0
    # Per image (bPQ, mPQ): a (1, 1); b: TP 1 FN 1 -> bPQ 2/3, PQ_1 1, PQ_2 0 -> mPQ 1/2;
    # c: TP 1 FP 1 -> bPQ 2/3, PQ_1 NaN (prediction-only class), PQ_2 1 -> mPQ 1.
    rows = _csv(out / "metrics.csv")
    assert float(rows["b"]["bPQ"]) == pytest.approx(B_BPQ, rel=1e-12)
    assert float(rows["b"]["mPQ"]) == pytest.approx((ONE + 0.0) / 2, rel=1e-12)
    assert rows["c"]["PQ_Neoplastic"] == "nan" and float(rows["c"]["PQ_Inflammatory"]) == pytest.approx(ONE)
    assert rows["c"]["tissue"] == "Colon" and rows["a"]["fold"] == "fold2" and rows["a"]["missing_prediction"] == "0"
    assert float(rows["b"]["aji"]) == 0.5 and float(rows["c"]["dice"]) == pytest.approx(2 / 3, rel=1e-12)
    ia = s["image_average"]
    assert ia["bPQ"] == pytest.approx((ONE + B_BPQ + C_BPQ) / 3, rel=1e-12)  # ~ (1 + 2/3 + 2/3) / 3
    assert ia["mPQ"] == pytest.approx((ONE + ONE / 2 + ONE) / 3, rel=1e-12)  # ~ (1 + 1/2 + 1) / 3
    assert ia["PQ_per_class"] == {
        "Neoplastic": pytest.approx(ONE, rel=1e-12),  # nanmean(1, 1, NaN)
        "Inflammatory": pytest.approx(ONE / 2, rel=1e-12),  # nanmean(NaN, 0, 1)
        "Connective": None,  # no GT anywhere
    }
    assert ia["dice"] == pytest.approx(7 / 9, rel=1e-12) and ia["aji"] == pytest.approx(2 / 3, rel=1e-12)
    ta = s["tissue_average"]  # Breast: bPQ (1 + 2/3)/2, mPQ 3/4; Colon: bPQ 2/3, mPQ 1
    assert ta["available"] and ta["tissues"] == 2 and ta["per_tissue"]["Breast"]["images"] == 2
    assert ta["bPQ"] == pytest.approx(((ONE + B_BPQ) / 2 + C_BPQ) / 2, rel=1e-12)  # ~ 0.75
    assert ta["mPQ"] == pytest.approx(((ONE + ONE / 2) / 2 + ONE) / 2, rel=1e-12)  # ~ 0.875
    # mPQ+: class 1 TP 2 FP 1 -> ~ 2 / 2.5 = 0.8; class 2 TP 1 FN 1 -> ~ 2/3; class 3 absent -> left out
    mp = s["mpq_plus"]
    assert mp["mPQ+"] == pytest.approx((_pq(2, 1, 0) + _pq(1, 0, 1)) / 2, rel=1e-12)
    assert mp["classes_absent"] == ["Connective"]
    # Detection: TP 3, FP 1, FN 1; class 1 F1 = 4 / (4 + FP_d 1) = 0.8; class 2 F1 = 2 / (2 + FN_d 1)
    d = s["detection"]
    assert (d["tp"], d["fp"], d["fn"]) == (3, 1, 1) and d["f1"] == 0.75
    assert d["f1_per_class"] == {"Neoplastic": 0.8, "Inflammatory": pytest.approx(2 / 3), "Connective": None}
    c = s["counts"]
    assert (c["images"], c["gt_nuclei"], c["pred_nuclei"], c["missing_predictions"]) == (3, 4, 4, 0)
    assert c["gt_nuclei_per_class"] == {"Neoplastic": 2, "Inflammatory": 2, "Connective": 0}
    assert "NaN" in s["nan_rules"]
    assert (out / "per_class_pq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_selects_its_test_folds_and_out_defaults_to_pred(pred_dir: Path, dataset: Path) -> None:
    s = evaluate(pred_dir, dataset, split=1, quiet=True)
    assert s["folds"] == ["fold2"] and s["counts"]["images"] == 3
    assert (pred_dir / "metrics.csv").is_file() and (pred_dir / "summary.json").is_file()
    with pytest.raises(ConfigError, match="--fold or --split"):
        evaluate(pred_dir, dataset, quiet=True)  # two folds, none chosen
    with pytest.raises(DataError, match="no fold 'fold9'"):
        evaluate(pred_dir, dataset, fold="fold9", quiet=True)
    with pytest.raises(DataError, match="no split '7'"):
        evaluate(pred_dir, dataset, split="7", quiet=True)


def test_plain_folder_has_no_tissue_average(pred_dir: Path, plain_gt: Path, tmp_path: Path) -> None:
    s = evaluate(pred_dir, plain_gt, out=tmp_path / "e", quiet=True)
    assert s["gt_kind"] == "folder" and s["class_names"] == ["class_1", "class_2"]  # largest type id found
    assert s["image_average"]["bPQ"] == pytest.approx((ONE + B_BPQ + C_BPQ) / 3, rel=1e-12)
    assert s["image_average"]["mPQ"] == pytest.approx((ONE + ONE / 2 + ONE) / 3, rel=1e-12)
    ta = s["tissue_average"]
    assert ta["available"] is False and ta["bPQ"] is None and "no tissue average" in ta["note"]
    s = evaluate(pred_dir, plain_gt, out=tmp_path / "e", class_names=["neo", "inf", "con"], quiet=True)
    assert list(s["image_average"]["PQ_per_class"]) == ["neo", "inf", "con"]
    with pytest.raises(ConfigError, match="need a prepared dataset"):
        evaluate(pred_dir, plain_gt, fold="fold1", quiet=True)


def test_missing_prediction_is_refused_unless_allowed(
    pred_dir: Path, dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (pred_dir / "slide0" / "c.labels.npz").unlink()
    with pytest.raises(DataError, match=r"no \.labels\.npz prediction for 1 of 3 reference images \(c\)"):
        evaluate(pred_dir, dataset, fold="fold2", quiet=True)
    s = evaluate(pred_dir, dataset, fold="fold2", out=tmp_path / "e", allow_missing=True, quiet=True)
    # c scored as an empty prediction: bPQ 0 (its nucleus missed), PQ_2 0 -> mPQ 0
    assert s["counts"]["missing_predictions"] == 1 and s["counts"]["missing_stems"] == ["c"]
    assert s["image_average"]["bPQ"] == pytest.approx((ONE + B_BPQ + 0.0) / 3, rel=1e-12)
    assert s["image_average"]["mPQ"] == pytest.approx((ONE + ONE / 2 + 0.0) / 3, rel=1e-12)
    assert _csv(tmp_path / "e" / "metrics.csv")["c"]["missing_prediction"] == "1"
    # A prediction without reference is ignored with a warning
    _save(pred_dir / "extra.labels.npz", *_images()["a"][1])
    with caplog.at_level(logging.WARNING):
        s = evaluate(pred_dir, dataset, fold="fold2", out=tmp_path / "e", allow_missing=True, quiet=True)
    assert s["counts"]["ignored_predictions"] == 1 and "extra" in caplog.text


def test_bad_files_raise_data_errors_naming_them(pred_dir: Path, plain_gt: Path, tmp_path: Path) -> None:
    bad = pred_dir / "slide0" / "a.labels.npz"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match=str(bad)):
        evaluate(pred_dir, plain_gt, out=tmp_path / "e", quiet=True)
    np.savez(bad, inst_map=np.zeros((16, 16), np.int32))
    with pytest.raises(DataError, match="no type_map"):
        evaluate(pred_dir, plain_gt, out=tmp_path / "e", quiet=True)
    np.savez(bad, inst_map=np.zeros((8, 8), np.int32), type_map=np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="differs from the reference"):
        evaluate(pred_dir, plain_gt, out=tmp_path / "e", quiet=True)
    np.savez(bad, inst_map=np.zeros((16, 16), np.float32), type_map=np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match="inst_map must be an integer"):
        evaluate(pred_dir, plain_gt, out=tmp_path / "e", quiet=True)
    np.savez(bad, inst_map=np.zeros((16, 16), np.int32), type_map=np.full((16, 16), 9, np.uint8))
    with pytest.raises(DataError, match="type id 9 but only 2"):
        evaluate(pred_dir, plain_gt, out=tmp_path / "e", num_classes=2, quiet=True)
    np.savez(bad, inst_map=np.array([None, 1], dtype=object), type_map=np.zeros(2, np.uint8))
    with pytest.raises(DataError, match=str(bad)):  # object arrays are never unpickled
        evaluate(pred_dir, plain_gt, out=tmp_path / "e", quiet=True)


def test_bad_dataset_json_and_duplicate_predictions(pred_dir: Path, dataset: Path) -> None:
    _save(pred_dir / "other" / "a.labels.npz", *_images()["a"][1])
    with pytest.raises(DataError, match="a second prediction for 'a'"):
        evaluate(pred_dir, dataset, fold="fold2", quiet=True)
    (dataset / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json: not a readable JSON"):
        evaluate(pred_dir, dataset, fold="fold2", quiet=True)
    (dataset / "dataset.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="expected 'medvit-cells'"):
        evaluate(pred_dir, dataset, fold="fold2", quiet=True)


def test_missing_types_csv_turns_the_tissue_average_off(pred_dir: Path, dataset: Path, tmp_path: Path) -> None:
    (dataset / "fold2" / "types.csv").unlink()
    s = evaluate(pred_dir, dataset, fold="fold2", out=tmp_path / "e", quiet=True)
    assert s["tissue_average"]["available"] is False and "types.csv not found" in s["tissue_average"]["note"]
    assert s["image_average"]["mPQ"] == pytest.approx((ONE + ONE / 2 + ONE) / 3, rel=1e-12)
    assert math.isclose(s["magnification"], 40.0)
