"""Nucleus instance metrics: PQ (binary, per class, mPQ+), AJI / AJI+, binary Dice and detection F1.

Definitions follow the code that the pathology literature reports with (numpy / scipy only, no torch):

* Pairing and PQ: HoVer-Net's ``get_fast_pq`` as CellViT uses it (Graham et al., Med. Image Anal. 2019; Hörst et
  al., Med. Image Anal. 2024). A GT nucleus and a predicted nucleus pair when their IoU is strictly above
  ``match_iou`` (0.5). Above 0.5 such pairs are provably unique (two disjoint predictions cannot both cover more
  than half of the union with one GT nucleus), so no assignment problem is solved; below 0.5 a Hungarian
  assignment (``scipy.optimize.linear_sum_assignment``) maximises the summed IoU first and pairs under the
  threshold are dropped. TP = pairs, FP = unpaired predictions, FN = unpaired GT nuclei, and
  ``DQ = TP / (TP + FP/2 + FN/2 + 1e-6)``, ``SQ = sum(IoU of pairs) / (TP + 1e-6)``, ``PQ = DQ * SQ``. The two
  1e-6 terms are CellViT's (HoVer-Net's own code has only the SQ one); they make an empty comparison 0, never a
  division by zero, and move no reported digit.
* Per-image quantities (PanNuke style, Gamper et al. 2020 and CellViT's PanNuke inference): ``bPQ_i`` on all
  nuclei regardless of type; ``PQ_{c,i}`` between the class-c GT nuclei and the class-c predicted nuclei;
  ``mPQ_i = nanmean_c PQ_{c,i}``.
* Aggregations over a set: the **image average** (``nanmean_i``; what CellViT's "dataset" metrics and CellVTA
  report) and the **tissue average** of the official PanNuke evaluation (per tissue ``nanmean_i``, then the mean
  over tissues). The CoNIC challenge's **mPQ+** sums TP, FP, FN and IoU of each class over the whole set, takes
  ``PQ_c`` from the sums and averages over classes (Graham et al., CoNIC challenge 2021).
* AJI: the MoNuSeg version (Kumar et al., IEEE TMI 2017; HoVer-Net's ``get_fast_aji``): every GT nucleus takes the
  prediction of highest IoU (a prediction may be taken several times); the intersections and unions of those
  pairs are summed, the areas of GT nuclei without any overlap and of predictions taken by no GT nucleus are added
  to the union. AJI+ takes a one-to-one Hungarian pairing on IoU instead (HoVer-Net's ``get_fast_aji_plus``).
* Detection F1: nucleus centroids paired by a Hungarian assignment on the Euclidean distance, pairs farther than
  the radius (12 px at 40x, 6 px at 20x; inclusive, ``<=``) dropped, counts pooled over the set:
  ``F1_d = 2 TP / (2 TP + FP + FN)``. Per class, HoVer-Net's ``run_nuclei_type_stat`` convention with weights
  ``w = [2, 2, 1, 1]``: over the paired nuclei where GT or prediction is class c, ``TP_c`` = both c, ``TN_c`` =
  neither (always 0 within that selection, kept for the formula), ``FP_c`` = prediction c / GT not c,
  ``FN_c`` = GT c / prediction not c; ``FP_{d,c}`` / ``FN_{d,c}`` = unpaired predicted / GT nuclei of class c;
  ``F1_c = 2 (TP_c + TN_c) / (2 (TP_c + TN_c) + 2 FP_c + 2 FN_c + FP_{d,c} + FN_{d,c})``.

Instance maps are integer ``[H, W]`` arrays, 0 = background, ids need not be contiguous. Type maps are integer
``[H, W]`` arrays, 0 = background, 1..C = classes; a nucleus takes the majority of the non-zero types under it
(ties: the smaller type id), type 0 if it has none (such a nucleus counts for the binary metrics and detection,
for no class).

NaN rules (:data:`NAN_RULES` holds the same text for reports):

* ``bPQ_i`` (and ``bDQ_i``, ``bSQ_i``) is NaN when the GT image has no nucleus (its false positives are not scored).
* ``PQ_{c,i}`` (and ``DQ_{c,i}``, ``SQ_{c,i}``) is NaN when the GT image has no class-c nucleus, even when the
  prediction has some: a prediction-only class is NaN, not 0.
* ``mPQ_i`` is the nanmean over classes; NaN when the GT image has no typed nucleus.
* Image and tissue averages skip NaN values; a tissue with no finite value is left out of the mean over tissues;
  an average with no finite value at all is NaN.
* mPQ+: a class with neither GT nor predicted nuclei in the whole set has ``PQ_c`` = NaN and is left out of the
  mean over classes. (The CoNIC challenge code would count it as 0, which only happens on sets smaller than a
  challenge test set; a class with predictions but no GT in the set scores 0 in both.)
* Per-image binary Dice, AJI and AJI+ are NaN when GT and prediction are both empty (0/0); an empty GT with
  predicted nuclei scores 0.
* Per-class detection F1 is NaN for a class that neither the GT nor the prediction contains in the whole set;
  detection precision / recall / F1 are NaN on 0/0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "DETECTION_WEIGHTS",
    "NAN_RULES",
    "DetectionScores",
    "DetectionTally",
    "ImageScores",
    "Matching",
    "Overlap",
    "PQStats",
    "aji",
    "aji_plus",
    "binary_dice",
    "centroids",
    "detection_radius",
    "detection_scores",
    "image_average",
    "instance_types",
    "match_instances",
    "mpq_plus",
    "overlap",
    "pair_coordinates",
    "pq_stats",
    "remap_label",
    "score_image",
    "tissue_average",
]

EPS = 1.0e-6
"""The constant of CellViT's DQ and SQ denominators."""

