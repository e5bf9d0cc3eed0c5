"""Chest X-ray label readers: CheXpert uncertain-label policies, ChestX-ray14 lists, MIMIC joins, generic CSVs,
the synthetic sets of ``medvit data synth cxr``, and errors that name the file, line and column."""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from medvit.apps.cxr.labels import (
    CHESTXRAY14_FINDINGS,
    CHEXPERT_COMPETITION,
    detect_format,
    read_chestxray14,
    read_chexpert,
    read_cxr_dataset,
    read_label_csv,
    read_mimic_cxr,
)
from medvit.shared.data.synth_xray import CXR_FINDINGS, synth_cxr
from medvit.shared.errors import DataError

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
          "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
          "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]  # fmt: skip


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG")  # the readers only check that listed files exist
    return path


def _chexpert_row(rel: str, view: str, **labels: object) -> list[object]:
    row: list[object] = [f"CheXpert-v1.0-small/{rel}", "Female", 60, view, "AP" if view == "Frontal" else ""]
    return row + [labels.get(c.replace(" ", "_"), "") for c in HEADER[5:]]


@pytest.fixture()
def chexpert(tmp_path: Path) -> Path:
    release = tmp_path / "CheXpert-v1.0-small"
    rows = [
        # uncertain in all five competition findings
        _chexpert_row(
            "train/patient00001/study1/view1_frontal.jpg",
            "Frontal",
            Atelectasis=-1.0,
            Cardiomegaly=-1.0,
            Consolidation=-1.0,
            Edema=-1.0,
            Pleural_Effusion=-1.0,
        ),  # fmt: skip
        # positives, negatives and blanks
        _chexpert_row(
            "train/patient00002/study1/view1_frontal.jpg",
            "Frontal",
            Atelectasis=1.0,
            Cardiomegaly=0.0,
            Edema="",
            Pleural_Effusion=1.0,
            No_Finding="",
        ),  # fmt: skip
        _chexpert_row("train/patient00002/study1/view2_lateral.jpg", "Lateral", Atelectasis=1.0),
    ]
    _write_csv(release / "train.csv", HEADER, rows)
    for r in rows:
        _touch(release / str(r[0]).split("/", 1)[1])
    return tmp_path


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # order: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion
        ("reference", [1, 0, 0, 1, 0]),  # medical_mae: U-Ones for Atelectasis and Edema, U-Zeros otherwise
        ("ones", [1, 1, 1, 1, 1]),
        ("zeros", [0, 0, 0, 0, 0]),
        ("ignore", [math.nan] * 5),
    ],
)
def test_chexpert_uncertain_policies(chexpert: Path, policy: str, expected: list[float]) -> None:
    samples, labels = read_chexpert(chexpert, uncertain=policy)
    assert labels.kind == "multilabel" and labels.classes == CHEXPERT_COMPETITION
    np.testing.assert_array_equal(samples[0].target, np.array(expected, np.float32))
    # certain labels and blanks never depend on the policy: 1 stays 1, 0 and blank are 0
    np.testing.assert_array_equal(samples[1].target, [1, 0, 0, 0, 1])


def test_chexpert_views_groups_keys_and_all_findings(chexpert: Path) -> None:
    samples, _ = read_chexpert(chexpert)
    assert [s.key for s in samples] == [
        "train/patient00001/study1/view1_frontal.jpg",
        "train/patient00002/study1/view1_frontal.jpg",
    ]  # the lateral view is dropped
    assert [s.group for s in samples] == ["patient00001", "patient00002"]
    both, labels = read_chexpert(chexpert, frontal_only=False, findings=["all"])
    assert len(both) == 3 and labels.classes == tuple(HEADER[5:])
    assert detect_format(chexpert) == "chexpert"
    assert detect_format(chexpert / "CheXpert-v1.0-small" / "train.csv") == "chexpert"


