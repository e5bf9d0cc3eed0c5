"""``medvit cxr evaluate``: read the ground truth with the findings of a ``predictions.csv`` and score it.

The findings are the ``prob_<finding>`` columns of the predictions; the ground truth is read with the same readers
as training (:func:`medvit.apps.cxr.labels.read_cxr_dataset`), its keys aligned to the prediction keys
(:func:`medvit.shared.classify.listing.align_keys`), and the core
(:func:`medvit.shared.classify.evaluate.evaluate`) writes
``metrics.csv`` (per-finding ROC AUC, average precision, sensitivity/specificity at the thresholds), ``summary.json``
(mean AUC over the findings whose AUC is defined, with bootstrap intervals) and ROC/PR plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvit.apps.cxr.labels import read_cxr_dataset
from medvit.shared.classify.listing import align_keys, prediction_columns
from medvit.shared.errors import DataError

__all__ = ["evaluate", "predictions_file"]


def predictions_file(pred: str | Path) -> Path:
    """``pred`` itself when it is a file, else ``pred/predictions.csv``.

    Raises:
        DataError: Neither exists.
    """
    p = Path(pred)
    csv_path = p / "predictions.csv" if p.is_dir() else p
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: not found (give predictions.csv or the output folder of `cxr predict`)")
    return csv_path


def evaluate(
    pred: str | Path,
    gt: str | Path,
    out: str | Path | None = None,
    *,
    split: str | None = None,
    uncertain: str = "reference",
    frontal_only: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score predictions against ground truth (see the module docstring).

    Args:
        pred: ``predictions.csv`` or the predict output folder.
        gt: Release folder, folder with ``labels.csv`` or a label CSV.
        out: Output folder (default: the predictions' folder).
        split: Release split of ``gt`` (``test`` for ChestX-ray14's test list, ``valid`` for CheXpert).
        uncertain: Policy for uncertain labels in ``gt``.
        frontal_only: Keep frontal views only in ``gt`` (off: every image predicted is scored).
        bootstrap: Bootstrap resamples for confidence intervals (0: none).
        seed: Bootstrap seed.

    Returns:
        The core's summary (``mean_auc`` and per-finding values).

    Raises:
        DataError: Unreadable predictions or ground truth, findings the ground truth lacks.
    """
    csv_path = predictions_file(pred)
    keys, classes = prediction_columns(csv_path)
    truth, labels = read_cxr_dataset(gt, split=split, findings=classes, uncertain=uncertain, frontal_only=frontal_only)
    truth = align_keys(truth, keys)
    from medvit.shared.classify.evaluate import evaluate as core_evaluate

    folder = Path(out) if out is not None else csv_path.parent
    return core_evaluate(csv_path, truth, labels, folder, bootstrap=bootstrap, seed=seed)
