"""A disk cache of decoded and resized X-rays, fundus photographs and OCT volumes, so later epochs do not decode again.

A 2048x2500 16-bit DICOM or a 3000x2000 fundus JPEG costs tens of milliseconds to decode and resize; pretraining
reads each one every epoch but only ever looks at a 256-pixel version of it. Here the deterministic part (decode,
VOI/inversion or field-of-view crop, resize so that the short side is ``short_side``, or resample a volume to a
fixed grid) runs once per file and its integer result is stored; the random crops run on every access.

Why our own and not ``monai.data.PersistentDataset`` / ``CacheDataset`` or a packed format (LMDB, WebDataset):
PersistentDataset pickles what it stores (reloading needs ``torch.load(weights_only=False)``, which this project
never does), CacheDataset holds everything in RAM (300k X-rays at 256 px are ~20 GB as uint8, four times that as
float32), and packed formats need a conversion step and a dependency, and go stale without notice when a source
file changes. And why not :class:`medvit.shared.data.cache.VolumeCache`, which could store these arrays: it is
built for MONAI dicts, so every store imports MONAI (seconds per process, for 2D data that never holds a
MetaTensor) and every entry is two files (``.npy`` + JSON). This cache keeps its recipe and drops the rest:

    * key = sha256 of the source's absolute path, size and ``mtime_ns`` (for a B-scan folder: each file's name, size
      and time) and the settings' signature, so editing a file or changing a setting makes a new entry;
    * one ``<key>.npz`` per source (``np.savez``, read with ``allow_pickle=False``): ``image`` (uint8 or uint16
      ``[H, W]``, ``[H, W, 3]`` or ``[rows, cols, slices]``), ``original_shape`` and ``spacing`` (mm of the stored
      array, empty when unknown);
    * written through a temp file in the cache folder and ``os.replace`` (:func:`medvit.shared.files.atomic_path`),
      so a killed worker leaves no entry rather than half of one; concurrent DataLoader workers and ranks writing the
      same key write identical bytes; an unreadable entry is recomputed.

Entries are quantised: uint8 (or uint16 for 12/16-bit X-rays, ``dtype="uint16"``), a quarter (half) of float32,
and the first call returns the quantised values too, so every epoch sees the same data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.data.augment import reseed
from medvit.shared.data.io import ReadError
from medvit.shared.files import atomic_path

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

IMAGE_CACHE_FORMAT = 1
KINDS: tuple[str, ...] = ("xray", "fundus", "image", "oct")


def source_fingerprint(source: PathLike) -> list[Any]:
    """What identifies a source's content for the cache: absolute path, size and ``mtime_ns``; for a folder, the
    name, size and ``mtime_ns`` of each file in it (not recursive, like the B-scan folder reader).

    Raises:
        ReadError: The source does not exist.
    """
    p = Path(source)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ReadError(f"{p}: file or folder not found") from None
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        return [str(p.resolve()), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def resize_short_side(image: np.ndarray, short_side: int, *, enlarge: bool = True) -> np.ndarray:
    """Resize so that the shorter side is ``short_side``, keeping the aspect ratio.

    Area interpolation when shrinking (no aliasing of fine texture), bilinear when enlarging.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` (uint8, uint16 or float32).
        short_side: Target length of the shorter side.
        enlarge: Also enlarge images whose shorter side is below ``short_side`` (else they are kept).

    Returns:
        The resized image (same dtype); the longer side is ``round(long * short_side / short)``.
    """
    import cv2

    h, w = image.shape[:2]
    short = min(h, w)
    if short == short_side or (short < short_side and not enlarge):
        return image
    scale = short_side / short
    size = (short_side, max(1, round(w * scale))) if h <= w else (max(1, round(h * scale)), short_side)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (size[1], size[0]), interpolation=interp)


def _quantise(unit: np.ndarray, dtype: str) -> np.ndarray:
    full = 255.0 if dtype == "uint8" else 65535.0
    return np.rint(np.clip(unit, 0.0, 1.0) * full).astype(dtype)


def _as_entry(entry: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {
        "image": entry["image"],
        "original_shape": [int(v) for v in entry["original_shape"]],
        "spacing": [float(v) for v in entry["spacing"]],
    }


class ImageCache:
    """Decoded, resized inputs of one modality, cached on disk (see the module docstring).

    Args:
        cache_dir: Folder of the entries (created). Several caches with different settings may share it.
        kind: ``"xray"`` (:func:`~medvit.shared.data.xray.read_xray`: ``[H, W]``), ``"fundus"``
            (:func:`~medvit.shared.data.eye.read_fundus`, cropped to the field of view: ``[S, S, 3]``), ``"image"``
            (any photograph, RGB ``[H, W, 3]``) or ``"oct"`` (:func:`~medvit.shared.data.eye.read_oct`,
            ``[rows, cols, slices]``).
        short_side: 2D kinds: resize so that the shorter side is this (``None``: keep the size).
        dtype: Stored type, ``"uint8"`` or ``"uint16"`` (for X-rays with more than 8 bits).
        oct_shape: ``"oct"``: resample every volume to this shape, or
        oct_spacing: ``"oct"``: resample to this voxel size in mm (volumes without spacing are an error).
        options: Keyword arguments of the reader (``window=`` for X-rays, ``axes=`` for OCT...); part of the key.

    Attributes:
        signature: The string that identifies these settings in every entry key.
        stats: ``{"hits", "misses", "corrupt"}`` counts of this process.
    """

    def __init__(
        self,
        cache_dir: PathLike,
        kind: str,
        *,
        short_side: int | None = 256,
        dtype: str = "uint8",
        oct_shape: Sequence[int] | None = None,
        oct_spacing: Sequence[float] | float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if dtype not in ("uint8", "uint16"):
            raise ValueError(f"dtype must be 'uint8' or 'uint16', got {dtype!r}")
        if kind == "oct" and oct_shape is not None and oct_spacing is not None:
            raise ValueError("give at most one of oct_shape and oct_spacing")
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be positive, got {short_side}")
        self.kind = kind
        self.short_side = short_side if kind != "oct" else None
        self.dtype = dtype
        self.oct_shape = tuple(int(s) for s in oct_shape) if oct_shape is not None else None
        self.oct_spacing = oct_spacing
        self.options = dict(options or {})
        self.signature = self._signature()
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0}

    def key(self, path: PathLike) -> str:
        """sha256 hex of the source's fingerprint (:func:`source_fingerprint`) and the settings' signature."""
        doc = {"source": source_fingerprint(path), "signature": self.signature}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def entry_path(self, path: PathLike) -> Path:
        """The ``.npz`` file that holds (or will hold) the entry of ``path``."""
        return self.cache_dir / f"{self.key(path)}.npz"

    def _signature(self) -> str:
        import cv2

        params = {
            "kind": self.kind,
            "short_side": self.short_side,
            "dtype": self.dtype,
            "oct_shape": self.oct_shape,
            "oct_spacing": self.oct_spacing,
            "options": self.options,
        }
        doc = {"name": "image_cache", "format": IMAGE_CACHE_FORMAT, "params": params, "opencv": cv2.__version__}
        return json.dumps(doc, sort_keys=True, default=str)

    def get(self, path: PathLike) -> np.ndarray:
        """The preprocessed image or volume of ``path`` (decoded and stored on the first call).

        Raises:
            ReadError: The source cannot be read (as the modality's reader raises).
        """
        return self.get_entry(path)["image"]

    def get_entry(self, path: PathLike) -> dict[str, Any]:
        """``{"image": array, "original_shape": [...], "spacing": [...]}`` of ``path``; see :meth:`get`.

        ``spacing`` is the output's spacing in mm where known (X-ray pixel spacing scaled by the resize, the OCT
        volume's after resampling), else empty.
        """
        entry_file = self.entry_path(path)
        cached = self._load(entry_file)
        if cached is not None:
            self.stats["hits"] += 1
            return cached
        self.stats["misses"] += 1
        entry = self._compute(path)
        entry = {
            "image": np.ascontiguousarray(entry["image"]),
            "original_shape": np.asarray(entry["original_shape"], dtype=np.int64),
            "spacing": np.asarray(entry["spacing"], dtype=np.float64),
        }
        # No fsync: an entry a power cut leaves empty is unreadable, hence recomputed.
        with atomic_path(entry_file, fsync=False) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **entry)
        return _as_entry(entry)

    def _load(self, entry_file: Path) -> dict[str, Any] | None:
        if not entry_file.exists():
            return None
        try:
            with np.load(entry_file, allow_pickle=False) as npz:
                entry = {name: npz[name] for name in ("image", "original_shape", "spacing")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            self.stats["corrupt"] += 1
            logger.warning("cache entry %s is unreadable (%s); recomputing it", entry_file.name, type(exc).__name__)
            return None
        return _as_entry(entry)

    def _compute(self, path: PathLike) -> dict[str, Any]:
        if self.kind == "oct":
            return self._compute_oct(path)
        if self.kind == "xray":
            from medvit.shared.data.xray import read_xray

            unit, meta = read_xray(path, **self.options)
            spacing: tuple[float, ...] = meta.spacing
        elif self.kind == "fundus":
            from medvit.shared.data.eye import read_fundus

            img, _ = read_fundus(path, **self.options)
            unit, spacing = _unit(img), ()
        else:
            from medvit.shared.data.io import read_image

            img, _ = read_image(path, **{"mode": "rgb", **self.options})
            unit, spacing = _unit(img), ()
        original = list(unit.shape)
        if self.short_side is not None:
            unit = resize_short_side(unit, self.short_side)
        if spacing:
            spacing = tuple(s * o / n for s, o, n in zip(spacing, original[:2], unit.shape[:2], strict=True))
        return {"image": _quantise(unit, self.dtype), "original_shape": original, "spacing": list(spacing)}

    def _compute_oct(self, path: PathLike) -> dict[str, Any]:
        from medvit.shared.data.eye import read_oct, resample_volume

        vol, meta = read_oct(path, **self.options)
        spacing: tuple[float, ...] = meta.spacing
        if self.oct_shape is not None or self.oct_spacing is not None:
            vol, spacing = resample_volume(
                vol, meta.spacing, target_shape=self.oct_shape, target_spacing=self.oct_spacing
            )
        return {"image": _quantise(vol, self.dtype), "original_shape": list(meta.shape), "spacing": list(spacing)}


def _unit(img: np.ndarray) -> np.ndarray:
    """uint8/uint16 image as float32 in ``[0, 1]``."""
    full = 255.0 if img.dtype == np.uint8 else 65535.0
    return img.astype(np.float32) / np.float32(full)


class CachedImageDataset:
    """Items read through an :class:`ImageCache`, then a random transform on every access (a map-style dataset).

    Returns ``{"image": transform(array) or array, "index": i, "path": str}`` plus ``"label"`` when labels are
    given. The training loop reseeds the transform per sample (:meth:`reseed`), so crops replay after a resume.

    Args:
        paths: Source files (or B-scan folders).
        cache: The cache that decodes them.
        transform: Called on the cached array (uint8/uint16) on every access.
        labels: One label per path (anything collate can batch), or ``None``.
    """

    def __init__(
        self,
        paths: Sequence[PathLike],
        cache: ImageCache,
        transform: Callable[[np.ndarray], Any] | None = None,
        labels: Sequence[Any] | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(labels)} labels for {len(paths)} paths")
        self.paths = [Path(p) for p in paths]
        self.cache = cache
        self.transform = transform
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def reseed(self, seed: int) -> None:
        """Reseed the random transform for the next item (called by the training loop per sample)."""
        reseed(self.transform, seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        arr = self.cache.get(self.paths[index])
        item: dict[str, Any] = {
            "image": self.transform(arr) if self.transform is not None else arr,
            "index": index,
            "path": str(self.paths[index]),
        }
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item
