"""Nucleus instance metrics (medvit/shared/metrics/instance.py) against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medvit.shared.metrics.instance import (
    DetectionTally,
    PQStats,
    aji,
    aji_plus,
    binary_dice,
    centroids,
    detection_radius,
    detection_scores,
    image_average,
    instance_types,
    match_instances,
    mpq_plus,
    overlap,
    pair_coordinates,
    pq_stats,
    remap_label,
    score_image,
    tissue_average,
)

EPS = 1e-6


def _pq(tp: int, fp: int, fn: int, iou_sum: float) -> float:
    """PQ by hand, with CellViT's 1e-6 terms."""
    return tp / (tp + 0.5 * fp + 0.5 * fn + EPS) * iou_sum / (tp + EPS)


def _split_missed_fp() -> tuple[np.ndarray, np.ndarray]:
    """GT: A (4x4 = 16 px, id 7) and B (3x3 = 9 px, id 3). Prediction: A split into p1 (4x3 = 12 px) and p2
    (4x1 = 4 px), B missed, p3 (3x3 = 9 px) where the GT has nothing."""
    gt = np.zeros((10, 12), np.int32)
    gt[0:4, 0:4] = 7
    gt[6:9, 0:3] = 3
    pred = np.zeros_like(gt)
    pred[0:4, 0:3] = 5  # p1: IoU with A = 12 / 16 = 0.75
    pred[0:4, 3] = 2  # p2: IoU with A = 4 / 16 = 0.25
    pred[6:9, 6:9] = 9  # p3: false positive
    return gt, pred


def test_pq_of_a_split_a_missed_and_a_false_positive_nucleus() -> None:
    gt, pred = _split_missed_fp()
    s = pq_stats(gt, pred)
    # By hand: only (A, p1) has IoU > 0.5 -> TP 1; p2 and p3 unpaired -> FP 2; B unpaired -> FN 1.
    assert (s.tp, s.fp, s.fn) == (1, 2, 1)
    assert s.iou_sum == pytest.approx(0.75, abs=1e-12)
    assert s.dq == pytest.approx(1 / (1 + 0.5 * 2 + 0.5 * 1 + EPS), rel=1e-12)
    assert s.sq == pytest.approx(0.75 / (1 + EPS), rel=1e-12)
    assert s.pq == pytest.approx(_pq(1, 2, 1, 0.75), rel=1e-12)  # ~ 0.4 * 0.75
    # The pairing itself, with the original ids
    ov = overlap(gt, pred)
    m = match_instances(ov)
    assert ov.gt_ids[m.gt_index].tolist() == [7] and ov.pred_ids[m.pred_index].tolist() == [5]
    assert ov.gt_ids[m.unpaired_gt].tolist() == [3] and sorted(ov.pred_ids[m.unpaired_pred].tolist()) == [2, 9]
    # AJI: A takes p1 (I 12, U 16); B, p2, p3 add 9 + 4 + 9 to the union. AJI+ pairs the same way here.
    assert aji(gt, pred) == pytest.approx(12 / 38, rel=1e-12)
    assert aji_plus(gt, pred) == pytest.approx(12 / 38, rel=1e-12)
    # Dice: 25 GT px, 25 predicted px, 16 in common
    assert binary_dice(gt, pred) == pytest.approx(32 / 50, rel=1e-12)


def test_iou_exactly_at_the_threshold_does_not_pair() -> None:
    gt = np.zeros((1, 4), np.int32)
    gt[0, 0:2] = 1
    pred = np.zeros_like(gt)
    pred[0, 0:1] = 1  # IoU = 1 / 2 = 0.5: strict ">" -> no pair
    s = pq_stats(gt, pred)
    assert (s.tp, s.fp, s.fn) == (0, 1, 1) and s.pq == 0.0
    pred[0, 0:3] = 1  # IoU = 2 / 3
    assert pq_stats(gt, pred).tp == 1


def _merge_example() -> tuple[np.ndarray, np.ndarray]:
    """GT g1 (cols 0-2) and g2 (cols 3-5), 2 rows each (6 px). Predictions: p (cols 1-4, 8 px) covers 4 px of
    each, q (col 5, 2 px) inside g2, r (row 0, col 0, 1 px) inside g1."""
    gt = np.zeros((2, 6), np.int32)
    gt[:, 0:3] = 1
    gt[:, 3:6] = 2
    pred = np.zeros_like(gt)
    pred[:, 1:5] = 10  # p: IoU 4/10 with g1 and with g2
    pred[:, 5] = 20  # q: IoU 2/6 with g2
    pred[0, 0] = 30  # r: IoU 1/6 with g1
    return gt, pred


