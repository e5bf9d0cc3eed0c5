"""``medvit cell prepare``: convert a PanNuke or CoNIC release into the prepared layout training reads.

The prepared layout is described in :mod:`medvit.shared.data.cell_format` (PNG images, ``.npz`` labels with an
instance map and a type map, ``types.csv``, ``cell_count.csv`` per fold, ``dataset.json`` last).

PanNuke (Gamper et al. 2019, 2020), three folds, accepted in two layouts::

    SRC/Fold 1/images/fold1/images.npy  [N, 256, 256, 3] (float64 in the release, integral 0..255)
    SRC/Fold 1/images/fold1/types.npy   [N] tissue names
    SRC/Fold 1/masks/fold1/masks.npy    [N, 256, 256, 6] channels 0-4 per-class instance ids, 5 background
    (Fold 2, Fold 3 alike)              -- the release as downloaded

    SRC/fold1/{images,masks,types}.npy  -- flat; CellViT's fold0..fold2 numbering is shifted to fold1..fold3

Conversion as CellViT's ``prepare_pannuke.py``: each class channel's ids are made contiguous, offset by the
instances of the channels before it and written into one instance map; the type map is the channel index + 1;
a later channel overwrites an earlier one where they overlap (in both maps, so they stay consistent); the ids are
finally made contiguous. Splits (CellViT/CellVTA configs, folds numbered as released): split 1 trains on fold1,
validates on fold2, tests on fold3; split 2: fold2 / fold1 / fold3; split 3: fold3 / fold2 / fold1. Tissue ids
follow CellViT's alphabetical list of the 19 tissues (:data:`~medvit.shared.data.cell_format.PANNUKE_TISSUES`);
a name outside it is appended (with a warning). Magnification 40, 0.25 um/px.

CoNIC (Graham et al., "CoNIC: Colon Nuclei Identification and Counting Challenge 2022"; patches of Lizard,
Graham et al. 2021)::

    SRC/images.npy      [N, 256, 256, 3] uint8
    SRC/labels.npy      [N, 256, 256, 2] channel 0 instance map, channel 1 class 0..6
    SRC/patch_info.csv  optional: one row per patch naming it ``<source image>-<patch number>``

Patches cut from the same source image overlap and share a patient, so they must not be split across folds:
the patches are grouped by source image (the name before the last ``-``), the groups are shuffled with a fixed
seed and each group goes to the fold holding the fewest patches so far, giving 5 source-disjoint folds of
nearly equal size. Split ``k`` tests on fold ``k``, validates on the next fold and trains on the other three
(60/20/20, close to CellVTA's 64/16/20 patient-level split, which was not published). Without
``patch_info.csv`` every patch is its own group and a warning says that overlapping patches may leak across
folds. An instance whose pixels carry class 0 or several classes takes its most frequent non-zero class (an
instance with none is dropped), so that the type map is consistent with the instance map. Magnification 20,
0.5 um/px, one tissue (``Colon``).

Memory and restarts: the ``.npy`` files are memory-mapped and converted image by image. Every file is written
atomically; an interrupted run continues where it stopped (an image whose PNG and labels both exist is not
written again, but its counts are recomputed from the source), and ``dataset.json`` is written last, so a
folder without it is never mistaken for a finished dataset. ``OUT/.prepare.json`` records what is being
prepared so that a different source cannot continue a partial run; it is removed at the end.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.data.cell_format import (
    CONIC_NUCLEI_TYPES,
    FORMAT,
    FORMAT_VERSION,
    PANNUKE_LICENSE,
    PANNUKE_NUCLEI_TYPES,
    PANNUKE_TISSUES,
)
from medvit.shared.data.io import list_folder, read_json_object
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.files import atomic_path, write_bytes_atomic, write_csv_atomic, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "conic_labels", "pannuke_labels", "prepare"]

KINDS = ("pannuke", "conic")
PANNUKE_SPLITS: dict[str, dict[str, list[str]]] = {
    "1": {"train": ["fold1"], "val": ["fold2"], "test": ["fold3"]},
    "2": {"train": ["fold2"], "val": ["fold1"], "test": ["fold3"]},
    "3": {"train": ["fold3"], "val": ["fold2"], "test": ["fold1"]},
}
CONIC_FOLDS = 5
CONIC_LICENSE = "CC BY-NC-SA 4.0 (Lizard / CoNIC; verify before use)"
_CONIC_SEED = 19  # CellVTA's seed; fixes the group shuffle, so a CoNIC release always gives the same folds
_MARKER = ".prepare.json"
_FOLD_DIR = re.compile(r"^fold\d+$")

ProgressFn = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------------------
# label conversion


def _contiguous(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the positive ids of ``ids`` to 1..K in sorted order (0 stays 0); returns (int32 map, K).

    Sorts only the nucleus pixels and maps through a lookup table (a full-image ``np.unique(return_inverse=True)``
    was most of the conversion time).
    """
    fg = ids > 0
    values = np.unique(ids[fg])
    out = np.zeros(ids.shape, dtype=np.int32)
    if values.size:
        top = int(values[-1])
        if top <= 4 * ids.size + 1_000_000:
            lut = np.zeros(top + 1, dtype=np.int32)
            lut[values.astype(np.int64)] = np.arange(1, values.size + 1, dtype=np.int32)
            out[fg] = lut[ids[fg].astype(np.int64)]
        else:
            out[fg] = np.searchsorted(values, ids[fg]).astype(np.int32) + 1
    return out, int(values.size)


