"""Readers (NIfTI, DICOM series and images, 2D images, video) and folder scanning."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medvit.shared.data.io import (
    ImageMeta,
    ReadError,
    read_dicom_image,
    read_dicom_series,
    read_image,
    read_nifti,
    read_video_frames,
    read_volume,
)
from medvit.shared.data.scan import find_files, find_volumes, read_list_file
from medvit.shared.errors import DataError

# Identifiers in pydicom's CT_small.dcm: they must never reach logs, errors or metadata.
CT_SMALL_PATIENT_NAME = "CompressedSamples^CT1"
CT_SMALL_PATIENT_ID = "1CT1"
Z0 = -75.699997  # CT_small's slice position


def _lps_to_ras(p: np.ndarray) -> np.ndarray:
    return np.array([-p[0], -p[1], p[2]])


# ------------------------------------------------------------------------------------------------ NIfTI


def test_read_nifti_real_3d(nibabel_data: Path) -> None:
    path = nibabel_data / "anatomical.nii"
    arr, meta = read_nifti(path)
    ref = nib.load(path)
    assert arr.dtype == np.float32 and arr.shape == (33, 41, 25)
    np.testing.assert_array_equal(arr, ref.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(meta.affine, ref.affine)
    assert meta.spacing == (2.0, 2.0, 2.0)
    assert meta.orientation == "".join(nib.aff2axcodes(ref.affine))
    assert meta.dtype == "int16" and meta.shape == arr.shape


def test_read_nifti_4d_rejected_for_3d(nibabel_data: Path) -> None:
    path = nibabel_data / "example4d.nii.gz"
    with pytest.raises(ReadError, match=r"example4d\.nii\.gz: expected a 3D volume, got shape \(128, 96, 24, 2\)"):
        read_nifti(path, ndim=3)
    arr, meta = read_nifti(path, ndim=4)
    assert arr.shape == (128, 96, 24, 2) and len(meta.spacing) == 3


def test_read_nifti_drops_trailing_singleton(tmp_path: Path, write_nifti) -> None:
    p = write_nifti(tmp_path / "one.nii.gz", np.arange(60, dtype=np.int16).reshape(3, 4, 5, 1))
    arr, meta = read_nifti(p)
    assert arr.shape == (3, 4, 5) and meta.spacing == pytest.approx((0.8, 0.8, 2.5))
    np.testing.assert_array_equal(arr, np.arange(60).reshape(3, 4, 5))


def _corrupt(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """Make one bad file; return it and a phrase its error must contain."""
    good = np.random.default_rng(0).normal(size=(12, 10, 8)).astype(np.float32)
    if kind == "truncated_gz":
        p = tmp_path / "cut.nii.gz"
        nib.save(nib.Nifti1Image(good, np.eye(4)), p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p, "truncated or corrupt"
    if kind == "truncated_nii":
        p = tmp_path / "cut.nii"
        nib.save(nib.Nifti1Image(good, np.eye(4)), p)
        data = p.read_bytes()
        p.write_bytes(data[: 352 + 100])
        return p, "truncated or corrupt"
    if kind == "zero_bytes":
        p = tmp_path / "empty.nii.gz"
        p.write_bytes(b"")
        return p, "empty file (0 bytes)"
    if kind == "random_bytes":
        p = tmp_path / "noise.nii.gz"
        p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return p, "not a NIfTI file"
    if kind == "gzipped_random":
        p = tmp_path / "gznoise.nii.gz"
        p.write_bytes(gzip.compress(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()))
        return p, "not a NIfTI file"
    if kind == "array_2d":
        p = tmp_path / "flat.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), p)
        return p, "expected a 3D volume, got shape (16, 16)"
    if kind == "nan":
        p = tmp_path / "nan.nii.gz"
        bad = good.copy()
        bad[0, 0, :3] = np.nan
        bad[1, 1, 1] = np.inf
        nib.save(nib.Nifti1Image(bad, np.eye(4)), p)
        return p, "contains 4 non-finite voxels (3 NaN, 1 Inf)"
    if kind == "unsupported":
        p = tmp_path / "scan.mha"
        p.write_bytes(b"ObjectType = Image\n")
        return p, "unsupported format '.mha'"
    if kind == "missing":
        return tmp_path / "absent.nii.gz", "not found"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "truncated_gz",
        "truncated_nii",
        "zero_bytes",
        "random_bytes",
        "gzipped_random",
        "array_2d",
        "nan",
        "unsupported",
        "missing",
    ],
)
def test_read_volume_bad_files(kind: str, tmp_path: Path) -> None:
    path, phrase = _corrupt(kind, tmp_path)
    with pytest.raises(ReadError) as info:
        read_volume(path)
    msg = str(info.value)
    assert path.name in msg and phrase in msg, msg
    assert "\n" not in msg
    assert isinstance(info.value, DataError)


def test_voxel_limit_checked_from_header_before_data(tmp_path: Path) -> None:
    # A header declaring 2000^3 int16 voxels followed by a few bytes: a decompression bomb in miniature.
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2000, 2000, 2000))
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    p = tmp_path / "bomb.nii.gz"
    p.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\0" * 64))
    with pytest.raises(ReadError, match=r"bomb\.nii\.gz: too large: .*8000000000 voxels"):
        read_nifti(p)
    small = tmp_path / "small.nii"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4)), small)
    with pytest.raises(ReadError, match="limit is 999"):
        read_nifti(small, max_voxels=999)


def _bomb(path: Path, shape: tuple[int, ...], dtype: type = np.int16) -> Path:
    """A header declaring ``shape`` followed by 600 random bytes: a few hundred bytes on disk."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["vox_offset"] = 352
    body = hdr.binaryblock + b"\0" * 4 + np.random.default_rng(0).bytes(600)
    path.write_bytes(gzip.compress(body) if path.name.endswith(".gz") else body)
    return path


