"""Fixtures of the classification-core tests: a small synthetic chest X-ray set and a tiny CPU config."""

from __future__ import annotations

import csv
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from medvit.shared.classify.config import (
    AugmentCfg,
    ClassifyConfig,
    ClassifyDataCfg,
    ClassifyInferCfg,
    ClassifyModelCfg,
    ClassifyOptim,
    MixCfg,
)
from medvit.shared.classify.labels import LabelSpace, Sample

FINDINGS = ("Cardiomegaly", "Effusion", "Nodule", "Pneumothorax")


@pytest.fixture(scope="session")
def cxr_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Sample], LabelSpace]:
    """24 synthetic 64-px chest X-rays (prevalence 0.4) as multi-label samples, keys relative to the folder."""
    from medvit.shared.data.synth_xray import synth_cxr

    root = tmp_path_factory.mktemp("cxr")
    synth_cxr(root, n=24, size=64, seed=0, prevalence=0.4)
    samples = []
    with open(root / "labels.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            target = np.array([float(row[c]) for c in FINDINGS], np.float32)
            samples.append(Sample(root / row["path"], target, group=row["path"], key=row["path"]))
    return samples, LabelSpace("multilabel", FINDINGS)


def tiny_config(**sections: Any) -> ClassifyConfig:
    """A 2-block, 32-wide ViT on 32 px inputs, 4 steps of batch 4 on the CPU; ``sections`` replace fields."""
    cfg = ClassifyConfig(
        model=ClassifyModelCfg(backbone="test_vit_2d", backbone_overrides={"depth": 2}, drop_path=0.1),
        mix=MixCfg(mode="tl-align"),
        augment=AugmentCfg(),
        data=ClassifyDataCfg(size=(32,)),
        optim=ClassifyOptim(
            steps=4, epochs=None, batch_size=4, lr=1e-3, log_every=1, ckpt_every=2, device="cpu", eval_every=2
        ),
        infer=ClassifyInferCfg(batch_size=8),
    )
    return replace(cfg, **sections)
