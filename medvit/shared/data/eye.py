"""Reading ophthalmic images: colour fundus photographs (cropped to their circular field of view) and OCT volumes.

Fundus photographs (JPEG/PNG/TIFF, any size) show the retina in a bright disc on a dark surround; cameras differ in
where the disc sits and many (EyePACS, for one) cut its top and bottom. :func:`find_fov` thresholds the dark surround,
keeps the largest bright component and fits a circle (least squares, Kasa's algebraic fit, with one pass that drops
outlying boundary points) to the component's boundary *except where it runs along the image border*, so a field
cut by the edges still gets its true centre and radius. :func:`crop_fov` cuts the square around that circle (padding
with black where the circle leaves the image) and blacks out everything outside it.

OCT volumes are returned as ``[rows, columns, slices]``:
    * rows: axial depth along an A-scan, row 0 at the top (vitreous side) of a B-scan;
    * columns: lateral position along a B-scan;
    * slices: B-scan index (the slow scanning axis).
``OctMeta.spacing`` gives mm per axis in that order, or is empty when unknown. Sources:
    * NIfTI (nibabel, through :func:`medvit.shared.data.io.read_nifti`) and ``.npy`` (``allow_pickle=False``): the
      array axes are taken as ``[rows, columns, slices]`` unless ``axes=`` says which stored axis holds each;
    * a folder of B-scan images (one folder = one volume), ordered by the number in each file name, numerically
      (``1.png, 2.png, 10.png``; ``bscan_002.bmp``), not by name;
    * vendor files through optional packages imported only when such a file is read: Heidelberg ``.vol`` and
      ``.e2e`` (eyepy), Topcon ``.fds`` and Zeiss Cirrus ``.img`` (oct-converter). A missing package is a
      ``ReadError`` naming ``pip install 'medvit[eye]'``. Vendor headers hold patient names and IDs: only pixels
      and spacing are taken, and the packages' printed output is discarded. Known limit: oct-converter 0.7.0's
      ``.fds`` reader calls ``np.fromstring`` in binary mode, which NumPy 2.3 removed, so ``.fds`` files fail (a
      ``ReadError`` naming the file) under NumPy >= 2.3 until that is fixed upstream; ``.img`` reading works.

Intensities: float32 output is in ``[0, 1]``: integer data divided by its type's full scale (255, 65535), float data
kept when already in ``[0, 1]`` and min-max scaled otherwise. :func:`resample_volume` brings anisotropic volumes
(OCT voxels are typically ~4 um axially and 10-120 um between B-scans) to a target voxel size or shape.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from medvit.shared.data.io import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    MAX_VOXELS,
    NIFTI_SUFFIXES,
    ReadError,
    check_file,
    list_folder,
    read_image,
    read_nifti,
)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

OCT_AXES: tuple[str, str, str] = ("rows (axial depth)", "columns (lateral)", "slices (B-scan index)")
"""Axis order of every OCT volume this module returns."""

VENDOR_FORMATS: dict[str, tuple[str, str, str]] = {
    ".vol": ("eyepy", "eyepy", "Heidelberg Spectralis .vol"),
    ".e2e": ("eyepy", "eyepy", "Heidelberg .e2e"),
    ".fds": ("oct_converter.readers", "oct-converter", "Topcon .fds"),
    ".img": ("oct_converter.readers", "oct-converter", "Zeiss Cirrus .img"),
}
"""suffix -> (module imported lazily, package to install, what the file is)."""

OCT_FILE_SUFFIXES: tuple[str, ...] = (*NIFTI_SUFFIXES, ".npy", *VENDOR_FORMATS)
"""Suffixes of files :func:`read_oct` reads as one volume (a folder of B-scans is the other kind of source)."""

INSTALL_HINT = "pip install 'medvit[eye]'"

_NUMBER = re.compile(r"\d+")


def _fail(path: PathLike, problem: str) -> ReadError:
    return ReadError(f"{os.fspath(path)}: {problem}")


# --------------------------------------------------------------------------------------------------------------
# fundus


@dataclass(frozen=True)
class FieldOfView:
    """The circular field of view of a fundus photograph, in pixels of the image it was found in.

    Attributes:
        cx: Centre column (x).
        cy: Centre row (y).
        radius: Radius.
        found: False when the image has no dark surround (already cropped, or not a fundus photograph): the circle
            then circumscribes the whole image and nothing is masked.
        clipped: The circle reaches beyond the image (the camera cut the field at the edges).
    """

    cx: float
    cy: float
    radius: float
    found: bool
    clipped: bool


@dataclass(frozen=True)
class FundusMeta:
    """What :func:`read_fundus` tells besides the pixels.

    Attributes:
        path: The file read.
        original_shape: ``(H, W)`` of the file.
        shape: Shape of the returned array.
        stored_dtype: ``"uint8"`` or ``"uint16"``.
        fov: The field of view found in the original image (``None`` when ``crop=False``).
    """

    path: str
    original_shape: tuple[int, int]
    shape: tuple[int, ...]
    stored_dtype: str
    fov: FieldOfView | None


def _whole_image(h: int, w: int) -> FieldOfView:
    return FieldOfView((w - 1) / 2.0, (h - 1) / 2.0, math.hypot(w, h) / 2.0, found=False, clipped=False)


def _fit_circle(xy: np.ndarray) -> tuple[float, float, float]:
    """Least-squares circle through points ``[N, 2]`` (x, y): Kasa's fit, solving x^2 + y^2 = 2ax + 2by + c."""
    x, y = xy[:, 0], xy[:, 1]
    a = np.stack([2 * x, 2 * y, np.ones_like(x)], axis=1)
    sol, *_ = np.linalg.lstsq(a, x * x + y * y, rcond=None)
    cx, cy, c = (float(v) for v in sol)
    return cx, cy, math.sqrt(max(c + cx * cx + cy * cy, 0.0))


