"""``cell evaluate``: nucleus instance metrics of predicted label files against reference labels.

Predictions are the ``<stem>.labels.npz`` files that ``cell predict`` writes (found recursively under PRED; keys
``inst_map`` int32 ``[H, W]`` and ``type_map`` uint8 ``[H, W]``). The reference is either

* a prepared dataset (a folder whose ``dataset.json`` says ``"format": "medvit-cells"``): the images of one fold
  (``fold``) or of the test folds of one split (``split``) are read from ``FOLD/labels/<stem>.npz``, their
  tissues from ``FOLD/types.csv``, the class names from ``nuclei_types`` and the magnification from
  ``magnification``; or
* a plain folder of ``<stem>.npz`` label files (same keys); no tissue is known, so the PanNuke tissue average is
  not computed and the summary says so.

Pairs are matched by stem (``<stem>.labels.npz`` <-> ``<stem>.npz``). A reference image without a prediction is
an error naming up to five stems: a prediction run that skipped or lost images would otherwise score better than
one that tried them all. With ``allow_missing`` such an image is scored as an empty prediction (every nucleus
missed), listed in the summary and flagged in ``metrics.csv``. A prediction without a reference is ignored with a
warning (predicting a whole folder and scoring the labelled part is normal).

Outputs, written atomically into OUT (default PRED): ``metrics.csv`` (one row per image), ``summary.json`` (image
and tissue averages of bPQ / mPQ, per-class PQ, CoNIC mPQ+, binary Dice, AJI, detection F1 and per-class F1, the
NaN rules, counts) and ``per_class_pq.png``. The metric definitions and NaN rules are those of
:mod:`medvit.shared.metrics.instance`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medvit.shared.data.io import list_folder
from medvit.shared.engine.progress import ItemProgress
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.files import atomic_path, write_csv_atomic, write_json_atomic
from medvit.shared.metrics.instance import (
    NAN_RULES,
    DetectionTally,
    ImageScores,
    detection_radius,
    detection_scores,
    image_average,
    mpq_plus,
    score_image,
    tissue_average,
)

logger = logging.getLogger(__name__)

__all__ = ["MATCH_IOU", "PRED_SUFFIX", "evaluate", "read_label_file"]

PRED_SUFFIX = ".labels.npz"
"""Name ending of the prediction files (``<stem>.labels.npz``)."""

MATCH_IOU = 0.5
"""PQ pairing threshold (IoU strictly above)."""

_DATASET_FORMAT = "medvit-cells"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npz")
_MAX_LISTED = 5


@dataclass
class _Reference:
    """The reference side of an evaluation."""

    files: dict[str, Path]  # stem -> label file
    kind: str  # "dataset" or "folder"
    folds: list[str] = field(default_factory=list)
    fold_of: dict[str, str] = field(default_factory=dict)
    tissues: dict[str, str] | None = None  # stem -> tissue; None: tissue average unavailable
    tissue_note: str = ""
    class_names: list[str] | None = None
    magnification: float | None = None


def evaluate(
    pred: str | Path,
    gt: str | Path,
    *,
    out: str | Path | None = None,
    fold: str | None = None,
    split: str | int | None = None,
    magnification: float | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    allow_missing: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Score every reference image against its prediction; write ``metrics.csv``, ``summary.json``, a bar plot.

    Args:
        pred: folder searched recursively for ``<stem>.labels.npz``.
        gt: prepared dataset folder (with ``dataset.json``) or plain folder of ``<stem>.npz`` label files.
        out: output folder (default ``pred``).
        fold: the dataset fold to score (prepared datasets only).
        split: score the test folds of this split of ``dataset.json`` (prepared datasets only).
        magnification: objective magnification of the images, for the detection radius (12 px at 40x, 6 px at
            20x); default the dataset's ``magnification``, else 40.
        num_classes: C (default: ``class_names``, the dataset's ``nuclei_types``, else the largest type id found).
        class_names: names of classes 1..C (default: the dataset's, else ``class_1``...).
        allow_missing: score a reference image without prediction as an empty prediction instead of failing.
        quiet: no progress bar.

    Returns:
        The summary as written to ``summary.json`` (NaN as ``None``).

    Raises:
        DataError: unreadable or inconsistent files (naming the file), missing predictions, an unknown fold or
            split.
        ConfigError: contradictory or invalid options (``fold`` and ``split``; ``num_classes`` and
            ``class_names``; a dataset of several folds without ``fold`` / ``split``).
    """
    pred_dir, gt_path = Path(pred), Path(gt)
    if magnification is not None and not (math.isfinite(magnification) and magnification > 0):
        raise ConfigError(f"magnification must be a positive number, got {magnification}")
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    ref = _reference(gt_path, fold, split)
    preds = _prediction_files(pred_dir)
    missing, ignored = _check_pairs(ref, preds, pred_dir, allow_missing=allow_missing)
    names = _class_names(ref, preds, num_classes, class_names)
    mag = float(magnification or ref.magnification or 40)
    radius = detection_radius(mag)
    scores = _score_all(ref, preds, len(names), radius, quiet=quiet)
    rows = _rows(ref, scores, names, set(missing))
    summary = _summary(ref, scores, names, rows)
    summary.update(
        {
            "pred": str(pred_dir),
            "gt": str(gt_path),
            "magnification": mag,
            "match_iou": MATCH_IOU,
            "detection_radius_px": radius,
        }
    )
    summary["counts"].update(
        {
            "missing_predictions": len(missing),
            "missing_stems": missing,
            "ignored_predictions": len(ignored),
        }
    )
    summary = _finite(summary)
    _write_outputs(Path(out) if out is not None else pred_dir, rows, summary, names)
    ia = summary["image_average"]
    logger.info("evaluate: %d images, bPQ %s, mPQ %s (image average)", len(rows), ia["bPQ"], ia["mPQ"])
    return summary


