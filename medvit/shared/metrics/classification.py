"""Classification metrics (numpy only): ROC-AUC with ties, AP, curves, operating points, kappa, bootstrap CIs.

Definitions:

* **ROC-AUC** = the Mann-Whitney statistic: the probability that a random positive scores above a random negative,
  a tie counting 1/2; computed from average ranks, ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``. It equals
  the trapezoidal area under the ROC curve with tied scores as one point (sklearn's ``roc_auc_score``). NaN when a
  class has no positive or no negative sample (the thorax paper sets such classes to 0 and leaves them out of the
  mean; here they are NaN and left out of the mean, and the count is reported).
* **Average precision** = ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds, highest first (sklearn's
  ``average_precision_score``, no interpolation).
* **Operating point**: a sample is called positive when ``score >= threshold``; sensitivity = TP / P, specificity
  = TN / N. :func:`youden_threshold` picks the score maximising ``sensitivity + specificity - 1`` (ties: the
  highest such threshold).
* **Quadratic-weighted kappa** (Cohen 1968): ``1 - sum(W O) / sum(W E)`` with ``W_ij = (i - j)^2 / (C - 1)^2``,
  ``O`` the confusion matrix and ``E`` the outer product of its marginals over the total (the Kaggle DR metric).
* **Macro-F1**: the unweighted mean over classes of ``2 TP / (2 TP + FP + FN)`` (a class never predicted nor present
  counts 0, as sklearn's ``zero_division=0``).
* **Bootstrap CI**: percentile interval of the metric over ``n`` resamples of the cases with replacement drawn from
  ``numpy.random.default_rng(seed)``; resamples where the metric is undefined (e.g. no positive) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "accuracy",
    "average_precision",
    "bootstrap_ci",
    "confusion_matrix",
    "macro_f1",
    "pr_curve",
    "quadratic_weighted_kappa",
    "roc_auc",
    "roc_curve",
    "sensitivity_specificity",
    "youden_threshold",
]


def _binary(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    keep = ~np.isnan(y) & ~np.isnan(s)
    return y[keep] > 0.5, s[keep]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], sorted_v.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic (ties count 1/2); NaN without both classes. NaN labels are skipped."""
    y, s = _binary(y_true, score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _counts_by_threshold(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with the true and false positives at ``score >= threshold``."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # last index of each tie group
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    return s_sorted[last], tps.astype(np.float64), fps.astype(np.float64)


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from (0, 0) at threshold +inf to (1, 1); empty arrays without both classes."""
    y, s = _binary(y_true, score)
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([]), np.array([]), np.array([])
    thr, tps, fps = _counts_by_threshold(y, s)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[np.inf, thr]


def pr_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)``, thresholds descending (recall rising); empty without positives."""
    y, s = _binary(y_true, score)
    n_pos = float(y.sum())
    if n_pos == 0:
        return np.array([]), np.array([]), np.array([])
    thr, tps, fps = _counts_by_threshold(y, s)
    return tps / (tps + fps), tps / n_pos, thr


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """AP = ``sum (R_n - R_{n-1}) P_n`` (no interpolation); NaN without positives."""
    precision, recall, _ = pr_curve(y_true, score)
    if recall.size == 0:
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def sensitivity_specificity(y_true: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when ``score >= threshold`` is called positive (NaN where undefined)."""
    y, s = _binary(y_true, score)
    pred = s >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    sens = float((pred & y).sum() / n_pos) if n_pos else float("nan")
    spec = float((~pred & ~y).sum() / n_neg) if n_neg else float("nan")
    return sens, spec


def youden_threshold(y_true: np.ndarray, score: np.ndarray, default: float = 0.5) -> float:
    """The score threshold maximising ``sensitivity + specificity - 1`` (``default`` without both classes)."""
    fpr, tpr, thr = roc_curve(y_true, score)
    if thr.size < 2:
        return float(default)
    j = np.round(tpr[1:] - fpr[1:], 12)  # skip the +inf point; rounding makes equal J values tie exactly
    return float(thr[1:][int(np.argmax(j))])


def confusion_matrix(true_idx: np.ndarray, pred_idx: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts, rows = true class, columns = predicted."""
    t = np.asarray(true_idx, dtype=np.int64).ravel()
    p = np.asarray(pred_idx, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true labels for {p.size} predictions")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"class indices outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(true_idx: np.ndarray, pred_idx: np.ndarray) -> float:
    """Share of exact matches (NaN for no samples)."""
    t, p = np.asarray(true_idx).ravel(), np.asarray(pred_idx).ravel()
    return float((t == p).mean()) if t.size else float("nan")


def macro_f1(conf: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 of a confusion matrix (a class with no TP, FP or FN counts 0)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    denom = 2 * tp + (conf.sum(0) - tp) + (conf.sum(1) - tp)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def quadratic_weighted_kappa(true_idx: np.ndarray, pred_idx: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights (NaN when the expected disagreement is 0)."""
    observed = confusion_matrix(true_idx, pred_idx, num_classes).astype(np.float64)
    n = observed.sum()
    if n == 0 or num_classes < 2:
        return float("nan")
    i, j = np.meshgrid(np.arange(num_classes), np.arange(num_classes), indexing="ij")
    weights = (i - j) ** 2 / (num_classes - 1) ** 2
    expected = np.outer(observed.sum(1), observed.sum(0)) / n
    denom = float((weights * expected).sum())
    return float(1.0 - (weights * observed).sum() / denom) if denom > 0 else float("nan")


def bootstrap_ci(
    metric: Callable[..., float],
    arrays: Sequence[np.ndarray],
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(*arrays)`` over cases (the first axis), reproducible by ``seed``.

    Args:
        metric: Function of the arrays returning a float (NaN = undefined on that resample).
        arrays: Case-aligned arrays (same length along axis 0).
        n: Resamples.
        seed: Seed of ``numpy.random.default_rng``.
        level: Coverage, e.g. 0.95.

    Returns:
        ``(low, high)``; NaNs when no resample gives a defined value or ``n`` is 0.
    """
    arrays = [np.asarray(a) for a in arrays]
    size = arrays[0].shape[0]
    if n <= 0 or size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, size, size)
        v = metric(*(a[idx] for a in arrays))
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)
