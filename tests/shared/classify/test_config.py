"""The core's config: recipe defaults, YAML round trip, refused values, the loop's learning rate and warmup."""

from __future__ import annotations

import sys

import pytest

from medvit.shared.classify.config import ClassifyConfig
from medvit.shared.config import from_dict, to_dict
from medvit.shared.errors import ConfigError


def test_recipe_defaults_and_round_trip() -> None:
    cfg = ClassifyConfig()
    assert cfg.model.global_pool == "avg" and cfg.model.drop_path == 0.2 and cfg.model.head_init_std == 2e-5
    assert cfg.optim.layer_decay == 0.55 and cfg.optim.weight_decay == 0.05 and cfg.optim.warmup_epochs == 5
    assert cfg.optim.epochs == 75 and cfg.optim.min_lr == 1e-5 and cfg.mix.mode == "none"
    assert cfg.augment.randaugment == "rand-m6-mstd0.5-inc1"
    assert from_dict(ClassifyConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "layer",
    [
        {"mix": {"mode": "cutout"}},
        {"mix": {"prob": 1.5}},
        {"model": {"global_pool": "max"}},
        {"augment": {"randaugment": "rand-m6-inc0"}},
        {"augment": {"crop_scale": [0.9, 0.1]}},
        {"infer": {"threshold": "high"}},
        {"loss": {"sampler": "oversample"}},
        {"data": {"in_chans": 2}},
    ],
)
def test_refused_values_name_the_key(layer: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(layer))):
        from_dict(ClassifyConfig, layer)


def test_loop_config_lr_rule_and_warmup() -> None:
    from medvit.shared.classify.train import _train_config

    cfg = from_dict(ClassifyConfig, {"optim": {"batch_size": 32, "epochs": 10}})
    t = _train_config(cfg, n_train=320, has_val=True, metric="mauc")
    assert t.lr == pytest.approx(2.5e-4 * 32 / 256)  # blr * effective batch / 256
    assert t.warmup_fraction == pytest.approx(5 / 10)  # 5 warmup epochs of 10
    assert t.eval_every == 10 and t.best_metric == "val/mauc" and t.layer_decay == 0.55
    fixed = from_dict(ClassifyConfig, {"optim": {"lr": 0.01, "steps": 100, "epochs": None, "warmup_fraction": 0.1}})
    t2 = _train_config(fixed, n_train=80, has_val=False, metric="mauc")
    assert t2.lr == 0.01 and t2.warmup_fraction == 0.1 and t2.eval_every == 0 and t2.best_metric is None


def test_config_modules_are_torch_free() -> None:
    import subprocess

    code = "import sys, medvit.shared.classify.config as c, medvit.shared.classify.labels; c.ClassifyConfig(); "
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
