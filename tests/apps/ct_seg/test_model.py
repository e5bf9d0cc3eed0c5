"""UNETR decoder on the shared ViT: geometry, taps, and the foreign weight layouts it imports."""

from __future__ import annotations

import json

import monai.networks.nets as monai_nets
import pytest
import torch

from medvit.apps.ct_seg.model import UNETR, stage_factors, upstream_taps
from medvit.shared.backbone import create_backbone
from medvit.shared.backbone.weights import save_backbone
from medvit.shared.errors import WeightsError

TINY = {"embed_dim": 24, "depth": 4, "num_heads": 2}


def _tiny(patch: tuple[int, ...], **kwargs: object) -> UNETR:
    overrides = {**TINY, "patch_size": patch, "img_size": [2 * p for p in patch]}
    return UNETR.from_registry("test_vit_3d", 3, feature_size=4, backbone_overrides=overrides, **kwargs)


@pytest.mark.parametrize(
    ("patch", "factors"),
    [
        ((16, 16, 16), ((2, 2, 2),) * 4),
        ((12, 12, 12), ((2, 2, 2), (2, 2, 2), (3, 3, 3), (1, 1, 1))),
        ((8, 8, 8), ((2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1))),
        ((16, 16, 4), ((2, 2, 2), (2, 2, 2), (2, 2, 1), (2, 2, 1))),
    ],
)
def test_stage_factors_multiply_to_the_patch(patch: tuple[int, ...], factors: tuple) -> None:
    assert stage_factors(patch, 4) == factors
    for axis, p in enumerate(patch):
        assert torch.tensor([f[axis] for f in factors]).prod().item() == p


@pytest.mark.parametrize(
    ("patch", "crop"),
    [
        ((16, 16, 16), (32, 48, 16)),  # non-cubic, one axis a single patch
        ((12, 12, 12), (24, 36, 48)),  # x3 stage, non-cubic
        ((12, 12, 12), (12, 24, 12)),
        ((8, 8, 8), (16, 24, 40)),
        ((16, 16, 8), (32, 16, 24)),  # anisotropic patch
    ],
)
def test_output_has_the_input_shape(patch: tuple[int, ...], crop: tuple[int, ...]) -> None:
    model = _tiny(patch)
    x = torch.randn(2, 1, *crop)
    y = model(x)
    assert y.shape == (2, 3, *crop)
    assert torch.isfinite(y).all()


def test_upsample_factors_can_be_chosen() -> None:
    model = _tiny((12, 12, 12), upsample_factors=[2, 2, 1, 3], taps=(0, 1, 2, 3))
    assert model.upsample_factors == ((2, 2, 2), (2, 2, 2), (1, 1, 1), (3, 3, 3))
    assert model(torch.randn(1, 1, 24, 12, 36)).shape == (1, 3, 24, 12, 36)
    with pytest.raises(ValueError, match="multiply to"):
        _tiny((12, 12, 12), upsample_factors=[2, 2, 2, 2])


def test_three_taps_give_three_stages() -> None:
    model = _tiny((12, 12, 12), taps=(1, 2, 3))
    assert model.upsample_factors == ((2, 2, 2), (2, 2, 2), (3, 3, 3))
    assert not hasattr(model, "encoder4") and hasattr(model, "decoder4") and not hasattr(model, "decoder5")
    assert model(torch.randn(1, 1, 24, 24, 12)).shape == (1, 3, 24, 24, 12)


def test_default_taps_are_evenly_spaced() -> None:
    assert _tiny((8, 8, 8)).taps == (0, 1, 2, 3)
    enc = create_backbone("test_vit_3d", embed_dim=24, depth=12, num_heads=2)
    assert UNETR(enc, 2, feature_size=4).taps == (2, 5, 8, 11)
    assert upstream_taps(12) == (3, 6, 9, 11)


