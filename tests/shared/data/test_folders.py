"""Public chest X-ray release layouts, eye folders (fundus + OCT volumes + B-scan folders) and classify_folder, on
tiny fake layouts built here."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from medvit.shared.data.folders import (
    classify_folder,
    detect_cxr_layout,
    find_cxr_images,
    find_eye_data,
    is_bscan_folder,
)
from medvit.shared.data.synth import _rng
from medvit.shared.data.synth_eye import render_fundus, synth_oct
from medvit.shared.data.synth_xray import render_cxr, synth_cxr
from medvit.shared.errors import DataError


def _png(path: Path, shape: tuple[int, ...] = (16, 16), value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, value, np.uint8))
    return path


def _text(path: Path, text: str, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


# ------------------------------------------------------------------------------------------------ chest X-ray


def test_chestxray14_layout(tmp_path: Path) -> None:
    for part, name in (("images_001", "00000001_000.png"), ("images_001", "00000001_001.png"),
                       ("images_002", "00000002_000.png")):  # fmt: skip
        _png(tmp_path / part / "images" / name)
    _text(tmp_path / "Data_Entry_2017.csv", "Image Index,Finding Labels,View Position\n"
          "00000001_000.png,No Finding,PA\n00000001_001.png,Effusion,AP\n00000002_000.png,Nodule,PA\n")  # fmt: skip
    _text(tmp_path / "train_val_list.txt", "00000001_000.png\n00000001_001.png\n")
    _text(tmp_path / "test_list.txt", "00000002_000.png\n")
    _png(tmp_path / "README_figures" / "fig.png")  # not in an images folder: not a radiograph
    assert detect_cxr_layout(tmp_path) == "chestxray14"
    listing = find_cxr_images(tmp_path)
    assert [im.rel for im in listing.images] == [
        "images_001/images/00000001_000.png", "images_001/images/00000001_001.png", "images_002/images/00000002_000.png"
    ]  # fmt: skip
    assert [im.view for im in listing.images] == ["PA", "AP", "PA"]
    test = find_cxr_images(tmp_path, split="test")
    assert [im.path.name for im in test.images] == ["00000002_000.png"] and test.excluded == 2


def test_synthetic_chestxray14_is_recognised(tmp_path: Path) -> None:
    synth_cxr(tmp_path, n=6, seed=0, size=64, layout="chestxray14")
    listing = find_cxr_images(tmp_path, split="train")
    assert listing.layout == "chestxray14" and len(listing.images) == 6 - len(
        (tmp_path / "test_list.txt").read_text().split()
    )
    assert all(im.view == "PA" for im in listing.images)


def test_chexpert_layout(tmp_path: Path) -> None:
    release = tmp_path / "CheXpert-v1.0-small"
    for rel in ("train/patient00001/study1/view1_frontal.jpg", "train/patient00001/study1/view2_lateral.jpg",
                "valid/patient64541/study1/view1_frontal.jpg"):  # fmt: skip
        _png(release / rel)
    _text(release / "train.csv", "Path,Sex,Age,Frontal/Lateral,AP/PA,Cardiomegaly\n"
          "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0\n"
          "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,1.0\n"
          "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,40,Frontal,PA,\n")  # fmt: skip
    _text(release / "valid.csv", "Path,Sex,Age,Frontal/Lateral,AP/PA\n"
          "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP\n")  # fmt: skip
    assert detect_cxr_layout(tmp_path) == "chexpert"
    listing = find_cxr_images(tmp_path)
    assert listing.root == release
    assert [(im.rel, im.split) for im in listing.images] == [
        ("train/patient00001/study1/view1_frontal.jpg", "train"),
        ("valid/patient64541/study1/view1_frontal.jpg", "valid"),
    ]
    assert listing.excluded == 2  # the lateral view, and a listed file that is not on disk
    every = find_cxr_images(release, frontal_only=False, split="train")
    assert [im.view for im in every.images] == ["FRONTAL", "LATERAL"]
    (release / "train.csv").unlink()
    (release / "valid.csv").unlink()  # no tables: recognised by train/patientNNNNN/, views from the file names
    by_name = find_cxr_images(tmp_path)
    assert by_name.layout == "chexpert" and by_name.root == release
    assert [(im.rel, im.split) for im in by_name.images] == [
        ("train/patient00001/study1/view1_frontal.jpg", "train"),
        ("valid/patient64541/study1/view1_frontal.jpg", "valid"),
    ]


def test_mimic_layout(tmp_path: Path) -> None:
    study = tmp_path / "files" / "p10" / "p10000032" / "s50414267"
    _png(study / "02aa804e-bde0afdd.jpg")
    _png(study / "174413ec-4ec4c1f7.jpg")
    _png(tmp_path / "files" / "p11" / "p11000011" / "s51029426" / "9b314ad7-fbcb0422.jpg")
    _text(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", "dicom_id,subject_id,study_id,ViewPosition\n"
          "02aa804e-bde0afdd,10000032,50414267,PA\n174413ec-4ec4c1f7,10000032,50414267,LATERAL\n"
          "9b314ad7-fbcb0422,11000011,51029426,AP\n", gz=True)  # fmt: skip
    _text(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", "dicom_id,study_id,subject_id,split\n"
          "02aa804e-bde0afdd,50414267,10000032,train\n174413ec-4ec4c1f7,50414267,10000032,train\n"
          "9b314ad7-fbcb0422,51029426,11000011,test\n", gz=True)  # fmt: skip
    assert detect_cxr_layout(tmp_path) == "mimic-cxr-jpg"
    listing = find_cxr_images(tmp_path)
    assert [(im.path.stem, im.view, im.split) for im in listing.images] == [
        ("02aa804e-bde0afdd", "PA", "train"), ("9b314ad7-fbcb0422", "AP", "test")
    ]  # fmt: skip
    assert [im.path.stem for im in find_cxr_images(tmp_path, split="test").images] == ["9b314ad7-fbcb0422"]
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()  # without metadata the views are unknown: all kept
    unknown = find_cxr_images(tmp_path)
    assert len(unknown.images) == 3 and "lateral views are included" in unknown.note


def test_plain_folder_narrowed_by_a_views_csv(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "sub/c.jpg"):
        _png(tmp_path / "data" / name)
    (tmp_path / "data" / "notes.txt").write_text("x")
    assert detect_cxr_layout(tmp_path / "data") == "plain"
    assert [im.rel for im in find_cxr_images(tmp_path / "data").images] == ["a.png", "b.png", "sub/c.jpg"]
    views = _text(tmp_path / "views.csv", "path,ViewPosition\na.png,PA\nb.png,LL\nsub/c.jpg,AP\n")
    listing = find_cxr_images(tmp_path / "data", views_csv=views)
    assert [im.rel for im in listing.images] == ["a.png", "sub/c.jpg"] and listing.excluded == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no chest X-ray images found"):
        find_cxr_images(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ eye


def test_eye_folder_fundus_and_volumes(tmp_path: Path) -> None:
    for k in (1, 2, 10, 3, 4, 5, 6, 7, 8, 9):
        _png(tmp_path / "oct" / "eye_01" / f"{k}.png", (20, 12))
    for k in range(1, 10):  # OCT2017-style 2D B-scans of different eyes: not a volume
        _png(tmp_path / "oct2d" / "CNV" / f"CNV-{1000 + k}-1.jpeg", (20, 12))
    for k in range(1, 4):  # too few to be a volume
        _png(tmp_path / "few" / f"{k}.png")
    _png(tmp_path / "fundus" / "a.jpg", (30, 30, 3))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "vol.nii.gz")
    np.save(tmp_path / "cube.npy", np.zeros((4, 4, 4), np.uint8))
    (tmp_path / "scan.vol").write_bytes(b"HSF-OCT-103")
    (tmp_path / "readme.txt").write_text("notes")
    listing = find_eye_data(tmp_path)
    assert [(v.rel, v.kind) for v in listing.volumes] == [
        ("cube.npy", "npy"), ("oct/eye_01", "bscan-folder"), ("scan.vol", "vendor"), ("vol.nii.gz", "nifti")
    ]  # fmt: skip
    rels = [p.relative_to(tmp_path).as_posix() for p in listing.images]
    assert rels[:4] == ["few/1.png", "few/2.png", "few/3.png", "fundus/a.jpg"] and len(rels) == 13
    assert listing.skipped == 1
    assert not is_bscan_folder([tmp_path / "x" / f"NORMAL{k}.jpg" for k in range(1, 12)])  # OCTID-style names


# ------------------------------------------------------------------------------------------------ classify


def test_classify_ct_volumes(tmp_path: Path) -> None:
    hu = np.full((16, 16, 8), -1000, np.int16)
    hu[4:12, 4:12] = 40
    for k in range(2):
        nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.5, 1])), tmp_path / f"case_{k}.nii.gz")
    out = classify_folder(tmp_path)
    assert out["kind"] == "ct" and out["method"] == "hi-end-mae" and len(out["3d"]) == 2 and out["2d"] == []
    assert "CT" in out["reason"]


def test_classify_ct_dicom_series(tmp_path: Path, write_series) -> None:  # noqa: ANN001 - conftest fixture
    write_series(tmp_path / "series1", [(0.0, 0.0, float(z)) for z in range(3)])
    out = classify_folder(tmp_path)
    assert out["kind"] == "ct" and out["3d"] == [tmp_path / "series1"]


def test_classify_eye_mix(tmp_path: Path) -> None:
    for k in range(3):
        img, _ = render_fundus(_rng(0, 0, k), 96, grade=k)
        _png(tmp_path / "fundus" / f"f{k}.png", value=0)
        assert cv2.imwrite(str(tmp_path / "fundus" / f"f{k}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    synth_oct(tmp_path / "oct", n=2, seed=0, shape=(16, 16, 16), bscan_folders=True)
    out = classify_folder(tmp_path)
    assert out["kind"] == "eye" and out["method"] == "uni4eye"
    assert len(out["2d"]) == 3 and len(out["3d"]) == 4  # 2 NIfTI + 2 B-scan folders
    assert "fundus" in out["reason"]


def test_classify_radiographs_photos_and_nothing(tmp_path: Path) -> None:
    for k in range(3):
        img, _ = render_cxr(_rng(0, 0, k), 64)
        _png(tmp_path / "cxr" / f"x{k}.png", value=0)
        assert cv2.imwrite(str(tmp_path / "cxr" / f"x{k}.png"), np.rint(img * 255).astype(np.uint8))
    out = classify_folder(tmp_path / "cxr")
    assert out["kind"] == "cxr" and out["method"] == "mae" and len(out["2d"]) == 3 and out["layout"] == "files"
    rng = np.random.default_rng(0)
    for k in range(3):
        _png(tmp_path / "photos" / f"p{k}.png", value=0)
        assert cv2.imwrite(str(tmp_path / "photos" / f"p{k}.png"), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert classify_folder(tmp_path / "photos")["kind"] == "photo"
    synth_cxr(tmp_path / "nih", n=4, seed=0, size=64, layout="chestxray14")
    nih = classify_folder(tmp_path / "nih")
    assert nih["layout"] == "chestxray14" and nih["kind"] == "cxr" and len(nih["2d"]) == 4
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images or volumes found"):
        classify_folder(tmp_path / "empty")
