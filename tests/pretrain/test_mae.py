"""MAE core: patchify order, masking, loss on masked patches only, encoder on visible tokens."""

from __future__ import annotations

import math
import re

import pytest
import torch

from medvit.pretrain.hi_end_mae import HiEndMAE
from medvit.pretrain.mae import (
    MAE,
    denormalize_patches,
    normalize_patches,
    num_visible,
    patchify,
    random_masking,
    unpatchify,
)
from medvit.pretrain.presets import build_model, get_preset, list_presets
from medvit.shared.backbone.layers import PatchEmbed
from medvit.shared.backbone.registry import create_backbone
from medvit.shared.errors import ConfigError

SHAPES = [
    # (batch, channels, spatial, patch)
    (2, 1, (8, 12), (4, 3)),
    (1, 3, (16, 16), (8, 8)),
    (2, 1, (8, 12, 4), (4, 4, 2)),
    (1, 2, (6, 6, 6), (3, 3, 3)),
]


@pytest.mark.parametrize(("b", "c", "spatial", "patch"), SHAPES)
def test_patchify_round_trip(b: int, c: int, spatial: tuple[int, ...], patch: tuple[int, ...]) -> None:
    x = torch.randn(b, c, *spatial)
    tokens = patchify(x, patch)
    grid = tuple(s // p for s, p in zip(spatial, patch, strict=True))
    assert tokens.shape == (b, math.prod(grid), math.prod(patch) * c)
    assert torch.equal(unpatchify(tokens, patch, grid, c), x)


@pytest.mark.parametrize(("b", "c", "spatial", "patch"), SHAPES)
def test_patchify_matches_conv_patch_embedding(
    b: int, c: int, spatial: tuple[int, ...], patch: tuple[int, ...]
) -> None:
    """A conv whose output channel v picks pixel v of the (p1, p2[, p3], c) order reproduces patchify."""
    n_val = math.prod(patch) * c
    embed = PatchEmbed(spatial, patch, c, n_val, bias=False)
    w = torch.zeros(n_val, c, *patch)
    for v, idx in enumerate(torch.cartesian_prod(*[torch.arange(p) for p in patch], torch.arange(c))):
        *offs, ch = idx.reshape(-1).tolist()
        w[(v, ch, *offs)] = 1.0
    embed.proj.weight.data.copy_(w)
    x = torch.randn(b, c, *spatial)
    tokens, _ = embed(x)
    torch.testing.assert_close(tokens, patchify(x, patch))


def test_patchify_explicit_order_2d() -> None:
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)  # C=2, H=4, W=6, patch 2x2 -> grid 2x3
    tokens = patchify(x, (2, 2))
    # token 1 = grid row 0, column 1: pixels (h 0..1, w 2..3); values ordered (p1, p2, c)
    expected = [x[0, ch, h, w].item() for h in (0, 1) for w in (2, 3) for ch in (0, 1)]
    assert tokens[0, 1].tolist() == expected


def test_patchify_rejects_non_divisible() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 1, 10, 12), (4, 4))


@pytest.mark.parametrize(("length", "ratio"), [(64, 0.75), (27, 0.75), (10, 0.9), (512, 0.75), (49, 0.0), (7, 0.5)])
def test_random_masking_counts_and_consistency(length: int, ratio: float) -> None:
    gen = torch.Generator().manual_seed(3)
    ids_keep, mask, ids_restore = random_masking(4, length, ratio, "cpu", gen)
    keep = math.floor(length * (1 - ratio) + 1e-9)
    assert num_visible(length, ratio) == keep
    assert ids_keep.shape == (4, keep)
    assert mask.shape == ids_restore.shape == (4, length)
    assert torch.all(mask.sum(1) == length - keep)
    # mask is 0 exactly at the kept indices
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)
    # ids_restore is the inverse of the shuffle: position of each token in the shuffled order
    assert torch.equal(mask, (ids_restore >= keep).float())
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :keep], ids_keep)
    assert torch.equal(torch.sort(ids_restore, 1).values, torch.arange(length).expand(4, -1))


