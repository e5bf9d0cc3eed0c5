"""Fundus field-of-view crop and OCT volume readers (B-scan folders, .npy, NIfTI, vendor files), resampling."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from medvit.shared.data.eye import (
    bscan_number,
    crop_fov,
    find_fov,
    list_bscans,
    read_fundus,
    read_oct,
    resample_volume,
)
from medvit.shared.data.io import ReadError


def fundus(h: int, w: int, cx: float, cy: float, r: float, seed: int = 0) -> np.ndarray:
    """An orange disc with shading, dark lesions near its rim and JPEG-like noise on a near-black surround."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.hypot(xx - cx, yy - cy)
    shade = np.clip(1.0 - 0.5 * (d / r) ** 2, 0.3, 1.0)
    img = np.zeros((h, w, 3), np.float32)
    for c, level in enumerate((200.0, 90.0, 40.0)):
        img[..., c] = level * shade
    img[d > r] = 0.0
    for ang in (0.3, 2.0, 4.0):  # haemorrhage-like dark blots touching the rim from inside
        bx, by = cx + 0.93 * r * np.cos(ang), cy + 0.93 * r * np.sin(ang)
        img[np.hypot(xx - bx, yy - by) < 0.05 * r] *= 0.25
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)
    return np.clip(img + 3.0, 0, 255).astype(np.uint8)  # the surround is dark but not exactly 0


# ------------------------------------------------------------------------------------------------ fundus


def test_fov_found_and_cropped() -> None:
    img = fundus(300, 400, cx=210.0, cy=140.0, r=120.0)
    fov = find_fov(img)
    assert fov.found and not fov.clipped
    assert abs(fov.cx - 210.0) < 1.5 and abs(fov.cy - 140.0) < 1.5 and abs(fov.radius - 120.0) < 1.5
    out = crop_fov(img, fov)
    assert out.shape[0] == out.shape[1] and abs(out.shape[0] - 240) <= 3 and out.shape[2] == 3
    c = out.shape[0] // 2
    np.testing.assert_array_equal(out[c, c], img[round(fov.cy), round(fov.cx)])  # centre stays the centre
    assert not out[0, 0].any() and not out[-1, -1].any()  # corners are outside the circle: masked
    assert out[c, 5].any() and out[5, c].any()  # just inside the rim on the left and at the top


def test_fov_touching_the_image_edges() -> None:
    img = fundus(300, 400, cx=200.0, cy=150.0, r=180.0)  # the camera cut the top and bottom 30 rows of the disc
    fov = find_fov(img)
    assert fov.found and fov.clipped
    assert abs(fov.cx - 200.0) < 2.0 and abs(fov.cy - 150.0) < 2.0 and abs(fov.radius - 180.0) < 2.0
    out = crop_fov(img, fov)
    assert abs(out.shape[0] - 360) <= 3
    assert not out[:25].any() and not out[-25:].any()  # rows above and below the image: padding
    assert out[out.shape[0] // 2, 10].any()  # the left rim is inside the image and kept


def test_fov_on_a_large_image_and_without_surround(tmp_path: Path) -> None:
    big = fundus(900, 1200, cx=610.0, cy=450.0, r=430.0)
    fov = find_fov(big)  # searched at 512 px, reported in full-size pixels
    assert abs(fov.cx - 610.0) < 3 and abs(fov.cy - 450.0) < 3 and abs(fov.radius - 430.0) < 3
    path = tmp_path / "f.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    out, meta = read_fundus(path, size=128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8 and meta.original_shape == (900, 1200)
    assert meta.fov is not None and abs(meta.fov.radius - 430.0) < 3
    assert out[64, 64, 0] > out[64, 64, 2]  # RGB order: the retina is red
    flat = np.full((100, 160, 3), 120, np.uint8)  # already cropped inside the field: no dark surround
    fov = find_fov(flat)
    assert not fov.found
    padded = crop_fov(flat, fov)
    assert padded.shape == (160, 160, 3) and (padded[30:130] == 120).all() and not padded[:30].any()


# ------------------------------------------------------------------------------------------------ OCT


def test_bscan_folder_sorted_numerically(tmp_path: Path) -> None:
    folder = tmp_path / "eye1"
    folder.mkdir()
    for k in (10, 2, 1):
        assert cv2.imwrite(str(folder / f"{k}.png"), np.full((12, 9), 10 * k, np.uint8))
    (folder / "notes.txt").write_text("ignored")
    assert [f.name for f in list_bscans(folder)] == ["1.png", "2.png", "10.png"]  # not 1, 10, 2
    vol, meta = read_oct(folder, dtype="uint8")
    assert vol.shape == (12, 9, 3) and meta.shape == (12, 9, 3) and meta.source == "bscan-folder"
    assert [int(vol[0, 0, k]) for k in range(3)] == [10, 20, 100]
    unit, _ = read_oct(folder)
    np.testing.assert_allclose(unit[0, 0], np.array([10, 20, 100]) / 255.0, atol=1e-7)
    assert bscan_number("bscan_002.bmp") == 2 and bscan_number("scan7_slice12.png") == 12
    assert cv2.imwrite(str(folder / "01.png"), np.zeros((12, 9), np.uint8))
    with pytest.raises(ReadError, match="two B-scans numbered 1"):
        list_bscans(folder)


def test_npy_volume(tmp_path: Path) -> None:
    arr = np.arange(8 * 6 * 4, dtype=np.uint8).reshape(8, 6, 4)
    np.save(tmp_path / "v.npy", arr)
    vol, meta = read_oct(tmp_path / "v.npy")
    np.testing.assert_allclose(vol, arr / 255.0, atol=1e-7)
    assert meta.source == "npy" and meta.spacing == () and meta.stored_dtype == "uint8"
    swapped, smeta = read_oct(tmp_path / "v.npy", axes=(2, 0, 1), dtype="uint8")
    np.testing.assert_array_equal(swapped, arr.transpose(2, 0, 1))
    assert smeta.shape == (4, 8, 6)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ReadError, match=r"obj\.npy: .*pickle"):
        read_oct(tmp_path / "obj.npy")
    np.save(tmp_path / "flat.npy", np.zeros((5, 5), np.uint8))
    with pytest.raises(ReadError, match=r"flat\.npy: wrong dimensions"):
        read_oct(tmp_path / "flat.npy")


