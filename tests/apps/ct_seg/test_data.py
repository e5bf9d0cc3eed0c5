"""Dataset layouts, nnU-Net folds, and bad pairs as clear errors naming the case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medvit.apps.ct_seg.config import load_ct_seg_config
from medvit.apps.ct_seg.data import labels_from_json, load_dataset, make_splits
from medvit.shared.data.synth import synth_ct
from medvit.shared.errors import ConfigError, DataError


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    synth_ct(tmp_path / "ds", n=3, seed=1, shape=(24, 24, 16), n_organs=(2, 3))
    return tmp_path / "ds"


def test_nnunet_layout_pairs_cases_and_reads_labels(dataset: Path) -> None:
    ds = load_dataset(dataset)
    assert ds.ids == ["case_000", "case_001", "case_002"]
    assert ds.cases[0].image.name == "case_000_0000.nii.gz" and ds.cases[0].label.name == "case_000.nii.gz"
    assert ds.labels[0] == "background" and ds.num_classes == 6


def test_images_and_labels_folders(dataset: Path) -> None:
    ds = load_dataset(images=dataset / "imagesTr", labels=dataset / "labelsTr")
    assert ds.ids == ["case_000", "case_001", "case_002"] and ds.source == dataset / "dataset.json"
    with pytest.raises(ConfigError, match="not both"):
        load_dataset(dataset, images=dataset / "imagesTr", labels=dataset / "labelsTr")


def test_msd_style_labels(tmp_path: Path) -> None:
    p = tmp_path / "dataset.json"
    p.write_text(json.dumps({"labels": {"0": "background", "1": "spleen"}}))
    assert labels_from_json(p) == {0: "background", 1: "spleen"}
    p.write_text(json.dumps({"labels": {"background": 0, "tumour": [1, 2]}}))
    with pytest.raises(DataError, match="region-based"):
        labels_from_json(p)


def test_splits_are_nnunet_kfold() -> None:
    from sklearn.model_selection import KFold

    ids = [f"case_{i:03d}" for i in range(13)]
    splits = make_splits(list(reversed(ids)), 5)
    expected = [
        {"train": [ids[i] for i in tr], "val": [ids[i] for i in va]}
        for tr, va in KFold(n_splits=5, shuffle=True, random_state=12345).split(ids)
    ]
    assert splits == expected
    assert sorted(c for s in splits for c in s["val"]) == ids
    with pytest.raises(DataError, match="cannot be split"):
        make_splits(ids[:3], 5)


def test_config_precedence(tmp_path: Path) -> None:
    user = tmp_path / "c.yaml"
    user.write_text("optim:\n  lr: 0.01\n  steps: 7\n")
    cfg = load_ct_seg_config("tiny", user, ["optim.steps=9"], **{"optim.batch_size": 3})
    assert (cfg.optim.lr, cfg.optim.steps, cfg.optim.batch_size, cfg.preset) == (0.01, 9, 3, "tiny")
    assert cfg.model.backbone_overrides["embed_dim"] == 96  # from the preset
    with pytest.raises(ConfigError, match="data.fold"):
        load_ct_seg_config("tiny", None, ["data.fold=7"])
    with pytest.raises(ConfigError, match="unknown ct-seg preset"):
        load_ct_seg_config("huge")


# ----------------------------------------------------------------------------- bad pairs
def _break_shape(ds: Path, write_nifti) -> str:
    import nibabel as nib

    lab = nib.load(ds / "labelsTr" / "case_001.nii.gz")
    write_nifti(ds / "labelsTr" / "case_001.nii.gz", np.zeros((24, 24, 15), np.uint8), lab.affine)
    return "case_001: image and label map differ in shape"


def _break_affine(ds: Path, write_nifti) -> str:
    import nibabel as nib

    lab = nib.load(ds / "labelsTr" / "case_002.nii.gz")
    aff = lab.affine.copy()
    aff[0, 3] += 2.0
    write_nifti(ds / "labelsTr" / "case_002.nii.gz", np.asarray(lab.dataobj), aff)
    return "case_002: image and label map differ in affine"


def _undeclared_label(ds: Path, write_nifti) -> str:
    import nibabel as nib

    lab = nib.load(ds / "labelsTr" / "case_000.nii.gz")
    arr = np.asarray(lab.dataobj).copy()
    arr[0, 0, 0] = 9
    write_nifti(ds / "labelsTr" / "case_000.nii.gz", arr, lab.affine)
    return r"case_000: case_000.nii.gz has label value\(s\) \[9\] not declared in dataset.json"


def _float_labels(ds: Path, write_nifti) -> str:
    import nibabel as nib

    lab = nib.load(ds / "labelsTr" / "case_001.nii.gz")
    arr = np.asarray(lab.dataobj).astype(np.float32)
    arr[3, 3, 3] = 0.5
    write_nifti(ds / "labelsTr" / "case_001.nii.gz", arr, lab.affine)
    return "case_001: case_001.nii.gz is not an integer label map"


def _missing_label(ds: Path, write_nifti) -> str:
    (ds / "labelsTr" / "case_002.nii.gz").unlink()
    return "case_002: image .*case_002_0000.nii.gz has no label map"


def _extra_channel(ds: Path, write_nifti) -> str:
    (ds / "imagesTr" / "case_000_0001.nii.gz").write_bytes((ds / "imagesTr" / "case_000_0000.nii.gz").read_bytes())
    return "channel 0001 found; ct-seg is single-channel CT"


@pytest.mark.parametrize(
    "breaker", [_break_shape, _break_affine, _undeclared_label, _float_labels, _missing_label, _extra_channel]
)
def test_bad_pairs_are_one_line_errors_naming_the_case(
    dataset: Path, tmp_path: Path, write_nifti, cli, breaker
) -> None:
    expected = breaker(dataset, write_nifti)
    args = [
        "ct-seg",
        "train",
        str(dataset),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "tiny",
        "--fold",
        "all",
        "--steps",
        "1",
        "--quiet",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and "Traceback" not in res.output
    import re

    assert re.search(expected, res.output.replace("\n", "")), res.output
    assert not (tmp_path / "run" / "last.pt").exists()