@pytest.mark.parametrize(
    ("name", "shape", "declared"),
    [
        ("cube.nii.gz", (1200, 1200, 1200), "3,456,000,352 bytes"),
        ("flat.nii.gz", (32767, 32767, 1), "2,147,352,930 bytes"),
        ("cube.nii", (1200, 1200, 1200), "3,456,000,352 bytes with the header"),
    ],
)
def test_declared_size_beyond_what_the_file_can_hold_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, shape: tuple[int, ...], declared: str
) -> None:
    from nibabel.dataobj_images import DataobjImage

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("voxel data was decoded")

    monkeypatch.setattr(DataobjImage, "get_fdata", refuse)
    path = _bomb(tmp_path / name, shape)
    assert path.stat().st_size < 1100
    with pytest.raises(ReadError, match="truncated or corrupt: the header declares") as info:
        read_nifti(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and declared in msg and "\n" not in msg


def test_highly_compressible_volume_still_reads(tmp_path: Path) -> None:
    # An all-zero label map compresses about 1000:1, close to deflate's limit, and must stay readable.
    raw = tmp_path / "zeros.nii"
    nib.save(nib.Nifti1Image(np.zeros((192, 192, 192), np.uint8), np.eye(4)), raw)
    path = tmp_path / "zeros.nii.gz"
    path.write_bytes(gzip.compress(raw.read_bytes(), compresslevel=9))
    ratio = raw.stat().st_size / path.stat().st_size
    assert ratio > 1000
    arr, _ = read_nifti(path)
    assert arr.shape == (192, 192, 192) and not arr.any()


# ------------------------------------------------------------------------------------------------ DICOM image


def test_read_dicom_image_ct_small(ct_small_path: Path) -> None:
    arr, meta = read_dicom_image(ct_small_path)
    raw = pydicom.dcmread(ct_small_path).pixel_array
    assert arr.shape == (128, 128) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, raw.astype(np.float32) * 1.0 - 1024.0)  # slope 1, intercept -1024
    assert meta.modality == "CT" and meta.dtype == "int16" and meta.affine is None
    assert meta.spacing == pytest.approx((0.661468, 0.661468))


