"""Face-image quality evaluation: the Error-versus-Discard Characteristic (EDC), its AUC and partial AUC.

Protocol of CR-FIQA's evaluation scripts (fdbtrs/CR-FIQA ``ERC/erc.py``, ``ERC/roc.py``), which ViT-FIQA points
its users to:

* comparison score of a pair: dissimilarity ``arccos(cosine similarity) / pi`` of the two embeddings;
* pair quality = ``min(q_a, q_b)``; pairs are sorted by it (ascending, stable here) and the lowest fraction
  ``u`` is discarded, ``u = 0, 0.05, ..., 0.95`` (``np.arange(0, 0.98, 0.05)``; ``int(u * N)`` pairs);
* FNMR at FMR = 1e-2, 1e-3, 1e-4 on the remaining pairs. The threshold of an operating point is the score
  whose empirical FMR is closest to the target (``roc.py: get_fmr_op``, first on ties, FMR = share of
  impostors whose similarity ``-d`` is at least the threshold); FNMR = share of genuine pairs whose
  dissimilarity is *not strictly below* the threshold (``erc.py``).
* area under each curve with the trapezoidal rule over the discard fraction in [0, 0.95]
  (``sklearn.metrics.auc``), and partial areas up to 0.2 and 0.3 discard (DifFIQA/eDifFIQA report pAUC at
  FMR 1e-3); lower is better. Areas are not normalised by the interval length.

Two threshold conventions, both computed:

* ``recomputed``: the threshold is recomputed on the remaining pairs at every discard level (what CR-FIQA's
  ``getFNMRFixedTH`` actually does despite its name);
* ``fixed``: the threshold is set once on all pairs (0 % discard) and kept, as ISO/IEC 29794-1 and Schlett et
  al., "Considerations on the Evaluation of Biometric Quality Assessment Algorithms" (arXiv 2303.13294)
  recommend; then only the genuine pairs' rejections change as low-quality pairs are discarded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CONVENTIONS",
    "DISCARD_FRACTIONS",
    "EDCCurve",
    "EDCResult",
    "FMR_TARGETS",
    "dissimilarity",
    "edc",
    "fmr_threshold",
    "fnmr_at",
    "pair_quality",
    "partial_auc",
]

DISCARD_FRACTIONS: np.ndarray = np.arange(0, 0.98, 0.05)
"""0, 0.05, ..., 0.95: CR-FIQA's ``unconsidered_rates``."""
FMR_TARGETS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
CONVENTIONS: tuple[str, ...] = ("recomputed", "fixed")


def dissimilarity(cosine: np.ndarray) -> np.ndarray:
    """``arccos(clip(cos, -1, 1)) / pi``: 0 for identical directions, 1 for opposite ones."""
    return np.arccos(np.clip(np.asarray(cosine, dtype=np.float64), -1.0, 1.0)) / math.pi


