"""TL-Align and CutMix: boxes, initial token labels, propagation through attention (fused == explicit)."""

from __future__ import annotations

import pytest
import torch

from medvit.shared.backbone.layers import Block
from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.classify.mixing import (
    MixPlan,
    aligned_weight,
    apply_mix,
    cutmix_box,
    draw_mix,
    initial_token_labels,
    mix_targets,
    propagate_token_labels,
)


def test_cutmix_box_area_and_corrected_lam() -> None:
    torch.manual_seed(0)
    for lam in (0.1, 0.5, 0.9):
        box, kept = cutmix_box(lam, (32, 48))
        (y0, y1), (x0, x1) = box
        assert 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 48
        assert kept == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (32 * 48))
    # a centred box is not clipped: sides int(s * sqrt(1 - lam)) rounded down to even
    torch.manual_seed(0)
    box3, kept3 = cutmix_box(0.875, (16, 16, 16))  # (1 - lam) ** (1/3) = 0.5 -> sides 8 unless clipped
    assert all(hi - lo <= 8 for lo, hi in box3)
    assert 0.875 <= kept3 <= 1.0


def test_token_grid_box_gives_whole_tokens() -> None:
    torch.manual_seed(3)
    for _ in range(5):
        box, lam = cutmix_box(0.6, (32, 48), unit=(8, 8))
        assert all(lo % 8 == 0 and hi % 8 == 0 for lo, hi in box)
        patches, prefix = initial_token_labels(MixPlan("cutmix", lam, box), 1, (32, 48), (8, 8))
        share = patches[0, :, 0]
        assert set(share.unique().tolist()) <= {0.0, 1.0}
        assert share.mean().item() == pytest.approx(lam)  # lam = share of tokens kept
        assert prefix[0, 0].item() == pytest.approx(lam)
    t = draw_mix("tl-align", (32, 32, 16), mixup_alpha=1, cutmix_alpha=1, prob=1, switch_prob=0, patch=(8, 8, 8))
    assert t is not None and t.box is not None and all(lo % 8 == 0 and hi % 8 == 0 for lo, hi in t.box)


