"""``ct-seg evaluate``: Dice and HD95 (MONAI) per case and foreground class against reference label maps.

Pairs are matched by case id; every pair must share the voxel grid (shape and affine). Writes ``metrics.csv``
(one row per case and class), ``summary.json`` (mean and sd per class and overall) and a box plot per metric.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medvit.apps.ct_seg.data import affines_match, case_id_of, check_label_values, labels_from_json
from medvit.shared.data.io import NIFTI_SUFFIXES, ImageMeta, affine_problem, list_folder, read_nifti
from medvit.shared.engine.progress import ItemProgress
from medvit.shared.errors import DataError
from medvit.shared.files import atomic_path, write_json_atomic, write_text_atomic
from medvit.shared.metrics.segmentation import score_case, summarize

logger = logging.getLogger(__name__)

__all__ = ["evaluate"]

METRICS_COLUMNS: tuple[str, ...] = ("case", "label", "name", "dice", "hd95", "ref_voxels", "pred_voxels", "empty")
"""Columns of ``metrics.csv``."""


def evaluate(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    labels_json: str | Path | None = None,
    out: str | Path | None = None,
    hd95: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Dice and HD95 (MONAI) per case and foreground class; ``metrics.csv``, ``summary.json``, box plots.

    Pairs are matched by case id (``case_001.nii.gz`` in both folders; a ``_0000`` suffix is ignored). The empty
    prediction / empty reference convention is :data:`medvit.shared.metrics.segmentation.CONVENTION`.

    Args:
        pred_dir: predicted label maps.
        gt_dir: reference label maps (e.g. ``labelsTs``).
        labels_json: ``dataset.json`` declaring the classes (default: the values found in the files).
        out: folder for the outputs (default ``pred_dir``).
        hd95: compute HD95 too.
        quiet: no progress bar.

    Returns:
        The summary dict written to ``summary.json``.

    Raises:
        DataError: missing pairs, shape/affine mismatches, non-integer maps or undeclared labels (naming the case).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    out_dir = Path(out) if out is not None else pred_dir
    preds, refs = _pairs(pred_dir, gt_dir)
    declared = labels_from_json(labels_json) if labels_json is not None else None
    rows = _score_cases(preds, refs, declared, hd95=hd95, quiet=quiet)
    rows = _with_absent_classes(rows, sorted(refs), hd95=hd95)
    names = dict(declared or {})
    for r in rows:
        r["name"] = names.get(int(r["label"]), f"label_{r['label']}")
    metrics = ("dice", "hd95") if hd95 else ("dice",)
    summary = summarize(rows, {int(r["label"]): r["name"] for r in rows}, metrics)
    summary.update({"pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "labels_json": str(labels_json or "")})
    _write_outputs(out_dir, rows, summary, metrics)
    return summary


# ================================================================================================== the pairs
def _nifti_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found")
    out: dict[str, Path] = {}
    for f in list_folder(folder):
        if f.is_dir() or not f.name.lower().endswith(NIFTI_SUFFIXES):
            continue  # a FIFO or broken link with a NIfTI name stays: its reader names the problem
        cid = case_id_of(f)
        if cid in out:
            raise DataError(f"{folder}: case {cid} appears twice ({out[cid].name}, {f.name})")
        out[cid] = f
    if not out:
        raise DataError(f"{folder}: no NIfTI label maps (.nii, .nii.gz)")
    return out


def _pairs(pred_dir: Path, gt_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(predictions, references) by case id; every reference needs a prediction and the other way round."""
    preds = _nifti_files(pred_dir, "prediction")
    refs = _nifti_files(gt_dir, "reference")
    missing = sorted(set(refs) - set(preds))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"case {missing[0]}: no prediction in {pred_dir} for {refs[missing[0]].name}{more}")
    extra = sorted(set(preds) - set(refs))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise DataError(f"case {extra[0]}: prediction {preds[extra[0]].name} has no reference in {gt_dir}{more}")
    return preds, refs


def _read_labels(cid: str, path: Path, allowed: Mapping[int, str] | None) -> tuple[np.ndarray, np.ndarray, ImageMeta]:
    arr, meta = read_nifti(path, check_finite=False)
    problem = affine_problem(meta.affine)
    if problem is not None:  # the affine comparison and HD95's spacing need a usable grid
        raise DataError(f"case {cid}: {path}: {problem}")
    values = check_label_values(cid, path, arr, allowed)
    return arr.round().astype(np.int64), values, meta


