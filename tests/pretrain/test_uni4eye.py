"""Uni4Eye: gradient-map targets, unified 2D/3D embedding through one transformer, masking, dual-decoder loss,
step schedule, the two-backbone export and the successor-checkpoint import."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medvit.pretrain.gradient import gradient_map, gradient_target, sobel_kernels
from medvit.pretrain.presets import build_model, get_preset, list_presets
from medvit.pretrain.uni4eye import (
    Uni4Eye,
    entropy_weights,
    export_encoders,
    guided_masking,
    interleave_schedule,
    load_uni4eye_checkpoint,
    patch_entropy,
)
from medvit.shared.backbone import create_backbone
from medvit.shared.backbone.weights import load_backbone
from medvit.shared.errors import WeightsError


def _tiny(**kw) -> Uni4Eye:
    torch.manual_seed(0)
    return build_model(get_preset("uni4eye", "uni4eye-tiny"), **kw)


def _smooth(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Smooth plane waves per sample and channel (learnable targets, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(0, 1, s) for s in shape[2:]], indexing="ij")
    x = torch.zeros(shape)
    for b in range(shape[0]):
        for c in range(shape[1]):
            freq = torch.rand(len(grids), generator=g) * 3 + 1
            phase = torch.rand(1, generator=g) * 6
            x[b, c] = torch.sin(sum(f * gr * math.pi for f, gr in zip(freq, grids, strict=True)) + phase)
    return x


# ============================================================================= gradient map
def test_sobel_kernels_are_sobel_scaled_to_the_derivative() -> None:
    k = sobel_kernels(2)
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    torch.testing.assert_close(k[1, 0] * 8, sobel_x)  # d/dW
    torch.testing.assert_close(k[0, 0] * 8, sobel_x.T)  # d/dH
    k3 = sobel_kernels(3)
    assert k3.shape == (3, 1, 3, 3, 3)
    torch.testing.assert_close(k3[2, 0, 1, 1], torch.tensor([-0.5, 0.0, 0.5]) * 0.25)  # centre line along D


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 1, 7, 6, 8)])
def test_gradient_map_equals_the_sobel_convolution(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    nd = len(shape) - 2
    padded = F.pad(x.mean(1, keepdim=True), (1, 1) * nd, mode="replicate")
    deriv = (F.conv2d if nd == 2 else F.conv3d)(padded, sobel_kernels(nd))
    torch.testing.assert_close(gradient_map(x), deriv.pow(2).sum(1, keepdim=True).sqrt())


def test_gradient_map_of_a_ramp_is_its_slope_inside() -> None:
    h, w = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    img = (0.3 * h + 0.4 * w)[None, None].expand(2, 3, -1, -1)  # channel mean = the ramp
    g = gradient_map(img)
    assert g.shape == (2, 1, 12, 10)
    torch.testing.assert_close(g[..., 1:-1, 1:-1], torch.full_like(g[..., 1:-1, 1:-1], 0.5))  # sqrt(.3^2 + .4^2)
    # replicate padding halves the central difference across the border
    torch.testing.assert_close(g[0, 0, 5, 0], torch.tensor(math.hypot(0.3, 0.2)))
    hh, ww, dd = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), torch.arange(6.0), indexing="ij")
    vol = (1.0 * hh + 2.0 * ww + 2.0 * dd)[None, None]
    inner = gradient_map(vol)[..., 1:-1, 1:-1, 1:-1]
    torch.testing.assert_close(inner, torch.full_like(inner, 3.0))


def test_gradient_map_of_a_step_is_non_zero_only_at_the_step() -> None:
    img = torch.zeros(1, 1, 8, 10)
    img[..., 6:] = 2.0  # step between columns 5 and 6
    g = gradient_map(img)[0, 0]
    expected = torch.zeros(8, 10)
    expected[:, 5:7] = 1.0  # central difference (2 - 0) / 2 on both sides of the step, full height
    torch.testing.assert_close(g, expected)
    vol = torch.zeros(1, 1, 5, 5, 8)
    vol[..., 3:] = 1.0
    g3 = gradient_map(vol)[0, 0]
    assert torch.all(g3[..., 2:4] == 0.5) and not g3[..., :2].any() and not g3[..., 4:].any()


def test_gradient_target_is_normalised_per_patch() -> None:
    img = _smooth((2, 3, 32, 32), 0)
    img[..., :16, :16] = 0.0  # flat corner: the gradient of its first 8 x 8 patch is zero
    t = gradient_target(img, (8, 8))
    assert t.shape == (2, 16, 64)
    # patch (i, j) of the magnitude map, pixels row-major, normalised by its mean and unbiased variance + 1e-6
    mag = gradient_map(img)[:, 0]
    patch = mag[:, 8:16, 16:24].reshape(2, 64)  # token 1 * 4 + 2
    mean, var = patch.mean(-1, keepdim=True), patch.var(-1, keepdim=True)
    torch.testing.assert_close(t[:, 6], (patch - mean) / (var + 1e-6).sqrt())
    torch.testing.assert_close(t.mean(-1)[:, 5:], torch.zeros(2, 11), atol=1e-5, rtol=0)
    assert not t[:, 0].any()  # the patch inside the flat corner: all zeros, not NaN


# ============================================================================= model
def test_2d_and_3d_inputs_share_the_blocks_with_their_own_token_counts() -> None:
    torch.manual_seed(0)
    enc = create_backbone(
        "test_vit_2d", img_size=224, patch_size=16, embed_dim=48, depth=2, num_heads=2, pos_embed="sincos"
    )
    model = Uni4Eye(enc, volume_size=(64, 64, 32), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    seen: list[int] = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    tokens2, grid2 = model.embed(torch.randn(1, 3, 224, 224))
    tokens3, grid3 = model.embed(torch.randn(1, 1, 64, 64, 32))
    assert grid2 == (14, 14) and tokens2.shape == (1, 1 + 196, 48)
    assert grid3 == (4, 4, 2) and tokens3.shape == (1, 1 + 32, 48)
    out2 = model(torch.randn(2, 3, 224, 224))
    out3 = model(torch.randn(2, 1, 64, 64, 32))
    assert seen == [1 + 49, 1 + 8]  # cls + visible tokens at ratio 0.75 went through the same block
    assert out2["spatial_dims"] == 2 and out3["spatial_dims"] == 3
    # 2D table = MAE's 2D sin-cos, 3D table = 3D sin-cos; both with a zero cls slot
    from medvit.shared.backbone.pos_embed import sincos_pos_embed_3d

    assert not model.pos_embed3[0, 0].any()
    torch.testing.assert_close(model.pos_embed3[0, 1:], sincos_pos_embed_3d(48, (4, 4, 2)))
    assert not model.pos_embed3.requires_grad and not model.decoder_pos_embed3.requires_grad


@pytest.mark.parametrize("strategy", ["random", "entropy"])
@pytest.mark.parametrize(("shape", "tokens"), [((3, 3, 64, 64), 16), ((3, 1, 64, 64, 32), 32)])
def test_masking_counts_per_dimensionality(strategy: str, shape: tuple[int, ...], tokens: int) -> None:
    model = _tiny(mask_strategy=strategy)
    out = model(_smooth(shape, 1), mask_ratio=0.75)
    keep = tokens // 4
    assert out["mask"].shape == (3, tokens)
    assert torch.equal(out["mask"].sum(1), torch.full((3,), float(tokens - keep)))
    latent, *_ = model.forward_encoder(_smooth(shape, 1), 0.5)
    assert latent.shape[1] == 1 + tokens // 2


@pytest.mark.parametrize(
    ("shape", "vals", "grad_vals"), [((2, 3, 64, 64), 256 * 3, 256), ((2, 1, 64, 64, 32), 4096, 4096)]
)
def test_both_decoders_predict_per_dimensionality(shape: tuple[int, ...], vals: int, grad_vals: int) -> None:
    model = _tiny()
    out = model(_smooth(shape, 2))
    n = math.prod(s // 16 for s in shape[2:])
    assert out["pred"].shape == (2, n, vals)
    assert out["pred_gradient"].shape == (2, n, grad_vals)
    assert set(out["logs"]) == {"loss_intensity", "loss_edge", "loss_visible"}
    assert model.reconstruct(_smooth(shape, 2), out["pred"]).shape == shape


def test_loss_counts_only_removed_patches_and_weights_the_terms() -> None:
    model = _tiny(mask_ratio=0.5)
    imgs = _smooth((2, 3, 64, 64), 3)
    g = torch.Generator().manual_seed(0)
    pred, pred_g, mask = model.forward_masked(imgs, 0.5, g)
    loss, parts = model.forward_loss(imgs, pred, pred_g, mask)
    visible = (mask == 0).unsqueeze(-1)
    junk = torch.randn_like(pred) * 100
    loss_v, parts_v = model.forward_loss(
        imgs, torch.where(visible, junk, pred), torch.where(visible, 7.0, pred_g), mask
    )
    torch.testing.assert_close(loss_v, loss)
    torch.testing.assert_close(parts_v["loss_edge"], parts["loss_edge"])
    loss_m, _ = model.forward_loss(imgs, torch.where(visible, pred, junk), pred_g, mask)
    assert loss_m > loss + 1.0
    # lambda1 * L_intensity + lambda2 * L_edge, both terms masked means (checked against a direct computation)
    target, target_g = model.targets(imgs)
    per_tok = (pred - target).pow(2).mean(-1)
    torch.testing.assert_close(parts["loss_intensity"], (per_tok * mask).sum() / mask.sum())
    weighted = _tiny(mask_ratio=0.5)
    weighted.load_state_dict(model.state_dict())
    weighted.loss_weights = (2.0, 0.5)
    loss_w, parts_w = weighted.forward_loss(imgs, pred, pred_g, mask)
    torch.testing.assert_close(loss_w, 2.0 * parts_w["loss_intensity"] + 0.5 * parts_w["loss_edge"])
    torch.testing.assert_close(loss, parts["loss_intensity"] + parts["loss_edge"])


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 1, 64, 64, 32)])
def test_overfitting_one_tiny_batch_halves_the_loss(shape: tuple[int, ...]) -> None:
    model = _tiny()
    batch = {"image": _smooth(shape, 4)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        out = model(batch, generator=torch.Generator().manual_seed(0))  # the same mask every step
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


# ============================================================================= entropy masking (Uni4Eye++)
def test_patch_entropy_hand_computed() -> None:
    img = torch.zeros(1, 1, 16, 48)
    img[0, 0, :, :16] = torch.arange(256.0).reshape(16, 16)  # 256 values, one per bin: 8 bits
    img[0, 0, :8, 16:32] = 255.0  # two values, half each: 1 bit
    ent = patch_entropy(img, (16, 16))
    torch.testing.assert_close(ent, torch.tensor([[8.0, 1.0, 0.0]]))
    torch.testing.assert_close(entropy_weights(ent), torch.tensor([[1.0, 0.125, 0.0]]))
    torch.testing.assert_close(entropy_weights(torch.ones(2, 5)), torch.ones(2, 5))  # equal: random masking


def test_entropy_masking_masks_textured_patches_more_often() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(1, 3, 128, 128)
    img[..., :64] = torch.rand(1, 3, 128, 64, generator=g)  # left half textured, right half flat
    textured = torch.zeros(8, 8, dtype=torch.bool)
    textured[:, :4] = True
    textured = textured.flatten()
    entropy_model, random_model = _tiny(mask_strategy="entropy"), _tiny(mask_strategy="random")
    masked_e = torch.zeros(64)
    masked_r = torch.zeros(64)
    for _ in range(50):
        masked_e += entropy_model.masking(img, 64, 0.375, g)[1][0]
        masked_r += random_model.masking(img, 64, 0.375, g)[1][0]
    rate_e = masked_e / 50
    rate_r = masked_r / 50
    assert rate_e[textured].mean() > 0.7 and rate_e[~textured].mean() < 0.05
    assert abs(rate_r[textured].mean() - rate_r[~textured].mean()) < 0.15  # random: no preference
    ids_keep, mask, _ = guided_masking(torch.ones(3, 10), 0.5, torch.Generator().manual_seed(1))
    assert ids_keep.shape == (3, 5) and torch.equal(mask.sum(1), torch.full((3,), 5.0))


# ============================================================================= schedule
def test_interleave_schedule_follows_the_data_and_is_deterministic() -> None:
    s = interleave_schedule(30, 10, seed=3)
    assert len(s) == 40 and s.count(2) == 30 and s.count(3) == 10
    assert s == interleave_schedule(30, 10, seed=3)
    assert s != interleave_schedule(30, 10, seed=4)
    for t in range(1, 41):  # stratified: every prefix holds each kind in (nearly) its share
        assert abs(s[:t].count(2) - 0.75 * t) <= 2
    r = interleave_schedule(30, 10, ratio=0.5, seed=0)
    assert r.count(2) == 20 and r.count(3) == 20
    assert interleave_schedule(30, 10, ratio=0.0, seed=0).count(3) == 39  # both kinds kept
    assert interleave_schedule(5, 0, seed=0) == [2] * 5
    with pytest.raises(ValueError, match="without data"):
        interleave_schedule(5, 0, ratio=0.5, seed=0)
    with pytest.raises(ValueError, match="not both 0"):
        interleave_schedule(0, 0, seed=0)


# ============================================================================= presets
def test_uni4eye_presets() -> None:
    assert {"uni4eye-vit-l", "uni4eye-vit-b", "uni4eye-tiny"} <= set(list_presets("uni4eye"))
    with torch.device("meta"):  # shapes only
        big = build_model(get_preset("uni4eye", "uni4eye-vit-l"))
    assert isinstance(big, Uni4Eye)
    assert big.encoder.embed_dim == 1024 and len(big.encoder.blocks) == 24 and big.encoder.num_heads == 16
    for dec in (big.decoder_intensity, big.decoder_gradient):
        assert len(dec.blocks) == 8 and dec.embed.out_features == 512
    assert big.decoder_intensity.pred2.out_features == 16 * 16 * 3 and big.decoder_gradient.pred2.out_features == 256
    assert big.decoder_intensity.pred3.out_features == 16**3 and big.decoder_gradient.pred3.out_features == 16**3
    assert big.grid_3d == (14, 14, 7) and big.pos_embed3.shape == (1, 1373, 1024)
    assert big.mask_ratio == 0.75 and big.mask_strategy == "random" and big.loss_weights == (1.0, 1.0)
    p = get_preset("uni4eye", "uni4eye-vit-b")
    assert p.recipe is not None and p.recipe.lr(64) == pytest.approx(2.5e-4)
    assert p.sidecar_metadata(3)["modality"] == "OCT" and p.sidecar_metadata(2)["modality"] == "fundus"


# ============================================================================= export
def test_export_gives_two_backbones_with_the_same_blocks(tmp_path: Path) -> None:
    model = _tiny()
    preset = get_preset("uni4eye", "uni4eye-tiny")
    p2, p3 = export_encoders(
        model,
        tmp_path,
        metadata={"preset": preset.name},
        metadata_2d=preset.sidecar_metadata(2),
        metadata_3d=preset.sidecar_metadata(3),
    )
    assert (p2.name, p3.name) == ("encoder_2d.safetensors", "encoder_3d.safetensors")
    vit2, side2 = load_backbone(p2)
    vit3, side3 = load_backbone(p3)
    assert vit2.spatial_dims == 2 and vit3.spatial_dims == 3
    assert vit2.patch_embed.proj.in_channels == 3 and vit3.patch_embed.proj.in_channels == 1
    sd2, sd3 = vit2.state_dict(), vit3.state_dict()
    shared = [k for k in sd2 if not k.startswith(("patch_embed.", "pos_embed"))]
    assert any(k.startswith("blocks.") for k in shared) and "cls_token" in shared
    for k in shared:
        torch.testing.assert_close(sd2[k], sd3[k])
        torch.testing.assert_close(sd2[k], model.encoder.state_dict()[k])
    torch.testing.assert_close(sd3["patch_embed.proj.weight"], model.patch_embed3.proj.weight)
    assert side2["modality"] == "fundus" and side3["modality"] == "OCT" and side3["input_size"] == [64, 64, 32]
    assert side2["shares_blocks_with"] == "encoder_3d.safetensors" and side2["method"] == "uni4eye"
    assert json.loads((tmp_path / "encoder_3d.json").read_text())["intensity"] == {"kind": "zscore_nonzero"}
    # the 3D backbone encodes a volume exactly as the model's own (unmasked) 3D path
    vol = _smooth((1, 1, 64, 64, 32), 5)
    with torch.no_grad():
        tokens, _ = model.embed(vol)
        ours, _ = model.encoder.forward_intermediates(tokens, indices=1)
        torch.testing.assert_close(vit3.forward_features(vol), ours)


# ============================================================================= successor checkpoints
def _blocks(prefix: str, d: int, n: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(n):
        p = f"{prefix}{i}."
        for name, shape in (
            ("norm1.weight", (d,)),
            ("norm1.bias", (d,)),
            ("attn.qkv.weight", (3 * d, d)),
            ("attn.qkv.bias", (3 * d,)),
            ("attn.proj.weight", (d, d)),
            ("attn.proj.bias", (d,)),
            ("norm2.weight", (d,)),
            ("norm2.bias", (d,)),
            ("mlp.fc1.weight", (4 * d, d)),
            ("mlp.fc1.bias", (4 * d,)),
            ("mlp.fc2.weight", (d, 4 * d)),
            ("mlp.fc2.bias", (d,)),
        ):
            out[p + name] = torch.randn(shape)
    return out


def successor_checkpoint(*, plus: bool = False, zero_3d: bool = True) -> dict:
    """Davidczy/Uni4Eye_pp dual-decoder layout (``plus``: the Uni4Eye++ single-decoder model) at tiny sizes:
    D 48, 2 blocks, decoder 32 x 1 block, 2D 64^2 x 3 (16 tokens), 3D 64x64x32 (32 tokens), in_chans 3."""
    d, dd, n2, n3 = 48, 32, 16, 32
    sd = {
        "cls_token": torch.randn(1, 1, d),
        "patch_embed.proj2.weight": torch.randn(d, 3, 16, 16),
        "patch_embed.proj2.bias": torch.randn(d),
        "patch_embed.proj3.weight": torch.randn(d, 3, 16, 16, 16),
        "patch_embed.proj3.bias": torch.randn(d),
        "pos_embed2": torch.randn(1, 1 + n2, d),
        "pos_embed3": torch.zeros(1, 1 + n3, d) if zero_3d else torch.randn(1, 1 + n3, d),
        "norm.weight": torch.randn(d),
        "norm.bias": torch.randn(d),
        "decoder_embed.weight": torch.randn(dd, d),
        "decoder_embed.bias": torch.randn(dd),
        "mask_token": torch.randn(1, 1, dd),
        "decoder_pos_embed2": torch.randn(1, 1 + n2, dd),
        "decoder_pos_embed3": torch.zeros(1, 1 + n3, dd),
        "decoder_norm.weight": torch.randn(dd),
        "decoder_norm.bias": torch.randn(dd),
        "decoder_pred2.weight": torch.randn(16 * 16 * 3, dd),
        "decoder_pred2.bias": torch.randn(16 * 16 * 3),
    }
    sd.update(_blocks("blocks.", d, 2))
    sd.update(_blocks("decoder_blocks.", dd, 1))
    if plus:
        sd["decoder_pred3.weight"] = torch.randn(16 * 16 * 3, dd)  # Uni4Eye++: 2D-shaped
        sd["decoder_pred3.bias"] = torch.randn(16 * 16 * 3)
        sd["mlp.weight"], sd["mlp.bias"] = torch.randn(2, 50 * 48), torch.randn(2)
        sd["controller.weight"], sd["controller.bias"] = torch.randn(60, 1 + n2 + 7, 1), torch.randn(60)
    else:
        sd["decoder_pred3.weight"], sd["decoder_pred3.bias"] = torch.randn(16**3, dd), torch.randn(16**3)
        sd["decoder_embed1.weight"], sd["decoder_embed1.bias"] = torch.randn(dd, d), torch.randn(dd)
        sd["mask_token1"] = torch.randn(1, 1, dd)
        sd["decoder_pos_embed21"] = torch.zeros(1, 1 + n2, dd)
        sd["decoder_pos_embed31"] = torch.zeros(1, 1 + n3, dd)
        sd["decoder_pred21.weight"], sd["decoder_pred21.bias"] = torch.randn(256, dd), torch.randn(256)
        sd["decoder_pred31.weight"], sd["decoder_pred31.bias"] = torch.randn(16**3, dd), torch.randn(16**3)
        sd.update(_blocks("decoder_blocks1.", dd, 1))
    return {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 99, "scaler": {"scale": 1024.0}}


def test_load_successor_dual_decoder_checkpoint(tmp_path: Path) -> None:
    ckpt = successor_checkpoint()
    path = tmp_path / "uni4eye.pth"
    torch.save(ckpt, path)
    model = _tiny()
    ours_pos3 = model.pos_embed3.detach().clone()
    report = load_uni4eye_checkpoint(model, path)
    sd = ckpt["model"]
    assert report.missing == [] and report.unexpected == []
    assert report.dropped == ["decoder_pos_embed21", "decoder_pos_embed31"]
    adapted = dict(report.adapted)
    assert set(adapted) == {
        "patch_embed3.proj.weight",
        "pos_embed3",
        "decoder_pos_embed3",
        "decoder_gradient.norm.weight",
        "decoder_gradient.norm.bias",
    }
    torch.testing.assert_close(model.encoder.patch_embed.proj.weight, sd["patch_embed.proj2.weight"])
    torch.testing.assert_close(model.encoder.pos_embed, sd["pos_embed2"])
    torch.testing.assert_close(model.encoder.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    torch.testing.assert_close(model.patch_embed3.proj.weight, sd["patch_embed.proj3.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.pos_embed3, ours_pos3)  # the file's table is all zero: ours kept
    torch.testing.assert_close(
        model.decoder_gradient.blocks[0].attn.qkv.weight, sd["decoder_blocks1.0.attn.qkv.weight"]
    )
    torch.testing.assert_close(model.decoder_gradient.mask_token, sd["mask_token1"])
    torch.testing.assert_close(model.decoder_gradient.pred2.weight, sd["decoder_pred21.weight"])
    torch.testing.assert_close(model.decoder_intensity.pred3.weight, sd["decoder_pred3.weight"])
    torch.testing.assert_close(model.decoder_gradient.norm.weight, sd["decoder_norm.weight"])
    torch.testing.assert_close(model.decoder_intensity.norm.weight, sd["decoder_norm.weight"])
    # every model tensor came from the file or is a reported kept table
    assert model(_smooth((1, 1, 64, 64, 32), 0))["loss"].isfinite()


def test_load_uni4eye_plus_checkpoint_reports_what_it_cannot_use() -> None:
    ckpt = successor_checkpoint(plus=True)
    model = _tiny()
    report = load_uni4eye_checkpoint(model, ckpt)
    assert report.dropped == sorted(
        ["controller.bias", "controller.weight", "decoder_pred3.bias", "decoder_pred3.weight", "mlp.bias", "mlp.weight"]
    )
    assert all(k.startswith(("decoder_gradient.", "decoder_intensity.pred3.")) for k in report.missing)
    assert "decoder_intensity.pred3.weight" in report.missing and "decoder_gradient.embed.weight" in report.missing


def test_uni4eye_import_errors_name_the_key() -> None:
    ckpt = successor_checkpoint()
    ckpt["model"]["decoder_embed1.weight"] = torch.randn(32, 40)
    with pytest.raises(WeightsError, match=r"decoder_gradient\.embed\.weight.*\(32, 40\)"):
        load_uni4eye_checkpoint(_tiny(), ckpt)
    with pytest.raises(WeightsError, match="not a Uni4Eye checkpoint"):
        load_uni4eye_checkpoint(_tiny(), {"blocks.0.norm1.weight": torch.ones(48)})
