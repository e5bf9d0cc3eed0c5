"""predict: label maps on the input's exact grid (oblique, anisotropic), outputs, manifest, resume."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from medvit.apps.ct_seg.api import Segmenter, predict
from medvit.apps.ct_seg.model import UNETR
from medvit.shared.data.io import read_volume
from medvit.shared.metrics.segmentation import dice_only

from .conftest import blobs_volume, oblique_affine, tiny_spec, write_run

SHAPE = (40, 34, 14)  # anisotropic: 0.8 x 0.9 x 3.0 mm voxels
SPACING = (0.8, 0.9, 3.0)


class Threshold(nn.Module):
    """Oracle network: class 1 wherever the windowed intensity exceeds 0.5 (HU > 37.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1) * 40.0


@pytest.fixture
def oblique_case(tmp_path: Path, write_nifti) -> tuple[Path, np.ndarray]:
    hu, mask = blobs_volume(SHAPE)
    path = write_nifti(tmp_path / "in" / "scan_0000.nii.gz", hu, oblique_affine(SPACING, (4.0, -3.0, 5.0)))
    return path, mask


@pytest.mark.parametrize("resample", ["probabilities", "labels"])
@pytest.mark.parametrize(("spacing", "min_dice"), [("native", 1.0), ([1.5, 1.5, 1.5], 0.85)])
def test_segmentation_lands_on_the_input_grid(oblique_case, resample: str, spacing, min_dice: float) -> None:
    path, mask = oblique_case
    array, meta = read_volume(path)
    spec = {
        "labels": {"0": "background", "1": "blob"},
        "preprocess": {"spacing": spacing, "hu_window": [-175, 250], "orientation": "RAS"},
        "crop_size": [32, 32, 32],
    }
    seg = Segmenter(Threshold().eval(), spec, overlap=0.25, resample=resample)
    labels, probs = seg(array, meta, keep_probabilities=False)
    assert labels.shape == SHAPE and labels.dtype == np.uint8 and probs is None
    # native spacing: reorientation to RAS, foreground crop and their inverse are exact on a tilted grid;
    # 1.5 mm: resampling 0.8 x 0.9 x 3 mm voxels there and back costs only partial-volume voxels at the edges
    dice = dice_only(labels, mask.astype(np.uint8), [1])[1]
    assert dice >= min_dice - 1e-6
    # and the test can tell a wrong grid: the same map flipped along any axis overlaps far less
    for axis in range(3):
        assert dice_only(np.flip(labels, axis).copy(), mask.astype(np.uint8), [1])[1] < 0.6


def _tiny_run(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = UNETR.from_registry("test_vit_3d", 3, feature_size=4, backbone_overrides={"embed_dim": 24, "depth": 2})
    spec = tiny_spec(model, {0: "background", 1: "liver", 2: "spleen"})
    return write_run(tmp_path / "run", model, spec)


def test_predict_cli_writes_maps_with_the_input_shape_and_affine(tmp_path: Path, oblique_case, cli) -> None:
    path, _ = oblique_case
    run = _tiny_run(tmp_path)
    out = tmp_path / "pred"
    res = CliRunner().invoke(
        cli, ["ct-seg", "predict", str(run), str(path.parent), "--out", str(out), "--probabilities", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    src, pred = nib.load(path), nib.load(out / "scan.nii.gz")  # nnU-Net _0000 suffix dropped
    assert pred.shape == src.shape
    np.testing.assert_array_equal(pred.affine, src.affine)
    assert pred.get_data_dtype() == np.uint8
    assert int(pred.header["sform_code"]) == 1 and int(pred.header["qform_code"]) == 1
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    probs = np.load(out / "probabilities" / "scan.npz")["probabilities"]
    assert probs.shape == (3, *SHAPE)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-3)
    np.testing.assert_array_equal(probs.argmax(0), np.asarray(pred.dataobj))
    assert (out / "overlays" / "scan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["case"] == "scan"


def test_predict_reads_a_dicom_series(tmp_path: Path, cli) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    series = tmp_path / "dicom" / "series1"
    series.mkdir(parents=True)
    for k in range(4):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.InstanceNumber = k + 1
        ds.save_as(series / f"IM{k}.dcm")
    run = _tiny_run(tmp_path)
    out = tmp_path / "pred"
    res = CliRunner().invoke(cli, ["ct-seg", "predict", str(run), str(series.parent), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    vol, meta = read_volume(series)
    pred = nib.load(out / "series1.nii.gz")
    assert pred.shape == vol.shape
    np.testing.assert_allclose(pred.affine, meta.affine, atol=1e-4)


def test_predict_resumes_after_an_interruption_and_reports_bad_files(tmp_path: Path, write_nifti, monkeypatch) -> None:
    from medvit.apps.ct_seg.predict import PredictJob

    run = _tiny_run(tmp_path)
    inputs = tmp_path / "in"
    for name in ("a", "b", "c"):
        hu, _ = blobs_volume((24, 24, 12))
        write_nifti(inputs / f"{name}.nii.gz", hu, oblique_affine(SPACING, (0.0, 0.0, 3.0)))
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "pred"

    real = PredictJob.process

    def interrupted(self, item, loaded, tmps):  # the "kill" lands while case b is being written
        if item.name == "b.nii.gz":
            tmps[0].write_bytes(b"partial")
            raise KeyboardInterrupt
        return real(self, item, loaded, tmps)

    monkeypatch.setattr(PredictJob, "process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(run, inputs, out, quiet=True, workers=0)
    assert (out / "a.nii.gz").is_file() and not (out / "b.nii.gz").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".b.")]  # no temp left behind
    mtime_a = os.stat(out / "a.nii.gz").st_mtime_ns

    monkeypatch.setattr(PredictJob, "process", real)
    summary = predict(run, inputs, out, quiet=True)
    assert (summary.ok, summary.skipped, summary.error) == (2, 1, 1) and summary.exit_code == 1
    assert os.stat(out / "a.nii.gz").st_mtime_ns == mtime_a  # finished work is not redone
    rows = {Path(r["input"]).name: r for r in csv.DictReader((out / "manifest.csv").open())}
    assert rows["a.nii.gz"]["status"] == "skipped" and rows["b.nii.gz"]["status"] == "ok"
    assert rows["broken.nii.gz"]["status"] == "error" and "broken.nii.gz" in rows["broken.nii.gz"]["message"]
    assert nib.load(out / "b.nii.gz").shape == (24, 24, 12)