def _field_mask(gray: np.ndarray, threshold: float | None) -> np.ndarray:
    """Largest bright connected component (uint8 0/1) of an 8-bit gray image, small specks opened away."""
    import cv2

    t = threshold if threshold is not None else max(8.0, 0.1 * float(np.percentile(gray, 99)))
    mask = (gray > t).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros_like(mask)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == biggest).astype(np.uint8)


def find_fov(image: np.ndarray, *, threshold: float | None = None, work_size: int = 512) -> FieldOfView:
    """Find the circular field of view of a fundus photograph.

    Args:
        image: ``[H, W, 3]`` RGB or ``[H, W]``, uint8 or uint16.
        threshold: Brightness (0..255 scale, on the brightest channel) separating the field from the surround;
            default ``max(8, 0.1 * 99th percentile)``.
        work_size: The search runs on a copy whose longer side is at most this (results are in full-size pixels).

    Returns:
        The circle; ``found=False`` when there is no dark surround to fit it to.
    """
    import cv2

    h, w = image.shape[:2]
    img = image if image.dtype == np.uint8 else (image.astype(np.float32) / 257.0).astype(np.uint8)
    gray = img.max(axis=2) if img.ndim == 3 else img
    scale = min(1.0, work_size / max(h, w))
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    gh, gw = gray.shape
    mask = _field_mask(gray, threshold)
    if mask.sum() > 0.97 * mask.size or mask.sum() < 0.05 * mask.size:
        return _whole_image(h, w)  # no dark surround (or no bright field): nothing to fit
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = max(contours, key=len)[:, 0, :].astype(np.float64)
    inside = (pts[:, 0] > 1) & (pts[:, 0] < gw - 2) & (pts[:, 1] > 1) & (pts[:, 1] < gh - 2)
    pts = pts[inside]  # points on the image border belong to the cut, not to the circle
    if len(pts) < 20:
        return _whole_image(h, w)
    cx, cy, r = _fit_circle(pts)
    resid = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
    keep = resid <= max(2.0, 3.0 * float(np.median(resid)))
    if keep.sum() >= 20:
        cx, cy, r = _fit_circle(pts[keep])
    if r < 0.2 * min(gh, gw):
        return _whole_image(h, w)
    # pixel centres: coordinate u at working scale is (u + 0.5) / scale - 0.5 at full scale
    cx, cy, r = (cx + 0.5) / scale - 0.5, (cy + 0.5) / scale - 0.5, r / scale
    clipped = cx - r < -1 or cy - r < -1 or cx + r > w or cy + r > h
    return FieldOfView(cx, cy, r, found=True, clipped=clipped)


