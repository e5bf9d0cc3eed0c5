"""Scoring by task kind, predictions.csv reading, class balance, unreadable training inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medvit.shared.classify.data import SampleDataset, WeightedDraws, balanced_weights, class_weights
from medvit.shared.classify.evaluate import evaluate, read_predictions, score
from medvit.shared.classify.inputs import EvalTransform, InputSpec
from medvit.shared.classify.labels import LabelSpace, Sample
from medvit.shared.errors import DataError


def test_score_binary_and_graded_by_hand() -> None:
    binary = LabelSpace.binary()
    probs = np.array([[0.9], [0.6], [0.4], [0.2]])
    targets = np.array([[1.0], [0.0], [1.0], [0.0]])
    r = score(binary, probs, targets, [0.5])
    row = r["per_class"][0]
    assert row["class"] == "positive" and row["auc"] == pytest.approx(0.75)
    assert row["sensitivity"] == 0.5 and row["specificity"] == 0.5
    assert r["confusion"] == [[1, 1], [1, 1]] and r["overall"]["accuracy"] == 0.5
    graded = LabelSpace("graded", ("0", "1", "2"))
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    t = np.array([[0.0], [1.0], [2.0], [2.0]])
    g = score(graded, p, t)
    assert g["overall"]["accuracy"] == 0.75 and g["confusion"][2] == [1, 0, 1]
    # kappa, W = (i - j)^2 / 4: observed sum W*O = 1 (a 2 called 0); rows (1, 1, 2), cols (2, 1, 1), n = 4:
    # sum W*E = (1/4) [1*(.25*1 + 1*1) + 1*(.25*2 + .25*1) + 2*(1*2 + .25*1)] = 6.5 / 4 -> 1 - 1 / 1.625
    assert g["overall"]["kappa"] == pytest.approx(1 - 1 / 1.625)


def test_read_predictions_and_evaluate_errors(tmp_path: Path) -> None:
    labels = LabelSpace("multilabel", ("a", "b"))
    csv_path = tmp_path / "p.csv"
    csv_path.write_text(
        "key,prob_a,prob_b,predicted,threshold_a,threshold_b,status,message\n"
        "x,0.9,0.1,a,0.3,0.7,ok,\n"
        "y,,,,,,error,broken\n"
    )
    probs, thr, errors = read_predictions(csv_path, labels)
    assert set(probs) == {"x"} and thr == [0.3, 0.7] and errors == 1
    with pytest.raises(DataError, match="prob_c"):
        read_predictions(csv_path, LabelSpace("multilabel", ("a", "c")))
    with pytest.raises(DataError, match="no prediction"):
        evaluate(csv_path, [Sample("z.png", np.array([1.0, 0.0]), key="z")], labels, tmp_path / "e", bootstrap=0)


def test_balance_weights_by_hand() -> None:
    mc = LabelSpace("multiclass", ("a", "b", "c"))
    t = np.array([[0.0], [0.0], [0.0], [1.0]])
    assert balanced_weights(t, mc).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert class_weights(t, mc).tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
    ml = LabelSpace("multilabel", ("x", "y"))
    t2 = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [np.nan, 0.0]])
    # x: 2 positives, y: 1 -> sample 1 takes y's 1/1; sample 0 x's 1/2; no-finding samples (2, 3) 1/2 each
    assert balanced_weights(t2, ml).tolist() == pytest.approx([0.5, 1.0, 0.5, 0.5])
    # pos_weight = negatives / positives among known: x 1/2, y 3/1
    assert class_weights(t2, ml).tolist() == pytest.approx([0.5, 3.0])
    draws = WeightedDraws(list(range(4)), np.array([0.0, 0.0, 1.0, 0.0]))  # type: ignore[arg-type]
    draws.reseed(123)
    assert draws[0] == 2 and draws.draw(5) == draws.draw(5)


def test_unreadable_training_input_is_substituted(tmp_path: Path) -> None:
    import cv2

    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((32, 32), 200, np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    labels = LabelSpace.binary()
    spec = InputSpec(2, 1, (16, 16), modality="cxr")
    samples = [Sample(bad, np.array([1.0])), Sample(good, np.array([0.0]))]
    strict = SampleDataset(samples, labels, spec, EvalTransform(spec))
    with pytest.raises(DataError, match="bad.png"):
        strict[0]
    lenient = SampleDataset(samples, labels, spec, EvalTransform(spec), substitute=True)
    item = lenient[0]
    assert float(item["target"][0]) == 0.0 and item["image"].shape == (1, 16, 16)
