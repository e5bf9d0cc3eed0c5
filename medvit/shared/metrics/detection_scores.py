"""Binary detection scores: ROC curve, ROC AUC, EER, average precision, accuracy; frame -> video pooling.

Definitions as DeepfakeBench's ``training/metrics/utils.py`` (``get_test_metrics``), which follows scikit-learn:

* ROC curve over every distinct score (``roc_curve``, ``pos_label=1``), AUC by the trapezoid rule over it, which
  equals the Mann-Whitney probability that a positive scores above a negative, ties counting one half;
* EER: the false-positive rate at the curve point where ``|FNR - FPR|`` is smallest (``FNR = 1 - TPR``);
* AP: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds from the highest score down (no interpolation,
  scikit-learn's ``average_precision_score``);
* accuracy: the fraction with ``(score > threshold) == label`` (DeepfakeBench uses 0.5 on probabilities);
* video level: the mean of a video's frame probabilities (and of its frame labels), then the same scores over
  videos.

Every score is NaN where it is undefined (a single class; no sample).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

__all__ = [
    "accuracy",
    "average_precision",
    "detection_scores",
    "equal_error_rate",
    "roc_auc",
    "roc_curve",
    "video_level",
]


def _arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real / negative) or 1 (fake / positive)")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def roc_curve(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, ...]:
    """False- and true-positive rates at every distinct score (highest first), starting at (0, 0).

    Returns:
        ``(fpr, tpr, thresholds)``; ``thresholds[0]`` is ``+inf``. Empty arrays without both classes.
    """
    y, s = _arrays(labels, scores)
    if not _both_classes(y):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last sample of each distinct score
    tps = np.cumsum(y)[last_of_group]
    fps = (last_of_group + 1) - tps
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, s[last_of_group]]


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; ties count one half). NaN without both classes."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr)) if fpr.size else float("nan")


def equal_error_rate(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """FPR at the ROC point where ``|FNR - FPR|`` is smallest (DeepfakeBench's EER). NaN without both classes."""
    fpr, tpr, _ = roc_curve(labels, scores)
    if not fpr.size:
        return float("nan")
    return float(fpr[int(np.argmin(np.abs((1 - tpr) - fpr)))])


def average_precision(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds, highest first. NaN without positives."""
    y, s = _arrays(labels, scores)
    if not y.size or not y.sum():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_group]
    precision = tps / (last_of_group + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def accuracy(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float = 0.5) -> float:
    """Fraction with ``(score > threshold) == label``. NaN without samples."""
    y, s = _arrays(labels, scores)
    return float(((s > threshold).astype(np.int64) == y).mean()) if y.size else float("nan")


def video_level(
    video_ids: Sequence[Hashable], labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """Pool frames into videos: mean probability and mean label per video id (first-seen order).

    Returns:
        ``(ids, labels [V], probs [V])``; a video whose frames disagree on the label gets their mean (as
        DeepfakeBench), which :func:`detection_scores` rounds.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    ids: dict[Hashable, int] = {}
    inv = np.array([ids.setdefault(v, len(ids)) for v in video_ids], dtype=np.int64)
    if inv.size != y.size or y.size != p.size:
        raise ValueError("video_ids, labels and probs differ in length")
    counts = np.bincount(inv, minlength=len(ids)).astype(np.float64)
    mean_y = np.bincount(inv, weights=y, minlength=len(ids)) / np.maximum(counts, 1)
    mean_p = np.bincount(inv, weights=p, minlength=len(ids)) / np.maximum(counts, 1)
    return list(ids), mean_y, mean_p


def detection_scores(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """``auc``, ``eer``, ``ap``, ``acc`` (at ``threshold``), ``n`` and ``positives`` of one set of scores."""
    y = np.rint(np.asarray(labels, dtype=np.float64)).astype(np.int64)
    return {
        "auc": roc_auc(y, probs),
        "eer": equal_error_rate(y, probs),
        "ap": average_precision(y, probs),
        "acc": accuracy(y, probs, threshold),
        "n": float(y.size),
        "positives": float(y.sum()),
    }
