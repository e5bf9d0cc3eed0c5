"""CellVTA network: shapes, published parameter counts, freezing, the tissue head fix, adapter geometry."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from medvit.apps.cell_seg.adapter import fusion_taps, segment_bounds
from medvit.apps.cell_seg.model import CellVTA, build_cell_model, decoder_channels
from medvit.shared.backbone.registry import create_backbone
from medvit.shared.errors import ConfigError, WeightsError

TINY_BACKBONE = {"depth": 4, "embed_dim": 64, "num_heads": 2, "img_size": 64}
TINY_ADAPTER = {"conv_inplane": 8, "deform_num_heads": 2, "decoder_width": 1 / 16}


def tiny_spec(**adapter: Any) -> dict[str, Any]:
    return {
        "backbone": "vit_tiny_patch16_224",
        "backbone_overrides": dict(TINY_BACKBONE),
        "num_nuclei_classes": 5,
        "num_tissue_classes": 3,
        "adapter": {**TINY_ADAPTER, **adapter},
    }


def tiny(seed: int = 0, **adapter: Any) -> CellVTA:
    torch.manual_seed(seed)
    return build_cell_model(tiny_spec(**adapter))


def test_output_and_feature_shapes() -> None:
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "nuclei_binary_map": (2, 2, 64, 64),
        "hv_map": (2, 2, 64, 64),
        "nuclei_type_map": (2, 6, 64, 64),
        "tissue_types": (2, 3),
    }
    feats, tokens = model.encoder(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 64, 16, 16), (2, 64, 8, 8), (2, 64, 4, 4)]
    assert tuple(tokens.shape) == (2, 1 + 16, 64)
    # A non-square input works too (the adapter's grids follow the input).
    out = model(torch.randn(1, 3, 48, 80))
    assert tuple(out["hv_map"].shape) == (1, 2, 48, 80)


def test_published_parameter_counts_vit_large_on_meta() -> None:
    spec = {
        "backbone": "vit_large_patch16_224",
        "backbone_overrides": {"init_values": 1e-5},  # UNI has LayerScale
        "num_nuclei_classes": 5,
        "num_tissue_classes": 19,
    }
    with torch.device("meta"):
        model = build_cell_model(spec)
    adapter = sum(p.numel() for n, p in model.encoder.named_parameters() if not n.startswith("backbone."))
    decoder = sum(p.numel() for m in model.decoder_modules() for p in m.parameters())
    assert adapter == 22_277_504
    assert decoder == 62_121_674
    assert sum(p.numel() for p in model.tissue_head.parameters()) == 19_475
    model.freeze_backbone()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 84_420_701
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == 303_348_736
    # decoder_width 1.0 is the paper's widths exactly.
    assert decoder_channels(1024, 1.0) == {"32": 32, "64": 64, "128": 128, "256": 256, "bottleneck": 512}
    assert model.decoder3[0].block[0].out_channels == 512
    assert model.nuclei_binary_map_decoder.decoder0_header[2].out_channels == 2
    assert model.nuclei_type_maps_decoder.decoder0_header[2].out_channels == 6
    assert [b.extra_extractors is not None for b in model.encoder.interactions] == [False, False, False, True]
    assert model.encoder.segments == [(0, 6), (6, 12), (12, 18), (18, 24)]
    # The full-size forward, shapes only (meta tensors compute nothing; the skip concatenations check that f1..f4
    # come at 128, 64, 32, 16 px for a 256 px input).
    out = model(torch.empty(1, 3, 256, 256, device="meta"))
    assert tuple(out["nuclei_type_map"].shape) == (1, 6, 256, 256) and tuple(out["tissue_types"].shape) == (1, 19)


def test_gradients_reach_adapter_and_decoder_not_the_frozen_backbone() -> None:
    model = tiny()
    model.freeze_backbone()
    out = model(torch.randn(2, 3, 64, 64))
    sum(v.float().mean() for v in out.values()).backward()
    frozen = {id(p) for p in model.frozen_backbone_parameters()}
    assert frozen and all(p.grad is None and not p.requires_grad for p in model.frozen_backbone_parameters())
    trainable = [(n, p) for n, p in model.named_parameters() if id(p) not in frozen]
    no_grad = [n for n, p in trainable if p.grad is None]
    assert no_grad == []
    assert model.backbone.norm.weight.grad is not None  # the final norm trains (tissue head input)
    assert model.encoder.interactions[0].injector.attn.sampling_offsets.weight.grad.abs().sum() > 0
    assert model.encoder.level_embed.grad.abs().sum() > 0


def test_unfreezing_restores_backbone_gradients() -> None:
    model = tiny()
    model.freeze_backbone()
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters())
    out = model(torch.randn(1, 3, 32, 32))
    out["nuclei_binary_map"].mean().backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embed.proj.weight.grad is not None


@pytest.mark.parametrize(("mode", "sees_image"), [("pooled", True), ("cls", True), ("official", False)])
def test_tissue_head_sees_the_image_except_in_the_published_mode(mode: str, sees_image: bool) -> None:
    model = tiny(tissue_head=mode).eval()
    with torch.no_grad():
        a = model(torch.randn(2, 3, 64, 64))["tissue_types"]
        b = model(torch.randn(2, 3, 64, 64))["tissue_types"]
    differs = (a - b).abs().max().item() > 1e-6
    assert differs == sees_image
    if not sees_image:
        # Published behaviour: the head reads LN(cls_token + pos_embed[0]), the same for every image.
        bb = model.backbone
        expected = model.tissue_head(bb.norm(bb.cls_token[0, 0] + bb.pos_embed[0, 0]))
        torch.testing.assert_close(a, expected.expand(2, -1).detach())


def test_official_mode_keeps_the_class_token_out_of_attention() -> None:
    x = torch.randn(1, 3, 32, 32)
    for mode, depends in (("official", False), ("pooled", True)):
        model = tiny(tissue_head=mode).eval()
        with torch.no_grad():
            before = model(x)["nuclei_binary_map"]
            model.backbone.cls_token.add_(torch.randn(64))  # not a constant shift, which LayerNorm removes
            after = model(x)["nuclei_binary_map"]
        assert ((before - after).abs().max().item() > 1e-6) == depends, mode


def test_zero_injection_leaves_the_vit_stream_equal_to_the_backbone() -> None:
    model = tiny().eval()  # prefix tokens run through the blocks ("pooled")
    with torch.no_grad():
        for block in model.encoder.interactions:
            block.injector.gamma.zero_()
        x = torch.randn(2, 3, 64, 64)
        _, tokens = model.encoder(x)
        _, (last,) = model.backbone.forward_intermediates(x, indices=[3], return_prefix_tokens=True)
    torch.testing.assert_close(tokens[:, 1:], last[0])
    torch.testing.assert_close(tokens[:, :1], last[1])


def test_injector_gamma_and_level_embed_init() -> None:
    model = tiny(init_values=1e-5)
    for block in model.encoder.interactions:
        torch.testing.assert_close(block.injector.gamma.detach(), torch.full((64,), 1e-5))
    assert model.encoder.level_embed.shape == (3, 64) and model.encoder.level_embed.std() > 0.5  # N(0, 1)


def test_segments_and_fusion_taps() -> None:
    assert segment_bounds(24, 4) == [(0, 6), (6, 12), (12, 18), (18, 24)]
    assert segment_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert fusion_taps(4) == (0, 1, 2, 3)
    assert fusion_taps(8) == (1, 3, 5, 7)
    assert fusion_taps(2) == (0, 0, 1, 1)
    model = tiny(n_segments=2)
    assert model.encoder.segments == [(0, 2), (2, 4)] and len(model.encoder.interactions) == 2
    assert tuple(model(torch.randn(1, 3, 32, 32))["hv_map"].shape) == (1, 2, 32, 32)
    with pytest.raises(ConfigError, match="n_segments"):
        build_cell_model(tiny_spec(n_segments=5))


def test_bad_backbones_inputs_and_specs() -> None:
    with pytest.raises(ValueError, match="patch-16"):
        CellVTA(create_backbone("test_vit_2d"), 5, 3)  # patch 8
    with pytest.raises(ValueError, match="2D"):
        CellVTA(create_backbone("test_vit_3d"), 5, 3)
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny()(torch.randn(1, 3, 72, 64))
    with pytest.raises(ValueError, match="class token"):
        CellVTA(
            create_backbone("vit_tiny_patch16_224", class_token=False, global_pool="avg", **TINY_BACKBONE),
            5,
            3,
            tissue_head="cls",
        )
    with pytest.raises(ConfigError, match="unknown adapter key"):
        build_cell_model(tiny_spec(bogus=1))
    with pytest.raises(ConfigError, match="unknown key"):
        build_cell_model({**tiny_spec(), "decoder": {}})
    with pytest.raises(ConfigError, match="missing key 'num_tissue_classes'"):
        build_cell_model({"backbone": "vit_tiny_patch16_224", "num_nuclei_classes": 5})
    with pytest.raises(ConfigError, match="tissue_head"):
        build_cell_model(tiny_spec(tissue_head="mean"))
    with pytest.raises(WeightsError, match="unknown backbone"):
        build_cell_model({**tiny_spec(), "backbone": "no_such_vit"})


def test_pooled_head_works_without_a_class_token() -> None:
    bb = create_backbone("vit_tiny_patch16_224", class_token=False, global_pool="avg", **TINY_BACKBONE)
    model = CellVTA(bb, 2, 4, **TINY_ADAPTER).eval()
    out = model(torch.randn(1, 3, 32, 32))
    assert tuple(out["tissue_types"].shape) == (1, 4)


def test_spec_is_resolved_and_json_able() -> None:
    import json

    model = tiny()
    assert model.spec is not None
    assert json.loads(json.dumps(model.spec)) == model.spec
    assert model.spec["adapter"]["n_points"] == 4 and model.spec["adapter"]["tissue_head"] == "pooled"


def test_convffn_depthwise_conv_runs_on_each_scale_separately() -> None:
    from medvit.apps.cell_seg.adapter import DWConv

    conv = DWConv(2)
    with torch.no_grad():
        conv.dwconv.weight.fill_(1.0)
        conv.dwconv.bias.zero_()
    x = torch.zeros(1, 4 + 1, 2)
    x[0, :4] = 1.0  # level 0 (2 x 2) all ones, level 1 (1 x 1) zero
    out = conv(x, [(2, 2), (1, 1)])
    torch.testing.assert_close(out[0, :4], torch.full((4, 2), 4.0))  # 3x3 sum over a 2x2 map with zero padding
    torch.testing.assert_close(out[0, 4], torch.zeros(2))  # nothing leaks across the level boundary
