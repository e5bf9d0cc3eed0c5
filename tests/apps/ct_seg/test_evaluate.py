"""evaluate: metrics.csv / summary.json against hand-computed values, and bad pairs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


@pytest.fixture
def folders(tmp_path: Path, write_nifti) -> tuple[Path, Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    ref = np.zeros((10, 10, 10), np.uint8)
    out = np.zeros_like(ref)
    ref[2:5, 2:4, 2:4] = 1
    out[2:4, 2:4, 2:4] = 1  # Dice 0.8, HD95 1 mm
    ref[0, 0, 0] = 2
    out[9, 9, 9] = 2  # Dice 0, HD95 = |(9, 9, 18)| mm
    write_nifti(gt / "a.nii.gz", ref, AFFINE)
    write_nifti(pred / "a.nii.gz", out, AFFINE)
    ref_b = np.zeros_like(ref)
    ref_b[5:8, 5:8, 5:8] = 1
    write_nifti(gt / "b.nii.gz", ref_b, AFFINE)
    write_nifti(pred / "b.nii.gz", ref_b, AFFINE)  # perfect; class 2 absent from both
    js = tmp_path / "dataset.json"
    js.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}}))
    return pred, gt, js


def test_evaluate_writes_hand_computed_metrics(folders, tmp_path: Path, cli) -> None:
    pred, gt, js = folders
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["ct-seg", "evaluate", str(pred), str(gt), "--labels", str(js), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = {(r["case"], r["name"]): r for r in csv.DictReader((out / "metrics.csv").open())}
    assert len(rows) == 6  # 2 cases x 3 foreground classes, background excluded
    assert float(rows["a", "liver"]["dice"]) == pytest.approx(0.8) and float(rows["a", "liver"]["hd95"]) == 1.0
    assert float(rows["a", "spleen"]["dice"]) == 0.0
    assert float(rows["a", "spleen"]["hd95"]) == pytest.approx(math.sqrt(81 + 81 + 18**2), abs=1e-3)
    assert (rows["a", "kidney"]["dice"], rows["a", "kidney"]["empty"]) == ("1.000000", "both")
    assert float(rows["b", "liver"]["dice"]) == 1.0 and float(rows["b", "liver"]["hd95"]) == 0.0
    s = json.loads((out / "summary.json").read_text())
    assert s["cases"] == 2
    assert s["per_class"]["liver"]["dice"]["mean"] == pytest.approx(0.9)
    assert s["per_class"]["liver"]["dice"]["sd"] == pytest.approx(np.std([0.8, 1.0], ddof=1))
    assert s["per_class"]["spleen"]["dice"]["mean"] == pytest.approx(0.5)  # 0 (missed) and 1 (absent from both)
    assert s["overall"]["dice"]["mean"] == pytest.approx(np.mean([np.mean([0.8, 0, 1]), 1.0]))
    for name in ("dice_boxplot.png", "hd95_boxplot.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "liver" in res.output and "0.9000" in res.output


def _missing(pred: Path, gt: Path, write_nifti) -> str:
    (pred / "b.nii.gz").unlink()
    return "case b: no prediction"


def _shape(pred: Path, gt: Path, write_nifti) -> str:
    write_nifti(pred / "b.nii.gz", np.zeros((10, 10, 9), np.uint8), AFFINE)
    return "case b: prediction b.nii.gz has shape"


def _affine(pred: Path, gt: Path, write_nifti) -> str:
    write_nifti(pred / "b.nii.gz", np.zeros((10, 10, 10), np.uint8), np.diag([1.0, 1.0, 3.0, 1.0]))
    return "case b: prediction and reference differ in affine"


def _undeclared(pred: Path, gt: Path, write_nifti) -> str:
    arr = np.zeros((10, 10, 10), np.uint8)
    arr[1, 1, 1] = 7
    write_nifti(pred / "b.nii.gz", arr, AFFINE)
    return r"case b: b.nii.gz has label value\(s\) \[7\] not declared"


def _non_integer(pred: Path, gt: Path, write_nifti) -> str:
    arr = np.zeros((10, 10, 10), np.float32)
    arr[1, 1, 1] = 0.25
    write_nifti(pred / "a.nii.gz", arr, AFFINE)
    return "case a: a.nii.gz is not an integer label map"


@pytest.mark.parametrize("breaker", [_missing, _shape, _affine, _undeclared, _non_integer])
def test_evaluate_bad_pairs(folders, write_nifti, cli, breaker) -> None:
    import re

    pred, gt, js = folders
    expected = breaker(pred, gt, write_nifti)
    res = CliRunner().invoke(cli, ["ct-seg", "evaluate", str(pred), str(gt), "--labels", str(js)])
    assert res.exit_code == 2 and res.output.startswith("error: ")
    assert re.search(expected, res.output.replace("\n", "")), res.output


def test_evaluate_with_unknown_spacing_measures_hd95_in_voxels(tmp_path: Path, cli) -> None:
    """Label maps whose pixdim is 0 have no spacing; evaluation runs, in voxel units, and says so."""
    import struct

    import nibabel as nib

    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:5, 2:4, 2:4] = 1
    out = np.zeros_like(ref)
    out[2:4, 2:4, 2:4] = 1
    for folder, arr in (("gt", ref), ("pred", out)):
        (tmp_path / folder).mkdir()
        plain = tmp_path / folder / "a.nii"
        nib.save(nib.Nifti1Image(arr, AFFINE), plain)
        raw = bytearray(plain.read_bytes())
        struct.pack_into("<3f", raw, 80, 0.0, 0.0, 0.0)  # pixdim[1..3] = 0: spacing unknown
        plain.write_bytes(bytes(raw))
    res = CliRunner().invoke(cli, ["ct-seg", "evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"),
                                   "--out", str(tmp_path / "eval")])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    assert float(rows[0]["dice"]) == pytest.approx(0.8) and float(rows[0]["hd95"]) == 1.0
