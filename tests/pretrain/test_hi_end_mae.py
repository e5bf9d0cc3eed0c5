"""Hi-End-MAE: tap wiring, decoder input layout, equivalence with the official algorithm, official import."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medvit.pretrain.hi_end_mae import CrossAttention, HiEndMAE, hiend_taps, load_official_hi_end_mae
from medvit.pretrain.mae import MAE, patchify
from medvit.pretrain.presets import build_model, get_preset
from medvit.shared.backbone.registry import create_backbone
from medvit.shared.engine.optim import build_param_groups
from medvit.shared.errors import WeightsError

DEC, DEC_HEADS = 24, 2


def _model12() -> HiEndMAE:
    """12-block encoder (48 wide, 32^3 input, 8^3 patches -> 64 tokens), so the default taps are (3, 6, 9)."""
    torch.manual_seed(0)
    enc = create_backbone("test_vit_3d", depth=12)
    return HiEndMAE(enc, decoder_embed_dim=DEC, decoder_num_heads=DEC_HEADS).eval()


def _x(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, size, generator=torch.Generator().manual_seed(7))


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(11)


@pytest.mark.parametrize(
    ("depth", "n", "taps"), [(12, 3, (3, 6, 9)), (24, 3, (6, 12, 18)), (4, 3, (1, 2, 3)), (8, 1, (4,))]
)
def test_hiend_taps_scale_with_depth(depth: int, n: int, taps: tuple[int, ...]) -> None:
    assert hiend_taps(depth, n) == taps


def test_cross_attention_equals_softmax_reference() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(12, 3).eval()
    x, ctx = torch.randn(2, 5, 12), torch.randn(2, 7, 12)
    q = attn.q(x).reshape(2, 5, 3, 4).transpose(1, 2)
    k, v = attn.kv(ctx).reshape(2, 7, 2, 3, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1)  # scale 1/sqrt(head_dim = 4)
    ref = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x, ctx), ref)
    assert [n for n, _ in attn.named_parameters()] == [
        "q.weight",
        "q.bias",
        "kv.weight",
        "kv.bias",
        "proj.weight",
        "proj.bias",
    ]
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        CrossAttention(10, 3)


def test_hiend_taps_errors() -> None:
    with pytest.raises(ValueError):
        hiend_taps(2, 3)
    enc = create_backbone("test_vit_3d")
    with pytest.raises(ValueError, match="taps"):
        HiEndMAE(enc, decoder_embed_dim=DEC, decoder_num_heads=DEC_HEADS, taps=(1, 1))


def test_cross_attention_contexts_are_projected_raw_taps_deep_to_shallow() -> None:
    model = _model12()
    assert model.taps == (3, 6, 9)
    raw: dict[int, torch.Tensor] = {}
    for i, blk in enumerate(model.encoder.blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(i, o.detach()))
    contexts: list[torch.Tensor] = []
    for blk in model.decoder.cross_attention_blocks:
        blk.register_forward_pre_hook(lambda m, a: contexts.append(a[1].detach()))
    with torch.no_grad():
        model(_x(), generator=_gen())
    assert len(contexts) == 3
    p = model.encoder_to_decoder
    for j, (tap, proj) in enumerate([(9, p[2]), (6, p[1]), (3, p[0])]):
        torch.testing.assert_close(contexts[j], proj(raw[tap]))  # raw block output incl. cls, projected
        # not the layer-normed output, and not any other block
        assert not torch.allclose(contexts[j], proj(model.encoder.norm(raw[tap])), atol=1e-3)
        others = [t for t in range(12) if t != tap]
        assert all(not torch.allclose(contexts[j], proj(raw[t]), atol=1e-3) for t in others)
    assert contexts[0].shape == (2, 1 + 16, DEC)  # cls + 16 visible tokens, no mask tokens


@pytest.mark.parametrize(("block", "cross_index"), [(3, 2), (6, 1), (9, 0)])
def test_perturbing_a_tapped_block_reaches_the_decoder_only_through_its_tap(block: int, cross_index: int) -> None:
    """Noise on block ``block``'s output, with the next encoder block fed the clean value.

    The encoder's final output stays identical, so the perturbation can reach the decoder only through the tap:
    the cross-attention blocks before the one consuming it are unchanged, that one and all after it change.
    """
    model = _model12()
    clean: dict[str, torch.Tensor] = {}
    cross_out: dict[int, torch.Tensor] = {}
    for j, blk in enumerate(model.decoder.cross_attention_blocks):
        blk.register_forward_hook(lambda m, a, o, j=j: cross_out.__setitem__(j, o.detach()))
    final_out: list[torch.Tensor] = []
    model.encoder.norm.register_forward_hook(lambda m, a, o: final_out.append(o.detach()))

    h1 = model.encoder.blocks[block].register_forward_hook(lambda m, a, o: clean.__setitem__("tap", o.detach()))
    with torch.no_grad():
        ref = model(_x(), generator=_gen())["pred"]
    ref_cross = dict(cross_out)
    h1.remove()

    noise = torch.randn_like(clean["tap"]) * 0.5
    model.encoder.blocks[block].register_forward_hook(lambda m, a, o: o + noise)
    model.encoder.blocks[block + 1].register_forward_pre_hook(lambda m, a: (clean["tap"],))
    with torch.no_grad():
        out = model(_x(), generator=_gen())["pred"]

    torch.testing.assert_close(final_out[1], final_out[0])  # encoder output untouched
    for j in range(3):
        if j < cross_index:
            torch.testing.assert_close(cross_out[j], ref_cross[j])
        else:
            assert (cross_out[j] - ref_cross[j]).abs().max() > 1e-3, f"cross block {j} did not see block {block}"
    assert (out - ref).abs().max() > 1e-3


def test_decoder_input_layout_shuffled_order_with_gathered_pos_embed() -> None:
    model = _model12()
    captured: dict[str, torch.Tensor] = {}
    model.decoder.register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0].detach()))
    model.encoder.norm.register_forward_hook(lambda m, a, o: captured.__setitem__("z", o.detach()))
    with torch.no_grad():
        out = model(_x(), generator=_gen())
    x, z = captured["x"], captured["z"]
    mask = out["mask"]
    keep = 16
    assert x.shape == (2, 1 + 64, DEC)
    # recover the masking of this call
    from medvit.pretrain.mae import random_masking

    ids_keep, mask2, ids_restore = random_masking(2, 64, 0.75, "cpu", _gen())
    assert torch.equal(mask, mask2)
    ids_shuffle = torch.argsort(ids_restore, 1)
    pe = model.decoder_pos_embed[0]
    proj = model.encoder_to_decoder[3](z)
    torch.testing.assert_close(x[:, 0], proj[:, 0])  # cls: no decoder position embedding
    for b in range(2):
        torch.testing.assert_close(x[b, 1 : 1 + keep], proj[b, 1:] + pe[ids_shuffle[b, :keep]])
        torch.testing.assert_close(x[b, 1 + keep :], model.mask_token[0].expand(48, -1) + pe[ids_shuffle[b, keep:]])


def _official_forward_loss(model: HiEndMAE, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The official ``HiEndMAE.forward`` written out (shuffled order, loss on the last msk_length tokens)."""
    b = x.shape[0]
    patches = patchify(x, model.patch_size)
    length = patches.shape[1]
    sel = int(length * (1 - model.mask_ratio))
    shuffle = torch.argsort(torch.rand(b, length, generator=gen), dim=1)
    shuffled = patches.gather(1, shuffle[:, :, None].expand(-1, -1, patches.shape[-1]))
    enc = model.encoder
    tokens, _ = enc.patch_embed(x)
    tokens = tokens + enc.pos_embed  # encoder_pos_embed, no cls slot
    sel_tokens = tokens.gather(1, shuffle[:, :sel, None].expand(-1, -1, tokens.shape[-1]))
    h = torch.cat([enc.cls_token.expand(b, -1, -1), sel_tokens], 1)
    hidden = []
    for blk in enc.blocks:
        h = blk(h)
        hidden.append(h)
    h = enc.norm(h)
    dd = model.decoder_embed_dim
    all_x = torch.cat([model.encoder_to_decoder[3](h), model.mask_token.expand(b, length - sel, -1)], 1)
    pos = model.decoder_pos_embed.expand(b, -1, -1).gather(1, shuffle[:, :, None].expand(-1, -1, dd))
    all_x[:, 1:] += pos
    e = {i: model.encoder_to_decoder[k](hidden[i]) for k, i in enumerate((3, 6, 9))}
    dec = model.decoder
    for blk in dec.blocks:
        all_x = blk(all_x)
    for blk, i in zip(dec.cross_attention_blocks, (9, 6, 3), strict=True):
        all_x = blk(all_x, e[i])
    all_x = dec.head(dec.norm(all_x))
    patch_norm = nn.LayerNorm(patches.shape[-1], eps=1e-6, elementwise_affine=False)
    return F.mse_loss(all_x[:, -(length - sel) :], patch_norm(shuffled[:, sel:]))


