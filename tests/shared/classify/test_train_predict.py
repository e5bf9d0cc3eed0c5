"""End to end on synthetic chest X-rays: train (TL-Align, RandAugment) -> predict -> evaluate; resume; batch size."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medvit.shared.classify.evaluate import evaluate
from medvit.shared.classify.labels import LabelSpace, Sample
from medvit.shared.classify.predict import predict
from medvit.shared.classify.train import train_classifier

from .conftest import tiny_config


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(cxr_set: tuple[list[Sample], LabelSpace], tmp_path_factory: pytest.TempPathFactory) -> Path:
    samples, labels = cxr_set
    run = tmp_path_factory.mktemp("run")
    summary = train_classifier(tiny_config(), samples[:16], samples[16:], labels, "cxr", run, quiet=True)
    assert summary["steps"] == 4 and summary["metric"] == "val/mauc"
    assert len(summary["thresholds"]) == 4
    return run


def test_run_folder_and_model_file(trained: Path) -> None:
    spec = json.loads((trained / "model.json").read_text())
    assert spec["format"] == "medvit-classifier"
    assert spec["labels"]["kind"] == "multilabel" and spec["modality"] == "cxr"
    assert spec["input"]["size"] == [32, 32] and spec["input"]["channels"] == 3
    assert spec["input"]["mean"] == pytest.approx([0.5056] * 3)
    assert len(spec["thresholds"]) == 4 and spec["weights"]["from"] in ("best.pt", "last.pt")
    sd = load_file(str(trained / "model.safetensors"))
    assert sd["head.weight"].shape == (4, 32) and "fc_norm.weight" in sd
    assert (trained / "val_metrics.json").is_file() and (trained / "splits.json").is_file()
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("val/mauc" in r for r in lines) and any("mix_weight" in r for r in lines)


def test_predict_and_evaluate(trained: Path, cxr_set: tuple[list[Sample], LabelSpace], tmp_path: Path) -> None:
    samples, labels = cxr_set
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    inputs = [*samples[16:], Sample(bad, key="broken.png")]
    pred = predict(trained, inputs, tmp_path / "pred", batch_size=3, workers=0, quiet=True, heatmaps="rollout")
    rows = _read(pred)
    assert [r["key"] for r in rows] == [s.key for s in inputs]
    assert rows[-1]["status"] == "error" and rows[-1]["prob_Nodule"] == "" and rows[-1]["message"]
    ok = rows[:-1]
    thr = json.loads((trained / "model.json").read_text())["thresholds"]
    for r in ok:
        p = [float(r[f"prob_{c}"]) for c in labels.classes]
        assert all(0 <= v <= 1 for v in p)
        assert r["predicted"] == "|".join(c for c, v, t in zip(labels.classes, p, thr, strict=True) if v >= t)
        assert float(r["threshold_Effusion"]) == pytest.approx(thr[1])
    assert len(list((tmp_path / "pred" / "heatmaps").rglob("*.rollout.png"))) == len(ok)
    # resume: a second run skips everything and writes the same table
    again = predict(trained, inputs, tmp_path / "pred", batch_size=2, workers=0, quiet=True, heatmaps="rollout")
    assert _read(again) == rows

    summary = evaluate(pred, samples, labels, tmp_path / "eval", bootstrap=50, seed=3)
    assert summary["cases"] == 8 and summary["prediction_errors"] == 1
    assert summary["headline"]["metric"] == "mauc"
    metrics = _read(tmp_path / "eval" / "metrics.csv")
    assert [m["class"] for m in metrics] == [*labels.classes, "overall"]
    for name in ("roc.png", "pr.png", "summary.json"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    again = evaluate(pred, samples, labels, tmp_path / "eval2", bootstrap=50, seed=3)
    assert again["headline"] == summary["headline"]


def test_batch_size_invariance(trained: Path, cxr_set: tuple[list[Sample], LabelSpace], tmp_path: Path) -> None:
    samples, labels = cxr_set
    cols = [f"prob_{c}" for c in labels.classes]
    tables = []
    for bs in (1, 5):
        rows = _read(predict(trained, samples[:10], tmp_path / f"b{bs}", batch_size=bs, workers=0, quiet=True))
        tables.append(np.array([[float(r[c]) for c in cols] for r in rows]))
    np.testing.assert_allclose(tables[0], tables[1], rtol=0, atol=1e-6)


def test_gradcam_heatmaps(trained: Path, cxr_set: tuple[list[Sample], LabelSpace], tmp_path: Path) -> None:
    samples, _ = cxr_set
    predict(trained, samples[:2], tmp_path / "cam", batch_size=2, workers=0, quiet=True, heatmaps="gradcam")
    pngs = sorted((tmp_path / "cam" / "heatmaps").rglob("*.gradcam.png"))
    assert len(pngs) == 2
    import cv2

    img = cv2.imread(str(pngs[0]))
    assert img.shape == (32, 32, 3)


def test_resume_equals_uninterrupted(
    cxr_set: tuple[list[Sample], LabelSpace], tmp_path: Path, kill_training_at: Callable[[int], Callable[[], None]]
) -> None:
    samples, labels = cxr_set
    cfg = tiny_config()
    cfg = replace(cfg, optim=replace(cfg.optim, steps=4, ckpt_every=1, eval_every=0))
    full = train_classifier(cfg, samples[:16], [], labels, "cxr", tmp_path / "full", quiet=True)
    disarm = kill_training_at(2)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, samples[:16], [], labels, "cxr", tmp_path / "cut", quiet=True)
    disarm()
    resumed = train_classifier(cfg, samples[:16], [], labels, "cxr", tmp_path / "cut", resume=True, quiet=True)
    assert full["steps"] == resumed["steps"] == 4
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
