"""The prepared nucleus-segmentation dataset format (``"medvit-cells"``): constants, readers and label checks.

What ``medvit cell prepare pannuke|conic SRC OUT`` writes, what ``medvit cell train`` reads, and what
``medvit data validate pannuke OUT`` checks (:mod:`medvit.shared.data.cards`)::

    OUT/dataset.json                  format, nuclei_types, tissue_types, magnification, mpp, folds, splits,
                                      images, class_counts, license (see :class:`CellDatasetInfo`)
    OUT/<fold>/images/<name>.png      RGB uint8
    OUT/<fold>/labels/<name>.npz      inst_map int32 [H, W] (0 background, ids unique per image),
                                      type_map uint8 [H, W] (0 background, 1..C)  (np.savez_compressed)
    OUT/<fold>/types.csv              img,tissue
    OUT/<fold>/cell_count.csv         img,<class 1 name>,...,<class C name>  (instances per class)

The layout follows CellViT's PanNuke preparation (Hörst et al. 2024, ``cell_segmentation/datasets/
prepare_pannuke.py`` of TIO-IKIM/CellViT) with two changes: labels are ``.npz`` arrays instead of pickled
dictionaries (nothing here is ever unpickled), and ``dataset.json`` replaces ``dataset_config.yaml``.

It lives in the shared layer because the data-card validator reads the files exactly as training does and the
shared layer may not import an app.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.data.io import ReadError, check_file, read_json_object
from medvit.shared.errors import DataError

__all__ = [
    "CONIC_NUCLEI_TYPES",
    "CellDatasetInfo",
    "FORMAT",
    "FORMAT_VERSION",
    "PANNUKE_LICENSE",
    "PANNUKE_NUCLEI_TYPES",
    "PANNUKE_TISSUES",
    "label_problem",
    "load_cell_dataset",
    "parse_dataset_json",
    "read_labels",
]

FORMAT = "medvit-cells"
FORMAT_VERSION = 1

PANNUKE_NUCLEI_TYPES: tuple[str, ...] = ("Background", "Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")
"""PanNuke nucleus classes, index = type id (Gamper et al. 2020; the release's mask channels 0-4 are classes 1-5)."""

PANNUKE_TISSUES: tuple[str, ...] = (
    "Adrenal_gland",
    "Bile-duct",
    "Bladder",
    "Breast",
    "Cervix",
    "Colon",
    "Esophagus",
    "HeadNeck",
    "Kidney",
    "Liver",
    "Lung",
    "Ovarian",
    "Pancreatic",
    "Prostate",
    "Skin",
    "Stomach",
    "Testis",
    "Thyroid",
    "Uterus",
)
"""The 19 PanNuke tissues as the release's ``types.npy`` spells them, in CellViT's alphabetical id order
(``configs/datasets/PanNuke/dataset_config.yaml``), so a tissue head trained there keeps its meaning."""

CONIC_NUCLEI_TYPES: tuple[str, ...] = (
    "Background",
    "Neutrophil",
    "Epithelial",
    "Lymphocyte",
    "Plasma",
    "Eosinophil",
    "Connective",
)
"""CoNIC challenge classes, index = the class value of ``labels.npy`` channel 1 (TissueImageAnalytics/CoNIC)."""

PANNUKE_LICENSE = "CC BY-NC-SA 4.0 (PanNuke, Gamper et al. 2019/2020)"

LABEL_KEYS = ("inst_map", "type_map")


@dataclass(frozen=True)
class CellDatasetInfo:
    """A prepared dataset's ``dataset.json``.

    Attributes:
        root: The dataset folder.
        source: ``"pannuke"``, ``"conic"``, ``"synthetic"``, ...
        nuclei_types: Class names, index = type id; index 0 is ``"Background"``.
        tissue_types: Tissue names, index = tissue id.
        magnification: Objective magnification the pixels correspond to (40 for PanNuke, 20 for CoNIC).
        mpp: Microns per pixel.
        folds: Fold folder names (``"fold1"``, ...).
        splits: Split name -> ``{"train": folds, "val": folds, "test": folds}``.
        images: Images per fold.
        class_counts: Per fold, instances per class name.
        license: Licence of the source data.
    """

    root: Path
    source: str
    nuclei_types: tuple[str, ...]
    tissue_types: tuple[str, ...]
    magnification: int
    mpp: float
    folds: tuple[str, ...]
    splits: dict[str, dict[str, tuple[str, ...]]]
    images: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    license: str = ""

    @property
    def num_nuclei_classes(self) -> int:
        """Number of nucleus classes C (background excluded)."""
        return len(self.nuclei_types) - 1

    @property
    def num_tissue_classes(self) -> int:
        """Number of tissue classes T."""
        return len(self.tissue_types)

    def split(self, name: str | int) -> dict[str, tuple[str, ...]]:
        """The folds of split ``name`` (``{"train": ..., "val": ..., "test": ...}``).

        Raises:
            DataError: Unknown split (the message lists the known ones).
        """
        key = str(name)
        if key not in self.splits:
            known = ", ".join(self.splits) or "none"
            raise DataError(f"{self.root / 'dataset.json'}: no split {key!r} (splits: {known})")
        return self.splits[key]


def _names(value: Any, where: str, key: str, *, min_len: int = 1) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) < min_len or not all(isinstance(x, str) and x for x in value):
        raise DataError(f"{where}: '{key}' must be a list of at least {min_len} non-empty strings, got {value!r}")
    if len(set(value)) != len(value):
        raise DataError(f"{where}: '{key}' has duplicate names")
    return tuple(value)


