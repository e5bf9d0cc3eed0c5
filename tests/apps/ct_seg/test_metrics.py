"""Dice / HD95 on tiny label maps against hand-computed values, and their summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medvit.shared.metrics.segmentation import score_case, summarize


def _maps() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:5, 2:4, 2:4] = 1  # 3x2x2 = 12 voxels
    pred[2:4, 2:4, 2:4] = 1  # 2x2x2 = 8 voxels, all inside the reference
    ref[0, 0, 0] = 3
    pred[9, 9, 9] = 3  # one voxel each, far apart
    pred[7, 7, 7] = 2  # false positive: class 2 absent from the reference
    return pred, ref


def test_dice_and_hd95_match_hand_computed_values() -> None:
    pred, ref = _maps()
    spacing = (1.0, 1.0, 2.0)
    s = {c.label: c for c in score_case(pred, ref, [0, 1, 2, 3, 4], spacing)}
    assert sorted(s) == [1, 2, 3, 4]  # background is never scored
    # class 1: Dice = 2 * 8 / (8 + 12); the farthest reference surface voxel (x=4) is 1 voxel = 1 mm from the
    # prediction along x (spacing 1), so the 95th percentile of the symmetric distances is 1 mm.
    assert s[1].dice == pytest.approx(0.8)
    assert s[1].hd95 == pytest.approx(1.0)
    # class 3: no overlap; distance between (0,0,0) and (9,9,9) with spacing (1,1,2)
    assert s[3].dice == 0.0
    assert s[3].hd95 == pytest.approx(math.sqrt(81 + 81 + 324))
    diagonal = math.sqrt(10**2 + 10**2 + 20**2)
    assert (s[2].dice, s[2].hd95, s[2].empty) == (0.0, pytest.approx(diagonal), "reference")
    assert (s[4].dice, s[4].hd95, s[4].empty) == (1.0, 0.0, "both")


def test_missed_structure_scores_zero_and_the_diagonal() -> None:
    pred, ref = _maps()
    pred[pred == 1] = 0
    s = {c.label: c for c in score_case(pred, ref, [1], (2.0, 2.0, 2.0))}
    assert s[1].dice == 0.0 and s[1].empty == "prediction"
    assert s[1].hd95 == pytest.approx(math.sqrt(3 * 20**2))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        score_case(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), [1])


def test_summarize_gives_mean_and_sd_per_class_and_over_cases() -> None:
    rows = [
        {"case": "a", "label": 1, "dice": 0.8, "hd95": 2.0},
        {"case": "a", "label": 2, "dice": 0.6, "hd95": 4.0},
        {"case": "b", "label": 1, "dice": 0.4, "hd95": 6.0},
        {"case": "b", "label": 2, "dice": 1.0, "hd95": 0.0},
    ]
    out = summarize(rows, {1: "liver", 2: "spleen"})
    liver = out["per_class"]["liver"]["dice"]
    assert liver["mean"] == pytest.approx(0.6) and liver["sd"] == pytest.approx(np.std([0.8, 0.4], ddof=1))
    assert liver["n"] == 2
    # per-case means 0.7 and 0.7 -> overall 0.7 +- 0
    assert out["overall"]["dice"]["mean"] == pytest.approx(0.7) and out["overall"]["dice"]["sd"] == pytest.approx(0)
    assert out["overall"]["hd95"]["mean"] == pytest.approx(3.0)
    assert out["cases"] == 2 and out["convention"]["both_empty"]["dice"] == 1.0