def pannuke_labels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One PanNuke release mask -> instance map and type map (CellViT's conversion, see the module docstring).

    Args:
        mask: ``[H, W, 6]`` (or more channels; channels 0-4 are read) of non-negative integral instance ids.

    Returns:
        ``(inst_map int32 [H, W] with ids 1..N, type_map uint8 [H, W] with values 0..5)``.
    """
    inst = np.zeros(mask.shape[:2], dtype=np.int32)
    types = np.zeros(mask.shape[:2], dtype=np.uint8)
    offset = 0
    for j in range(5):
        channel = mask[..., j]
        sel = channel > 0
        if not sel.any():
            continue
        ids, k = _contiguous(channel)
        inst[sel] = ids[sel] + offset
        types[sel] = j + 1
        offset += k
    return _contiguous(inst)[0], types


def conic_labels(label: np.ndarray, num_classes: int = 6) -> tuple[np.ndarray, np.ndarray, int]:
    """One CoNIC label ``[H, W, 2]`` -> instance map, type map and the number of instances whose type was fixed.

    Each instance takes the most frequent non-zero class among its pixels; one without any is dropped.

    Args:
        label: ``[H, W, 2]`` non-negative integers: instance ids, classes ``0..num_classes``.
        num_classes: C.

    Returns:
        ``(inst_map int32 [H, W] with ids 1..N, type_map uint8 [H, W], instances with mixed or no class)``.
    """
    inst, n = _contiguous(label[..., 0])
    cls = label[..., 1].astype(np.int64)
    votes = np.bincount(
        (inst.astype(np.int64) * (num_classes + 1) + cls).ravel(), minlength=(n + 1) * (num_classes + 1)
    )
    votes = votes.reshape(n + 1, num_classes + 1)[1:]
    inst_type = np.zeros(n + 1, dtype=np.uint8)
    has_class = votes[:, 1:].sum(1) > 0
    inst_type[1:] = np.where(has_class, votes[:, 1:].argmax(1) + 1, 0)
    fixed = int(np.count_nonzero((votes > 0).sum(1) > 1) + np.count_nonzero(~has_class))
    types = inst_type[inst]
    if not has_class.all():
        inst = _contiguous(np.where(types > 0, inst, 0))[0]
    return inst, types, fixed


# ----------------------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class _Fold:
    """One output fold: the source arrays and which of their rows it takes."""

    name: str
    images: Path
    labels: Path  # PanNuke masks.npy or CoNIC labels.npy
    types: Path | None  # PanNuke types.npy
    rows: tuple[int, ...] | None = None  # CoNIC: rows of the shared arrays (None: all)
    names: tuple[str, ...] | None = None  # CoNIC: image names


def _pannuke_folds(src: Path) -> list[_Fold]:
    release = sorted(int(m.group(1)) for p in _dirs(src) if (m := re.fullmatch(r"Fold (\d+)", p.name)))
    if release:
        return [
            _Fold(
                f"fold{k}",
                src / f"Fold {k}" / "images" / f"fold{k}" / "images.npy",
                src / f"Fold {k}" / "masks" / f"fold{k}" / "masks.npy",
                src / f"Fold {k}" / "images" / f"fold{k}" / "types.npy",
            )
            for k in release
        ]
    flat = sorted(int(m.group(1)) for p in _dirs(src) if (m := re.fullmatch(r"fold(\d+)", p.name)))
    if flat:
        shift = 1 if 0 in flat else 0  # CellViT numbers the folds 0..2
        if shift:
            logger.info("prepare pannuke: folds numbered from 0 (CellViT); writing them as fold1..fold%d", len(flat))
        return [
            _Fold(
                f"fold{k + shift}",
                src / f"fold{k}" / "images.npy",
                src / f"fold{k}" / "masks.npy",
                src / f"fold{k}" / "types.npy",
            )
            for k in flat
        ]
    raise DataError(
        f"{src}: no PanNuke folds found (expected 'Fold 1/images/fold1/images.npy' as released, "
        "or 'fold1/images.npy' with masks.npy and types.npy)"
    )


def _dirs(src: Path) -> list[Path]:
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found")
    return [p for p in list_folder(src) if p.is_dir()]


def _load(path: Path, *, mmap: bool = True) -> np.ndarray:
    """``np.load`` of one ``.npy`` (memory-mapped; pickles refused), with errors naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise DataError(
                f"{path}: holds pickled Python objects, which medvit never loads; save it as a plain array"
            ) from None
        raise DataError(f"{path}: not a readable .npy array ({err})") from None
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy array ({type(err).__name__}: {err})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected a .npy array, got an archive")
    return arr


def _check_arrays(fold: _Fold, images: np.ndarray, labels: np.ndarray, channels: int) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise DataError(f"{fold.images}: expected [N, H, W, 3] images, got shape {images.shape}")
    if labels.ndim != 4 or labels.shape[:3] != images.shape[:3] or labels.shape[-1] < channels:
        raise DataError(
            f"{fold.labels}: expected [N, H, W, {channels}] matching the images' {images.shape[:3]}, "
            f"got shape {labels.shape}"
        )
    for path, arr in ((fold.images, images), (fold.labels, labels)):
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DataError(f"{path}: expected integer or float values, got dtype {arr.dtype}")


def _tissues(path: Path, n: int) -> list[str]:
    arr = _load(path, mmap=False)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{path}: expected {n} tissue names (one per image), got shape {arr.shape}")
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    if arr.dtype.kind != "U":
        raise DataError(f"{path}: expected tissue names (strings), got dtype {arr.dtype}")
    return [str(x).strip() for x in arr]


def _conic_plan(src: Path) -> tuple[list[_Fold], dict[str, dict[str, list[str]]]]:
    """The (up to) 5 source-disjoint CoNIC folds (see the module docstring) and their rotating splits."""
    images, labels, info = src / "images.npy", src / "labels.npy", src / "patch_info.csv"
    _dirs(src)
    for path in (images, labels):
        if not path.is_file():
            raise DataError(f"{path}: missing (a CoNIC release holds images.npy and labels.npy)")
    names = _patch_names(info, _load(images).shape[0])
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.rsplit("-", 1)[0] if info.is_file() else name, []).append(i)
    order = sorted(groups)
    np.random.default_rng(_CONIC_SEED).shuffle(order)
    members: list[list[int]] = [[] for _ in range(CONIC_FOLDS)]
    for g in order:
        smallest = min(range(CONIC_FOLDS), key=lambda f: (len(members[f]), f))
        members[smallest].extend(groups[g])
    members = [sorted(m) for m in members if m]  # fewer source images than folds: fewer folds
    folds = [
        _Fold(f"fold{f + 1}", images, labels, None, tuple(m), tuple(names[i] for i in m)) for f, m in enumerate(members)
    ]
    return folds, _rotating_splits(len(folds))


