"""Per-case, per-class Dice and HD95 of label maps (MONAI metrics), and their summaries.

The metrics themselves are MONAI's: ``monai.metrics.compute_dice`` and
``monai.metrics.compute_hausdorff_distance(percentile=95, spacing=...)`` (surface distances in mm, symmetric,
95th percentile of the pooled distances of both directions). This module adds what MONAI leaves to the caller:
one-hot encoding of integer label maps, the voxel spacing, and an explicit rule for empty structures.

Empty-structure convention (per case and foreground class; background is never scored):

====================  ==========  =====================================================
reference / predicted  Dice        HD95
====================  ==========  =====================================================
both non-empty         MONAI       MONAI (mm)
both empty             1.0         0.0
one of them empty      0.0         the image diagonal in mm, ``sqrt(sum((shape * spacing)**2))``
====================  ==========  =====================================================

"Both empty" is a correct answer (a structure absent from the scan and not predicted), scored as perfect like the
Medical Segmentation Decathlon's evaluation of absent tumours. "One empty" is a missed structure or a false
positive: Dice 0 as in nnU-Net; for HD95, MONAI returns NaN/inf, which a mean would silently drop, so we use the
largest distance possible inside the image (the diagonal), the same idea as the fixed 373.13 mm BraTS assigns.
Summaries therefore never skip a case; the case count per class is reported alongside.

References:
    Maier-Hein et al., "Metrics reloaded", Nat. Methods 2024 (empty-reference handling); Isensee et al., nnU-Net
    (``nnunetv2/evaluation/evaluate_predictions.py``: Dice per class, NaN when both are empty); MONAI
    ``monai/metrics/meandice.py`` and ``hausdorff_distance.py``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CONVENTION", "ClassScore", "dice_only", "score_case", "summarize"]

CONVENTION = {
    "background": "excluded",
    "both_empty": {"dice": 1.0, "hd95": 0.0},
    "one_empty": {"dice": 0.0, "hd95": "image diagonal in mm"},
    "hd95": "MONAI compute_hausdorff_distance(percentile=95), symmetric, in mm with the voxel spacing",
}


@dataclass(frozen=True)
class ClassScore:
    """Scores of one foreground class in one case.

    Attributes:
        label: the class value in the label maps.
        dice: Dice in [0, 1].
        hd95: 95th-percentile Hausdorff distance in mm.
        ref_voxels: voxels of the class in the reference.
        pred_voxels: voxels of the class in the prediction.
        empty: ``""`` (both present), ``"both"``, ``"reference"`` or ``"prediction"`` (which one was empty).
    """

    label: int
    dice: float
    hd95: float
    ref_voxels: int
    pred_voxels: int
    empty: str = ""


def _one_hot(labels: np.ndarray, values: Sequence[int]) -> Any:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(labels))
    return torch.stack([t == v for v in values]).unsqueeze(0)  # [1, C, *spatial] bool


def score_case(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Iterable[int],
    spacing: Sequence[float] | None = None,
    *,
    hd95: bool = True,
) -> list[ClassScore]:
    """Dice and HD95 of every foreground class of one case (see the module docstring for empty classes).

    Args:
        pred: predicted integer label map ``[*spatial]``.
        ref: reference label map of the same shape.
        labels: foreground class values to score (0 is skipped if given).
        spacing: voxel size in mm per axis (default 1 mm).
        hd95: also compute HD95 (the slower part); NaN otherwise.

    Returns:
        One :class:`ClassScore` per label, in the given order.

    Raises:
        ValueError: shapes differ or the spacing does not match the dimensionality.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance

    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    values = [int(v) for v in labels if int(v) != 0]
    sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * ref.ndim
    if len(sp) != ref.ndim:
        raise ValueError(f"spacing {sp} has {len(sp)} entries for a {ref.ndim}D label map")
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(ref.shape, sp, strict=True)))
    if not values:
        return []
    p1, r1 = _one_hot(pred, values), _one_hot(ref, values)
    n_pred = p1.flatten(2).sum(-1)[0].tolist()
    n_ref = r1.flatten(2).sum(-1)[0].tolist()
    both = [i for i in range(len(values)) if n_pred[i] and n_ref[i]]
    dice_vals: dict[int, float] = {}
    hd_vals: dict[int, float] = {}
    if both:
        p, r = p1[:, both].double(), r1[:, both].double()
        d = compute_dice(p, r, include_background=True, ignore_empty=False)[0].tolist()
        dice_vals = dict(zip(both, d, strict=True))
        if hd95:
            with warnings.catch_warnings():  # MONAI deprecation chatter inside its own helper
                warnings.simplefilter("ignore")
                h = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(sp))
            hd_vals = dict(zip(both, h[0].tolist(), strict=True))
    out = []
    for i, v in enumerate(values):
        if i in dice_vals:
            out.append(ClassScore(v, float(dice_vals[i]), float(hd_vals.get(i, math.nan)), n_ref[i], n_pred[i]))
        elif not n_pred[i] and not n_ref[i]:
            out.append(ClassScore(v, 1.0, 0.0 if hd95 else math.nan, 0, 0, "both"))
        else:
            empty = "reference" if not n_ref[i] else "prediction"
            out.append(ClassScore(v, 0.0, diagonal if hd95 else math.nan, n_ref[i], n_pred[i], empty))
    return out


def dice_only(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice per foreground class with the same empty-structure rule, without HD95 (validation during training)."""
    return {s.label: s.dice for s in score_case(pred, ref, labels, hd95=False)}


def _mean_sd(values: Sequence[float]) -> dict[str, float | int]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "sd": sd, "n": int(arr.size)}


def summarize(
    rows: Iterable[Mapping[str, Any]],
    label_names: Mapping[int, str] | None = None,
    metrics: Sequence[str] = ("dice", "hd95"),
) -> dict[str, Any]:
    """Mean ± sd per class and overall from per-case, per-class rows.

    Args:
        rows: mappings with ``case``, ``label`` (int) and one value per metric (e.g. from :func:`score_case`
            flattened, or read back from ``metrics.csv``).
        label_names: class value -> name, for readable keys (default ``str(label)``).
        metrics: metric columns to summarise.

    Returns:
        ``{"per_class": {name: {metric: {"mean", "sd", "n"}}}, "overall": {metric: {"mean", "sd", "n"}},
        "cases": n, "convention": CONVENTION}``. ``overall`` averages each case's mean over classes and gives
        the sd across cases (so it reflects case-to-case variability); with every class scored in every case
        its mean equals the mean of the per-class means (nnU-Net's ``foreground_mean``).
    """
    rows = list(rows)
    names = dict(label_names or {})
    labels = sorted({int(r["label"]) for r in rows})
    per_class: dict[str, Any] = {}
    for lab in labels:
        sel = [r for r in rows if int(r["label"]) == lab]
        per_class[names.get(lab, str(lab))] = {m: _mean_sd([float(r[m]) for r in sel]) for m in metrics}
    cases = sorted({str(r["case"]) for r in rows})
    overall: dict[str, Any] = {}
    for m in metrics:
        case_means = []
        for c in cases:
            vals = [float(r[m]) for r in rows if str(r["case"]) == c and math.isfinite(float(r[m]))]
            if vals:
                case_means.append(float(np.mean(vals)))
        overall[m] = _mean_sd(case_means)
    return {"per_class": per_class, "overall": overall, "cases": len(cases), "convention": CONVENTION}