@pytest.mark.parametrize(
    ("taps", "match"),
    [((0, 4), "0..3"), ((-1, 2), "0..3"), ((2, 1), "ascending"), ((1, 1, 2), "ascending"), ((), "at least one")],
)
def test_taps_are_validated_against_depth(taps: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _tiny((8, 8, 8), taps=taps)


def test_shallow_deepest_tap_prunes_and_every_parameter_learns() -> None:
    model = _tiny((8, 8, 8), taps=(0, 1))
    assert len(model.encoder.blocks) == 2
    model(torch.randn(1, 1, 16, 16, 16)).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_input_not_divisible_by_patch_is_an_error() -> None:
    with pytest.raises(ValueError, match="multiple of the patch size"):
        _tiny((8, 8, 8))(torch.randn(1, 1, 16, 20, 16))


# ----------------------------------------------------------------------------- foreign layouts
def test_monai_unetr_state_dict_reproduces_monai() -> None:
    torch.manual_seed(0)
    ref = monai_nets.UNETR(1, 3, (32, 32, 32), feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2, qkv_bias=True)
    ref.eval()
    model = UNETR.from_monai_unetr(ref.state_dict(), num_heads=2).eval()
    assert model.taps == (3, 6, 9, 11)
    assert model.load_report.missing == []
    assert all(".cross_attn." in k or "norm_cross_attn" in k for k in model.load_report.dropped)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)


def test_monai_unetr_with_other_classes_keeps_the_decoder_but_not_the_head(tmp_path) -> None:
    ref = monai_nets.UNETR(1, 3, 32, feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2, proj_type="perceptron")
    path = tmp_path / "unetr.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    model = UNETR.from_monai_unetr(path, num_classes=5, num_heads=2)
    assert model.load_report.missing == ["out.conv.conv.bias", "out.conv.conv.weight"]
    assert "out.conv.conv.weight" in model.load_report.dropped
    torch.testing.assert_close(model.decoder5.transp_conv.conv.weight, ref.decoder5.transp_conv.conv.weight)
    # perceptron (p1 p2 p3 c) weights became a Conv3d kernel (c p1 p2 p3)
    w = ref.vit.patch_embedding.patch_embeddings[1].weight
    torch.testing.assert_close(model.encoder.patch_embed.proj.weight.flatten(1), w)


def _hi_end_mae_checkpoint(d: int, depth: int, patch: int, grid: int, dec: int = 12) -> dict[str, torch.Tensor]:
    """Synthetic state dict with the official Hi-End-MAE keys (``encoder.*``, ``encoder_pos_embed``), DDP prefix."""
    sd: dict[str, torch.Tensor] = {
        "encoder.cls_token": torch.randn(1, 1, d),
        "encoder.patch_embed.proj.weight": torch.randn(d, 1, patch, patch, patch),
        "encoder.patch_embed.proj.bias": torch.randn(d),
        "encoder.norm.weight": torch.randn(d),
        "encoder.norm.bias": torch.randn(d),
        "encoder_pos_embed": torch.randn(1, grid**3, d),
        "decoder_pos_embed": torch.randn(1, grid**3, dec),
        "mask_token": torch.randn(1, 1, dec),
        "decoder.norm.weight": torch.randn(dec),
        "decoder.head.weight": torch.randn(patch**3, dec),
    }
    for i in range(4):
        sd[f"encoder_to_decoder.{i}.weight"] = torch.randn(dec, d)
    for i in range(depth):
        p = f"encoder.blocks.{i}."
        for name, shape in {
            "norm1.weight": (d,),
            "norm1.bias": (d,),
            "attn.qkv.weight": (3 * d, d),
            "attn.qkv.bias": (3 * d,),
            "attn.proj.weight": (d, d),
            "attn.proj.bias": (d,),
            "norm2.weight": (d,),
            "norm2.bias": (d,),
            "mlp.fc1.weight": (4 * d, d),
            "mlp.fc1.bias": (4 * d,),
            "mlp.fc2.weight": (d, 4 * d),
            "mlp.fc2.bias": (d,),
        }.items():
            sd[p + name] = torch.randn(*shape)
    for i in range(3):
        sd[f"decoder.cross_attention_blocks.{i}.cross_attn.kv.weight"] = torch.randn(2 * dec, dec)
    return {f"module.{k}": v for k, v in sd.items()}