def _splits(value: Any, folds: Sequence[str], where: str) -> dict[str, dict[str, tuple[str, ...]]]:
    if not isinstance(value, dict):
        raise DataError(f"{where}: 'splits' must be an object, got {type(value).__name__}")
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for name, parts in value.items():
        if not isinstance(parts, dict) or set(parts) - {"train", "val", "test"} or "train" not in parts:
            raise DataError(f"{where}: split {name!r} must be an object with 'train' and optional 'val', 'test'")
        split: dict[str, tuple[str, ...]] = {}
        for part, names in parts.items():
            got = _names(names, where, f"splits.{name}.{part}", min_len=0)
            unknown = [f for f in got if f not in folds]
            if unknown:
                raise DataError(f"{where}: split {name!r} {part} names unknown fold(s) {unknown}")
            split[part] = got
        out[str(name)] = split
    return out


def _number(data: Mapping[str, Any], key: str, where: str, kind: type) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise DataError(f"{where}: '{key}' must be a positive number, got {value!r}")
    return kind(value)


def parse_dataset_json(data: Mapping[str, Any], root: Path) -> CellDatasetInfo:
    """Check and parse a ``dataset.json`` object.

    Args:
        data: The parsed JSON object.
        root: The dataset folder (for messages and :attr:`CellDatasetInfo.root`).

    Returns:
        The parsed info.

    Raises:
        DataError: Wrong format marker or version, missing keys, wrong types, splits naming unknown folds.
    """
    where = str(root / "dataset.json")
    if data.get("format") != FORMAT:
        raise DataError(f"{where}: 'format' must be {FORMAT!r} (a dataset written by `medvit cell prepare`)")
    if data.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{where}: format_version {data.get('format_version')!r} is not supported (expected 1)")
    nuclei = _names(data.get("nuclei_types"), where, "nuclei_types", min_len=2)
    if nuclei[0] != "Background":
        raise DataError(f"{where}: nuclei_types[0] must be 'Background', got {nuclei[0]!r}")
    tissues = _names(data.get("tissue_types"), where, "tissue_types")
    folds = _names(data.get("folds"), where, "folds")
    bad = [f for f in folds if "/" in f or f.startswith(".")]
    if bad:
        raise DataError(f"{where}: fold names must be plain folder names, got {bad}")
    images = data.get("images", {})
    counts = data.get("class_counts", {})
    if not isinstance(images, dict) or not isinstance(counts, dict):
        raise DataError(f"{where}: 'images' and 'class_counts' must be objects")
    return CellDatasetInfo(
        root=root,
        source=str(data.get("source", "")),
        nuclei_types=nuclei,
        tissue_types=tissues,
        magnification=_number(data, "magnification", where, int),
        mpp=_number(data, "mpp", where, float),
        folds=folds,
        splits=_splits(data.get("splits", {}), folds, where),
        images={str(k): int(v) for k, v in images.items()},
        class_counts={str(k): dict(v) for k, v in counts.items() if isinstance(v, dict)},
        license=str(data.get("license", "")),
    )