# =============================================================================================== label files
def read_label_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(inst_map int64 [H, W], type_map int64 [H, W])`` of a label ``.npz`` (never unpickled).

    Raises:
        DataError: the file cannot be read, lacks a key, or holds arrays of the wrong kind (naming the file).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an .npz archive")
            absent = [k for k in ("inst_map", "type_map") if k not in z.files]
            if absent:
                raise DataError(f"{path}: no {' / '.join(absent)} array (has: {', '.join(z.files) or 'nothing'})")
            inst, types = z["inst_map"], z["type_map"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path}: not a readable label file ({type(exc).__name__}: {exc})") from None
    for key, arr in (("inst_map", inst), ("type_map", types)):
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{path}: {key} must be an integer [H, W] array, got {arr.dtype} {arr.shape}")
        if arr.size and arr.min() < 0:
            raise DataError(f"{path}: {key} has negative values")
    if inst.shape != types.shape:
        raise DataError(f"{path}: inst_map {inst.shape} and type_map {types.shape} differ in shape")
    return inst.astype(np.int64), types.astype(np.int64)


def _prediction_files(pred_dir: Path) -> dict[str, Path]:
    """stem -> ``<stem>.labels.npz`` under ``pred_dir`` (recursive, hidden folders skipped)."""
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(pred_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.endswith(PRED_SUFFIX) or name.startswith("."):
                continue
            stem, path = name[: -len(PRED_SUFFIX)], Path(root) / name
            if stem in found:
                raise DataError(f"{path}: a second prediction for {stem!r} (first: {found[stem]})")
            found[stem] = path
    return found


# ================================================================================================= reference
def _read_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object")
    return info


def _reference(gt: Path, fold: str | None, split: str | int | None) -> _Reference:
    if not gt.is_dir():
        raise DataError(f"{gt}: reference folder not found")
    if fold is not None and split is not None:
        raise ConfigError("give either --fold or --split, not both")
    if (gt / "dataset.json").is_file():
        return _dataset_reference(gt, fold, split)
    if fold is not None or split is not None:
        raise ConfigError(f"--fold/--split need a prepared dataset, and {gt} has no dataset.json")
    files = _label_files(gt)
    note = "the reference is a plain folder of label files: no tissue types, so no tissue average"
    return _Reference(files=files, kind="folder", fold_of=dict.fromkeys(files, ""), tissue_note=note)


def _label_files(folder: Path) -> dict[str, Path]:
    files = {p.name[: -len(".npz")]: p for p in list_folder(folder) if p.name.endswith(".npz") and not p.is_dir()}
    if not files:
        raise DataError(f"{folder}: no <stem>.npz label files")
    return files


def _folds_to_score(js: Path, info: Mapping[str, Any], fold: str | None, split: str | int | None) -> list[str]:
    folds = [str(f) for f in info.get("folds") or []]
    if fold is not None:
        if fold not in folds:
            raise DataError(f"{js}: no fold {fold!r} (folds: {', '.join(folds) or 'none'})")
        return [fold]
    if split is not None:
        splits = info.get("splits") or {}
        entry = splits.get(str(split))
        if not isinstance(entry, dict) or not entry.get("test"):
            raise DataError(f"{js}: no split {split!r} with test folds (splits: {', '.join(map(str, splits))})")
        return [str(f) for f in entry["test"]]
    if len(folds) == 1:
        return folds
    raise ConfigError(f"{js}: the dataset has folds {', '.join(folds)}: choose one with --fold or --split")


def _dataset_reference(gt: Path, fold: str | None, split: str | int | None) -> _Reference:
    js = gt / "dataset.json"
    info = _read_json(js)
    if info.get("format") != _DATASET_FORMAT:
        raise DataError(f"{js}: format is {info.get('format')!r}, expected {_DATASET_FORMAT!r}")
    folds = _folds_to_score(js, info, fold, split)
    ref = _Reference(files={}, kind="dataset", folds=folds)
    tissues: dict[str, str] = {}
    notes: list[str] = []
    for f in folds:
        for stem, path in _label_files(gt / f / "labels").items():
            if stem in ref.files:
                raise DataError(f"{path}: image {stem!r} is also in {ref.files[stem]}")
            ref.files[stem], ref.fold_of[stem] = path, f
        fold_tissues, note = _read_tissues(gt / f / "types.csv")
        tissues.update(fold_tissues)
        notes += [note] if note else []
    untyped = sorted(set(ref.files) - set(tissues))
    if untyped and not notes:
        notes.append(f"no tissue listed for {len(untyped)} images (e.g. {', '.join(untyped[:_MAX_LISTED])})")
    if notes:
        ref.tissue_note = "; ".join(notes) + ": no tissue average"
    else:
        ref.tissues = tissues
    names = info.get("nuclei_types")
    if isinstance(names, list) and len(names) > 1:
        ref.class_names = [str(n) for n in names[1:]]
    mag = info.get("magnification")
    if isinstance(mag, (int, float)) and not isinstance(mag, bool) and math.isfinite(mag) and mag > 0:
        ref.magnification = float(mag)
    return ref


def _read_tissues(path: Path) -> tuple[dict[str, str], str]:
    """``({stem: tissue}, "")`` from a ``types.csv`` (``img,tissue``); ``({}, why)`` when the file is absent."""
    if not path.is_file():
        return {}, f"{path} not found"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not {"img", "tissue"} <= set(reader.fieldnames or []):
                raise DataError(f"{path}: expected the columns img,tissue, got {','.join(reader.fieldnames or [])}")
            out = {}
            for row in reader:
                img = str(row["img"] or "")
                stem = img.rsplit(".", 1)[0] if img.lower().endswith(_IMAGE_SUFFIXES) else img
                out[stem] = str(row["tissue"] or "")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    return out, ""


def _check_pairs(
    ref: _Reference, preds: Mapping[str, Path], pred_dir: Path, *, allow_missing: bool
) -> tuple[list[str], list[str]]:
    """``(missing, ignored)`` stems; a missing prediction is an error unless ``allow_missing``."""
    missing = sorted(set(ref.files) - set(preds))
    ignored = sorted(set(preds) - set(ref.files))
    if missing and not allow_missing:
        listed = ", ".join(missing[:_MAX_LISTED])
        if len(missing) > _MAX_LISTED:
            listed += f" and {len(missing) - _MAX_LISTED} more"
        raise DataError(
            f"{pred_dir}: no {PRED_SUFFIX} prediction for {len(missing)} of {len(ref.files)} reference images "
            f"({listed}); predict them, or allow missing predictions to score them as empty"
        )
    if missing:
        logger.warning("%d reference images have no prediction and are scored as empty: %s", len(missing), missing)
    if ignored:
        logger.warning(
            "%d predictions have no reference image and are ignored (e.g. %s)",
            len(ignored),
            ", ".join(ignored[:_MAX_LISTED]),
        )
    return missing, ignored


def _class_names(
    ref: _Reference, preds: Mapping[str, Path], num_classes: int | None, class_names: Sequence[str] | None
) -> list[str]:
    """Names of classes 1..C from the options, the dataset, or (last) the largest type id in the files."""
    if class_names is not None:
        names = [str(n) for n in class_names]
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(f"num_classes {num_classes} != {len(names)} class names")
        return names
    if num_classes is None and ref.class_names:
        return list(ref.class_names)
    if num_classes is None:
        num_classes = 1
        for stem, path in ref.files.items():
            for p in (path, preds.get(stem)):
                if p is not None:
                    num_classes = max(num_classes, int(read_label_file(p)[1].max(initial=0)))
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if ref.class_names and len(ref.class_names) == num_classes:
        return list(ref.class_names)
    return [f"class_{c}" for c in range(1, num_classes + 1)]


# =================================================================================================== scoring
def _score_pair(stem: str, gt_path: Path, pred_path: Path | None, num_classes: int, radius: float) -> ImageScores:
    gt_inst, gt_type = read_label_file(gt_path)
    if pred_path is None:
        pred_inst, pred_type = np.zeros_like(gt_inst), np.zeros_like(gt_type)
    else:
        pred_inst, pred_type = read_label_file(pred_path)
    if pred_inst.shape != gt_inst.shape:
        raise DataError(f"{pred_path}: shape {pred_inst.shape} differs from the reference {gt_path} {gt_inst.shape}")
    for path, types in ((gt_path, gt_type), (pred_path, pred_type)):
        top = int(types.max(initial=0))
        if top > num_classes:
            raise DataError(f"{path}: type id {top} but only {num_classes} nucleus classes")
    return score_image(gt_inst, gt_type, pred_inst, pred_type, num_classes, match_iou=MATCH_IOU, radius=radius)


def _score_all(
    ref: _Reference, preds: Mapping[str, Path], num_classes: int, radius: float, *, quiet: bool
) -> dict[str, ImageScores]:
    out: dict[str, ImageScores] = {}
    with ItemProgress(len(ref.files), "evaluate", enabled=not quiet) as progress:
        for stem in sorted(ref.files):
            out[stem] = _score_pair(stem, ref.files[stem], preds.get(stem), num_classes, radius)
            progress.advance()
    return out


def _rows(
    ref: _Reference, scores: Mapping[str, ImageScores], names: Sequence[str], missing: set[str]
) -> list[dict[str, Any]]:
    """One ``metrics.csv`` row per image, in stem order."""
    rows = []
    for stem, s in scores.items():
        row: dict[str, Any] = {
            "stem": stem,
            "fold": ref.fold_of.get(stem, ""),
            "tissue": (ref.tissues or {}).get(stem, ""),
            "gt_nuclei": s.binary.n_gt,
            "pred_nuclei": s.binary.n_pred,
            "bPQ": s.bpq,
            "bDQ": s.bdq,
            "bSQ": s.bsq,
            "mPQ": s.mpq,
            "mDQ": s.mdq,
            "mSQ": s.msq,
        }
        row.update({f"PQ_{n}": float(v) for n, v in zip(names, s.pq, strict=True)})
        row.update({"dice": s.dice, "aji": s.aji, "aji_plus": s.aji_plus})
        row.update({"missing_prediction": int(stem in missing)})
        rows.append(row)
    return rows


# =================================================================================================== summary
def _summary(
    ref: _Reference, scores: Mapping[str, ImageScores], names: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    s_list = list(scores.values())
    pq = np.array([s.pq for s in s_list], np.float64).reshape(len(s_list), len(names))
    image_avg: dict[str, Any] = {k: image_average(r[k] for r in rows) for k in ("bPQ", "bDQ", "bSQ", "mPQ")}
    image_avg.update({k: image_average(r[k] for r in rows) for k in ("mDQ", "mSQ", "dice", "aji", "aji_plus")})
    image_avg["PQ_per_class"] = {n: image_average(pq[:, i]) for i, n in enumerate(names)}
    image_avg["images_scored"] = {k: int(sum(math.isfinite(r[k]) for r in rows)) for k in ("bPQ", "mPQ", "dice")}
    plus, plus_pq = mpq_plus(s.per_class for s in s_list)
    tally = sum((s.detection for s in s_list), DetectionTally())
    det = detection_scores(tally, len(names))
    gt_counts = np.sum([s.gt_counts for s in s_list], axis=0) if s_list else np.zeros(len(names), np.int64)
    return {
        "gt_kind": ref.kind,
        "folds": ref.folds,
        "class_names": list(names),
        "num_classes": len(names),
        "image_average": image_avg,
        "tissue_average": _tissue_block(ref, rows),
        "mpq_plus": {
            "mPQ+": plus,
            "PQ_per_class": {n: float(v) for n, v in zip(names, plus_pq, strict=True)},
            "classes_absent": [n for n, v in zip(names, plus_pq, strict=True) if not math.isfinite(v)],
        },
        "detection": {
            "precision": det.precision,
            "recall": det.recall,
            "f1": det.f1,
            "tp": det.tp,
            "fp": det.fp,
            "fn": det.fn,
            "f1_per_class": {n: float(v) for n, v in zip(names, det.f1_per_class, strict=True)},
        },
        "counts": {
            "images": len(rows),
            "gt_nuclei": int(sum(r["gt_nuclei"] for r in rows)),
            "pred_nuclei": int(sum(r["pred_nuclei"] for r in rows)),
            "gt_nuclei_per_class": {n: int(v) for n, v in zip(names, gt_counts, strict=True)},
        },
        "nan_rules": NAN_RULES,
    }


def _tissue_block(ref: _Reference, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """PanNuke official aggregation (per tissue nanmean, then the mean over tissues), or why it is missing."""
    if ref.tissues is None:
        return {"available": False, "note": ref.tissue_note, "bPQ": math.nan, "mPQ": math.nan}
    tissues = [str(r["tissue"]) for r in rows]
    b_avg, b_per = tissue_average([r["bPQ"] for r in rows], tissues)
    m_avg, m_per = tissue_average([r["mPQ"] for r in rows], tissues)
    per = {t: {"images": tissues.count(t), "bPQ": b_per[t], "mPQ": m_per[t]} for t in b_per}
    return {"available": True, "note": "", "bPQ": b_avg, "mPQ": m_avg, "tissues": len(per), "per_tissue": per}


def _finite(obj: Any) -> Any:
    """NaN -> None and numpy scalars -> python, so that summary.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# =================================================================================================== outputs
def _write_outputs(
    out_dir: Path, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], names: Sequence[str]
) -> None:
    """``metrics.csv``, ``summary.json`` and ``per_class_pq.png`` in ``out_dir``, each written atomically."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    write_csv_atomic(out_dir / "metrics.csv", rows, list(rows[0]) if rows else ["stem"])
    write_json_atomic(out_dir / "summary.json", summary)
    _pq_plot(out_dir / "per_class_pq.png", summary, names)


def _pq_plot(path: Path, summary: Mapping[str, Any], names: Sequence[str]) -> None:
    """Per-class PQ bars: image average and mPQ+ (dataset-level counts) side by side; n/a where undefined."""
    series = [
        ("image average", summary["image_average"]["PQ_per_class"]),
        ("mPQ+ (pooled counts)", summary["mpq_plus"]["PQ_per_class"]),
    ]
    fig = Figure(figsize=(max(4.5, 1.0 * len(names) + 2.0), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names), dtype=np.float64)
    width = 0.38
    for k, (label, values) in enumerate(series):
        pos = x + (k - 0.5) * width
        heights = [values[n] if values[n] is not None else 0.0 for n in names]
        ax.bar(pos, heights, width, label=label)
        for p, n in zip(pos, names, strict=True):
            if values[n] is None:
                ax.text(p, 0.01, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x, list(names), rotation=30, ha="right")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("PQ")
    ia = summary["image_average"]
    ax.set_title(f"Per-class PQ ({summary['counts']['images']} images; mPQ {_fmt(ia['mPQ'])})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