def test_official_hi_end_mae_checkpoint_loads_the_encoder(tmp_path) -> None:
    sd = _hi_end_mae_checkpoint(d=24, depth=12, patch=12, grid=2)
    path = tmp_path / "hi_end_mae_10k.pth"
    torch.save({"epoch": 3, "state_dict": sd}, path)
    model = UNETR.from_hi_end_mae(path, num_classes=4, num_heads=2, feature_size=4)
    report = model.load_report
    assert report.source_format == "hi-end-mae"
    assert report.missing == [] and report.unexpected == []
    assert {"decoder_pos_embed", "mask_token", "encoder_to_decoder.0.weight"} <= set(report.dropped)
    assert model.taps == (3, 6, 9, 11)
    enc = model.encoder
    torch.testing.assert_close(enc.blocks[7].attn.qkv.weight, sd["module.encoder.blocks.7.attn.qkv.weight"])
    torch.testing.assert_close(enc.pos_embed, sd["module.encoder_pos_embed"])
    torch.testing.assert_close(enc.cls_token, sd["module.encoder.cls_token"])
    assert enc.patch_embed.patch_size == (12, 12, 12) and enc.norm.eps == 1e-6
    assert model(torch.randn(1, 1, 24, 36, 24)).shape == (1, 4, 24, 36, 24)


def test_hi_end_mae_checkpoint_with_wrong_shapes_is_an_error(tmp_path) -> None:
    sd = _hi_end_mae_checkpoint(d=24, depth=12, patch=12, grid=2)
    sd["module.encoder.blocks.3.mlp.fc1.weight"] = torch.randn(10, 24)
    with pytest.raises(WeightsError, match=r"blocks\.3\.mlp\.fc1"):
        UNETR.from_hi_end_mae(sd, num_classes=2, num_heads=2)


def test_medvit_export_keeps_its_sidecar(tmp_path) -> None:
    enc = create_backbone("test_vit_3d", **TINY)
    path = save_backbone(enc, tmp_path / "enc.safetensors", metadata={"spacing": [1.5, 1.5, 2.0], "hu_window": [-1, 2]})
    model = UNETR.from_export(path, num_classes=3, feature_size=4)
    assert model.encoder_meta["spacing"] == [1.5, 1.5, 2.0]
    torch.testing.assert_close(model.encoder.blocks[2].mlp.fc2.weight, enc.blocks[2].mlp.fc2.weight)
    assert json.loads((tmp_path / "enc.json").read_text())["hu_window"] == [-1, 2]


def test_monai_unetr_on_a_non_cubic_grid_needs_its_input_size() -> None:
    torch.manual_seed(1)
    ref = monai_nets.UNETR(1, 2, (48, 48, 32), feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2).eval()
    with pytest.raises(WeightsError, match="not a cubic grid"):
        UNETR.from_monai_unetr(ref.state_dict(), num_heads=2)
    model = UNETR.from_monai_unetr(ref.state_dict(), num_heads=2, backbone_overrides={"img_size": [48, 48, 32]})
    x = torch.randn(1, 1, 48, 48, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), atol=1e-4, rtol=1e-4)


def _drop_path_rates(enc: torch.nn.Module) -> list[float]:
    return [float(getattr(blk.drop_path1, "drop_prob", 0.0)) for blk in enc.blocks]


