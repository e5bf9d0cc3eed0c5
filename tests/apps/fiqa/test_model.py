"""ViT-FIQA model: token layout, heads, masking (quality token exempt), preprocessing, weights in and out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medvit.apps.fiqa.model import (
    ViTFIQA,
    build_fiqa_model,
    convert_official_state_dict,
    load_fiqa,
    model_from_official,
    preprocess_faces,
    read_foreign_state_dict,
    save_fiqa,
)
from medvit.shared.errors import WeightsError

from .conftest import official_state_dict


@pytest.fixture(scope="module")
def tiny() -> ViTFIQA:
    torch.manual_seed(0)
    return build_fiqa_model("test_vit_fiqa")


def test_vit_s_geometry_144_patch_tokens_plus_quality_token() -> None:
    model = build_fiqa_model("vit_fiqa_small_patch9_112", depth=1)  # depth 1: same geometry, cheap
    vit = model.backbone
    assert vit.patch_embed.grid_size == (12, 12) and vit.patch_embed.num_patches == 144
    assert vit.prefix_token_names() == ["quality"]
    assert tuple(vit.quality_token.shape) == (1, 1, 512)
    assert tuple(vit.pos_embed.shape) == (1, 145, 512)  # learned slot for the quality token
    tokens, grid = vit.embed(torch.zeros(2, 3, 112, 112))
    assert tuple(tokens.shape) == (2, 145, 512) and grid == (12, 12)
    assert model.feature[0].in_features == 144 * 512 and model.feature[0].bias is None
    assert model.feature[1].eps == pytest.approx(2e-5) and model.feature[3].eps == pytest.approx(2e-5)
    assert model.head_qs[1].in_features == 512 and model.head_qs[1].out_features == 1
    assert model.head_qs[1].bias is None
    assert isinstance(vit.blocks[0].mlp.act, torch.nn.ReLU6)
    assert vit.blocks[0].attn.qkv.bias is None


@pytest.mark.parametrize(
    ("head", "n_prefix", "feat_in"),
    [("token", 1, 144 * 64), ("full", 1, 145 * 64), ("crfiqa", 0, 144 * 64)],
)
@pytest.mark.parametrize("train", [False, True])
def test_head_modes_shapes(head: str, n_prefix: int, feat_in: int, train: bool) -> None:
    torch.manual_seed(0)
    model = build_fiqa_model("test_vit_fiqa", head=head).train(train)
    x = torch.randn(3, 3, 112, 112)
    tokens = model.forward_tokens(x)
    assert tuple(tokens.shape) == (3, n_prefix + 144, 64)
    emb, q = model(x)
    assert tuple(emb.shape) == (3, 64) and tuple(q.shape) == (3,)
    assert model.feature[0].in_features == feat_in
    assert model.backbone.num_prefix_tokens == n_prefix


def test_token_head_reads_the_quality_token(tiny: ViTFIQA) -> None:
    tiny.eval()
    x = torch.randn(2, 3, 112, 112)
    tokens = tiny.forward_tokens(x)
    emb, q = tiny.forward_heads(tokens)
    expected_q = tiny.head_qs(tokens[:, 0]).squeeze(1)
    expected_e = tiny.feature(tokens[:, 1:].reshape(2, -1))
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(emb, expected_e)


def test_quality_token_is_never_masked() -> None:
    torch.manual_seed(1)
    model = build_fiqa_model("test_vit_fiqa", mask_ratio=0.5).train()
    x = torch.randn(64, 3, 112, 112)
    seen_keep = []
    orig = model.backbone.forward_features

    def spy(inp: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        seen_keep.append(keep)
        return orig(inp, keep=keep)

    model.backbone.forward_features = spy  # type: ignore[method-assign]
    tokens = model.forward_tokens(x)
    keep = seen_keep[0]
    assert keep is not None and tuple(keep.shape) == (64, 72)  # ids index patch tokens only
    mask = model.mask_token.reshape(1, 1, -1)
    is_mask = torch.isclose(tokens, mask.expand_as(tokens), atol=0).all(-1)  # [B, 145]
    assert not is_mask[:, 0].any(), "the quality slot held mask_token"
    assert (is_mask[:, 1:].sum(1) == 72).all()  # exactly the dropped patches are filled
    # The quality output depends on the quality token for every sample (it went through the encoder).
    model.backbone.forward_features = orig  # type: ignore[method-assign]
    torch.manual_seed(2)
    _, q1 = model(x)
    with torch.no_grad():  # a random change: a constant added to every channel would vanish in the LayerNorms
        model.backbone.quality_token.add_(torch.randn_like(model.backbone.quality_token))
    torch.manual_seed(2)
    _, q2 = model(x)
    assert (q1 != q2).all()


def test_eval_mode_does_not_mask(tiny: ViTFIQA) -> None:
    tiny.eval()
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(tiny.forward_tokens(x), tiny.backbone.forward_features(x))


def test_preprocess_rgb_and_range() -> None:
    img = np.zeros((112, 112, 3), np.uint8)
    img[..., 0] = 255  # red
    x = preprocess_faces([img, img])
    assert tuple(x.shape) == (2, 3, 112, 112) and x.dtype == torch.float32
    assert torch.all(x[:, 0] == 1.0) and torch.all(x[:, 1:] == -1.0)
    chw = torch.from_numpy(img).permute(2, 0, 1)[None]
    torch.testing.assert_close(preprocess_faces(chw), x[:1])


def test_save_load_roundtrip(tmp_path, tiny: ViTFIQA) -> None:
    tiny.eval()
    path = save_fiqa(tiny, tmp_path / "m.safetensors", metadata={"steps": 3})
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["format"] == "medvit-fiqa" and side["head"] == "token" and side["steps"] == 3
    loaded, _ = load_fiqa(path)
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(loaded(x), tiny(x))
    assert not list(tmp_path.glob(".*tmp*"))


def _reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, head: str, depth: int = 2) -> tuple:
    """The official forward (eval mode) written out with plain ops, for comparison."""
    import torch.nn.functional as F

    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    d = sd["patch_embed.proj.weight"].shape[0]
    b = x.shape[0]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=9).flatten(2).transpose(1, 2)
    if head != "crfiqa":
        t = torch.cat([sd["qs_token"].expand(b, -1, -1), t], 1)
    t = t + sd["pos_embed"]
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-5)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"]).reshape(b, -1, 3, 8, d // 8).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-2, -1)) * (d // 8) ** -0.5
        o = (att.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(b, -1, d)
        t = t + F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(t, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-5)
        h = F.relu6(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        t = t + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    t = F.layer_norm(t, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-5)

    def bn(v: torch.Tensor, pre: str) -> torch.Tensor:
        return F.batch_norm(v, sd[pre + "running_mean"], sd[pre + "running_var"], sd[pre + "weight"], sd[pre + "bias"],
                            eps=2e-5)  # fmt: skip

    def feature(v: torch.Tensor) -> torch.Tensor:
        v = bn(F.linear(v, sd["feature.0.weight"]), "feature.1.")
        return bn(F.linear(v, sd["feature.2.weight"]), "feature.3.")

    if head == "token":
        emb, qin = feature(t[:, 1:].reshape(b, -1)), t[:, 0]
    else:
        emb = feature(t.reshape(b, -1))
        qin = emb
    q = F.linear(bn(qin, "head_qs.0."), sd["head_qs.1.weight"])
    return emb, q.squeeze(1)


@pytest.mark.parametrize("head", ["token", "full", "crfiqa"])
def test_official_checkpoint_import_matches_reference_forward(tmp_path, head: str) -> None:
    sd = official_state_dict(head)
    path = tmp_path / "model.pt"
    torch.save(sd, path)  # DataParallel `module.` prefixes, as the official evaluation loads them
    read = read_foreign_state_dict(path)
    assert "qs_token" in read or head == "crfiqa"
    ours, desc = convert_official_state_dict(read)
    assert desc["head"] == head and desc["backbone_kwargs"]["depth"] == 2
    if head != "crfiqa":
        assert "backbone.quality_token" in ours
    model = model_from_official(read)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        emb, q = model(x)
        ref_emb, ref_q = _reference_forward(sd, x, head)
    torch.testing.assert_close(emb, ref_emb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(q, ref_q, atol=1e-4, rtol=1e-4)


def test_arcface_torch_training_checkpoint_wrapper(tmp_path) -> None:
    sd = official_state_dict("token")
    torch.save({"epoch": 3, "state_dict_backbone": sd, "state_optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pt")
    model = model_from_official(read_foreign_state_dict(tmp_path / "ckpt.pt"))
    assert model.head == "token"


def test_recognition_only_vit_is_refused_for_scoring() -> None:
    sd = {k.removeprefix("module."): v for k, v in official_state_dict("crfiqa", fr_only=True).items()}
    with pytest.raises(WeightsError, match="without a quality head"):
        model_from_official(sd)


def test_unknown_keys_and_bn_variant_are_errors() -> None:
    sd = {k.removeprefix("module."): v for k, v in official_state_dict("token").items()}
    with pytest.raises(WeightsError, match="unexpected key"):
        convert_official_state_dict({**sd, "fc.weight": torch.zeros(2)})
    bn = {**sd, "blocks.0.norm1.bn.weight": torch.zeros(145)}
    with pytest.raises(WeightsError, match="BatchNorm"):
        convert_official_state_dict(bn)
