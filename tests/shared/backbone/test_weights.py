"""Weight IO: converters on synthetic checkpoints with the official key layouts, LoadReports, safety."""

from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from medvit.shared.backbone import VisionTransformer, create_backbone
from medvit.shared.backbone.weights import (
    LoadReport,
    adapt_input_conv,
    convert_checkpoint,
    detect_format,
    inspect_checkpoint,
    load_backbone,
    load_pretrained,
    load_strict,
    pickle_globals,
    read_checkpoint,
    refused_pickle_globals,
    save_backbone,
)
from medvit.shared.errors import WeightsError

D, DEPTH, HEADS = 48, 2, 2


def _block_keys(prefix: str, d: int, qkv_bias: bool = True) -> dict[str, torch.Tensor]:
    sd = {
        f"{prefix}norm1.weight": torch.randn(d),
        f"{prefix}norm1.bias": torch.randn(d),
        f"{prefix}attn.qkv.weight": torch.randn(3 * d, d),
        f"{prefix}attn.proj.weight": torch.randn(d, d),
        f"{prefix}attn.proj.bias": torch.randn(d),
        f"{prefix}norm2.weight": torch.randn(d),
        f"{prefix}norm2.bias": torch.randn(d),
        f"{prefix}mlp.fc1.weight": torch.randn(4 * d, d),
        f"{prefix}mlp.fc1.bias": torch.randn(4 * d),
        f"{prefix}mlp.fc2.weight": torch.randn(d, 4 * d),
        f"{prefix}mlp.fc2.bias": torch.randn(d),
    }
    if qkv_bias:
        sd[f"{prefix}attn.qkv.bias"] = torch.randn(3 * d)
    return sd


def mae_checkpoint(in_chans: int = 3, img: int = 32, patch: int = 8, dec: int = 32) -> dict:
    """facebookresearch/mae training checkpoint layout (``main_pretrain.py``'s ``{'model': ...}`` with decoder keys)."""
    n = (img // patch) ** 2
    model = {
        "cls_token": torch.randn(1, 1, D),
        "pos_embed": torch.randn(1, 1 + n, D),
        "patch_embed.proj.weight": torch.randn(D, in_chans, patch, patch),
        "patch_embed.proj.bias": torch.randn(D),
        "norm.weight": torch.randn(D),
        "norm.bias": torch.randn(D),
        "mask_token": torch.randn(1, 1, dec),
        "decoder_embed.weight": torch.randn(dec, D),
        "decoder_embed.bias": torch.randn(dec),
        "decoder_pos_embed": torch.randn(1, 1 + n, dec),
        "decoder_norm.weight": torch.randn(dec),
        "decoder_norm.bias": torch.randn(dec),
        "decoder_pred.weight": torch.randn(patch * patch * in_chans, dec),
        "decoder_pred.bias": torch.randn(patch * patch * in_chans),
    }
    for i in range(DEPTH):
        model.update(_block_keys(f"blocks.{i}.", D))
    model.update(_block_keys("decoder_blocks.0.", dec))
    return {"model": model, "optimizer": {}, "epoch": 3, "args": argparse.Namespace(mask_ratio=0.75, model="mae")}


def hi_end_mae_checkpoint(img: int = 32, patch: int = 8, dec: int = 24) -> dict:
    """FengheTan9/Hi-End-MAE checkpoint layout (``{'state_dict': ...}``, ``encoder.*``, ``decoder*``, ``module.``)."""
    n = (img // patch) ** 3
    sd = {
        "encoder.cls_token": torch.randn(1, 1, D),
        "encoder.patch_embed.proj.weight": torch.randn(D, 1, patch, patch, patch),
        "encoder.patch_embed.proj.bias": torch.randn(D),
        "encoder.norm.weight": torch.randn(D),
        "encoder.norm.bias": torch.randn(D),
        "encoder_pos_embed": torch.randn(1, n, D),
        "decoder_pos_embed": torch.randn(1, n, dec),
        "mask_token": torch.randn(1, 1, dec),
        "decoder.norm.weight": torch.randn(dec),
        "decoder.norm.bias": torch.randn(dec),
        "decoder.head.weight": torch.randn(patch**3, dec),
        "decoder.head.bias": torch.randn(patch**3),
    }
    for i in range(DEPTH):
        sd.update(_block_keys(f"encoder.blocks.{i}.", D))
    for j in range(4):
        sd[f"encoder_to_decoder.{j}.weight"] = torch.randn(dec, D)
        sd[f"encoder_to_decoder.{j}.bias"] = torch.randn(dec)
    for j in range(2):
        sd.update(_block_keys(f"decoder.blocks.{j}.", dec))
    for j in range(3):
        p = f"decoder.cross_attention_blocks.{j}."
        sd.update(
            {
                f"{p}norm0.weight": torch.randn(dec),
                f"{p}self_attn.qkv.weight": torch.randn(3 * dec, dec),
                f"{p}cross_attn.q.weight": torch.randn(dec, dec),
                f"{p}cross_attn.kv.weight": torch.randn(2 * dec, dec),
                f"{p}cross_attn.proj.weight": torch.randn(dec, dec),
                f"{p}mlp.fc1.weight": torch.randn(4 * dec, dec),
            }
        )
    return {"epoch": 10, "state_dict": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"state": {}}}


def _mae_model(in_chans: int = 3, img: int = 32) -> VisionTransformer:
    return VisionTransformer(img_size=img, patch_size=8, in_chans=in_chans, embed_dim=D, depth=DEPTH, num_heads=HEADS)


def _hiend_model(pos_embed_prefix: bool = False) -> VisionTransformer:
    return VisionTransformer(
        img_size=32,
        patch_size=(8, 8, 8),
        in_chans=1,
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        pos_embed="sincos",
        pos_embed_prefix=pos_embed_prefix,
    )


def test_mae_checkpoint_with_args_namespace(tmp_path: Path) -> None:
    ckpt = mae_checkpoint()
    path = tmp_path / "mae.pth"
    torch.save(ckpt, path)
    model = _mae_model()
    report = load_pretrained(model, path)
    decoder = sorted(k for k in ckpt["model"] if k.startswith("decoder_") or k == "mask_token")
    assert report == LoadReport(source_format="mae", dropped=decoder)
    torch.testing.assert_close(model.pos_embed.data, ckpt["model"]["pos_embed"])
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight.data, ckpt["model"]["blocks.1.mlp.fc2.weight"])