def test_read_dicom_image_monochrome1_inverted(ct_small_path: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(ct_small_path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Modality = "CR"
    p = tmp_path / "cr.dcm"
    ds.save_as(p, enforce_file_format=True)
    arr, meta = read_dicom_image(p)
    hu = ds.pixel_array.astype(np.float32) - 1024.0
    np.testing.assert_array_equal(arr, hu.max() + hu.min() - hu)
    assert meta.extra["inverted"] is True and meta.modality == "CR"


@pytest.mark.parametrize(
    ("content", "phrase"),
    [(b"", r"empty file \(0 bytes\)"), (b"not a dicom file at all" * 10, "not a DICOM file")],
)
def test_read_dicom_image_bad(tmp_path: Path, content: bytes, phrase: str) -> None:
    p = tmp_path / "bad.dcm"
    p.write_bytes(content)
    with pytest.raises(ReadError, match=phrase) as info:
        read_dicom_image(p)
    assert "bad.dcm" in str(info.value)


@pytest.mark.parametrize(("cut", "phrase"), [(2000, "no pixel data"), (10000, "cannot decode pixel data")])
def test_truncated_dicom(ct_small_path: Path, tmp_path: Path, cut: int, phrase: str) -> None:
    p = tmp_path / "cut.dcm"
    p.write_bytes(ct_small_path.read_bytes()[:cut])
    for reader in (read_dicom_image, read_volume):
        with pytest.raises(ReadError, match=rf"cut\.dcm: .*{phrase}"):
            reader(p)


def test_read_volume_single_dcm_file(ct_small_path: Path) -> None:
    arr, meta = read_volume(ct_small_path)
    assert arr.shape == (128, 128, 1)
    raw = pydicom.dcmread(ct_small_path).pixel_array
    np.testing.assert_array_equal(arr[:, :, 0], raw.T - 1024.0)  # i = column, j = row
    expected = np.diag([-0.661468, -0.661468, 5.0, 1.0])  # SliceThickness 5 for a lone slice
    expected[:3, 3] = [158.135803, 179.035797, Z0]
    np.testing.assert_allclose(meta.affine, expected, atol=1e-6)
    assert meta.orientation == "LPS"


# ------------------------------------------------------------------------------------------------ DICOM series


@pytest.mark.parametrize(
    ("orientation", "positions"),
    [
        # axial, ascending z
        ((1, 0, 0, 0, 1, 0), [(-158.1, -179.0, Z0 + 2.5 * k) for k in range(4)]),
        # sagittal (rows along y, columns along -z); slice positions given in descending x
        ((0, 1, 0, 0, 0, -1), [(40.0 - 3.0 * k, -120.0, 60.0) for k in range(4)]),
        # oblique axial, rotated 30 degrees about z
        (
            (np.cos(0.5236), np.sin(0.5236), 0, -np.sin(0.5236), np.cos(0.5236), 0),
            [(10.0, 20.0, 1.25 * k) for k in range(4)],
        ),
    ],
)
def test_series_sorted_and_affine_matches_geometry(tmp_path: Path, write_series, orientation, positions) -> None:
    files = write_series(tmp_path / "series", positions, orientation=orientation)
    arr, meta = read_dicom_series(tmp_path / "series")
    assert arr.shape == (128, 128, 4) and arr.dtype == np.float32
    raw = pydicom.dcmread(files[0]).pixel_array.astype(np.float32)  # slice 0: original + 0
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    for k_written, f in enumerate(files):
        # find where the slice written k-th ended up by its pixel offset (+10 per written slice)
        offsets = [float(np.median(arr[:, :, k] - (raw.T - 1024.0))) for k in range(4)]
        k_read = int(np.argmin(np.abs(np.asarray(offsets) - 10 * k_written)))
        np.testing.assert_array_equal(arr[:, :, k_read], raw.T + 10 * k_written - 1024.0)
        # the affine maps voxel (0, 0, k) to that slice's ImagePositionPatient (in RAS)
        ipp = np.asarray(pydicom.dcmread(f).ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(meta.affine @ [0, 0, k_read, 1], [*_lps_to_ras(ipp), 1], atol=1e-4)
        # and voxel (i, j, k) follows DICOM PS3.3 C.7.6.2.1.1: P = S + i * dc * X + j * dr * Y
        i, j = 5, 9
        lps = ipp + i * 0.661468 * iop[:3] + j * 0.661468 * iop[3:]
        np.testing.assert_allclose(meta.affine @ [i, j, k_read, 1], [*_lps_to_ras(lps), 1], atol=1e-4)
    # slices come out in increasing order along the slice normal
    along = [float(np.dot(_lps_to_ras((meta.affine @ [0, 0, k, 1])[:3]), normal)) for k in range(4)]
    assert np.all(np.diff(along) > 0)
    step = np.linalg.norm(np.diff(np.asarray(positions, float), axis=0), axis=1)[0]
    assert meta.spacing == pytest.approx((0.661468, 0.661468, step), rel=1e-5)
    assert meta.extra == {"modality": "CT", "rows": 128, "cols": 128, "n_slices": 4}


def test_series_extensionless_and_non_dicom_files_skipped(tmp_path: Path, write_series) -> None:
    folder = tmp_path / "s"
    write_series(folder, [(0.0, 0.0, 2.0 * k) for k in range(3)], suffix="")
    (folder / "notes.txt").write_text("scanner notes")
    (folder / "thumbs.db").write_bytes(b"\x00" * 300)
    arr, meta = read_volume(folder)
    assert arr.shape == (128, 128, 3) and meta.spacing[2] == pytest.approx(2.0)


def test_series_single_file_folder(tmp_path: Path, ct_small_path: Path) -> None:
    (tmp_path / "one").mkdir()
    shutil.copy(ct_small_path, tmp_path / "one" / "slice.dcm")
    arr, meta = read_dicom_series(tmp_path / "one")
    assert arr.shape == (128, 128, 1) and meta.extra["n_slices"] == 1


def test_series_missing_slice_detected(tmp_path: Path, write_series) -> None:
    files = write_series(tmp_path / "gap", [(0.0, 0.0, 2.5 * k) for k in range(5)])
    files[2].unlink()
    with pytest.raises(ReadError, match=r"gap: non-uniform slice spacing: 1 gap\(s\) \(about 1 missing slice"):
        read_dicom_series(tmp_path / "gap")


def test_series_two_series_detected(tmp_path: Path, write_series) -> None:
    uids = ["1.2.3.4.1", "1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.2"]
    write_series(tmp_path / "mixed", [(0.0, 0.0, 2.0 * k) for k in range(4)], series_uids=uids)
    with pytest.raises(ReadError, match=r"mixed: contains 2 DICOM series") as info:
        read_dicom_series(tmp_path / "mixed")
    assert "1.2.3.4" not in str(info.value)  # counts only, no UIDs


def test_series_inconsistent_shapes(tmp_path: Path, write_series) -> None:
    files = write_series(tmp_path / "shapes", [(0.0, 0.0, 2.0 * k) for k in range(3)])
    ds = pydicom.dcmread(files[1])
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = np.zeros((64, 64), np.int16).tobytes()
    ds.save_as(files[1], enforce_file_format=True)
    with pytest.raises(ReadError, match=r"inconsistent slice shapes .*\(64, 64\), \(128, 128\)"):
        read_dicom_series(tmp_path / "shapes")


@pytest.mark.parametrize("case", ["empty_folder", "missing_folder"])
def test_series_bad_folders(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "nothing"
    if case == "empty_folder":
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
    with pytest.raises(ReadError, match="nothing: (no DICOM image files found|folder not found)"):
        read_dicom_series(folder)


def test_no_patient_identifiers_in_logs_errors_or_meta(tmp_path: Path, write_series, ct_small_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    texts = []
    _, meta = read_dicom_image(ct_small_path)
    texts.append(repr(meta))
    _, meta = read_volume(ct_small_path)
    texts.append(repr(meta))
    files = write_series(tmp_path / "ok", [(0.0, 0.0, 2.0 * k) for k in range(3)])
    (tmp_path / "ok" / "junk.bin").write_bytes(b"junk")
    _, meta = read_dicom_series(tmp_path / "ok")
    texts.append(repr(meta))
    files[1].unlink()
    files[2].rename(tmp_path / "ok" / "late.dcm")
    write_series(tmp_path / "ok2", [(0.0, 0.0, 2.0 * k) for k in range(4)], series_uids=["1", "1", "2", "2"])
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(ct_small_path.read_bytes()[:2000])
    for bad in (lambda: read_dicom_series(tmp_path / "ok2"), lambda: read_dicom_image(cut)):
        with pytest.raises(ReadError) as info:
            bad()
        texts.append(str(info.value))
    texts.append(caplog.text)
    joined = "\n".join(texts)
    for ident in (CT_SMALL_PATIENT_NAME, "CompressedSamples", CT_SMALL_PATIENT_ID, "20040119"):
        assert ident not in joined


# ------------------------------------------------------------------------------------------------ unknown spacing


def _spacing_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "voxel spacing unknown" in r.getMessage()]


def _cr_with_spacing(ct_small_path: Path, path: Path, **elements: list[str]) -> Path:
    """CT_small saved as a CR image with the given spacing elements (DS strings, e.g. PixelSpacing=["0.000", ...])."""
    ds = pydicom.dcmread(ct_small_path)
    ds.Modality = "CR"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("value", [["0.000", "0.000"], ["-0.5", "0.5"]], ids=["zero", "negative"])
def test_dicom_zero_or_negative_pixel_spacing_is_unknown_and_warned_once(
    ct_small_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, value: list[str]
) -> None:
    """PixelSpacing 0.000\\0.000 (seen in real CR files) is "unknown", never a zero spacing."""
    path = _cr_with_spacing(ct_small_path, tmp_path / "cr.dcm", PixelSpacing=value)
    with caplog.at_level(logging.WARNING, logger="medvit.shared.data.io"):
        for _ in range(2):  # read twice (loader threads, epochs): warned once
            _, meta = read_dicom_image(path)
            assert meta.spacing == ()
    warned = _spacing_warnings(caplog)
    assert len(warned) == 1 and "cr.dcm" in warned[0] and f"PixelSpacing {float(value[0]):g}" in warned[0]
    assert CT_SMALL_PATIENT_NAME not in caplog.text and CT_SMALL_PATIENT_ID not in caplog.text  # PHI stays out


def test_dicom_zero_pixel_spacing_falls_back_to_imager_pixel_spacing(ct_small_path: Path, tmp_path: Path) -> None:
    path = _cr_with_spacing(
        ct_small_path, tmp_path / "cr.dcm", PixelSpacing=["0.000", "0.000"], ImagerPixelSpacing=["0.139", "0.139"]
    )
    _, meta = read_dicom_image(path)
    assert meta.spacing == pytest.approx((0.139, 0.139))


def test_dicom_series_with_zero_pixel_spacing_has_unknown_spacing_and_a_usable_affine(
    tmp_path: Path, write_series, caplog: pytest.LogCaptureFixture
) -> None:
    files = write_series(tmp_path / "s", [(0.0, 0.0, 2.0 * k) for k in range(3)])
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = ["0.000", "0.000"]
        ds.save_as(f, enforce_file_format=True)
    with caplog.at_level(logging.WARNING, logger="medvit.shared.data.io"):
        arr, meta = read_dicom_series(tmp_path / "s")
    assert arr.shape == (128, 128, 3) and meta.spacing == ()
    assert len(_spacing_warnings(caplog)) == 1  # one series, one warning (not one per slice)
    # The affine stays invertible (1 mm in-plane, the slice step from the positions): nothing divides by zero.
    np.testing.assert_allclose(np.linalg.norm(meta.affine[:3, :3], axis=0), [1.0, 1.0, 2.0])


def _nifti_with_pixdim(path: Path, pixdim: tuple[float, float, float], qform: int, sform: int) -> Path:
    """A NIfTI-1 whose stored pixdim[1:4] is ``pixdim`` (written into the header bytes: nibabel would fix it)."""
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.diag([2.0, 3.0, 4.0, 1.0]))
    img.header.set_qform(img.affine, code=qform)
    img.header.set_sform(img.affine, code=sform)
    plain = path.with_name("plain.nii")
    nib.save(img, plain)
    raw = bytearray(plain.read_bytes())
    struct.pack_into("<3f", raw, 80, *pixdim)  # pixdim[1..3] (pixdim starts at byte 76)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize(
    ("pixdim", "qform", "sform"),
    [((0.0, 0.0, 0.0), 1, 0), ((2.0, 3.0, -4.0), 1, 0), ((0.0, 3.0, 4.0), 0, 2)],
    ids=["zero-qform", "negative-qform", "zero-with-sform"],
)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_zero_or_negative_pixdim_is_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pixdim, qform: int, sform: int, suffix: str
) -> None:
    """nibabel silently turns pixdim 0 into 1 mm and -4 into 4 mm; the reader reports the spacing as unknown."""
    path = _nifti_with_pixdim(tmp_path / f"v{suffix}", pixdim, qform, sform)
    with caplog.at_level(logging.WARNING, logger="medvit.shared.data.io"):
        arr, meta = read_nifti(path)
        read_nifti(path)
    np.testing.assert_array_equal(arr, np.arange(60).reshape(3, 4, 5))
    assert meta.spacing == ()
    warned = _spacing_warnings(caplog)
    assert len(warned) == 1 and "pixdim" in warned[0] and path.name in warned[0]
    assert np.isfinite(meta.affine).all() and abs(np.linalg.det(meta.affine[:3, :3])) > 0
    if sform:  # the sform still gives the geometry
        np.testing.assert_allclose(meta.affine, np.diag([2.0, 3.0, 4.0, 1.0]))


# ------------------------------------------------------------------------------------------------ 2D images


def test_read_image_rgb_order(tmp_path: Path) -> None:
    red = np.zeros((8, 6, 3), np.uint8)
    red[..., 2] = 255  # opencv writes BGR: this is pure red
    p = tmp_path / "red.png"
    cv2.imwrite(str(p), red)
    img, meta = read_image(p, "rgb")
    assert img.shape == (8, 6, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [255, 0, 0] and meta.extra["color_order"] == "RGB"
    gray, _ = read_image(p, "gray")
    assert gray.shape == (8, 6) and int(gray[0, 0]) == 76  # 0.299 * 255 (BT.601 luma)
    jpg = tmp_path / "red.jpg"
    cv2.imwrite(str(jpg), np.full((16, 16, 3), (0, 0, 255), np.uint8))
    img, _ = read_image(jpg)
    assert img[8, 8, 0] > 240 and img[8, 8, 1] < 15 and img[8, 8, 2] < 15


@pytest.mark.parametrize("mode", ["unchanged", "gray"])
def test_read_image_16bit_preserved(tmp_path: Path, mode: str) -> None:
    arr = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
    p = tmp_path / "deep.png"
    cv2.imwrite(str(p), arr)
    img, meta = read_image(p, mode)
    assert img.dtype == np.uint16 and meta.dtype == "uint16"
    np.testing.assert_array_equal(img, arr)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_read_image_8bit_formats_roundtrip(tmp_path: Path, ext: str) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    p = tmp_path / f"img{ext}"
    cv2.imwrite(str(p), arr)
    img, _ = read_image(p, "rgb")
    np.testing.assert_array_equal(img, arr[..., ::-1])


def test_read_image_rgba_unchanged(tmp_path: Path) -> None:
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 200, 100  # blue, alpha
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), bgra)
    img, meta = read_image(p, "unchanged")
    assert img[0, 0].tolist() == [0, 0, 200, 100] and meta.extra["color_order"] == "RGBA"


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_read_image_pixel_limit_from_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(100_000, 100_000) + b"\0" * 64)  # no pixel data: decoding would fail instead
    with pytest.raises(ReadError, match=r"bomb\.png: too large: 100000x100000"):
        read_image(bomb)
    ok = tmp_path / "ok.png"
    cv2.imwrite(str(ok), np.zeros((20, 20), np.uint8))
    with pytest.raises(ReadError, match="limit is 399"):
        read_image(ok, max_pixels=399)
    jpg = tmp_path / "ok.jpg"
    cv2.imwrite(str(jpg), np.zeros((30, 20, 3), np.uint8))
    with pytest.raises(ReadError, match=r"too large: 20x30 = 600 pixels"):
        read_image(jpg, max_pixels=599)