def _rotating_splits(n_folds: int) -> dict[str, dict[str, list[str]]]:
    """Split ``k`` tests on fold ``k``, validates on the next fold and trains on the rest (no validation fold
    below 3 folds, no test fold with 1)."""
    names = [f"fold{f}" for f in range(1, n_folds + 1)]
    if n_folds == 1:
        return {"1": {"train": names}}
    splits = {}
    for k in range(n_folds):
        test = [names[k]]
        val = [names[(k + 1) % n_folds]] if n_folds >= 3 else []
        train = [f for f in names if f not in test and f not in val]
        splits[str(k + 1)] = {"train": train, "val": val, "test": test}
    return splits


def _patch_names(path: Path, n: int) -> list[str]:
    """Patch names from ``patch_info.csv`` (first column; a header row is skipped), or ``00000``... without it."""
    if not path.is_file():
        logger.warning(
            "prepare conic: %s not found; every patch is its own group, so overlapping patches of one source image "
            "may land in different folds (leakage between train and test)",
            path,
        )
        return [f"{i:05d}" for i in range(n)]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r[0].strip() for r in csv.reader(fh) if r and r[0].strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    if rows and "-" not in rows[0]:
        rows = rows[1:]  # header ("patch_info")
    if len(rows) != n:
        raise DataError(f"{path}: {len(rows)} patch names for {n} images in images.npy")
    clean = [re.sub(r"[^A-Za-z0-9_.-]", "_", r) for r in rows]
    if len(set(clean)) != len(clean):
        raise DataError(f"{path}: patch names are not unique")
    return clean


