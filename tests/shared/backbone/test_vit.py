"""Backbone contract tests, parametrized over the registry (timm ``test_models.py`` style)."""

from __future__ import annotations

import math

import pytest
import torch

from medvit.shared.backbone import (
    VisionTransformer,
    backbone_kwargs,
    create_backbone,
    evenly_spaced_taps,
    list_backbones,
    take_indices,
)
from medvit.shared.backbone.pos_embed import resample_pos_embed, sincos_pos_embed_2d, sincos_pos_embed_3d

TINY = list_backbones("test_*")


def _input(model: VisionTransformer, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, model.patch_embed.proj.in_channels, *model.patch_embed.img_size)


def _param_count(name: str) -> int:
    kw = backbone_kwargs(name)
    d, depth = kw["embed_dim"], kw["depth"]
    return int(12 * d * d * depth)


SMALL_ENOUGH = [n for n in list_backbones() if _param_count(n) < 30e6]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_shapes(name: str) -> None:
    model = create_backbone(name, num_classes=5, global_pool="avg")
    x = _input(model)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert model.patch_embed.proj.weight.grad is not None
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_prefix_tokens + model.patch_embed.num_patches, model.embed_dim)


@pytest.mark.parametrize("name", SMALL_ENOUGH)
def test_registered_models_build_and_run(name: str) -> None:
    """Every registered model small enough for CPU builds and runs one sample at its native size."""
    model = create_backbone(name).eval()
    with torch.no_grad():
        feats = model.forward_features(_input(model, batch=1))
    assert feats.shape[1] == model.num_prefix_tokens + model.patch_embed.num_patches
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("name", TINY)
def test_forward_intermediates_final_equals_forward_features(name: str) -> None:
    model = create_backbone(name).eval()
    x = _input(model)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        feats = model.forward_features(x)
    torch.testing.assert_close(final, feats)
    assert len(inter) == len(model.blocks)
    # The last raw intermediate, normed, is the final output's patch part.
    torch.testing.assert_close(model.norm(inter[-1]), feats[:, model.num_prefix_tokens :])


def test_index_semantics() -> None:
    assert take_indices(4, None) == ([0, 1, 2, 3], 3)
    assert take_indices(4, 2) == ([2, 3], 3)
    assert take_indices(4, [-1, 0]) == ([0, 3], 3)
    assert take_indices(12, (2, 5, 8, 11))[0] == [2, 5, 8, 11]
    for bad in (5, [4], [-5], 0):
        with pytest.raises(IndexError):
            take_indices(4, bad)
    model = create_backbone("test_vit_2d").eval()
    x = _input(model)
    with torch.no_grad():
        _, all_inter = model.forward_intermediates(x)
        _, last2 = model.forward_intermediates(x, indices=2)
        _, neg = model.forward_intermediates(x, indices=[-1])
    torch.testing.assert_close(last2[0], all_inter[2])
    torch.testing.assert_close(neg[0], all_inter[3])
    with pytest.raises(IndexError):
        model.forward_intermediates(x, indices=[7])