# ==================================================================================================== scoring
def _score_cases(
    preds: Mapping[str, Path],
    refs: Mapping[str, Path],
    declared: Mapping[int, str] | None,
    *,
    hd95: bool,
    quiet: bool,
) -> list[dict[str, Any]]:
    """One row per case and foreground class present in the case (or declared)."""
    rows: list[dict[str, Any]] = []
    with ItemProgress(len(refs), "evaluate", enabled=not quiet) as progress:
        for cid in sorted(refs):
            rows.extend(_score_pair(cid, preds[cid], refs[cid], declared, hd95=hd95))
            progress.advance()
    return rows


def _score_pair(
    cid: str, pred_path: Path, ref_path: Path, declared: Mapping[int, str] | None, *, hd95: bool
) -> list[dict[str, Any]]:
    ref, ref_vals, ref_meta = _read_labels(cid, ref_path, declared)
    pred, pred_vals, pred_meta = _read_labels(cid, pred_path, declared)
    if ref.shape != pred.shape:
        raise DataError(f"case {cid}: prediction {pred_path.name} has shape {pred.shape}, reference {ref.shape}")
    if not affines_match(np.asarray(ref_meta.affine), np.asarray(pred_meta.affine)):
        raise DataError(f"case {cid}: prediction and reference differ in affine (not the same voxel grid)")
    present = sorted(set(ref_vals.tolist()) | set(pred_vals.tolist()) | set(declared or {}))
    if not ref_meta.spacing and hd95:
        # The reader already warned that the header's spacing is unknown: distances are in voxels.
        logger.warning("case %s: voxel spacing unknown; HD95 is in voxels, not mm", cid)
    spacing = ref_meta.spacing or None
    scores = score_case(pred, ref, [v for v in present if v != 0], spacing, hd95=hd95)
    return [{"case": cid, **s.__dict__} for s in scores]


def _with_absent_classes(rows: list[dict[str, Any]], cases: Sequence[str], *, hd95: bool) -> list[dict[str, Any]]:
    """A class seen in some cases only is absent from both maps in the others: score those as "both empty".

    Returns:
        The rows, sorted by case and label.
    """
    seen = {int(r["label"]) for r in rows}
    by_case: dict[str, set[int]] = {}
    for r in rows:
        by_case.setdefault(r["case"], set()).add(int(r["label"]))
    for cid in cases:
        for lab in sorted(seen - by_case.get(cid, set())):
            rows.append(
                {
                    "case": cid,
                    "label": lab,
                    "dice": 1.0,
                    "hd95": 0.0 if hd95 else math.nan,
                    "ref_voxels": 0,
                    "pred_voxels": 0,
                    "empty": "both",
                }
            )
    rows.sort(key=lambda r: (r["case"], int(r["label"])))
    return rows


# ==================================================================================================== outputs
def _write_outputs(
    out_dir: Path, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], metrics: Sequence[str]
) -> None:
    """``metrics.csv``, ``summary.json`` and ``<metric>_boxplot.png`` in ``out_dir``, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "metrics.csv", _metrics_csv(rows))
    write_json_atomic(out_dir / "summary.json", _finite(summary))
    for m in metrics:
        _box_plot(out_dir / f"{m}_boxplot.png", rows, m)


def _metrics_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The text of ``metrics.csv``: Dice to 6 decimals, HD95 to 4, ``\\n`` line ends."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(METRICS_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "dice": f"{r['dice']:.6f}", "hd95": f"{r['hd95']:.4f}"})
    return buf.getvalue()


def _finite(obj: Any) -> Any:
    """NaN -> None so that summary.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _box_plot(path: Path, rows: Sequence[Mapping[str, Any]], metric: str) -> None:
    """One box per class (with the cases as dots), written atomically."""
    names = sorted({(int(r["label"]), r["name"]) for r in rows})
    data = [[float(r[metric]) for r in rows if int(r["label"]) == v] for v, _ in names]
    fig = Figure(figsize=(max(4.0, 1.1 * len(names) + 1.5), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), [n for _, n in names], rotation=30, ha="right")
    for i, vals in enumerate(data, start=1):
        jitter = np.linspace(-0.12, 0.12, num=len(vals)) if len(vals) > 1 else [0.0]
        ax.scatter(np.asarray(jitter) + i, vals, s=10, alpha=0.6, color="k")
    ax.set_ylabel("Dice" if metric == "dice" else "HD95 (mm)")
    ax.set_title(f"{metric} per class ({len({r['case'] for r in rows})} cases)")
    if metric == "dice":
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
