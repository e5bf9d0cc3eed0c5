"""Chest X-ray reader: DICOM CR/DX written here with pydicom (inversion, VOI LUT, window), 8/16-bit image files,
damaged files, and patient identifiers kept out of logs, metadata and errors."""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from medvit.shared.data.io import ReadError
from medvit.shared.data.xray import png_significant_bits, read_xray

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-93817"


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[int, int, Sequence[int]] | None = None,
    samples: int = 1,
    transfer_syntax: str | None = None,
    pixel_data: bytes | None = None,
) -> Path:
    """A DX image with patient identifiers; ``voi_lut`` is ``(first mapped value, bits per entry, entries)``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19500101"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.PixelSpacing = [0.139, 0.143]
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, lut_bits, entries = voi_lut
        item = Dataset()
        item.add_new(0x00283002, "US", [len(entries), first, lut_bits])  # LUTDescriptor
        item.add_new(0x00283006, "US", [int(v) for v in entries])  # LUTData
        ds.VOILUTSequence = [item]
    dtype = np.uint16 if ds.BitsAllocated == 16 else np.uint8
    ds.PixelData = pixel_data if pixel_data is not None else pixels.astype(dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(rows: int = 32, cols: int = 40, top: int = 4095) -> np.ndarray:
    return np.linspace(0, top, rows * cols).round().astype(np.uint16).reshape(rows, cols)


# ------------------------------------------------------------------------------------------------ DICOM


def test_monochrome1_with_window_is_windowed_then_inverted(tmp_path: Path) -> None:
    px = _ramp()
    c, w = 2000.0, 1001.0
    path = write_dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1", window=(c, w))
    img, meta = read_xray(path)
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR): y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1]
    y = np.clip((px.astype(np.float64) - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(img, 1.0 - y, atol=1e-6)
    assert img.dtype == np.float32 and img.shape == (32, 40)
    assert meta.inverted and meta.scaling == "window" and meta.photometric == "MONOCHROME1"
    assert img[0, 0] == 1.0 and img[-1, -1] == 0.0  # MONOCHROME1: the lowest stored values display white
    assert meta.spacing == (0.139, 0.143) and meta.view_position == "PA" and meta.modality == "DX"
    assert meta.bits == 12 and meta.source == "dicom"


def test_monochrome1_with_voi_lut(tmp_path: Path) -> None:
    px = _ramp(top=4095)
    first = 100
    n = 3900
    entries = np.round(4095 * np.sqrt(np.arange(n) / (n - 1))).astype(int)  # a non-linear display curve
    path = write_dicom(tmp_path / "lut.dcm", px, photometric="MONOCHROME1", voi_lut=(first, 12, entries))
    img, meta = read_xray(path)
    idx = np.clip(px.astype(int) - first, 0, n - 1)  # values outside the LUT take its first / last entry
    expected = 1.0 - entries[idx] / 4095.0
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert meta.scaling == "voi-lut" and meta.inverted


def test_monochrome2_12bit_without_voi(tmp_path: Path) -> None:
    px = (_ramp(top=3000) + 500).astype(np.uint16)  # uses 500..3500 of the 12-bit range
    path = write_dicom(tmp_path / "m2.dcm", px, photometric="MONOCHROME2", bits_stored=12)
    img, meta = read_xray(path)
    np.testing.assert_allclose(img, (px - 500.0) / 3000.0, atol=1e-6)  # no VOI: the image's own range
    assert meta.scaling == "minmax" and not meta.inverted and meta.bits == 12
    bits_img, bits_meta = read_xray(path, window="bits")
    np.testing.assert_allclose(bits_img, px / 4095.0, atol=1e-6)
    assert bits_meta.scaling == "bits"
    as16, _ = read_xray(path, dtype="uint16", window="bits")
    expected16 = np.rint(px / 4095.0 * 65535)
    assert np.abs(as16.astype(np.int64) - expected16).max() <= 1 and as16.dtype == np.uint16  # float32 unit step


def test_colour_and_multiframe_dicom_refused(tmp_path: Path) -> None:
    rgb = np.zeros((20, 20, 3), np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb[..., 0], photometric="RGB", bits_stored=8, samples=3,
                       pixel_data=rgb.tobytes())  # fmt: skip
    with pytest.raises(ReadError, match=r"rgb\.dcm: colour DICOM \(PhotometricInterpretation RGB\)"):
        read_xray(path)


def test_compressed_dicom_without_decoder_names_what_to_install(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    frame = b"\xff\xd8\xff\xc3" + b"\x00" * 60 + b"\xff\xd9"
    path = write_dicom(
        tmp_path / "jpegll.dcm", _ramp(), transfer_syntax=JPEGLosslessSV1, pixel_data=encapsulate([frame])
    )
    with pytest.raises(ReadError, match=r"jpegll\.dcm: compressed pixel data .*JPEG Lossless.*pylibjpeg"):
        read_xray(path)


def test_truncated_dicom_named_without_identifiers(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "cut.dcm", _ramp())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ReadError) as info:
        read_xray(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "truncated or corrupt" in msg
    assert PATIENT_NAME not in msg and "Doe" not in msg and PATIENT_ID not in msg


def test_no_patient_identifier_in_logs_or_meta(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_dicom(tmp_path / "phi.dcm", _ramp(), photometric="MONOCHROME1", window=(2000.0, 1000.0))
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="medvit")
    img, meta = read_xray(path)
    bad = tmp_path / "phi_cut.dcm"
    bad.write_bytes(path.read_bytes()[:400])  # cut inside the header: the error path logs nothing either
    with pytest.raises(ReadError) as info:
        read_xray(bad)
    text = "\n".join(r.getMessage() for r in caplog.records) + repr(meta) + str(info.value)
    for secret in ("Doe", "Jane", PATIENT_ID, "19500101"):
        assert secret not in text
    assert img.shape == (32, 40)


# ------------------------------------------------------------------------------------------------ image files


def test_16bit_png(tmp_path: Path) -> None:
    px = _ramp(top=65535)
    path = tmp_path / "x16.png"
    assert cv2.imwrite(str(path), px)
    img, meta = read_xray(path)
    np.testing.assert_allclose(img, px / 65535.0, atol=1e-7)
    assert meta.bits == 16 and meta.stored_dtype == "uint16" and meta.source == "png" and meta.spacing == ()
    raw, _ = read_xray(path, dtype="uint16")
    np.testing.assert_array_equal(raw, px)
    as8, _ = read_xray(path, dtype="uint8")
    np.testing.assert_array_equal(as8, np.rint(px / 65535.0 * 255).astype(np.uint8))


def _with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk after IHDR (PNG chunk: length, type, data, CRC of type + data)."""
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