def test_spatial_output_and_prefix_tokens() -> None:
    model = create_backbone("test_vit_3d").eval()
    x = torch.randn(1, 1, 32, 48, 40)  # non-cubic input: grid 4 x 6 x 5
    with torch.no_grad():
        _, inter = model.forward_intermediates(x, indices=[1, 3], output_fmt="spatial", return_prefix_tokens=True)
    spatial, prefix = inter[0]
    assert spatial.shape == (1, 48, 4, 6, 5)
    assert prefix.shape == (1, 1, 48)
    with pytest.raises(ValueError, match="keep"):
        model.forward_intermediates(x, output_fmt="spatial", keep=torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("name", ["test_vit_2d", "test_vit_3d", "test_vit_fiqa"])
def test_keep_equals_manual_gather(name: str) -> None:
    model = create_backbone(name).eval()
    x = _input(model)
    n = model.patch_embed.num_patches
    ids_keep = torch.stack([torch.randperm(n)[: n // 4] for _ in range(2)])
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, keep=ids_keep)
        tokens, _ = model.embed(x)
        p = model.num_prefix_tokens
        gathered = torch.cat(
            [tokens[:, :p], torch.stack([tokens[b, p:][ids_keep[b]] for b in range(2)])],
            dim=1,
        )
        manual = gathered
        for blk in model.blocks:
            manual = blk(manual)
        manual = model.norm(manual)
    assert final.shape == (2, p + n // 4, model.embed_dim)
    torch.testing.assert_close(final, manual)
    torch.testing.assert_close(model.forward_features(x, keep=ids_keep), final)


@pytest.mark.parametrize("name", ["test_vit_2d", "test_vit_3d"])
def test_grad_checkpointing_same_output_and_grads(name: str) -> None:
    model = create_backbone(name).train()
    x = _input(model)
    out_ref = model.forward_features(x)
    out_ref.square().mean().backward()
    grad_ref = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model.forward_features(x)
    out_ckpt.square().mean().backward()
    torch.testing.assert_close(out_ckpt, out_ref)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight.grad, grad_ref)


GOLDEN_KEYS = {
    # (first keys, per-block suffixes) for the standard layouts: timm vocabulary.
    "vit_small_patch16_224": ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"],
    "vit_base_patch16_3d": ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"],
    "vit_fiqa_small_patch9_112": ["quality_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"],
}
BLOCK_SUFFIXES_BIAS = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
]


@pytest.mark.parametrize("name", sorted(GOLDEN_KEYS))
def test_golden_state_dict_keys(name: str) -> None:
    kw = backbone_kwargs(name)
    # Build on the meta device: only the key layout matters here.
    with torch.device("meta"):
        model = create_backbone(name)
    suffixes = [s for s in BLOCK_SUFFIXES_BIAS if kw.get("qkv_bias", True) or s != "attn.qkv.bias"]
    expected = list(GOLDEN_KEYS[name])
    for i in range(kw["depth"]):
        expected += [f"blocks.{i}.{s}" for s in suffixes]
    expected += ["norm.weight", "norm.bias"]
    assert list(model.state_dict().keys()) == expected


def test_parity_with_timm_vit_small() -> None:
    import timm  # a hard dependency: a broken import fails this parity test, never skips it

    ref = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=7).eval()
    ours = create_backbone("vit_small_patch16_224", num_classes=7).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff_logits = (ref(x) - ours(x)).abs().max().item()
        diff_feats = (ref.forward_features(x) - ours.forward_features(x)).abs().max().item()
    assert diff_logits <= 1e-5
    assert diff_feats <= 1e-5


def test_layer_id_and_no_weight_decay() -> None:
    model = create_backbone("test_vit_fiqa")
    depth = len(model.blocks)
    assert model.layer_id("patch_embed.proj.weight") == 0
    assert model.layer_id("pos_embed") == 0
    assert model.layer_id("quality_token") == 0
    assert model.layer_id("blocks.0.attn.qkv.weight") == 1
    assert model.layer_id(f"blocks.{depth - 1}.mlp.fc2.bias") == depth
    assert model.layer_id("norm.weight") == depth + 1
    assert {"pos_embed", "quality_token"} <= model.no_weight_decay()
    names = {n for n, _ in model.named_parameters()}
    assert "quality_token" in names and "cls_token" not in names


def test_fiqa_geometry() -> None:
    with torch.device("meta"):
        model = create_backbone("vit_fiqa_small_patch9_112")
    assert model.patch_embed.grid_size == (12, 12)  # 112 // 9: the conv drops the last 4 px
    assert model.pos_embed.shape == (1, 145, 512)
    assert model.prefix_token_names() == ["quality"]
    assert isinstance(model.blocks[0].mlp.act, torch.nn.ReLU6)
    assert model.blocks[0].attn.qkv.bias is None


def test_hiend_encoder_geometry() -> None:
    with torch.device("meta"):
        model = create_backbone("vit_hiend_large_patch12_3d")
    assert model.patch_embed.grid_size == (8, 8, 8)
    assert model.pos_embed.shape == (1, 512, 1536)
    assert not model.pos_embed.requires_grad
    assert model.patch_embed.proj.weight.shape == (1536, 1, 12, 12, 12)


def test_sincos_layouts() -> None:
    emb2 = sincos_pos_embed_2d(8, (2, 3))  # [6, 8]; first half encodes the column
    assert emb2.shape == (6, 8)
    # Tokens in the same column (row-major index 0 and 3) share the first half.
    torch.testing.assert_close(emb2[0, :4], emb2[3, :4])
    assert not torch.allclose(emb2[0, 4:], emb2[3, 4:])
    emb3 = sincos_pos_embed_3d(12, (2, 2, 2))
    # Channels [0:4] depend on h only: tokens 0 (h0) and 1 (h0, d1) agree there.
    torch.testing.assert_close(emb3[0, :4], emb3[1, :4])
    # Position 0 encodes sin(0)=0, cos(0)=1 in each axis block.
    torch.testing.assert_close(emb3[0], torch.tensor([0, 0, 1, 1] * 3, dtype=torch.float32))
    padded = sincos_pos_embed_3d(8, (2, 2, 2))  # 8 not divisible by 6: 2 zero channels
    assert padded.shape == (8, 8) and torch.all(padded[:, 6:] == 0)


@pytest.mark.parametrize(("nd", "old", "new"), [(2, (4, 4), (6, 5)), (3, (2, 2, 2), (4, 3, 2))])
def test_resample_pos_embed(nd: int, old: tuple[int, ...], new: tuple[int, ...]) -> None:
    pe = torch.randn(1, 1 + math.prod(old), 16)
    out = resample_pos_embed(pe, new, old, num_prefix_tokens=1)
    assert out.shape == (1, 1 + math.prod(new), 16)
    torch.testing.assert_close(out[:, :1], pe[:, :1])
    const = torch.ones(1, math.prod(old), 16)
    torch.testing.assert_close(resample_pos_embed(const, new, old), torch.ones(1, math.prod(new), 16))


def test_dynamic_input_sizes() -> None:
    model = create_backbone("test_vit_2d").eval()  # learned pos embed, trained at 32 px
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 48, 40))
    assert out.shape == (1, 1 + 6 * 5, 32)
    fixed = create_backbone("test_vit_2d", dynamic_img_size=False)
    with pytest.raises(ValueError, match="dynamic_img_size"):
        fixed.forward_features(torch.randn(1, 3, 48, 40))
    with pytest.raises(ValueError, match="3D input"):
        create_backbone("test_vit_3d").forward_features(torch.randn(1, 1, 32, 32))


def test_evenly_spaced_taps() -> None:
    assert evenly_spaced_taps(12, 4) == (2, 5, 8, 11)
    for depth in (12, 24, 32):
        taps = evenly_spaced_taps(depth, 4)
        assert len(taps) == 4 and taps[-1] == depth - 1 and list(taps) == sorted(set(taps))
    with pytest.raises(ValueError):
        evenly_spaced_taps(3, 4)


def test_prefix_tokens_order_and_registers() -> None:
    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, extra_tokens=("quality",), reg_tokens=2
    )
    assert model.prefix_token_names() == ["cls", "quality", "reg0", "reg1"]
    tokens, grid = model.embed(torch.randn(1, 3, 32, 32))
    assert tokens.shape == (1, 4 + 16, 32) and grid == (4, 4)


def test_unknown_backbone_is_a_clear_error() -> None:
    from medvit.shared.errors import WeightsError

    with pytest.raises(WeightsError, match="unknown backbone"):
        create_backbone("vit_gigantic_patch3")