# ----------------------------------------------------------------------------------------------------------
# conversion


def _image_u8(arr: np.ndarray, path: Path, i: int) -> np.ndarray:
    """Row ``i`` of an images array as RGB uint8 (float releases hold integral 0..255 values)."""
    img = np.asarray(arr)
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise DataError(f"{path}: image {i} has NaN or infinite values")
        img = np.rint(img)
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{path}: image {i} has values in [{lo:g}, {hi:g}], expected 0..255")
    return np.ascontiguousarray(img.astype(np.uint8))


def _label_ints(arr: np.ndarray, path: Path, i: int) -> np.ndarray:
    """Row ``i`` of a labels array as int64, refusing NaN, fractions and negative values."""
    lab = np.asarray(arr)
    if np.issubdtype(lab.dtype, np.floating):
        if not np.isfinite(lab).all():
            raise DataError(f"{path}: labels of image {i} have NaN or infinite values")
        if np.any(lab != np.floor(lab)):
            raise DataError(f"{path}: labels of image {i} have non-integer values")
    if lab.size and lab.min() < 0:
        raise DataError(f"{path}: labels of image {i} have negative values")
    return lab.astype(np.int64)


@dataclass
class _FoldResult:
    names: list[str]
    tissues: list[str]
    counts: list[list[int]]  # per image, instances per class 1..C
    written: int = 0
    skipped: int = 0


def _labels_of(kind: str, lab: np.ndarray, fold: _Fold, i: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == "pannuke":
        return pannuke_labels(lab)
    top = int(lab[..., 1].max())
    if top > len(CONIC_NUCLEI_TYPES) - 1:
        raise DataError(f"{fold.labels}: labels of image {i} have class {top}; CoNIC classes are 0..6")
    inst, types, fixed = conic_labels(lab[..., :2])
    if fixed:
        logger.debug("prepare conic: image %d: %d instance(s) with mixed or no class", i, fixed)
    return inst, types


def _write_pair(out_dir: Path, name: str, img: np.ndarray, inst: np.ndarray, types: np.ndarray) -> None:
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - opencv fails only on invalid arrays
        raise DataError(f"{out_dir / 'images' / name}.png: PNG encoding failed")
    # fsync off: thousands of small files; the atomic rename still keeps a killed run from leaving half a file
    write_bytes_atomic(out_dir / "images" / f"{name}.png", png.tobytes(), fsync=False)
    with atomic_path(out_dir / "labels" / f"{name}.npz", fsync=False) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, inst_map=inst, type_map=types)


