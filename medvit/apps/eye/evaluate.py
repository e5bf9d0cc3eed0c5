"""``medvit eye evaluate``: read the ground truth with the classes of a ``predictions.csv`` and score it.

The classes are the ``prob_<class>`` columns of the predictions (a single ``prob_positive``: a binary task; integer
names: graded). The ground truth is read with the training readers (:func:`medvit.apps.eye.labels.read_eye_dataset`),
its keys aligned to the prediction keys (:func:`medvit.shared.classify.listing.align_keys`), and the core
(:func:`medvit.shared.classify.evaluate.evaluate`) writes ``metrics.csv``, ``summary.json`` (graded: quadratic-
weighted kappa; multi-class: accuracy, macro-F1, per-class AUC; binary: AUC, sensitivity/specificity; bootstrap
intervals) and plots (confusion matrix, ROC).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvit.apps.eye.labels import read_eye_dataset
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
        raise DataError(f"{csv_path}: not found (give predictions.csv or the output folder of `eye predict`)")
    return csv_path


def evaluate(
    pred: str | Path,
    gt: str | Path,
    out: str | Path | None = None,
    *,
    split: str | None = None,
    task: str = "auto",
    positive: str | None = None,
    images: str | Path | None = None,
    label_column: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score predictions against ground truth (see the module docstring).

    Args:
        pred: ``predictions.csv`` or the predict output folder.
        gt: ImageFolder tree, folder with ``labels.csv`` or a (path, label) CSV.
        out: Output folder (default: the predictions' folder).
        split: Split folder of an ImageFolder ``gt`` (``test``).
        task: ``auto`` (from the prediction columns) or the task kind.
        positive: Binary tasks: the positive class name in ``gt``.
        images: Folder the CSV's paths are relative to.
        label_column: The CSV's label column.
        bootstrap: Bootstrap resamples for confidence intervals (0: none).
        seed: Bootstrap seed.

    Returns:
        The core's summary.

    Raises:
        DataError: Unreadable predictions or ground truth, labels outside the model's classes.
    """
    csv_path = predictions_file(pred)
    keys, classes = prediction_columns(csv_path)
    binary = classes == ["positive"]
    if task == "auto" and binary:
        task = "binary"
    truth, labels = read_eye_dataset(
        gt,
        task=task,
        classes=None if binary else classes,
        positive=positive,
        split=split,
        images=images,
        label_column=label_column,
    )
    truth = align_keys(truth, keys)
    from medvit.shared.classify.evaluate import evaluate as core_evaluate

    folder = Path(out) if out is not None else csv_path.parent
    return core_evaluate(csv_path, truth, labels, folder, bootstrap=bootstrap, seed=seed)