def test_random_masking_reproducible_and_per_sample() -> None:
    a = random_masking(3, 100, 0.75, generator=torch.Generator().manual_seed(0))[0]
    b = random_masking(3, 100, 0.75, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("ratio", [1.0, -0.1, 0.99])
def test_masking_rejects_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        num_visible(10, ratio)


@pytest.mark.parametrize("unbiased", [True, False])
def test_normalize_patches_formula_and_inverse(unbiased: bool) -> None:
    t = torch.randn(2, 5, 27) * 3 + 1
    n = normalize_patches(t, unbiased=unbiased)
    if unbiased:
        ref = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True, unbiased=True) + 1e-6) ** 0.5
    else:
        ref = torch.nn.functional.layer_norm(t, (27,), eps=1e-6)  # Hi-End-MAE's patch_norm
    torch.testing.assert_close(n, ref)
    torch.testing.assert_close(denormalize_patches(n, t, unbiased=unbiased), t)


def _tiny_mae_3d(norm_pix: bool = True) -> MAE:
    enc = create_backbone("test_vit_3d")  # 32^3, patch 8 -> 64 tokens, cls token
    return MAE(enc, decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=norm_pix)


def _tiny_mae_2d() -> MAE:
    enc = create_backbone("test_vit_2d", in_chans=1)
    return MAE(enc, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True)


@pytest.mark.parametrize("make", [_tiny_mae_3d, _tiny_mae_2d, lambda: build_model(get_preset("hi-end-mae", "tiny"))])
def test_loss_ignores_visible_patches(make) -> None:
    torch.manual_seed(0)
    model = make()
    x = torch.rand(2, model.in_chans, *model.encoder.patch_embed.img_size)
    out = model(x, generator=torch.Generator().manual_seed(1))
    pred, mask = out["pred"].detach(), out["mask"]
    assert torch.allclose(model.forward_loss(x, pred, mask), out["loss"])
    visible = (mask == 0).unsqueeze(-1)
    changed_visible = torch.where(visible, pred + 100.0, pred)
    torch.testing.assert_close(model.forward_loss(x, changed_visible, mask), out["loss"].detach())
    changed_masked = torch.where(~visible, pred + 1.0, pred)
    assert model.forward_loss(x, changed_masked, mask) > out["loss"] + 0.5
    # the loss is the mean over masked patches of the per-patch MSE against the normalised targets
    target = model.targets(x)
    per_patch = (pred - target).pow(2).mean(-1)
    torch.testing.assert_close(out["loss"].detach(), per_patch[mask.bool()].mean())


