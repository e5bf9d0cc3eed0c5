"""Inputs of ``cell predict``: plain images and whole-slide images, read region by region at a working magnification.

One class, :class:`ImageSource`, serves both kinds through a small backend with OpenSlide's level model (level
sizes, downsamples, a region reader):

- **plain images** (PNG, JPEG, BMP, WebP, and TIFFs that are neither tiled nor pyramidal nor huge) are decoded
  whole by :func:`medvit.shared.data.io.read_image` (opencv; a truncated or corrupt file is a ``DataError`` naming
  it), made RGB uint8 (alpha dropped, grey expanded, 16-bit scaled to 8-bit) and served from memory;
- **whole-slide images** (``.svs .ndpi .scn .bif .tif .tiff ...``) are read through ``tiffslide`` (tifffile-based,
  pure Python) for the TIFF family and ``openslide`` (openslide-python with the openslide-bin library) for the rest
  (``.mrxs .vms .vmu .svslide``) or when tiffslide cannot open a file. Both are imported only when a slide is
  opened; a missing one is an error that names ``pip install 'medvit[wsi]'``.

Working grid. Nuclei models are trained at one magnification (PanNuke at 40x, 0.25 um/px; CoNIC at 20x,
0.5 um/px), so every input is read on a grid of the target resolution: ``target_mpp = 10 / target_mag``. The
input's level-0 microns per pixel come from, in order: the ``mpp`` argument, the slide's ``openslide.mpp-x`` /
``tiffslide.mpp-x`` property, a plain TIFF's resolution tags, the objective power (``mpp = 10 / power``). Values
outside :data:`SANE_MPP` (a TIFF written at 72 dpi says 352.8 um/px) are ignored with a warning. An input whose
resolution stays unknown is taken to be at the target magnification (a warning for slides; the normal case for
PNG tiles). A ratio within :data:`SCALE_TOLERANCE` of 1 is read without resampling (scanners write 0.2520 or
0.2527 for 40x).

``scale`` = level-0 pixels per working pixel. A region of the working grid is read from the coarsest pyramid level
that is at least as fine as the working grid, then resampled: ``cv2.INTER_AREA`` when shrinking, bilinear when
enlarging, with the sub-pixel phase of the region kept exactly (working pixel ``j`` has its centre at level-0
coordinate ``(j + 0.5) * scale``), so tiles read separately agree where they overlap. Pixels outside the image
are white (255), like glass. :func:`read_tiles` reads many tiles a row block at a time in background threads
(each stored tile decoded once instead of about twice).

Tissue detection (:func:`tissue_mask`) follows the usual slide preprocessing (CellViT's patch extraction): Otsu
on the saturation of a low-resolution thumbnail, a morphological closing and opening, holes filled, small
fragments removed; plain images count as all tissue unless ``detect=True``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medvit.shared.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "INPUT_SUFFIXES",
    "SLIDE_SUFFIXES",
    "TARGET_MPP",
    "ImageSource",
    "TissueMask",
    "open_source",
    "read_tiles",
    "tissue_mask",
]

TARGET_MPP: dict[int, float] = {40: 0.25, 20: 0.5}
"""Working microns per pixel of each supported target magnification."""

SANE_MPP: tuple[float, float] = (0.05, 5.0)
"""Level-0 microns per pixel accepted from metadata (outside: the header does not know, e.g. 72 dpi tags)."""

SCALE_TOLERANCE = 0.03
"""A level-0/target resolution ratio within this relative distance of 1 is read without resampling."""

SLIDE_SUFFIXES: tuple[str, ...] = (
    ".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff", ".mrxs", ".vms", ".vmu", ".svslide",
)  # fmt: skip
"""Suffixes read as whole-slide images (``.tif``/``.tiff`` only when tiled, pyramidal or huge)."""

TIFFSLIDE_SUFFIXES: tuple[str, ...] = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff")
"""Slide suffixes tried with tiffslide first (TIFF containers); the others go to openslide."""

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
"""Plain image suffixes (those of :data:`medvit.shared.data.io.IMAGE_SUFFIXES`)."""

INPUT_SUFFIXES: tuple[str, ...] = tuple(dict.fromkeys(IMAGE_SUFFIXES + SLIDE_SUFFIXES))
"""Every suffix ``cell predict`` accepts (for folder scans)."""

PLAIN_TIFF_MAX_PIXELS = 2**26
"""A strip (untiled) single-level TIFF larger than this (8192^2) is read region by region like a slide."""

MAX_PLAIN_PIXELS = 2**30
"""Largest plain image decoded whole (opencv's own limit); larger ones must be tiled TIFFs or slides."""

WSI_HINT = "pip install 'medvit[wsi]'"

_STRIP_BYTES = 256 * 2**20  # level pixels decoded at once while building a thumbnail


# ----------------------------------------------------------------------------------------------- backends


class _Backend(Protocol):
    """OpenSlide's level model: what :class:`ImageSource` needs from a reader."""

    name: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 ``[h, w, 3]`` of a rectangle inside level ``level`` (level pixel coordinates)."""

    def close(self) -> None: ...


def to_rgb8(arr: np.ndarray, what: str = "image") -> np.ndarray:
    """Any 8/16-bit grey, grey+alpha, RGB or RGBA array as RGB uint8 ``[H, W, 3]`` (alpha dropped).

    Args:
        arr: ``[H, W]`` or ``[H, W, C]`` with C in 1..4, uint8 or uint16.
        what: Name used in the error message.

    Returns:
        A C-contiguous RGB uint8 array; 16-bit values are mapped by ``round(v * 255 / 65535)``.
    """
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"{what}: unsupported pixel layout {arr.shape}")
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise DataError(f"{what}: unsupported pixel type {arr.dtype} (expected 8- or 16-bit)")
    c = arr.shape[2]
    if c in (1, 2):
        arr = np.repeat(arr[..., :1], 3, axis=2)
    elif c == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


class _ArrayBackend:
    """A decoded plain image: one level held in memory."""

    name = "array"

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb
        self.level_dimensions = ((int(rgb.shape[1]), int(rgb.shape[0])),)
        self.level_downsamples = (1.0,)

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.rgb[y : y + h, x : x + w]

    def close(self) -> None:
        self.rgb = np.zeros((0, 0, 3), np.uint8)


def _level0_location(ix: int, ds: float) -> int:
    """Smallest level-0 coordinate ``b`` with ``int(b / ds) == ix``: how tiffslide/openslide address level ``ix``."""
    b = max(0, math.ceil(ix * ds - 1e-6))
    while int(b / ds) < ix:
        b += 1
    while b > 0 and int((b - 1) / ds) >= ix:
        b -= 1
    return b


class _TiffSlideBackend:
    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        import tiffslide

        self.slide = tiffslide.TiffSlide(os.fspath(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self.slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self.slide.level_downsamples)
        props = self.slide.properties
        self.mpp = _float_or_none(props.get("tiffslide.mpp-x"))
        self.objective_power = _float_or_none(props.get("tiffslide.objective-power"))

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        loc = (_level0_location(x, ds), _level0_location(y, ds))
        arr = np.asarray(self.slide.read_region(loc, level, (w, h), as_array=True, padding=False))
        return to_rgb8(arr, "slide region")

    def close(self) -> None:
        self.slide.close()


class _OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self.slide = openslide.OpenSlide(os.fspath(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self.slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self.slide.level_downsamples)
        props = self.slide.properties
        self.mpp = _float_or_none(props.get("openslide.mpp-x"))
        self.objective_power = _float_or_none(props.get("openslide.objective-power"))

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        loc = (_level0_location(x, ds), _level0_location(y, ds))
        rgba = np.asarray(self.slide.read_region(loc, level, (w, h)))
        # OpenSlide returns un-premultiplied RGBA, transparent outside the scanned area: composite onto white.
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)

    def close(self) -> None:
        self.slide.close()


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# --------------------------------------------------------------------------------------------- resampling


def _resample(crop: np.ndarray, r: float, dx: float, dy: float, w: int, h: int) -> np.ndarray:
    """Resample a level crop onto ``w x h`` output pixels of ``r`` level pixels each.

    Output pixel ``j`` has its centre at crop coordinate ``dx + (j + 0.5) * r - 0.5`` (and likewise in y).

    Args:
        crop: RGB uint8 ``[H, W, 3]`` level pixels, large enough to cover the output (plus one pixel).
        r: Level pixels per output pixel (> 1 shrinks with area averaging, < 1 enlarges bilinearly).
        dx: Sub-pixel offset of the output's left edge inside the crop, in level pixels (``0 <= dx < 1``).
        dy: Same for the top edge.
        w: Output width.
        h: Output height.

    Returns:
        RGB uint8 ``[h, w, 3]``.
    """
    import cv2

    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if r <= 1.0:
        m = np.array([[r, 0.0, dx + 0.5 * r - 0.5], [0.0, r, dy + 0.5 * r - 0.5]])
        return cv2.warpAffine(crop, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    if dx or dy:
        # The sub-pixel phase is removed on the fine grid, where the area averaging below hides the interpolation.
        size = (crop.shape[1] - 1, crop.shape[0] - 1)
        crop = cv2.warpAffine(crop, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]), size, flags=flags)
    # INTER_AREA with explicit factors uses exactly 1/r: output pixel k averages crop [k r, (k + 1) r).
    out = cv2.resize(crop, None, fx=1.0 / r, fy=1.0 / r, interpolation=cv2.INTER_AREA)
    if out.shape[0] < h or out.shape[1] < w:  # cannot happen with the 2-pixel margin of the callers
        out = cv2.copyMakeBorder(out, 0, max(0, h - out.shape[0]), 0, max(0, w - out.shape[1]), cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out[:h, :w])


# ------------------------------------------------------------------------------------------------ source


class ImageSource:
    """One input image or slide, read region by region on the working (target-magnification) grid.

    Attributes:
        path: The input file.
        kind: ``"image"`` (decoded whole) or ``"slide"`` (read through tiffslide/openslide).
        backend: ``"array"``, ``"tiffslide"`` or ``"openslide"``.
        width: Width of the working grid (pixels at the target magnification).
        height: Height of the working grid.
        level0_size: ``(width, height)`` of the input's full-resolution level.
        base_mpp: Level-0 microns per pixel used (override, metadata), ``None`` when unknown.
        mpp: Microns per pixel of the working grid, ``None`` when the input's resolution is unknown (it is then
            assumed to be at the target magnification).
        scale: Level-0 pixels per working pixel (1.0 when no resampling): multiply working coordinates by it
            (see :meth:`to_level0`) to place results on the input.
        magnification: The target magnification (20 or 40), the post-processing parameter.
        level: The pyramid level regions are read from.
    """

    background: int = 255
    """Value of pixels outside the image (white glass)."""

    def __init__(self, path: Path, backend: _Backend, *, kind: str, base_mpp: float | None, target_mag: int) -> None:
        self.path = path
        self.kind = kind
        self._backend = backend
        self.backend = backend.name
        self.level0_size = backend.level_dimensions[0]
        self.magnification = target_mag
        self.base_mpp = base_mpp
        target = TARGET_MPP[target_mag]
        scale = 1.0 if base_mpp is None else target / base_mpp
        if abs(scale - 1.0) <= SCALE_TOLERANCE:
            scale = 1.0
        self.scale = scale
        self.mpp = None if base_mpp is None else base_mpp * scale
        w0, h0 = self.level0_size
        self.width = max(1, round(w0 / scale))
        self.height = max(1, round(h0 / scale))
        self.level = self._best_level(scale)

    def __repr__(self) -> str:
        return (
            f"ImageSource({self.path.name!r}, {self.kind}/{self.backend}, {self.width}x{self.height} working px, "
            f"scale {self.scale:g}, mpp {self.mpp})"
        )

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the reader (file handles of a slide, the pixels of a plain image)."""
        self._backend.close()

    def _best_level(self, downsample: float) -> int:
        """Coarsest level at least as fine as ``downsample`` level-0 pixels per output pixel (1 % slack)."""
        best = 0
        for i, ds in enumerate(self._backend.level_downsamples):
            if ds <= downsample * 1.01 and ds >= self._backend.level_downsamples[best]:
                best = i
        return best

    def to_level0(self, xy: np.ndarray) -> np.ndarray:
        """Map working-grid pixel coordinates ``[..., 2]`` (x, y; pixel centres) to level-0 pixel coordinates.

        Pixel ``j`` of the working grid has its centre at level-0 coordinate ``(j + 0.5) * scale - 0.5``;
        identity when ``scale == 1``.
        """
        xy = np.asarray(xy, dtype=np.float64)
        if self.scale == 1.0:
            return xy
        return (xy + 0.5) * self.scale - 0.5

    def _read_level_padded(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level pixels of a rectangle that may leave the level: the outside is :attr:`background`."""
        lw, lh = self._backend.level_dimensions[level]
        out = np.full((h, w, 3), self.background, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            part = self._backend.read(level, x0, y0, x1 - x0, y1 - y0)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoder errors of any library: the file is damaged
            raise DataError(
                f"{self.path}: cannot read region x={x0} y={y0} {x1 - x0}x{y1 - y0} of level {level} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if part.shape[:2] != (y1 - y0, x1 - x0):
            raise DataError(f"{self.path}: level {level} region x={x0} y={y0} came back as {part.shape[:2]}")
        out[y0 - y : y1 - y, x0 - x : x1 - x] = part
        return out

    def _read_scaled(self, level: int, r: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``w x h`` output pixels at ``(x, y)`` of a grid with ``r`` level pixels per output pixel."""
        if abs(r - 1.0) < 1e-9:
            return self._read_level_padded(level, x, y, w, h)
        fx, fy = x * r, y * r
        ix, iy = math.floor(fx), math.floor(fy)
        nx = math.ceil((x + w) * r) - ix + 2
        ny = math.ceil((y + h) * r) - iy + 2
        crop = self._read_level_padded(level, ix, iy, nx, ny)
        return _resample(crop, r, fx - ix, fy - iy, w, h)

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read a rectangle of the working grid.

        Args:
            x: Left column (working pixels; may be negative or past the right edge).
            y: Top row.
            w: Width (> 0).
            h: Height (> 0).

        Returns:
            RGB uint8 ``[h, w, 3]``; pixels outside the image are white (255).

        Raises:
            DataError: The file's pixel data cannot be decoded there (damaged slide).
        """
        if w <= 0 or h <= 0:
            raise ValueError(f"read_region needs a positive size, got {w}x{h}")
        ds = self._backend.level_downsamples[self.level]
        return self._read_scaled(self.level, self.scale / ds, int(x), int(y), int(w), int(h))

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """The whole image, shrunk so that its longer side is at most ``max_side`` pixels.

        Built strip by strip from the coarsest suitable pyramid level, so a slide without a small level
        never has to be decoded whole.

        Args:
            max_side: Longest side of the result.

        Returns:
            ``(rgb, factor)``: RGB uint8 ``[h, w, 3]`` and the working pixels per thumbnail pixel (>= 1).
        """
        factor = max(1.0, max(self.width, self.height) / max_side)
        tw, th = max(1, math.ceil(self.width / factor)), max(1, math.ceil(self.height / factor))
        level = self._best_level(self.scale * factor)
        r = self.scale * factor / self._backend.level_downsamples[level]
        row_bytes = max(1.0, tw * r * r * 3)
        rows = max(1, int(_STRIP_BYTES // row_bytes))
        out = np.empty((th, tw, 3), dtype=np.uint8)
        for t0 in range(0, th, rows):
            t1 = min(th, t0 + rows)
            out[t0:t1] = self._read_scaled(level, r, 0, t0, tw, t1 - t0)
        return out, factor


def _tile_blocks(tiles: Iterable[Any], block: int) -> Iterator[list[Any]]:
    """Runs of consecutive tiles on one tile row, each spanning at most ``block`` working pixels (>= 1 tile)."""
    run: list[Any] = []
    for t in tiles:
        if run and (t.y != run[0].y or t.h != run[0].h or t.x < run[-1].x or t.x + t.w - run[0].x > block):
            yield run
            run = []
        run.append(t)
    if run:
        yield run


def _read_block(source: ImageSource, run: list[Any]) -> list[tuple[Any, np.ndarray]]:
    x0, y, h = run[0].x, run[0].y, run[0].h
    x1 = max(t.x + t.w for t in run)
    region = source.read_region(x0, y, x1 - x0, h)
    return [(t, np.ascontiguousarray(region[:, t.x - x0 : t.x - x0 + t.w])) for t in run]


def read_tiles(
    source: ImageSource, tiles: Iterable[Any], *, block: int = 2048, workers: int = 2
) -> Iterator[tuple[Any, np.ndarray]]:
    """Read many tiles of one source, in their order, a row block at a time and in background threads.

    Neighbouring tiles share most of their pixels and a slide's stored tiles rarely line up with ours, so reading
    each tile alone decodes every stored tile about twice; one read per run of up to ``block`` pixels of a tile row
    decodes it once (a 4096^2 JPEG TIFF on one core: 9.5 ms per 256 px tile alone, 1.7 ms in 2048 px blocks).
    At a resampled magnification a block's sub-pixel phase is the block's, so a tile may differ from its
    :meth:`ImageSource.read_region` by interpolation rounding.

    Args:
        source: The input.
        tiles: Objects with ``x, y, w, h`` (e.g. the tissue tiles of :func:`~medvit.apps.cell_seg.tiling.tile_grid`).
        block: Widest read, in working pixels.
        workers: Reader threads (decoders release the GIL); 0 reads in the calling thread.

    Yields:
        ``(tile, rgb)`` with ``rgb`` RGB uint8 ``[tile.h, tile.w, 3]``, in the order of ``tiles``.
    """
    runs = _tile_blocks(tiles, block)
    if workers <= 0:
        for run in runs:
            yield from _read_block(source, run)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read_tiles") as pool:
        pending: deque[Future[list[tuple[Any, np.ndarray]]]] = deque()
        for run in runs:
            pending.append(pool.submit(_read_block, source, run))
            if len(pending) > 2 * workers:  # bounded look-ahead: memory stays a few blocks
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


# ---------------------------------------------------------------------------------------------- opening


def _check_mpp(value: float | None, what: str, path: Path) -> float | None:
    if value is None:
        return None
    if SANE_MPP[0] <= value <= SANE_MPP[1]:
        return value
    logger.warning("%s: ignoring %s of %.4g um/px (outside %g..%g)", path, what, value, *SANE_MPP)
    return None


def _slide_mpp(path: Path, backend: Any) -> float | None:
    mpp = _check_mpp(getattr(backend, "mpp", None), "the mpp property", path)
    if mpp is None:
        power = getattr(backend, "objective_power", None)
        if power is not None and power > 0:
            mpp = _check_mpp(10.0 / power, f"the objective power {power:g}x", path)
    return mpp


def _tiff_mpp(tags: Any) -> float | None:
    """Microns per pixel from TIFF resolution tags (``XResolution`` pixels per ``ResolutionUnit``)."""
    try:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
    except (KeyError, TypeError, ValueError):
        return None
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # 2 = inch, 3 = centimetre (TIFF 6.0)
    if um_per_unit is None or num <= 0 or den <= 0:
        return None
    return um_per_unit * den / num


@dataclass(frozen=True)
class _TiffInfo:
    is_slide: bool
    mpp: float | None


def _inspect_tiff(path: Path) -> _TiffInfo:
    """Whether a ``.tif``/``.tiff`` is a slide (tiled, pyramidal or huge), and its mpp from the tags."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            series = tf.series[0]
            levels = len(series.levels)
            pixels = int(page.imagewidth) * int(page.imagelength)
            mpp = _tiff_mpp(page.tags)
            tiled = bool(page.is_tiled)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged files
        raise DataError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    return _TiffInfo(is_slide=tiled or levels > 1 or pixels > PLAIN_TIFF_MAX_PIXELS, mpp=mpp)


def _open_plain(path: Path) -> _ArrayBackend:
    from medvit.shared.data.io import read_image

    arr, _ = read_image(path, "rgb", max_pixels=MAX_PLAIN_PIXELS)
    return _ArrayBackend(to_rgb8(arr, str(path)))


def _backend_factories(path: Path, backend: str | None) -> list[tuple[str, Callable[[Path], Any]]]:
    if backend == "tiffslide":
        return [("tiffslide", _TiffSlideBackend)]
    if backend == "openslide":
        return [("openslide", _OpenSlideBackend)]
    if backend is not None:
        raise ConfigError(f"slide backend must be 'tiffslide', 'openslide' or None, got {backend!r}")
    if path.name.lower().endswith(TIFFSLIDE_SUFFIXES):
        return [("tiffslide", _TiffSlideBackend), ("openslide", _OpenSlideBackend)]
    return [("openslide", _OpenSlideBackend)]


def _open_slide(path: Path, backend: str | None) -> Any:
    """Open with the first reader that works; ``DataError`` naming the file and each reader's complaint."""
    problems: list[str] = []
    missing: list[str] = []
    for name, factory in _backend_factories(path, backend):
        try:
            return factory(path)
        except ImportError:
            missing.append(name)
        except Exception as exc:  # noqa: BLE001 - each reader has its own error types for unreadable files
            problems.append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    if missing and not problems:
        raise DataError(f"{path}: reading whole-slide images needs {' or '.join(missing)}; install with {WSI_HINT}")
    hint = f" ({' and '.join(missing)} not installed: {WSI_HINT})" if missing else ""
    raise DataError(f"{path}: not a readable whole-slide image ({'; '.join(problems)}){hint}")


def open_source(
    path: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    target_mag: int = 40,
    backend: str | None = None,
) -> ImageSource:
    """Open an image or a whole-slide image for region reads at ``target_mag``.

    Args:
        path: The input file.
        mpp: Level-0 microns per pixel of the input, overriding its metadata (e.g. 0.25 for a 40x PNG tile).
        target_mag: Working magnification, 40 (0.25 um/px) or 20 (0.5 um/px).
        backend: Force ``"tiffslide"`` or ``"openslide"`` for slides; ``None`` picks by suffix (tiffslide for
            TIFF containers, openslide for the rest and as the fallback).

    Returns:
        An :class:`ImageSource` (close it, or use it as a context manager).

    Raises:
        ConfigError: ``target_mag`` not 20/40, ``mpp`` not a positive finite number.
        DataError: Missing, unsupported, truncated or corrupt file; slide readers missing (names the extra).
    """
    from medvit.shared.data.io import check_file

    if target_mag not in TARGET_MPP:
        raise ConfigError(f"target_mag must be 20 or 40, got {target_mag!r}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
    p = check_file(path)
    name = p.name.lower()
    if not name.endswith(INPUT_SUFFIXES):
        raise DataError(f"{p}: unsupported input format '{p.suffix}' (expected one of {', '.join(INPUT_SUFFIXES)})")
    tiff_mpp: float | None = None
    slide = name.endswith(SLIDE_SUFFIXES)
    if name.endswith((".tif", ".tiff")) and backend is None:
        info = _inspect_tiff(p)
        slide, tiff_mpp = info.is_slide, info.mpp
    if slide:
        reader = _open_slide(p, backend)
        meta_mpp = _slide_mpp(p, reader)
        if mpp is None and meta_mpp is None:
            logger.warning("%s: resolution unknown; assuming %dx (%g um/px)", p, target_mag, TARGET_MPP[target_mag])
        kind = "slide"
    else:
        reader = _open_plain(p)
        meta_mpp = _check_mpp(tiff_mpp, "the TIFF resolution tags", p)
        kind = "image"
    source = ImageSource(p, reader, kind=kind, base_mpp=mpp if mpp is not None else meta_mpp, target_mag=target_mag)
    logger.debug("opened %r", source)
    return source


# ---------------------------------------------------------------------------------------------- tissue


@dataclass(frozen=True)
class TissueMask:
    """Where the tissue is, on a coarse grid over the working image.

    Attributes:
        mask: bool ``[h, w]``, True on tissue.
        scale: Working pixels per mask pixel.
    """

    mask: np.ndarray
    scale: float

    def __post_init__(self) -> None:
        # Summed-area table: any rectangle's tissue count in O(1).
        sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.int64)
        sat[1:, 1:] = np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int64), axis=1)
        object.__setattr__(self, "_sat", sat)

    def fraction(self, x: float, y: float, w: float, h: float) -> float:
        """Tissue fraction of a working-grid rectangle (the part outside the image counts as background)."""
        s = self.scale
        c0, r0 = math.floor(x / s), math.floor(y / s)
        c1, r1 = max(c0 + 1, math.ceil((x + w) / s)), max(r0 + 1, math.ceil((y + h) / s))
        mh, mw = self.mask.shape
        cc0, rr0, cc1, rr1 = min(max(c0, 0), mw), min(max(r0, 0), mh), min(max(c1, 0), mw), min(max(r1, 0), mh)
        sat = self._sat  # type: ignore[attr-defined]
        count = sat[rr1, cc1] - sat[rr0, cc1] - sat[rr1, cc0] + sat[rr0, cc0]
        return float(count) / float((c1 - c0) * (r1 - r0))

    def tile_has_tissue(self, tile: Any, min_fraction: float = 0.05) -> bool:
        """Whether a tile (anything with ``x, y, w, h`` on the working grid) holds enough tissue to process.

        The default 5 % is CellViT's ``min_intersection_ratio`` of its patch extraction.
        """
        return self.fraction(tile.x, tile.y, tile.w, tile.h) >= min_fraction


