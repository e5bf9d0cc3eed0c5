"""Detection scores against hand-computed examples (and scikit-learn where it is installed)."""

from __future__ import annotations

import numpy as np
import pytest

from medvit.shared.metrics.detection_scores import (
    accuracy,
    average_precision,
    detection_scores,
    equal_error_rate,
    roc_auc,
    roc_curve,
    video_level,
)

# 3 negatives, 3 positives; scores sorted: 0.9 P, 0.8 N, 0.7 P, 0.6 P, 0.4 N, 0.2 N
Y = [1, 0, 1, 1, 0, 0]
S = [0.9, 0.8, 0.7, 0.6, 0.4, 0.2]


def test_roc_curve_and_auc_by_hand() -> None:
    fpr, tpr, thr = roc_curve(Y, S)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    assert thr[0] == np.inf and thr[-1] == 0.2
    # pairs (positive above negative): 0.9 beats 3, 0.7 beats 2, 0.6 beats 2 -> 7 of 9
    assert roc_auc(Y, S) == pytest.approx(7 / 9)


def test_ties_count_one_half() -> None:
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx((1 + 0.5) / 2)
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2])) and np.isnan(equal_error_rate([0, 0], [0.1, 0.2]))


def test_eer_average_precision_accuracy_by_hand() -> None:
    # |FNR - FPR| is 0 first at the point (fpr 1/3, tpr 2/3): FNR 1/3 = FPR
    assert equal_error_rate(Y, S) == pytest.approx(1 / 3)
    # AP: recall steps at ranks 1, 3, 4 with precisions 1, 2/3, 3/4
    assert average_precision(Y, S) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # > 0.5: predicted 1 1 1 1 0 0 -> one wrong (0.8) -> 5/6
    assert accuracy(Y, S) == pytest.approx(5 / 6)
    assert accuracy([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # 0.5 is not above the threshold
    perfect = detection_scores([0, 0, 1], [0.1, 0.2, 0.9])
    assert perfect["auc"] == 1 and perfect["eer"] == 0 and perfect["ap"] == 1 and perfect["acc"] == 1


def test_video_level_pools_by_mean() -> None:
    ids, y, p = video_level(["a", "a", "b", "b", "b"], [1, 1, 0, 0, 0], [0.9, 0.5, 0.2, 0.4, 0.9])
    assert ids == ["a", "b"]
    np.testing.assert_allclose(y, [1, 0])
    np.testing.assert_allclose(p, [0.7, 0.5])
    # frame AUC < 1 (a frame of b at 0.9) but the video means separate: video AUC 1
    assert roc_auc([1, 1, 0, 0, 0], [0.9, 0.5, 0.2, 0.4, 0.9]) < 1 and roc_auc(y, p) == 1


def test_matches_scikit_learn_on_random_scores() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 2)  # rounded: many ties
    assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))
    assert average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s))
    fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    assert equal_error_rate(y, s) == pytest.approx(fpr[np.nanargmin(np.abs((1 - tpr) - fpr))])
