"""Scoring predictions against the truth: per-class and overall metrics, bootstrap CIs, ROC / PR / confusion plots.

:func:`score` is the one place that turns probabilities and targets into metrics; the validation during training
(model selection) and :func:`evaluate` both call it. Metrics by task (definitions in
:mod:`medvit.shared.metrics.classification`):

* ``multilabel`` / ``binary``: per class ROC-AUC, AP, sensitivity and specificity at the operating threshold (the
  one ``predict`` used, from ``predictions.csv``); overall mean AUC over the classes where it is defined (the
  headline, as the thorax paper's mAUC), mean AP; ``binary`` adds accuracy and the 2 x 2 confusion matrix.
* ``multiclass`` / ``graded``: per class one-vs-rest AUC and AP, sensitivity (recall) and specificity of the
  arg-max prediction, F1; overall accuracy, macro-F1, mean AUC, the confusion matrix, and for ``graded`` the
  quadratic-weighted kappa (the headline; accuracy for ``multiclass``).

The headline metric gets a percentile bootstrap 95 % CI over cases (``bootstrap`` resamples, ``seed``): the same
seed gives the same interval. ``evaluate`` writes ``metrics.csv`` (one row per class plus an ``overall`` row),
``summary.json`` and ``roc.png``, ``pr.png`` (and ``confusion.png`` for single-label tasks) with matplotlib (Agg).
Rows of ``predictions.csv`` whose status is ``error`` and truth samples without a prediction are counted and left
out; samples whose target is unknown (NaN) are left out per class.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.classify.labels import LabelSpace, Sample
from medvit.shared.errors import DataError
from medvit.shared.files import write_csv_atomic, write_json_atomic
from medvit.shared.metrics import classification as M

logger = logging.getLogger(__name__)

__all__ = ["HEADLINE", "evaluate", "headline_metric", "predicted_indices", "read_predictions", "score"]

HEADLINE = {"multilabel": "mauc", "binary": "mauc", "graded": "kappa", "multiclass": "accuracy"}


def headline_metric(labels: LabelSpace, name: str = "auto") -> str:
    """The model-selection / headline metric of a task (``auto``: mAUC, kappa or accuracy)."""
    return HEADLINE[labels.kind] if name == "auto" else name


def predicted_indices(probs: np.ndarray) -> np.ndarray:
    """Arg-max class of softmax outputs ``[N, C]`` (ties: the lowest index)."""
    return np.argmax(probs, axis=1)


def _sigmoid_rows(labels: LabelSpace, probs: np.ndarray, targets: np.ndarray, thr: Sequence[float]) -> list[dict]:
    names = labels.classes[1:] if labels.kind == "binary" else labels.classes
    rows = []
    for c, name in enumerate(names):
        y, s = targets[:, c], probs[:, c]
        known = ~np.isnan(y)
        sens, spec = M.sensitivity_specificity(y, s, thr[c])
        rows.append(
            {
                "class": name,
                "n": int(known.sum()),
                "positives": int(np.nansum(y)),
                "auc": M.roc_auc(y, s),
                "ap": M.average_precision(y, s),
                "threshold": float(thr[c]),
                "sensitivity": sens,
                "specificity": spec,
            }
        )
    return rows


def _softmax_rows(labels: LabelSpace, probs: np.ndarray, true: np.ndarray, conf: np.ndarray) -> list[dict]:
    rows = []
    for c, name in enumerate(labels.classes):
        y = (true == c).astype(np.float64)
        tp = conf[c, c]
        fn, fp = conf[c].sum() - tp, conf[:, c].sum() - tp
        tn = conf.sum() - tp - fn - fp
        rows.append(
            {
                "class": name,
                "n": int(true.size),
                "positives": int(y.sum()),
                "auc": M.roc_auc(y, probs[:, c]),
                "ap": M.average_precision(y, probs[:, c]),
                "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
                "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
                "f1": float(2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn else 0.0,
            }
        )
    return rows


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def _mean_auc(probs: np.ndarray, targets: np.ndarray) -> float:
    return _nanmean([M.roc_auc(targets[:, c], probs[:, c]) for c in range(probs.shape[1])])


def score(
    labels: LabelSpace, probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float] | None = None
) -> dict[str, Any]:
    """Every metric of one set of predictions.

    Args:
        labels: The label space.
        probs: ``[N, num_outputs]`` probabilities (sigmoid per output, or softmax over classes).
        targets: ``[N, target_width]`` in the label space's encoding (multilabel NaN = unknown).
        thresholds: Per output, for sigmoid tasks (default 0.5).

    Returns:
        ``{"per_class": [rows], "overall": {name: value}, "confusion": [[...]] or None}``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if labels.uses_sigmoid:
        thr = list(thresholds) if thresholds is not None else [0.5] * probs.shape[1]
        rows = _sigmoid_rows(labels, probs, targets, thr)
        overall = {
            "mauc": _nanmean([r["auc"] for r in rows]),
            "map": _nanmean([r["ap"] for r in rows]),
            "classes_with_auc": int(np.isfinite([r["auc"] for r in rows]).sum()),
        }
        conf = None
        if labels.kind == "binary":
            true = targets[:, 0].astype(np.int64)
            pred = (probs[:, 0] >= thr[0]).astype(np.int64)
            conf = M.confusion_matrix(true, pred, 2)
            overall["accuracy"] = M.accuracy(true, pred)
            overall["macro_f1"] = M.macro_f1(conf)
        return {"per_class": rows, "overall": overall, "confusion": conf.tolist() if conf is not None else None}
    true = targets[:, 0].astype(np.int64)
    pred = predicted_indices(probs)
    conf = M.confusion_matrix(true, pred, len(labels.classes))
    rows = _softmax_rows(labels, probs, true, conf)
    overall = {
        "accuracy": M.accuracy(true, pred),
        "macro_f1": M.macro_f1(conf),
        "mauc": _nanmean([r["auc"] for r in rows]),
        "kappa": M.quadratic_weighted_kappa(true, pred, len(labels.classes)),
    }
    return {"per_class": rows, "overall": overall, "confusion": conf.tolist()}


