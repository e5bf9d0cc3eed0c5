"""CellLoss terms against numpy formulas on tiny tensors, MSGE orientation on ramps, weights, fp32, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medvit.apps.cell_seg.losses import (
    DEFAULT_WEIGHTS,
    CellLoss,
    hv_gradients,
    msge_loss,
    sobel_kernels,
)
from medvit.shared.errors import ConfigError

C = 3  # nucleus classes -> 4 NT channels


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _onehot(t: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[t].transpose(0, 3, 1, 2)


def _batch(seed: int = 0, b: int = 2, h: int = 6, w: int = 7) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    np_true = (torch.rand(b, h, w, generator=g) > 0.5).long()
    nt_true = torch.randint(1, C + 1, (b, h, w), generator=g) * np_true
    out = {
        "nuclei_binary_map": torch.randn(b, 2, h, w, generator=g, dtype=torch.float64).float(),
        "hv_map": torch.randn(b, 2, h, w, generator=g),
        "nuclei_type_map": torch.randn(b, C + 1, h, w, generator=g),
        "tissue_types": torch.randn(b, 5, generator=g),
    }
    target = {
        "nuclei_binary_map": np_true,
        "hv_map": torch.rand(b, 2, h, w, generator=g) * 2 - 1,
        "nuclei_type_map": nt_true,
        "tissue": torch.randint(0, 5, (b,), generator=g),
    }
    return out, target


def _numpy_terms(out: dict, target: dict) -> dict[str, float]:
    """The published definitions written out in numpy (float64), one softmax."""
    z_np = out["nuclei_binary_map"].double().numpy()
    z_nt = out["nuclei_type_map"].double().numpy()
    t_np = target["nuclei_binary_map"].numpy()
    t_nt = target["nuclei_type_map"].numpy()
    p, t = _softmax(z_np), _onehot(t_np, 2)
    tp, fp, fn = (p * t).sum(), ((1 - t) * p).sum(), (t * (1 - p)).sum()
    np_ft = (1 - (tp + 1e-6) / (tp + 0.7 * fn + 0.3 * fp + 1e-6)) ** (4 / 3)

    def dice(p: np.ndarray, t: np.ndarray) -> float:
        inter, den = (p * t).sum(axis=(0, 2, 3)), p.sum(axis=(0, 2, 3)) + t.sum(axis=(0, 2, 3))
        return float((1 - (2 * inter + 1e-3) / (den + 1e-3)).sum())

    q, u = _softmax(z_nt), _onehot(t_nt, C + 1)
    nt_ft = 0.0
    for c in range(C + 1):
        tp_c, fp_c, fn_c = (q[:, c] * u[:, c]).sum(), ((1 - u[:, c]) * q[:, c]).sum(), (u[:, c] * (1 - q[:, c])).sum()
        nt_ft += (1 - (tp_c + 1e-6) / (tp_c + 0.7 * fn_c + 0.3 * fp_c + 1e-6)) ** (4 / 3)
    # The official cross-entropy on probabilities: renormalise, clamp to [1e-7, 1 - 1e-7], -sum t log p, mean.
    qc = np.clip(q / q.sum(axis=1, keepdims=True), 1e-7, 1 - 1e-7)
    nt_ce = float(-(u * np.log(qc)).sum(axis=1).mean())
    zt = out["tissue_types"].double().numpy()
    tt = target["tissue"].numpy()
    log_pt = zt - zt.max(1, keepdims=True) - np.log(np.exp(zt - zt.max(1, keepdims=True)).sum(1, keepdims=True))
    return {
        "np_ft": float(np_ft),
        "np_dice": dice(p, t),
        "hv_mse": float(((out["hv_map"].double() - target["hv_map"].double()) ** 2).mean()),
        "nt_ce": nt_ce,
        "nt_dice": dice(q, u),
        "nt_ft": float(nt_ft),
        "tissue_ce": float(-log_pt[np.arange(len(tt)), tt].mean()),
    }


def test_terms_match_numpy_formulas() -> None:
    out, target = _batch()
    total, terms = CellLoss(C)(out, target)
    expected = _numpy_terms(out, target)
    assert set(terms) == set(DEFAULT_WEIGHTS)
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert total.item() == pytest.approx(sum(DEFAULT_WEIGHTS[k] * terms[k].item() for k in terms), rel=1e-6)


def test_np_focal_tversky_reduces_to_mean_true_class_probability() -> None:
    # Flattening both channels of a per-pixel softmax makes FP == FN, so alpha + beta = 1 cancels out.
    out, target = _batch(seed=3)
    p = torch.softmax(out["nuclei_binary_map"].double(), 1)
    p_true = p.gather(1, target["nuclei_binary_map"][:, None]).mean().item()
    _, terms = CellLoss(C)(out, target)
    assert terms["np_ft"].item() == pytest.approx((1 - p_true) ** (4 / 3), rel=1e-4)


def test_msge_matches_correlation_with_zero_padding() -> None:
    rng = np.random.default_rng(0)
    pred, true = rng.normal(size=(2, 2, 9, 8)), rng.normal(size=(2, 2, 9, 8))
    focus = rng.random((2, 9, 8)) > 0.4
    r = np.arange(-2, 3)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    norm = np.where((dx == 0) & (dy == 0), 1, dx**2 + dy**2)
    kx, ky = dx / norm, dy / norm  # x kernel varies along columns

    def grad(hv: np.ndarray) -> np.ndarray:
        return np.stack(
            [
                np.stack([ndimage.correlate(m[0], kx, mode="constant"), ndimage.correlate(m[1], ky, mode="constant")])
                for m in hv
            ]
        )

    d = grad(pred) - grad(true)
    f = np.repeat(focus[:, None], 2, axis=1)
    expected = (f * d * d).sum() / (f.sum() + 1e-8)
    got = msge_loss(torch.tensor(pred), torch.tensor(true), torch.tensor(focus), sobel_kernels("hovernet"))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def _ramps(h: int = 12, w: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return x, y


def test_msge_kernels_differentiate_the_x_map_along_x() -> None:
    x, y = _ramps()
    inner = (slice(2, -2), slice(2, -2))  # away from the zero padding
    g = hv_gradients(torch.stack([x, y])[None], sobel_kernels("hovernet"))[0]
    # sum over the 5x5 window of dx^2 / (dx^2 + dy^2) = 12 by symmetry (24 neighbours, half of sum 1 each)
    assert torch.allclose(g[0][inner], torch.full_like(g[0][inner], 12.0))
    assert torch.allclose(g[1][inner], torch.full_like(g[1][inner], 12.0))
    g = hv_gradients(torch.stack([y, x])[None], sobel_kernels("hovernet"))[0]
    assert g[0][inner].abs().max() < 1e-5 and g[1][inner].abs().max() < 1e-5
    # the official (transposed) kernel does the opposite
    g = hv_gradients(torch.stack([y, x])[None], sobel_kernels("cellvit"))[0]
    assert torch.allclose(g[0][inner], torch.full_like(g[0][inner], 12.0))


@pytest.mark.parametrize(("orientation", "xy_loss", "yx_loss"), [("hovernet", 144.0, 0.0), ("cellvit", 0.0, 144.0)])
def test_msge_loss_orientation_on_ramps(orientation: str, xy_loss: float, yx_loss: float) -> None:
    """Target ch0 = x-ramp, ch1 = y-ramp (the HV convention) vs prediction 0: every interior gradient is 12 under
    the correct orientation (loss 144) and 0 under the transposed one; swapping the ramps swaps the results."""
    x, y = _ramps()
    focus = torch.zeros(1, 12, 12)
    focus[:, 2:-2, 2:-2] = 1
    zero = torch.zeros(1, 2, 12, 12)
    k = sobel_kernels(orientation)
    assert msge_loss(zero, torch.stack([x, y])[None], focus, k).item() == pytest.approx(xy_loss, abs=1e-3)
    assert msge_loss(zero, torch.stack([y, x])[None], focus, k).item() == pytest.approx(yx_loss, abs=1e-3)


def _perfect(out: dict, target: dict) -> dict:
    big = 30.0
    return {
        "nuclei_binary_map": (F.one_hot(target["nuclei_binary_map"], 2).permute(0, 3, 1, 2).float() * 2 - 1) * big,
        "hv_map": target["hv_map"].clone(),
        "nuclei_type_map": (F.one_hot(target["nuclei_type_map"], C + 1).permute(0, 3, 1, 2).float() * 2 - 1) * big,
        "tissue_types": F.one_hot(target["tissue"], 5).float() * big,
    }


def test_perfect_prediction_gives_near_zero_terms() -> None:
    out, target = _batch(seed=1)
    _, terms = CellLoss(C)(_perfect(out, target), target)
    assert terms["hv_mse"].item() == 0.0
    assert terms["hv_msge"].item() == 0.0
    for key in ("np_ft", "np_dice", "nt_ce", "nt_dice", "nt_ft", "tissue_ce"):
        assert 0.0 <= terms[key].item() < 1e-4, key
    _, noisy = CellLoss(C)(out, target)
    assert all(noisy[k] > 1e-3 for k in ("np_dice", "nt_dice", "hv_mse", "hv_msge"))


def test_weights_change_the_total_as_stated() -> None:
    out, target = _batch(seed=2)
    base_total, terms = CellLoss(C)(out, target)
    total, _ = CellLoss(C, weights={"hv_msge": 0.0, "nt_ce": 2.0})(out, target)
    delta = -8.0 * terms["hv_msge"] + (2.0 - 0.5) * terms["nt_ce"]
    assert total.item() == pytest.approx((base_total + delta).item(), rel=1e-6)
    no_tissue_total, no_tissue = CellLoss(C, tissue=False)(out, target)
    assert "tissue_ce" not in no_tissue
    assert no_tissue_total.item() == pytest.approx((base_total - 0.1 * terms["tissue_ce"]).item(), rel=1e-6)
    del out["tissue_types"], target["tissue"]  # CoNIC-style batch without tissue labels
    assert CellLoss(C, tissue=False)(out, target)[0].item() == pytest.approx(no_tissue_total.item())


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown term 'hv_l1'"):
        CellLoss(C, weights={"hv_l1": 1.0})
    with pytest.raises(ConfigError, match="weights.np_dice"):
        CellLoss(C, weights={"np_dice": -1.0})
    with pytest.raises(ConfigError, match="msge_orientation"):
        CellLoss(C, msge_orientation="xy")
    out, target = _batch()
    with pytest.raises(ValueError, match="channels"):
        CellLoss(C + 1)(out, target)
    assert "sobel" not in CellLoss(C).state_dict()  # a constant, not part of checkpoints


@pytest.mark.parametrize("perfect", [False, True])
def test_gradients_are_finite(perfect: bool) -> None:
    out, target = _batch(seed=4)
    if perfect:  # (1 - T) ** (4/3) and the Dice at their minimum
        out = _perfect(out, target)
    leaves = {k: v.clone().requires_grad_(True) for k, v in out.items()}
    total, _ = CellLoss(C)(leaves, target)
    total.backward()
    for key, leaf in leaves.items():
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), key


def test_fp32_under_autocast() -> None:
    out, target = _batch(seed=5)
    half = {k: v.to(torch.bfloat16) for k, v in out.items()}
    loss = CellLoss(C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms = loss(half, target)
    ref_total, ref_terms = loss({k: v.float() for k, v in half.items()}, target)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-6)
    for key in terms:
        assert terms[key].item() == pytest.approx(ref_terms[key].item(), rel=1e-6, abs=1e-7), key
