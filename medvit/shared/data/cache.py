"""A disk cache of preprocessed volumes, so epochs after the first do not decode and resample ``.nii.gz`` again.

Why our own and not ``monai.data.PersistentDataset``: PersistentDataset pickles whole MetaTensor dicts with
``torch.save`` (reloading them needs ``torch.load(weights_only=False)``, which this project never does), stores
float32, and keys entries by the data dict rather than the file's size and modification time. This cache stores
plain ``.npy`` arrays (``np.load(allow_pickle=False)``) plus a JSON sidecar.

Format of one entry (``key`` = sha256 of the source files' absolute paths, sizes, ``mtime_ns`` and the transform
signature, so editing a file or changing the preprocessing config makes a new entry):
    * ``<key>.<i>.npy``: the i-th array of the result, floating arrays stored as float16 (integer/bool arrays as
      they are; a floating array whose values exceed float16's range is stored as float32).
    * ``<key>.json``: shapes, dtypes, affines and spacings of the arrays, plus any small non-array values of a dict
      result. Written last, each file through a temp file + ``os.replace``, so a kill mid-write leaves either a
      complete entry or one without its JSON (which counts as missing). Unreadable entries are recomputed.

Precision: float16 has a 10-bit mantissa, so values in [0, 1] (CT after HU windowing) are stored with a maximum
absolute error of 2**-12 ~= 2.4e-4 (half the float16 spacing in [0.5, 1)); i.e. about 0.1 HU for a 425 HU window.
Integer-valued label maps below 2048 are exact. The first call returns the float16-rounded values too, so every
epoch sees exactly the same preprocessed data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medvit.shared.data.augment import reseed
from medvit.shared.data.io import ReadError
from medvit.shared.files import atomic_path

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
CACHE_FORMAT = 1
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def transform_signature(name: str, **params: Any) -> str:
    """A stable string describing a preprocessing configuration, to pass to :class:`VolumeCache`.

    Args:
        name: Pipeline name, e.g. ``"ct_preprocess"``.
        **params: Its parameters (JSON-serialisable; tuples become lists).

    Returns:
        Canonical JSON including the cache format and the MONAI version (a MONAI upgrade may change resampling).
    """
    import monai

    doc = {"name": name, "params": params, "cache_format": CACHE_FORMAT, "monai": monai.__version__}
    return json.dumps(doc, sort_keys=True, default=str)


def _fingerprint(source: PathLike) -> list[Any]:
    p = Path(source)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ReadError(f"{p}: file or folder not found") from None
    if p.is_dir():  # a DICOM series folder: its files' sizes and times (not recursive, like the reader)
        files = sorted(f for f in p.iterdir() if f.is_file())
        return [str(p.resolve()), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def _source_list(source: Any) -> list[str]:
    return [os.fspath(source)] if isinstance(source, str | os.PathLike) else [os.fspath(s) for s in source]


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    # No fsync: an entry a power cut leaves empty is found unreadable and recomputed.
    with atomic_path(path, fsync=False) as tmp, open(tmp, mode) as fh:
        write(fh)


def _to_json(value: Any) -> Any:
    """Small non-array values of a result dict as JSON (``TypeError`` if not representable)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    raise TypeError(f"cannot cache a value of type {type(value).__name__}")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class VolumeCache:
    """Disk cache of deterministic preprocessing results, keyed by source file identity + transform signature.

    Safe to share between DataLoader workers and ranks on one file system: entries are written atomically and
    concurrent writers of the same key write identical content.

    Args:
        cache_dir: Folder for the entries (created if needed).
        transform_signature: A string that changes whenever the preprocessing does (see :func:`transform_signature`).
        dtype: Storage type of floating arrays, ``"float16"`` (default) or ``"float32"`` (lossless).
    """

    def __init__(self, cache_dir: PathLike, transform_signature: str, *, dtype: str = "float16") -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.signature = transform_signature
        self.dtype = np.dtype(dtype)
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0}

    def key(self, source: PathLike | Sequence[PathLike]) -> str:
        """sha256 hex of the sources' absolute paths, sizes, ``mtime_ns`` and the transform signature.

        Raises:
            ReadError: A source does not exist.
        """
        sources = [source] if isinstance(source, str | os.PathLike) else list(source)
        doc = {"sources": [_fingerprint(s) for s in sources], "signature": self.signature}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def _json_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def _npy_path(self, key: str, i: int) -> Path:
        return self.cache_dir / f"{key}.{i}.npy"

    def get_or_compute(self, source: PathLike | Sequence[PathLike], fn: Callable[[Any], Any]) -> Any:
        """Return the cached result for ``source``, computing and storing it with ``fn(source)`` on a miss.

        Args:
            source: The input file or folder (or several, e.g. image and label), identifying the entry.
            fn: Deterministic preprocessing; returns an array/tensor/MetaTensor, or a dict of them (plus small
                JSON-serialisable values such as ids). Arrays with fewer than 2 dimensions in a dict are stored in
                the JSON.

        Returns:
            The same structure as ``fn`` returns, with floating arrays as float32 rounded through the storage
            dtype; MetaTensors come back as MetaTensors with their affine.
        """
        key = self.key(source)
        cached = self._load(key)
        if cached is not None:
            self.stats["hits"] += 1
            return cached
        self.stats["misses"] += 1
        result = fn(source)
        return self._store(key, source, result)

    # ---------------------------------------------------------------------------------------------------------

    def _store(self, key: str, source: Any, result: Any) -> Any:
        single = not isinstance(result, Mapping)
        entries = {"": result} if single else dict(result)
        items: dict[str, Any] = {}
        values: dict[str, Any] = {}
        out: dict[str, Any] = {}
        i = 0
        for name, value in entries.items():
            if not isinstance(name, str):
                raise TypeError(f"cache: result dict keys must be strings, got {name!r}")
            is_array = isinstance(value, np.ndarray | torch.Tensor) and value.ndim >= 2
            if not is_array:
                values[name] = _to_json(value)
                out[name] = value
                continue
            arr, info = self._encode(value)
            path = self._npy_path(key, i)
            _atomic_write(path, lambda fh, a=arr: np.save(fh, a, allow_pickle=False))
            info["file"] = path.name
            items[name] = info
            out[name] = self._decode(arr, info, source)
            i += 1
        doc = {
            "format": CACHE_FORMAT,
            "signature": self.signature,
            "single": single,
            "sources": _source_list(source),
            "items": items,
            "values": values,
        }
        _atomic_write(self._json_path(key), lambda fh: json.dump(doc, fh), mode="w")
        return out[""] if single else out

    def _encode(self, value: np.ndarray | torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
        from monai.data import MetaTensor

        info: dict[str, Any] = {"kind": "ndarray", "affine": None}
        if isinstance(value, MetaTensor):
            info["kind"] = "metatensor"
            info["affine"] = np.asarray(value.affine, dtype=np.float64).tolist()
            info["spacing"] = [float(v) for v in np.asarray(value.pixdim).ravel()]
            arr = value.as_tensor().detach().cpu().numpy()
        elif isinstance(value, torch.Tensor):
            info["kind"] = "tensor"
            arr = value.detach().cpu().numpy()
        else:
            arr = np.asarray(value)
        info["orig_dtype"] = arr.dtype.name
        if arr.dtype.kind == "f":
            store = self.dtype
            if store == np.float16 and arr.size and float(np.nanmax(np.abs(arr))) > _FLOAT16_MAX:
                logger.warning("cache: values beyond the float16 range; storing this array as float32")
                store = np.dtype(np.float32)
            arr = arr.astype(store)
        info["dtype"] = arr.dtype.name
        info["shape"] = list(arr.shape)
        return np.ascontiguousarray(arr), info

    def _decode(self, arr: np.ndarray, info: Mapping[str, Any], source: Any) -> Any:
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        kind = info["kind"]
        if kind == "ndarray":
            return arr
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if kind == "tensor":
            return t
        from monai.data import MetaTensor

        src = _source_list(source)[0]
        affine = torch.as_tensor(np.asarray(info["affine"], dtype=np.float64))
        return MetaTensor(t, affine=affine, meta={"filename_or_obj": os.fspath(src)})

    def _load(self, key: str) -> Any | None:
        jpath = self._json_path(key)
        if not jpath.exists():
            return None
        try:
            doc = json.loads(jpath.read_text())
            if doc.get("format") != CACHE_FORMAT or doc.get("signature") != self.signature:
                raise ValueError("format or signature mismatch")
            out: dict[str, Any] = {k: _from_json(v) for k, v in doc["values"].items()}
            for name, info in doc["items"].items():
                arr = np.load(self.cache_dir / info["file"], allow_pickle=False)
                if list(arr.shape) != info["shape"] or arr.dtype.name != info["dtype"]:
                    raise ValueError(f"{info['file']}: shape/dtype differ from the JSON")
                out[name] = self._decode(arr, info, doc.get("sources") or [str(jpath)])
        except (OSError, ValueError, EOFError, KeyError, TypeError, json.JSONDecodeError) as exc:
            self.stats["corrupt"] += 1
            logger.warning("cache entry %s is unreadable (%s: %s); recomputing it", jpath.name, type(exc).__name__, exc)
            return None
        return out[""] if doc["single"] else out


class CachedVolumeDataset(Dataset):
    """Dataset that runs the deterministic preprocessing once per file (through a :class:`VolumeCache`) and the
    random transforms on every access.

    Items are MONAI-style dicts (``{"image": path, "label": path, "case_id": ...}``) or bare paths (taken as
    ``{image_key: path}``). For CT: ``preprocess=ct_preprocess(..., load=True)`` and
    ``random_transform=Compose([ct_random_crops(...), ct_augment(...)])``. When the random transform returns a list
    of crops, batch with ``monai.data.list_data_collate``. The training loop reseeds the random transform per sample
    (:meth:`reseed`), so augmentation replays exactly after a resume, with any number of workers.

    Args:
        items: The data list.
        preprocess: Deterministic transform from an item dict to a dict of tensors (cached).
        cache: The cache; ``None`` recomputes every time (useful to compare).
        random_transform: Applied to the (cached) preprocessed dict on every ``__getitem__``.
        image_key: Key used for bare-path items.
        source_keys: Keys whose values are files that identify the entry; default: every key holding a path.
    """

    def __init__(
        self,
        items: Sequence[Mapping[str, Any] | PathLike],
        preprocess: Callable[[dict[str, Any]], Any],
        cache: VolumeCache | None = None,
        random_transform: Callable[[Any], Any] | None = None,
        *,
        image_key: str = "image",
        source_keys: Sequence[str] | None = None,
    ) -> None:
        self.items = [dict(it) if isinstance(it, Mapping) else {image_key: it} for it in items]
        self.preprocess = preprocess
        self.cache = cache
        self.random_transform = random_transform
        self.source_keys = tuple(source_keys) if source_keys is not None else None

    def __len__(self) -> int:
        return len(self.items)

    def reseed(self, seed: int) -> None:
        """Reseed the random transform for the next item (called by the training loop per sample)."""
        reseed(self.random_transform, seed)

    def _sources(self, item: Mapping[str, Any]) -> list[PathLike]:
        if self.source_keys is not None:
            return [item[k] for k in self.source_keys]
        srcs = [v for v in item.values() if isinstance(v, str | os.PathLike) and Path(v).exists()]
        if not srcs:
            raise ReadError(f"item {dict(item)} has no existing file to read")
        return srcs

    def __getitem__(self, index: int) -> Any:
        item = self.items[index]
        if self.cache is None:
            data = self.preprocess(dict(item))
        else:
            data = self.cache.get_or_compute(self._sources(item), lambda _src: self.preprocess(dict(item)))
        if self.random_transform is not None:
            data = self.random_transform(data)
        return data