def crop_fov(image: np.ndarray, fov: FieldOfView, *, mask_outside: bool = True, margin: float = 0.0) -> np.ndarray:
    """Cut the square around the field of view, padding with zeros where it leaves the image.

    Args:
        image: ``[H, W, C]`` or ``[H, W]``.
        fov: From :func:`find_fov`.
        mask_outside: Set pixels outside the circle to zero (a field that was not found is never masked).
        margin: Extra border as a fraction of the radius.

    Returns:
        ``[S, S, C]`` (or ``[S, S]``) with ``S = round(2 * radius * (1 + margin))``, the circle's centre at its centre.
    """
    h, w = image.shape[:2]
    r = fov.radius * (1.0 + margin)
    if not fov.found:  # the whole image, padded to a square
        side = max(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
    else:
        side = max(1, round(2 * r))
        x0, y0 = round(fov.cx - (side - 1) / 2.0), round(fov.cy - (side - 1) / 2.0)
    out = np.zeros((side, side, *image.shape[2:]), dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if mask_outside and fov.found:
        yy, xx = np.ogrid[0:side, 0:side]
        outside = (xx + x0 - fov.cx) ** 2 + (yy + y0 - fov.cy) ** 2 > r * r
        out[outside] = 0
    return out


def read_fundus(
    path: PathLike,
    *,
    crop: bool = True,
    mask_outside: bool = True,
    size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, FundusMeta]:
    """Read a colour fundus photograph, cropped to the square around its field of view.

    Args:
        path: JPEG, PNG, TIFF, BMP or WebP file.
        crop: Find the field of view and crop to it (:func:`find_fov`, :func:`crop_fov`).
        mask_outside: Black out pixels outside the circle.
        size: Resize the result to ``size x size`` (area interpolation when shrinking, bilinear when enlarging).
        max_pixels: Largest accepted width x height.

    Returns:
        ``(image, meta)``: RGB ``[S, S, 3]`` (``[H, W, 3]`` when ``crop=False`` and no ``size``), uint8 or uint16 as
        stored.

    Raises:
        ReadError: As :func:`medvit.shared.data.io.read_image`.
    """
    import cv2

    img, meta = read_image(path, mode="rgb", max_pixels=max_pixels)
    h, w = img.shape[:2]
    fov = None
    if crop:
        fov = find_fov(img)
        img = crop_fov(img, fov, mask_outside=mask_outside)
    if size is not None and img.shape[:2] != (size, size):
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    out_meta = FundusMeta(os.fspath(path), (h, w), tuple(img.shape), meta.dtype, fov)
    return np.ascontiguousarray(img), out_meta


# --------------------------------------------------------------------------------------------------------------
# OCT volumes


@dataclass(frozen=True)
class OctMeta:
    """What :func:`read_oct` tells besides the voxels (never the patient data vendor files carry).

    Attributes:
        path: The file or B-scan folder read.
        shape: ``(rows, columns, slices)`` of the returned volume.
        spacing: mm per axis in that order; empty when unknown.
        source: ``"nifti"``, ``"npy"``, ``"bscan-folder"``, ``"heidelberg-vol"``, ``"heidelberg-e2e"``,
            ``"topcon-fds"`` or ``"zeiss-img"``.
        stored_dtype: Voxel type as stored.
        n_volumes: Volumes in the file (an ``.e2e`` may hold several; the first is read).
    """

    path: str
    shape: tuple[int, int, int]
    spacing: tuple[float, ...]
    source: str
    stored_dtype: str
    n_volumes: int = 1


def bscan_number(path: PathLike) -> int | None:
    """The B-scan number of a file: the last run of digits in its name without the suffix, or ``None``."""
    stem = Path(path).stem
    found = _NUMBER.findall(stem)
    return int(found[-1]) if found else None


def list_bscans(folder: PathLike) -> list[Path]:
    """The B-scan images of one volume folder, ordered by the number in their names (``1, 2, 10``).

    Args:
        folder: A folder whose image files (:data:`~medvit.shared.data.io.IMAGE_SUFFIXES`) are the B-scans.

    Returns:
        The images in slice order (other files are ignored).

    Raises:
        ReadError: No images, an image without a number in its name, or two images with the same number.
    """
    images = [f for f in list_folder(folder) if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise _fail(folder, f"no B-scan images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    numbered: dict[int, Path] = {}
    for f in images:
        k = bscan_number(f)
        if k is None:
            raise _fail(f, "B-scan file name has no number to order it by (expected e.g. 1.png, bscan_002.png)")
        if k in numbered:
            raise _fail(folder, f"two B-scans numbered {k}: {numbered[k].name} and {f.name}")
        numbered[k] = f
    return [numbered[k] for k in sorted(numbered)]


def _to_unit(arr: np.ndarray, stored: np.dtype) -> np.ndarray:
    """``[0, 1]`` float32: 8/16-bit unsigned data by its type's full scale, floats kept if in range, else min-max."""
    if stored.kind == "u" and stored.itemsize <= 2:
        return np.clip(arr.astype(np.float32) / np.float32(np.iinfo(stored).max), 0.0, 1.0)
    a = arr.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if stored.kind in "fb" and lo >= 0.0 and hi <= 1.0:
        return a
    return (a - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(a)


def _permute(path: PathLike, arr: np.ndarray, axes: Sequence[int] | None) -> np.ndarray:
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise _fail(path, f"wrong dimensions: expected a 3D volume, got shape {tuple(arr.shape)}")
    if axes is None:
        return arr
    if sorted(axes) != [0, 1, 2]:
        raise ValueError(f"axes must be a permutation of (0, 1, 2), got {tuple(axes)}")
    return np.transpose(arr, tuple(axes))


def read_oct(
    path: PathLike,
    *,
    axes: Sequence[int] | None = None,
    dtype: str = "float32",
    max_voxels: int = MAX_VOXELS,
    zeiss_shape: tuple[int, int] = (1024, 512),
) -> tuple[np.ndarray, OctMeta]:
    """Read one OCT volume as ``[rows, columns, slices]`` (see the module docstring for the sources).

    Args:
        path: NIfTI or ``.npy`` file, folder of B-scan images, or a vendor file (``.vol``, ``.e2e``, ``.fds``,
            ``.img``).
        axes: NIfTI/``.npy`` only: the stored axes holding rows, columns and slices (default ``(0, 1, 2)``).
        dtype: ``"float32"`` (``[0, 1]``), ``"uint8"`` (x255, rounded; uint8 sources unchanged).
        max_voxels: Largest accepted voxel count.
        zeiss_shape: Zeiss ``.img`` files carry no geometry: ``(rows, columns)`` of one B-scan (Cirrus macular cube
            512x128: ``(1024, 512)``; 200x200: ``(1024, 200)``).

    Returns:
        ``(volume, meta)``.

    Raises:
        ReadError: Missing or unreadable source, wrong dimensions, unsupported format, B-scans of different sizes,
            a vendor file whose package is not installed (naming ``pip install 'medvit[eye]'``) or cannot parse it.
    """
    if dtype not in ("float32", "uint8"):
        raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
    p = Path(path)
    if p.is_dir():
        vol, meta = _read_bscan_folder(p, max_voxels)
    else:
        check_file(p)
        name = p.name.lower()
        if name.endswith(NIFTI_SUFFIXES):
            vol, meta = _read_nifti_oct(p, axes, max_voxels)
        elif name.endswith(".npy"):
            vol, meta = _read_npy(p, axes, max_voxels)
        elif p.suffix.lower() in VENDOR_FORMATS:
            vol, meta = _read_vendor(p, zeiss_shape)
        else:
            raise _fail(p, f"unsupported OCT format (expected {', '.join(OCT_FILE_SUFFIXES)} or a B-scan folder)")
    stored = np.dtype(meta.stored_dtype)
    if dtype == "uint8" and vol.dtype == np.uint8:
        return np.ascontiguousarray(vol), meta
    unit = _to_unit(vol, stored)
    out = unit if dtype == "float32" else np.rint(np.clip(unit, 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(out), meta


def _check_voxels(path: PathLike, shape: Sequence[int], max_voxels: int) -> None:
    if math.prod(int(s) for s in shape) > max_voxels:
        raise _fail(path, f"too large: shape {tuple(shape)}, limit is {max_voxels} voxels (max_voxels)")


def _read_nifti_oct(p: Path, axes: Sequence[int] | None, max_voxels: int) -> tuple[np.ndarray, OctMeta]:
    arr, nmeta = read_nifti(p, ndim=None, max_voxels=max_voxels)
    vol = _permute(p, arr, axes)
    spacing = tuple(nmeta.spacing[i] for i in (axes or (0, 1, 2))) if len(nmeta.spacing) == 3 else ()
    shape = (int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2]))
    return vol, OctMeta(os.fspath(p), shape, spacing, "nifti", nmeta.dtype)


def _npy_header(p: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, without reading the data."""
    from numpy.lib import format as npy_format

    try:
        with open(p, "rb") as fh:
            version = npy_format.read_magic(fh)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise _fail(p, f"not a readable .npy file ({type(exc).__name__})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _read_npy(p: Path, axes: Sequence[int] | None, max_voxels: int) -> tuple[np.ndarray, OctMeta]:
    shape, dtype = _npy_header(p)
    if dtype.hasobject:
        raise _fail(p, "an object array (loading it needs pickle, which medvit never uses)")
    _check_voxels(p, shape, max_voxels)
    try:
        arr = np.load(p, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise _fail(p, f"truncated or corrupt .npy file ({type(exc).__name__})") from None
    _check_voxels(p, arr.shape, max_voxels)
    if arr.dtype.kind not in "uifb":
        raise _fail(p, f"unsupported voxel type {arr.dtype} in .npy file")
    vol = np.asarray(_permute(p, arr, axes))
    if vol.dtype.kind == "f" and not np.isfinite(vol).all():
        raise _fail(p, "contains NaN or Inf voxels")
    shape = (int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2]))
    return vol, OctMeta(os.fspath(p), shape, (), "npy", arr.dtype.name)


def _read_bscan_folder(folder: Path, max_voxels: int) -> tuple[np.ndarray, OctMeta]:
    files = list_bscans(folder)
    first, m0 = read_image(files[0], mode="gray")
    _check_voxels(folder, (*first.shape, len(files)), max_voxels)
    vol = np.empty((*first.shape, len(files)), dtype=first.dtype)
    vol[:, :, 0] = first
    for k, f in enumerate(files[1:], start=1):
        img, _ = read_image(f, mode="gray")
        if img.shape != first.shape or img.dtype != first.dtype:
            raise _fail(
                f, f"B-scan of shape {img.shape} {img.dtype}, the folder's first is {first.shape} {first.dtype}"
            )
        vol[:, :, k] = img
    shape = (int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2]))
    return vol, OctMeta(os.fspath(folder), shape, (), "bscan-folder", m0.dtype)


# --------------------------------------------------------------------------------------------------------------
# vendor files


def import_optional(module: str, package: str, what: str, path: PathLike) -> ModuleType:
    """Import an optional reader package, or raise a ``ReadError`` that names the file and how to install it.

    Args:
        module: Module to import (``"eyepy"``).
        package: Distribution that provides it (``"eyepy"``).
        what: The kind of file that needs it (``"Heidelberg .vol"``).
        path: The file being read.

    Raises:
        ReadError: The package is not installed (or fails to import).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = INSTALL_HINT if package != "oct-converter" else f"{INSTALL_HINT} && pip install --no-deps oct-converter"
        raise _fail(
            path, f"reading {what} files needs the optional package {package} ({type(exc).__name__}): {hint}"
        ) from None


def _read_vendor(p: Path, zeiss_shape: tuple[int, int]) -> tuple[np.ndarray, OctMeta]:
    suffix = p.suffix.lower()
    module_name, package, what = VENDOR_FORMATS[suffix]
    module = import_optional(module_name, package, what, p)
    try:
        # vendor readers print chunk lists and header fields (names, IDs); nothing of it may reach the user's log
        with contextlib.redirect_stdout(io.StringIO()):
            bscans, spacing, n_volumes = _vendor_volume(module, suffix, p, zeiss_shape)
    except ReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - third-party parsers raise anything; their text may hold PHI
        raise _fail(p, f"{package} could not read this {what} file ({type(exc).__name__})") from None
    vol = np.ascontiguousarray(np.moveaxis(bscans, 0, 2))  # [n, rows, cols] -> [rows, cols, n]
    source = {".vol": "heidelberg-vol", ".e2e": "heidelberg-e2e", ".fds": "topcon-fds", ".img": "zeiss-img"}[suffix]
    ok = len(spacing) == 3 and all(math.isfinite(s) and s > 0 for s in spacing)
    shape = (int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2]))
    return vol, OctMeta(os.fspath(p), shape, tuple(spacing) if ok else (), source, str(bscans.dtype), n_volumes)


def _vendor_volume(
    module: ModuleType, suffix: str, p: Path, zeiss_shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[float, ...], int]:
    """``(B-scans [n, rows, cols], spacing (rows, cols, slices) mm, volumes in the file)`` from a vendor reader."""
    if suffix in (".vol", ".e2e"):
        ev = module.import_heyex_vol(p) if suffix == ".vol" else module.import_heyex_e2e(p)
        data = np.asarray(ev.data)
        return data, (float(ev.scale_y), float(ev.scale_x), float(ev.scale_z)), 1
    if suffix == ".fds":
        oct_volume: Any = module.FDS(p).read_oct_volume()
        ps = oct_volume.pixel_spacing  # oct-converter: [width, slice thickness, axial] in mm
        spacing = (float(ps[2]), float(ps[0]), float(ps[1])) if ps else ()
        return np.stack([np.asarray(b) for b in oct_volume.volume]), spacing, 1
    rows, cols = zeiss_shape
    size = p.stat().st_size
    if size % (rows * cols):
        raise _fail(p, f"{size} bytes is not a whole number of {rows}x{cols} B-scans (set zeiss_shape)")
    oct_volume = module.IMG(p).read_oct_volume(rows=rows, cols=cols)
    return np.stack([np.asarray(b) for b in oct_volume.volume]), (), 1


# --------------------------------------------------------------------------------------------------------------
# resampling


def _target_shape(
    shape: Sequence[int],
    spacing: Sequence[float],
    target_spacing: Sequence[float] | float | None,
    target_shape: Sequence[int] | None,
) -> tuple[int, int, int]:
    if (target_spacing is None) == (target_shape is None):
        raise ValueError("give exactly one of target_spacing and target_shape")
    if target_shape is not None:
        if len(target_shape) != 3 or any(int(s) < 1 for s in target_shape):
            raise ValueError(f"target_shape must be 3 positive sizes, got {tuple(target_shape)}")
        return (int(target_shape[0]), int(target_shape[1]), int(target_shape[2]))
    ts = [float(target_spacing)] * 3 if isinstance(target_spacing, int | float) else [float(t) for t in target_spacing]
    if len(ts) != 3 or any(t <= 0 for t in ts):
        raise ValueError(f"target_spacing must be 3 positive values (mm), got {target_spacing}")
    if len(spacing) != 3:
        raise ReadError("cannot resample to a voxel size: the volume's spacing is unknown; give target_shape")
    n = [max(1, round(int(s) * float(sp) / t)) for s, sp, t in zip(shape, spacing, ts, strict=True)]
    return (n[0], n[1], n[2])


def resample_volume(
    volume: np.ndarray,
    spacing: Sequence[float] = (),
    *,
    target_spacing: Sequence[float] | float | None = None,
    target_shape: Sequence[int] | None = None,
    mode: str = "trilinear",
    antialias: bool = True,
) -> tuple[np.ndarray, tuple[float, ...]]:
    """Resample a ``[rows, columns, slices]`` volume to a voxel size or a shape, keeping its physical extent.

    Trilinear (or nearest) interpolation by ``scipy.ndimage.zoom`` in grid mode, i.e. torch's ``align_corners=False``:
    the volume's outer faces stay where they were, so the new spacing is ``spacing * old_size / new_size`` on every
    axis, and samples beyond the edge voxels' centres repeat the edge. Axes shrunk by a factor ``f >= 2`` are first
    smoothed with a Gaussian of sigma ``(f - 1) / 2`` voxels (as scikit-image's ``resize(anti_aliasing=True)``),
    which keeps OCT speckle from aliasing into stripes.

    Args:
        volume: ``[D0, D1, D2]`` array (any real dtype).
        spacing: mm per axis; needed with ``target_spacing``, optional with ``target_shape`` (then the returned
            spacing is empty when it is unknown).
        target_spacing: Voxel size in mm, one value or three.
        target_shape: Output shape.
        mode: ``"trilinear"`` or ``"nearest"`` (labels).
        antialias: Smooth shrunk axes first (ignored for ``"nearest"``).

    Returns:
        ``(volume float32 [N0, N1, N2], spacing)``.

    Raises:
        ValueError: Not exactly one target, bad sizes, unknown mode.
        ReadError: ``target_spacing`` with an unknown spacing.
    """
    from scipy.ndimage import zoom

    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    if mode not in ("trilinear", "nearest"):
        raise ValueError(f"mode must be 'trilinear' or 'nearest', got {mode!r}")
    new = _target_shape(volume.shape, spacing, target_spacing, target_shape)
    vol = np.asarray(volume, dtype=np.float32)
    if mode == "trilinear" and antialias:
        vol = _smooth_shrunk_axes(vol, new)
    if tuple(vol.shape) == new:
        out = np.array(vol, dtype=np.float32, copy=True)
    else:
        # grid_mode: voxels are cells whose outer faces map onto each other (torch's align_corners=False; the same
        # values as F.interpolate(mode="trilinear" / "nearest-exact") up to float rounding)
        factors = [n / o for n, o in zip(new, vol.shape, strict=True)]
        out = zoom(vol, factors, order=1 if mode == "trilinear" else 0, grid_mode=True, mode="nearest")
    new_spacing = (
        tuple(float(sp) * int(s) / n for sp, s, n in zip(spacing, volume.shape, new, strict=True))
        if len(spacing) == 3
        else ()
    )
    return np.ascontiguousarray(out, dtype=np.float32), new_spacing


def _smooth_shrunk_axes(vol: np.ndarray, new: Sequence[int]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    for axis, (old, n) in enumerate(zip(vol.shape, new, strict=True)):
        factor = old / n
        if factor >= 2.0:
            vol = gaussian_filter1d(vol, sigma=(factor - 1.0) / 2.0, axis=axis, mode="nearest")
    return vol