def test_chexpert_bad_value_names_file_line_and_column(chexpert: Path) -> None:
    table = chexpert / "CheXpert-v1.0-small" / "train.csv"
    text = table.read_text().splitlines()
    text[2] = text[2].replace(",1.0,", ",2.0,", 1)
    table.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"train\.csv: line 3: column 'Atelectasis': '2\.0' is not 1, 0, -1 or blank"):
        read_chexpert(chexpert)
    with pytest.raises(DataError, match="policy must be one of"):
        read_chexpert(chexpert, uncertain="maybe")
    with pytest.raises(DataError, match=r"unknown findings \['Hernia'\]"):
        read_chexpert(chexpert, findings=["Hernia"])


def test_chestxray14_lists_labels_and_patients(tmp_path: Path) -> None:
    synth_cxr(tmp_path, n=20, size=64, layout="chestxray14", prevalence=0.4)
    train_list = (tmp_path / "train_val_list.txt").read_text().split()
    test_list = (tmp_path / "test_list.txt").read_text().split()
    train, labels = read_chestxray14(tmp_path, split="train")
    test, _ = read_chestxray14(tmp_path, split="test")
    assert labels.classes == CHESTXRAY14_FINDINGS and len(labels.classes) == 14
    assert sorted(Path(s.key).name for s in train) == sorted(train_list)
    assert sorted(Path(s.key).name for s in test) == sorted(test_list)
    assert not {s.group for s in train} & {s.group for s in test}  # the lists are patient-wise
    truth = {r["path"]: r for r in csv.DictReader((tmp_path / "labels.csv").read_text().splitlines())}
    for s in train + test:
        row = truth[s.key]
        for name in CHESTXRAY14_FINDINGS:
            want = float(row[name]) if name in CXR_FINDINGS else 0.0  # absent findings: "No Finding" or unlisted
            assert s.target[labels.index(name)] == want
    everything, _ = read_chestxray14(tmp_path, split=None)
    assert len(everything) == 20
    sub, sub_labels = read_cxr_dataset(tmp_path, findings=list(CXR_FINDINGS))
    assert sub_labels.classes == CXR_FINDINGS and len(sub) == len(train_list)


def test_chestxray14_archive_folders_and_errors(tmp_path: Path) -> None:
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID"]
    rows = [["00000001_000.png", "Cardiomegaly|Emphysema", 0, 1], ["00000002_000.png", "No Finding", 0, 2],
            ["00000003_000.png", "Hernia", 0, 3]]  # fmt: skip
    _write_csv(tmp_path / "Data_Entry_2017.csv", header, rows)
    _touch(tmp_path / "images_001" / "images" / "00000001_000.png")
    _touch(tmp_path / "images_002" / "images" / "00000002_000.png")  # the third image is not downloaded
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000002_000.png\n00000003_000.png\n")
    samples, labels = read_chestxray14(tmp_path)
    assert [s.key for s in samples] == ["images_001/images/00000001_000.png", "images_002/images/00000002_000.png"]
    assert samples[0].target[labels.index("Cardiomegaly")] == 1 and samples[0].target[labels.index("Emphysema")] == 1
    assert samples[0].target.sum() == 2 and samples[1].target.sum() == 0
    with pytest.raises(DataError, match=r"test_list\.txt: split list not found"):
        read_chestxray14(tmp_path, split="test")
    rows.append(["00000004_000.png", "Cardiomegaly|Pneumoniaa", 0, 4])
    _write_csv(tmp_path / "Data_Entry_2017.csv", header, rows)
    (tmp_path / "train_val_list.txt").write_text("00000004_000.png\n")
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv: line 5: unknown finding\(s\) \['Pneumoniaa'\]"):
        read_chestxray14(tmp_path)