@pytest.mark.parametrize("case", ["truncated_jpg", "truncated_png", "random_png", "zero_bytes", "unsupported"])
def test_read_image_bad(tmp_path: Path, case: str) -> None:
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    if case.startswith("truncated"):
        ext = ".jpg" if case.endswith("jpg") else ".png"
        p = tmp_path / f"cut{ext}"
        cv2.imwrite(str(p), img)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif case == "random_png":
        p = tmp_path / "noise.png"
        p.write_bytes(img.tobytes()[:500])
    elif case == "zero_bytes":
        p = tmp_path / "empty.jpg"
        p.touch()
    else:
        p = tmp_path / "image.gif"
        p.write_bytes(b"GIF89a....")
    with pytest.raises(ReadError) as info:
        read_image(p)
    assert p.name in str(info.value)


# ------------------------------------------------------------------------------------------------ video


@pytest.fixture
def video_path(tmp_path: Path) -> Path:
    p = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    assert vw.isOpened()
    for k in range(10):
        frame = np.zeros((24, 32, 3), np.uint8)
        frame[..., 2] = 20 * k  # red channel (BGR order when writing)
        vw.write(frame)
    vw.release()
    return p


def test_read_video_frames_even_sampling(video_path: Path) -> None:
    frames, meta = read_video_frames(video_path, 4)
    assert frames.shape == (4, 24, 32, 3) and frames.dtype == np.uint8
    assert meta.extra["indices"] == [0, 3, 6, 9] and meta.extra["frame_count"] == 10
    red = frames[:, 12, 16, 0].astype(int)
    np.testing.assert_allclose(red, [0, 60, 120, 180], atol=4)  # MJPEG is lossy
    assert frames[:, 12, 16, 1:].max() < 5  # RGB order: green and blue empty