def _headline_fn(labels: LabelSpace, name: str, thresholds: Sequence[float]) -> Any:
    """A function ``(probs, targets) -> float`` of the headline metric, for the bootstrap."""
    n_classes = len(labels.classes)

    def fn(p: np.ndarray, t: np.ndarray) -> float:
        if name == "mauc":
            if labels.uses_sigmoid:
                return _mean_auc(p, t)
            return _nanmean([M.roc_auc((t[:, 0] == c).astype(float), p[:, c]) for c in range(n_classes)])
        if name == "map":
            return _nanmean([M.average_precision(t[:, c], p[:, c]) for c in range(p.shape[1])])
        true = t[:, 0].astype(np.int64)
        pred = (p[:, 0] >= thresholds[0]).astype(np.int64) if labels.kind == "binary" else predicted_indices(p)
        if name == "kappa":
            return M.quadratic_weighted_kappa(true, pred, n_classes)
        if name == "macro_f1":
            return M.macro_f1(M.confusion_matrix(true, pred, n_classes))
        return M.accuracy(true, pred)

    return fn


# ------------------------------------------------------------------------------------------------------ I/O
def read_predictions(path: Path, labels: LabelSpace) -> tuple[dict[str, np.ndarray], list[float] | None, int]:
    """``predictions.csv`` -> ({key: probabilities}, the thresholds used (sigmoid tasks), number of error rows).

    Raises:
        DataError: Missing file or columns.
    """
    if not path.is_file():
        raise DataError(f"{path}: predictions file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in ("key", *labels.prob_columns) if c not in cols]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} for classes {list(labels.classes)}")
        probs: dict[str, np.ndarray] = {}
        thresholds: list[float] | None = None
        errors = 0
        thr_cols = [f"threshold_{c[len('prob_') :]}" for c in labels.prob_columns]
        for row in reader:
            if row.get("status", "ok") == "error":
                errors += 1
                continue
            try:
                probs[row["key"]] = np.array([float(row[c]) for c in labels.prob_columns])
                if thresholds is None and labels.uses_sigmoid and all(row.get(c) for c in thr_cols):
                    thresholds = [float(row[c]) for c in thr_cols]
            except ValueError as e:
                raise DataError(f"{path}: row {row.get('key')!r}: {e}") from None
    return probs, thresholds, errors