def test_mimic_join_split_and_views(tmp_path: Path) -> None:
    labels_header = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                     "Pleural Effusion", "Pneumothorax"]  # fmt: skip
    _write_csv(
        tmp_path / "mimic-cxr-2.0.0-chexpert.csv",
        labels_header,
        [[10000032, 50414267, 1.0, "", -1.0, -1.0, 0.0, 1.0], [10000764, 57375967, "", 1.0, "", "", "", ""]],
    )
    split_rows = [["a1", 50414267, 10000032, "train"], ["a2", 50414267, 10000032, "train"],
                  ["b1", 57375967, 10000764, "test"], ["c1", 59999999, 10000999, "train"]]  # fmt: skip
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dicom_id", "study_id", "subject_id", "split"])
        w.writerows(split_rows)
    _write_csv(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv",
        ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        [["a1", 10000032, 50414267, "PA"], ["a2", 10000032, 50414267, "LATERAL"], ["b1", 10000764, 57375967, "AP"]],
    )
    for d, st, su, _ in split_rows[:3]:
        _touch(tmp_path / "files" / f"p{str(su)[:2]}" / f"p{su}" / f"s{st}" / f"{d}.jpg")
    train, labels = read_mimic_cxr(tmp_path, split="train")
    assert labels.classes == CHEXPERT_COMPETITION
    assert [s.key for s in train] == ["files/p10/p10000032/s50414267/a1.jpg"]  # lateral a2 dropped, c1 unlabelled
    np.testing.assert_array_equal(train[0].target, [1, 0, 0, 1, 0])  # reference policy: Edema -1 -> 1
    assert train[0].group == "10000032"
    test, _ = read_mimic_cxr(tmp_path, split="test", uncertain="ignore", findings=["Cardiomegaly", "Pneumothorax"])
    np.testing.assert_array_equal(test[0].target, [1, 0])
    assert detect_format(tmp_path) == "mimic"


def test_generic_csv_and_synthetic_flat_set(tmp_path: Path) -> None:
    synth_cxr(tmp_path, n=6, size=64, n_dicom=2)
    samples, labels = read_cxr_dataset(tmp_path)
    assert labels.classes == CXR_FINDINGS and detect_format(tmp_path) == "csv"
    rows = list(csv.DictReader((tmp_path / "labels.csv").read_text().splitlines()))
    assert [s.key for s in samples] == [r["path"] for r in rows]
    assert samples[0].source.suffix == ".dcm"  # DICOM items are listed like any image
    for s, r in zip(samples, rows, strict=True):
        np.testing.assert_array_equal(s.target, [float(r[c]) for c in CXR_FINDINGS])
    table = _write_csv(
        tmp_path / "mine.csv",
        ["image", "patient_id", "Nodule", "Effusion"],
        [["images/cxr_00002.png", "p1", 1, ""], ["images/cxr_00003.png", "p1", "0.0", "true"]],
    )
    mine, labels = read_label_csv(table)
    assert labels.classes == ("Nodule", "Effusion") and [s.group for s in mine] == ["p1", "p1"]
    np.testing.assert_array_equal(mine[0].target, [1, np.nan])  # blank = unknown, ignored
    np.testing.assert_array_equal(mine[1].target, [0, 1])


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (["path", "Nodule"], [["images/cxr_00000.png", "2"]], r"bad\.csv: line 2: column 'Nodule': '2' is not a 0/1"),
        (
            ["path", "Nodule"],
            [["images/cxr_00000.png", "1"], ["images/gone.png", "0"]],
            r"bad\.csv: line 3: image 'images/gone\.png' not found",
        ),
        (["path"], [["images/cxr_00000.png"]], r"bad\.csv: no label columns"),
        (["path", "Nodule"], [["", "1"]], r"bad\.csv: line 2: empty 'path'"),
        (["path", "Nodule"], [], r"bad\.csv: no rows"),
    ],
)
def test_bad_csv_errors_name_the_file(tmp_path: Path, header: list[str], rows: list[list[str]], message: str) -> None:
    _touch(tmp_path / "images" / "cxr_00000.png")
    table = _write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError, match=message):
        read_label_csv(table)


def test_unreadable_and_missing_tables(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.csv: empty CSV"):
        read_label_csv(tmp_path / "empty.csv")
    (tmp_path / "latin.csv").write_bytes(b"path,Nodule\n\xe9t\xe9.png,1\n")
    with pytest.raises(DataError, match=r"latin\.csv: cannot read the CSV"):
        read_label_csv(tmp_path / "latin.csv")
    with pytest.raises(DataError, match=r"nothing: not found"):
        read_cxr_dataset(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="no label table found"):
        read_cxr_dataset(tmp_path / "folder")