def test_mae_three_to_one_channel(tmp_path: Path) -> None:
    ckpt = mae_checkpoint()
    torch.save(ckpt, tmp_path / "mae.pth")
    rgb, grey = _mae_model(3).eval(), _mae_model(1).eval()
    load_pretrained(rgb, tmp_path / "mae.pth")
    report = load_pretrained(grey, tmp_path / "mae.pth")
    assert report.adapted == [("patch_embed.proj.weight", "in_chans 3 -> 1")]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        # Summing RGB filters vs convolving three equal channels: equal up to float rounding.
        grey_out, rgb_out = grey.forward_features(x), rgb.forward_features(x.expand(-1, 3, -1, -1))
        torch.testing.assert_close(grey_out, rgb_out, atol=5e-4, rtol=1e-3)


def test_adapt_input_conv_one_to_three() -> None:
    w = torch.randn(4, 1, 2, 2, 2)
    w3 = adapt_input_conv(3, w)
    assert w3.shape == (4, 3, 2, 2, 2)
    x = torch.randn(1, 1, 2, 2, 2)
    ref = torch.nn.functional.conv3d(x, w)
    torch.testing.assert_close(torch.nn.functional.conv3d(x.expand(-1, 3, -1, -1, -1), w3), ref)


def test_pos_embed_resampled_2d(tmp_path: Path) -> None:
    torch.save(mae_checkpoint(), tmp_path / "mae.pth")
    model = _mae_model(img=48)  # grid 6x6 instead of 4x4
    report = load_pretrained(model, tmp_path / "mae.pth")
    assert report.resized == [("pos_embed", (1, 17, D), (1, 37, D))]


def test_hi_end_mae_official_layout(tmp_path: Path) -> None:
    ckpt = hi_end_mae_checkpoint()
    torch.save(ckpt, tmp_path / "hi_end_mae_10k.pth")
    model = _hiend_model()
    report = load_pretrained(model, tmp_path / "hi_end_mae_10k.pth")
    sd = {k[len("module.") :]: v for k, v in ckpt["state_dict"].items()}
    dropped = sorted(k for k in sd if not k.startswith("encoder.") and k != "encoder_pos_embed")
    assert report == LoadReport(source_format="hi-end-mae", dropped=dropped)
    # Copied as a tensor, never regenerated.
    torch.testing.assert_close(model.pos_embed.data, sd["encoder_pos_embed"])
    torch.testing.assert_close(model.cls_token.data, sd["encoder.cls_token"])