def test_16bit_png_with_12_significant_bits(tmp_path: Path) -> None:
    px = _ramp(top=4095)
    ok, buf = cv2.imencode(".png", px)
    assert ok
    path = tmp_path / "x12.png"
    path.write_bytes(_with_sbit(buf.tobytes(), 12))
    assert png_significant_bits(path.read_bytes()) == 12
    img, meta = read_xray(path)
    np.testing.assert_allclose(img, px / 4095.0, atol=1e-6)  # raw 12-bit values: full scale 4095
    assert meta.bits == 12
    forced, _ = read_xray(path, bits=16)
    np.testing.assert_allclose(forced, px / 65535.0, atol=1e-7)


def test_8bit_jpeg_and_rgb_export(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:64, 0:48]
    px = (40 + 3 * yy + xx).astype(np.uint8)  # smooth: JPEG q100 keeps it within a few levels
    path = tmp_path / "x.jpg"
    assert cv2.imwrite(str(path), px, [cv2.IMWRITE_JPEG_QUALITY, 100])
    img, meta = read_xray(path)
    assert img.shape == (64, 48) and meta.source == "jpeg" and meta.bits == 8 and meta.photometric == "L"
    assert np.abs(img * 255.0 - px).max() <= 3.0
    raw, _ = read_xray(path, dtype="uint8")
    np.testing.assert_array_equal(raw, np.rint(img * 255).astype(np.uint8))
    rgb_path = tmp_path / "gray_as_rgb.png"
    assert cv2.imwrite(str(rgb_path), np.repeat(px[..., None], 3, axis=2))
    rgb, rgb_meta = read_xray(rgb_path, dtype="uint8")
    np.testing.assert_array_equal(rgb, px)  # equal channels: taken as they are
    assert rgb_meta.photometric == "RGB"


def test_corrupt_and_wrong_files_named(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ReadError, match=r"garbage\.png: not a readable image"):
        read_xray(bad)
    good = tmp_path / "cut.png"
    assert cv2.imwrite(str(good), _ramp(64, 64, 65535))
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ReadError, match=r"cut\.png: truncated or corrupt"):
        read_xray(good)
    tiny = tmp_path / "tiny.png"
    assert cv2.imwrite(str(tiny), np.zeros((8, 100), np.uint8))
    with pytest.raises(ReadError, match=r"tiny\.png: wrong dimensions: 8x100"):
        read_xray(tiny)
    other = tmp_path / "scan.nii.gz"
    other.write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    with pytest.raises(ReadError, match=r"scan\.nii\.gz: unsupported format"):
        read_xray(other)