def test_aji_reuses_the_best_prediction_and_aji_plus_pairs_one_to_one() -> None:
    gt, pred = _merge_example()
    # AJI: g1 -> p (4 / 10), g2 -> p (4 / 10, the tie with g1 does not matter: reuse is allowed); q and r are taken
    # by nobody -> union + 2 + 1.  I = 8, U = 10 + 10 + 3.
    assert aji(gt, pred) == pytest.approx(8 / 23, rel=1e-12)
    # AJI+: one-to-one maximising summed IoU: g1-p + g2-q = 0.4 + 1/3 beats g1-r + g2-p = 1/6 + 0.4.
    # I = 4 + 2, U = 10 + 6 + area(r) = 17.
    assert aji_plus(gt, pred) == pytest.approx(6 / 17, rel=1e-12)


def test_pairing_below_half_uses_the_hungarian_assignment() -> None:
    gt, pred = _merge_example()
    s = pq_stats(gt, pred)  # 0.5: no IoU above it
    assert (s.tp, s.fp, s.fn) == (0, 3, 2)
    s = pq_stats(gt, pred, match_iou=0.3)  # Hungarian: g1-p (0.4), g2-q (1/3), both > 0.3
    assert (s.tp, s.fp, s.fn) == (2, 1, 0)
    assert s.iou_sum == pytest.approx(0.4 + 1 / 3, rel=1e-12)
    s = pq_stats(gt, pred, match_iou=0.35)  # same assignment, g2-q now at or below the threshold
    assert (s.tp, s.fp, s.fn) == (1, 2, 1)


def test_empty_maps() -> None:
    empty = np.zeros((4, 4), np.int32)
    one = empty.copy()
    one[1:3, 1:3] = 4
    assert pq_stats(empty, empty) == PQStats(0, 0, 0, 0.0) and pq_stats(empty, empty).pq == 0.0
    assert pq_stats(one, empty) == PQStats(0, 0, 1, 0.0)
    assert math.isnan(aji(empty, empty)) and aji(one, empty) == 0.0 and aji(empty, one) == 0.0
    assert math.isnan(aji_plus(empty, empty)) and aji_plus(empty, one) == 0.0
    assert math.isnan(binary_dice(empty, empty)) and binary_dice(empty, one) == 0.0


def _naive_iou(gt: np.ndarray, pred: np.ndarray) -> dict[tuple[int, int], float]:
    out = {}
    for g in np.unique(gt[gt > 0]):
        for p in np.unique(pred[pred > 0]):
            inter = np.sum((gt == g) & (pred == p))
            if inter:
                out[(int(g), int(p))] = inter / np.sum((gt == g) | (pred == p))
    return out


def _naive_aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """MoNuSeg AJI written as its definition reads, one mask at a time."""
    inter = union = 0
    used: set[int] = set()
    for g in np.unique(gt[gt > 0]):
        best, best_iou = None, 0.0
        for p in np.unique(pred[pred > 0]):
            i = np.sum((gt == g) & (pred == p))
            iou = i / np.sum((gt == g) | (pred == p))
            if iou > best_iou:
                best, best_iou = int(p), iou
        if best is None:
            union += np.sum(gt == g)
        else:
            inter += np.sum((gt == g) & (pred == best))
            union += np.sum((gt == g) | (pred == best))
            used.add(best)
    union += sum(np.sum(pred == p) for p in np.unique(pred[pred > 0]) if int(p) not in used)
    return inter / union