DETECTION_WEIGHTS: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)
"""HoVer-Net's per-class F1 weights of (FP_c, FN_c, FP_{d,c}, FN_{d,c})."""

NAN_RULES = (
    "bPQ/bDQ/bSQ of an image: NaN when its GT has no nucleus. PQ/DQ/SQ of class c in an image: NaN when its GT has "
    "no class-c nucleus (a prediction-only class is NaN, not 0). mPQ of an image: nanmean over classes. Image and "
    "tissue averages skip NaN; a tissue with no finite value is left out of the mean over tissues. mPQ+: a class "
    "with neither GT nor predicted nuclei in the whole set is NaN and left out of the class mean (the CoNIC code "
    "would count 0). Dice/AJI/AJI+ of an image: NaN only when GT and prediction are both empty. Detection F1 per "
    "class: NaN for a class absent from GT and prediction in the whole set."
)
"""One-paragraph statement of the NaN rules, written into evaluation summaries."""

_DENSE_LIMIT = 1 << 22  # above this many (gt, pred) cells the contingency is built sparse (np.unique)


# ============================================================================================== instance maps
def _check_instances(inst: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(inst)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected an [H, W] instance map, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: instance ids must be integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what}: instance ids must be >= 0")
    return arr


def _codes(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous codes of an instance map.

    Returns:
        ``(ids, codes)``: ``ids`` int64 ``[N]``, the sorted non-zero ids; ``codes`` int64 ``[H*W]``, 0 for
        background and ``k + 1`` for a pixel of ``ids[k]``.
    """
    flat = inst.ravel().astype(np.int64, copy=False)
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 65536:  # the usual case: a lookup table, linear time (np.unique sorts)
        ids = np.flatnonzero(np.bincount(flat, minlength=top + 1)[1:]) + 1
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids.astype(np.int64), lut[flat]
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.astype(np.int64).ravel()
    if ids[0] == 0:
        return ids[1:].astype(np.int64), inverse
    return ids.astype(np.int64), inverse + 1


def remap_label(inst: np.ndarray, by_size: bool = False) -> np.ndarray:
    """Renumber the instances of a map to 1..N (background stays 0).

    Args:
        inst: instance map ``[H, W]``, integer ids >= 0.
        by_size: number the largest nucleus 1 (ties: the smaller original id first); default keeps the order of
            the original ids.

    Returns:
        int32 ``[H, W]`` with ids 1..N.
    """
    arr = _check_instances(inst, "remap_label")
    ids, codes = _codes(arr)
    lut = np.arange(ids.size + 1, dtype=np.int32)
    if by_size and ids.size:
        area = np.bincount(codes, minlength=ids.size + 1)[1:]
        order = np.argsort(-area, kind="stable")  # order[k] = code - 1 of the k-th largest
        lut[order + 1] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[codes].reshape(arr.shape)


# ============================================================================================ overlap + pairing
@dataclass(frozen=True)
class Overlap:
    """Areas and pairwise intersections of the nuclei of a GT and a predicted instance map.

    Only overlapping pairs are stored (sparse); indices refer to positions in ``gt_ids`` / ``pred_ids``.

    Attributes:
        gt_ids: int64 ``[G]`` sorted non-zero GT ids.
        pred_ids: int64 ``[P]`` sorted non-zero predicted ids.
        gt_area: int64 ``[G]`` pixels per GT nucleus.
        pred_area: int64 ``[P]`` pixels per predicted nucleus.
        gt_index: int64 ``[K]`` GT position of each overlapping pair.
        pred_index: int64 ``[K]`` predicted position of each overlapping pair.
        inter: int64 ``[K]`` pixels in common (> 0).
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray
    inter: np.ndarray

    @property
    def union(self) -> np.ndarray:
        """int64 ``[K]`` pixels in the union of each pair."""
        return self.gt_area[self.gt_index] + self.pred_area[self.pred_index] - self.inter

    @property
    def iou(self) -> np.ndarray:
        """float64 ``[K]`` exact IoU of each pair."""
        return self.inter / self.union


def overlap(gt_inst: np.ndarray, pred_inst: np.ndarray) -> Overlap:
    """Areas and pairwise intersections from one contingency count over the (GT id, predicted id) pixel pairs.

    No per-nucleus mask is ever built: pixels lying in a GT and a predicted nucleus are coded
    ``g * (P + 1) + p`` and counted once (``np.bincount``, or ``np.unique`` when ``(G+1)(P+1)`` is large).

    Args:
        gt_inst: GT instance map ``[H, W]``.
        pred_inst: predicted instance map ``[H, W]``.

    Returns:
        The :class:`Overlap`.

    Raises:
        ValueError: shapes differ, or a map is not a non-negative integer ``[H, W]`` array.
    """
    gt = _check_instances(gt_inst, "GT")
    pred = _check_instances(pred_inst, "prediction")
    if gt.shape != pred.shape:
        raise ValueError(f"GT shape {gt.shape} != prediction shape {pred.shape}")
    return _overlap(*_codes(gt), *_codes(pred))


def _overlap(gt_ids: np.ndarray, g: np.ndarray, pred_ids: np.ndarray, p: np.ndarray) -> Overlap:
    """:func:`overlap` from the :func:`_codes` of both maps."""
    n_g, n_p = gt_ids.size, pred_ids.size
    gt_area = np.bincount(g, minlength=n_g + 1)[1:].astype(np.int64)
    pred_area = np.bincount(p, minlength=n_p + 1)[1:].astype(np.int64)
    both = (g > 0) & (p > 0)
    joint = g[both] * (n_p + 1) + p[both]
    if (n_g + 1) * (n_p + 1) <= _DENSE_LIMIT:
        counts = np.bincount(joint, minlength=(n_g + 1) * (n_p + 1))
        pairs = np.flatnonzero(counts)
        inter = counts[pairs]
    else:
        pairs, inter = np.unique(joint, return_counts=True)
    return Overlap(
        gt_ids=gt_ids,
        pred_ids=pred_ids,
        gt_area=gt_area,
        pred_area=pred_area,
        gt_index=(pairs // (n_p + 1) - 1).astype(np.int64),
        pred_index=(pairs % (n_p + 1) - 1).astype(np.int64),
        inter=np.asarray(inter, dtype=np.int64),
    )


@dataclass(frozen=True)
class Matching:
    """A one-to-one pairing of GT and predicted nuclei.

    Attributes:
        gt_index: int64 ``[M]`` paired GT positions (into ``Overlap.gt_ids``).
        pred_index: int64 ``[M]`` paired predicted positions.
        iou: float64 ``[M]`` IoU of each pair.
        unpaired_gt: int64 ``[FN]`` GT positions without a partner (among the selected ones).
        unpaired_pred: int64 ``[FP]`` predicted positions without a partner (among the selected ones).
    """

    gt_index: np.ndarray
    pred_index: np.ndarray
    iou: np.ndarray
    unpaired_gt: np.ndarray
    unpaired_pred: np.ndarray


def _selection(keep: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)


def match_instances(
    ov: Overlap,
    match_iou: float = 0.5,
    *,
    gt_keep: np.ndarray | None = None,
    pred_keep: np.ndarray | None = None,
) -> Matching:
    """Pair GT and predicted nuclei with IoU strictly above ``match_iou`` (HoVer-Net ``get_fast_pq``).

    Args:
        ov: the :class:`Overlap` of the two maps.
        match_iou: IoU threshold (strict ``>``). ``>= 0.5``: every pair above it (unique by construction);
            ``< 0.5``: Hungarian assignment maximising the summed IoU, then pairs at or below it dropped.
        gt_keep: bool ``[G]``, the GT nuclei taking part (default all), e.g. those of one class.
        pred_keep: bool ``[P]``, the predicted nuclei taking part (default all).

    Returns:
        The :class:`Matching`.
    """
    if not 0.0 <= match_iou < 1.0:
        raise ValueError(f"match_iou must be in [0, 1), got {match_iou}")
    gk = _selection(gt_keep, ov.gt_ids.size)
    pk = _selection(pred_keep, ov.pred_ids.size)
    sel = gk[ov.gt_index] & pk[ov.pred_index]
    gi, pi, iou = ov.gt_index[sel], ov.pred_index[sel], ov.iou[sel]
    if match_iou >= 0.5:
        ok = iou > match_iou
        gi, pi, iou = gi[ok], pi[ok], iou[ok]
    elif gi.size:
        rows, r_inv = np.unique(gi, return_inverse=True)
        cols, c_inv = np.unique(pi, return_inverse=True)
        dense = np.zeros((rows.size, cols.size))
        dense[r_inv, c_inv] = iou
        r, c = linear_sum_assignment(-dense)
        ok = dense[r, c] > match_iou
        gi, pi, iou = rows[r[ok]], cols[c[ok]], dense[r[ok], c[ok]]
    paired_g = np.zeros(ov.gt_ids.size, dtype=bool)
    paired_g[gi] = True
    paired_p = np.zeros(ov.pred_ids.size, dtype=bool)
    paired_p[pi] = True
    return Matching(
        gt_index=gi.astype(np.int64),
        pred_index=pi.astype(np.int64),
        iou=iou.astype(np.float64),
        unpaired_gt=np.flatnonzero(gk & ~paired_g),
        unpaired_pred=np.flatnonzero(pk & ~paired_p),
    )


# ========================================================================================================= PQ
@dataclass(frozen=True)
class PQStats:
    """The counts behind DQ, SQ and PQ; ``+`` adds two (sums over images, as mPQ+ does).

    Attributes:
        tp: paired nuclei.
        fp: unpaired predicted nuclei.
        fn: unpaired GT nuclei.
        iou_sum: summed IoU of the pairs.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: PQStats) -> PQStats:
        return PQStats(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.iou_sum + other.iou_sum)

    @classmethod
    def from_matching(cls, m: Matching) -> PQStats:
        """The counts of a :class:`Matching`."""
        return cls(int(m.gt_index.size), int(m.unpaired_pred.size), int(m.unpaired_gt.size), float(m.iou.sum()))

    @property
    def n_gt(self) -> int:
        """GT nuclei (TP + FN)."""
        return self.tp + self.fn

    @property
    def n_pred(self) -> int:
        """Predicted nuclei (TP + FP)."""
        return self.tp + self.fp

    @property
    def dq(self) -> float:
        """Detection quality ``TP / (TP + FP/2 + FN/2 + 1e-6)``."""
        return self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn + EPS)

    @property
    def sq(self) -> float:
        """Segmentation quality ``sum(IoU) / (TP + 1e-6)``."""
        return self.iou_sum / (self.tp + EPS)

    @property
    def pq(self) -> float:
        """Panoptic quality ``DQ * SQ``."""
        return self.dq * self.sq


def pq_stats(gt_inst: np.ndarray, pred_inst: np.ndarray, match_iou: float = 0.5) -> PQStats:
    """TP / FP / FN / summed IoU of two instance maps ``[H, W]`` (see :func:`match_instances`)."""
    return PQStats.from_matching(match_instances(overlap(gt_inst, pred_inst), match_iou))


# ================================================================================================ AJI, Dice
def _aji_total(ov: Overlap, chosen: np.ndarray) -> float:
    """AJI of the chosen overlapping pairs (positions into the pair arrays of ``ov``): their summed intersection
    over their summed union plus the areas of the GT nuclei and predictions in no chosen pair; NaN on 0 / 0."""
    taken_g = np.zeros(ov.gt_ids.size, dtype=bool)
    taken_g[ov.gt_index[chosen]] = True
    taken_p = np.zeros(ov.pred_ids.size, dtype=bool)
    taken_p[ov.pred_index[chosen]] = True
    total_inter = float(ov.inter[chosen].sum())
    total_union = float(ov.union[chosen].sum() + ov.gt_area[~taken_g].sum() + ov.pred_area[~taken_p].sum())
    return total_inter / total_union if total_union > 0 else math.nan


def _aji_iou(ov: Overlap) -> np.ndarray:
    """float64 ``[K]`` pair IoU as HoVer-Net's AJI computes it, ``inter / (union + 1e-6)`` (which breaks exact IoU
    ties towards the larger pair, as there)."""
    return ov.inter / (ov.union + EPS)


def aji(gt_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Aggregated Jaccard Index, MoNuSeg version (HoVer-Net ``get_fast_aji``).

    Each GT nucleus takes the prediction of highest IoU (reuse allowed; ties: the smaller predicted id); GT nuclei
    with no overlap and predictions taken by no GT nucleus add their areas to the union.

    Args:
        gt_inst: GT instance map ``[H, W]``.
        pred_inst: predicted instance map ``[H, W]``.

    Returns:
        AJI in [0, 1]; NaN when both maps are empty.
    """
    return _aji(overlap(gt_inst, pred_inst))


def _aji(ov: Overlap) -> float:
    order = np.lexsort((ov.pred_index, -_aji_iou(ov), ov.gt_index))  # per GT nucleus, best pair first
    first = np.ones(order.size, dtype=bool)
    first[1:] = ov.gt_index[order][1:] != ov.gt_index[order][:-1]
    return _aji_total(ov, order[first])


def aji_plus(gt_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """AJI+ (HoVer-Net ``get_fast_aji_plus``): AJI with a one-to-one Hungarian pairing maximising summed IoU.

    Args:
        gt_inst: GT instance map ``[H, W]``.
        pred_inst: predicted instance map ``[H, W]``.

    Returns:
        AJI+ in [0, 1]; NaN when both maps are empty.
    """
    return _aji_plus(overlap(gt_inst, pred_inst))


def _aji_plus(ov: Overlap) -> float:
    if ov.inter.size == 0:
        return _aji_total(ov, np.zeros(0, np.int64))
    # The assignment only needs the nuclei that overlap something: the others stay unpaired whatever it does.
    rows, r_inv = np.unique(ov.gt_index, return_inverse=True)
    cols, c_inv = np.unique(ov.pred_index, return_inverse=True)
    dense = np.zeros((rows.size, cols.size))
    dense[r_inv, c_inv] = _aji_iou(ov)
    pair_of = np.full((rows.size, cols.size), -1, np.int64)
    pair_of[r_inv, c_inv] = np.arange(ov.inter.size)
    r, c = linear_sum_assignment(-dense)
    chosen = pair_of[r, c]
    return _aji_total(ov, chosen[chosen >= 0])


def binary_dice(gt_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Dice of the nucleus masks ``2 |G & P| / (|G| + |P|)`` of two ``[H, W]`` maps (non-zero = nucleus).

    Returns:
        Dice in [0, 1]; NaN when both masks are empty.
    """
    g, p = np.asarray(gt_inst) > 0, np.asarray(pred_inst) > 0
    if g.shape != p.shape:
        raise ValueError(f"GT shape {g.shape} != prediction shape {p.shape}")
    denom = int(g.sum()) + int(p.sum())
    return 2.0 * int((g & p).sum()) / denom if denom else math.nan


# ============================================================================================ nucleus attributes
def instance_types(inst: np.ndarray, type_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The type of every nucleus: the majority of the non-zero types under it (ties: the smaller type id).

    Args:
        inst: instance map ``[H, W]``.
        type_map: integer type map ``[H, W]`` (0 = background, 1..C).

    Returns:
        ``(ids, types)``: int64 ``[N]`` sorted non-zero ids and int64 ``[N]`` types (0 when no pixel of the
        nucleus has a non-zero type).
    """
    arr = _check_instances(inst, "instance map")
    tm = np.asarray(type_map)
    if tm.shape != arr.shape:
        raise ValueError(f"type map shape {tm.shape} != instance map shape {arr.shape}")
    if tm.size and tm.min() < 0:
        raise ValueError("type ids must be >= 0")
    ids, codes = _codes(arr)
    return ids, _types(ids, codes, tm)


def _types(ids: np.ndarray, codes: np.ndarray, tm: np.ndarray) -> np.ndarray:
    """int64 ``[N]`` majority types from the :func:`_codes` of an instance map and its type map ``[H, W]``."""
    n_types = int(tm.max()) + 1 if tm.size else 1
    votes = np.bincount(codes * n_types + tm.ravel().astype(np.int64), minlength=(ids.size + 1) * n_types)
    votes = votes.reshape(ids.size + 1, n_types)[1:, 1:]  # drop background pixels and type-0 votes
    if votes.shape[1] == 0:
        return np.zeros(ids.size, np.int64)
    types = np.argmax(votes, axis=1).astype(np.int64) + 1
    types[votes.sum(axis=1) == 0] = 0
    return types


def centroids(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid of every nucleus (mean pixel position).

    Args:
        inst: instance map ``[H, W]``.

    Returns:
        ``(ids, xy)``: int64 ``[N]`` sorted non-zero ids and float64 ``[N, 2]`` centroids as (x = column,
        y = row), in pixels.
    """
    arr = _check_instances(inst, "instance map")
    ids, codes = _codes(arr)
    return ids, _centroids(ids, codes, arr.shape)


def _centroids(ids: np.ndarray, codes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """float64 ``[N, 2]`` (x, y) centroids from the :func:`_codes` of an instance map of ``shape``."""
    rows, cols = np.indices(shape).reshape(2, -1)
    area = np.bincount(codes, minlength=ids.size + 1)[1:].astype(np.float64)
    x = np.bincount(codes, weights=cols, minlength=ids.size + 1)[1:] / np.maximum(area, 1)
    y = np.bincount(codes, weights=rows, minlength=ids.size + 1)[1:] / np.maximum(area, 1)
    return np.stack([x, y], axis=1).reshape(-1, 2)


# ================================================================================================== detection
def detection_radius(magnification: float) -> float:
    """Pairing radius of detection F1 in pixels: 12 px at 40x, 6 px at 20x (CellViT), linear in between."""
    if not magnification > 0:
        raise ValueError(f"magnification must be > 0, got {magnification}")
    return 12.0 * float(magnification) / 40.0


def pair_coordinates(
    gt_xy: np.ndarray, pred_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair two point sets by a Hungarian assignment on Euclidean distance, keeping pairs within ``radius``.

    As HoVer-Net's ``pair_coordinates``: the assignment minimises the summed distance over all points, then pairs
    farther than ``radius`` are dropped (a distance equal to the radius still pairs).

    Args:
        gt_xy: float ``[N, 2]`` GT points.
        pred_xy: float ``[M, 2]`` predicted points.
        radius: largest distance of a pair, pixels.

    Returns:
        ``(pairs, unpaired_gt, unpaired_pred)``: int64 ``[K, 2]`` (GT index, predicted index), int64 ``[N - K]``,
        int64 ``[M - K]``.
    """
    a = np.asarray(gt_xy, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((0, 2), np.int64), np.arange(a.shape[0]), np.arange(b.shape[0])
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    r, c = linear_sum_assignment(dist)
    ok = dist[r, c] <= radius
    pairs = np.stack([r[ok], c[ok]], axis=1).astype(np.int64)
    return (
        pairs,
        np.setdiff1d(np.arange(a.shape[0]), pairs[:, 0]).astype(np.int64),
        np.setdiff1d(np.arange(b.shape[0]), pairs[:, 1]).astype(np.int64),
    )


def _empty_int() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass(frozen=True)
class DetectionTally:
    """Types of the paired and unpaired nuclei of one or more images; ``+`` pools two tallies.

    Attributes:
        paired_gt_type: int64 ``[TP]`` GT type of each pair.
        paired_pred_type: int64 ``[TP]`` predicted type of each pair.
        unpaired_gt_type: int64 ``[FN]`` types of the GT nuclei without a partner.
        unpaired_pred_type: int64 ``[FP]`` types of the predictions without a partner.
    """

    paired_gt_type: np.ndarray = field(default_factory=_empty_int)
    paired_pred_type: np.ndarray = field(default_factory=_empty_int)
    unpaired_gt_type: np.ndarray = field(default_factory=_empty_int)
    unpaired_pred_type: np.ndarray = field(default_factory=_empty_int)

    def __add__(self, other: DetectionTally) -> DetectionTally:
        return DetectionTally(
            *(
                np.concatenate([getattr(self, k), getattr(other, k)])
                for k in ("paired_gt_type", "paired_pred_type", "unpaired_gt_type", "unpaired_pred_type")
            )
        )

    @classmethod
    def from_points(
        cls,
        gt_xy: np.ndarray,
        gt_types: np.ndarray,
        pred_xy: np.ndarray,
        pred_types: np.ndarray,
        radius: float,
    ) -> DetectionTally:
        """Tally of one image from centroids ``[N, 2]`` / ``[M, 2]`` and types ``[N]`` / ``[M]``."""
        gt_types = np.asarray(gt_types, np.int64)
        pred_types = np.asarray(pred_types, np.int64)
        pairs, ug, up = pair_coordinates(gt_xy, pred_xy, radius)
        return cls(gt_types[pairs[:, 0]], pred_types[pairs[:, 1]], gt_types[ug], pred_types[up])


@dataclass(frozen=True)
class DetectionScores:
    """Detection precision / recall / F1 and per-class F1 of a tally.

    Attributes:
        tp: paired nuclei; fp: unpaired predictions; fn: unpaired GT nuclei.
        precision: ``TP / (TP + FP)``; recall: ``TP / (TP + FN)``; f1: ``2 TP / (2 TP + FP + FN)`` (NaN on 0/0).
        f1_per_class: float64 ``[C]``, classes 1..C in HoVer-Net's weighted convention (module docstring).
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    f1_per_class: np.ndarray


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _class_f1(t: DetectionTally, c: int, w: Sequence[float]) -> float:
    involved = (t.paired_gt_type == c) | (t.paired_pred_type == c)
    g, p = t.paired_gt_type[involved], t.paired_pred_type[involved]
    tp_tn = float(((g == c) & (p == c)).sum() + ((g != c) & (p != c)).sum())  # the second term is 0 by selection
    fp_c = float(((g != c) & (p == c)).sum())
    fn_c = float(((g == c) & (p != c)).sum())
    fp_d = float((t.unpaired_pred_type == c).sum())
    fn_d = float((t.unpaired_gt_type == c).sum())
    return _ratio(2 * tp_tn, 2 * tp_tn + w[0] * fp_c + w[1] * fn_c + w[2] * fp_d + w[3] * fn_d)


def detection_scores(
    tally: DetectionTally, num_classes: int, weights: Sequence[float] = DETECTION_WEIGHTS
) -> DetectionScores:
    """Pooled detection scores and per-class F1 (classes 1..``num_classes``) of a tally."""
    tp, fp, fn = tally.paired_gt_type.size, tally.unpaired_pred_type.size, tally.unpaired_gt_type.size
    return DetectionScores(
        tp=int(tp),
        fp=int(fp),
        fn=int(fn),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        f1_per_class=np.array([_class_f1(tally, c, weights) for c in range(1, num_classes + 1)], np.float64),
    )


# ================================================================================================ per image
@dataclass(frozen=True)
class ImageScores:
    """Every per-image quantity of one GT / prediction pair (NaN rules in the module docstring).

    Attributes:
        binary: PQ counts of all nuclei.
        per_class: PQ counts of classes 1..C, ``[C]`` (summed over images for mPQ+).
        bpq, bdq, bsq: binary PQ / DQ / SQ (NaN without GT nuclei).
        pq, dq, sq: float64 ``[C]`` per-class PQ / DQ / SQ (NaN where the GT has no nucleus of the class).
        mpq, mdq, msq: nanmean of ``pq`` / ``dq`` / ``sq`` (NaN when all are NaN).
        dice: binary Dice; aji: AJI; aji_plus: AJI+.
        detection: centroid pairing tally of the image.
        gt_counts: int64 ``[C]`` GT nuclei per class.
    """

    binary: PQStats
    per_class: tuple[PQStats, ...]
    bpq: float
    bdq: float
    bsq: float
    pq: np.ndarray
    dq: np.ndarray
    sq: np.ndarray
    mpq: float
    mdq: float
    msq: float
    dice: float
    aji: float
    aji_plus: float
    detection: DetectionTally
    gt_counts: np.ndarray


def _nanmean(values: Iterable[float]) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _coded(inst: np.ndarray, type_map: np.ndarray, num_classes: int, what: str) -> tuple[np.ndarray, ...]:
    """``(ids [N], codes [H*W], types [N], xy [N, 2])`` of one map, its instances coded once for every metric."""
    arr = _check_instances(inst, what)
    tm = np.asarray(type_map)
    if tm.shape != arr.shape or not np.issubdtype(tm.dtype, np.integer) or (tm.size and tm.min() < 0):
        raise ValueError(f"{what}: the type map must be a non-negative integer array of shape {arr.shape}")
    ids, codes = _codes(arr)
    types = _types(ids, codes, tm)
    if types.size and types.max() > num_classes:
        raise ValueError(f"{what}: type id {int(types.max())} > num_classes {num_classes}")
    return ids, codes, types, _centroids(ids, codes, arr.shape)


def score_image(
    gt_inst: np.ndarray,
    gt_type: np.ndarray,
    pred_inst: np.ndarray,
    pred_type: np.ndarray,
    num_classes: int,
    *,
    match_iou: float = 0.5,
    radius: float = 12.0,
) -> ImageScores:
    """All per-image metrics of one image; nuclei take the majority type under them (:func:`instance_types`).

    Args:
        gt_inst: GT instance map ``[H, W]``.
        gt_type: GT type map ``[H, W]`` (0..C).
        pred_inst: predicted instance map ``[H, W]``.
        pred_type: predicted type map ``[H, W]`` (0..C).
        num_classes: C.
        match_iou: PQ pairing threshold (strict ``>``).
        radius: detection pairing radius in pixels (:func:`detection_radius`).

    Returns:
        The :class:`ImageScores`.

    Raises:
        ValueError: shapes differ, or a nucleus type exceeds ``num_classes``.
    """
    if np.shape(gt_inst) != np.shape(pred_inst):
        raise ValueError(f"GT shape {np.shape(gt_inst)} != prediction shape {np.shape(pred_inst)}")
    g_ids, g_codes, g_types, g_xy = _coded(gt_inst, gt_type, num_classes, "GT")
    p_ids, p_codes, p_types, p_xy = _coded(pred_inst, pred_type, num_classes, "prediction")
    ov = _overlap(g_ids, g_codes, p_ids, p_codes)
    binary = PQStats.from_matching(match_instances(ov, match_iou))
    per_class = tuple(
        PQStats.from_matching(match_instances(ov, match_iou, gt_keep=g_types == c, pred_keep=p_types == c))
        for c in range(1, num_classes + 1)
    )
    has_gt = binary.n_gt > 0
    pq = np.array([s.pq if s.n_gt else math.nan for s in per_class], np.float64)
    dq = np.array([s.dq if s.n_gt else math.nan for s in per_class], np.float64)
    sq = np.array([s.sq if s.n_gt else math.nan for s in per_class], np.float64)
    n_both = int(ov.inter.sum())  # nucleus pixels in common (instances are disjoint)
    n_sum = int(ov.gt_area.sum() + ov.pred_area.sum())
    return ImageScores(
        binary=binary,
        per_class=per_class,
        bpq=binary.pq if has_gt else math.nan,
        bdq=binary.dq if has_gt else math.nan,
        bsq=binary.sq if has_gt else math.nan,
        pq=pq,
        dq=dq,
        sq=sq,
        mpq=_nanmean(pq),
        mdq=_nanmean(dq),
        msq=_nanmean(sq),
        dice=2.0 * n_both / n_sum if n_sum else math.nan,
        aji=_aji(ov),
        aji_plus=_aji_plus(ov),
        detection=DetectionTally.from_points(g_xy, g_types, p_xy, p_types, radius),
        gt_counts=np.bincount(g_types, minlength=num_classes + 1)[1:].astype(np.int64),
    )


# =============================================================================================== aggregation
def image_average(values: Iterable[float]) -> float:
    """Image average (CellViT / CellVTA): nanmean of per-image values ``[N]``; NaN if none is finite."""
    return _nanmean(values)


def tissue_average(values: Sequence[float], tissues: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Official PanNuke aggregation: nanmean per tissue, then the mean over tissues with a finite value.

    Args:
        values: per-image values ``[N]`` (NaN allowed).
        tissues: tissue name of each image ``[N]``.

    Returns:
        ``(average, per_tissue)``: the mean over tissues and ``{tissue: nanmean of its images}`` (sorted keys).
    """
    if len(values) != len(tissues):
        raise ValueError(f"{len(values)} values for {len(tissues)} tissue names")
    per: dict[str, list[float]] = {}
    for v, t in zip(values, tissues, strict=True):
        per.setdefault(str(t), []).append(float(v))
    per_tissue = {t: _nanmean(per[t]) for t in sorted(per)}
    return _nanmean(per_tissue.values()), per_tissue


def mpq_plus(per_image: Iterable[Sequence[PQStats]]) -> tuple[float, np.ndarray]:
    """CoNIC mPQ+: per-class counts summed over the set, ``PQ_c`` from the sums, mean over classes.

    Args:
        per_image: for each image, its ``[C]`` per-class :class:`PQStats` (``ImageScores.per_class``).

    Returns:
        ``(mpq_plus, pq)``: the mean over classes and float64 ``[C]`` per-class PQ; a class with neither GT nor
        predicted nuclei in the whole set is NaN and left out of the mean.
    """
    totals: list[PQStats] | None = None
    for stats in per_image:
        totals = list(stats) if totals is None else [a + b for a, b in zip(totals, stats, strict=True)]
    if not totals:
        return math.nan, np.zeros(0, np.float64)
    pq = np.array([s.pq if (s.tp + s.fp + s.fn) else math.nan for s in totals], np.float64)
    return _nanmean(pq), pq
