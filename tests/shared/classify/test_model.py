"""The classifier network: head initialisation, layer-decay groups, starting weights from exports and timm files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medvit.shared.backbone.registry import create_backbone
from medvit.shared.backbone.weights import save_backbone
from medvit.shared.classify.config import ClassifyDataCfg, ClassifyModelCfg, MixCfg
from medvit.shared.classify.labels import LabelSpace
from medvit.shared.classify.model import build_classifier
from medvit.shared.classify.train import ClassifyTask
from medvit.shared.engine.optim import build_param_groups
from medvit.shared.errors import ConfigError

LABELS = LabelSpace("multilabel", ("a", "b", "c"))
TINY = ClassifyModelCfg(backbone="test_vit_2d", backbone_overrides={"depth": 3}, drop_path=0.2)


def test_head_init_and_pooling() -> None:
    torch.manual_seed(0)
    model, spec, _ = build_classifier(TINY, ClassifyDataCfg(), LABELS, "cxr")
    w = model.head.weight
    assert w.shape == (3, 32) and model.global_pool == "avg"
    assert isinstance(model.fc_norm, torch.nn.LayerNorm) and isinstance(model.norm, torch.nn.Identity)
    assert w.abs().max() <= 4e-5 and 0.5e-5 < w.std() < 3e-5  # trunc normal, std 2e-5, cut at 2 std
    assert torch.all(model.head.bias == 0)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert spec.size == (32, 32) and spec.channels == 3 and spec.modality == "cxr"


def test_layer_decay_groups_per_block() -> None:
    model, _, _ = build_classifier(TINY, ClassifyDataCfg(), LABELS, "cxr")
    task = ClassifyTask(model, LABELS, MixCfg())
    groups = build_param_groups(task, 0.05, 0.55)
    by_name = {n: g for g in groups for n in g["param_names"]}
    depth = 3
    expected = {
        "model.patch_embed.proj.weight": 0,
        "model.pos_embed": 0,
        "model.cls_token": 0,
        "model.blocks.0.attn.qkv.weight": 1,
        "model.blocks.1.mlp.fc1.weight": 2,
        "model.blocks.2.norm1.weight": 3,
        "model.fc_norm.weight": depth + 1,
        "model.head.weight": depth + 1,
    }
    for name, layer in expected.items():
        assert by_name[name]["layer_id"] == layer, name
        assert by_name[name]["lr_scale"] == pytest.approx(0.55 ** (depth + 1 - layer)), name
    assert by_name["model.head.weight"]["weight_decay"] == 0.05
    assert by_name["model.head.bias"]["weight_decay"] == 0.0 and by_name["model.pos_embed"]["weight_decay"] == 0.0


def test_start_from_a_medvit_export_uses_its_sidecar(tmp_path: Path) -> None:
    torch.manual_seed(1)
    enc = create_backbone("test_vit_2d", depth=2, img_size=48, in_chans=1)
    meta = {"input_size": [48, 48], "in_chans": 1, "modality": "CXR",
            "intensity": {"kind": "mean_std", "scale": [0, 1], "mean": [0.4], "std": [0.3]}}  # fmt: skip
    path = save_backbone(enc, tmp_path / "encoder.safetensors", metadata=meta)
    cfg = ClassifyModelCfg(backbone=None, weights=path)
    model, spec, prov = build_classifier(cfg, ClassifyDataCfg(), LABELS, "cxr")
    assert spec.size == (48, 48) and spec.channels == 1 and spec.mean == (0.4,) and spec.std == (0.3,)
    assert torch.equal(model.blocks[1].attn.qkv.weight, enc.blocks[1].attn.qkv.weight)
    assert torch.equal(model.pos_embed, enc.pos_embed)
    assert prov["start_format"] == "medvit"
    # the config overrides the sidecar
    model2, spec2, _ = build_classifier(cfg, ClassifyDataCfg(size=(32,), in_chans=3), LABELS, "cxr")
    assert spec2.size == (32, 32) and spec2.channels == 3 and model2.patch_embed.proj.in_channels == 3


def test_start_from_timm_state_dict_and_warm_start(tmp_path: Path) -> None:
    torch.manual_seed(2)
    src = create_backbone("test_vit_2d", depth=2, num_classes=10)  # timm key names, a 10-class head
    path = tmp_path / "timm.pth"
    torch.save(src.state_dict(), path)
    cfg = ClassifyModelCfg(backbone="test_vit_2d", backbone_overrides={"depth": 2}, weights=path)
    model, spec, prov = build_classifier(cfg, ClassifyDataCfg(), LABELS, "fundus")
    assert torch.equal(model.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)
    assert model.head.weight.abs().max() <= 4e-5  # the 10-class head was dropped, a new one initialised
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    # a 3D backbone for 2D inputs is refused
    with pytest.raises(ConfigError, match="3D backbone"):
        build_classifier(ClassifyModelCfg(backbone="test_vit_3d"), ClassifyDataCfg(), LABELS, "cxr")


def test_tl_align_task_step_2d_and_3d() -> None:
    torch.manual_seed(0)
    graded = LabelSpace("graded", ("0", "1", "2"))
    for backbone, modality, shape in (
        ("test_vit_2d", "fundus", (4, 3, 32, 32)),
        ("test_vit_3d", "oct", (4, 1, 32, 32, 32)),
    ):
        cfg = ClassifyModelCfg(backbone=backbone, backbone_overrides={"depth": 2})
        model, _, _ = build_classifier(cfg, ClassifyDataCfg(size=(32,)), graded, modality)
        task = ClassifyTask(model, graded, MixCfg(mode="tl-align"), label_smoothing=0.1).train()
        batch = {"image": torch.randn(*shape), "target": torch.tensor([[0.0], [1.0], [2.0], [1.0]])}
        out = task(batch)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        out["loss"].backward()
        assert model.head.weight.grad is not None
        w = float(out["logs"]["mix_weight"])
        assert 0.0 <= w <= 1.0
        assert np.isfinite(w)


def test_start_from_an_mae_checkpoint_infers_the_architecture(tmp_path: Path) -> None:
    torch.manual_seed(3)
    enc = create_backbone("test_vit_2d", depth=2)  # 32 wide, 2 heads, patch 8, 32 px: a 4 x 4 grid + cls
    sd = {k: v for k, v in enc.state_dict().items() if not k.startswith("head")}
    sd["mask_token"] = torch.zeros(1, 1, 16)
    sd["decoder_embed.weight"] = torch.zeros(16, 32)
    path = tmp_path / "mae.pth"
    torch.save({"model": sd, "epoch": 799}, path)
    cfg = ClassifyModelCfg(backbone=None, weights=path, backbone_overrides={"num_heads": 2})
    model, spec, prov = build_classifier(cfg, ClassifyDataCfg(), LABELS, "cxr")
    assert prov["start_format"] == "mae" and len(model.blocks) == 2 and model.embed_dim == 32
    assert spec.size == (32, 32)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, enc.blocks[1].mlp.fc2.weight)
    assert isinstance(model.fc_norm, torch.nn.LayerNorm)  # the pretrained final norm is replaced by fc_norm
