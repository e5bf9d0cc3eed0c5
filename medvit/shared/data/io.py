"""Readers for medical volumes, DICOM images, 2D images and videos.

Every reader returns ``(array, meta)`` where ``meta`` is an :class:`ImageMeta`, and raises one error type,
:class:`ReadError`, whose message names the file and the problem (missing, zero bytes, truncated or corrupt,
wrong dimensionality, NaN/Inf values, unsupported format, too many pixels).

Libraries: nibabel (NIfTI), pydicom (DICOM), opencv (PNG/JPEG/TIFF/BMP/WebP and video), simplejpeg (libjpeg-turbo's
corrupt-data warnings as errors, which opencv only prints). They are imported inside the functions so that importing
this module (and ``medvit --help``) stays cheap.

Conventions:
    * Volumes are indexed like nibabel arrays: ``[X, Y, Z]`` in the file's voxel order, with a 4x4 ``affine`` that
      maps voxel indices to RAS+ millimetres (NIfTI/nibabel convention). DICOM series are converted from DICOM's
      LPS patient coordinates to RAS (negate x and y) and indexed ``[column, row, slice]`` so they behave exactly
      like a NIfTI volume of the same scan (as dcm2niix would write it, up to axis flips described by the affine).
    * 2D images are indexed ``[H, W]`` or ``[H, W, C]`` with an explicit colour order (RGB or RGBA).
    * PHI: DICOM patient identifiers (names, IDs, dates, UIDs) never enter ``meta``, log lines or error messages.
      Error messages from pydicom are reduced to their exception type for the same reason.
    * Spacing: a zero, negative or non-finite spacing in a header (DICOM ``PixelSpacing`` ``0.000\\0.000`` as some
      CR files carry, a NIfTI ``pixdim``) means the header does not know it. ``meta.spacing`` is then empty
      (unknown) and one warning names the file; no zero spacing is ever returned (resampling to mm divides by it).
      Where an affine is still needed (a DICOM volume) it assumes 1 mm on those axes.

References:
    * DICOM PS3.3 C.7.6.2 (Image Plane Module: ImagePositionPatient, ImageOrientationPatient, PixelSpacing).
    * nibabel "Coordinate systems and affines"; dcm2niix (slice sorting and gap detection behaviour).
"""

from __future__ import annotations

import logging
import math
import os
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Default voxel limit for volumes (about 8 GiB as float32): a guard against decompression bombs.
MAX_VOXELS = 2**31
#: Default pixel limit for 2D images and video frames: the same value as PIL's ``Image.MAX_IMAGE_PIXELS``.
MAX_PIXELS = 178_956_970

#: Largest uncompressed/compressed size ratio a gzip file can reach (deflate's limit is about 1032:1; margin).
MAX_GZIP_RATIO = 1100

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
"""Suffixes :func:`read_image` reads: the one list that folder scans, data cards and apps use for 2D images."""
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")

# Relative tolerance on slice spacing before a DICOM series is declared to have gaps (dcm2niix warns at a
# similar level); 1% absorbs the rounding of ImagePositionPatient to a few decimals.
SLICE_SPACING_RTOL = 0.01


class ReadError(DataError):
    """A file or folder that cannot be read as the requested kind of image; the message names it."""


@dataclass(eq=False)
class ImageMeta:
    """What a reader knows about an image besides its pixels.

    Attributes:
        path: The file or folder that was read.
        shape: Shape of the returned array.
        dtype: Data type stored in the file (before conversion to float32), e.g. ``"int16"``.
        modality: ``"CT"``, ``"MR"``, ``"CR"``... from DICOM; ``"unknown"`` for NIfTI unless given; ``"image"`` or
            ``"video"`` for 2D files.
        affine: 4x4 float64 voxel-to-RAS matrix for volumes, ``None`` for 2D images.
        spacing: Voxel or pixel size in mm per array axis (spatial axes only); empty when unknown (missing, or zero or
            negative in the header). Never zero.
        orientation: Axis codes of the affine (``nibabel.aff2axcodes``), e.g. ``"RAS"`` or ``"LPS"``.
        extra: Small format-specific facts (never patient identifiers).
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    modality: str = "unknown"
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] = ()
    orientation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def _fail(path: PathLike, problem: str) -> ReadError:
    return ReadError(f"{os.fspath(path)}: {problem}")


def _valid_spacing(values: Sequence[float]) -> bool:
    return len(values) > 0 and all(math.isfinite(float(v)) and float(v) > 0 for v in values)


_WARNED_UNKNOWN_SPACING: set[str] = set()
_WARNED_LOCK = threading.Lock()


def _warn_unknown_spacing(path: PathLike, problem: str) -> None:
    """Warn that ``path``'s spacing is unknown, once per file however often it is read (loader threads, epochs)."""
    key = os.fspath(path)
    with _WARNED_LOCK:
        if key in _WARNED_UNKNOWN_SPACING:
            return
        _WARNED_UNKNOWN_SPACING.add(key)
    logger.warning("%s: %s: voxel spacing unknown (meta.spacing is empty)", key, problem)


def _format_values(values: Sequence[float]) -> str:
    return "\\".join(f"{float(v):g}" for v in values)


def _dicom_pixel_spacing(path: PathLike, ds: Any) -> tuple[float, float] | None:
    """``(row, column)`` spacing from PixelSpacing, else ImagerPixelSpacing; None (and a warning) if neither is valid.

    A zero or negative value is treated like a missing one (DICOM CR files with ``0.000\\0.000`` exist).
    """
    bad = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _floats(ds, keyword, 2)
        if values is None:
            continue
        if _valid_spacing(values):
            return float(values[0]), float(values[1])
        bad.append(f"{keyword} {_format_values(values)} is zero or negative")
    _warn_unknown_spacing(path, "; ".join(bad) or "no PixelSpacing or ImagerPixelSpacing")
    return None