def test_official_downstream_switch_changes_exactly_the_four_differences(tmp_path) -> None:
    """ct-seg from a Hi-End-MAE checkpoint, with and without model.official_downstream.

    The switch changes the cls token (dropped), LayerNorm eps (1e-6 -> 1e-5), the position table (fixed ->
    learnable, same start values) and drop path (0.1 -> 0), nothing else; the switched encoder then equals the
    official downstream encoder: a MONAI ViT loaded as FengheTan9/Hi-End-MAE downstream/factory.py loads it.
    """
    from torch import nn

    from medvit.apps.ct_seg.api import build_model
    from medvit.apps.ct_seg.config import CTSegConfig, ModelCfg

    sd = _hi_end_mae_checkpoint(d=24, depth=12, patch=12, grid=2)
    path = tmp_path / "hi_end_mae_10k.pth"
    torch.save({"epoch": 3, "state_dict": sd}, path)

    def build(official: bool) -> UNETR:
        torch.manual_seed(0)  # same random decoder for both
        cfg = CTSegConfig(model=ModelCfg(weights=path, num_heads=2, feature_size=4, official_downstream=official))
        return build_model(cfg, 3)[0]

    ours, official = build(False), build(True)
    a, b = ours.encoder, official.encoder
    # (1) the cls token leaves the sequence
    assert a.cls_token is not None and a.num_prefix_tokens == 1
    assert b.cls_token is None and b.num_prefix_tokens == 0
    # (2) LayerNorm eps
    assert {m.eps for m in a.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    assert {m.eps for m in b.modules() if isinstance(m, nn.LayerNorm)} == {1e-5}
    # (3) the position table is trained, starting from the checkpoint's values
    assert not a.pos_embed.requires_grad and b.pos_embed.requires_grad
    torch.testing.assert_close(b.pos_embed, sd["module.encoder_pos_embed"])
    # (4) no drop path (the config's default follows the switch)
    assert max(_drop_path_rates(a)) == pytest.approx(0.1) and max(_drop_path_rates(b)) == 0.0
    # ... and nothing else: every other tensor, the decoder, the taps and the other architecture arguments agree
    # (global_pool / fc_norm: with no token left the unused pooling says "avg", as for MONAI imports).
    sa, sb = ours.state_dict(), official.state_dict()
    assert set(sa) - set(sb) == {"encoder.cls_token"} and set(sb) <= set(sa)
    for k, v in sb.items():
        torch.testing.assert_close(v, sa[k], msg=k)
    changed = {k for k in a.arch_kwargs if a.arch_kwargs[k] != b.arch_kwargs.get(k)}
    assert changed - {"global_pool", "fc_norm"} == {"class_token", "norm_eps", "pos_embed", "drop_path_rate"}
    assert ours.taps == official.taps == (3, 6, 9, 11) and ours.decoder_kwargs() == official.decoder_kwargs()
    assert isinstance(b.norm, nn.LayerNorm)  # the final norm still feeds the bottom of the decoder

    # The switched encoder is the official one: a MONAI ViT loaded the way downstream/factory.py does it.
    ref = monai_nets.ViT(
        in_channels=1, img_size=24, patch_size=12, hidden_size=24, mlp_dim=96, num_layers=12, num_heads=2,
        proj_type="perceptron", pos_embed_type="learnable", classification=False, qkv_bias=True,
    ).eval()  # fmt: skip
    raw = {k.removeprefix("module."): v for k, v in sd.items()}
    mapped = {
        "patch_embedding.patch_embeddings.1.weight": raw["encoder.patch_embed.proj.weight"].flatten(1),
        "patch_embedding.patch_embeddings.1.bias": raw["encoder.patch_embed.proj.bias"],
        "patch_embedding.position_embeddings": raw["encoder_pos_embed"],
    }
    for k, v in raw.items():
        if k.startswith("encoder.") and "cls_token" not in k and "patch_embed" not in k:
            mapped[k.removeprefix("encoder.").replace("fc", "linear").replace("proj", "out_proj")] = v
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    assert not unexpected and all("cross_attn" in k for k in missing)  # MONAI>=1.4's unused cross-attention
    x = torch.randn(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_final, ref_hidden = ref(x)
        final, taps = b.eval().forward_intermediates(x, [3, 6, 9])
    torch.testing.assert_close(final, ref_final, atol=1e-4, rtol=1e-4)
    for t, i in zip(taps, (3, 6, 9), strict=True):  # raw block outputs of random weights grow large: relative
        scale = float(ref_hidden[i].abs().max())
        torch.testing.assert_close(t, ref_hidden[i], atol=1e-5 * scale, rtol=1e-4)


def test_paper_preset_builds_the_official_downstream_network() -> None:
    from medvit.apps.ct_seg.config import load_ct_seg_config

    paper = load_ct_seg_config("paper").model
    assert paper.official_downstream and paper.drop_path == 0.0
    base = load_ct_seg_config("base").model
    assert not base.official_downstream and base.drop_path == 0.1
    kept = load_ct_seg_config("paper", overrides=["model.official_downstream=false"]).model
    assert not kept.official_downstream and kept.drop_path == 0.1