def test_loss_equals_the_official_algorithm() -> None:
    model = _model12()
    x = _x()
    with torch.no_grad():
        ours = model(x, generator=_gen())["loss"]
        official = _official_forward_loss(model, x, _gen())
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-6)


CROSS_KEYS = {
    "norm0",
    "self_attn.qkv",
    "self_attn.proj",
    "norm1",
    "cross_attn.q",
    "cross_attn.kv",
    "cross_attn.proj",
    "norm2",
    "mlp.fc1",
    "mlp.fc2",
}


def test_state_dict_key_layout() -> None:
    sd = _model12().state_dict()
    tops = {k.split(".")[0] for k in sd}
    assert tops == {"encoder", "encoder_to_decoder", "mask_token", "decoder_pos_embed", "decoder"}
    cross = {k.split(".", 3)[3].rsplit(".", 1)[0] for k in sd if k.startswith("decoder.cross_attention_blocks.0.")}
    assert cross == CROSS_KEYS
    assert {k.split(".")[1] for k in sd if k.startswith("decoder.")} == {
        "blocks",
        "cross_attention_blocks",
        "norm",
        "head",
    }
    assert sd["decoder_pos_embed"].shape == (1, 64, DEC)
    assert sd["decoder.head.weight"].shape == (512, DEC)
    assert sd["encoder_to_decoder.3.weight"].shape == (DEC, 48)


