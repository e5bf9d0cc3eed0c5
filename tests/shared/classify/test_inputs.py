"""Input specs, deterministic test-time preprocessing, reseedable training augmentation, RandAugment, OCT volumes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medvit.shared.classify.config import AugmentCfg
from medvit.shared.classify.inputs import (
    EvalTransform,
    InputSpec,
    TrainTransform,
    load_input,
    preset_spec,
    spec_from_sidecar,
)
from medvit.shared.classify.randaugment import OPS, RandAugment, apply_op, parse_randaugment
from medvit.shared.errors import ConfigError


def test_specs_from_presets_and_sidecars() -> None:
    assert preset_spec("cxr").mean == (0.5056,) * 3 and preset_spec("oct").size == (224, 224, 112)
    side = {"input_size": [64, 64, 32], "patch_size": [16, 16, 16], "in_chans": 1,
            "intensity": {"kind": "zscore_nonzero"}}  # fmt: skip
    spec = spec_from_sidecar(side, "oct")
    assert spec.dims == 3 and spec.size == (64, 64, 32) and spec.intensity == "zscore_nonzero"
    with pytest.raises(ConfigError, match="2D"):
        spec_from_sidecar({"patch_size": [16, 16], "input_size": [224, 224]}, "oct")
    rgb = spec_from_sidecar({"patch_size": [16, 16], "input_size": [96, 96], "in_chans": 1}, "fundus")
    assert rgb.channels == 1 and rgb.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError):
        InputSpec(3, 3, (8, 8, 8))


def test_eval_transform_resize_and_centre_crop() -> None:
    spec = InputSpec(2, 1, (32, 32), (0.5,), (0.25,), "cxr")
    img = np.zeros((64, 96), np.float32)
    img[:, 48:] = 1.0  # right half bright
    out = EvalTransform(spec, crop_pct=0.875)(img)
    assert out.shape == (1, 32, 32)
    # shorter side 64 -> 36 (floor(32 / 0.875)), width 54; centre crop keeps columns 11..42 of 54: the edge at 27
    assert out[0, :, :14].max() == pytest.approx(-2.0) and out[0, :, 18:].min() == pytest.approx(2.0)
    assert torch.equal(out, EvalTransform(spec, crop_pct=0.875)(img))  # deterministic
    full = EvalTransform(replace(spec, channels=3, mean=(0.5,), std=(0.25,)), crop_pct=1.0)(img)
    assert full.shape == (3, 32, 32) and torch.equal(full[0], full[2])  # grey replicated


@pytest.mark.parametrize("rgb", [False, True])
def test_train_transform_is_reseedable(rgb: bool) -> None:
    spec = InputSpec(2, 3, (32, 32), (0.5,), (0.25,), "cxr")
    rng = np.random.default_rng(0)
    img = rng.random((48, 40, 3) if rgb else (48, 40)).astype(np.float32)
    t = TrainTransform(spec, AugmentCfg())
    t.reseed(11)
    a = t(img)
    t.reseed(12)
    b = t(img)
    t.reseed(11)
    assert torch.equal(a, t(img)) and not torch.equal(a, b)
    assert a.shape == (3, 32, 32) and torch.isfinite(a).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_every_randaugment_op_keeps_range_and_shape(channels: int) -> None:
    x = torch.rand(channels, 20, 24)
    fill = torch.full((channels, 1, 1), 0.5)
    for name in OPS:
        for f in (-1.0, 0.6):
            y = apply_op(name, x, f, fill)
            assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, name


def test_randaugment_ops_by_hand() -> None:
    x = torch.linspace(0, 1, 40).view(1, 4, 10)
    fill = torch.zeros(1, 1, 1)
    assert torch.allclose(apply_op("Invert", x, 0.5, fill), 1 - x)
    sol = apply_op("Solarize", x, 0.25, fill)  # values >= 0.75 inverted
    assert torch.allclose(sol, torch.where(x >= 0.75, 1 - x, x))
    assert torch.allclose(apply_op("Rotate", x, 0.0, fill), x, atol=1e-6)
    # translate by 0.45 * f * W pixels: f = 2 / 4.5 -> 2 pixels to the left, zeros enter on the right
    moved = apply_op("TranslateX", x, 2 / 4.5, fill)
    assert torch.allclose(moved[..., :-2], x[..., 2:], atol=1e-5) and moved[..., -2:].abs().max() < 1e-6
    assert torch.allclose(apply_op("Brightness", x, -1.0, fill), x * 0.1)
    assert apply_op("Posterize", x, 1.0, fill).mul(255).round().remainder(128).eq(0).all()  # 1 bit left
    rnd = RandAugment("rand-m6-mstd0.5-inc1")
    assert torch.equal(rnd(x, np.random.default_rng(3)), rnd(x, np.random.default_rng(3)))
    assert parse_randaugment("rand-m6-mstd0.5-inc1").n == 2
    for bad in ("m6", "rand-x3", "rand-m6-inc0"):
        with pytest.raises(ValueError):
            parse_randaugment(bad)


def test_oct_volume_input_is_deterministic(tmp_path: Path) -> None:
    from medvit.shared.data.synth_eye import synth_oct

    synth_oct(tmp_path, n=1, shape=(32, 24, 16), seed=0)
    src = tmp_path / "volumes" / "oct_000.nii.gz"
    spec = InputSpec(3, 1, (16, 16, 8), modality="oct", intensity="zscore_nonzero")
    a, b = load_input(src, spec), load_input(src, spec)
    assert a.shape == (1, 16, 16, 8) and np.array_equal(a, b)
    t = TrainTransform(spec, AugmentCfg())
    t.reseed(5)
    from medvit.shared.classify.inputs import read_source

    vol = read_source(src, "oct")
    c = t(vol)
    t.reseed(5)
    assert torch.equal(c, t(vol)) and c.shape == (1, 16, 16, 8)
