"""CellVTA / CellViT checkpoints: key mapping, strict loading, format detection, importers, backbone loading."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import medvit.apps.cell_seg  # noqa: F401 - registers the formats
from medvit.apps.cell_seg.formats import (
    CELL_MODEL_FORMAT,
    cellvta_key_to_medvit,
    cellvta_spec_from_state_dict,
    export_cellvta_state_dict,
    import_cellvit_encoder,
    load_cellvit_encoder,
    load_cellvta_state_dict,
    medvit_key_to_cellvta,
    read_cell_checkpoint,
)
from medvit.apps.cell_seg.model import ADAPTER_DEFAULTS, CellVTA, build_cell_model
from medvit.apps.cell_seg.model_file import model_from_spec
from medvit.shared.backbone.formats import WholeModelImport, get_format
from medvit.shared.backbone.registry import create_backbone
from medvit.shared.backbone.weights import detect_format, load_backbone, load_pretrained, load_strict
from medvit.shared.errors import WeightsError

# 8 deformable heads x 4 points: the published split, which the importer infers from their product.
SPEC: dict[str, Any] = {
    "backbone": "vit_tiny_patch16_224",
    "backbone_overrides": {"depth": 4, "embed_dim": 64, "num_heads": 2, "img_size": 64, "init_values": 1e-5},
    "num_nuclei_classes": 5,
    "num_tissue_classes": 3,
    "adapter": {"conv_inplane": 8, "deform_num_heads": 8, "decoder_width": 1 / 16},
}


def tiny(seed: int, **adapter: Any) -> CellVTA:
    torch.manual_seed(seed)
    return build_cell_model({**SPEC, "adapter": {**SPEC["adapter"], **adapter}})


def cellvit_like(seed: int = 0, grid: int = 5) -> dict[str, torch.Tensor]:
    """A CellViT-256-style state dict: a timm ViT under ``encoder.`` plus a tissue head and decoder pieces."""
    torch.manual_seed(seed)
    vit = create_backbone("vit_tiny_patch16_224", depth=4, embed_dim=64, num_heads=2, img_size=16 * grid)
    sd = {f"encoder.{k}": v for k, v in vit.state_dict().items()}
    sd["encoder.head.weight"], sd["encoder.head.bias"] = torch.randn(3, 64), torch.randn(3)
    sd["decoder0.0.block.0.weight"] = torch.randn(32, 3, 3, 3)
    sd["decoder1.0.block.0.weight"] = torch.randn(512, 64, 2, 2)
    sd["nuclei_binary_map_decoder.bottleneck_upsampler.weight"] = torch.randn(64, 312, 2, 2)
    sd["nuclei_binary_map_decoder.decoder0_header.2.weight"] = torch.randn(2, 64, 1, 1)
    return sd


def test_key_mapping_both_ways() -> None:
    pairs = {
        "encoder.blocks.3.attn.qkv.weight": "encoder.backbone.blocks.3.attn.qkv.weight",
        "encoder.cls_token": "encoder.backbone.cls_token",
        "encoder.pos_embed": "encoder.backbone.pos_embed",
        "encoder.patch_embed.proj.weight": "encoder.backbone.patch_embed.proj.weight",
        "encoder.norm.weight": "encoder.backbone.norm.weight",
        "encoder.head.bias": "tissue_head.bias",
        "encoder.norm1.running_var": "encoder.norm1.running_var",
        "encoder.spm.stem.0.weight": "encoder.spm.stem.0.weight",
        "encoder.interactions.3.extra_extractors.1.ffn.dwconv.dwconv.weight": (
            "encoder.interactions.3.extra_extractors.1.ffn.dwconv.dwconv.weight"
        ),
        "encoder.level_embed": "encoder.level_embed",
        "hv_map_decoder.decoder3_upsampler.3.weight": "hv_map_decoder.decoder3_upsampler.3.weight",
    }
    for theirs, ours in pairs.items():
        assert cellvta_key_to_medvit(theirs) == ours
        assert medvit_key_to_cellvta(ours) == theirs
        assert cellvta_key_to_medvit(ours) == ours  # idempotent on our names


def test_our_names_follow_the_cellvta_layout() -> None:
    keys = set(export_cellvta_state_dict(tiny(0)))
    expected = {
        "encoder.spm.stem.9.weight",  # the stride-2 conv ending the stem (no BN after it)
        "encoder.spm.stem.7.num_batches_tracked",
        "encoder.spm.conv4.4.running_mean",
        "encoder.spm.fc4.bias",
        "encoder.level_embed",
        "encoder.blocks.3.ls2.gamma",
        "encoder.interactions.0.injector.gamma",
        "encoder.interactions.0.injector.attn.sampling_offsets.weight",
        "encoder.interactions.2.extractor.ffn.dwconv.dwconv.weight",
        "encoder.interactions.2.extractor.ffn_norm.weight",
        "encoder.interactions.3.extra_extractors.1.attn.value_proj.weight",
        "encoder.up.weight",
        "encoder.norm4.running_var",
        "encoder.head.weight",
        "decoder0.1.block.1.running_mean",
        "decoder3.0.block.0.weight",
        "nuclei_binary_map_decoder.bottleneck_upsampler.0.block.2.weight",
        "hv_map_decoder.decoder3_upsampler.3.weight",
        "nuclei_type_maps_decoder.decoder2_upsampler.2.bias",
        "nuclei_type_maps_decoder.decoder1_upsampler.1.block.0.weight",
        "nuclei_type_maps_decoder.decoder0_header.2.weight",
    }
    assert expected <= keys
    assert "encoder.interactions.2.extra_extractors.0.ffn.fc1.weight" not in keys
    assert not any(k.startswith("encoder.backbone.") for k in keys)


def test_cellvta_round_trip_gives_identical_tensors() -> None:
    src = tiny(0)
    with torch.no_grad():
        for buf in src.buffers():  # BatchNorm statistics must travel too
            if buf.dtype.is_floating_point:
                buf.add_(torch.rand_like(buf))
    exported = export_cellvta_state_dict(src)
    dst = tiny(1)
    report = load_cellvta_state_dict(dst, {f"module.{k}": v for k, v in exported.items()})
    assert report.source_format == "cellvta" and report.missing == [] and report.unexpected == []
    a, b = src.state_dict(), dst.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_and_unexpected_keys_are_named() -> None:
    exported = export_cellvta_state_dict(tiny(0))
    model = tiny(1)
    missing = dict(exported)
    del missing["encoder.interactions.1.injector.gamma"]
    with pytest.raises(WeightsError, match=r"missing 1 key\(s\): encoder\.interactions\.1\.injector\.gamma"):
        load_cellvta_state_dict(model, missing)
    extra = {**exported, "encoder.interactions.9.injector.gamma": torch.zeros(64)}
    with pytest.raises(WeightsError, match=r"unexpected 1 key\(s\): encoder\.interactions\.9\.injector\.gamma"):
        load_cellvta_state_dict(model, extra)
    wrong = {**exported, "encoder.level_embed": torch.zeros(4, 64)}
    with pytest.raises(WeightsError, match=r"shape mismatch for encoder\.level_embed"):
        load_cellvta_state_dict(model, wrong)


def test_position_embedding_of_another_grid_is_resampled() -> None:
    exported = export_cellvta_state_dict(tiny(0))
    exported["encoder.pos_embed"] = torch.randn(1, 1 + 25, 64)  # a 5 x 5 grid; the model has 4 x 4
    report = load_cellvta_state_dict(tiny(1), exported)
    assert report.resized == [("encoder.backbone.pos_embed", (1, 26, 64), (1, 17, 64))]


def test_formats_are_recognised_by_key_signature() -> None:
    assert detect_format(export_cellvta_state_dict(tiny(0))) == "cellvta"
    assert detect_format(tiny(0).state_dict()) == "cellvta"  # our own names too
    assert detect_format(cellvit_like()) == "cellvit"
    # A bare ViT under ``encoder.`` without CellViT's decoder is still a Hi-End-MAE-style backbone file.
    bare = {k: v for k, v in cellvit_like().items() if k.startswith("encoder.") and not k.startswith("encoder.head")}
    assert detect_format(bare) == "hi-end-mae"


def test_spec_inferred_from_a_state_dict() -> None:
    spec = cellvta_spec_from_state_dict(export_cellvta_state_dict(tiny(0)), {"num_heads": 2})
    assert spec["backbone"] == "vit_tiny_patch16_224"
    assert spec["backbone_overrides"] == {
        "embed_dim": 64,
        "depth": 4,
        "num_heads": 2,
        "init_values": 1e-5,
        "img_size": [64, 64],
    }
    adapter = spec["adapter"]
    assert (adapter["deform_num_heads"], adapter["n_points"], adapter["conv_inplane"]) == (8, 4, 8)
    assert (adapter["deform_ratio"], adapter["cffn_ratio"], adapter["decoder_width"]) == (0.5, 0.25, 1 / 16)
    assert (adapter["n_segments"], adapter["extra_extractors"], adapter["tissue_head"]) == (4, True, "official")
    assert (spec["num_nuclei_classes"], spec["num_tissue_classes"]) == (5, 3)
    # Any other heads x points product needs the split spelled out.
    other = export_cellvta_state_dict(tiny(0, deform_num_heads=2))
    with pytest.raises(WeightsError, match="heads x points = 8"):
        cellvta_spec_from_state_dict(other)
    assert cellvta_spec_from_state_dict(other, {"deform_num_heads": 2})["adapter"]["n_points"] == 4


def test_cellvta_checkpoint_imports_as_a_cell_model_file(tmp_path) -> None:  # noqa: ANN001
    src_model = tiny(0, tissue_head="official").eval()
    exported = export_cellvta_state_dict(src_model)
    ckpt = tmp_path / "CellVTA_tiny.pth"
    config = {"data.num_nuclei_classes": 6, "dataset_config.nuclei_types.Background": 0}
    config.update(
        {f"dataset_config.nuclei_types.{n}": i for i, n in enumerate(["Neo", "Inf", "Con", "Dead", "Epi"], 1)}
    )
    torch.save({"arch": "CellViTUNIAdapter", "epoch": 3, "model_state_dict": exported, "config": config}, ckpt)
    sd, info = read_cell_checkpoint(ckpt)
    assert info["wrapper"] == "model_state_dict" and info["arch"] == "CellViTUNIAdapter"
    assert sd.keys() == exported.keys()

    fmt = get_format("cellvta")
    assert fmt is not None
    out = tmp_path / "cell.safetensors"
    message = fmt.importer(WholeModelImport(ckpt, out, sd, info, overrides={"num_heads": 2}))
    assert str(out) in message and "'official'" in message
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["format"] == CELL_MODEL_FORMAT and side["format_version"] == 1
    assert side["nuclei_types"] == ["Background", "Neo", "Inf", "Con", "Dead", "Epi"]
    assert side["tissue_types"] == ["tissue_0", "tissue_1", "tissue_2"]  # none in the config: generic names
    rebuilt = model_from_spec(side, source=str(out)).eval()  # the sidecar is a `cell train` model.json
    load_strict(rebuilt, load_file(out), what="cell model file")
    a, b = src_model.state_dict(), rebuilt.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ya, yb = src_model(x), rebuilt(x)
    assert all(torch.equal(ya[k], yb[k]) for k in ya)
    with pytest.raises(WeightsError, match="exists"):
        fmt.importer(WholeModelImport(ckpt, out, sd, info, overrides={"num_heads": 2}))


def test_cellvit_encoder_loads_into_the_backbone_and_names_the_rest() -> None:
    sd = cellvit_like(grid=5)  # CellViT-256 was trained on 256 px: a position embedding of another grid
    torch.manual_seed(1)
    overrides = {k: v for k, v in SPEC["backbone_overrides"].items() if k != "init_values"}  # HIPT: no LayerScale
    model = build_cell_model({**SPEC, "backbone_overrides": overrides})
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.backbone.")}
    report = load_cellvit_encoder(model, sd)
    assert report.source_format == "cellvit"
    assert report.resized == [("pos_embed", (1, 26, 64), (1, 17, 64))]
    bb = model.backbone.state_dict()
    for k, v in sd.items():
        if k.startswith("encoder.") and not k.startswith(("encoder.head.", "encoder.pos_embed")):
            assert torch.equal(bb[k[len("encoder.") :]], v), k
    assert {
        "encoder.head.weight",
        "decoder0.0.block.0.weight",
        "nuclei_binary_map_decoder.bottleneck_upsampler.weight",
    } <= set(report.dropped)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # adapter, decoder, tissue head untouched


def test_cellvit_sam_is_refused() -> None:
    sd = cellvit_like()
    sd["encoder.neck.0.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="CellViT-SAM"):
        load_cellvit_encoder(tiny(0), sd)


def test_cellvit_import_writes_a_backbone_file(tmp_path) -> None:  # noqa: ANN001
    sd = cellvit_like(grid=4)
    out = tmp_path / "cellvit_vit.safetensors"
    message = get_format("cellvit").importer(WholeModelImport(tmp_path / "CellViT-256-x40.pth", out, sd, {}))
    assert "decoder0" in message and "encoder.head" in message and "nuclei_binary_map_decoder" in message
    vit, side = load_backbone(out)
    assert side["source"] == "cellvit" and "decoder1" in side["not_loaded"]
    assert torch.equal(vit.blocks[2].mlp.fc1.weight, sd["encoder.blocks.2.mlp.fc1.weight"])
    report, left = import_cellvit_encoder(tmp_path / "x.pth", out, state_dict=sd, overwrite=True)
    assert "encoder.head.bias" in left and report.missing == []


def test_timm_backbone_weights_load_into_a_cellvta_backbone() -> None:
    torch.manual_seed(3)
    timm_like = create_backbone(
        "vit_tiny_patch16_224", depth=4, embed_dim=64, num_heads=2, img_size=64, init_values=1e-5
    )
    sd = timm_like.state_dict()
    model = tiny(0)
    report = load_pretrained(model, sd, prefix="encoder.backbone")
    assert report.source_format == "timm" and report.missing == []
    assert torch.equal(model.backbone.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
    assert torch.equal(model.backbone.pos_embed, sd["pos_embed"])


def test_published_cellvta_layout_gives_the_published_spec() -> None:
    spec = {
        "backbone": "vit_large_patch16_224",
        "backbone_overrides": {"init_values": 1e-5},
        "num_nuclei_classes": 5,
        "num_tissue_classes": 19,
    }
    with torch.device("meta"):  # shapes only: a UNI-sized CellVTA without allocating it
        sd = export_cellvta_state_dict(build_cell_model(spec))
    assert tuple(sd["encoder.pos_embed"].shape) == (1, 197, 1024)
    inferred = cellvta_spec_from_state_dict(sd)
    assert inferred["backbone"] == "vit_large_patch16_224"
    assert inferred["backbone_overrides"] == {"init_values": 1e-5}
    assert inferred["adapter"] == {**ADAPTER_DEFAULTS, "tissue_head": "official"}
    assert (inferred["num_nuclei_classes"], inferred["num_tissue_classes"]) == (5, 19)