def test_hi_end_mae_into_model_with_cls_slot(tmp_path: Path) -> None:
    torch.save(hi_end_mae_checkpoint(), tmp_path / "h.pth")
    model = _hiend_model(pos_embed_prefix=True)
    report = load_pretrained(model, tmp_path / "h.pth")
    assert report.adapted == [("pos_embed", "added 1 zero prefix slot(s)")]
    assert torch.all(model.pos_embed.data[:, 0] == 0)


def test_pos_embed_resampled_3d(tmp_path: Path) -> None:
    torch.save(hi_end_mae_checkpoint(), tmp_path / "h.pth")
    model = VisionTransformer(
        img_size=48,
        patch_size=(8, 8, 8),
        in_chans=1,
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        pos_embed="learn",
        pos_embed_prefix=False,
    )
    report = load_pretrained(model, tmp_path / "h.pth")
    assert report.resized == [("pos_embed", (1, 64, D), (1, 216, D))]


@pytest.mark.parametrize("proj_type", ["conv", "perceptron"])
def test_monai_vit_numerical_parity(proj_type: str, tmp_path: Path) -> None:
    """A real MONAI ViT state dict loads and gives the same features (LayerNorm eps 1e-5)."""
    from monai.networks import nets as monai_nets

    torch.manual_seed(0)
    ref = monai_nets.ViT(
        in_channels=1,
        img_size=32,
        patch_size=8,
        hidden_size=D,
        mlp_dim=4 * D,
        num_layers=DEPTH,
        num_heads=HEADS,
        proj_type=proj_type,
        pos_embed_type="learnable",
        classification=False,
        spatial_dims=3,
        qkv_bias=True,
    ).eval()
    ours = VisionTransformer(
        img_size=32,
        patch_size=(8, 8, 8),
        in_chans=1,
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        class_token=False,
        global_pool="avg",
        fc_norm=False,
        norm_eps=1e-5,
        pos_embed="learn",
        pos_embed_prefix=False,
    ).eval()
    report = load_pretrained(ours, ref.state_dict())
    assert report.source_format == "monai"
    assert report.missing == [] and report.unexpected == []
    assert all(".cross_attn." in k or "norm_cross_attn" in k for k in report.dropped)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        expected, _ = ref(x)
        got = ours.forward_features(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_monai_unetr_encoder_loads() -> None:
    from monai.networks import nets as monai_nets

    unetr = monai_nets.UNETR(
        in_channels=1,
        out_channels=3,
        img_size=(32, 32, 32),
        feature_size=8,
        hidden_size=D,
        mlp_dim=4 * D,
        num_heads=HEADS,
        proj_type="conv",
        norm_name="instance",
        qkv_bias=True,
    )
    # UNETR's ViT has 12 layers and patch 16.
    ours = VisionTransformer(
        img_size=32,
        patch_size=(16, 16, 16),
        in_chans=1,
        embed_dim=D,
        depth=12,
        num_heads=HEADS,
        class_token=False,
        global_pool="avg",
        fc_norm=False,
        norm_eps=1e-5,
        pos_embed_prefix=False,
    )
    report = load_pretrained(ours, unetr.state_dict())
    assert report.missing == [] and report.unexpected == []
    assert any(k.startswith("decoder5.") for k in report.dropped)


def test_timm_round_trip_through_our_format(tmp_path: Path) -> None:
    import timm

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    report, kwargs = convert_checkpoint(tmp_path / "timm.pth", tmp_path / "out.safetensors")
    assert report.source_format == "timm" and not report.missing and not report.unexpected
    assert kwargs["embed_dim"] == 192 and kwargs["num_heads"] == 3 and kwargs["depth"] == 12
    model, side = load_backbone(tmp_path / "out.safetensors")
    assert side["format"] == "medvit" and side["source"] == "timm"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), ref.forward_features(x), atol=1e-5, rtol=1e-5)


