"""Eye label readers: ImageFolder trees (graded, multi-class with train/test folders, binary), CSVs (APTOS-style ids
without suffix, the synthetic fundus and OCT tables), OCT volumes and B-scan folders, modality detection, errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from medvit.apps.eye.labels import detect_modality, list_items, read_eye_csv, read_eye_dataset, read_image_folder
from medvit.shared.classify.labels import Sample
from medvit.shared.data.synth_eye import OCT_CLASSES, synth_fundus, synth_oct
from medvit.shared.errors import DataError


def _png(path: Path, gray: bool = False, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((20, 20) if gray else (20, 20, 3), value, np.uint8)
    if not gray:
        img[..., 2] = 10  # colour: channels differ
    cv2.imwrite(str(path), img)
    return path


def test_image_folder_multiclass_with_splits_and_patient_groups(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls in ("CNV", "DME", "DRUSEN", "NORMAL"):
            for pat, n in ((1016042, 1), (1016042, 2), (2000001, 1)):
                _png(tmp_path / split / cls / f"{cls}-{pat}-{n}.jpeg", gray=True)
    train, labels = read_image_folder(tmp_path)
    assert labels.kind == "multiclass" and labels.classes == ("CNV", "DME", "DRUSEN", "NORMAL")
    assert len(train) == 12 and all(s.key.startswith("train/") for s in train)
    assert [int(s.target[0]) for s in train] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert {s.group for s in train} == {"1016042", "2000001"}  # the patient ID of OCT2017's file names
    test, _ = read_image_folder(tmp_path, split="test")
    assert all(s.key.startswith("test/") for s in test)
    assert detect_modality(train) == "image"  # grayscale 2D scans
    with pytest.raises(DataError, match=r"no 'val' folder"):
        read_image_folder(tmp_path, split="val")


def test_image_folder_binary_and_graded(tmp_path: Path) -> None:
    _png(tmp_path / "bin" / "glaucoma" / "a.png")
    _png(tmp_path / "bin" / "normal" / "b.png")
    samples, labels = read_image_folder(tmp_path / "bin")
    assert labels.kind == "binary" and labels.classes == ("negative", "positive")
    assert {s.key: float(s.target[0]) for s in samples} == {"glaucoma/a.png": 1.0, "normal/b.png": 0.0}
    samples, _ = read_image_folder(tmp_path / "bin", task="binary", positive="normal")
    assert {s.key: float(s.target[0]) for s in samples} == {"glaucoma/a.png": 0.0, "normal/b.png": 1.0}
    for g in (0, 2, 4):
        _png(tmp_path / "dr" / str(g) / f"img{g}.png")
    samples, labels = read_image_folder(tmp_path / "dr")
    assert labels.kind == "graded" and labels.classes == ("0", "1", "2", "3", "4")
    assert [float(s.target[0]) for s in samples] == [0.0, 2.0, 4.0]
    assert detect_modality(samples) == "fundus"
    multi, labels = read_image_folder(tmp_path / "dr", task="multiclass")
    assert labels.classes == ("0", "2", "4") and [float(s.target[0]) for s in multi] == [0.0, 1.0, 2.0]


def test_csv_aptos_ids_without_suffix_and_fixed_classes(tmp_path: Path) -> None:
    _png(tmp_path / "train_images" / "000c1434d8d7.png")
    _png(tmp_path / "train_images" / "001639a390f0.png")
    table = tmp_path / "train.csv"
    table.write_text("id_code,diagnosis\n000c1434d8d7,2\n001639a390f0,0\n")
    samples, labels = read_eye_csv(table, images=tmp_path / "train_images", classes=[str(g) for g in range(5)])
    assert labels.kind == "graded" and labels.classes == ("0", "1", "2", "3", "4")
    assert [s.source.name for s in samples] == ["000c1434d8d7.png", "001639a390f0.png"]
    assert [float(s.target[0]) for s in samples] == [2.0, 0.0] and samples[0].key == "000c1434d8d7"
    binary, labels = read_eye_csv(table, images=tmp_path / "train_images", task="binary", positive="2")
    assert labels.kind == "binary" and [float(s.target[0]) for s in binary] == [1.0, 0.0]


def test_synthetic_fundus_and_oct_sets_read(tmp_path: Path) -> None:
    synth_fundus(tmp_path / "fundus", n=10, size=64, grade_probs=[1, 1, 1, 1, 1])
    samples, labels = read_eye_dataset(tmp_path / "fundus")
    rows = list(csv.DictReader((tmp_path / "fundus" / "labels.csv").read_text().splitlines()))
    assert labels.kind == "graded"
    assert [s.key for s in samples] == [r["path"] for r in rows]
    assert [int(s.target[0]) for s in samples] == [int(r["grade"]) for r in rows]
    assert detect_modality(samples) == "fundus"
    synth_oct(tmp_path / "oct", n=4, shape=(16, 16, 16), bscan_folders=True)
    vols, labels = read_eye_dataset(tmp_path / "oct")
    assert labels.kind == "multiclass" and labels.classes == OCT_CLASSES  # ordered by label_id, not by name
    rows = list(csv.DictReader((tmp_path / "oct" / "labels.csv").read_text().splitlines()))
    assert [int(s.target[0]) for s in vols] == [int(r["label_id"]) for r in rows]
    assert detect_modality(vols) == "oct"
    # the B-scan folders as an ImageFolder tree: one volume per folder
    tree = tmp_path / "tree"
    for r in rows:
        shutil.copytree(tmp_path / "oct" / r["bscans"], tree / r["label"] / Path(r["bscans"]).name)
    folders, _ = read_image_folder(tree)
    assert len(folders) == 4 and all(s.source.is_dir() for s in folders)
    assert detect_modality(folders) == "oct"


def test_mixed_dimensions_and_csv_errors(tmp_path: Path) -> None:
    synth_oct(tmp_path, n=1, shape=(16, 16, 16))
    img = _png(tmp_path / "x.png")
    mixed = [Sample(tmp_path / "volumes" / "oct_000.nii.gz"), Sample(img)]
    with pytest.raises(DataError, match="1 of 2 inputs are OCT volumes"):
        detect_modality(mixed)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,whatever\nx.png,1\n")
    with pytest.raises(DataError, match=r"bad\.csv: needs a path column .* and a label column"):
        read_eye_csv(bad)
    bad.write_text("path,label\nx.png,CNV\nmissing.png,DME\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3: image 'missing\.png' not found"):
        read_eye_csv(bad)
    bad.write_text("path,label\nx.png,CNV\nx.png,\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3: empty 'label'"):
        read_eye_csv(bad)
    bad.write_text("path,label\nx.png,CNV\nx.png,XYZ\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3: label 'XYZ' is not one of the classes"):
        read_eye_csv(bad, classes=["CNV", "DME"])
    bad.write_text("path,grade\nx.png,-1\nx.png,2\n")
    with pytest.raises(DataError, match=r"graded labels must be non-negative integers"):
        read_eye_csv(bad, task="graded")
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(DataError, match="at least 2 class folders"):
        read_image_folder(tmp_path / "one")


def test_numbered_photographs_in_a_class_folder_stay_separate_images(tmp_path: Path) -> None:
    for k in range(1, 10):  # nine same-size, numbered photographs: the pattern of one B-scan volume
        _png(tmp_path / "tree" / "glaucoma" / f"img_{k:03d}.png")
    _png(tmp_path / "tree" / "normal" / "a.png")
    samples, labels = read_image_folder(tmp_path / "tree")
    assert labels.kind == "binary" and len(samples) == 10 and all(s.source.is_file() for s in samples)
    vol = tmp_path / "vols" / "eye1"
    for k in range(1, 10):
        _png(vol / f"{k}.png", gray=True)
    assert list_items(tmp_path / "vols") == [vol]  # below the listed folder: one volume
    assert list_items(vol) == sorted(vol.iterdir())  # the folder itself: separate images
    assert list_items(vol, dims=3) == [vol]
    assert len(list_items(tmp_path / "vols", dims=2)) == 9