def test_read_video_frames_short_video_repeats(video_path: Path) -> None:
    frames, meta = read_video_frames(video_path, 15)
    assert frames.shape[0] == 15 and meta.extra["indices"] == sorted(meta.extra["indices"])
    assert set(meta.extra["indices"]) == set(range(10))


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 200])
def test_read_video_frames_bad(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "broken.mp4"
    p.write_bytes(content)
    with pytest.raises(ReadError, match="broken.mp4"):
        read_video_frames(p, 4)


# ------------------------------------------------------------------------------------------------ scanning


def _touch_nifti(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), p)


def test_find_volumes_mixed_layouts(tmp_path: Path, write_series) -> None:
    root = tmp_path / "in"
    for rel in [
        "Dataset001_X/imagesTr/liver_001_0000.nii.gz",
        "Dataset001_X/imagesTr/liver_001_0001.nii.gz",  # second channel: skipped
        "Dataset001_X/imagesTs/liver_009_0000.nii.gz",
        "Dataset001_X/labelsTr/liver_001.nii.gz",  # labels: skipped
        "loose/scan_b.nii",
        ".hidden/ignored.nii.gz",
    ]:
        _touch_nifti(root / rel)
    write_series(root / "patients" / "p1" / "ct", [(0.0, 0.0, 2.0 * k) for k in range(2)], suffix="")
    write_series(root / "patients" / "p2", [(0.0, 0.0, 2.0 * k) for k in range(2)], suffix=".dcm")
    (root / "patients" / "p2" / "report.pdf").write_bytes(b"%PDF")
    (root / "notes.txt").write_text("x")
    found = find_volumes(root)
    assert [(s.rel, s.kind, s.case_id) for s in found] == [
        ("Dataset001_X/imagesTr/liver_001_0000.nii.gz", "nifti", "liver_001"),
        ("Dataset001_X/imagesTs/liver_009_0000.nii.gz", "nifti", "liver_009"),
        ("loose/scan_b.nii", "nifti", "scan_b"),
        ("patients/p1/ct", "dicom_series", "ct"),
        ("patients/p2", "dicom_series", "p2"),
    ]
    assert found == find_volumes(root)  # deterministic
    arr, _ = read_volume(found[3].path)
    assert arr.shape == (128, 128, 2)


