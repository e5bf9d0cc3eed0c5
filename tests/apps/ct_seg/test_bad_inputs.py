"""ct-seg on bad files: one ``error:`` line and exit 2 (train, evaluate) or an ``error`` manifest row and exit 1
(predict), naming the file and the problem, never a traceback."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medvit.apps.ct_seg.model import UNETR
from medvit.shared.data.synth import synth_ct

from .conftest import blobs_volume, tiny_spec, write_run

runner = CliRunner()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct_bad_src")
    synth_ct(out, n=2, seed=0, shape=(24, 24, 16), n_organs=(2, 3))
    return out


@pytest.fixture
def data(source: Path, tmp_path: Path) -> Path:
    """A private copy of a two-case nnU-Net raw dataset that a test may break."""
    return Path(shutil.copytree(source, tmp_path / "ds"))


def _one_error_line(res: object, *needles: str) -> str:
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 2, out  # type: ignore[attr-defined]
    assert "Traceback" not in out and not isinstance(res.exception, (TypeError, ValueError, OSError)), out  # type: ignore[attr-defined]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    text = " ".join(out.split())  # the one line may be wrapped by the terminal width
    for needle in needles:
        assert needle in text, (needle, out)
    return text


def _train(cli: object, data: Path, tmp_path: Path) -> object:
    args = ["ct-seg", "train", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--fold", "all"]
    return runner.invoke(cli, [*args, "--steps", "1", "--workers", "0", "--quiet"])  # type: ignore[arg-type]


def _edit_header(path: Path, **fields: object) -> None:
    """Rewrite a NIfTI file with some header fields changed (nibabel would refuse such an affine as an argument)."""
    img = nib.load(path)
    hdr = img.header.copy()
    for key, value in fields.items():
        if key in ("srow_x", "srow_y", "srow_z"):
            hdr[key][:] = value
        else:
            hdr[key] = value
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, hdr), path)


def _flat_sform(path: Path) -> None:
    """A zero third column in the sform (pixdim stays 2.5): voxel spacing 0 along axis 2 in world space."""
    aff = nib.load(path).affine
    rows = {k: np.r_[aff[i, :2], 0.0, aff[i, 3]] for i, k in enumerate(("srow_x", "srow_y", "srow_z"))}
    _edit_header(path, sform_code=1, qform_code=0, **rows)


def _nan_sform(path: Path) -> None:
    aff = nib.load(path).affine
    _edit_header(path, sform_code=1, qform_code=0, srow_x=[np.nan, *aff[0, 1:]])


# --------------------------------------------------------------------------------------------------- train


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{oops", "dataset.json: not valid JSON (line 1 column 2"),
        ('["case_000", "case_001"]', "dataset.json: top level must be a JSON object {...}, got a list"),
        ("", "dataset.json: empty file (0 bytes)"),
    ],
)
def test_train_bad_dataset_json(data: Path, tmp_path: Path, cli, text: str, needle: str) -> None:
    (data / "dataset.json").write_text(text)
    _one_error_line(_train(cli, data, tmp_path), needle)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_train_dataset_json_given_to_images_labels_is_checked(data: Path, tmp_path: Path, cli) -> None:
    (data / "dataset.json").write_text("[1, 2]")
    args = ["ct-seg", "train", "--images", str(data / "imagesTr"), "--labels", str(data / "labelsTr")]
    res = runner.invoke(cli, [*args, "--out", str(tmp_path / "run"), "--preset", "tiny", "--fold", "all", "--quiet"])
    _one_error_line(res, "dataset.json: top level must be a JSON object")


def test_train_training_list_with_non_path_entries(data: Path, tmp_path: Path, cli) -> None:
    doc = json.loads((data / "dataset.json").read_text())
    doc["training"] = [{"image": 5, "label": None}]
    (data / "dataset.json").write_text(json.dumps(doc))
    shutil.rmtree(data / "imagesTr")
    _one_error_line(_train(cli, data, tmp_path), "'training' entries need 'image' and 'label' paths")


def test_train_unreadable_inputs(data: Path, tmp_path: Path, cli, unreadable: Callable[[Path], Path]) -> None:
    unreadable(data / "dataset.json")
    _one_error_line(_train(cli, data, tmp_path), "dataset.json: permission denied: cannot read the file")


def test_train_unreadable_image_folder(data: Path, tmp_path: Path, cli, unreadable: Callable[[Path], Path]) -> None:
    unreadable(data / "imagesTr")
    _one_error_line(_train(cli, data, tmp_path), "imagesTr: permission denied: cannot read the folder")


def test_train_unreadable_image(data: Path, tmp_path: Path, cli, unreadable: Callable[[Path], Path]) -> None:
    unreadable(data / "imagesTr" / "case_001_0000.nii.gz")
    _one_error_line(_train(cli, data, tmp_path), "case_001_0000.nii.gz: permission denied: cannot read the file")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_nan_sform, "affine (sform/qform) has NaN or Inf entries"),
        (_flat_sform, "voxel spacing is 0 along axis 2"),
        (lambda p: (p.unlink(), os.mkfifo(p)), "is a FIFO (named pipe), not a regular file"),
        (
            lambda p: nib.save(nib.Nifti1Image(np.ones((24, 24, 16), np.complex64), nib.load(p).affine), p),
            "complex-valued voxels (complex64)",
        ),
    ],
    ids=["nan_affine", "zero_spacing", "fifo", "complex"],
)
def test_train_bad_volume(data: Path, tmp_path: Path, cli, damage: Callable[[Path], object], needle: str) -> None:
    image = data / "imagesTr" / "case_001_0000.nii.gz"
    damage(image)
    if damage is _flat_sform:  # the label map shares the grid, so the pair check does not fire first
        damage(data / "labelsTr" / "case_001.nii.gz")
    text = _one_error_line(_train(cli, data, tmp_path), needle)
    assert "case_001_0000.nii.gz" in text
    assert "SVD" not in text and "applying transform" not in text and "empty file" not in text


# ------------------------------------------------------------------------------------------------ evaluate


def _evaluate(cli: object, pred: Path, gt: Path, *extra: str) -> object:
    return runner.invoke(cli, ["ct-seg", "evaluate", str(pred), str(gt), "--no-hd95", "--quiet", *extra])  # type: ignore[arg-type]


@pytest.fixture
def folders(data: Path, tmp_path: Path) -> tuple[Path, Path]:
    pred = Path(shutil.copytree(data / "labelsTr", tmp_path / "pred"))
    return pred, data / "labelsTr"


def test_evaluate_unreadable_prediction(folders, cli, unreadable: Callable[[Path], Path]) -> None:
    pred, gt = folders
    unreadable(pred / "case_000.nii.gz")
    _one_error_line(_evaluate(cli, pred, gt), "pred/case_000.nii.gz: permission denied: cannot read the file")


def test_evaluate_unreadable_folder(folders, cli, unreadable: Callable[[Path], Path]) -> None:
    pred, gt = folders
    unreadable(pred)
    _one_error_line(_evaluate(cli, pred, gt), "pred: permission denied: cannot read the folder")


def test_evaluate_fifo_and_degenerate_grid(folders, cli) -> None:
    pred, gt = folders
    (pred / "case_001.nii.gz").unlink()
    os.mkfifo(pred / "case_001.nii.gz")
    _one_error_line(_evaluate(cli, pred, gt), "case_001.nii.gz: is a FIFO (named pipe)")
    (pred / "case_001.nii.gz").unlink()
    shutil.copy(gt / "case_001.nii.gz", pred / "case_001.nii.gz")
    _flat_sform(pred / "case_001.nii.gz")
    _one_error_line(_evaluate(cli, pred, gt), "case case_001:", "voxel spacing is 0 along axis 2")


def test_evaluate_labels_json_must_be_an_object(folders, cli, tmp_path: Path) -> None:
    pred, gt = folders
    (tmp_path / "labels.json").write_text('[{"liver": 1}]')
    res = _evaluate(cli, pred, gt, "--labels", str(tmp_path / "labels.json"))
    _one_error_line(res, "labels.json: top level must be a JSON object")


# ------------------------------------------------------------------------------------------------- predict


def test_predict_reports_unreadable_folder_and_bad_grids_as_rows(
    tmp_path: Path, write_nifti, cli, unreadable: Callable[[Path], Path]
) -> None:
    torch.manual_seed(0)
    model = UNETR.from_registry("test_vit_3d", 2, feature_size=4, backbone_overrides={"embed_dim": 24, "depth": 2})
    run = write_run(tmp_path / "run", model, tiny_spec(model, {0: "background", 1: "liver"}))
    hu, _ = blobs_volume((24, 24, 12))
    scans = tmp_path / "scans"
    aff = np.diag([-0.8, -0.8, 2.5, 1.0])
    for name in ("good", "flat", "nan"):
        write_nifti(scans / f"{name}.nii.gz", hu, aff)
    _flat_sform(scans / "flat.nii.gz")
    _nan_sform(scans / "nan.nii.gz")
    write_nifti(scans / "site_b" / "other.nii.gz", hu, aff)
    unreadable(scans / "site_b")
    out = tmp_path / "pred"
    res = runner.invoke(cli, ["ct-seg", "predict", str(run), str(scans), "--out", str(out), "--quiet"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    rows = {Path(r["input"]).name: r for r in csv.DictReader((out / "manifest.csv").open())}
    assert rows["good.nii.gz"]["status"] == "ok"
    assert rows["site_b"]["status"] == "error"
    assert "site_b: permission denied: cannot read the folder" in rows["site_b"]["message"]
    assert "flat.nii.gz: voxel spacing is 0 along axis 2" in rows["flat.nii.gz"]["message"]
    assert "nan.nii.gz: the header's affine (sform/qform) has NaN or Inf" in rows["nan.nii.gz"]["message"]
    assert not any("applying transform" in r["message"] or "SVD" in r["message"] for r in rows.values())
