"""The faster forms of MONAI's conv blocks compute MONAI's values, with and without autograd, in both layouts."""

from __future__ import annotations

import pytest
import torch
from monai.networks import nets as monai_nets
from torch import nn

from medvit.apps.ct_seg.fast_blocks import InstanceNormByGroups, PointwiseConv, use_fast_blocks
from medvit.apps.ct_seg.model import UNETR

CL = torch.channels_last_3d


def _maps(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # per-channel offsets well away from zero: the variance must not come from E[x^2] - E[x]^2
    return torch.randn(shape, generator=g) * 0.3 + torch.linspace(-3.0, 6.0, shape[1]).view(1, -1, 1, 1, 1)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_in_place_instance_norm_equals_instance_norm(affine: bool, layout: str) -> None:
    ref_norm = nn.InstanceNorm3d(6, affine=affine)
    if affine:
        with torch.no_grad():
            ref_norm.weight.uniform_(0.5, 1.5)
            ref_norm.bias.uniform_(-1.0, 1.0)
    norm = InstanceNormByGroups(6, affine=affine)
    norm.load_state_dict(ref_norm.state_dict())
    x = _maps((2, 6, 20, 24, 28))
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    expected = ref_norm.double()(x.contiguous().double()).float()
    torch.testing.assert_close(norm(x), expected, atol=2e-5, rtol=1e-5)
    y = x.clone(memory_format=torch.preserve_format)
    out = norm.normalize_(y)
    assert out.data_ptr() == y.data_ptr()  # in place
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("cin", [1, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_equals_conv3d_in_every_layout_and_in_training(cin: int, bias: bool) -> None:
    torch.manual_seed(0)
    ref = nn.Conv3d(cin, 4, 1, bias=bias)
    pw = nn.Conv3d(cin, 4, 1, bias=bias)
    pw.load_state_dict(ref.state_dict())
    use_fast_blocks(nn.Sequential(pw))
    assert type(pw) is PointwiseConv
    x = torch.randn(2, cin, 6, 7, 8)
    for inp in (x, x.contiguous(memory_format=CL)):
        with torch.no_grad():
            torch.testing.assert_close(pw(inp), ref(x), atol=1e-5, rtol=1e-5)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(xa).square().sum().backward()
    pw(xb).square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(pw.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)


def test_unetr_with_fast_blocks_reproduces_monai_with_and_without_autograd() -> None:
    torch.manual_seed(0)
    ref = monai_nets.UNETR(1, 3, (32, 32, 32), feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2).eval()
    model = UNETR.from_monai_unetr(ref.state_dict(), num_heads=2).eval()
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"ResBlock", "PointwiseConv", "InstanceNormByGroups"} <= kinds
    assert not {"UnetResBlock", "InstanceNorm3d"} & kinds
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        expected = ref(x)
    with torch.inference_mode():  # channels-last, in-place norms
        out = model(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    out = model(x)  # autograd on: MONAI's graph
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    out.square().mean().backward()
    ref(x).square().mean().backward()
    for name in ("decoder2.conv_block.conv1.conv.weight", "encoder1.layer.conv3.conv.weight", "out.conv.conv.weight"):
        got = model.get_parameter(name).grad
        want = ref.get_parameter(name).grad
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-3)


def test_the_swap_keeps_state_dict_keys_and_values() -> None:
    torch.manual_seed(0)
    ref = monai_nets.UNETR(1, 3, (32, 32, 32), feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2)
    sd = ref.state_dict()
    use_fast_blocks(ref)
    after = ref.state_dict()
    assert list(after) == list(sd)
    assert all(torch.equal(after[k], sd[k]) for k in sd)


@pytest.mark.parametrize("affine", [True, False])
def test_channels_last_instance_norm_gradients_equal_instance_norm(affine: bool) -> None:
    ref_norm = nn.InstanceNorm3d(5, affine=affine).double()
    norm = InstanceNormByGroups(5, affine=affine).double()
    if affine:
        with torch.no_grad():
            ref_norm.weight.uniform_(0.5, 1.5)
            ref_norm.bias.uniform_(-1.0, 1.0)
        norm.load_state_dict(ref_norm.state_dict())
    x = _maps((2, 5, 6, 7, 8)).double()
    xa = x.clone().requires_grad_()
    xb = x.clone().contiguous(memory_format=CL).requires_grad_()
    g = torch.randn_like(x)
    ya, yb = ref_norm(xa), norm(xb)
    assert yb.is_contiguous(memory_format=CL) and not yb.is_contiguous()
    torch.testing.assert_close(yb, ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)
    if affine:
        torch.testing.assert_close(norm.weight.grad, ref_norm.weight.grad)
        torch.testing.assert_close(norm.bias.grad, ref_norm.bias.grad)


@pytest.mark.parametrize("affine", [True, False])
def test_one_channel_residual_closed_form_equals_monai_block(affine: bool) -> None:
    from monai.networks.blocks.dynunet_block import UnetResBlock

    torch.manual_seed(0)
    norm = ("instance", {"affine": affine})
    ref = UnetResBlock(3, 1, 6, kernel_size=3, stride=1, norm_name=norm).eval()
    if affine:
        with torch.no_grad():
            for m in ref.modules():
                if isinstance(m, nn.InstanceNorm3d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-1.0, 1.0)
    fast = UnetResBlock(3, 1, 6, kernel_size=3, stride=1, norm_name=norm).eval()
    fast.load_state_dict(ref.state_dict())
    use_fast_blocks(nn.Sequential(fast))
    x = torch.rand(2, 1, 12, 10, 14) * 0.5 + 0.3  # CT-like: positive values with a mean well above zero
    with torch.no_grad():
        expected = ref(x)
    with torch.inference_mode():
        assert fast._one_channel_residual(x, expected.contiguous(memory_format=CL))
        got = fast(x)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