def test_find_volumes_unique_case_ids_and_errors(tmp_path: Path) -> None:
    _touch_nifti(tmp_path / "siteA" / "img.nii.gz")
    _touch_nifti(tmp_path / "siteB" / "img.nii.gz")
    ids = [s.case_id for s in find_volumes(tmp_path)]
    assert ids == ["siteA__img", "siteB__img"]
    one = find_volumes(tmp_path / "siteA" / "img.nii.gz")
    assert [(s.case_id, s.rel) for s in one] == [("img", "img.nii.gz")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no volumes found in .*empty"):
        find_volumes(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        find_volumes(tmp_path / "nope")


def test_find_files_and_list_file(tmp_path: Path) -> None:
    for rel in ["a.PNG", "b.jpg", "sub/c.jpeg", "sub/d.txt", ".x/e.png", "vol.nii.gz"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"1")
    names = [p.relative_to(tmp_path).as_posix() for p in find_files(tmp_path, ["png", ".JPG", ".jpeg"])]
    assert names == ["a.PNG", "b.jpg", "sub/c.jpeg"]
    assert [p.name for p in find_files(tmp_path, ".jpeg", recursive=False, allow_empty=True)] == []
    assert [p.name for p in find_files(tmp_path, ".nii.gz")] == ["vol.nii.gz"]
    with pytest.raises(DataError, match=r"no files with extension \.bmp"):
        find_files(tmp_path, ".bmp")

    lst = tmp_path / "inputs.txt"
    lst.write_text(f"# header\n\n a.PNG \nsub/c.jpeg\n{tmp_path / 'b.jpg'}\na.PNG\n")
    assert read_list_file(lst) == [tmp_path / "a.PNG", tmp_path / "sub/c.jpeg", tmp_path / "b.jpg"]
    (tmp_path / "blank.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="no entries"):
        read_list_file(tmp_path / "blank.txt")
    with pytest.raises(DataError, match="list file not found"):
        read_list_file(tmp_path / "missing.txt")


def test_image_meta_is_plain_dataclass() -> None:
    m = ImageMeta(path="x", shape=(1,), dtype="uint8")
    assert m.affine is None and m.extra == {} and m.spacing == () and os.fspath(m.path) == "x"
