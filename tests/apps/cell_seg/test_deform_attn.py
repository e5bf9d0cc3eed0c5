"""Multi-scale deformable attention: grid_sample core vs a looped reference, hand-computed bilinear values, init."""

from __future__ import annotations

import math

import pytest
import torch

from medvit.apps.cell_seg import deform_attn
from medvit.apps.cell_seg.deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_loop, reference_points

SHAPES = [(5, 7), (3, 4), (1, 2)]  # three levels, none square


def _random_inputs(seed: int, n: int = 2, m: int = 2, dh: int = 3, lq: int = 6, p: int = 3):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, s, m, dh, generator=g)
    # Locations reach outside [0, 1] so that zero padding is exercised.
    loc = torch.rand(n, lq, m, len(SHAPES), p, 2, generator=g) * 1.4 - 0.2
    weights = torch.randn(n, lq, m, len(SHAPES) * p, generator=g).softmax(-1).view(n, lq, m, len(SHAPES), p)
    return value, loc, weights


@pytest.mark.parametrize("seed", [0, 1])
def test_grid_sample_core_matches_the_looped_reference(seed: int) -> None:
    value, loc, weights = _random_inputs(seed)
    fast = ms_deform_attn(value, SHAPES, loc, weights)
    slow = ms_deform_attn_loop(value, SHAPES, loc, weights)
    assert fast.shape == slow.shape == (2, 6, 2 * 3)
    assert (fast.double() - slow).abs().max().item() < 1e-5
    assert slow.abs().max().item() > 0.1  # not a trivially zero comparison


def test_bilinear_samples_by_hand_both_implementations() -> None:
    # One level 2 x 3, one head, one channel: v[r, c] = 10 r + c.
    h, w = 2, 3
    value = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0, 12.0]).view(1, 6, 1, 1)
    points = [
        ((1 + 0.5) / w, (0 + 0.5) / h),  # centre of (r0, c1) -> 1
        ((1.0) / w, (1 + 0.5) / h),  # halfway between (r1, c0) and (r1, c1) -> 10.5
        (0.0, 0.0),  # top-left corner: a quarter of v[0, 0] (three neighbours are padding) -> 0
        (1.0, 1.0),  # bottom-right corner: a quarter of v[1, 2] -> 3
        (1.5, 0.5),  # far outside -> 0
    ]
    expected = torch.tensor([1.0, 10.5, 0.0, 3.0, 0.0])
    loc = torch.tensor(points).view(1, len(points), 1, 1, 1, 2)
    weights = torch.ones(1, len(points), 1, 1, 1)
    for fn in (ms_deform_attn, ms_deform_attn_loop):
        out = fn(value, [(h, w)], loc, weights).view(-1)
        torch.testing.assert_close(out.float(), expected, atol=1e-6, rtol=0)


def test_zero_offsets_and_uniform_weights_average_the_samples_at_the_reference() -> None:
    # Levels 2x2 and 1x1, identity projections: the output is the mean over levels (and points) of each value map
    # sampled at the reference point.
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=4, n_levels=2, n_heads=2, n_points=3, ratio=1.0)
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()  # weights are zero after reset_parameters; attention logits all zero
        for lin in (attn.value_proj, attn.output_proj):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    a = torch.randn(1, 4, 4)  # level 0: 2x2 positions, 4 channels
    b = torch.randn(1, 1, 4)  # level 1: 1x1
    ref = torch.tensor([0.25, 0.25]).view(1, 1, 1, 2)  # centre of level-0 pixel (0, 0)
    out = attn(torch.randn(1, 1, 4), ref, torch.cat([a, b], dim=1), [(2, 2), (1, 1)])
    # In the 1x1 map the point sits at pixel coordinate -0.25 on both axes: weight 0.75 * 0.75 on the only pixel.
    expected = (a[0, 0] + 0.5625 * b[0, 0]) / 2
    torch.testing.assert_close(out.view(-1), expected, atol=1e-6, rtol=0)


def test_reset_parameters_is_the_head_direction_grid() -> None:
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=8, n_points=4, ratio=0.5)
    assert attn.sampling_offsets.weight.abs().max() == 0
    assert attn.attention_weights.weight.abs().max() == 0 and attn.attention_weights.bias.abs().max() == 0
    bias = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    torch.testing.assert_close(bias[0, 1, 0], torch.tensor([1.0, 0.0]))  # head 0: +x, point 1
    torch.testing.assert_close(bias[1, 2, 1], torch.tensor([2.0, 2.0]))  # head 1: 45 deg normalised to (1, 1), point 2
    torch.testing.assert_close(bias[2, 0, 3], torch.tensor([4.0 * math.cos(math.pi / 2), 4.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[4, 0, 2], torch.tensor([-3.0, 3.0 * math.sin(math.pi)]), atol=1e-6, rtol=0)
    assert attn.value_proj.weight.shape == (8, 16) and attn.output_proj.weight.shape == (16, 8)


def test_sampling_runs_in_float32_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    original = deform_attn.ms_deform_attn

    def spy(value, shapes, loc, weights):  # noqa: ANN001, ANN202
        seen.append((value.dtype, loc.dtype, weights.dtype, torch.is_autocast_enabled("cpu")))
        return original(value, shapes, loc, weights)

    monkeypatch.setattr(deform_attn, "ms_deform_attn", spy)
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=1, n_heads=2, n_points=2, ratio=0.5)
    q, v = torch.randn(2, 5, 16), torch.randn(2, 12, 16)
    ref = reference_points([(3, 4)])[:, :5]
    reference = attn(q, ref, v, [(3, 4)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, ref, v, [(3, 4)])
    assert seen[-1] == (torch.float32, torch.float32, torch.float32, False)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)


def test_reference_points_are_pixel_centres() -> None:
    ref = reference_points([(2, 4), (1, 1)])
    assert ref.shape == (1, 9, 1, 2)
    torch.testing.assert_close(ref[0, 0, 0], torch.tensor([0.125, 0.25]))
    torch.testing.assert_close(ref[0, 5, 0], torch.tensor([0.375, 0.75]))  # row 1, column 1
    torch.testing.assert_close(ref[0, 8, 0], torch.tensor([0.5, 0.5]))


def test_bad_shapes_are_refused() -> None:
    value, loc, weights = _random_inputs(0)
    with pytest.raises(ValueError, match="spatial shapes"):
        ms_deform_attn(value, [(5, 7), (3, 4)], loc, weights)
    with pytest.raises(ValueError, match="not divisible"):
        MSDeformAttn(d_model=10, n_levels=1, n_heads=3, ratio=1.0)