def test_apply_cutmix_pastes_partner_and_targets_mix() -> None:
    x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 4, 4).clone()  # image 0 all 0, image 1 all 1
    plan = MixPlan("cutmix", lam=0.75, box=((0, 2), (0, 2)))
    out = apply_mix(x, plan)
    assert out[0, 0, :2, :2].eq(1).all() and out[0, 0, 2:, :].eq(0).all()
    assert out[1, 0, :2, :2].eq(0).all() and out[1, 0, 2:, :].eq(1).all()
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(mix_targets(y, 0.75), torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    # a finding unknown in either image stays unknown
    y_nan = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    assert mix_targets(y_nan, 0.75)[:, 1].isnan().all()


def test_initial_token_labels_from_box() -> None:
    plan = MixPlan("cutmix", lam=0.75, box=((0, 4), (2, 6)))  # 4x4 pasted region on an 8x8 image, patches 4x4
    patches, prefix = initial_token_labels(plan, 3, (8, 8), (4, 4))
    assert patches.shape == (3, 4, 2) and prefix.shape == (3, 2)
    # token grid 2x2: top-left half pasted, top-right half pasted, bottom ones intact
    assert torch.allclose(patches[0, :, 0], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert torch.allclose(patches.sum(-1), torch.ones(3, 4))
    assert torch.allclose(prefix[0], torch.tensor([0.75, 0.25]))
    assert patches[0, :, 0].mean() == pytest.approx(0.75)  # mean token label = area ratio


def test_identity_attention_gives_the_area_ratio() -> None:
    torch.manual_seed(1)
    box, lam = cutmix_box(0.4, (32, 32))
    plan = MixPlan("cutmix", lam, box)
    patches, prefix = initial_token_labels(plan, 2, (32, 32), (8, 8))
    labels = torch.cat([prefix[:, None], patches], dim=1)
    eye = torch.eye(labels.shape[1]).expand(2, -1, -1)
    out = propagate_token_labels(labels, [eye, eye, eye])
    assert torch.allclose(out, labels)
    assert torch.allclose(aligned_weight(out, 1, "avg"), torch.full((2,), lam))
    assert torch.allclose(aligned_weight(out, 1, "token"), torch.full((2,), lam))


def test_hand_computed_four_tokens() -> None:
    # y_A = [0.5, 1, 0, 0.25]; A y_A = [0.75, 1, 0.4375, 0.25]; (y + A y) / 2 = [0.625, 1, 0.21875, 0.25]
    a = torch.tensor([[0.5, 0.5, 0, 0], [0, 1, 0, 0], [0.25, 0.25, 0.25, 0.25], [0, 0, 0, 1]])[None]
    y_a = torch.tensor([0.5, 1.0, 0.0, 0.25])
    labels = torch.stack([y_a, 1 - y_a], -1)[None]
    out = propagate_token_labels(labels, [a])
    assert torch.allclose(out[0, :, 0], torch.tensor([0.625, 1.0, 0.21875, 0.25]))
    assert torch.allclose(out.sum(-1), torch.ones(1, 4))


def test_block_with_uniform_attention_by_hand() -> None:
    # q = k = 0 -> every head attends uniformly (1/4): A y = mean(y) = 0.4375 -> (y + 0.4375) / 2
    blk = Block(dim=8, num_heads=2).eval()
    with torch.no_grad():
        blk.attn.qkv.weight[:16] = 0
        blk.attn.qkv.bias[:16] = 0
    y_a = torch.tensor([0.5, 1.0, 0.0, 0.25])
    labels = torch.stack([y_a, 1 - y_a], -1)[None]
    x = torch.randn(1, 4, 8)
    out_x, out_labels = blk.forward_carry(x, labels)
    assert torch.allclose(out_labels[0, :, 0], torch.tensor([0.46875, 0.71875, 0.21875, 0.34375]), atol=1e-6)
    assert torch.allclose(out_x, blk(x), atol=1e-6)


@pytest.mark.parametrize("three_d", [False, True])
def test_fused_propagation_matches_explicit_attention(three_d: bool) -> None:
    torch.manual_seed(0)
    if three_d:
        vit = VisionTransformer(
            img_size=16,
            patch_size=(8, 8, 8),
            in_chans=1,
            embed_dim=32,
            depth=2,
            num_heads=2,
            global_pool="avg",
            num_classes=3,
            pos_embed="sincos",
            pos_embed_prefix=False,
        )
        x, spatial, patch = torch.randn(2, 1, 16, 16, 16), (16, 16, 16), (8, 8, 8)
    else:
        vit = VisionTransformer(
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool="avg", num_classes=3
        )
        x, spatial, patch = torch.randn(2, 3, 32, 32), (32, 32), (8, 8)
    vit.eval()
    box, lam = cutmix_box(0.5, spatial)
    patches, prefix = initial_token_labels(MixPlan("cutmix", lam, box), 2, spatial, patch)
    tokens, carry = vit.forward_features_carry(x, patches, prefix)
    ref_tokens, maps = vit.forward_features_attention(x)
    labels = torch.cat([prefix[:, None], patches], dim=1)
    assert torch.allclose(carry, propagate_token_labels(labels, maps), atol=1e-5)
    assert torch.allclose(tokens, vit.forward_features(x), atol=1e-5)
    assert torch.allclose(ref_tokens, tokens, atol=1e-5)
    assert torch.allclose(carry.sum(-1), torch.ones_like(carry[..., 0]), atol=1e-6)
    w = aligned_weight(carry, vit.num_prefix_tokens, "avg")
    assert ((w >= 0) & (w <= 1)).all()


def test_draw_mix_modes() -> None:
    torch.manual_seed(0)
    assert draw_mix("none", (8, 8), mixup_alpha=1, cutmix_alpha=1, prob=1, switch_prob=0) is None
    assert draw_mix("cutmix", (8, 8), mixup_alpha=1, cutmix_alpha=1, prob=0, switch_prob=0) is None
    m = draw_mix("mixup", (8, 8), mixup_alpha=1, cutmix_alpha=1, prob=1, switch_prob=0)
    assert m is not None and m.kind == "mixup" and m.box is None and 0 <= m.lam <= 1
    t = draw_mix("tl-align", (8, 8), mixup_alpha=1, cutmix_alpha=1, prob=1, switch_prob=0)
    assert t is not None and t.kind == "cutmix" and t.align
    s = draw_mix("tl-align", (8, 8), mixup_alpha=1, cutmix_alpha=1, prob=1, switch_prob=1)
    assert s is not None and s.kind == "mixup"
