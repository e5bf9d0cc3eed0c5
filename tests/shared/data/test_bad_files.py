"""Bad files at the reader level: each one is a ``ReadError`` whose message names the file and the problem.

Damaged JPEGs start from a real photograph (scikit-image's astronaut, 512x512) encoded by opencv, because
libjpeg's handling of damaged entropy-coded data depends on real Huffman tables and scan structure.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from medvit.shared.data.io import (
    IMAGE_SUFFIXES,
    ImageMeta,
    ReadError,
    affine_problem,
    check_file,
    list_folder,
    read_dicom_series,
    read_image,
    read_nifti,
    read_volume,
)


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    from skimage.data import astronaut

    ok, enc = cv2.imencode(".jpg", astronaut()[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return enc.tobytes()


def _damage(data: bytes, kind: str) -> bytes:
    n = len(data)
    rng = np.random.default_rng(0)
    b = bytearray(data)
    if kind == "cut_in_half":
        return data[: n // 2]
    if kind == "cut_with_end_marker":  # a cut file "repaired" by appending EOI: passes an end-marker check
        return data[: n // 2] + b"\xff\xd9"
    if kind == "zeros_in_middle":
        b[n // 3 : n // 3 + n // 10] = bytes(n // 10)
    elif kind == "noise_in_middle":
        b[n // 3 : n // 3 + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    elif kind == "noise_without_ff":  # no 0xFF byte: no stray marker, only wrong Huffman codes
        b[n // 3 : n // 3 + n // 10] = rng.integers(0, 255, n // 10, dtype=np.uint8).tobytes()
    elif kind == "64_bytes_overwritten":
        b[n // 2 : n // 2 + 64] = b"\x55" * 64
    elif kind == "ten_bit_flips":
        for k in range(10):
            b[n // 3 + 997 * k] ^= 0x10
    return bytes(b)


JPEG_DAMAGE = [
    "cut_in_half",
    "cut_with_end_marker",
    "zeros_in_middle",
    "noise_in_middle",
    "noise_without_ff",
    "64_bytes_overwritten",
    "ten_bit_flips",
]


def test_damaged_jpegs_decode_to_an_image_in_opencv(astronaut_jpeg: bytes) -> None:
    """The premise: opencv returns pixels for most damaged files, so the reader must look deeper."""
    decoded = [
        cv2.imdecode(np.frombuffer(_damage(astronaut_jpeg, k), np.uint8), cv2.IMREAD_COLOR) is not None
        for k in JPEG_DAMAGE
    ]
    assert sum(decoded) >= 5


@pytest.mark.parametrize("kind", JPEG_DAMAGE)
def test_damaged_jpeg_is_a_read_error(tmp_path: Path, astronaut_jpeg: bytes, kind: str) -> None:
    p = tmp_path / f"{kind}.jpg"
    p.write_bytes(_damage(astronaut_jpeg, kind))
    with pytest.raises(ReadError, match=rf"{kind}\.jpg: truncated") as info:
        read_image(p)
    assert "JPEG" in str(info.value)


def test_good_jpeg_variants_still_read(tmp_path: Path, astronaut_jpeg: bytes) -> None:
    from PIL import Image
    from skimage.data import astronaut

    pil = Image.fromarray(astronaut())
    files = {"baseline.jpg": astronaut_jpeg}
    for name, img, kw in (
        ("progressive.jpg", pil, {"progressive": True}),
        ("gray.jpg", pil.convert("L"), {}),
        ("cmyk.jpg", pil.convert("CMYK"), {}),
        ("tiny.jpg", pil.resize((8, 8)), {}),
    ):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85, **kw)
        files[name] = buf.getvalue()
    ok, rst = cv2.imencode(".jpg", astronaut(), [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])  # restart markers
    files["restart.jpg"] = rst.tobytes()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        img, meta = read_image(tmp_path / name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
    img, _ = read_image(tmp_path / "baseline.jpg")
    assert np.abs(img.astype(int) - astronaut()).mean() < 5  # RGB order, the real picture


def test_webp_is_read_like_the_other_formats(tmp_path: Path) -> None:
    from skimage.data import astronaut

    rgb = astronaut()
    for name, quality in (("lossy.webp", 90), ("lossless.webp", 101)):  # 101: opencv's lossless WebP
        assert cv2.imwrite(str(tmp_path / name), rgb[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, quality])
        img, meta = read_image(tmp_path / name)
        assert img.shape == (512, 512, 3) and meta.extra["color_order"] == "RGB"
        assert np.abs(img.astype(int) - rgb).mean() < 5
        with pytest.raises(ReadError, match=rf"{name}: too large: 512x512 = 262144 pixels"):
            read_image(tmp_path / name, max_pixels=1000)  # from the header, before decoding
    cut = tmp_path / "cut.webp"
    cut.write_bytes((tmp_path / "lossy.webp").read_bytes()[:3000])
    with pytest.raises(ReadError, match=r"cut\.webp: truncated or corrupt"):
        read_image(cut)


def test_one_list_of_image_suffixes() -> None:
    from medvit.apps.fiqa import api as fiqa_api
    from medvit.apps.fiqa import data as fiqa_data
    from medvit.shared.data import cards

    assert ".webp" in IMAGE_SUFFIXES
    assert not hasattr(cards, "IMAGE_EXTENSIONS") and not hasattr(fiqa_data, "IMAGE_EXTS")
    assert cards.IMAGE_SUFFIXES is IMAGE_SUFFIXES and fiqa_data.IMAGE_SUFFIXES is IMAGE_SUFFIXES
    assert "IMAGE_EXTS" not in Path(fiqa_api.__file__).read_text()


# ------------------------------------------------------------------------------------------ odd files


def _nifti(path: Path, affine: np.ndarray | None = None) -> Path:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine), path)
    return path


def test_fifo_is_named_a_fifo_not_an_empty_file(tmp_path: Path) -> None:
    for name, reader in (("scan.nii.gz", read_nifti), ("face.jpg", read_image), ("vol.nii", read_volume)):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        with pytest.raises(ReadError, match=rf"{name}: is a FIFO \(named pipe\), not a regular file"):
            reader(fifo)


def test_broken_symlink_is_named(tmp_path: Path) -> None:
    for name, reader in (("scan.nii.gz", read_nifti), ("face.png", read_image), ("v.nii.gz", read_volume)):
        link = tmp_path / name
        link.symlink_to(tmp_path / f"gone_{name}")
        with pytest.raises(ReadError, match=rf"{name}: broken symbolic link \(its target .*gone_{name} does not"):
            reader(link)


def test_unreadable_files_and_folders_are_named(
    tmp_path: Path, unreadable: Callable[[Path], Path], write_series: Callable[..., list[Path]]
) -> None:
    nii = unreadable(_nifti(tmp_path / "locked.nii.gz"))
    png = tmp_path / "locked.png"
    cv2.imwrite(str(png), np.zeros((8, 8, 3), np.uint8))
    unreadable(png)
    for path, reader in ((nii, read_nifti), (nii, read_volume), (png, read_image), (png, check_file)):
        with pytest.raises(ReadError, match=rf"{path.name}: permission denied: cannot read the file"):
            reader(path)
    series = tmp_path / "series"
    write_series(series, [(0, 0, z) for z in range(3)])
    unreadable(series)
    for reader in (read_dicom_series, read_volume, list_folder):
        with pytest.raises(ReadError, match=r"series: permission denied: cannot read the folder"):
            reader(series)


def test_unreadable_slice_in_a_series_is_named(
    tmp_path: Path, unreadable: Callable[[Path], Path], write_series: Callable[..., list[Path]]
) -> None:
    files = write_series(tmp_path / "s", [(0, 0, z) for z in range(3)])
    unreadable(files[1])
    with pytest.raises(ReadError, match=rf"{files[1].name}: permission denied: cannot read the file"):
        read_volume(tmp_path / "s")


def test_nan_affine_is_named_not_an_svd_failure(tmp_path: Path) -> None:
    p = _nifti(tmp_path / "nan_affine.nii.gz")
    img = nib.load(p)
    hdr = img.header.copy()
    hdr["srow_x"][0] = np.nan
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, hdr), p)
    with pytest.raises(ReadError, match=r"nan_affine\.nii\.gz: the header's affine \(sform/qform\) has NaN or Inf"):
        read_nifti(p)


@pytest.mark.parametrize(("dtype", "phrase"), [(np.complex64, "complex-valued voxels \\(complex64\\)")])
def test_complex_nifti_is_refused(tmp_path: Path, dtype: type, phrase: str) -> None:
    p = tmp_path / "phase.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), dtype) * (1 + 2j), np.eye(4)), p)
    with pytest.raises(ReadError, match=rf"phase\.nii\.gz: {phrase}"):
        read_nifti(p)


def test_rgb_nifti_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "rgb.nii"
    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), p)
    with pytest.raises(ReadError, match=r"rgb\.nii: unsupported voxel type"):
        read_nifti(p)


def test_zero_spacing_is_named_before_monai_sees_it() -> None:
    from medvit.shared.data.transforms import volume_to_metatensor

    flat = np.diag([0.8, 0.8, 0.0, 1.0])
    assert "voxel spacing is 0 along axis 2" in (affine_problem(flat) or "")
    assert "NaN or Inf" in (affine_problem(np.full((4, 4), np.nan)) or "")
    assert "singular" in (affine_problem(np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])) or "")
    assert affine_problem(np.diag([0.1, 0.1, 0.1, 1.0])) is None  # a fine grid is not singular
    meta = ImageMeta(path="/data/flat.nii.gz", shape=(4, 5, 6), dtype="int16", affine=flat)
    with pytest.raises(ReadError, match=r"/data/flat\.nii\.gz: voxel spacing is 0 along axis 2"):
        volume_to_metatensor(np.zeros((4, 5, 6), np.float32), meta)
