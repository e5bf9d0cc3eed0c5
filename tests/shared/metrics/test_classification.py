"""Classification metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medvit.shared.metrics.classification import (
    accuracy,
    average_precision,
    bootstrap_ci,
    confusion_matrix,
    macro_f1,
    quadratic_weighted_kappa,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
    youden_threshold,
)


def test_auc_with_ties_is_mann_whitney() -> None:
    # positives 0.8, 0.4; negatives 0.4, 0.2: pairs (0.8>0.4)=1, (0.8>0.2)=1, (0.4=0.4)=0.5, (0.4>0.2)=1 -> 3.5/4
    y = np.array([1, 1, 0, 0])
    s = np.array([0.8, 0.4, 0.4, 0.2])
    assert roc_auc(y, s) == pytest.approx(0.875)
    # all tied: 0.5; perfect: 1; reversed: 0
    assert roc_auc(y, np.ones(4)) == pytest.approx(0.5)
    assert roc_auc(y, np.array([4, 3, 2, 1.0])) == 1.0
    assert roc_auc(y, np.array([1, 2, 3, 4.0])) == 0.0
    assert math.isnan(roc_auc(np.ones(3), np.arange(3.0)))
    # NaN labels are skipped
    assert roc_auc(np.array([1, np.nan, 0]), np.array([0.9, 0.1, 0.2])) == 1.0


def test_auc_equals_trapezoid_of_roc_curve() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # many ties
    fpr, tpr, thr = roc_curve(y, s)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.isinf(thr[0])
    assert roc_auc(y, s) == pytest.approx(np.trapezoid(tpr, fpr))


def test_average_precision_by_hand() -> None:
    # scores 0.9(+) 0.8(-) 0.7(+) 0.6(-): recall steps 0.5 at P=1, 0.5 at P=2/3 -> 0.5 + 1/3
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6])
    assert average_precision(y, s) == pytest.approx(0.5 + 1 / 3)
    # a tie of a positive and a negative at the top: one threshold, P = 1/2, R = 1/2
    assert average_precision(np.array([1, 0, 1]), np.array([0.9, 0.9, 0.1])) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_operating_point_and_youden() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.3, 0.5, 0.2, 0.1])
    sens, spec = sensitivity_specificity(y, s, 0.5)
    assert sens == pytest.approx(2 / 3) and spec == pytest.approx(2 / 3)
    # J at 0.6: 2/3 - 0 = 0.667 (best); at 0.3: 1 - 1/3 = 0.667 too -> the higher threshold wins ties
    assert youden_threshold(y, s) == pytest.approx(0.6)
    assert youden_threshold(np.ones(3), np.arange(3.0)) == 0.5


def test_kappa_accuracy_f1_by_hand() -> None:
    t = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    conf = confusion_matrix(t, p, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert accuracy(t, p) == pytest.approx(4 / 6)
    # F1 per class: 0: 2/(2+1+1)=0.5, 1: 4/(4+1+0)=0.8, 2: 2/(2+0+1)=2/3
    assert macro_f1(conf) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # weights (i-j)^2/4; observed weighted sum = 1*(1/4) + 1*(4/4) = 1.25; marginals rows (2,2,2) cols (2,3,1)
    # expected = outer/6; sum W*E = (1/6) * sum_ij w_ij r_i c_j
    #   = (2/6) * [(0*2+.25*3+1*1) + (.25*2+0+.25*1) + (1*2+.25*3+0)]
    expected = (2 / 6) * ((0.75 + 1) + (0.5 + 0.25) + (2 + 0.75))
    assert quadratic_weighted_kappa(t, p, 3) == pytest.approx(1 - 1.25 / expected)
    assert quadratic_weighted_kappa(t, t, 3) == pytest.approx(1.0)


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = y * 0.5 + rng.random(300)
    a = bootstrap_ci(roc_auc, [y, s], n=200, seed=7)
    b = bootstrap_ci(roc_auc, [y, s], n=200, seed=7)
    c = bootstrap_ci(roc_auc, [y, s], n=200, seed=8)
    assert a == b and a != c
    assert a[0] < roc_auc(y, s) < a[1]
    assert all(math.isnan(v) for v in bootstrap_ci(roc_auc, [y, s], n=0))
