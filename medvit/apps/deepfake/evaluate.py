"""``deepfake evaluate``: frame and video scores of ``deepfake predict`` outputs against the ground truth.

Scores (:mod:`medvit.shared.metrics.detection_scores`, DeepfakeBench's definitions): frame AUC over every scored
face crop, video AUC over the videos' mean frame probabilities, accuracy (probability above the threshold),
EER and AP, at both levels. Tables: all videos, per compression level, per manipulation method (its fakes and
the real videos of the same level), and the cross-compression grid: one row per predict folder, named by the
levels its run was trained on (``predict.json``), one column per test level, video AUC (the paper's "train X /
test Y" table; the paper reports accuracy, which ``metrics.csv`` holds too). Videos without a face (``no_face``)
are left out of every score and counted; only the first track of a video is scored.

Ground truth ``GT``: the FF++ root the videos came from (labels, methods and levels from the layout), a folder
with ``real/`` and ``fake/``, a prepared folder (``dataset.json``), or a CSV with ``path`` and ``label`` (0 real,
1 fake) and optionally ``method`` and ``level`` (paths relative to the CSV's folder or absolute).

Outputs: ``metrics.csv`` (one row per predict folder and subset), ``grid.csv``, ``summary.json``, ``roc.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.errors import DataError
from medvit.shared.files import atomic_path, write_csv_atomic, write_json_atomic
from medvit.shared.metrics.detection_scores import detection_scores, roc_curve

logger = logging.getLogger(__name__)

__all__ = ["METRIC_COLUMNS", "EvaluateResult", "evaluate", "ground_truth"]

METRIC_COLUMNS = (
    "pred",
    "train",
    "subset",
    "level",
    "method",
    "videos",
    "frames",
    "no_face",
    "frame_auc",
    "video_auc",
    "frame_acc",
    "video_acc",
    "frame_eer",
    "video_eer",
    "frame_ap",
    "video_ap",
)
_FFPP = re.compile(
    r"(?:^|/)(?:original_sequences/[^/]+|manipulated_sequences/(?P<method>[^/]+))/(?P<level>[^/]+)/"
    r"videos/[^/]+$"
)
Truth = tuple[int, str, str]  # label, method, level


def _csv_truth(path: Path) -> dict[str, Truth]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise DataError(f"{path}: a ground-truth CSV needs the columns path and label")
    out = {}
    for r in rows:
        p = Path(r["path"]) if os.path.isabs(r["path"]) else path.parent / r["path"]
        label = int(float(r["label"]))
        out[os.path.abspath(p)] = (label, r.get("method") or ("fake" if label else "original"), r.get("level") or "all")
    return out


def ground_truth(gt: str | os.PathLike[str]) -> Callable[[str], Truth | None]:
    """A lookup ``input path -> (label, method, level)`` (None: not in the ground truth); see the module docstring.

    Raises:
        DataError: ``gt`` is neither a known folder layout nor a readable CSV.
    """
    gt = Path(gt).expanduser()
    if gt.is_file():
        table = _csv_truth(gt)
        return lambda p: table.get(os.path.abspath(p))
    if (gt / "dataset.json").is_file():
        data = json.loads((gt / "dataset.json").read_text(encoding="utf-8"))
        table = {os.path.abspath(v["path"]): (int(v["label"]), v["method"], v["level"]) for v in data["videos"]}
        return lambda p: table.get(os.path.abspath(p))
    if not gt.is_dir():
        raise DataError(f"{gt}: ground truth must be an FF++ root, a real/fake folder, a prepared folder or a CSV")
    root = os.path.abspath(gt) + os.sep

    def lookup(p: str) -> Truth | None:
        ap = os.path.abspath(p)
        if not ap.startswith(root):
            return None
        rel = ap[len(root) :].replace(os.sep, "/")
        m = _FFPP.search(rel)
        if m is not None:
            method = m.group("method")
            return (int(method is not None), method or "original", m.group("level"))
        parts = rel.split("/")
        if "real" in parts[:-1] or "fake" in parts[:-1]:
            label = int("fake" in parts[:-1])
            return (label, "fake" if label else "original", "unknown")
        return None

    return lookup


@dataclass
class _Pred:
    name: str
    train: str
    videos: list[dict[str, Any]]  # path, label, method, level, prob
    frames: dict[str, np.ndarray]  # path -> frame probabilities
    no_face: list[dict[str, Any]]


def _read_pred(folder: Path, truth: Callable[[str], Truth | None]) -> _Pred:
    vcsv, fcsv = folder / "videos.csv", folder / "frames.csv"
    if not vcsv.is_file() or not fcsv.is_file():
        raise DataError(f"{folder}: no videos.csv / frames.csv (not a `deepfake predict` output folder)")
    info = (
        json.loads((folder / "predict.json").read_text(encoding="utf-8")) if (folder / "predict.json").is_file() else {}
    )
    train = "+".join(info.get("train", {}).get("levels", [])) or folder.name
    frames: dict[str, list[float]] = {}
    with open(fcsv, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["track"] in ("0", ""):
                frames.setdefault(r["path"], []).append(float(r["fake_prob"]))
    videos, no_face, unmatched = [], [], 0
    with open(vcsv, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            t = truth(r["path"])
            if t is None:
                unmatched += 1
                continue
            row = {"path": r["path"], "label": t[0], "method": t[1], "level": t[2]}
            if r["status"] == "no_face":
                no_face.append(row)
            elif r["status"] == "ok" and r["track"] in ("0", ""):
                videos.append({**row, "prob": float(r["fake_prob"])})
    if unmatched:
        logger.warning("%s: %d predicted videos are not in the ground truth (left out)", folder, unmatched)
    if not videos:
        raise DataError(f"{folder}: no scored video matches the ground truth")
    return _Pred(folder.name, train, videos, {k: np.asarray(v) for k, v in frames.items()}, no_face)


def _scores(pred: _Pred, videos: list[dict[str, Any]], threshold: float) -> dict[str, float]:
    y = np.array([v["label"] for v in videos])
    p = np.array([v["prob"] for v in videos])
    fy = np.concatenate([np.full(len(pred.frames.get(v["path"], [])), v["label"]) for v in videos])
    fp = np.concatenate([pred.frames.get(v["path"], np.zeros(0)) for v in videos])
    fr, vd = detection_scores(fy, fp, threshold), detection_scores(y, p, threshold)
    out = {"videos": len(videos), "frames": int(fy.size)}
    for k in ("auc", "acc", "eer", "ap"):
        out[f"frame_{k}"], out[f"video_{k}"] = fr[k], vd[k]
    return out


def _subsets(pred: _Pred) -> list[tuple[str, str, str, list[dict[str, Any]]]]:
    """(subset, level, method, videos): all, per level, per method and level (its fakes + the level's reals)."""
    v = pred.videos
    out = [("all", "all", "all", v)]
    levels = sorted({x["level"] for x in v})
    for lv in levels:
        at = [x for x in v if x["level"] == lv]
        out.append(("level", lv, "all", at))
        for m in sorted({x["method"] for x in at if x["label"] == 1}):
            out.append(("method", lv, m, [x for x in at if x["label"] == 0 or x["method"] == m]))
    return out


def _plot_roc(preds: list[_Pred], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(preds), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, pred in enumerate(preds):
        ax = fig.add_subplot(1, len(preds), i + 1)
        for lv in sorted({x["level"] for x in pred.videos}):
            at = [x for x in pred.videos if x["level"] == lv]
            fpr, tpr, _ = roc_curve([x["label"] for x in at], [x["prob"] for x in at])
            if fpr.size:
                ax.plot(fpr, tpr, label=f"{lv} (video)")
            fy = np.concatenate([np.full(len(pred.frames.get(x["path"], [])), x["label"]) for x in at])
            fp = np.concatenate([pred.frames.get(x["path"], np.zeros(0)) for x in at])
            fpr, tpr, _ = roc_curve(fy, fp)
            if fpr.size:
                ax.plot(fpr, tpr, ls="--", lw=1, label=f"{lv} (frame)")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{pred.name} (trained on {pred.train})")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


@dataclass(frozen=True)
class EvaluateResult:
    """What :func:`evaluate` returns: the overall scores of the first predict folder, the grid and the files."""

    overall: dict[str, float]
    grid: dict[str, dict[str, float]]
    metrics_csv: Path
    grid_csv: Path
    summary_json: Path
    roc_png: Path
    rows: list[dict[str, Any]]


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def evaluate(
    preds: Sequence[str | os.PathLike[str]],
    gt: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    threshold: float = 0.5,
) -> EvaluateResult:
    """Score predict folders against ``gt`` (module docstring); write the tables and the ROC plot to ``out``.

    Raises:
        DataError: a folder that is no predict output, a ground truth that matches none of its videos.
    """
    truth = ground_truth(gt)
    loaded = [_read_pred(Path(p).expanduser(), truth) for p in preds]
    rows: list[dict[str, Any]] = []
    grid: dict[str, dict[str, float]] = {}
    for pred in loaded:
        for subset, lv, method, vids in _subsets(pred):
            nf = sum(1 for x in pred.no_face if (lv == "all" or x["level"] == lv))
            rows.append(
                {
                    "pred": pred.name,
                    "train": pred.train,
                    "subset": subset,
                    "level": lv,
                    "method": method,
                    "no_face": nf,
                    **_scores(pred, vids, threshold),
                }
            )
            if subset == "level":
                grid.setdefault(pred.train, {})[lv] = rows[-1]["video_auc"]
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_csv = write_csv_atomic(out_dir / "metrics.csv", rows, METRIC_COLUMNS)
    levels = sorted({lv for g in grid.values() for lv in g})
    grid_rows = [{"train": t, **{lv: g.get(lv, "") for lv in levels}} for t, g in grid.items()]
    grid_csv = write_csv_atomic(out_dir / "grid.csv", grid_rows, ("train", *levels))
    overall = {k: v for k, v in rows[0].items() if k not in ("pred", "train", "subset", "level", "method")}
    summary = {
        "overall": {k: _clean(v) for k, v in overall.items()},
        "threshold": threshold,
        "grid_video_auc": {t: {lv: _clean(v) for lv, v in g.items()} for t, g in grid.items()},
        "no_face_videos": sum(len(p.no_face) for p in loaded),
        "preds": [str(p) for p in preds],
        "gt": str(gt),
    }
    summary_json = write_json_atomic(out_dir / "summary.json", summary)
    roc = _plot_roc(loaded, out_dir / "roc.png")
    return EvaluateResult(overall, grid, Path(metrics_csv), Path(grid_csv), Path(summary_json), roc, rows)
