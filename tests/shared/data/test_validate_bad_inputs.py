"""``medvit data validate`` on bad files: what the training readers reject, the validator reports, by file.

The default mode decodes every file with the readers that ``ct-seg train`` and ``fiqa train`` use; ``--quick``
reads headers only, so truncated data, NaN voxels and damaged JPEG data pass it (the tests pin that down too).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medvit.cli import app
from medvit.shared.data.cards import MIN_FACE_SIZE, validate_dir
from medvit.shared.data.synth import synth_ct, synth_faces
from medvit.shared.errors import DataError

runner = CliRunner()


@pytest.fixture(scope="module")
def ct_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct_src")
    synth_ct(out, n=2, seed=0, shape=(24, 24, 16), n_organs=(2, 3))
    return out


@pytest.fixture
def ct_dir(ct_src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ct_src, tmp_path / "ct"))


@pytest.fixture(scope="module")
def faces_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faces_src")
    synth_faces(out, identities=2, images_per_identity=3, seed=0)
    return out


@pytest.fixture
def faces_dir(faces_src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(faces_src, tmp_path / "faces"))


def _problems(card: str, root: Path, *, quick: bool = False) -> list[str]:
    return list(validate_dir(card, root, quick=quick).problems)


def _only(problems: list[str], start: str, phrase: str) -> None:
    """Exactly one problem, about ``start`` (case or file), saying ``phrase``."""
    assert len(problems) == 1, problems
    assert problems[0].startswith(start) and phrase in problems[0], problems


# ---------------------------------------------------------------------------------------------- nnunet-raw

IMAGE = "imagesTr/case_001_0000.nii.gz"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_voxels(path: Path) -> None:
    img = nib.load(path)
    arr = np.asanyarray(img.dataobj).astype(np.float32)
    arr[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), path)  # float32 on disk: the NaN survives


def _edit_sform(path: Path, column: int | None = None, nan: bool = False) -> None:
    img = nib.load(path)
    hdr = img.header.copy()
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    for i, key in enumerate(("srow_x", "srow_y", "srow_z")):
        row = np.asarray(img.affine[i], dtype=np.float64).copy()
        if column is not None:
            row[column] = 0.0
        if nan and i == 0:
            row[0] = np.nan
        hdr[key][:] = row
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, hdr), path)


def _complex(path: Path) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj).astype(np.complex64), img.affine), path)


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _link_to_nothing(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "gone.nii.gz")


# (damage, phrase of the problem, also found by --quick)
CT_CASES = {
    "truncated": (_truncate, "truncated or corrupt", False),
    "nan_voxels": (_nan_voxels, "non-finite voxels (1 NaN, 0 Inf)", False),
    "nan_affine": (lambda p: _edit_sform(p, nan=True), "affine (sform/qform) has NaN or Inf", True),
    "zero_spacing": (lambda p: _edit_sform(p, column=2), "voxel spacing is 0 along axis 2", True),
    "complex": (_complex, "complex-valued voxels (complex64)", True),
    "fifo": (_fifo, "is a FIFO (named pipe), not a regular file", True),
    "broken_link": (_link_to_nothing, "broken symbolic link", True),
}


@pytest.mark.parametrize("case", sorted(CT_CASES))
def test_nnunet_bad_image_is_a_problem(ct_dir: Path, case: str) -> None:
    damage, phrase, quick_sees_it = CT_CASES[case]
    assert _problems("ct-nnunet-raw", ct_dir) == []
    damage(ct_dir / IMAGE)
    if case == "zero_spacing":  # the label shares the grid: the pairing is fine, the spacing is not
        damage(ct_dir / "labelsTr/case_001.nii.gz")
    _only(_problems("ct-nnunet-raw", ct_dir), f"case_001: image {IMAGE}: ", phrase)
    quick = _problems("ct-nnunet-raw", ct_dir, quick=True)
    assert bool(quick) == quick_sees_it, quick


def test_nnunet_bad_label_is_a_problem(ct_dir: Path) -> None:
    _truncate(ct_dir / "labelsTr/case_000.nii.gz")
    _only(_problems("ct-nnunet-raw", ct_dir), "case_000: label labelsTr/case_000.nii.gz: ", "truncated or corrupt")


def test_nnunet_what_training_rejects_validate_rejects(ct_dir: Path) -> None:
    """Agreement with ``ct-seg train``'s reader for the damage a header check cannot see."""
    from medvit.apps.ct_seg.data import load_dataset, read_case

    _truncate(ct_dir / "imagesTr/case_000_0000.nii.gz")
    _nan_voxels(ct_dir / IMAGE)
    problems = _problems("ct-nnunet-raw", ct_dir)
    assert [p.split(":")[0] for p in problems] == ["case_000", "case_001"], problems
    ds = load_dataset(ct_dir)
    for case in ds.cases:
        with pytest.raises(DataError, match=case.image.name):
            read_case(case, ds.labels)


