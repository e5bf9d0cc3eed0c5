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

from .conftest import official_state_dict, reference_forward


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


@pytest.mark.parametrize("head", ["token", "full", "crfiqa"])
def test_official_checkpoint_import_matchesreference_forward(tmp_path, head: str) -> None:
    sd = official_state_dict(head)
    path = tmp_path / "model.pt"
    torch.save(sd, path)  # DataParallel `module.` prefixes, as the official evaluation loads them
    read = read_foreign_state_dict(path)
    assert "qs_token" in read or head == "crfiqa"
    ours, desc = convert_official_state_dict(read, num_heads=8)
    assert desc["head"] == head and desc["backbone_kwargs"]["depth"] == 2
    if head != "crfiqa":
        assert "backbone.quality_token" in ours
    model = model_from_official(read, num_heads=8)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        emb, q = model(x)
        ref_emb, ref_q = reference_forward(sd, x, head)
    torch.testing.assert_close(emb, ref_emb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(q, ref_q, atol=1e-4, rtol=1e-4)


def test_arcface_torch_training_checkpoint_wrapper(tmp_path) -> None:
    sd = official_state_dict("token")
    torch.save({"epoch": 3, "state_dict_backbone": sd, "state_optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pt")
    model = model_from_official(read_foreign_state_dict(tmp_path / "ckpt.pt"), num_heads=8)
    assert model.head == "token"


def test_recognition_only_vit_is_refused_for_scoring() -> None:
    sd = {k.removeprefix("module."): v for k, v in official_state_dict("crfiqa", fr_only=True).items()}
    with pytest.raises(WeightsError, match="without a quality head"):
        model_from_official(sd, num_heads=8)


def test_unknown_keys_and_bn_variant_are_errors() -> None:
    sd = {k.removeprefix("module."): v for k, v in official_state_dict("token").items()}
    with pytest.raises(WeightsError, match="unexpected key"):
        convert_official_state_dict({**sd, "fc.weight": torch.zeros(2)})
    bn = {**sd, "blocks.0.norm1.bn.weight": torch.zeros(145)}
    with pytest.raises(WeightsError, match="BatchNorm"):
        convert_official_state_dict(bn)


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in sd.items()}


@pytest.mark.parametrize("where", ["given", "json beside", "config inside"])
def test_head_count_comes_from_the_caller_or_the_checkpoint(tmp_path, where: str) -> None:
    """A 4-head face ViT: the head count is given, or read from model.json / a config saved in the checkpoint."""
    from medvit.apps.fiqa.model import read_foreign_checkpoint

    sd = official_state_dict("token")  # width 32: 4 heads of 8 channels fit as well as 8 heads of 4
    # Sharper attention than the fixture's near-uniform one, so that the head split visibly matters.
    sd = {k: v * 10 if k.endswith("attn.qkv.weight") else v for k, v in sd.items()}
    path = tmp_path / "model.pt"
    torch.save({"state_dict": sd, "config": {"num_heads": 4}} if where == "config inside" else sd, path)
    if where == "json beside":
        path.with_suffix(".json").write_text(json.dumps({"num_heads": 4}))
    read, config = read_foreign_checkpoint(path)
    model = model_from_official(read, num_heads=4 if where == "given" else None, config=config)
    assert model.backbone.num_heads == 4
    assert model.num_heads_source == ("given" if where == "given" else "checkpoint config")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        emb, q = model(x)
        ref_emb, ref_q = reference_forward(sd, x, "token", heads=4)
        wrong_emb, _ = reference_forward(sd, x, "token", heads=8)
    torch.testing.assert_close(emb, ref_emb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(q, ref_q, atol=1e-4, rtol=1e-4)
    assert (emb - wrong_emb).abs().max() > 0.1  # the count matters: 8 heads would be silently wrong


def test_unknown_head_count_is_refused_not_guessed() -> None:
    """Width 32, depth 2 is no published architecture: nothing says how many heads it has."""
    sd = _strip(official_state_dict("token"))
    with pytest.raises(WeightsError, match=r"cannot tell the attention head count.*--set num_heads=N"):
        convert_official_state_dict(sd)
    with pytest.raises(WeightsError, match="does not divide the width 32"):
        convert_official_state_dict(sd, num_heads=5)


def test_published_shape_assumes_8_heads_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """arcface_torch vit_t (width 256, depth 12, patch 9): 8 heads, logged as an assumption and recorded."""
    shapes = {k: tuple(v.shape) for k, v in _strip(official_state_dict("token", depth=1, d=4)).items()}

    def grow(shape: tuple[int, ...]) -> tuple[int, ...]:  # width 4 -> 256 (144 * width inputs for feature.0)
        return tuple(s * 64 if s in (4, 16, 4 * 144) else s for s in shape)

    sd = {k: torch.empty(grow(s), device="meta") for k, s in shapes.items()}  # shapes only: nothing allocated
    blocks = {k: v for k, v in sd.items() if k.startswith("blocks.0.")}
    sd |= {k.replace("blocks.0.", f"blocks.{i}."): v for i in range(1, 12) for k, v in blocks.items()}
    with caplog.at_level("WARNING", logger="medvit.apps.fiqa.model"):
        _, desc = convert_official_state_dict(sd)
    assert desc["backbone_kwargs"]["embed_dim"] == 256 and desc["backbone_kwargs"]["num_heads"] == 8
    assert desc["num_heads_source"] == "assumed: arcface_torch vit_t has 8"
    assert "does not record its attention head count" in caplog.text and "--set num_heads=N" in caplog.text
