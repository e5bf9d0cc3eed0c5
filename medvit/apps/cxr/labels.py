"""Chest X-ray label tables as they ship, read into ``(list[Sample], LabelSpace)`` for the classification core.

Readers, one per release (all multi-label; a target is float32 ``[C]`` of 0/1 with ``NaN`` = ignore):

* :func:`read_chestxray14` - ChestX-ray14 (NIH; Wang et al., CVPR 2017): ``Data_Entry_2017.csv`` (or the
  ``_v2020`` table) with ``Finding Labels`` joined by ``|`` (``No Finding`` = all negative), the official
  ``train_val_list.txt`` / ``test_list.txt``; the 14 findings in the order of the paper (and of medical_mae's
  loader); ``Patient ID`` is the group, so validation hold-outs are patient-wise.
* :func:`read_chexpert` - CheXpert (Irvin et al., AAAI 2019): ``train.csv`` / ``valid.csv``; by default the five
  competition findings and frontal views only; uncertain labels (``-1``) mapped by a policy (:data:`UNCERTAIN`);
  blanks are 0 (negative), as medical_mae reads them. The patient folder (``patientNNNNN``) is the group.
* :func:`read_mimic_cxr` - MIMIC-CXR-JPG (Johnson et al., 2019): the study-level CheXpert or NegBio label table
  (``mimic-cxr-2.0.0-chexpert.csv(.gz)`` / ``-negbio``) joined with the split table on ``subject_id`` and
  ``study_id``, images at ``files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg``, views from the metadata table.
  Same uncertain-label policies and defaults as CheXpert; ``subject_id`` is the group.
* :func:`read_label_csv` - a generic CSV: one path column and one 0/1 column per finding (blank = ignore). The
  ``labels.csv`` of ``medvit data synth cxr`` is one.

:func:`read_cxr_dataset` picks the reader from what it is given (a folder in one of the release layouts, a folder
holding ``labels.csv``, or a CSV file recognised by its header). Every problem with a table raises
:class:`~medvit.shared.errors.DataError` naming the file (and line and column where there is one).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medvit.shared.classify.labels import LabelSpace, Sample
from medvit.shared.data.folders import detect_cxr_layout, find_cxr_images, read_csv_rows
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "CHESTXRAY14_FINDINGS",
    "CHEXPERT_COMPETITION",
    "CHEXPERT_OBSERVATIONS",
    "FORMATS",
    "REFERENCE_U_ONES",
    "UNCERTAIN",
    "read_chestxray14",
    "read_chexpert",
    "read_cxr_dataset",
    "read_label_csv",
    "read_mimic_cxr",
]

CHESTXRAY14_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""The 14 ChestX-ray14 findings, in the order of Wang et al. (and of medical_mae's label vectors)."""

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 observations of the CheXpert labeler (CheXpert and MIMIC-CXR-JPG tables), in the tables' order."""

CHEXPERT_COMPETITION: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
"""The five CheXpert competition findings (Irvin et al.), the default label set of CheXpert and MIMIC."""

UNCERTAIN: tuple[str, ...] = ("reference", "ones", "zeros", "ignore")
"""Policies for uncertain (``-1``) labels: ``ones`` (U-Ones), ``zeros`` (U-Zeros), ``ignore`` (NaN: the loss and
the metrics skip that finding for that image), ``reference`` (medical_mae's CheXpert reading: U-Ones for
:data:`REFERENCE_U_ONES`, U-Zeros for the rest)."""

REFERENCE_U_ONES: frozenset[str] = frozenset({"Atelectasis", "Edema"})
"""Findings whose uncertain labels the ``reference`` policy maps to 1."""

FORMATS: tuple[str, ...] = ("auto", "chestxray14", "chexpert", "mimic", "csv")
"""Values of ``dataset.format``: which reader :func:`read_cxr_dataset` uses (``auto``: recognised)."""