def _official_state_dict(
    d: int, depth: int, dd: int, patch: int, grid: int, in_chans: int = 1, gen: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Key names and shapes of the official Hi-End-MAE checkpoint, written out independently of our modules."""
    n = grid**3
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.cls_token": (1, 1, d),
        "encoder.patch_embed.proj.weight": (d, in_chans, patch, patch, patch),
        "encoder.patch_embed.proj.bias": (d,),
        "encoder.norm.weight": (d,),
        "encoder.norm.bias": (d,),
        "encoder_pos_embed": (1, n, d),
        "decoder_pos_embed": (1, n, dd),
        "mask_token": (1, 1, dd),
        "decoder.norm.weight": (dd,),
        "decoder.norm.bias": (dd,),
        "decoder.head.weight": (patch**3 * in_chans, dd),
        "decoder.head.bias": (patch**3 * in_chans,),
    }

    def block(prefix: str, w: int) -> None:
        for ln in ("norm1", "norm2"):
            shapes[f"{prefix}.{ln}.weight"] = (w,)
            shapes[f"{prefix}.{ln}.bias"] = (w,)
        shapes[f"{prefix}.attn.qkv.weight"] = (3 * w, w)
        shapes[f"{prefix}.attn.qkv.bias"] = (3 * w,)
        shapes[f"{prefix}.attn.proj.weight"] = (w, w)
        shapes[f"{prefix}.attn.proj.bias"] = (w,)
        shapes[f"{prefix}.mlp.fc1.weight"] = (4 * w, w)
        shapes[f"{prefix}.mlp.fc1.bias"] = (4 * w,)
        shapes[f"{prefix}.mlp.fc2.weight"] = (w, 4 * w)
        shapes[f"{prefix}.mlp.fc2.bias"] = (w,)

    for i in range(depth):
        block(f"encoder.blocks.{i}", d)
    for i in range(4):
        shapes[f"encoder_to_decoder.{i}.weight"] = (dd, d)
        shapes[f"encoder_to_decoder.{i}.bias"] = (dd,)
    for i in range(2):
        block(f"decoder.blocks.{i}", dd)
    for i in range(3):
        p = f"decoder.cross_attention_blocks.{i}"
        for ln in ("norm0", "norm1", "norm2"):
            shapes[f"{p}.{ln}.weight"] = (dd,)
            shapes[f"{p}.{ln}.bias"] = (dd,)
        for name, shape in {
            "self_attn.qkv": (3 * dd, dd),
            "self_attn.proj": (dd, dd),
            "cross_attn.q": (dd, dd),
            "cross_attn.kv": (2 * dd, dd),
            "cross_attn.proj": (dd, dd),
            "mlp.fc1": (4 * dd, dd),
            "mlp.fc2": (dd, 4 * dd),
        }.items():
            shapes[f"{p}.{name}.weight"] = shape
            shapes[f"{p}.{name}.bias"] = (shape[0],)
    gen = gen or torch.Generator().manual_seed(5)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_official_checkpoint_file_loads_completely(tmp_path: Path) -> None:
    model = _model12()  # d 48, depth 12, decoder 24, patch 8, grid 4
    sd = _official_state_dict(48, 12, DEC, 8, 4)
    path = tmp_path / "hi_end_mae_10k.pth"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}, "scaler": {}}, path
    )
    report = load_official_hi_end_mae(model, path)
    assert report.missing == [] and report.unexpected == []
    assert report.resized == []
    msd = model.state_dict()
    torch.testing.assert_close(msd["encoder.pos_embed"], sd["encoder_pos_embed"])
    for k, v in sd.items():
        if k != "encoder_pos_embed":
            torch.testing.assert_close(msd[k], v, msg=k)
    # and it still runs
    assert torch.isfinite(model(_x())["loss"])


def test_official_import_rejects_mismatches() -> None:
    sd = _official_state_dict(48, 12, DEC, 8, 4)
    bad = dict(sd)
    bad["decoder.cross_attention_blocks.0.cross_attn.kv_renamed.weight"] = bad.pop(
        "decoder.cross_attention_blocks.0.cross_attn.kv.weight"
    )
    with pytest.raises(WeightsError, match="kv"):
        load_official_hi_end_mae(_model12(), bad)
    wrong = dict(sd)
    wrong["decoder.head.weight"] = torch.zeros(100, DEC)
    with pytest.raises(WeightsError, match="decoder.head.weight"):
        load_official_hi_end_mae(_model12(), wrong)
    with pytest.raises(WeightsError, match="encoder"):
        load_official_hi_end_mae(_model12(), {"mask_token": torch.zeros(1, 1, DEC)})


def test_weight_decay_excludes_tokens_biases_norms() -> None:
    """Deviation from the official code: decay only on >= 2-D weights that are not tokens/position tables."""
    model = build_model(get_preset("hi-end-mae", "tiny"))
    groups = build_param_groups(model, 0.05)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert "encoder_to_decoder.0.weight" in decayed
    assert "decoder.cross_attention_blocks.0.cross_attn.kv.weight" in decayed
    for name in ("mask_token", "encoder.cls_token", "encoder_to_decoder.0.bias", "decoder.norm.weight"):
        assert name not in decayed
    names = {n for g in groups for n in g["param_names"]}
    assert "decoder_pos_embed" not in names and "encoder.pos_embed" not in names  # fixed, not trained


def _ct_like_crops(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth CT-like crops in [0, 1]: a body ellipse with a few organ spheres of different intensity."""
    g = torch.Generator().manual_seed(seed)
    z = torch.linspace(-1, 1, size)
    zz, yy, xx = torch.meshgrid(z, z, z, indexing="ij")
    body = (xx / 0.9) ** 2 + (yy / 0.7) ** 2 < 1
    vols = []
    for _ in range(batch):
        v = torch.where(body, 0.45, 0.0)
        for _ in range(5):
            c = torch.rand(3, generator=g) * 1.2 - 0.6
            r = 0.15 + 0.25 * torch.rand(1, generator=g)
            inside = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r**2
            v = torch.where(inside & body, torch.rand(1, generator=g), v)
        vols.append(v)
    return F.avg_pool3d(torch.stack(vols)[:, None], 3, 1, 1)


@pytest.mark.parametrize("method", ["hi-end-mae", "mae"])
def test_tiny_preset_overfits_one_batch(method: str) -> None:
    torch.manual_seed(0)
    preset = get_preset(method, "tiny")
    model = build_model(preset)
    assert isinstance(model, HiEndMAE if method == "hi-end-mae" else MAE)
    x = _ct_like_crops(4, preset.crop_size[0])
    # The preset is "tiny" by its arithmetic, not by a wall-clock time (which a loaded machine would fail): one
    # forward+backward on the batch stays under 2 GFLOP, i.e. seconds for the 50 steps on 2 CPU cores.
    with FlopCounterMode(display=False) as flops:
        model(x, generator=torch.Generator().manual_seed(0))["loss"].backward()
    assert flops.get_total_flops() < 2e9
    model.zero_grad(set_to_none=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(50):
        out = model(x, generator=torch.Generator().manual_seed(0))  # one batch: same crops, same mask
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] <= 0.5 * losses[0], losses[::10]
