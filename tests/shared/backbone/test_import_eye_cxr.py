"""Importers for the chest X-ray and eye checkpoints: thorax Medical MAE (with decoder, ``args`` Namespace), RETFound
(pretrained and fine-tuned), Uni4Eye / Uni4Eye++ (unified 2D/3D patch embedding), on synthetic state dicts built
from the documented key names at tiny sizes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from medvit.pretrain.mae import MAE
from medvit.shared.backbone import VisionTransformer
from medvit.shared.backbone.weights import (
    convert_checkpoint,
    detect_format,
    inspect_checkpoint,
    is_uni4eye_plus,
    load_backbone,
    load_mae_full,
    load_pretrained,
    read_checkpoint,
)
from medvit.shared.errors import WeightsError

D, DEPTH, DEC = 48, 2, 32


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


def mae_model_keys(*, img: int = 32, patch: int = 8, in_chans: int = 3, decoder: bool = True) -> dict:
    """MAE / Medical MAE / RETFound ``'model'`` (timm encoder keys; decoder keys of ``models_mae.py``)."""
    n = (img // patch) ** 2
    sd = {
        "cls_token": torch.randn(1, 1, D),
        "pos_embed": torch.cat([torch.zeros(1, 1, D), torch.randn(1, n, D)], dim=1),
        "patch_embed.proj.weight": torch.randn(D, in_chans, patch, patch),
        "patch_embed.proj.bias": torch.randn(D),
        "norm.weight": torch.randn(D),
        "norm.bias": torch.randn(D),
        **_blocks("blocks.", D, DEPTH),
    }
    if decoder:
        sd.update(
            {
                "mask_token": torch.randn(1, 1, DEC),
                "decoder_embed.weight": torch.randn(DEC, D),
                "decoder_embed.bias": torch.randn(DEC),
                "decoder_pos_embed": torch.cat([torch.zeros(1, 1, DEC), torch.randn(1, n, DEC)], dim=1),
                "decoder_norm.weight": torch.randn(DEC),
                "decoder_norm.bias": torch.randn(DEC),
                "decoder_pred.weight": torch.randn(patch * patch * in_chans, DEC),
                "decoder_pred.bias": torch.randn(patch * patch * in_chans),
                **_blocks("decoder_blocks.", DEC, 2),
            }
        )
    return sd


def medical_mae_file(path: Path, **kw) -> dict[str, torch.Tensor]:
    """lambert-x/medical_mae ``misc.save_model``: model, a real AdamW state, epoch, scaler, argparse ``args``."""
    model = mae_model_keys(**kw)
    params = [torch.nn.Parameter(v.clone()) for v in list(model.values())[:3]]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95))
    sum(p.sum() for p in params).backward()
    opt.step()
    args = argparse.Namespace(
        model="mae_vit_small_patch16_dec512d2b",
        mask_ratio=0.9,
        norm_pix_loss=False,
        random_resize_range=[0.5, 1.0],
        datasets_names=["chexpert", "chestxray_nih"],
        output_dir="./out",
        blr=1.5e-4,
    )
    scaler = {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 0,
    }
    torch.save({"model": model, "optimizer": opt.state_dict(), "epoch": 799, "scaler": scaler, "args": args}, path)
    return model


def _vit2d(**kw) -> VisionTransformer:
    args = dict(img_size=32, patch_size=8, embed_dim=D, depth=DEPTH, num_heads=2, pos_embed="sincos")
    return VisionTransformer(**{**args, **kw})


def _mae(in_chans: int = 3, img: int = 32) -> MAE:
    torch.manual_seed(0)
    enc = _vit2d(in_chans=in_chans, img_size=img)
    return MAE(enc, decoder_embed_dim=DEC, decoder_depth=2, decoder_num_heads=2, mask_ratio=0.9)


# ============================================================================= Medical MAE (thorax)
def test_medical_mae_file_reads_detects_and_loads_the_encoder(tmp_path: Path) -> None:
    path = tmp_path / "vit-s_CXR_0.3M_mae.pth"
    model_sd = medical_mae_file(path)
    sd, info = read_checkpoint(path)  # weights_only, the Namespace allowed
    assert info["wrapper"] == "model" and info["config"]["mask_ratio"] == 0.9
    assert detect_format(sd, info) == "mae"
    vit = _vit2d()
    report = load_pretrained(vit, path)
    decoder = {k for k in model_sd if k.startswith("decoder_") or k == "mask_token"}
    assert set(report.dropped) == decoder and report.missing == [] and report.unexpected == []
    loaded = set(vit.state_dict())
    assert set(model_sd) == loaded | decoder  # every key loaded or listed as dropped
    torch.testing.assert_close(vit.blocks[1].attn.qkv.weight, model_sd["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(vit.pos_embed, model_sd["pos_embed"])  # copied, not regenerated


def test_medical_mae_converts_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "vit-s.pth"
    model_sd = medical_mae_file(path)
    out = tmp_path / "vit-s.safetensors"
    report, kwargs = convert_checkpoint(path, out)
    assert report.source_format == "mae" and len(report.dropped) == 8 + 2 * 12
    vit, side = load_backbone(out)
    assert kwargs["embed_dim"] == D and kwargs["img_size"] == [32, 32] and side["converted_from"] == "vit-s.pth"
    for k, v in vit.state_dict().items():
        torch.testing.assert_close(v, model_sd[k])


def test_full_mae_with_decoder_loads_into_our_mae(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    model_sd = medical_mae_file(path)
    mae = _mae()
    report = load_mae_full(mae, path)
    assert report.missing == [] and report.unexpected == [] and report.dropped == []
    ours = mae.state_dict()
    for k, v in model_sd.items():
        key = k if k.startswith("decoder_") or k == "mask_token" else f"encoder.{k}"
        torch.testing.assert_close(ours[key], v)
    assert set(ours) == {k if k.startswith(("decoder_", "mask_token")) else f"encoder.{k}" for k in model_sd}
    # round trip: our model in the reference layout loads back bit for bit
    layout = {k.removeprefix("encoder."): v for k, v in ours.items()}
    again = _mae()
    load_mae_full(again, {"model": layout})
    for k, v in again.state_dict().items():
        assert torch.equal(v, ours[k]), k


def test_full_mae_adapts_channels_and_grid() -> None:
    sd = mae_model_keys(img=32)
    mae = _mae(in_chans=1, img=48)  # grey input, 6x6 grid instead of 4x4
    report = load_mae_full(mae, sd)
    adapted = dict(report.adapted)
    assert "encoder.patch_embed.proj.weight" in adapted and "decoder_pred.weight" in adapted
    assert {k for k, *_ in report.resized} == {"encoder.pos_embed", "decoder_pos_embed"}
    rows = sd["decoder_pred.weight"].reshape(64, 3, DEC).mean(1)  # (p, q, c) rows: mean over R, G, B
    torch.testing.assert_close(mae.decoder_pred.weight, rows)
    assert mae.decoder_pos_embed.shape == (1, 1 + 36, DEC)


def test_full_mae_errors() -> None:
    with pytest.raises(WeightsError, match="no MAE decoder"):
        load_mae_full(_mae(), mae_model_keys(decoder=False))
    sd = mae_model_keys()
    sd["decoder_embed.weight"] = torch.randn(DEC, D + 1)
    with pytest.raises(WeightsError, match=r"decoder_embed\.weight.*\(32, 49\)"):
        load_mae_full(_mae(), sd)


# ============================================================================= RETFound
def test_retfound_pretrained_is_mae() -> None:
    sd = mae_model_keys()  # RETFound_MAE releases ViT-L/16 MAE checkpoints: the same key layout
    assert detect_format(sd, {"wrapper": "model"}) == "mae"
    report = load_pretrained(_vit2d(), sd)
    assert report.source_format == "mae" and report.missing == [] and len(report.dropped) == 8 + 2 * 12


def test_retfound_finetuned_converts_to_a_global_pool_backbone(tmp_path: Path) -> None:
    sd = mae_model_keys(decoder=False)
    sd.pop("norm.weight")
    sd.pop("norm.bias")
    sd.update({"fc_norm.weight": torch.randn(D), "fc_norm.bias": torch.randn(D)})
    sd.update({"head.weight": torch.randn(5, D), "head.bias": torch.randn(5)})
    path = tmp_path / "RETFound_finetuned.pth"
    torch.save({"model": sd, "epoch": 50}, path)
    out = tmp_path / "retfound.safetensors"
    report, kwargs = convert_checkpoint(path, out)
    assert kwargs["global_pool"] == "avg" and kwargs["fc_norm"] is True and kwargs["num_classes"] == 5
    assert report.missing == [] and report.dropped == []
    vit, _ = load_backbone(out)
    torch.testing.assert_close(vit.fc_norm.weight, sd["fc_norm.weight"])
    assert inspect_checkpoint(path)["architecture"]["global_pool"] == "avg"
    bare = _vit2d(global_pool="avg")  # a backbone without a classifier: the head is dropped and reported
    assert set(load_pretrained(bare, path).dropped) == {"head.weight", "head.bias"}
    with pytest.raises(WeightsError, match="norm"):
        load_pretrained(_vit2d(), path)  # a cls-pool backbone has `norm`, the file `fc_norm`


# ============================================================================= Uni4Eye / Uni4Eye++
def uni4eye_keys(*, plus: bool = False, zero_3d: bool = False) -> dict[str, torch.Tensor]:
    """Davidczy/Uni4Eye_pp layout at tiny sizes: 16 px patches, 2D 64^2 (16 tokens), 3D 64x64x32 (32 tokens),
    ``in_chans`` 3 for both embeddings; the dual decoder, or (``plus``) Uni4Eye++'s single decoder + dynamic head."""
    n2, n3 = 16, 32
    sd = {
        "cls_token": torch.randn(1, 1, D),
        "patch_embed.proj2.weight": torch.randn(D, 3, 16, 16),
        "patch_embed.proj2.bias": torch.randn(D),
        "patch_embed.proj3.weight": torch.randn(D, 3, 16, 16, 16),
        "patch_embed.proj3.bias": torch.randn(D),
        "pos_embed2": torch.cat([torch.zeros(1, 1, D), torch.randn(1, n2, D)], dim=1),
        "pos_embed3": torch.zeros(1, 1 + n3, D) if zero_3d else torch.randn(1, 1 + n3, D),
        "norm.weight": torch.randn(D),
        "norm.bias": torch.randn(D),
        **_blocks("blocks.", D, DEPTH),
        "decoder_embed.weight": torch.randn(DEC, D),
        "decoder_embed.bias": torch.randn(DEC),
        "mask_token": torch.randn(1, 1, DEC),
        "decoder_pos_embed2": torch.randn(1, 1 + n2, DEC),
        "decoder_pos_embed3": torch.zeros(1, 1 + n3, DEC),
        "decoder_norm.weight": torch.randn(DEC),
        "decoder_norm.bias": torch.randn(DEC),
        "decoder_pred2.weight": torch.randn(768, DEC),
        "decoder_pred2.bias": torch.randn(768),
        **_blocks("decoder_blocks.", DEC, 1),
    }
    if plus:
        sd.update({"decoder_pred3.weight": torch.randn(768, DEC), "decoder_pred3.bias": torch.randn(768)})
        sd.update({"mlp.weight": torch.randn(2, 64), "mlp.bias": torch.randn(2)})
        sd.update({"controller.weight": torch.randn(9, 24, 1), "controller.bias": torch.randn(9)})
    else:
        sd.update({"decoder_pred3.weight": torch.randn(4096, DEC), "decoder_pred3.bias": torch.randn(4096)})
        sd.update({"decoder_embed1.weight": torch.randn(DEC, D), "decoder_embed1.bias": torch.randn(DEC)})
        sd.update({"mask_token1": torch.randn(1, 1, DEC), "decoder_pos_embed21": torch.zeros(1, 1 + n2, DEC)})
        sd.update({"decoder_pos_embed31": torch.zeros(1, 1 + n3, DEC)})
        sd.update({"decoder_pred21.weight": torch.randn(256, DEC), "decoder_pred21.bias": torch.randn(256)})
        sd.update({"decoder_pred31.weight": torch.randn(4096, DEC), "decoder_pred31.bias": torch.randn(4096)})
        sd.update(_blocks("decoder_blocks1.", DEC, 1))
    return sd