_NIH_TABLES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
_NIH_SPLITS = {"train": "train_val_list.txt", "test": "test_list.txt"}
_MIMIC_LABELS = (
    "mimic-cxr-2.0.0-chexpert.csv.gz",
    "mimic-cxr-2.0.0-chexpert.csv",
    "mimic-cxr-2.0.0-negbio.csv.gz",
    "mimic-cxr-2.0.0-negbio.csv",
)
_MIMIC_SPLIT = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
_MIMIC_META = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
_PATH_COLUMNS = ("path", "Path", "image", "Image", "filename", "file", "Image Index")
_GROUP_COLUMNS = ("group", "patient", "patient_id", "Patient ID", "subject_id")
_META_COLUMNS = frozenset(
    {"split", "Sex", "Age", "Frontal/Lateral", "AP/PA", "view", "View Position", "ViewPosition", "study_id"}
)
_FRONTAL = frozenset({"PA", "AP", "FRONTAL"})
_PATIENT = re.compile(r"patient(\d+)", re.I)


# --------------------------------------------------------------------------------------------------------------
# small helpers


def _first(root: Path, names: Iterable[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _header(path: Path) -> list[str]:
    """Column names of a CSV (or ``.csv.gz``) without reading it all."""
    import csv
    import gzip

    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
                return next(csv.reader(fh), [])
        with open(path, encoding="utf-8", newline="") as fh:
            return next(csv.reader(fh), [])
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise DataError(f"{path}: cannot read the CSV ({type(exc).__name__})") from None


def _select(available: Sequence[str], wanted: Sequence[str] | None, default: Sequence[str], where: str) -> list[str]:
    """The findings to read: ``wanted`` (``["all"]`` = every available one) or ``default``; unknown names fail."""
    if not wanted:
        wanted = [d for d in default if d in available]
        if not wanted:
            raise DataError(f"{where}: none of the default findings {list(default)} is in the table")
        return list(wanted)
    if list(wanted) == ["all"]:
        return list(available)
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise DataError(f"{where}: unknown findings {unknown}; the table has {list(available)}")
    return list(wanted)


def _check_policy(policy: str) -> None:
    if policy not in UNCERTAIN:
        raise DataError(f"uncertain-label policy must be one of {', '.join(UNCERTAIN)}, got {policy!r}")


def uncertain_value(finding: str, policy: str) -> float:
    """What an uncertain (``-1``) label of ``finding`` becomes under ``policy`` (see :data:`UNCERTAIN`)."""
    if policy == "ones":
        return 1.0
    if policy == "zeros":
        return 0.0
    if policy == "ignore":
        return math.nan
    return 1.0 if finding in REFERENCE_U_ONES else 0.0


def _chexpert_vector(row: Mapping[str, str], findings: Sequence[str], policy: str, where: str) -> np.ndarray:
    """One CheXpert-labeler row (1, 0, -1 or blank per finding) as a target ``[C]``; blank = 0."""
    out = np.zeros(len(findings), np.float32)
    for i, name in enumerate(findings):
        raw = (row.get(name) or "").strip()
        if not raw:
            continue  # blank: not mentioned in the report, read as negative (medical_mae)
        try:
            v = float(raw)
        except ValueError:
            raise DataError(f"{where}: column {name!r}: {raw!r} is not 1, 0, -1 or blank") from None
        if v == 1.0 or v == 0.0:
            out[i] = v
        elif v == -1.0:
            out[i] = uncertain_value(name, policy)
        else:
            raise DataError(f"{where}: column {name!r}: {raw!r} is not 1, 0, -1 or blank")
    return out


def _binary_value(raw: str, where: str, column: str) -> float:
    """A generic CSV cell: 1/0 (also ``1.0``, ``true``/``false``, ``yes``/``no``), blank = NaN (ignore)."""
    s = raw.strip().lower()
    if s in ("", "nan", "na", "-"):
        return math.nan
    if s in ("1", "1.0", "true", "yes", "y"):
        return 1.0
    if s in ("0", "0.0", "false", "no", "n"):
        return 0.0
    raise DataError(f"{where}: column {column!r}: {raw!r} is not a 0/1 label (blank = unknown)")


# --------------------------------------------------------------------------------------------------------------
# ChestX-ray14


def read_chestxray14(
    root: str | Path,
    *,
    split: str | None = "train",
    findings: Sequence[str] | None = None,
    table: str | Path | None = None,
) -> tuple[list[Sample], LabelSpace]:
    """Read the ChestX-ray14 release (see the module docstring).

    Args:
        root: The release folder (images in ``images/`` or ``images_0NN/images/``).
        split: ``"train"`` (``train_val_list.txt``), ``"test"`` (``test_list.txt``) or ``None`` (every row).
        findings: Findings to keep, in order (default the 14; ``["all"]`` the same).
        table: The ``Data_Entry`` CSV when it is not in ``root``.

    Returns:
        ``(samples, label space)``; sample keys are image paths relative to ``root``, groups the patient IDs.

    Raises:
        DataError: Missing table or split list, an unknown finding in ``Finding Labels``, no image found.
    """
    r = Path(root)
    csv_path = Path(table) if table is not None else _first(r, _NIH_TABLES)
    if csv_path is None:
        raise DataError(f"{r}: no Data_Entry_2017.csv (ChestX-ray14 label table) in the folder")
    names = _select(CHESTXRAY14_FINDINGS, findings, CHESTXRAY14_FINDINGS, str(csv_path))
    labels = LabelSpace("multilabel", tuple(names))
    wanted: set[str] | None = None
    if split is not None:
        if split not in _NIH_SPLITS:
            raise DataError(f"{r}: ChestX-ray14 splits are {', '.join(_NIH_SPLITS)}; got {split!r}")
        list_file = r / _NIH_SPLITS[split]
        if not list_file.is_file():
            raise DataError(f"{list_file}: split list not found (the release ships train_val_list.txt, test_list.txt)")
        wanted = set(list_file.read_text(encoding="utf-8").split())
    files = {im.path.name: im for im in find_cxr_images(r, layout="chestxray14", frontal_only=False).images}
    samples, missing = [], 0
    for line, row in enumerate(read_csv_rows(csv_path), start=2):
        name = (row.get("Image Index") or "").strip()
        if not name:
            raise DataError(f"{csv_path}: line {line}: no 'Image Index' (is this a ChestX-ray14 Data_Entry table?)")
        if wanted is not None and name not in wanted:
            continue
        found = set(filter(None, (f.strip() for f in (row.get("Finding Labels") or "").split("|"))))
        unknown = found - set(CHESTXRAY14_FINDINGS) - {"No Finding"}
        if unknown:
            raise DataError(f"{csv_path}: line {line}: unknown finding(s) {sorted(unknown)} in 'Finding Labels'")
        image = files.get(name)
        if image is None:
            missing += 1
            continue
        target = np.array([float(n in found) for n in names], np.float32)
        group = (row.get("Patient ID") or "").strip() or None
        samples.append(Sample(image.path, target, group=group, key=image.rel))
    return _finish(samples, labels, missing, csv_path), labels


def _finish(samples: list[Sample], labels: LabelSpace, missing: int, where: Path) -> list[Sample]:
    if missing:
        logger.warning("%s: %d listed images not found on disk were skipped", where, missing)
    if not samples:
        raise DataError(f"{where}: no labelled image found ({missing} listed images missing on disk)")
    logger.info("%s: %d images, findings %s", where, len(samples), ", ".join(labels.classes))
    return samples


# --------------------------------------------------------------------------------------------------------------
# CheXpert


def _chexpert_release(root: Path) -> Path:
    if (root / "train.csv").is_file() or (root / "valid.csv").is_file():
        return root
    for sub in sorted(root.glob("CheXpert-v1.0*")):
        if (sub / "train.csv").is_file() or (sub / "valid.csv").is_file():
            return sub
    raise DataError(f"{root}: no CheXpert train.csv / valid.csv in the folder or a CheXpert-v1.0* subfolder")


def _chexpert_file(release: Path, listed: str) -> Path:
    parts = Path(listed).parts
    if parts and parts[0].lower().startswith("chexpert"):
        return release.joinpath(*parts[1:])
    return release / listed


def read_chexpert(
    root: str | Path,
    *,
    split: str = "train",
    findings: Sequence[str] | None = None,
    uncertain: str = "reference",
    frontal_only: bool = True,
    table: str | Path | None = None,
) -> tuple[list[Sample], LabelSpace]:
    """Read a CheXpert label table (see the module docstring).

    Args:
        root: The release folder (``CheXpert-v1.0-small``) or its parent.
        split: ``"train"`` (``train.csv``) or ``"valid"`` (``valid.csv``); ignored with ``table``.
        findings: Findings to keep (default the five competition findings; ``["all"]`` all 14).
        uncertain: Policy for ``-1`` labels (:data:`UNCERTAIN`).
        frontal_only: Keep frontal views only (``Frontal/Lateral`` column).
        table: A CSV in CheXpert's format to read instead of the split's.

    Returns:
        ``(samples, label space)``; keys are paths relative to the release folder, groups the patient folders.

    Raises:
        DataError: Missing table, bad label values (file, line and column named), no image found.
    """
    _check_policy(uncertain)
    if table is not None:
        csv_path, release = Path(table), Path(root)
    else:
        release = _chexpert_release(Path(root))
        if split not in ("train", "valid", "test"):
            raise DataError(f"{release}: CheXpert splits are train, valid, test; got {split!r}")
        csv_path = release / f"{split}.csv"
    header = _header(csv_path)
    if "Path" not in header:
        raise DataError(f"{csv_path}: no 'Path' column (is this a CheXpert table?)")
    names = _select([h for h in header if h in CHEXPERT_OBSERVATIONS], findings, CHEXPERT_COMPETITION, str(csv_path))
    labels = LabelSpace("multilabel", tuple(names))
    samples, missing = [], 0
    for line, row in enumerate(read_csv_rows(csv_path), start=2):
        view = (row.get("Frontal/Lateral") or "").strip().upper()
        if frontal_only and view and view not in _FRONTAL:
            continue
        path = _chexpert_file(release, row.get("Path", "").strip())
        target = _chexpert_vector(row, names, uncertain, f"{csv_path}: line {line}")
        if not path.is_file():
            missing += 1
            continue
        m = _PATIENT.search(path.as_posix())
        key = path.relative_to(release).as_posix() if path.is_relative_to(release) else str(path)
        samples.append(Sample(path, target, group=m.group(0) if m else None, key=key))
    return _finish(samples, labels, missing, csv_path), labels


# --------------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG


def _mimic_image(root: Path, subject: str, study: str, dicom_id: str) -> Path:
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"


def _mimic_tables(root: Path, labels_csv: Path | None, split_csv: Path | None) -> tuple[Path, Path]:
    lab = labels_csv or _first(root, _MIMIC_LABELS)
    spl = split_csv or _first(root, _MIMIC_SPLIT)
    if lab is None:
        raise DataError(f"{root}: no mimic-cxr-2.0.0-chexpert.csv(.gz) or -negbio.csv(.gz) label table")
    if spl is None:
        raise DataError(f"{root}: no mimic-cxr-2.0.0-split.csv(.gz) (dicom_id, study_id, subject_id, split)")
    return lab, spl


def read_mimic_cxr(
    root: str | Path,
    *,
    split: str | None = "train",
    findings: Sequence[str] | None = None,
    uncertain: str = "reference",
    frontal_only: bool = True,
    labels_csv: str | Path | None = None,
    split_csv: str | Path | None = None,
) -> tuple[list[Sample], LabelSpace]:
    """Read MIMIC-CXR-JPG: study labels joined with the split table on ``(subject_id, study_id)``.

    Args:
        root: The release folder (``files/`` and the tables).
        split: ``"train"``, ``"validate"``, ``"test"`` or ``None`` (all).
        findings: Findings to keep (default the five CheXpert competition findings; ``["all"]`` all 14).
        uncertain: Policy for ``-1`` labels (:data:`UNCERTAIN`).
        frontal_only: Keep AP/PA views (from ``mimic-cxr-2.0.0-metadata.csv(.gz)``; without it, all views).
        labels_csv: The CheXpert or NegBio label table (default: found in ``root``).
        split_csv: The split table (default: found in ``root``).

    Returns:
        ``(samples, label space)``; keys are paths relative to ``root``, groups the ``subject_id``.

    Raises:
        DataError: Missing tables or columns, bad label values, no image found.
    """
    _check_policy(uncertain)
    r = Path(root)
    lab, spl = _mimic_tables(r, Path(labels_csv) if labels_csv else None, Path(split_csv) if split_csv else None)
    header = _header(lab)
    if "subject_id" not in header or "study_id" not in header:
        raise DataError(f"{lab}: needs subject_id and study_id columns (MIMIC-CXR label table)")
    names = _select([h for h in header if h in CHEXPERT_OBSERVATIONS], findings, CHEXPERT_COMPETITION, str(lab))
    labels = LabelSpace("multilabel", tuple(names))
    studies = {}
    for line, row in enumerate(read_csv_rows(lab), start=2):
        key = (row["subject_id"].strip(), row["study_id"].strip())
        studies[key] = _chexpert_vector(row, names, uncertain, f"{lab}: line {line}")
    views: dict[str, str] = {}
    meta = _first(r, _MIMIC_META)
    if frontal_only and meta is not None:
        views = {row["dicom_id"]: (row.get("ViewPosition") or "").strip().upper() for row in read_csv_rows(meta)}
    elif frontal_only:
        logger.warning("%s: no metadata table, so views are unknown and lateral views are included", r)
    samples, missing = [], 0
    for line, row in enumerate(read_csv_rows(spl), start=2):
        try:
            dicom_id, subject, study = row["dicom_id"].strip(), row["subject_id"].strip(), row["study_id"].strip()
        except (KeyError, AttributeError):
            raise DataError(f"{spl}: line {line}: needs dicom_id, subject_id and study_id") from None
        if split is not None and (row.get("split") or "").strip() != split:
            continue
        if views and views.get(dicom_id) not in _FRONTAL:
            continue
        target = studies.get((subject, study))
        if target is None:
            continue  # study without labels (the labelers skip a few reports)
        path = _mimic_image(r, subject, study, dicom_id)
        if not path.is_file():
            missing += 1
            continue
        samples.append(Sample(path, target.copy(), group=subject, key=path.relative_to(r).as_posix()))
    return _finish(samples, labels, missing, spl), labels


# --------------------------------------------------------------------------------------------------------------
# generic CSV


def _path_column(header: Sequence[str], where: Path) -> str:
    col = next((c for c in _PATH_COLUMNS if c in header), None)
    if col is None:
        if not header:
            raise DataError(f"{where}: empty CSV (no header row)")
        col = header[0]
    return col


def resolve_path(value: str, base: Path) -> Path:
    """A path cell: absolute as given, else relative to ``base`` (the CSV's folder or the image root)."""
    p = Path(value)
    return p if p.is_absolute() else base / p


def read_label_csv(
    csv_path: str | Path,
    *,
    findings: Sequence[str] | None = None,
    root: str | Path | None = None,
    uncertain: str | None = None,
) -> tuple[list[Sample], LabelSpace]:
    """Read a generic multi-label CSV: a path column and one 0/1 column per finding.

    The path column is the first of ``path``, ``Path``, ``image``, ``filename``, ``file``, ``Image Index`` (else
    the first column); a ``group`` / ``patient_id`` / ``Patient ID`` / ``subject_id`` column, if any, gives the
    patient. Every other column is a finding, except ``split`` and view/demographic columns.

    Args:
        csv_path: The table.
        findings: Columns to read as findings, in order (default: all finding columns).
        root: Folder relative paths are resolved against (default: the CSV's folder).
        uncertain: When given, ``-1`` cells are uncertain labels mapped by this policy (:data:`UNCERTAIN`);
            otherwise ``-1`` is an error.

    Returns:
        ``(samples, label space)``; keys are the path cells as written.

    Raises:
        DataError: No finding column, a cell that is not 0/1/blank (file, line and column named), a missing image.
    """
    p = Path(csv_path)
    header = _header(p)
    path_col = _path_column(header, p)
    group_col = next((c for c in _GROUP_COLUMNS if c in header and c != path_col), None)
    candidates = [c for c in header if c not in (path_col, group_col) and c not in _META_COLUMNS and c.strip()]
    if not candidates:
        raise DataError(f"{p}: no label columns besides {path_col!r} (expected path + one 0/1 column per finding)")
    names = _select(candidates, findings, candidates, str(p))
    if uncertain is not None:
        _check_policy(uncertain)
    base = Path(root) if root is not None else p.parent
    samples = []
    for line, row in enumerate(read_csv_rows(p), start=2):
        where = f"{p}: line {line}"
        cell = (row.get(path_col) or "").strip()
        if not cell:
            raise DataError(f"{where}: empty {path_col!r}")
        target = np.array([_cell(row.get(n) or "", n, uncertain, where) for n in names], np.float32)
        source = resolve_path(cell, base)
        if not source.exists():
            raise DataError(f"{where}: image {cell!r} not found (relative paths are read from {base})")
        group = (row.get(group_col) or "").strip() or None if group_col else None
        samples.append(Sample(source, target, group=group, key=cell))
    if not samples:
        raise DataError(f"{p}: no rows")
    return samples, LabelSpace("multilabel", tuple(names))


def _cell(raw: str, column: str, uncertain: str | None, where: str) -> float:
    if uncertain is not None and raw.strip() in ("-1", "-1.0"):
        return uncertain_value(column, uncertain)
    return _binary_value(raw, where, column)


# --------------------------------------------------------------------------------------------------------------
# dispatch


def detect_format(path: str | Path) -> str:
    """Which reader fits ``path``: ``chestxray14``, ``chexpert``, ``mimic`` or ``csv`` (see :data:`FORMATS`).

    Raises:
        DataError: ``path`` does not exist, or a folder without any label table.
    """
    p = Path(path)
    if p.is_file():
        header = set(_header(p))
        if {"Image Index", "Finding Labels"} <= header:
            return "chestxray14"
        if "Path" in header and header & set(CHEXPERT_OBSERVATIONS):
            return "chexpert"
        if {"subject_id", "study_id"} <= header and header & set(CHEXPERT_OBSERVATIONS):
            return "mimic"
        return "csv"
    if not p.is_dir():
        raise DataError(f"{p}: not found")
    layout = detect_cxr_layout(p)
    if layout == "chestxray14":
        return "chestxray14"
    if layout == "chexpert":
        return "chexpert"
    if layout == "mimic-cxr-jpg" or _first(p, _MIMIC_LABELS) is not None:
        return "mimic"
    if (p / "labels.csv").is_file():
        return "csv"
    raise DataError(f"{p}: no label table found (ChestX-ray14, CheXpert, MIMIC-CXR-JPG layout or a labels.csv)")


def read_cxr_dataset(
    path: str | Path,
    *,
    format: str = "auto",
    split: str | None = None,
    findings: Sequence[str] | None = None,
    uncertain: str = "reference",
    frontal_only: bool = True,
) -> tuple[list[Sample], LabelSpace]:
    """Read labelled chest X-rays from a release folder, a folder with ``labels.csv``, or a CSV file.

    Args:
        path: Folder or CSV.
        format: One of :data:`FORMATS`.
        split: The release split (ChestX-ray14 ``train``/``test``; CheXpert ``train``/``valid``; MIMIC
            ``train``/``validate``/``test``); ``None`` = the release's training split. Ignored for a generic CSV.
        findings: Findings to keep, in order (default: the release's set, see each reader).
        uncertain: Policy for uncertain labels (CheXpert, MIMIC).
        frontal_only: Frontal views only (CheXpert, MIMIC).

    Returns:
        ``(samples, label space)``.

    Raises:
        DataError: As the readers.
    """
    p = Path(path)
    kind = detect_format(p) if format == "auto" else format
    if kind not in FORMATS[1:]:
        raise DataError(f"unknown dataset format {format!r}; choose from {', '.join(FORMATS)}")
    is_file = p.is_file()
    if kind == "chestxray14":
        root = p.parent if is_file else p
        return read_chestxray14(root, split=split or "train", findings=findings, table=p if is_file else None)
    if kind == "chexpert":
        return read_chexpert(
            p.parent if is_file else p,
            split=split or "train",
            findings=findings,
            uncertain=uncertain,
            frontal_only=frontal_only,
            table=p if is_file else None,
        )
    if kind == "mimic":
        return read_mimic_cxr(
            p.parent if is_file else p,
            split=split or "train",
            findings=findings,
            uncertain=uncertain,
            frontal_only=frontal_only,
            labels_csv=p if is_file else None,
        )
    return read_label_csv(p if is_file else p / "labels.csv", findings=findings)
