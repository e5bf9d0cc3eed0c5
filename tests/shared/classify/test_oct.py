"""3D through the same code: a tiny ViT on synthetic OCT volumes (multi-class), train -> predict -> evaluate."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medvit.shared.classify.config import ClassifyDataCfg, ClassifyModelCfg, LossCfg, MixCfg
from medvit.shared.classify.evaluate import evaluate
from medvit.shared.classify.labels import LabelSpace, Sample
from medvit.shared.classify.predict import predict
from medvit.shared.classify.train import train_classifier

from .conftest import tiny_config


def test_oct_multiclass_end_to_end(tmp_path: Path) -> None:
    from medvit.shared.data.synth_eye import OCT_CLASSES, synth_oct

    synth_oct(tmp_path / "oct", n=8, shape=(32, 32, 16), seed=1)
    labels = LabelSpace("multiclass", tuple(OCT_CLASSES))
    with open(tmp_path / "oct" / "labels.csv", newline="", encoding="utf-8") as f:
        samples = [
            Sample(tmp_path / "oct" / r["path"], np.array([float(r["label_id"])]), key=r["path"])
            for r in csv.DictReader(f)
        ]
    cfg = tiny_config(
        model=ClassifyModelCfg(backbone="test_vit_3d", backbone_overrides={"depth": 2}),
        data=ClassifyDataCfg(size=(16, 16, 16)),
        mix=MixCfg(mode="tl-align", switch_prob=0.5),
        loss=LossCfg(label_smoothing=0.1, class_weights="balanced", sampler="balanced"),
    )
    cfg = replace(cfg, optim=replace(cfg.optim, steps=2, eval_every=1))
    summary = train_classifier(cfg, samples[:6], samples[6:], labels, "oct", tmp_path / "run", quiet=True)
    assert summary["metric"] == "val/accuracy" and summary["thresholds"] == []
    pred = predict(
        tmp_path / "run", samples, tmp_path / "pred", batch_size=4, workers=0, quiet=True, heatmaps="rollout"
    )
    with open(pred, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        p = np.array([float(r[f"prob_{c}"]) for c in labels.classes])
        assert p.sum() == pytest.approx(1.0, abs=1e-5)
        assert r["predicted"] == labels.classes[int(np.argmax(p))]
    assert len(list((tmp_path / "pred" / "heatmaps").rglob("*.png"))) == 8
    result = evaluate(pred, samples, labels, tmp_path / "eval", bootstrap=20, seed=0)
    assert result["headline"]["metric"] == "accuracy" and len(result["confusion"]) == 3
    assert (tmp_path / "eval" / "confusion.png").is_file()
