"""Ophthalmic label layouts read into ``(list[Sample], LabelSpace)`` for the classification core.

Two layouts:

* an **ImageFolder tree**: ``ROOT/<class>/<items>``, class = folder name; items are 2D images (fundus photographs,
  OCT B-scans), OCT volume files (NIfTI, ``.npy``, vendor files) or B-scan folders (numbered images of one volume,
  :func:`medvit.shared.data.folders.is_bscan_folder`). When ``ROOT`` holds ``train/`` / ``test/`` (``val/``)
  folders of classes, as OCT2017 ships, ``split`` picks one.
* a **CSV** (path, label): the path column is the first of ``path``, ``image``, ``id_code``, ``filename``,
  ``file``, ``Path``; the label column the first of ``label``, ``class``, ``grade``, ``level``, ``diagnosis``.
  Paths without a suffix (APTOS ``id_code``, EyePACS ``image``) are completed with the first image suffix that
  exists. A ``label_id`` column, when present with names in ``label``, fixes the class order (the synthetic OCT set).

The task kind (``task="auto"``): integer labels are ``graded`` (classes ``"0" .. "G"``, e.g. DR 0-4 as APTOS,
EyePACS, IDRiD grade; evaluated with quadratic-weighted kappa), except labels that are only 0/1, which are
``binary``; names are ``binary`` when there are two and one of them reads as negative (``normal``, ``negative``,
``healthy``, ``non-glaucoma``...), else ``multiclass`` (OCT2017 CNV/DME/DRUSEN/NORMAL). ``task`` and ``classes``
override this, e.g. to keep all five DR grades when a test subset lacks grade 4.

Groups (patient / eye) for split hold-outs come from a ``group`` / ``patient_id`` column, or from the file names of
OCT2017 (``CNV-<patient>-<n>.jpeg``) and EyePACS (``<patient>_left.jpeg``).

:func:`detect_modality` tells the core how to read the inputs: ``fundus`` (colour photographs, cropped to the field
of view), ``oct`` (volumes) or ``image`` (grayscale 2D scans such as OCT B-scans).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medvit.shared.classify.labels import LabelSpace, Sample
from medvit.shared.data.folders import find_eye_data, read_csv_rows
from medvit.shared.data.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "MODALITIES",
    "NEGATIVE_NAMES",
    "TASKS",
    "detect_modality",
    "is_volume",
    "list_class_items",
    "list_items",
    "read_eye_csv",
    "read_eye_dataset",
    "read_image_folder",
]

TASKS: tuple[str, ...] = ("auto", "graded", "multiclass", "binary")
MODALITIES: tuple[str, ...] = ("auto", "fundus", "oct")
NEGATIVE_NAMES: frozenset[str] = frozenset(
    {"0", "normal", "negative", "healthy", "no", "none", "control", "non-glaucoma", "non_glaucoma", "nonglaucoma",
     "ngl", "non-referable", "nrg"}
)  # fmt: skip
"""Class names (lower case) read as the negative class of a binary task."""

_PATH_COLUMNS = ("path", "image", "id_code", "filename", "file", "Path", "Image", "Image name")
_LABEL_COLUMNS = ("label", "class", "grade", "level", "diagnosis", "Label", "target", "Retinopathy grade")
_GROUP_COLUMNS = ("group", "patient", "patient_id", "Patient ID", "eye_id")
_SPLIT_DIRS = ("train", "val", "valid", "validation", "test")
_VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".npy", ".vol", ".e2e", ".fds", ".img")
_OCT2017 = re.compile(r"^(?:CNV|DME|DRUSEN|NORMAL)-(\d+)-\d+$", re.I)
_EYEPACS = re.compile(r"^(\d+)_(?:left|right)$", re.I)


def is_volume(path: Path) -> bool:
    """True for an OCT volume source: a volume file or a folder (of B-scans)."""
    return path.is_dir() or path.name.lower().endswith(_VOLUME_SUFFIXES)


def _group_from_name(path: Path) -> str | None:
    stem = path.name.split(".")[0]
    m = _OCT2017.match(stem) or _EYEPACS.match(stem)
    return m.group(1) if m else None


def _is_int(name: str) -> bool:
    return name.strip().lstrip("-").isdigit()


def _label_space(names: Sequence[str], task: str, classes: Sequence[str] | None, where: str) -> LabelSpace:
    """The label space of a set of label values under ``task`` (see the module docstring)."""
    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    found = sorted(set(names))
    numeric = bool(found) and all(_is_int(n) for n in found)
    if task == "auto" and classes:  # a fixed class list (a trained model's): graded when the names are grades
        task = "graded" if all(_is_int(str(c)) for c in classes) else "multiclass"
    if task == "auto":
        if numeric:
            task = "binary" if {int(n) for n in found} <= {0, 1} else "graded"
        elif len(found) == 2 and any(n.lower() in NEGATIVE_NAMES for n in found):
            task = "binary"
        else:
            task = "multiclass"
    if task == "binary":
        return LabelSpace.binary()
    if classes:
        return LabelSpace(task, tuple(str(c) for c in classes))  # type: ignore[arg-type]
    if task == "graded":
        if not numeric or min(int(n) for n in found) < 0:
            raise DataError(f"{where}: graded labels must be non-negative integers, got {found[:10]}")
        return LabelSpace("graded", tuple(str(g) for g in range(max(2, max(int(n) for n in found) + 1))))
    if len(found) < 2:
        raise DataError(f"{where}: a {task} task needs at least 2 classes, found {found}")
    return LabelSpace(task, tuple(found))  # type: ignore[arg-type]


def _target(name: str, labels: LabelSpace, positive: str | None, where: str) -> np.ndarray:
    """The target of one label value: class index, or 0/1 for a binary task."""
    if labels.kind == "binary":
        if positive is not None:
            return np.array([float(name == positive)], np.float32)
        return np.array([float(name.lower() not in NEGATIVE_NAMES)], np.float32)
    if labels.kind == "graded" and _is_int(name):
        name = str(int(name))
    if name not in labels.classes:
        raise DataError(f"{where}: label {name!r} is not one of the classes {list(labels.classes)}")
    return np.array([float(labels.classes.index(name))], np.float32)


# --------------------------------------------------------------------------------------------------------------
# ImageFolder


def list_items(folder: Path, dims: int | None = None) -> list[Path]:
    """The inputs below ``folder``: 2D images and OCT volumes (files and B-scan folders), sorted by path.

    A folder of numbered, same-size images is one B-scan volume (:func:`medvit.shared.data.folders.is_bscan_folder`)
    when it lies below ``folder``; ``folder`` itself stays a folder of separate images (a class folder of
    ``img_001.png ... img_100.png`` photographs) unless ``dims`` is 3. With ``dims`` 2 (a 2D model) every B-scan
    folder is read as separate images.
    """
    listing = find_eye_data(folder)
    items = list(listing.images)
    for v in listing.volumes:
        if v.kind == "bscan-folder" and (dims == 2 or (dims is None and v.path == folder)):
            items += [f for f in sorted(v.path.iterdir()) if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES)]
        else:
            items.append(v.path)
    return sorted(items, key=lambda p: p.as_posix())


def list_class_items(folder: Path) -> list[Path]:
    """The inputs of one class folder (:func:`list_items`: B-scan volumes are its subfolders, not itself)."""
    return list_items(folder)


def _class_root(root: Path, split: str | None) -> Path:
    subs = {d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    has_splits = bool(subs) and subs <= set(_SPLIT_DIRS)
    if split is None:
        return root / "train" if has_splits and "train" in subs else root
    if split not in subs:
        raise DataError(f"{root}: no {split!r} folder (found {', '.join(sorted(subs)) or 'nothing'})")
    return root / split


def read_image_folder(
    root: str | Path,
    *,
    task: str = "auto",
    classes: Sequence[str] | None = None,
    positive: str | None = None,
    split: str | None = None,
) -> tuple[list[Sample], LabelSpace]:
    """Read an ImageFolder tree ``ROOT/<class>/<items>`` (see the module docstring).

    Args:
        root: The tree (or its parent holding ``train/`` / ``test/``).
        task: One of :data:`TASKS`.
        classes: Class names in order (default: sorted folder names; graded: ``0..max``).
        positive: Binary tasks: the positive class folder (default: the one not named like a negative).
        split: ``train``, ``test``, ``val``... when the tree is split into such folders.

    Returns:
        ``(samples, label space)``; keys are paths relative to ``root``.

    Raises:
        DataError: Missing folder, fewer than two classes, an empty class folder.
    """
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: not found or not a folder")
    base = _class_root(r, split)
    folders = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(folders) < 2:
        raise DataError(f"{base}: an ImageFolder tree needs at least 2 class folders, found {len(folders)}")
    labels = _label_space([d.name for d in folders], task, classes, str(base))
    samples: list[Sample] = []
    for d in folders:
        items = list_class_items(d)
        if not items:
            raise DataError(f"{d}: class folder without images or volumes")
        target = _target(d.name, labels, positive, str(d))
        samples += [Sample(p, target, group=_group_from_name(p), key=p.relative_to(r).as_posix()) for p in items]
    logger.info("%s: %d items in %d classes (%s)", base, len(samples), len(folders), labels.kind)
    return samples, labels


# --------------------------------------------------------------------------------------------------------------
# CSV


def _resolve(cell: str, bases: Sequence[Path]) -> Path | None:
    """A path cell as an existing file or folder: as given, or with an image suffix added (APTOS ``id_code``)."""
    p = Path(cell)
    for base in [Path()] if p.is_absolute() else bases:
        q = base / p
        if q.exists():
            return q
        if not q.suffix or q.suffix.lower() not in (*IMAGE_SUFFIXES, ".gz", ".nii", ".npy"):
            for suffix in IMAGE_SUFFIXES:
                if q.with_name(q.name + suffix).is_file():
                    return q.with_name(q.name + suffix)
    return None


def _columns(header: Sequence[str], where: Path, label_column: str | None) -> tuple[str, str, str | None]:
    path_col = next((c for c in _PATH_COLUMNS if c in header), None)
    if label_column is not None and label_column not in header:
        raise DataError(f"{where}: no column {label_column!r}; found {list(header)}")
    label_col = label_column or next((c for c in _LABEL_COLUMNS if c in header), None)
    if path_col is None or label_col is None:
        raise DataError(
            f"{where}: needs a path column ({', '.join(_PATH_COLUMNS)}) and a label column "
            f"({', '.join(_LABEL_COLUMNS)}); found {list(header)}"
        )
    return path_col, label_col, next((c for c in _GROUP_COLUMNS if c in header), None)


def _ordered_names(rows: Sequence[dict[str, str]], label_col: str, where: Path) -> list[str] | None:
    """Class names ordered by a ``label_id`` column next to named labels (None without one)."""
    if label_col != "label" or not rows or "label_id" not in rows[0]:
        return None
    by_id: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        raw = (row.get("label_id") or "").strip()
        if not _is_int(raw):
            raise DataError(f"{where}: line {line}: label_id {raw!r} is not an integer")
        name = (row.get("label") or "").strip()
        if by_id.setdefault(int(raw), name) != name:
            raise DataError(f"{where}: line {line}: label_id {raw} names both {by_id[int(raw)]!r} and {name!r}")
    return [by_id[k] for k in sorted(by_id)]


def read_eye_csv(
    csv_path: str | Path,
    *,
    task: str = "auto",
    classes: Sequence[str] | None = None,
    positive: str | None = None,
    images: str | Path | None = None,
    label_column: str | None = None,
) -> tuple[list[Sample], LabelSpace]:
    """Read a (path, label) CSV (see the module docstring).

    Args:
        csv_path: The table.
        task: One of :data:`TASKS`.
        classes: Class names in order (default: from ``label_id``, sorted names, or ``0..max`` grades).
        positive: Binary tasks: the positive label value.
        images: Folder the paths are relative to (default: the CSV's folder).
        label_column: The label column (default: the first of the usual names, see the module docstring).

    Returns:
        ``(samples, label space)``; keys are the path cells as written.

    Raises:
        DataError: Missing columns, an empty cell, an unknown label, an image not found (file and line named).
    """
    p = Path(csv_path)
    rows = read_csv_rows(p)
    if not rows:
        raise DataError(f"{p}: no rows")
    path_col, label_col, group_col = _columns(list(rows[0]), p, label_column)
    values = []
    for line, row in enumerate(rows, start=2):
        value = (row.get(label_col) or "").strip()
        if not value:
            raise DataError(f"{p}: line {line}: empty {label_col!r}")
        values.append(value)
    order = classes or _ordered_names(rows, label_col, p)
    labels = _label_space(values, task, order, str(p))
    bases = [Path(images)] if images is not None else [p.parent]
    samples = []
    for line, (row, value) in enumerate(zip(rows, values, strict=True), start=2):
        where = f"{p}: line {line}"
        cell = (row.get(path_col) or "").strip()
        if not cell:
            raise DataError(f"{where}: empty {path_col!r}")
        source = _resolve(cell, bases)
        if source is None:
            raise DataError(f"{where}: image {cell!r} not found (relative paths are read from {bases[0]})")
        group = ((row.get(group_col) or "").strip() or None) if group_col else _group_from_name(source)
        samples.append(Sample(source, _target(value, labels, positive, where), group=group, key=cell))
    return samples, labels


# --------------------------------------------------------------------------------------------------------------
# dispatch and modality


def read_eye_dataset(
    path: str | Path,
    *,
    task: str = "auto",
    classes: Sequence[str] | None = None,
    positive: str | None = None,
    split: str | None = None,
    images: str | Path | None = None,
    label_column: str | None = None,
) -> tuple[list[Sample], LabelSpace]:
    """Read a CSV file, a folder holding ``labels.csv`` (the synthetic sets), or an ImageFolder tree.

    Raises:
        DataError: As the readers; ``path`` missing.
    """
    p = Path(path)
    kw = {"task": task, "classes": classes, "positive": positive, "images": images, "label_column": label_column}
    if p.is_file():
        return read_eye_csv(p, **kw)
    if not p.is_dir():
        raise DataError(f"{p}: not found")
    if (p / "labels.csv").is_file():
        return read_eye_csv(p / "labels.csv", **kw)
    return read_image_folder(p, task=task, classes=classes, positive=positive, split=split)


def detect_modality(samples: Sequence[Sample], modality: str = "auto", probe: int = 4) -> str:
    """The core's input modality of a set: ``oct`` for volumes (3D), ``fundus`` for colour photographs (cropped
    to the field of view), ``image`` for 2D grayscale scans (OCT B-scans: read as plain images).

    Args:
        samples: The inputs.
        modality: ``auto`` or a forced ``fundus`` / ``oct`` (OCT on 2D inputs means B-scans: ``image``).
        probe: How many 2D images to open to tell grayscale from colour.

    Raises:
        DataError: Volumes mixed with 2D images, or an unknown modality.
    """
    if modality not in MODALITIES:
        raise DataError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    vols = sum(is_volume(s.source) for s in samples)
    if vols and vols != len(samples):
        raise DataError(f"{vols} of {len(samples)} inputs are OCT volumes and the rest 2D images; use one kind per run")
    if vols:
        return "oct"
    if modality != "auto":
        return "fundus" if modality == "fundus" else "image"
    from medvit.shared.data.io import ReadError, read_image

    for s in samples[:probe]:
        try:
            img, _ = read_image(s.source, mode="rgb")
        except ReadError:
            continue
        img = img.astype(np.int32)
        if np.abs(img[..., 0] - img[..., 1]).max() > 8 or np.abs(img[..., 1] - img[..., 2]).max() > 8:
            return "fundus"
    return "image"