def _convert_fold(kind: str, fold: _Fold, out: Path, tick: Callable[[], None]) -> _FoldResult:
    """Convert one fold image by image; an image whose PNG and labels both exist is counted but not rewritten."""
    images, labels = _load(fold.images), _load(fold.labels)
    _check_arrays(fold, images, labels, 5 if kind == "pannuke" else 2)
    rows = fold.rows if fold.rows is not None else tuple(range(images.shape[0]))
    number = fold.name.removeprefix("fold")
    names = list(fold.names) if fold.names is not None else [f"{number}_{i}" for i in rows]
    tissues = _tissues(fold.types, images.shape[0]) if fold.types is not None else None
    n_classes = 5 if kind == "pannuke" else len(CONIC_NUCLEI_TYPES) - 1
    fold_dir = out / fold.name
    (fold_dir / "images").mkdir(parents=True, exist_ok=True)
    (fold_dir / "labels").mkdir(parents=True, exist_ok=True)
    result = _FoldResult(names, [tissues[i] for i in rows] if tissues is not None else ["Colon"] * len(rows), [])
    for name, i in zip(names, rows, strict=True):
        inst, types = _labels_of(kind, _label_ints(labels[i], fold.labels, i), fold, i)
        if inst.shape != images.shape[1:3]:  # pragma: no cover - guarded by _check_arrays
            raise DataError(f"{fold.labels}: labels of image {i} do not match the image size")
        per_class = np.bincount(types.ravel()[np.unique(inst.ravel(), return_index=True)[1]], minlength=n_classes + 1)
        result.counts.append([int(c) for c in per_class[1 : n_classes + 1]])
        if (fold_dir / "images" / f"{name}.png").is_file() and (fold_dir / "labels" / f"{name}.npz").is_file():
            result.skipped += 1
        else:
            _write_pair(fold_dir, name, _image_u8(images[i], fold.images, i), inst, types)
            result.written += 1
        tick()
    return result


def _write_fold_tables(fold_dir: Path, result: _FoldResult, class_names: list[str]) -> None:
    rows = [{"img": f"{n}.png", "tissue": t} for n, t in zip(result.names, result.tissues, strict=True)]
    write_csv_atomic(fold_dir / "types.csv", rows, ["img", "tissue"], fsync=False)
    counts = [
        {"img": f"{n}.png", **dict(zip(class_names, c, strict=True))}
        for n, c in zip(result.names, result.counts, strict=True)
    ]
    write_csv_atomic(fold_dir / "cell_count.csv", counts, ["img", *class_names], fsync=False)


# ----------------------------------------------------------------------------------------------------------
# the output folder


def _claim_out(out: Path, kind: str, src: Path, overwrite: bool) -> None:
    """Check that ``out`` may receive this prepare (new, a partial run of the same source, or ``overwrite``)."""
    marker = {"kind": kind, "src": str(src.resolve())}
    entries = list_folder(out)
    if overwrite:
        for p in entries:
            if p.name == "dataset.json" or (_FOLD_DIR.match(p.name) and p.is_dir() and not p.is_symlink()):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        (out / _MARKER).unlink(missing_ok=True)
    elif (out / "dataset.json").exists():
        raise ConfigError(
            f"{out}: already holds a prepared dataset (dataset.json); pass --overwrite to prepare it again"
        )
    elif (out / _MARKER).is_file():
        try:
            previous = read_json_object(out / _MARKER)
        except DataError:
            previous = {}
        if previous != marker:
            raise ConfigError(
                f"{out}: holds a partial prepare of {previous.get('kind', '?')} from {previous.get('src', '?')}; "
                "pass --overwrite or choose another folder"
            )
        logger.info("prepare %s: continuing the partial run in %s", kind, out)
    elif entries:
        raise ConfigError(f"{out}: output folder is not empty and holds no partial prepare; choose an empty folder")
    write_json_atomic(out / _MARKER, marker)


