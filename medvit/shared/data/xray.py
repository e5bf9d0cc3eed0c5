"""Reading chest X-rays: 8- and 16-bit PNG/JPEG/TIFF and DICOM CR/DX, as one grayscale image with air dark.

Every X-ray comes back as ``[H, W]`` (rows, columns), either float32 in ``[0, 1]`` or quantised to uint8/uint16,
with an :class:`XrayMeta` that holds only pixel facts and non-identifying geometry: pixel spacing, photometric
interpretation, view position (``PA``, ``AP``, ``LL``...), modality, bit depth and how the values were scaled.

How values reach ``[0, 1]``:
    * PNG/JPEG/TIFF: divided by the full scale of the bit depth (255 for 8-bit, 65535 for 16-bit). A 16-bit PNG may
      declare fewer significant bits in its ``sBIT`` chunk (PNG specification, section 11.3.3.4): the standard asks
      encoders to scale such samples up to 16 bits, which is then what the file holds, but some exporters store the
      raw 12-bit values. When every value fits in the declared bits the file is taken to hold raw values and is
      divided by ``2**sbit - 1``; otherwise by 65535. ``bits=`` overrides both (a dataset known to store 12-bit data
      in 16-bit PNGs without ``sBIT``). Colour files (some exports of grayscale X-rays are RGB) are converted to
      luminance; ``meta.photometric`` then says ``"RGB"``.
    * DICOM (pydicom): the modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence) first, then, with
      ``window="auto"``, the VOI transform the file carries (DICOM PS3.3 C.11.2): a VOI LUT Sequence, else Window
      Center/Width (LINEAR, LINEAR_EXACT or SIGMOID), both applied by ``pydicom.pixels.apply_voi_lut``; its output
      range is mapped to ``[0, 1]``. Without a VOI the file says nothing about display, so the image's own min/max
      are used (``window="bits"`` uses the BitsStored range instead, ``"minmax"`` ignores any VOI).
      MONOCHROME1 (bright = low value, frequent in CR/DX) is inverted *after* the VOI, ``1 - y``, as a display
      would, so that air is dark and bone bright in every output.

DICOM files that are refused, with a one-line error naming the file: colour (SamplesPerPixel 3, RGB/YBR), multi-frame,
BitsStored outside 8..16, no pixel data, a pixel array whose shape differs from Rows x Columns. Compressed transfer
syntaxes are decoded by whatever pydicom plugin is installed; Pillow (installed) covers JPEG Baseline and JPEG 2000,
pydicom itself RLE. JPEG Lossless (process 14, common for CR/DX) and JPEG-LS need ``pylibjpeg`` +
``pylibjpeg-libjpeg`` or ``python-gdcm``: when no installed plugin can decode the file's transfer syntax the error
names the syntax and the packages to install, before any decoding is tried.

Patient data: DICOM headers carry names, IDs, dates and UIDs. None of it enters ``XrayMeta``, log records or error
messages (pydicom's exception texts are reduced to their type, pydicom's warnings are silenced while reading).
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.data.io import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ReadError,
    check_file,
    is_dicom_file,
    read_image,
)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

XRAY_SUFFIXES: tuple[str, ...] = IMAGE_SUFFIXES + DICOM_SUFFIXES
"""Suffixes :func:`read_xray` reads (extension-less files are read when they carry the DICOM preamble)."""

OUTPUT_DTYPES: tuple[str, ...] = ("float32", "uint8", "uint16")
WINDOW_MODES: tuple[str, ...] = ("auto", "bits", "minmax")
MIN_SIZE = 16
"""Smallest accepted image side in pixels: anything smaller is not a radiograph (an icon, a thumbnail strip)."""


@dataclass(frozen=True)
class XrayMeta:
    """What :func:`read_xray` tells besides the pixels; never a patient identifier.

    Attributes:
        path: The file read.
        shape: ``(H, W)`` of the returned array.
        source: ``"png"``, ``"jpeg"``, ``"tiff"``, ``"bmp"``, ``"webp"`` or ``"dicom"``.
        stored_dtype: Pixel type in the file (``"uint8"``, ``"uint16"``, ``"int16"``...).
        bits: Significant bits of the stored values (8, 12, 16...; DICOM BitsStored).
        photometric: ``"MONOCHROME1"``/``"MONOCHROME2"`` (DICOM), ``"L"`` (grayscale image file), ``"RGB"`` or
            ``"RGBA"`` (colour image file converted to luminance).
        inverted: True when MONOCHROME1 values were inverted.
        scaling: How values were mapped to ``[0, 1]``: ``"bits"``, ``"voi-lut"``, ``"window"`` or ``"minmax"``.
        spacing: ``(row, column)`` pixel spacing in mm (DICOM PixelSpacing, else ImagerPixelSpacing); empty when
            unknown (image files, missing or non-positive values).
        view_position: DICOM ViewPosition (``"PA"``, ``"AP"``, ``"LL"``...), ``None`` when absent.
        modality: DICOM Modality (``"CR"``, ``"DX"``...) or ``"image"`` for image files.
    """

    path: str
    shape: tuple[int, int]
    source: str
    stored_dtype: str
    bits: int
    photometric: str
    inverted: bool
    scaling: str
    spacing: tuple[float, ...] = ()
    view_position: str | None = None
    modality: str = "image"


def _fail(path: PathLike, problem: str) -> ReadError:
    return ReadError(f"{os.fspath(path)}: {problem}")


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def read_xray(
    path: PathLike,
    *,
    dtype: str = "float32",
    window: str = "auto",
    bits: int | None = None,
    max_pixels: int = MAX_PIXELS,
    min_size: int = MIN_SIZE,
) -> tuple[np.ndarray, XrayMeta]:
    """Read a chest X-ray (PNG, JPEG, TIFF, BMP, WebP or DICOM) as a grayscale image with air dark.

    Args:
        path: The file; a DICOM file may have no extension if it carries the ``DICM`` preamble.
        dtype: ``"float32"`` (values in ``[0, 1]``), or ``"uint8"`` / ``"uint16"``: the same image times 255 or
            65535, rounded (a 16-bit PNG read as uint16 keeps its values exactly).
        window: DICOM only: ``"auto"`` (the file's VOI LUT or window, else min/max), ``"bits"`` (the BitsStored
            range) or ``"minmax"`` (the image's own range). See the module docstring.
        bits: Image files only: significant bits of the stored values, overriding the file's bit depth and ``sBIT``.
        max_pixels: Largest accepted Rows x Columns (decompression-bomb guard).
        min_size: Smallest accepted image side.

    Returns:
        ``(image, meta)``: ``image`` is ``[H, W]`` of ``dtype``.

    Raises:
        ReadError: Missing, empty, unreadable, unsupported format, truncated or corrupt, wrong dimensions (multi-frame,
            colour DICOM, smaller than ``min_size``), BitsStored outside 8..16, no decoder for a compressed DICOM.
    """
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {dtype!r}")
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {', '.join(WINDOW_MODES)}, got {window!r}")
    p = check_file(path)
    if _has_suffix(p, DICOM_SUFFIXES) or (p.suffix == "" and is_dicom_file(p)):
        unit, meta = _read_dicom_xray(p, window=window, max_pixels=max_pixels)
    elif _has_suffix(p, IMAGE_SUFFIXES):
        if bits is not None and not 1 <= int(bits) <= 16:
            raise ValueError(f"bits must be in 1..16, got {bits}")
        raw, meta = _read_image_xray(p, bits=bits, max_pixels=max_pixels)
        _check_size(p, meta.shape, min_size)
        exact = {"uint8": (8, np.uint8), "uint16": (16, np.uint16)}.get(dtype)
        if exact is not None and meta.bits == exact[0] and raw.dtype == exact[1]:
            return raw, meta  # the stored values as they are: no round trip through float
        unit = _scale_to_unit(raw, meta.bits) if meta.scaling == "bits" else _minmax(raw)
    else:
        raise _fail(p, f"unsupported format '{p.suffix or p.name}' (expected one of {', '.join(XRAY_SUFFIXES)})")
    _check_size(p, meta.shape, min_size)
    return to_dtype(unit, dtype), meta


def _check_size(p: Path, shape: tuple[int, int], min_size: int) -> None:
    if min(shape) < min_size:
        h, w = shape
        raise _fail(p, f"wrong dimensions: {h}x{w} pixels, smaller than {min_size} on a side (not a radiograph)")


def to_dtype(unit: np.ndarray, dtype: str) -> np.ndarray:
    """A ``[0, 1]`` float image as ``dtype``: ``"float32"``, ``"uint8"`` (x255) or ``"uint16"`` (x65535), rounded."""
    if dtype == "float32":
        return np.ascontiguousarray(unit, dtype=np.float32)
    scale = 255.0 if dtype == "uint8" else 65535.0
    return np.rint(np.clip(unit, 0.0, 1.0) * scale).astype(dtype)


def _scale_to_unit(raw: np.ndarray, bits: int) -> np.ndarray:
    full = float(2**bits - 1)
    return np.clip(raw.astype(np.float32) / np.float32(full), 0.0, 1.0)


def _minmax(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float32)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros_like(v)
    return (v - np.float32(lo)) / np.float32(hi - lo)


# --------------------------------------------------------------------------------------------------------------
# image files


def png_significant_bits(head: bytes) -> int | None:
    """The significant bits a PNG's ``sBIT`` chunk declares for its gray (or first colour) channel, or ``None``.

    Args:
        head: The first bytes of the file (chunks before the first ``IDAT``; 64 KiB is plenty).

    Returns:
        The declared bits (1..16), or ``None`` when the file is not a PNG or has no ``sBIT`` before its data.
    """
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    i = 8
    while i + 8 <= len(head):
        length, ctype = struct.unpack(">I4s", head[i : i + 8])
        if ctype == b"IDAT":
            return None
        if ctype == b"sBIT" and length >= 1 and i + 9 <= len(head):
            return int(head[i + 8]) or None
        i += 12 + length  # length, type, data, crc
    return None


def _source_of(p: Path) -> str:
    suffix = p.suffix.lower()
    return {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}.get(suffix, suffix.lstrip("."))


def _read_image_xray(p: Path, *, bits: int | None, max_pixels: int) -> tuple[np.ndarray, XrayMeta]:
    """Decoded pixels ``[H, W]`` as stored (uint8/uint16, or other TIFF types) and the meta, luminance if colour."""
    import cv2

    img, imeta = read_image(p, mode="unchanged", max_pixels=max_pixels)
    stored = str(img.dtype)
    photometric = "L"
    if img.ndim == 3:
        rgb = img[..., :3]
        photometric = str(imeta.extra.get("color_order", "RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            img = np.ascontiguousarray(rgb[..., 0])  # a grayscale image saved as RGB: exact
        elif img.dtype in (np.uint8, np.uint16):
            img = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        else:
            img = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if img.ndim != 2:
        raise _fail(p, f"wrong dimensions: pixel array of shape {img.shape}, expected a 2D image")
    scaling = "bits"
    if img.dtype == np.uint8:
        n_bits = 8 if bits is None else int(bits)
    elif img.dtype == np.uint16:
        n_bits = 16 if bits is None else int(bits)
        if bits is None:
            with open(p, "rb") as fh:
                sbit = png_significant_bits(fh.read(65536))
            if sbit is not None and sbit < 16 and int(img.max()) <= 2**sbit - 1:
                n_bits = sbit  # raw values in the declared bits, not scaled up as the PNG spec asks
    else:  # float or 32-bit TIFF: no full scale to divide by
        n_bits = 8 * img.dtype.itemsize
        scaling = "minmax"
    meta = XrayMeta(
        path=os.fspath(p),
        shape=(int(img.shape[0]), int(img.shape[1])),
        source=_source_of(p),
        stored_dtype=stored,
        bits=n_bits,
        photometric=photometric,
        inverted=False,
        scaling=scaling,
    )
    return img, meta


# --------------------------------------------------------------------------------------------------------------
# DICOM


def _dcmread(p: Path) -> Any:
    """``pydicom.dcmread`` with its warnings silenced (they may quote element values) and its errors reduced to
    their type (their text may too)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(p, force=False)
    except InvalidDicomError:
        raise _fail(p, "not a DICOM file (no 'DICM' preamble)") from None
    except PermissionError:
        raise _fail(p, "permission denied: cannot read the file") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is a damaged file; the text may hold PHI
        raise _fail(p, f"truncated or corrupt DICOM file ({type(exc).__name__})") from None


def _int_tag(ds: Any, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default


def _check_dicom_xray(p: Path, ds: Any, max_pixels: int) -> tuple[str, int]:
    """Refuse what is not a single grayscale radiograph; ``(photometric, bits_stored)``."""
    if "PixelData" not in ds:
        raise _fail(p, "DICOM file has no pixel data (truncated, or not an image object such as a report)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if _int_tag(ds, "SamplesPerPixel", 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise _fail(
            p,
            f"colour DICOM (PhotometricInterpretation {photometric}); a radiograph is grayscale "
            "(MONOCHROME1/MONOCHROME2): refusing to guess a conversion",
        )
    if _int_tag(ds, "NumberOfFrames", 1) > 1:
        raise _fail(p, "wrong dimensions: multi-frame DICOM, expected a single radiograph")
    bits = _int_tag(ds, "BitsStored", _int_tag(ds, "BitsAllocated", 16))
    if not 8 <= bits <= 16:
        raise _fail(p, f"BitsStored {bits} is not supported for radiographs (expected 8 to 16)")
    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    if rows * cols > max_pixels:
        raise _fail(p, f"too large: {rows}x{cols} = {rows * cols} pixels, limit is {max_pixels} (max_pixels)")
    return photometric, bits


def _check_decoder(p: Path, ds: Any) -> None:
    """Raise, naming the packages to install, when the transfer syntax is compressed and no plugin decodes it."""
    from pydicom.pixels import get_decoder

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not getattr(ts, "is_compressed", False):
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise _fail(p, f"compressed pixel data in transfer syntax {ts.name}, which pydicom cannot decode") from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "a pydicom pixel-data plugin"
        raise _fail(
            p,
            f"compressed pixel data (transfer syntax {ts.name}) and no installed decoder for it; install one of: "
            f"{options} (e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm)",
        )


def _decode(p: Path, ds: Any) -> np.ndarray:
    _check_decoder(p, ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; the message must stay PHI-free
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", "unknown")
        raise _fail(p, f"truncated or corrupt pixel data (transfer syntax {name}; {type(exc).__name__})") from None
    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    if raw.shape != (rows, cols):
        raise _fail(p, f"wrong dimensions: pixel array {tuple(raw.shape)}, expected Rows x Columns ({rows}, {cols})")
    return raw


def _bits_range(ds: Any, bits: int) -> tuple[float, float]:
    """The stored-value range of ``bits`` after the modality LUT (as pydicom's windowing computes its output range)."""
    if ds.get("ModalityLUTSequence"):
        lut_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**lut_bits - 1)
    if _int_tag(ds, "PixelRepresentation", 0) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _voi_kind(ds: Any) -> str | None:
    """``"voi-lut"``, ``"window"`` or ``None``: the VOI transform ``apply_voi_lut`` will apply (it prefers the LUT)."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "voi-lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _lut_full_scale(ds: Any) -> float:
    """Full scale of the first VOI LUT's output.

    LUTDescriptor's third value gives the bits per entry, but some files declare 16 for 12-bit entries; taking the
    smaller of the declared bits and the bits the largest entry needs reads both kinds of file sensibly.
    """
    item = ds.VOILUTSequence[0]
    declared = int(item.LUTDescriptor[2])
    data = item.LUTData
    top = int(max(data)) if isinstance(data, list | tuple) else int(np.max(np.frombuffer(bytes(data), np.uint16)))
    return float(2 ** min(declared, max(8, top.bit_length())) - 1)


def _dicom_to_unit(ds: Any, raw: np.ndarray, bits: int, window: str) -> tuple[np.ndarray, str]:
    """Modality LUT, then VOI, mapped to ``[0, 1]`` (before any MONOCHROME1 inversion); ``(image, scaling)``."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = apply_modality_lut(raw, ds)
        kind = _voi_kind(ds) if window == "auto" else None
        if kind == "voi-lut":
            if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
                values = values.astype(np.int64)  # a LUT is indexed by integers
            out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
            return np.clip(out / _lut_full_scale(ds), 0.0, 1.0).astype(np.float32), kind
        if kind == "window":
            out = apply_voi_lut(values, ds, index=0, prefer_lut=False)
            lo, hi = _bits_range(ds, bits)
            return np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), kind
    if window == "bits":
        lo, hi = _bits_range(ds, bits)
        return np.clip((values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), "bits"
    return _minmax(np.asarray(values)), "minmax"


def _positive_spacing(ds: Any) -> tuple[float, ...]:
    """``(row, column)`` mm from PixelSpacing, else ImagerPixelSpacing; empty when neither has two positive values."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            pair = tuple(float(v) for v in value) if value is not None else ()
        except (TypeError, ValueError):
            continue
        if len(pair) == 2 and all(np.isfinite(v) and v > 0 for v in pair):
            return pair
    return ()


def _read_dicom_xray(p: Path, *, window: str, max_pixels: int) -> tuple[np.ndarray, XrayMeta]:
    ds = _dcmread(p)
    photometric, bits = _check_dicom_xray(p, ds, max_pixels)
    raw = _decode(p, ds)
    try:
        unit, scaling = _dicom_to_unit(ds, raw, bits, window)
    except (ValueError, NotImplementedError, TypeError, IndexError, AttributeError) as exc:
        raise _fail(p, f"invalid modality or VOI LUT / window values ({type(exc).__name__})") from None
    inverted = photometric == "MONOCHROME1"
    if inverted:
        unit = 1.0 - unit  # after the VOI, as a display shows MONOCHROME1: low output values white
    view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
    meta = XrayMeta(
        path=os.fspath(p),
        shape=(int(unit.shape[0]), int(unit.shape[1])),
        source="dicom",
        stored_dtype=str(raw.dtype),
        bits=bits,
        photometric=photometric,
        inverted=inverted,
        scaling=scaling,
        spacing=_positive_spacing(ds),
        view_position=view,
        modality=str(ds.get("Modality", "") or "unknown").strip() or "unknown",
    )
    return np.ascontiguousarray(unit, dtype=np.float32), meta