@pytest.mark.parametrize("sparse", [False, True])
def test_overlap_and_aji_equal_a_per_instance_computation_on_random_maps(
    sparse: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvit.shared.metrics import instance

    if sparse:  # the np.unique contingency and the np.unique id coding (ids far above the pixel count)
        monkeypatch.setattr(instance, "_DENSE_LIMIT", 0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = rng.integers(0, 6, size=(12, 12)) * rng.integers(0, 2, size=(12, 12))
        pred = rng.integers(0, 5, size=(12, 12)) * 3
        if sparse:
            gt = gt * 10**9
        ov = overlap(gt, pred)
        got = {
            (int(ov.gt_ids[g]), int(ov.pred_ids[p])): v
            for g, p, v in zip(ov.gt_index, ov.pred_index, ov.iou, strict=True)
        }
        want = _naive_iou(gt, pred)
        assert got.keys() == want.keys()
        assert all(got[k] == pytest.approx(want[k], rel=1e-12) for k in want)
        assert ov.gt_area.tolist() == [int(np.sum(gt == g)) for g in ov.gt_ids]
        assert aji(gt, pred) == pytest.approx(_naive_aji(gt, pred), rel=1e-12)
        # at 0.5 a pair is unique without an assignment: every pair above 0.5, and nothing else, is a TP
        assert pq_stats(gt, pred).tp == sum(v > 0.5 for v in want.values())


def test_remap_label_keeps_order_or_sorts_by_size() -> None:
    inst = np.array([[0, 9, 9, 9], [4, 4, 0, 12], [0, 0, 0, 0]], np.int64)
    assert remap_label(inst).tolist() == [[0, 2, 2, 2], [1, 1, 0, 3], [0, 0, 0, 0]]
    assert remap_label(inst).dtype == np.int32
    assert remap_label(inst, by_size=True).tolist() == [[0, 1, 1, 1], [2, 2, 0, 3], [0, 0, 0, 0]]
    assert remap_label(inst * 10**12).tolist() == remap_label(inst).tolist()  # huge ids: the sorting path
    with pytest.raises(ValueError, match=">= 0"):
        remap_label(-inst)


def test_instance_types_take_the_majority_of_non_background_types() -> None:
    inst = np.array([[1, 1, 1, 2, 2], [1, 1, 0, 2, 3]])
    types = np.array([[2, 2, 0, 0, 0], [3, 0, 0, 1, 0]])
    # id 1: votes {2: 2, 3: 1} (background votes ignored) -> 2; id 2: {1: 1} -> 1; id 3: only type 0 -> 0
    ids, t = instance_types(inst, types)
    assert ids.tolist() == [1, 2, 3] and t.tolist() == [2, 1, 0]
    _, t = instance_types(np.array([[5, 5]]), np.array([[3, 1]]))
    assert t.tolist() == [1]  # a tie goes to the smaller type id


def test_centroids_are_x_column_y_row() -> None:
    inst = np.zeros((8, 10), np.int32)
    inst[1:4, 5:8] = 2  # rows 1-3, cols 5-7
    ids, xy = centroids(inst)
    assert ids.tolist() == [2] and xy.tolist() == [[6.0, 2.0]]


def _typed_image() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GT: one class-1 nucleus. Prediction: the same nucleus (class 1) and a class-2 false positive."""
    gt = np.zeros((12, 12), np.int32)
    gt[1:5, 1:5] = 1
    gt_t = (gt > 0).astype(np.uint8)
    pred = gt.copy()
    pred[7:10, 7:10] = 2
    pred_t = gt_t.copy()
    pred_t[7:10, 7:10] = 2
    return gt, gt_t, pred, pred_t


def test_a_prediction_only_class_is_nan_not_zero() -> None:
    gt, gt_t, pred, pred_t = _typed_image()
    s = score_image(gt, gt_t, pred, pred_t, num_classes=3)
    assert s.pq[0] == pytest.approx(_pq(1, 0, 0, 1.0), rel=1e-12)
    assert math.isnan(s.pq[1])  # class 2 only in the prediction: NaN, its false positive is not scored
    assert math.isnan(s.pq[2])  # class 3 nowhere
    assert s.mpq == pytest.approx(s.pq[0])  # nanmean over classes
    assert s.per_class[1] == PQStats(0, 1, 0, 0.0)  # but its counts are kept (mPQ+ scores them)
    # Binary PQ sees the false positive: TP 1, FP 1 -> DQ 2/3
    assert (s.binary.tp, s.binary.fp, s.binary.fn) == (1, 1, 0)
    assert s.bpq == pytest.approx(1 / (1.5 + EPS) / (1 + EPS), rel=1e-12)
    assert s.gt_counts.tolist() == [1, 0, 0]
    # No GT nucleus at all: bPQ and mPQ are NaN, Dice/AJI score the false positives as 0
    empty = np.zeros_like(gt)
    s = score_image(empty, empty, pred, pred_t, num_classes=3)
    assert math.isnan(s.bpq) and math.isnan(s.mpq) and s.dice == 0.0 and s.aji == 0.0


def test_score_image_rejects_type_ids_above_num_classes() -> None:
    gt, gt_t, pred, pred_t = _typed_image()
    with pytest.raises(ValueError, match="type id 2"):
        score_image(gt, gt_t, pred, pred_t, num_classes=1)


def test_image_and_tissue_averages_differ_on_unbalanced_tissues() -> None:
    values = [0.2, 0.4, 0.9]  # images 1 and 2 from tissue A, image 3 from tissue B
    tissues = ["A", "A", "B"]
    assert image_average(values) == pytest.approx(0.5)  # (0.2 + 0.4 + 0.9) / 3
    avg, per = tissue_average(values, tissues)
    assert per == {"A": pytest.approx(0.3), "B": pytest.approx(0.9)}
    assert avg == pytest.approx(0.6)  # (0.3 + 0.9) / 2
    # NaN images are skipped inside a tissue; a tissue with nothing finite is left out
    avg, per = tissue_average([0.2, math.nan, 0.9, math.nan], ["A", "A", "B", "C"])
    assert per["A"] == pytest.approx(0.2) and math.isnan(per["C"]) and avg == pytest.approx(0.55)
    assert math.isnan(image_average([math.nan, math.nan]))


def test_mpq_plus_pools_counts_and_differs_from_the_image_average() -> None:
    # Image 1: one class-1 nucleus found exactly. Image 2: four class-1 nuclei, one found exactly.
    g1 = np.zeros((8, 8), np.int32)
    g1[0:3, 0:3] = 1
    g2 = np.zeros((8, 8), np.int32)
    for k, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)], start=1):
        g2[r : r + 3, c : c + 3] = k
    p2 = np.where(g2 == 1, 1, 0).astype(np.int32)
    s1 = score_image(g1, (g1 > 0).astype(np.uint8), g1, (g1 > 0).astype(np.uint8), num_classes=2)
    s2 = score_image(g2, (g2 > 0).astype(np.uint8), p2, (p2 > 0).astype(np.uint8), num_classes=2)
    # Image-averaged: PQ_1 = 1 and 1 / (1 + 1.5) = 0.4 -> mPQ = 0.7 (class 2 NaN in both images)
    assert image_average([s1.mpq, s2.mpq]) == pytest.approx((_pq(1, 0, 0, 1.0) + _pq(1, 0, 3, 1.0)) / 2, rel=1e-12)
    # mPQ+: class 1 pooled TP 2, FN 3, IoU sum 2 -> 2 / 3.5 = 4/7; class 2 has no GT and no prediction -> NaN
    plus, pq = mpq_plus([s1.per_class, s2.per_class])
    assert pq[0] == pytest.approx(_pq(2, 0, 3, 2.0), rel=1e-12) and math.isnan(pq[1])
    assert plus == pytest.approx(_pq(2, 0, 3, 2.0), rel=1e-12)
    assert abs(plus - 4 / 7) < 1e-5 and abs(image_average([s1.mpq, s2.mpq]) - 0.7) < 1e-5
    # A class with predictions but no GT in the whole set scores 0 and counts in the mean
    plus, pq = mpq_plus([[PQStats(2, 0, 3, 2.0), PQStats(0, 4, 0, 0.0)]])
    assert pq[1] == 0.0 and plus == pytest.approx(_pq(2, 0, 3, 2.0) / 2, rel=1e-12)
    assert math.isnan(mpq_plus([])[0])


def test_detection_pairs_within_the_radius_inclusive() -> None:
    assert detection_radius(40) == 12.0 and detection_radius(20) == 6.0
    gt = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]])
    pred = np.array([[10.0 + 11.9, 10.0], [50.0, 50.0 + 12.1], [90.0 + 12.0, 90.0]])
    pairs, ug, up = pair_coordinates(gt, pred, 12.0)
    assert pairs.tolist() == [[0, 0], [2, 2]]  # 11.9 inside, 12.0 on the radius (kept)
    assert ug.tolist() == [1] and up.tolist() == [1]  # 12.1 just outside
    t = DetectionTally.from_points(gt, [1, 1, 2], pred, [1, 2, 2], 12.0)
    d = detection_scores(t, num_classes=2)
    assert (d.tp, d.fp, d.fn) == (2, 1, 1)
    assert d.precision == pytest.approx(2 / 3) and d.recall == pytest.approx(2 / 3) and d.f1 == pytest.approx(4 / 6)
    pairs, ug, up = pair_coordinates(np.zeros((0, 2)), pred, 12.0)
    assert pairs.shape == (0, 2) and ug.size == 0 and up.tolist() == [0, 1, 2]


def test_per_class_f1_follows_the_weighted_formula() -> None:
    t = DetectionTally(
        paired_gt_type=np.array([1, 1, 1, 2, 2]),
        paired_pred_type=np.array([1, 1, 2, 1, 2]),
        unpaired_gt_type=np.array([1, 2]),
        unpaired_pred_type=np.array([1]),
    )
    d = detection_scores(t, num_classes=3)
    assert (d.tp, d.fp, d.fn) == (5, 1, 2) and d.f1 == pytest.approx(10 / 13)
    # class 1: pairs involving it (1,1) (1,1) (1,2) (2,1): TP 2, FP_c 1, FN_c 1; FP_d 1, FN_d 1
    #   F1 = 2*2 / (2*2 + 2*1 + 2*1 + 1 + 1) = 0.4
    # class 2: pairs (1,2) (2,1) (2,2): TP 1, FP_c 1, FN_c 1; FP_d 0, FN_d 1 -> 2 / (2 + 2 + 2 + 0 + 1) = 2/7
    # class 3: absent everywhere -> NaN
    assert d.f1_per_class[0] == pytest.approx(0.4)
    assert d.f1_per_class[1] == pytest.approx(2 / 7)
    assert math.isnan(d.f1_per_class[2])
    pooled = t + DetectionTally.from_points(np.array([[0.0, 0.0]]), [3], np.zeros((0, 2)), [], 12.0)
    assert detection_scores(pooled, 3).fn == 3 and detection_scores(pooled, 3).f1_per_class[2] == 0.0