def _uni_vit(nd: int, **kw) -> VisionTransformer:
    size, patch, chans = ((64, 64), (16, 16), 3) if nd == 2 else ((64, 64, 32), (16, 16, 16), 1)
    args = dict(img_size=size, patch_size=patch, in_chans=chans, embed_dim=D, depth=DEPTH, num_heads=2)
    return VisionTransformer(**{**args, "pos_embed": "sincos", **kw})


@pytest.mark.parametrize("plus", [False, True])
def test_uni4eye_detected_and_loaded_into_2d_and_3d_backbones(plus: bool) -> None:
    sd = uni4eye_keys(plus=plus)
    assert detect_format(sd, {"wrapper": "model"}) == "uni4eye" and is_uni4eye_plus(sd) is plus
    vit2, vit3 = _uni_vit(2), _uni_vit(3)
    r2 = load_pretrained(vit2, sd)
    r3 = load_pretrained(vit3, sd)
    for vit, report, nd in ((vit2, r2, 2), (vit3, r3, 3)):
        assert report.source_format == "uni4eye" and report.missing == [] and report.unexpected == []
        used = {"cls_token", f"pos_embed{nd}", "norm.weight", "norm.bias"}
        used |= {k for k in sd if k.startswith(("blocks.", f"patch_embed.proj{nd}."))}
        assert set(report.dropped) == set(sd) - used  # 0 unexplained keys
        torch.testing.assert_close(vit.pos_embed, sd[f"pos_embed{nd}"])
    torch.testing.assert_close(vit2.patch_embed.proj.weight, sd["patch_embed.proj2.weight"])
    torch.testing.assert_close(vit3.patch_embed.proj.weight, sd["patch_embed.proj3.weight"].sum(1, keepdim=True))
    assert dict(r3.adapted)["patch_embed.proj.weight"] == "in_chans 3 -> 1"
    for k, v in vit2.state_dict().items():  # one transformer, two embeddings
        if not k.startswith(("patch_embed.", "pos_embed")):
            assert torch.equal(v, vit3.state_dict()[k]), k