def test_nnunet_unreadable_files_and_folders(ct_dir: Path, unreadable: Callable[[Path], Path]) -> None:
    unreadable(ct_dir / IMAGE)
    _only(_problems("ct-nnunet-raw", ct_dir), f"case_001: image {IMAGE}: ", "permission denied: cannot read the file")
    unreadable(ct_dir / "dataset.json")
    assert "dataset.json: permission denied: cannot read the file" in _problems("ct-nnunet-raw", ct_dir)
    unreadable(ct_dir / "labelsTr")
    assert "labelsTr: permission denied: cannot read the folder" in _problems("ct-nnunet-raw", ct_dir, quick=True)


def test_nnunet_dataset_json_as_a_list(ct_dir: Path) -> None:
    (ct_dir / "dataset.json").write_text("[1, 2, 3]")
    problems = _problems("ct-nnunet-raw", ct_dir)
    assert "dataset.json: top level must be a JSON object {...}, got a list" in problems


# ------------------------------------------------------------------------------------------ identity-folders

FACE = "person_001/person_001_0002.jpg"


def _jpeg_zeros_in_middle(path: Path) -> None:
    from skimage.data import astronaut

    ok, enc = cv2.imencode(".jpg", astronaut()[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    data = bytearray(enc.tobytes())
    n = len(data)
    data[n // 3 : n // 3 + n // 10] = bytes(n // 10)
    path.write_bytes(bytes(data))


def _tiny_png(path: Path) -> None:
    path.unlink()
    cv2.imwrite(str(path.with_suffix(".png")), np.zeros((1, 1, 3), np.uint8))


FACE_CASES = {
    "cut_in_half": (_truncate, FACE, "truncated JPEG (no end-of-image marker)", False),
    "corrupt_middle": (_jpeg_zeros_in_middle, FACE, "Corrupt JPEG data: premature end of data segment", False),
    "one_pixel": (_tiny_png, FACE[:-4] + ".png", f"1x1 px, below the minimum face size of {MIN_FACE_SIZE} px", True),
    "fifo": (_fifo, FACE, "is a FIFO (named pipe)", True),
    "broken_link": (lambda p: (p.unlink(), p.symlink_to(p.parent / "gone.jpg")), FACE, "broken symbolic link", True),
    "not_an_image": (lambda p: p.write_bytes(b"GIF89a not really"), FACE, "unknown file signature", True),
}


@pytest.mark.parametrize("case", sorted(FACE_CASES))
def test_identity_folder_bad_image_is_a_problem(faces_dir: Path, case: str) -> None:
    damage, rel, phrase, quick_sees_it = FACE_CASES[case]
    assert _problems("faces-identity-folders", faces_dir) == []
    damage(faces_dir / FACE)
    _only(_problems("faces-identity-folders", faces_dir), f"{rel}: ", phrase)
    quick = _problems("faces-identity-folders", faces_dir, quick=True)
    assert bool(quick) == quick_sees_it, quick


def test_identity_folder_what_training_rejects_validate_rejects(faces_dir: Path) -> None:
    from medvit.apps.fiqa.data import read_face_file

    for case in ("cut_in_half", "corrupt_middle"):
        damage, rel, _, _ = FACE_CASES[case]
        damage(faces_dir / FACE)
        assert _problems("faces-identity-folders", faces_dir)
        with pytest.raises(DataError, match="person_001_0002.jpg"):
            read_face_file(faces_dir / rel)


def test_identity_folder_unreadable(faces_dir: Path, unreadable: Callable[[Path], Path]) -> None:
    unreadable(faces_dir / FACE)
    _only(_problems("faces-identity-folders", faces_dir), f"{FACE}: ", "permission denied: cannot read the file")
    unreadable(faces_dir / "person_000")
    problems = _problems("faces-identity-folders", faces_dir, quick=True)
    assert "person_000: permission denied: cannot read the folder" in problems
    unreadable(faces_dir)
    with pytest.raises(DataError, match="faces: permission denied: cannot read the folder"):
        validate_dir("faces-identity-folders", faces_dir)


def test_webp_faces_count_as_images(faces_dir: Path) -> None:
    src = faces_dir / FACE
    cv2.imwrite(str(src.with_suffix(".webp")), cv2.imread(str(src)))
    src.unlink()
    report = validate_dir("faces-identity-folders", faces_dir)
    assert report.ok and report.counts["images"] == 6, report.problems


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_full_and_quick(faces_dir: Path, ct_dir: Path) -> None:
    _jpeg_zeros_in_middle(faces_dir / FACE)
    res = runner.invoke(app, ["data", "validate", "faces-identity-folders", str(faces_dir)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"{FACE}: truncated or corrupt JPEG data (libjpeg: Corrupt JPEG data" in res.output
    res = runner.invoke(app, ["data", "validate", "faces-identity-folders", str(faces_dir), "--quick"])
    assert res.exit_code == 0 and "OK against faces-identity-folders" in res.output, res.output
    _nan_voxels(ct_dir / IMAGE)
    res = runner.invoke(app, ["data", "validate", "ct-nnunet-raw", str(ct_dir)])
    assert res.exit_code == 1 and f"case_001: image {IMAGE}: contains 1 non-finite voxels" in res.output, res.output


def test_cli_unreadable_root_is_one_error_line(faces_dir: Path, unreadable: Callable[[Path], Path]) -> None:
    unreadable(faces_dir)
    res = runner.invoke(app, ["data", "validate", "faces-identity-folders", str(faces_dir)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "permission denied" in lines[0], res.output
