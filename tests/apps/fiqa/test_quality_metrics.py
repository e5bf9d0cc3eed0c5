"""EDC against a hand-computed example (both threshold conventions), AUC / pAUC, helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medvit.shared.metrics.quality import (
    DISCARD_FRACTIONS,
    dissimilarity,
    edc,
    fmr_threshold,
    fnmr_at,
    pair_quality,
    partial_auc,
)

# Dissimilarities (arccos(sim) / pi) and pair qualities chosen so every number below is countable by hand.
GEN_D = [0.10, 0.20, 0.30, 0.60, 0.70]
GEN_Q = [0.9, 0.8, 0.7, 0.2, 0.1]
IMP_D = [0.25, 0.40, 0.50, 0.80, 0.90]
IMP_Q = [0.3, 0.95, 0.6, 0.5, 0.4]


def _example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.array(GEN_D + IMP_D)
    return np.cos(np.pi * d), np.array([True] * 5 + [False] * 5), np.array(GEN_Q + IMP_Q)


def test_hand_computed_threshold_and_fnmr() -> None:
    # FMR(t) = impostors with d <= t over 5. Closest to 0.2: t = 0.3 (0.25 ties; the larger d comes first).
    assert fmr_threshold(np.array(GEN_D), np.array(IMP_D), 0.2) == pytest.approx(0.3)
    assert fmr_threshold(np.array(GEN_D), np.array(IMP_D), 0.4) == pytest.approx(0.4)
    # FNMR counts genuine pairs not strictly below the threshold (CR-FIQA erc.py): 0.3, 0.6, 0.7 -> 3/5.
    assert fnmr_at(np.array(GEN_D), 0.3) == pytest.approx(0.6)
    assert fnmr_at(np.array(GEN_D), 0.4) == pytest.approx(0.4)


# discard 0.2 removes the two lowest-quality pairs (genuine d 0.7 and 0.6); discard 0.4 also removes the
# impostors d 0.25 and 0.9. Recomputed thresholds: 0.3 -> 0.3 -> 0.4 (FMR 0.2 target on 3 impostors: 1/3 is
# closest), fixed: 0.3 throughout.
EXPECTED = {
    ("recomputed", 0.2): ([0.6, 1 / 3, 0.0], [0.3, 0.3, 0.4]),
    ("fixed", 0.2): ([0.6, 1 / 3, 1 / 3], [0.3, 0.3, 0.3]),
    ("recomputed", 0.4): ([0.4, 0.0, 0.0], [0.4, 0.4, 0.4]),
    ("fixed", 0.4): ([0.4, 0.0, 0.0], [0.4, 0.4, 0.4]),
}


@pytest.mark.parametrize(("convention", "fmr"), list(EXPECTED))
def test_edc_hand_computed(convention: str, fmr: float) -> None:
    sim, same, q = _example()
    res = edc(sim, same, q, fmrs=(0.2, 0.4), discard=(0.0, 0.2, 0.4))
    curve = res.curve(convention, fmr)
    fnmr, thr = EXPECTED[(convention, fmr)]
    np.testing.assert_allclose(curve.fnmr, fnmr, atol=1e-12)
    np.testing.assert_allclose(curve.threshold, thr, atol=1e-9)
    assert list(curve.kept_pairs) == [10, 8, 6] and list(curve.kept_genuine) == [5, 3, 3]
    trapz = 0.2 * (fnmr[0] + fnmr[1]) / 2 + 0.2 * (fnmr[1] + fnmr[2]) / 2
    assert curve.auc == pytest.approx(trapz)
    assert curve.pauc_20 == pytest.approx(0.2 * (fnmr[0] + fnmr[1]) / 2)
    assert curve.pauc_30 == pytest.approx(curve.pauc_20)  # no point between 0.2 and 0.3 here


def test_auc_values_of_the_example() -> None:
    sim, same, q = _example()
    res = edc(sim, same, q, fmrs=(0.2,), discard=(0.0, 0.2, 0.4))
    assert res.curve("recomputed", 0.2).auc == pytest.approx(0.126666666, abs=1e-8)
    assert res.curve("fixed", 0.2).auc == pytest.approx(0.16, abs=1e-12)


def test_defaults_and_helpers() -> None:
    assert len(DISCARD_FRACTIONS) == 20 and DISCARD_FRACTIONS[0] == 0 and DISCARD_FRACTIONS[-1] == pytest.approx(0.95)
    np.testing.assert_allclose(pair_quality([0.3, 2.0], [1.0, -1.0]), [0.3, -1.0])
    np.testing.assert_allclose(dissimilarity([1.0, 0.0, -1.0, 1.5]), [0.0, 0.5, 1.0, 0.0])
    assert partial_auc(np.array([0, 0.5, 1.0]), np.array([1.0, 1.0, 0.0])) == pytest.approx(0.75)
    assert partial_auc(np.array([0, 0.5, 1.0]), np.array([1.0, 1.0, 0.0]), 0.5) == pytest.approx(0.5)


def test_default_protocol_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    same = rng.random(n) < 0.5
    q = rng.random(n)
    # Genuine similarity grows with quality: discarding low quality must lower the FNMR.
    sim = np.where(same, 0.2 + 0.6 * q + rng.normal(0, 0.1, n), rng.normal(0.0, 0.1, n))
    res = edc(sim, same, q)
    assert len(res.curves) == 6 and len(res.rows()) == 6 * 20
    for c in res.curves:
        assert c.fnmr[0] == pytest.approx(
            res.curve("fixed" if c.convention == "recomputed" else "recomputed", c.fmr).fnmr[0]
        )
        assert c.fnmr[-1] < c.fnmr[0]
        assert math.isfinite(c.auc) and c.pauc_20 < c.pauc_30 < c.auc


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="genuine and impostor"):
        edc(np.ones(3), np.ones(3, bool), np.ones(3))
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        edc(np.ones(3), np.array([True, False]), np.ones(3))


def test_degradation_ranking_against_hand_computed_spearman(tmp_path) -> None:
    """Pooled rho with ties (Pearson of mid-ranks) = 5 / sqrt(90); per kind (with the clean face): 1.0 and 0.5."""
    from medvit.apps.fiqa.api import degradation_ranking

    rows = [("a", "none", 0.0, 1.0), ("b", "blur", 0.5, 0.8), ("c", "blur", 1.0, 0.5)]
    rows += [("d", "noise", 0.5, 0.9), ("e", "noise", 1.0, 0.95)]
    (tmp_path / "degradations.csv").write_text(
        "path,identity,degradation,strength\n" + "".join(f"{n}.jpg,p,{k},{s}\n" for n, k, s, _ in rows)
    )
    scores = tmp_path / "scores.csv"
    scores.write_text(
        "path,status,quality\n"
        + "".join(f"{tmp_path / (n + '.jpg')},ok,{q}\n" for n, _, _, q in rows)
        + f"{tmp_path / 'f.jpg'},no_face,\n"  # rows that are not ok are left out
    )
    out = degradation_ranking(scores, tmp_path)
    assert out["rho"] == pytest.approx(5 / math.sqrt(90))
    assert out["rho_blur"] == pytest.approx(1.0) and out["rho_noise"] == pytest.approx(0.5)
    assert set(out) == {"rho", "rho_blur", "rho_noise"}