def test_save_load_backbone_with_metadata(tmp_path: Path) -> None:
    model = create_backbone("test_vit_3d").eval()
    path = save_backbone(model, tmp_path / "enc.safetensors", metadata={"spacing": [1.5, 1.5, 1.5]})
    side = json.loads((tmp_path / "enc.json").read_text())
    assert side["spacing"] == [1.5, 1.5, 1.5] and side["spatial_dims"] == 3
    loaded, _ = load_backbone(path)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().forward_features(x), model.forward_features(x))
    assert not list(tmp_path.glob(".*tmp*"))
    # Loading with a new head: the caller states that the head is expected to be missing.
    with pytest.raises(WeightsError, match=r"missing 2 key\(s\): head.bias, head.weight"):
        load_backbone(path, num_classes=4)
    model4, _ = load_backbone(path, num_classes=4, expected_missing=["head.*"])
    assert model4.load_report.missing == ["head.bias", "head.weight"]


def test_strict_errors_name_keys_and_shapes(tmp_path: Path) -> None:
    torch.save(mae_checkpoint(), tmp_path / "mae.pth")
    wider = VisionTransformer(img_size=32, patch_size=8, embed_dim=D, depth=DEPTH + 1, num_heads=HEADS)
    with pytest.raises(WeightsError, match=r"missing \d+ key\(s\): blocks\.2\."):
        load_pretrained(wider, tmp_path / "mae.pth")
    narrower = VisionTransformer(img_size=32, patch_size=8, embed_dim=D, depth=DEPTH, num_heads=HEADS, mlp_ratio=2)
    with pytest.raises(
        WeightsError,
        match=r"shape mismatch for blocks\.0\.mlp\.fc1\.weight: checkpoint \(192, 48\) vs model \(96, 48\)",
    ):
        load_pretrained(narrower, tmp_path / "mae.pth")
    no_cls = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        class_token=False,
        global_pool="avg",
        fc_norm=False,
    )
    with pytest.raises(WeightsError, match="unexpected 1 key"):
        load_pretrained(no_cls, tmp_path / "mae.pth")
    report = load_pretrained(no_cls, tmp_path / "mae.pth", allow_unexpected=["cls_token"])
    assert report.unexpected == ["cls_token"]
    assert report.adapted == [("pos_embed", "removed 1 prefix slot(s)")]