def _missing(p: Path) -> str:
    """Why ``p`` cannot be found: a broken symbolic link or a path that does not exist."""
    if p.is_symlink():
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        return f"broken symbolic link (its target {target} does not exist)"
    return "file not found"


def _os_problem(exc: OSError, what: str) -> str:
    """One phrase for an ``OSError`` met while opening or listing ``what`` ("the file", "the folder")."""
    if isinstance(exc, PermissionError):
        return f"permission denied: cannot read {what}"
    return f"cannot read {what} ({exc.strerror or type(exc).__name__})"


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _check_file(path: PathLike) -> Path:
    """Raise for a missing path, a broken link, a folder, a FIFO or device, an empty or an unreadable file.

    The file is opened once (and closed): a permission problem is reported here, by name, instead of as an
    ``OSError`` from deep inside a decoder. Only regular files are opened, so a FIFO never blocks the caller.

    Returns:
        The path.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise _fail(p, _missing(p)) from None
    except OSError as exc:
        raise _fail(p, _os_problem(exc, "the file")) from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(p, "is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(p, f"is {_special_kind(st.st_mode)}, not a regular file")
    if st.st_size == 0:
        raise _fail(p, "empty file (0 bytes)")
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as exc:
        raise _fail(p, _os_problem(exc, "the file")) from None
    os.close(fd)
    return p


def check_file(path: PathLike) -> Path:
    """Check that ``path`` is a non-empty regular file this process can read, as every reader does first.

    For callers that list files before reading them (training sets, validators): a bad file is named at once
    instead of midway through a run.

    Returns:
        The path.

    Raises:
        ReadError: Missing, broken symbolic link, folder, FIFO/socket/device, empty, or not readable.
    """
    return _check_file(path)


def list_folder(folder: PathLike) -> list[Path]:
    """The entries of a folder, hidden ones (leading ``.``) left out, sorted by name.

    Raises:
        ReadError: The folder is missing, not a folder, or cannot be listed (permission denied, I/O error).
    """
    d = Path(folder)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        raise _fail(d, "folder not found") from None
    except NotADirectoryError:
        raise _fail(d, "is a file, expected a folder") from None
    except OSError as exc:
        raise _fail(d, _os_problem(exc, "the folder")) from None
    return [d / n for n in sorted(names) if not n.startswith(".")]


def affine_problem(affine: np.ndarray) -> str | None:
    """What makes a voxel-to-world affine unusable for orienting and resampling, or ``None`` when it is usable.

    MONAI's ``Orientation``/``Spacing`` invert the affine; a NaN entry or a zero voxel axis makes them fail with a
    message that names neither the file nor the cause, so callers check here first.

    Args:
        affine: 4x4 voxel-to-world matrix.

    Returns:
        A phrase such as ``"voxel spacing is 0 along axis 2 ..."``, or ``None``.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        return f"affine of shape {a.shape}, expected 4x4"
    if not np.isfinite(a).all():
        return "the affine (sform/qform) has NaN or Inf entries: the voxel-to-world geometry is unknown"
    zooms = np.linalg.norm(a[:3, :3], axis=0)
    zero = [i for i in range(3) if zooms[i] == 0.0]
    if zero:
        axes = ", ".join(map(str, zero))
        return (
            f"voxel spacing is 0 along axis {axes} (zero column in the affine): the volume cannot be oriented or "
            "resampled; fix pixdim/sform in the header"
        )
    # Relative to the zooms, so that a 0.1 mm grid is not called singular.
    if abs(np.linalg.det(a[:3, :3] / zooms)) < 1e-6:
        return "the affine is singular (two voxel axes point the same way): the volume cannot be resampled"
    return None


def _has_suffix(path: PathLike, suffixes: Sequence[str]) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in suffixes)