def _join(probs: Mapping[str, np.ndarray], truth: Sequence[Sample], labels: LabelSpace) -> tuple[np.ndarray, ...]:
    p, t = [], []
    for s in truth:
        if s.target is None or s.key not in probs:
            continue
        p.append(probs[s.key])
        t.append(labels.check_target(s.target, s.key))
    if not p:
        raise DataError("no prediction matches a labelled sample (keys of predictions.csv vs the truth)")
    return np.stack(p), np.stack(t)


def _plots(labels: LabelSpace, probs: np.ndarray, targets: np.ndarray, result: Mapping[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medvit.shared.files import atomic_path

    names = labels.classes[1:] if labels.kind == "binary" else labels.classes
    cols = []
    for c, name in enumerate(names):
        y = targets[:, c] if labels.uses_sigmoid else (targets[:, 0] == c).astype(float)
        cols.append((name, y, probs[:, c]))
    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        for name, y, s in cols:
            if kind == "roc":
                x_, y_, _ = M.roc_curve(y, s)
                label = f"{name} (AUC {M.roc_auc(y, s):.3f})"
            else:
                y_, x_, _ = M.pr_curve(y, s)
                label = f"{name} (AP {M.average_precision(y, s):.3f})"
            if x_.size:
                ax.plot(x_, y_, label=label, lw=1.2)
        ax.set_xlabel("1 - specificity" if kind == "roc" else "recall")
        ax.set_ylabel("sensitivity" if kind == "roc" else "precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
        with atomic_path(out / f"{kind}.png") as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        plt.close(fig)
    if result.get("confusion") is not None:
        _confusion_plot(labels, np.asarray(result["confusion"]), out)


def _confusion_plot(labels: LabelSpace, conf: np.ndarray, out: Path) -> None:
    import matplotlib.pyplot as plt

    from medvit.shared.files import atomic_path

    n = conf.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n), dpi=100)
    ax.imshow(conf, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=8)
    ticks = labels.classes if n == len(labels.classes) else ("0", "1")
    ax.set_xticks(range(n), ticks, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), ticks, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    with atomic_path(out / "confusion.png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def evaluate(
    predictions_csv: str | Path,
    truth: Sequence[Sample],
    labels: LabelSpace,
    out: str | Path,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    metric: str = "auto",
) -> dict[str, Any]:
    """Score a ``predictions.csv`` against labelled samples; write ``metrics.csv``, ``summary.json`` and plots.

    Args:
        predictions_csv: Written by :func:`medvit.shared.classify.predict.predict`.
        truth: Labelled samples, joined on ``Sample.key``.
        labels: The label space (the model's).
        out: Output folder (created).
        bootstrap: Resamples of the headline CI (0: no CI).
        seed: Seed of the bootstrap.
        metric: Headline metric (``auto``: mAUC / kappa / accuracy by task).

    Returns:
        The summary (as in ``summary.json``).

    Raises:
        DataError: Unreadable predictions or no overlap with the truth.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probs_by_key, thresholds, n_errors = read_predictions(Path(predictions_csv), labels)
    probs, targets = _join(probs_by_key, truth, labels)
    labelled = sum(1 for s in truth if s.target is not None)
    result = score(labels, probs, targets, thresholds)
    name = headline_metric(labels, metric)
    thr = thresholds or [0.5] * labels.num_outputs()
    value = result["overall"].get(name, float("nan"))
    lo, hi = M.bootstrap_ci(_headline_fn(labels, name, thr), [probs, targets], n=bootstrap, seed=seed)
    summary = {
        "task": labels.kind,
        "classes": list(labels.classes),
        "cases": int(probs.shape[0]),
        "missing_predictions": labelled - int(probs.shape[0]),
        "prediction_errors": n_errors,
        "headline": {"metric": name, "value": value, "ci95": [lo, hi], "bootstrap": bootstrap, "seed": seed},
        "overall": result["overall"],
        "confusion": result["confusion"],
        "thresholds": thr if labels.uses_sigmoid else None,
    }
    rows = [*result["per_class"], {"class": "overall", "n": int(probs.shape[0]), **result["overall"]}]
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    write_csv_atomic(out / "metrics.csv", rows, fields)
    write_json_atomic(out / "summary.json", _clean(summary))
    _plots(labels, probs, targets, result, out)
    logger.info("%s %.4f (95%% CI %.4f-%.4f) on %d cases", name, value, lo, hi, probs.shape[0])
    return _clean(summary)