def test_load_strict_checks_keys_and_shapes_within_a_target() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    target = {k: v for k, v in model.state_dict().items() if k.startswith("1.")}
    sd = {"1.weight": torch.full((1, 2), 2.0, dtype=torch.float64), "1.bias": torch.ones(1)}
    before = model[0].weight.detach().clone()
    missing, unexpected = load_strict(model, sd, what="test checkpoint", target=target)
    assert (missing, unexpected) == ([], [])
    assert model[1].weight.dtype == torch.float32 and torch.equal(model[1].weight, torch.full((1, 2), 2.0))
    assert torch.equal(model[0].weight, before)  # outside the target: untouched
    with pytest.raises(WeightsError, match=r"test checkpoint does not match the model: missing 1 key\(s\): 1\.bias"):
        load_strict(model, {"1.weight": sd["1.weight"]}, what="test checkpoint", target=target)
    assert load_strict(model, {"1.weight": sd["1.weight"]}, what="x", target=target, expected_missing=["*.bias"]) == (
        ["1.bias"],
        [],
    )
    with pytest.raises(WeightsError, match=r"unexpected 1 key\(s\): extra"):
        load_strict(model, {**sd, "extra": torch.ones(1)}, what="x", target=target)
    assert load_strict(model, {**sd, "extra": torch.ones(1)}, what="x", target=target, allow_unexpected=["ex*"])[1] == [
        "extra"
    ]
    with pytest.raises(WeightsError, match=r"shape mismatch for 1\.bias: checkpoint \(2,\) vs model \(1,\)"):
        load_strict(model, {**sd, "1.bias": torch.ones(2)}, what="x", target=target)


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.target,))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(WeightsError, match="refused to unpickle"):
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "empty file"), (b"not a checkpoint at all" * 10, "not a readable PyTorch checkpoint")],
)
def test_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        read_checkpoint(path)
    with pytest.raises(WeightsError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


def test_detect_format_signatures() -> None:
    assert detect_format({"patch_embed.proj.weight": torch.zeros(1), "blocks.0.attn.qkv.weight": torch.zeros(1)}) == (
        "timm"
    )
    assert detect_format({"patch_embed.proj.weight": torch.zeros(1), "decoder_embed.weight": torch.zeros(1)}) == "mae"
    assert detect_format({"encoder_pos_embed": torch.zeros(1)}) == "hi-end-mae"
    assert detect_format({"vit.patch_embedding.position_embeddings": torch.zeros(1)}) == "monai"
    with pytest.raises(WeightsError, match="unrecognised"):
        detect_format({"conv1.weight": torch.zeros(1)})


def test_inspect_reports_architecture(tmp_path: Path) -> None:
    torch.save(hi_end_mae_checkpoint(), tmp_path / "h.pth")
    info = inspect_checkpoint(tmp_path / "h.pth")
    assert info["format"] == "hi-end-mae" and info["wrapper"] == "state_dict"
    arch = info["architecture"]
    assert arch["embed_dim"] == D and arch["depth"] == DEPTH and arch["patch_size"] == [8, 8, 8]
    assert arch["img_size"] == [32, 32, 32] and arch["pos_embed_prefix"] is False


# ------------------------------------------------------------------------------------------------ hostile files
class _System:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_code_in_a_plain_pickle_is_reported_as_refused_code(tmp_path: Path, protocol: int) -> None:
    # PyTorch's weights-only unpickler stops at the protocol-4 FRAME opcode before it sees the global, and its
    # wording changes between releases: the opcodes say what the file carries.
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": _System()}, protocol=protocol))
    assert pickle_globals(path.read_bytes()) == [f"{os.system.__module__}.system"]
    with pytest.raises(
        WeightsError, match=r"refused to unpickle: the file carries code .*\.system.*nothing from it was executed"
    ):
        read_checkpoint(path)


def test_pickled_module_names_its_class(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    with pytest.raises(WeightsError, match=r"torch\.nn\.modules\.linear\.Linear"):
        read_checkpoint(tmp_path / "whole.pt")


def test_state_dict_pickles_name_only_safe_globals(tmp_path: Path) -> None:
    torch.save(
        {"model": create_backbone("test_vit_2d").state_dict(), "args": argparse.Namespace(a=1)}, tmp_path / "ok.pt"
    )
    assert refused_pickle_globals(tmp_path / "ok.pt") == []
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04junk" * 10)
    assert refused_pickle_globals(tmp_path / "junk.pt") == []


class _PositionalNamespace:
    def __reduce__(self):  # noqa: ANN204
        return (argparse.Namespace, (1,))


def test_namespace_with_a_positional_argument_is_a_weights_error(tmp_path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(1)}, "args": _PositionalNamespace()}, tmp_path / "ns.pth")
    with pytest.raises(WeightsError, match=r"ns\.pth: not a readable PyTorch checkpoint: an object in it cannot be"):
        inspect_checkpoint(tmp_path / "ns.pth")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s["kwargs"].update(depth=1000000), r"encoder\.json: sidecar 'kwargs': architecture: depth"),
        (lambda s: s["kwargs"].update(embed_dim=1e9), "embed_dim must be an integer"),
        (lambda s: s["kwargs"].update(sneaky=True), "unknown key 'sneaky'"),
        (lambda s: s.pop("kwargs"), "has no 'kwargs'"),
        (lambda s: s.update(format_version="2"), "'format_version' must be a positive integer"),
    ],
)
def test_load_backbone_refuses_hostile_sidecars_before_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change, match: str
) -> None:
    path = save_backbone(create_backbone("test_vit_2d"), tmp_path / "encoder.safetensors")
    side = json.loads(path.with_suffix(".json").read_text())
    change(side)
    path.with_suffix(".json").write_text(json.dumps(side))

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was built")

    monkeypatch.setattr(VisionTransformer, "__init__", refuse)
    with pytest.raises(WeightsError, match=match):
        load_backbone(path)


def test_load_backbone_overrides_are_checked(tmp_path: Path) -> None:
    from medvit.shared.errors import ConfigError

    path = save_backbone(create_backbone("test_vit_2d"), tmp_path / "encoder.safetensors")
    with pytest.raises(ConfigError, match="unknown key 'drop_pth_rate'"):
        load_backbone(path, drop_pth_rate=0.1)
    with pytest.raises(WeightsError, match="with the override"):
        load_backbone(path, num_heads=3)  # 32 is not divisible by 3
