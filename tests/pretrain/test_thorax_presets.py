"""Thorax Medical MAE presets (Xiao et al., WACV 2023): sizes, masking geometry and the recorded recipe."""

from __future__ import annotations

import json

import pytest
import torch

from medvit.pretrain.mae import MAE
from medvit.pretrain.presets import ImageAugment, build_model, get_preset, list_presets
from medvit.shared.errors import ConfigError


def _meta(name: str, **kw) -> MAE:
    with torch.device("meta"):  # shapes and counts only, nothing allocated
        return build_model(get_preset("mae", name), **kw)


def test_presets_resolve_under_the_mae_method() -> None:
    names = set(list_presets("mae"))
    assert {"cxr-vit-s", "cxr-vit-b", "cxr-tiny"} <= names
    # the older presets are still there with their own settings
    assert {"tiny", "small", "base", "tiny_2d", "small_2d", "base_2d"} <= names
    assert get_preset("mae", "tiny").crop_size == (48, 48, 48) and get_preset("mae", "small_2d").norm_pix_loss
    assert "mae:cxr-vit-s" in list_presets()
    with pytest.raises(ConfigError, match="cxr-vit-s"):
        get_preset("mae", "cxr-vit-x")


@pytest.mark.parametrize(
    ("name", "embed", "heads", "params_m", "dec_depth"),
    [("cxr-vit-s", 384, 6, 21.7, 2), ("cxr-vit-b", 768, 12, 85.8, 8)],
)
def test_encoder_and_decoder_sizes(name: str, embed: int, heads: int, params_m: float, dec_depth: int) -> None:
    model = _meta(name)
    enc = model.encoder
    assert (enc.embed_dim, len(enc.blocks), enc.num_heads, enc.patch_embed.patch_size) == (embed, 12, heads, (16, 16))
    n_enc = sum(p.numel() for p in enc.parameters())  # the fixed position table included, as timm counts it
    assert abs(n_enc / 1e6 - params_m) < 0.05
    assert len(model.decoder_blocks) == dec_depth and model.decoder_embed.out_features == 512
    assert model.decoder_blocks[0].attn.num_heads == 16
    assert model.decoder_pred.out_features == 16 * 16 * 3
    assert model.decoder_pos_embed.shape == (1, 197, 512) and not model.decoder_pos_embed.requires_grad
    assert enc.pos_embed_type == "sincos" and not enc.pos_embed.requires_grad
    assert model.mask_ratio == 0.9 and model.norm_pix_loss is False


def test_ratio_090_leaves_19_of_196_tokens_visible() -> None:
    torch.manual_seed(0)
    model = build_model(get_preset("mae", "cxr-vit-s"), depth=1)  # one block: the geometry is the same
    latent, mask, ids_restore = model.forward_encoder(torch.randn(2, 3, 224, 224), model.mask_ratio)
    assert latent.shape == (2, 1 + 19, 384)  # cls + 19 visible
    assert torch.equal(mask.sum(1), torch.full((2,), 177.0)) and ids_restore.shape == (2, 196)


def test_recipe_is_recorded() -> None:
    preset = get_preset("mae", "cxr-vit-s")
    r = preset.recipe
    assert r is not None and r.image is not None
    assert (r.blr, r.batch_size, r.epochs, r.warmup_epochs) == (1.5e-4, 2048, 800, 40)
    assert r.betas == (0.9, 0.95) and r.weight_decay == 0.05
    assert r.lr(2048) == pytest.approx(1.2e-3) and r.lr(256) == pytest.approx(1.5e-4)
    assert preset.lr == pytest.approx(1.2e-3) and preset.crop_size == (224, 224)
    assert r.image.augment == ImageAugment(crop_scale=(0.5, 1.0), interpolation="bicubic", hflip=0.5)
    assert r.image.in_chans == 3 and r.image.in_chans_options == (3, 1)
    assert (r.image.intensity.mean, r.image.intensity.std) == (0.5056, 0.252)
    assert get_preset("mae", "cxr-vit-b").recipe == r
    doc = json.loads(json.dumps(r.to_dict()))
    assert doc["image"]["augment"]["crop_scale"] == [0.5, 1.0]
    side = preset.sidecar_metadata()
    assert side["intensity"] == {"kind": "mean_std", "scale": [0.0, 1.0], "mean": [0.5056] * 3, "std": [0.252] * 3}
    assert side["modality"] == "CXR" and side["input_size"] == [224, 224] and side["in_chans"] == 3
    grey = preset.sidecar_metadata(in_chans=1)
    assert grey["intensity"]["mean"] == [0.5056] and "grayscale" not in grey


def test_one_channel_option_builds() -> None:
    model = _meta("cxr-vit-s", in_chans=1)
    assert model.encoder.patch_embed.proj.in_channels == 1 and model.decoder_pred.out_features == 256


def test_tiny_preset_trains_a_step_on_cpu() -> None:
    torch.manual_seed(0)
    preset = get_preset("mae", "cxr-tiny")
    model = build_model(preset)
    assert preset.recipe is not None and model.mask_ratio == 0.9 and preset.spatial_dims == 2
    out = model(torch.rand(2, 3, *preset.crop_size))
    assert out["mask"].shape == (2, 64) and torch.equal(out["mask"].sum(1), torch.full((2,), 58.0))  # 6 visible
    out["loss"].backward()
    assert out["loss"].isfinite() and model.decoder_pred.weight.grad is not None