@pytest.mark.parametrize("make", [_tiny_mae_3d, _tiny_mae_2d])
def test_mae_encoder_sees_only_visible_tokens(make) -> None:
    model = make()
    seen: list[tuple[int, ...]] = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    x = torch.rand(3, model.in_chans, *model.encoder.patch_embed.img_size)
    out = model(x, mask_ratio=0.75)
    length = model.encoder.patch_embed.num_patches
    assert seen == [(3, 1 + length // 4, model.encoder.embed_dim)]
    assert out["pred"].shape == (3, length, math.prod(model.patch_size) * model.in_chans)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert set(out["logs"]) == {"loss_visible"}
    out["loss"].backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_mae_state_dict_uses_mae_names() -> None:
    model = _tiny_mae_3d()
    sd = model.state_dict()
    own = {k.split(".")[0] for k in sd if not k.startswith("encoder.")}
    assert own == {"decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks", "decoder_norm", "decoder_pred"}
    assert sd["decoder_pos_embed"].shape == (1, 1 + 64, 24)  # MAE layout: a zero cls slot
    assert torch.all(sd["decoder_pos_embed"][0, 0] == 0)
    assert not model.decoder_pos_embed.requires_grad
    assert sd["decoder_pred.weight"].shape == (8**3, 24)


def test_mae_batch_dict_and_reconstruct_inverse() -> None:
    model = _tiny_mae_3d()
    x = torch.rand(2, 1, 32, 32, 32)
    out = model({"image": x})
    assert out["pred"].shape == (2, 64, 512)
    # predicting the normalised target exactly reconstructs the input
    torch.testing.assert_close(model.reconstruct(x, model.targets(x)), x, atol=1e-4, rtol=1e-4)


def test_mae_other_input_size_regenerates_decoder_pos() -> None:
    model = _tiny_mae_3d()
    out = model(torch.rand(1, 1, 48, 32, 40))
    assert out["pred"].shape == (1, 6 * 4 * 5, 512)


@pytest.mark.parametrize("full_name", list_presets())
def test_presets_resolve(full_name: str) -> None:
    method, name = full_name.split(":")
    preset = get_preset(method, name)
    assert preset.crop_size and preset.backbone
    if name == "tiny":
        model = build_model(preset)
        assert isinstance(model, HiEndMAE if method == "hi-end-mae" else MAE)
        assert model.encoder.patch_embed.img_size == preset.crop_size


@pytest.mark.parametrize("name", ["tiny_2d", "small_2d", "base_2d"])
def test_2d_presets_pretrain_with_mae_fixed_sincos_position_table(name: str) -> None:
    """MAE (models_mae.py) and the thorax recipe freeze a 2D sin-cos table with a zero cls slot; learned on request."""
    from medvit.shared.backbone.pos_embed import sincos_pos_embed_2d

    preset = get_preset("mae", name)
    enc = build_model(preset, depth=1).encoder  # depth 1: same position table, cheap
    assert enc.pos_embed_type == "sincos" and not enc.pos_embed.requires_grad
    grid = enc.patch_embed.grid_size
    table = enc.pos_embed.detach()[0]
    assert table.shape == (1 + grid[0] * grid[1], enc.embed_dim)
    assert not table[0].any()  # the cls slot is zero, as in MAE
    torch.testing.assert_close(table[1:], sincos_pos_embed_2d(enc.embed_dim, grid))
    assert "pos_embed" not in {n for n, p in enc.named_parameters() if p.requires_grad}
    learned = build_model(preset, depth=1, pos_embed="learn").encoder
    assert learned.pos_embed_type == "learn" and learned.pos_embed.requires_grad


def test_unknown_preset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        get_preset("hi-end-mae", "huge")
    with pytest.raises(ConfigError, match="method"):
        get_preset("simclr", "tiny")


_BLOCK = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
_CROSS_BLOCK = ["norm0", "self_attn.qkv", "self_attn.proj", "norm1", "cross_attn.q", "cross_attn.kv"]
_CROSS_BLOCK += ["cross_attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]


def _wb(prefix: str, names: list[str]) -> list[str]:
    return [f"{prefix}{n}.{p}" for n in names for p in ("weight", "bias")]


# Checkpoints (ours and the official Hi-End-MAE ones) and optimizer states depend on these names and this order.
GOLDEN_DECODER_KEYS = {
    "mae": ["mask_token", "decoder_pos_embed", *_wb("", ["decoder_embed"]), *_wb("decoder_blocks.N.", _BLOCK)]
    + _wb("", ["decoder_norm", "decoder_pred"]),
    "hi-end-mae": ["mask_token", "decoder_pos_embed", *_wb("", ["encoder_to_decoder.N"])]
    + _wb("decoder.blocks.N.", _BLOCK)
    + _wb("decoder.cross_attention_blocks.N.", _CROSS_BLOCK)
    + _wb("decoder.", ["norm", "head"]),
}


@pytest.mark.parametrize("method", ["mae", "hi-end-mae"])
def test_golden_state_dict_keys_and_parameter_order(method: str) -> None:
    model = build_model(get_preset(method, "tiny"))
    keys = [k for k in model.state_dict() if not k.startswith("encoder.")]
    assert list(dict.fromkeys(re.sub(r"\.\d+(\.|$)", r".N\1", k) for k in keys)) == GOLDEN_DECODER_KEYS[method]
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["mask_token", "decoder_pos_embed"]
    assert names[2].startswith("encoder.")  # then the encoder, then the decoder, as registered
    assert model.decoder_pos_embed.requires_grad is False