def is_dicom_file(path: PathLike) -> bool:
    """True when the file carries the DICOM Part 10 preamble: ``b"DICM"`` at byte 128."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_finite(path: PathLike, arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        n_inf = int(np.count_nonzero(np.isinf(arr)))
        raise _fail(path, f"contains {n_nan + n_inf} non-finite voxels ({n_nan} NaN, {n_inf} Inf)")


def _axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(c or "?" for c in nib.aff2axcodes(affine))


# --------------------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------------------


def _check_nifti_data_size(p: Path, img: Any, n_vox: int) -> None:
    """Refuse a header whose voxel data the file cannot hold, before nibabel allocates room for it.

    nibabel allocates the whole declared array and only then finds the stream too short: a 1 KB ``.nii.gz`` whose
    header claims 1200^3 voxels costs 4 GB before its "truncated" error. An uncompressed file must be at least
    ``vox_offset + voxels * itemsize`` bytes. Deflate cannot expand more than about 1032:1 (gzip's framing
    only lowers that), so a ``.nii.gz`` declaring more than :data:`MAX_GZIP_RATIO` times its own size cannot
    hold it: what a truncated file can still cost is bounded by its size.

    Raises:
        ReadError: naming the declared and the possible sizes.
    """
    try:
        offset = int(img.dataobj.offset)
    except (AttributeError, TypeError, ValueError, OverflowError):
        offset = 0
    declared = max(offset, 0) + n_vox * img.get_data_dtype().itemsize
    size = p.stat().st_size
    dtype = img.get_data_dtype().name
    shape = tuple(int(s) for s in img.shape)
    if p.name.lower().endswith(".gz"):
        if declared > MAX_GZIP_RATIO * size:
            raise _fail(
                p,
                f"truncated or corrupt: the header declares {shape} {dtype} voxels ({declared:,} bytes) but "
                f"{size:,} gzip-compressed bytes can hold at most {MAX_GZIP_RATIO * size:,}",
            )
    elif size < declared:
        raise _fail(
            p,
            f"truncated or corrupt: the header declares {shape} {dtype} voxels ({declared:,} bytes with the "
            f"header) but the file has {size:,} bytes",
        )


def nifti_header_problem(img: Any) -> str | None:
    """What in a loaded NIfTI header (``nibabel`` image, no voxels read) makes it unusable, or ``None``.

    Checked: the voxel type (complex and RGB voxels are refused: ``get_fdata`` would keep the real part of a
    complex image without a word) and the affine (NaN/Inf entries, which otherwise surface as
    ``LinAlgError: SVD did not converge``).
    """
    stored = img.get_data_dtype()
    if stored.kind == "c":
        return f"complex-valued voxels ({stored.name}); expected real values (save the magnitude instead)"
    if stored.kind not in "biuf":
        return f"unsupported voxel type {stored} (e.g. RGB); expected one real value per voxel"
    if not np.isfinite(np.asarray(img.affine, dtype=np.float64)).all():
        return "the header's affine (sform/qform) has NaN or Inf entries: the voxel-to-world grid is unknown"
    return None


def read_nifti(
    path: PathLike,
    *,
    ndim: int | None = 3,
    max_voxels: int = MAX_VOXELS,
    modality: str = "unknown",
    check_finite: bool = True,
) -> tuple[np.ndarray, ImageMeta]:
    """Read a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) with nibabel.

    The header is read first; the voxel limit, the dimensionality and whether the file can hold the declared data
    (its size, or for ``.nii.gz`` its size times the largest gzip ratio) are checked before any voxel data is
    decompressed. Trailing singleton axes beyond ``ndim`` (e.g. ``[X, Y, Z, 1]``) are dropped.

    Args:
        path: The NIfTI file.
        ndim: Required number of array dimensions (3 for a CT volume, 4 for ``[X, Y, Z, C]``); ``None`` accepts any.
        max_voxels: Largest accepted voxel count (decompression-bomb guard), checked from the header.
        modality: Stored in ``meta.modality`` (NIfTI has no modality field).
        check_finite: Reject NaN/Inf voxels.

    Returns:
        ``(array, meta)``: float32 array ``[X, Y, Z]`` (or ``[X, Y, Z, C]``) in the file's voxel order with the
        header's scl_slope/scl_inter applied; ``meta.affine`` maps voxel indices to RAS mm, ``meta.spacing`` holds
        the header zooms of the spatial axes, or is empty when the header's pixdim is zero or negative (unknown).

    Raises:
        ReadError: Missing, empty, unreadable, not NIfTI, truncated or corrupt, wrong dimensionality, too large,
            NaN/Inf voxels, complex or RGB voxels, NaN/Inf in the affine.
    """
    p = _check_file(path)
    img = _nifti_header(p)
    shape, n_vox = _nifti_shape(p, img, ndim, max_voxels)
    _check_nifti_data_size(p, img, n_vox)
    try:
        arr = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        # A cut .nii.gz ends the gzip stream early (EOFError); a cut .nii is shorter than the header says (OSError).
        raise _fail(p, f"truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if check_finite:
        _check_finite(p, arr)
    return arr, _nifti_meta(path, p, img, arr, modality)


def _nifti_header(p: Path) -> Any:
    """The nibabel image of a NIfTI file, header only (no voxel read), refused when unusable."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    if not _has_suffix(p, NIFTI_SUFFIXES):
        raise _fail(p, f"unsupported format (expected {' or '.join(NIFTI_SUFFIXES)})")
    if p.name.lower().endswith(".gz"):
        with open(p, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise _fail(p, "not a NIfTI file (the .gz file is not gzip-compressed)")
    try:
        img = nib.load(p)  # header only: the data stays on disk until asked for
    except ImageFileError:
        raise _fail(p, "not a NIfTI file (no valid NIfTI header)") from None
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise _fail(p, f"truncated or corrupt header ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise _fail(p, f"not a NIfTI file (nibabel read it as {type(img).__name__})")
    problem = nifti_header_problem(img)
    if problem is not None:
        raise _fail(p, problem)
    return img


def _nifti_shape(p: Path, img: Any, ndim: int | None, max_voxels: int) -> tuple[tuple[int, ...], int]:
    """The array shape (trailing singleton axes beyond ``ndim`` dropped) and voxel count, checked from the header."""
    shape = tuple(int(s) for s in img.shape)
    n_vox = math.prod(shape)
    if n_vox > max_voxels:
        raise _fail(p, f"too large: header declares shape {shape} = {n_vox} voxels, limit is {max_voxels} (max_voxels)")
    if ndim is not None:
        while len(shape) > ndim and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != ndim:
            what = {2: "a 2D image", 3: "a 3D volume", 4: "a 4D volume [X, Y, Z, C]"}.get(ndim, f"{ndim} dimensions")
            raise _fail(p, f"expected {what}, got shape {tuple(int(s) for s in img.shape)}")
    if n_vox == 0:
        raise _fail(p, f"empty volume, shape {shape}")
    return shape, n_vox


def _nifti_meta(path: PathLike, p: Path, img: Any, arr: np.ndarray, modality: str) -> ImageMeta:
    import nibabel as nib

    affine = np.asarray(img.affine, dtype=np.float64)
    n_spatial = min(3, arr.ndim)
    zooms: tuple[float, ...] = tuple(float(z) for z in img.header.get_zooms()[:n_spatial])
    hdr = img.header
    # nibabel replaces a zero pixdim by 1 and a negative one by its absolute value when it loads the header, so the
    # values as stored are read again, unchecked, to tell "1 mm" from "unknown".
    raw = _raw_pixdim(p, type(hdr))[:n_spatial]
    if raw and not _valid_spacing(raw):
        source = "the sform" if int(hdr["sform_code"]) > 0 else "nibabel's repair of the header (1 mm on those axes)"
        _warn_unknown_spacing(p, f"pixdim {list(raw)} is zero or negative (the affine comes from {source})")
        zooms = ()
    return ImageMeta(
        path=os.fspath(path),
        shape=tuple(arr.shape),
        dtype=img.get_data_dtype().name,
        modality=modality,
        affine=affine,
        spacing=zooms,
        orientation=_axcodes(affine),
        extra={
            "format": "nifti2" if isinstance(img, nib.Nifti2Image) else "nifti1",
            "qform_code": int(hdr["qform_code"]),
            "sform_code": int(hdr["sform_code"]),
        },
    )


def _raw_pixdim(path: Path, header_class: Any) -> tuple[float, ...]:
    """``pixdim[1:]`` as stored in the file, before nibabel's checks repair it (empty if unreadable)."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(path) as fh:
            raw = header_class.from_fileobj(fh, check=False)
        return tuple(float(v) for v in raw["pixdim"][1:])
    except Exception:  # noqa: BLE001 - the header was read once already; a failure here only skips the check
        return ()


# --------------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------------


def _dcmread(path: Path, *, stop_before_pixels: bool = False) -> Any:
    """``pydicom.dcmread`` with warnings silenced: pydicom warnings may quote element values (possible PHI)."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=False, stop_before_pixels=stop_before_pixels)


def _pixels(path: Path, ds: Any) -> np.ndarray:
    """Pixel data with the modality LUT (RescaleSlope/Intercept) applied, as float32 ``[rows, cols]``."""
    from pydicom.pixels import apply_modality_lut

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array
            out = apply_modality_lut(raw, ds)
    except Exception as exc:  # decoders raise many types; the message must stay PHI-free
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
        raise _fail(path, f"cannot decode pixel data (transfer syntax {ts_name}; {type(exc).__name__})") from None
    return np.asarray(out, dtype=np.float32)


def _stored_dtype(ds: Any) -> str:
    """Data type of the stored pixels from BitsAllocated/PixelRepresentation, without decoding them."""
    if "PixelData" not in ds:
        return "float32" if "FloatPixelData" in ds else "float64"
    bits = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return f"{'int' if signed else 'uint'}{bits}" if bits in (8, 16, 32) else f"{bits}-bit"


def _floats(ds: Any, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) else None


def _n_frames(ds: Any) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _read_dicom_files(files: Sequence[Path], label: Path, *, max_voxels: int) -> tuple[np.ndarray, ImageMeta]:
    """Assemble one volume from DICOM files that hold slices of one series (see :func:`read_dicom_series`)."""
    slices = _image_slices(files, label)
    rows, cols = _check_series(label, slices, max_voxels)
    n = len(slices)
    slices, proj, iop, origin = _sort_slices(label, slices)
    row_dir, col_dir = iop[:3], iop[3:]  # row_dir: direction of increasing column index (DICOM PS3.3 C.7.6.2.1.1)
    normal = np.cross(row_dir, col_dir)

    ds0 = slices[0][1]
    ps = _dicom_pixel_spacing(label, ds0)
    row_spacing, col_spacing = ps if ps is not None else (1.0, 1.0)  # the affine needs a value: 1 mm, flagged unknown
    step, step_known = _slice_step(label, ds0, proj)
    known = ps is not None and step_known

    # Pixel data as [rows, cols] -> transpose to [col=i, row=j], stack slices along k.
    vol = np.empty((cols, rows, n), dtype=np.float32)
    for k, (f, ds) in enumerate(slices):
        px = _pixels(f, ds)
        if px.shape != (rows, cols):
            raise _fail(f, f"pixel data shape {px.shape} does not match Rows x Columns ({rows}, {cols})")
        vol[:, :, k] = px.T
    _check_finite(label, vol)

    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS (nibabel convention)
    meta = ImageMeta(
        path=os.fspath(label),
        shape=tuple(vol.shape),
        dtype=_stored_dtype(ds0),
        modality=str(ds0.get("Modality", "unknown") or "unknown"),
        affine=affine,
        spacing=(col_spacing, row_spacing, step) if known else (),
        orientation=_axcodes(affine),
        extra={"modality": str(ds0.get("Modality", "unknown") or "unknown"), "rows": rows, "cols": cols, "n_slices": n},
    )
    return vol, meta


def _image_slices(files: Sequence[Path], label: Path) -> list[tuple[Path, Any]]:
    """``(file, dataset)`` of every DICOM image among ``files`` (headers and pixels read); others are skipped."""
    from pydicom.errors import InvalidDicomError

    slices = []  # (file, dataset)
    n_skipped = 0
    for f in files:
        try:
            ds = _dcmread(f)
        except InvalidDicomError:
            n_skipped += 1
            continue
        except PermissionError as exc:
            raise _fail(f, _os_problem(exc, "the file")) from None
        except Exception as exc:  # a damaged file: name it, keep pydicom's text out (PHI)
            raise _fail(f, f"truncated or corrupt DICOM file ({type(exc).__name__})") from None
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            n_skipped += 1  # DICOMDIR, structured reports, presentation states...
            continue
        slices.append((f, ds))
    if n_skipped:
        logger.debug("%s: skipped %d non-image or non-DICOM files", label, n_skipped)
    if not slices:
        if label.is_file():
            raise _fail(label, "DICOM file has no pixel data (truncated, or not an image object)")
        raise _fail(label, "no DICOM image files found")
    return slices


def _check_series(label: Path, slices: Sequence[tuple[Path, Any]], max_voxels: int) -> tuple[int, int]:
    """One single-frame, single-sample series with one slice shape, within the voxel limit; ``(rows, cols)``."""
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise _fail(label, f"contains {len(series)} DICOM series; expected one series per folder (split it)")
    for f, ds in slices:
        if _n_frames(ds) > 1:
            raise _fail(f, "multi-frame (enhanced) DICOM is not supported; convert it to NIfTI (e.g. dcm2niix)")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise _fail(f, "colour DICOM image in a volume; expected one sample per pixel")
    shapes = sorted({(int(ds.Rows), int(ds.Columns)) for _, ds in slices})
    if len(shapes) > 1:
        raise _fail(label, f"inconsistent slice shapes (rows, cols) in one series: {shapes}")
    rows, cols = shapes[0]
    n = len(slices)
    if rows * cols * n > max_voxels:
        raise _fail(label, f"too large: {cols}x{rows}x{n} = {rows * cols * n} voxels, limit is {max_voxels}")
    return rows, cols


def _sort_slices(
    label: Path, slices: Sequence[tuple[Path, Any]]
) -> tuple[list[tuple[Path, Any]], np.ndarray, np.ndarray, np.ndarray]:
    """Slices sorted along the normal; ``(slices, sorted positions on the normal, orientation, origin)``.

    Every slice needs position + orientation, except a lone slice (then assume axial at origin).
    """
    n = len(slices)
    iops = [_floats(ds, "ImageOrientationPatient", 6) for _, ds in slices]
    ipps = [_floats(ds, "ImagePositionPatient", 3) for _, ds in slices]
    if n > 1 and any(v is None for v in iops + ipps):
        n_bad = sum(1 for a, b in zip(iops, ipps, strict=True) if a is None or b is None)
        raise _fail(label, f"{n_bad} of {n} slices lack ImagePositionPatient/ImageOrientationPatient; cannot sort")
    iop = iops[0] if iops[0] is not None else np.array([1.0, 0, 0, 0, 1.0, 0])
    if n > 1 and any(not np.allclose(o, iop, atol=1e-4) for o in iops):
        raise _fail(label, "slices have different ImageOrientationPatient; not one volume")
    normal = np.cross(iop[:3], iop[3:])
    positions = [v if v is not None else np.zeros(3) for v in ipps]
    proj = np.array([float(np.dot(pos, normal)) for pos in positions])
    order = np.argsort(proj, kind="stable")
    return [slices[i] for i in order], proj[order], iop, positions[order[0]]


def _slice_step(label: Path, ds0: Any, proj: np.ndarray) -> tuple[float, bool]:
    """Slice spacing in mm and whether it is known: from the positions (uniform, no duplicates), or for a lone
    slice from SpacingBetweenSlices / SliceThickness (1 mm, unknown, when missing or not positive)."""
    n = len(proj)
    if n > 1:
        steps = np.diff(proj)
        if np.any(steps <= 1e-6 * max(1.0, abs(proj).max())):
            n_dup = int(np.count_nonzero(steps <= 1e-6 * max(1.0, abs(proj).max())))
            raise _fail(label, f"{n_dup} duplicate slice positions (two acquisitions in one series?)")
        step = float(steps.min())  # missing slices only make gaps larger, so the smallest step is the nominal one
        gaps = steps[np.abs(steps - step) > SLICE_SPACING_RTOL * step]
        if gaps.size:
            n_missing = int(np.sum(np.maximum(np.round(gaps / step) - 1, 1)))
            raise _fail(
                label,
                f"non-uniform slice spacing: {gaps.size} gap(s) (about {n_missing} missing slice(s)) "
                f"in {n} slices with nominal spacing {step:.4g} mm",
            )
        return step, True
    sbs = ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness")
    try:
        step = float(sbs) if sbs is not None else 1.0
    except (TypeError, ValueError):
        step = 1.0
    if not _valid_spacing([step]):
        _warn_unknown_spacing(label, f"slice thickness {step:g} is zero or negative")
        return 1.0, False
    return step, True


def read_dicom_series(folder: PathLike, *, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, ImageMeta]:
    """Read one DICOM series from a folder (one folder = one series) into a volume.

    Every regular file in the folder (not its subfolders) is tried with ``pydicom.dcmread(force=False)``;
    files without the DICOM preamble and non-image objects (DICOMDIR, reports) are skipped. Slices are sorted by
    the projection of ImagePositionPatient on the slice normal (row x column direction of
    ImageOrientationPatient), RescaleSlope/Intercept are applied (CT: Hounsfield units), and the affine is built
    from the geometry and converted from DICOM LPS to RAS.

    Args:
        folder: Folder holding the slices of one series.
        max_voxels: Largest accepted voxel count, checked from the headers before pixel data is decoded.

    Returns:
        ``(array, meta)``: float32 ``[cols, rows, n_slices]`` (i = column, j = row, k = slice, like a NIfTI);
        ``meta.spacing`` is ``(column spacing, row spacing, slice spacing)`` in mm, or empty when a spacing is missing,
        zero or negative in the header (the affine then assumes 1 mm on that axis).

    Raises:
        ReadError: Missing folder, no DICOM images, more than one series, inconsistent shapes or orientation,
            missing slices (gaps in the slice spacing beyond 1 %), duplicate positions, undecodable pixel data.
    """
    d = Path(folder)
    if not d.exists():
        raise _fail(d, "folder not found")
    if not d.is_dir():
        raise _fail(d, "is a file, expected a folder holding one DICOM series")
    files = [f for f in list_folder(d) if f.is_file() and f.stat().st_size > 0]
    return _read_dicom_files(files, d, max_voxels=max_voxels)


def read_dicom_image(path: PathLike, *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, ImageMeta]:
    """Read a single-frame grayscale DICOM image (CR, DX, CT slice...) as a 2D array.

    The modality LUT (RescaleSlope/Intercept) is applied. MONOCHROME1 images (bright = low value, common in CR/DX)
    are inverted with ``max + min - x`` so that bright always means dense and the value range is kept.

    Args:
        path: The DICOM file.
        max_pixels: Largest accepted Rows x Columns, checked from the header before decoding.

    Returns:
        ``(array, meta)``: float32 ``[rows, cols]`` (= ``[H, W]``); ``meta.spacing`` is ``(row, column)`` spacing in
        mm from PixelSpacing or ImagerPixelSpacing (empty if neither is present with positive values);
        ``meta.affine`` is ``None``.

    Raises:
        ReadError: Missing, empty, not DICOM, no pixel data, multi-frame or colour, too large, undecodable.
    """
    from pydicom.errors import InvalidDicomError

    p = _check_file(path)
    try:
        ds = _dcmread(p)
    except InvalidDicomError:
        raise _fail(p, "not a DICOM file (no 'DICM' preamble)") from None
    except Exception as exc:  # keep pydicom's text out of the message (PHI)
        raise _fail(p, f"truncated or corrupt DICOM file ({type(exc).__name__})") from None
    if "PixelData" not in ds:
        raise _fail(p, "DICOM file has no pixel data (truncated, or not an image object)")
    if _n_frames(ds) > 1:
        raise _fail(p, "multi-frame DICOM; expected a single image (use read_dicom_series or convert to NIfTI)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise _fail(p, "colour DICOM image; expected grayscale (one sample per pixel)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows * cols > max_pixels:
        raise _fail(p, f"too large: {rows}x{cols} = {rows * cols} pixels, limit is {max_pixels} (max_pixels)")
    stored_dtype = _stored_dtype(ds)
    arr = _pixels(p, ds)
    _check_finite(p, arr)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    inverted = photometric == "MONOCHROME1"
    if inverted:
        arr = arr.max() + arr.min() - arr
    ps = _dicom_pixel_spacing(p, ds)
    modality = str(ds.get("Modality", "unknown") or "unknown")
    meta = ImageMeta(
        path=os.fspath(path),
        shape=tuple(arr.shape),
        dtype=stored_dtype,
        modality=modality,
        spacing=ps if ps is not None else (),
        extra={"modality": modality, "rows": rows, "cols": cols, "photometric": photometric, "inverted": inverted},
    )
    return arr.astype(np.float32, copy=False), meta


# --------------------------------------------------------------------------------------------------------------
# 2D images
# --------------------------------------------------------------------------------------------------------------

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _webp_size(b: bytes) -> tuple[int, int] | None:
    """(width, height) of a RIFF/WebP file from its first chunk (VP8X canvas, VP8 key frame or VP8L header)."""
    if len(b) < 30 or b[:4] != b"RIFF" or b[8:12] != b"WEBP":
        return None
    chunk = b[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(b[24:27], "little"), 1 + int.from_bytes(b[27:30], "little")
    if chunk == b"VP8 " and b[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and b[20] == 0x2F:
        bits = int.from_bytes(b[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _known_signature(head: bytes) -> bool:
    """True when the first bytes are those of a PNG, JPEG, BMP, TIFF or WebP file (the formats of IMAGE_SUFFIXES)."""
    return (
        head[:8] == b"\x89PNG\r\n\x1a\n"
        or head[:2] in (b"\xff\xd8", b"BM")
        or head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    )


def _header_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP or WebP header without decoding, or ``None`` if not found (TIFF)."""
    b = data[:65536].tobytes()
    if b[:4] == b"RIFF":
        return _webp_size(b)
    if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR" and len(b) >= 24:
        return struct.unpack(">II", b[16:24])
    if b[:2] == b"BM" and len(b) >= 26:
        if struct.unpack("<I", b[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
            return struct.unpack("<HH", b[18:22])
        w, h = struct.unpack("<ii", b[18:26])
        return abs(w), abs(h)
    if b[:2] == b"\xff\xd8":
        buf = data.tobytes() if len(b) == 65536 else b
        i = 2
        while i + 4 <= len(buf):
            if buf[i] != 0xFF:
                i += 1
                continue
            marker = buf[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length field
                i += 2
                continue
            seg_len = struct.unpack(">H", buf[i + 2 : i + 4])[0]
            if marker in _JPEG_SOF and i + 9 <= len(buf):
                h, w = struct.unpack(">HH", buf[i + 5 : i + 9])
                return w, h
            i += 2 + seg_len
        return None
    return None


def read_image_header(path: PathLike, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int] | None:
    """Check an image file without decoding its pixels: readable, a known suffix and file signature, size.

    The quick counterpart of :func:`read_image`: it does not find truncated or corrupt pixel data.

    Args:
        path: The image file.
        max_pixels: Largest accepted width x height.

    Returns:
        ``(width, height)`` from the header (PNG, JPEG, BMP, WebP), or ``None`` where it is not parsed (TIFF).

    Raises:
        ReadError: Missing, empty, unreadable, unsupported suffix, unknown file signature, too many pixels.
    """
    p = _check_file(path)
    if not _has_suffix(p, IMAGE_SUFFIXES):
        raise _fail(p, f"unsupported format '{p.suffix}' (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        with open(p, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise _fail(p, _os_problem(exc, "the file")) from None
    if not _known_signature(head):
        raise _fail(p, "not a readable image (unknown file signature)")
    size = _header_size(np.frombuffer(head, dtype=np.uint8))
    if size is not None and size[0] * size[1] > max_pixels:
        raise _fail(p, f"too large: {size[0]}x{size[1]} = {size[0] * size[1]} pixels, limit is {max_pixels}")
    return size


def jpeg_problem(data: bytes | np.ndarray) -> str | None:
    """libjpeg's complaint about a JPEG stream, or ``None`` when it decodes without one.

    A JPEG whose entropy-coded data is damaged (bytes overwritten in the middle, a cut file with an end marker
    appended) still decodes: libjpeg fills the rest with grey and only *warns* ("Corrupt JPEG data: premature end
    of data segment"), and opencv and Pillow print or drop that warning. simplejpeg runs libjpeg-turbo with
    warnings raised (``strict=True``), so the damage is seen. Decoding to grey keeps this check cheap (about half
    a colour decode) while every component's data is still entropy-decoded.

    Args:
        data: The whole file's bytes.

    Returns:
        libjpeg's message (``"Premature end of JPEG file"``, ``"Corrupt JPEG data: ..."``), or ``None``.
    """
    import simplejpeg

    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    try:
        simplejpeg.decode_jpeg(buf, colorspace="GRAY", strict=True)
    except ValueError as exc:
        return str(exc).strip() or "undecodable JPEG data"
    return None


def read_image(path: PathLike, mode: str = "rgb", *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, ImageMeta]:
    """Read a PNG, JPEG, TIFF, BMP or WebP image with opencv, in an explicit colour order.

    The bit depth is kept in every mode (uint8 stays uint8, 16-bit PNG/TIFF stays uint16); ``meta.dtype`` tells
    which, so callers normalise by 255 or 65535. The pixel limit is checked from the header before decoding for
    PNG (IHDR), JPEG (SOF marker), BMP and WebP; for TIFF it is checked after decoding (opencv's own
    ``OPENCV_IO_MAX_IMAGE_PIXELS`` limit, 2**30 by default, still applies during the decode). A JPEG is first
    decoded by :func:`jpeg_problem`, so a truncated or damaged one is an error rather than a partly grey image.

    Args:
        path: The image file.
        mode: ``"rgb"``: ``[H, W, 3]`` in RGB order; ``"gray"``: ``[H, W]``; ``"unchanged"``: channels as stored,
            ``[H, W]``, ``[H, W, 3]`` RGB or ``[H, W, 4]`` RGBA.
        max_pixels: Largest accepted width x height (decompression-bomb guard; PIL's default).

    Returns:
        ``(array, meta)`` with the array as uint8 or uint16; ``meta.extra`` has ``channels`` and ``color_order``.

    Raises:
        ReadError: Missing, empty, unreadable, unsupported suffix, truncated or corrupt (JPEG data libjpeg warns
            about included), too many pixels.
    """
    import cv2

    if mode not in ("rgb", "gray", "unchanged"):
        raise ValueError(f"mode must be 'rgb', 'gray' or 'unchanged', got {mode!r}")
    p = _check_file(path)
    if not _has_suffix(p, IMAGE_SUFFIXES):
        raise _fail(p, f"unsupported format '{p.suffix}' (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise _fail(p, _os_problem(exc, "the file")) from None
    if not _known_signature(data[:16].tobytes()):
        raise _fail(p, "not a readable image (unknown file signature)")
    size = _header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise _fail(p, f"too large: {size[0]}x{size[1]} = {size[0] * size[1]} pixels, limit is {max_pixels}")
    if data[:2].tobytes() == b"\xff\xd8":
        if b"\xff\xd9" not in data[-4096:].tobytes():
            raise _fail(p, "truncated JPEG (no end-of-image marker)")
        problem = jpeg_problem(data)
        if problem is not None:
            raise _fail(p, f"truncated or corrupt JPEG data (libjpeg: {problem})")
    flags = {
        "rgb": cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH,
        "gray": cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH,
        "unchanged": cv2.IMREAD_UNCHANGED,
    }[mode]
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as exc:
        raise _fail(p, f"cannot decode image ({str(exc).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        raise _fail(p, "truncated or corrupt image (opencv could not decode it)")
    h, w = img.shape[:2]
    if h * w > max_pixels:
        raise _fail(p, f"too large: {w}x{h} = {h * w} pixels, limit is {max_pixels}")
    stored_dtype = str(img.dtype)
    if img.dtype not in (np.uint8, np.uint16) and mode != "unchanged":
        raise _fail(p, f"unsupported pixel type {img.dtype} (expected 8- or 16-bit); use mode='unchanged'")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # opencv decodes to BGR
        order = "RGB"
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
        order = "RGBA"
    else:
        order = "L"
    img = np.ascontiguousarray(img)
    meta = ImageMeta(
        path=os.fspath(path),
        shape=tuple(img.shape),
        dtype=stored_dtype,
        modality="image",
        extra={"channels": 1 if img.ndim == 2 else int(img.shape[2]), "color_order": order},
    )
    return img, meta


# --------------------------------------------------------------------------------------------------------------
# video
# --------------------------------------------------------------------------------------------------------------


def _sample_indices(total: int, n_frames: int) -> np.ndarray:
    """``n_frames`` evenly spaced indices in ``[0, total)``, repeating frames when the video is shorter."""
    return np.linspace(0, total - 1, n_frames).round().astype(np.int64)


def read_video_frames(path: PathLike, n_frames: int, *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, ImageMeta]:
    """Sample ``n_frames`` evenly spaced frames of a video with opencv.

    Frames are read sequentially (``grab`` then ``retrieve`` only for the chosen ones) rather than by seeking,
    because ``CAP_PROP_POS_FRAMES`` seeks are inexact for many codecs. If the container's frame count is missing
    or too high, the real count is found by a first pass and the indices are recomputed.

    Args:
        path: The video file (anything opencv's FFmpeg backend opens).
        n_frames: Number of frames to return; a shorter video repeats frames.
        max_pixels: Largest accepted frame width x height.

    Returns:
        ``(frames, meta)``: uint8 ``[T, H, W, 3]`` in RGB order; ``meta.extra`` has ``fps``, ``frame_count`` and the
        sampled ``indices``.

    Raises:
        ReadError: Missing, empty, unreadable by opencv, no frames, frames too large.
    """
    import cv2

    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    p = _check_file(path)

    def _open() -> Any:
        cap = cv2.VideoCapture(os.fspath(p))
        if not cap.isOpened():
            cap.release()
            raise _fail(p, "cannot open video (unsupported codec, truncated or not a video)")
        return cap

    cap = _open()
    try:
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w * h > max_pixels:
            raise _fail(p, f"too large: frames of {w}x{h} = {w * h} pixels, limit is {max_pixels}")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = _read_indices(cap, _sample_indices(total, n_frames)) if total > 0 else None
    finally:
        cap.release()
    if frames is None:  # count unknown or overstated: count by grabbing, then read again
        cap = _open()
        try:
            total = 0
            while cap.grab():
                total += 1
        finally:
            cap.release()
        if total == 0:
            raise _fail(p, "no decodable frames (truncated or corrupt video)")
        cap = _open()
        try:
            frames = _read_indices(cap, _sample_indices(total, n_frames))
        finally:
            cap.release()
        if frames is None:
            raise _fail(p, "frames could not be decoded (truncated or corrupt video)")
    indices = _sample_indices(total, n_frames)
    out = np.stack([cv2.cvtColor(fr, cv2.COLOR_BGR2RGB) for fr in frames])
    meta = ImageMeta(
        path=os.fspath(path),
        shape=tuple(out.shape),
        dtype="uint8",
        modality="video",
        extra={"fps": fps, "frame_count": total, "indices": indices.tolist(), "color_order": "RGB"},
    )
    return out, meta


def _read_indices(cap: Any, indices: np.ndarray) -> list[np.ndarray] | None:
    """Frames at sorted ``indices`` (may repeat) by sequential grab/retrieve; ``None`` if the video ends early."""
    wanted = {int(i): int(c) for i, c in zip(*np.unique(indices, return_counts=True), strict=True)}
    last = int(indices.max())
    frames: list[np.ndarray] = []
    for i in range(last + 1):
        if not cap.grab():
            return None
        if i in wanted:
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                return None
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, axis=2)
            frames.extend([frame] * wanted[i])
    return frames


# --------------------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------------------


def read_volume(
    path: PathLike, *, ndim: int | None = 3, max_voxels: int = MAX_VOXELS, check_finite: bool = True
) -> tuple[np.ndarray, ImageMeta]:
    """Read a volume from whatever the path is: a NIfTI file, a DICOM series folder, or one DICOM file.

    Args:
        path: ``.nii``/``.nii.gz`` file, folder of DICOM slices, or a ``.dcm`` (or extension-less DICOM) file.
        ndim: Required dimensionality for NIfTI files (DICOM gives 3D volumes).
        max_voxels: Voxel limit (decompression-bomb guard).
        check_finite: Reject NaN/Inf voxels (NIfTI).

    Returns:
        ``(array, meta)`` as :func:`read_nifti` / :func:`read_dicom_series` (a single DICOM file is a volume with
        one slice).

    Raises:
        ReadError: Unsupported format, or anything the chosen reader raises.
    """
    p = Path(path)
    if not p.exists():
        raise _fail(p, "file or folder not found" if not p.is_symlink() else _missing(p))
    if p.is_dir():
        return read_dicom_series(p, max_voxels=max_voxels)
    if _has_suffix(p, NIFTI_SUFFIXES):
        return read_nifti(p, ndim=ndim, max_voxels=max_voxels, check_finite=check_finite)
    if _has_suffix(p, DICOM_SUFFIXES) or (p.suffix == "" and is_dicom_file(p)):
        _check_file(p)
        from pydicom.errors import InvalidDicomError

        try:
            _dcmread(p, stop_before_pixels=True)
        except InvalidDicomError:
            raise _fail(p, "not a DICOM file (no 'DICM' preamble)") from None
        except Exception as exc:  # keep pydicom's text out of the message (PHI)
            raise _fail(p, f"truncated or corrupt DICOM file ({type(exc).__name__})") from None
        return _read_dicom_files([p], p, max_voxels=max_voxels)
    suffix = "".join(p.suffixes[-2:]) if p.name.lower().endswith(".gz") else p.suffix
    raise _fail(
        p, f"unsupported format '{suffix or p.name}' (expected .nii, .nii.gz, .dcm or a folder of DICOM slices)"
    )


# --------------------------------------------------------------------------------------------------------------
# JSON side files
# --------------------------------------------------------------------------------------------------------------


def read_json_object(path: PathLike) -> dict[str, Any]:
    """Read a JSON file whose top level must be an object (``dataset.json``, run specs).

    Args:
        path: The JSON file.

    Returns:
        The parsed object.

    Raises:
        ReadError: Missing, unreadable (as :func:`check_file`), not UTF-8, not valid JSON (with the line and
            column), or a top level that is not an object (a list, a number...).
    """
    import json

    p = _check_file(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _fail(p, "not valid JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise _fail(p, _os_problem(exc, "the file")) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(p, f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise _fail(p, "not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(doc), "a number")
        raise _fail(p, f"top level must be a JSON object {{...}}, got {kind}")
    return doc