def pair_quality(q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    """Quality of a comparison: the lower of the two images' qualities."""
    return np.minimum(np.asarray(q_a, dtype=np.float64), np.asarray(q_b, dtype=np.float64))


def fmr_threshold(genuine_d: np.ndarray, impostor_d: np.ndarray, fmr: float) -> float:
    """Dissimilarity threshold whose empirical FMR is closest to ``fmr`` (CR-FIQA ``roc.py``).

    Candidate thresholds are the distinct scores of both sets; FMR(t) = share of impostors with dissimilarity
    at most t (similarity ``-d`` at least ``-t``); ties between candidates go to the first in ascending
    similarity, i.e. the largest dissimilarity.

    Args:
        genuine_d: dissimilarities of genuine pairs ``[G]``.
        impostor_d: dissimilarities of impostor pairs ``[I]`` (I >= 1).
        fmr: target false-match rate.

    Returns:
        The threshold (NaN without impostors).
    """
    imp = np.asarray(impostor_d, dtype=np.float64)
    if imp.size == 0:
        return float("nan")
    sims = np.unique(-np.concatenate([np.asarray(genuine_d, dtype=np.float64), imp]))  # ascending similarity
    below = np.searchsorted(np.sort(-imp), sims, side="left")  # impostors with similarity < t
    rates = (imp.size - below) / imp.size
    return float(-sims[int(np.argmin(np.abs(rates - fmr)))])


def fnmr_at(genuine_d: np.ndarray, threshold: float) -> float:
    """Share of genuine pairs not accepted: dissimilarity not strictly below ``threshold`` (CR-FIQA ``erc.py``).

    Returns NaN without genuine pairs.
    """
    gen = np.asarray(genuine_d, dtype=np.float64)
    if gen.size == 0 or not math.isfinite(threshold):
        return float("nan")
    return float(1.0 - np.count_nonzero(gen < threshold) / gen.size)


def partial_auc(x: np.ndarray, y: np.ndarray, upto: float | None = None) -> float:
    """Trapezoidal area under ``y(x)`` for ``x <= upto`` (all points when None); NaN if a used y is NaN."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = x <= upto + 1e-12 if upto is not None else np.ones_like(x, dtype=bool)
    xs, ys = x[keep], y[keep]
    if xs.size < 2:
        return float("nan")
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


@dataclass
class EDCCurve:
    """One EDC curve.

    Attributes:
        convention: ``recomputed`` or ``fixed``.
        fmr: target FMR of the operating point.
        discard: discard fractions ``[K]``.
        fnmr: FNMR at each discard fraction ``[K]``.
        threshold: dissimilarity threshold used at each fraction ``[K]``.
        kept_pairs: pairs kept ``[K]``.
        kept_genuine: genuine pairs kept ``[K]``.
        auc: area over [0, 0.95].
        pauc_20: area over [0, 0.2].
        pauc_30: area over [0, 0.3].
    """

    convention: str
    fmr: float
    discard: np.ndarray
    fnmr: np.ndarray
    threshold: np.ndarray
    kept_pairs: np.ndarray
    kept_genuine: np.ndarray
    auc: float
    pauc_20: float
    pauc_30: float


@dataclass
class EDCResult:
    """All curves of one evaluation (every convention x FMR target)."""

    curves: list[EDCCurve] = field(default_factory=list)

    def curve(self, convention: str, fmr: float) -> EDCCurve:
        for c in self.curves:
            if c.convention == convention and math.isclose(c.fmr, fmr):
                return c
        raise KeyError(f"no EDC curve for convention={convention!r}, fmr={fmr}")

    def rows(self) -> list[dict[str, float | int | str]]:
        """Long-format rows: convention, fmr, discard, fnmr, threshold, kept_pairs, kept_genuine."""
        out: list[dict[str, float | int | str]] = []
        for c in self.curves:
            for k in range(len(c.discard)):
                out.append(
                    {
                        "convention": c.convention,
                        "fmr": c.fmr,
                        "discard": round(float(c.discard[k]), 4),
                        "fnmr": float(c.fnmr[k]),
                        "threshold": float(c.threshold[k]),
                        "kept_pairs": int(c.kept_pairs[k]),
                        "kept_genuine": int(c.kept_genuine[k]),
                    }
                )
        return out

    def summary(self) -> list[dict[str, float | str]]:
        """One row per curve: convention, fmr, fnmr at 0 % discard, auc, pauc_20, pauc_30."""
        return [
            {
                "convention": c.convention,
                "fmr": c.fmr,
                "fnmr_0": float(c.fnmr[0]),
                "auc": c.auc,
                "pauc_20": c.pauc_20,
                "pauc_30": c.pauc_30,
            }
            for c in self.curves
        ]


def edc(
    similarity: np.ndarray,
    issame: np.ndarray,
    quality: np.ndarray,
    *,
    fmrs: Sequence[float] = FMR_TARGETS,
    discard: np.ndarray | Sequence[float] = DISCARD_FRACTIONS,
    conventions: Sequence[str] = CONVENTIONS,
    higher_is_better: bool = True,
) -> EDCResult:
    """Error-versus-Discard curves of a quality measure.

    Args:
        similarity: cosine similarity of each pair's embeddings ``[N]`` (turned into ``arccos / pi``).
        issame: genuine pair (True) or impostor ``[N]``.
        quality: pair quality ``[N]`` (see :func:`pair_quality`).
        fmrs: FMR operating points.
        discard: discard fractions (ascending, starting at 0 for the ``fixed`` threshold).
        conventions: subset of ``("recomputed", "fixed")``.
        higher_is_better: False for measures where low means good (PFE uncertainty): sorted descending.

    Returns:
        An :class:`EDCResult` with one curve per (convention, fmr).

    Raises:
        ValueError: mismatched lengths, no genuine or no impostor pair, or an unknown convention.
    """
    d = dissimilarity(similarity)
    same = np.asarray(issame, dtype=bool)
    q = np.asarray(quality, dtype=np.float64)
    if not (d.shape == same.shape == q.shape) or d.ndim != 1:
        raise ValueError(f"similarity {d.shape}, issame {same.shape} and quality {q.shape} must be equal 1-D shapes")
    if not same.any() or same.all():
        raise ValueError("EDC needs genuine and impostor pairs")
    bad = sorted(set(conventions) - set(CONVENTIONS))
    if bad:
        raise ValueError(f"unknown convention(s) {bad}; choose from {CONVENTIONS}")
    if np.isnan(q).any():
        raise ValueError("quality contains NaN")
    fractions = np.asarray(discard, dtype=np.float64)
    order = np.argsort(q if higher_is_better else -q, kind="stable")
    n = d.size
    fixed_thr = {f: fmr_threshold(d[same], d[~same], f) for f in fmrs}
    result = EDCResult()
    for conv in conventions:
        for f in fmrs:
            fnmr, thr, kept, kept_g = [], [], [], []
            for u in fractions:
                idx = order[int(u * n) :]
                gen, imp = d[idx][same[idx]], d[idx][~same[idx]]
                t = fixed_thr[f] if conv == "fixed" else fmr_threshold(gen, imp, f)
                fnmr.append(fnmr_at(gen, t))
                thr.append(t)
                kept.append(idx.size)
                kept_g.append(gen.size)
            y = np.asarray(fnmr)
            result.curves.append(
                EDCCurve(
                    convention=conv,
                    fmr=float(f),
                    discard=fractions.copy(),
                    fnmr=y,
                    threshold=np.asarray(thr),
                    kept_pairs=np.asarray(kept),
                    kept_genuine=np.asarray(kept_g),
                    auc=partial_auc(fractions, y),
                    pauc_20=partial_auc(fractions, y, 0.2),
                    pauc_30=partial_auc(fractions, y, 0.3),
                )
            )
    return result