def tissue_mask(
    source: ImageSource,
    *,
    max_side: int = 2048,
    min_saturation: int = 20,
    min_area: float = 128 * 128,
    detect: bool | None = None,
) -> TissueMask:
    """Tissue mask of an input by Otsu thresholding of its thumbnail's saturation.

    Glass is bright and grey (low HSV saturation); H&E-stained tissue is saturated pink/purple. Steps: thumbnail
    (longer side ``max_side``), median blur, Otsu on the saturation channel with a floor of ``min_saturation``
    (an all-glass image has no tissue instead of half its noise), closing then opening with a small ellipse,
    holes filled, components smaller than ``min_area`` working pixels removed.

    Args:
        source: The input.
        max_side: Longest side of the thumbnail (mask resolution).
        min_saturation: Lowest threshold on saturation (0..255).
        min_area: Smallest tissue component kept, in working pixels (default a quarter of a 256 px tile).
        detect: Run detection; default: for slides only (a plain image counts as all tissue).

    Returns:
        A :class:`TissueMask` over the working grid.
    """
    import cv2
    from scipy import ndimage

    if detect is None:
        detect = source.kind == "slide"
    if not detect:
        # All tissue, on a coarse grid that still ends at the image border (tiles past it are partly glass).
        f = max(1.0, max(source.width, source.height) / 256)
        shape = (max(1, math.ceil(source.height / f)), max(1, math.ceil(source.width / f)))
        return TissueMask(np.ones(shape, dtype=bool), f)
    thumb, factor = source.thumbnail(max_side)
    sat = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[..., 1]
    sat = cv2.medianBlur(sat, 5) if min(sat.shape) >= 5 else sat
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (sat > max(float(otsu), float(min_saturation))).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    filled = ndimage.binary_fill_holes(mask.astype(bool))
    labels, n = ndimage.label(filled)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_area / (factor * factor)
        keep[0] = False
        filled = keep[labels]
    return TissueMask(np.asarray(filled, dtype=bool), float(factor))