def load_cell_dataset(root: str | Path) -> CellDatasetInfo:
    """Read ``root/dataset.json`` of a prepared dataset.

    Raises:
        DataError: ``root`` or its ``dataset.json`` missing or unreadable, or a ``dataset.json`` that does not
            describe a prepared dataset (a raw PanNuke/CoNIC release gets a hint to run ``medvit cell prepare``).
    """
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{path}: dataset folder not found")
    ds = path / "dataset.json"
    if not ds.exists():
        hint = raw_release_hint(path)
        raise DataError(f"{ds}: missing" + (f"; {hint}" if hint else " (prepare the data with `medvit cell prepare`)"))
    try:
        data = read_json_object(ds)
    except ReadError as err:
        raise DataError(str(err)) from None
    return parse_dataset_json(data, path)


def raw_release_hint(root: Path) -> str | None:
    """A hint when ``root`` holds a raw PanNuke or CoNIC release instead of a prepared dataset, else None."""
    if any((root / f"Fold {k}").is_dir() for k in (1, 2, 3)) or any(root.glob("fold*/images.npy")):
        return f"{root} is a raw PanNuke release; run `medvit cell prepare pannuke {root} OUT` first"
    if (root / "images.npy").is_file() and (root / "labels.npy").is_file():
        return f"{root} is a raw CoNIC release; run `medvit cell prepare conic {root} OUT` first"
    return None


def _as_int_map(arr: np.ndarray, path: Path, key: str, dtype: type, limit: int) -> np.ndarray:
    if arr.ndim != 2:
        raise ReadError(f"{path}: '{key}' must be 2-D [H, W], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ReadError(f"{path}: '{key}' must hold integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > limit):
        raise ReadError(f"{path}: '{key}' values must lie in [0, {limit}], got [{int(arr.min())}, {int(arr.max())}]")
    return arr.astype(dtype, copy=False)


def read_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a label file of the prepared layout (or a ``<stem>.labels.npz`` prediction).

    Args:
        path: An ``.npz`` holding ``inst_map`` and ``type_map``.

    Returns:
        ``(inst_map int32 [H, W], type_map uint8 [H, W])``.

    Raises:
        ReadError: (a :class:`DataError`) missing, unreadable, not an npz, a missing key, pickled objects,
            wrong dimensions, non-integer or negative values, different shapes.
    """
    p = check_file(path)
    try:
        npz = np.load(p, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ReadError(f"{p}: not an .npz archive (expected arrays {', '.join(LABEL_KEYS)})")
        with npz:
            missing = [k for k in LABEL_KEYS if k not in npz.files]
            if missing:
                raise ReadError(f"{p}: missing array(s) {', '.join(missing)} (has {', '.join(npz.files) or 'none'})")
            inst, types = npz["inst_map"], npz["type_map"]
    except ReadError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ReadError(f"{p}: not a readable label .npz ({type(err).__name__}: {err})") from None
    inst = _as_int_map(inst, p, "inst_map", np.int32, np.iinfo(np.int32).max)
    types = _as_int_map(types, p, "type_map", np.uint8, 255)
    if inst.shape != types.shape:
        raise ReadError(f"{p}: inst_map shape {inst.shape} != type_map shape {types.shape}")
    return inst, types


def label_problem(inst_map: np.ndarray, type_map: np.ndarray, num_classes: int) -> str | None:
    """Why a label pair is inconsistent, or None.

    Checks: type values in ``0..num_classes``; background in one map is background in the other; every
    instance has exactly one type.

    Args:
        inst_map: int [H, W].
        type_map: int [H, W].
        num_classes: C.
    """
    tmax = int(type_map.max()) if type_map.size else 0
    if tmax > num_classes:
        return f"type_map has value {tmax}, above the {num_classes} classes declared"
    fg_inst, fg_type = inst_map > 0, type_map > 0
    if not np.array_equal(fg_inst, fg_type):
        n = int(np.count_nonzero(fg_inst != fg_type))
        return f"{n} pixel(s) are nucleus in one of inst_map/type_map and background in the other"
    if not fg_inst.any():
        return None
    ids = inst_map[fg_inst].astype(np.int64)
    pairs = np.unique(ids * 256 + type_map[fg_inst].astype(np.int64))
    n_ids = np.unique(ids).size
    if pairs.size != n_ids:
        mixed = np.unique(pairs // 256, return_counts=True)
        bad = mixed[0][mixed[1] > 1][:5].tolist()
        return f"instance(s) {bad} have pixels of more than one type"
    return None