def _dataset_json(kind: str, folds: list[_Fold], splits: dict, results: dict[str, _FoldResult]) -> dict[str, Any]:
    class_names = list(PANNUKE_NUCLEI_TYPES if kind == "pannuke" else CONIC_NUCLEI_TYPES)
    if kind == "pannuke":
        found = {t for r in results.values() for t in r.tissues}
        extra = sorted(found - set(PANNUKE_TISSUES))
        if extra:
            logger.warning("prepare pannuke: tissue name(s) %s are not among PanNuke's 19; appended", extra)
        tissues = [*PANNUKE_TISSUES, *extra]
    else:
        tissues = ["Colon"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": kind,
        "nuclei_types": class_names,
        "tissue_types": tissues,
        "magnification": 40 if kind == "pannuke" else 20,
        "mpp": 0.25 if kind == "pannuke" else 0.5,
        "folds": [f.name for f in folds],
        "splits": splits,
        "images": {name: len(r.names) for name, r in results.items()},
        "class_counts": {
            name: {c: int(sum(row[j] for row in r.counts)) for j, c in enumerate(class_names[1:])}
            for name, r in results.items()
        },
        "license": PANNUKE_LICENSE if kind == "pannuke" else CONIC_LICENSE,
    }


def prepare(kind: str, src: Path, out: Path, *, overwrite: bool = False, progress: ProgressFn | None = None) -> dict:
    """Convert a PanNuke or CoNIC release into the prepared layout (see the module docstring).

    Args:
        kind: ``"pannuke"`` or ``"conic"``.
        src: The release folder.
        out: The output folder (created; must be empty, hold a partial prepare of the same source, or
            ``overwrite`` is given, which removes a previous prepare's folds and ``dataset.json`` only).
        overwrite: Redo a finished or different prepare in ``out``.
        progress: Optional ``progress(done, total)`` callback, after each image.

    Returns:
        ``{"out", "source", "folds": {fold: images}, "images", "tiles" (= images), "written", "skipped",
        "class_counts", "seconds"}``.

    Raises:
        ConfigError: Unknown kind, or an output folder that may not be used.
        DataError: Missing files, wrong shapes or dtypes, NaN or non-integer labels, pickled arrays (naming the file).
    """
    from medvit.shared.engine.lock import FolderLock

    if kind not in KINDS:
        raise ConfigError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    src, out = Path(src), Path(out)
    start = time.perf_counter()
    if kind == "pannuke":
        folds = _pannuke_folds(src)
        have = {f.name for f in folds}
        splits = {k: v for k, v in PANNUKE_SPLITS.items() if {f for part in v.values() for f in part} <= have}
    else:
        folds, splits = _conic_plan(src)
    total = sum(len(f.rows) if f.rows is not None else _load(f.images).shape[0] for f in folds)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    class_names = list(PANNUKE_NUCLEI_TYPES if kind == "pannuke" else CONIC_NUCLEI_TYPES)[1:]
    with FolderLock(out, f"cell prepare {kind}"):
        _claim_out(out, kind, src, overwrite)
        results: dict[str, _FoldResult] = {}
        for fold in folds:
            results[fold.name] = _convert_fold(kind, fold, out, tick)
            _write_fold_tables(out / fold.name, results[fold.name], class_names)
        dataset = _dataset_json(kind, folds, splits, results)
        write_json_atomic(out / "dataset.json", dataset)
        (out / _MARKER).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    written = sum(r.written for r in results.values())
    skipped = sum(r.skipped for r in results.values())
    logger.info(
        "prepare %s: %d images (%d written, %d already there) in %s (%.1f s)",
        kind,
        total,
        written,
        skipped,
        out,
        seconds,
    )
    return {
        "out": str(out),
        "source": kind,
        "folds": dataset["images"],
        "images": total,
        "tiles": total,
        "written": written,
        "skipped": skipped,
        "class_counts": dataset["class_counts"],
        "seconds": seconds,
    }