def test_uni4eye_zero_3d_table_keeps_the_models_own() -> None:
    sd = uni4eye_keys(zero_3d=True)
    vit3 = _uni_vit(3)
    table = vit3.pos_embed.detach().clone()
    report = load_pretrained(vit3, sd)
    assert "pos_embed3" in report.dropped and report.missing == []
    torch.testing.assert_close(vit3.pos_embed, table)  # the 3D sin-cos, not zeros
    assert vit3.pos_embed.abs().sum() > 0


def test_uni4eye_converts_to_2d_and_3d_files(tmp_path: Path) -> None:
    sd = uni4eye_keys()
    path = tmp_path / "Uni4Eye_vit.pth"
    torch.save({"model": sd, "epoch": 99, "args": argparse.Namespace(mask_ratio=0.75)}, path)
    _, kw2 = convert_checkpoint(path, tmp_path / "eye2d.safetensors")
    _, kw3 = convert_checkpoint(path, tmp_path / "eye3d.safetensors", arch_overrides={"patch_size": [16, 16, 16]})
    assert kw2["img_size"] == [64, 64] and kw2["pos_embed"] == "sincos" and kw2["in_chans"] == 3
    assert kw3["img_size"] == [64, 64, 32] and kw3["patch_size"] == [16, 16, 16]  # (S, S, S/2) grid found
    vit2, _ = load_backbone(tmp_path / "eye2d.safetensors")
    vit3, _ = load_backbone(tmp_path / "eye3d.safetensors")
    torch.testing.assert_close(vit3.patch_embed.proj.weight, sd["patch_embed.proj3.weight"])
    torch.testing.assert_close(vit3.blocks[0].mlp.fc1.weight, vit2.blocks[0].mlp.fc1.weight)
    assert inspect_checkpoint(path)["format"] == "uni4eye"


def test_uni4eye_with_zero_tables_converts_with_our_sincos(tmp_path: Path) -> None:
    from medvit.shared.backbone.pos_embed import sincos_pos_embed_3d

    path = tmp_path / "dual_decoder.pth"
    torch.save({"model": uni4eye_keys(zero_3d=True)}, path)
    report, kw = convert_checkpoint(path, tmp_path / "eye3d.safetensors", arch_overrides={"patch_size": [16] * 3})
    assert kw["img_size"] == [64, 64, 32] and "pos_embed3" in report.dropped  # the zeros still gave the grid
    vit3, _ = load_backbone(tmp_path / "eye3d.safetensors")
    torch.testing.assert_close(vit3.pos_embed[0, 1:], sincos_pos_embed_3d(D, (4, 4, 2)))


def test_uni4eye_shape_mismatch_names_the_key() -> None:
    sd = uni4eye_keys()
    sd["blocks.1.attn.proj.weight"] = torch.randn(D, D + 2)
    with pytest.raises(WeightsError, match=r"blocks\.1\.attn\.proj\.weight.*\(48, 50\)"):
        load_pretrained(_uni_vit(2), sd)