def test_nifti_volume_with_spacing(tmp_path: Path) -> None:
    arr = (np.arange(10 * 7 * 5) % 256).astype(np.uint8).reshape(10, 7, 5)
    img = nib.Nifti1Image(arr, np.diag([0.004, 0.012, 0.06, 1.0]))
    nib.save(img, tmp_path / "oct.nii.gz")
    vol, meta = read_oct(tmp_path / "oct.nii.gz")
    np.testing.assert_allclose(vol, arr / 255.0, atol=1e-6)
    assert meta.source == "nifti" and meta.stored_dtype == "uint8"
    np.testing.assert_allclose(meta.spacing, (0.004, 0.012, 0.06), rtol=1e-6)
    _, pmeta = read_oct(tmp_path / "oct.nii.gz", axes=(2, 1, 0))
    np.testing.assert_allclose(pmeta.spacing, (0.06, 0.012, 0.004), rtol=1e-6)


def test_resample_to_spacing_and_shape() -> None:
    k = np.arange(10, dtype=np.float32)
    vol = np.broadcast_to(k[None, None, :], (40, 30, 10)).copy()  # a ramp along the slices
    out, spacing = resample_volume(vol, (0.01, 0.02, 0.1), target_spacing=0.02)
    assert out.shape == (20, 30, 50) and out.dtype == np.float32
    np.testing.assert_allclose(spacing, (0.02, 0.02, 0.02))
    # align_corners=False: new slice j sits at old index (j + 0.5) * 10 / 50 - 0.5; linear data stays linear
    j = np.arange(5, 45)
    np.testing.assert_allclose(out[7, 3, j], (j + 0.5) / 5.0 - 0.5, atol=1e-5)
    const, sp = resample_volume(np.full((64, 16, 8), 0.25, np.float32), target_shape=(16, 16, 16))
    assert const.shape == (16, 16, 16) and sp == () and np.allclose(const, 0.25)  # antialias keeps constants
    labels = np.zeros((8, 8, 4), np.float32)
    labels[:, :, 2:] = 3.0
    lab, _ = resample_volume(labels, (1.0, 1.0, 2.0), target_spacing=(1.0, 1.0, 1.0), mode="nearest")
    assert set(np.unique(lab)) == {0.0, 3.0} and lab.shape == (8, 8, 8)
    with pytest.raises(ReadError, match="spacing is unknown"):
        resample_volume(vol, (), target_spacing=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        resample_volume(vol, (1, 1, 1))


def test_missing_extra_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "eyepy", None)  # import eyepy now raises ImportError
    monkeypatch.setitem(sys.modules, "oct_converter", None)
    monkeypatch.setitem(sys.modules, "oct_converter.readers", None)
    vol = tmp_path / "scan.vol"
    vol.write_bytes(b"HSF-OCT-103" + b"\x00" * 100)
    with pytest.raises(ReadError, match=r"scan\.vol: reading Heidelberg Spectralis \.vol files needs the optional "
                       r"package eyepy .*pip install 'medvit\[eye\]'"):  # fmt: skip
        read_oct(vol)
    fds = tmp_path / "scan.fds"
    fds.write_bytes(b"\x00" * 100)
    with pytest.raises(ReadError, match=r"scan\.fds: .*oct-converter.*pip install 'medvit\[eye\]'"):
        read_oct(fds)
    with pytest.raises(ReadError, match=r"odd\.oct: unsupported OCT format"):
        (tmp_path / "odd.oct").write_bytes(b"x")
        read_oct(tmp_path / "odd.oct")


def test_vendor_volume_axes_and_spacing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in for eyepy: B-scans [n, rows, cols] become [rows, cols, n]; spacing (rows, cols, slices)."""
    import types

    bscans = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)

    def import_heyex_vol(path: Path) -> types.SimpleNamespace:
        print("Patient: Doe^Jane")  # what a vendor reader might print: must not reach the user
        return types.SimpleNamespace(data=bscans, scale_x=0.011, scale_y=0.0039, scale_z=0.12)

    monkeypatch.setitem(sys.modules, "eyepy", types.SimpleNamespace(import_heyex_vol=import_heyex_vol))
    path = tmp_path / "scan.vol"
    path.write_bytes(b"HSF-OCT-103")
    vol, meta = read_oct(path, dtype="uint8")
    np.testing.assert_array_equal(vol, np.moveaxis(bscans, 0, 2))
    assert meta.shape == (4, 5, 3) and meta.spacing == (0.0039, 0.011, 0.12) and meta.source == "heidelberg-vol"
    assert "Doe" not in capsys.readouterr().out
