"""The GGViT-style network: the global embedding reaches every part stream, the fusion weights, region crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvit.apps.deepfake.model import DeepfakeLoss, build_model, region_boxes, region_crops

TEMPLATE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
SIZE = 96


def _spec(**kw: object) -> dict:
    spec = {
        "backbone": "test_vit_2d",
        "backbone_overrides": {"patch_size": 8, "depth": 2},
        "global_size": 32,
        "region_size": 16,
        "regions": ["eyes", "nose", "mouth", "contour"],
        "shared_streams": True,
        "guide": "tokens",
        "quality_hidden": 16,
    }
    return {**spec, **kw}


def _inputs(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, SIZE, SIZE, generator=g)
    # a small face in the middle of the crop: landmarks at 0.55 x the template, centred
    lm = (TEMPLATE_112 - 56) * 0.55 * SIZE / 112 + SIZE / 2
    return x, lm[None].repeat(b, 1, 1)


def _outside_regions_mask(lm: torch.Tensor, regions: list[str]) -> torch.Tensor:
    """[H, W] True where no region box of sample 0 reaches (with a 2 px guard for bilinear sampling)."""
    boxes = region_boxes(lm[:1], regions)[0]
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    for cx, cy, half in boxes:
        inside |= ((xs - cx).abs() <= half + 2) & ((ys - cy).abs() <= half + 2)
    return ~inside


@pytest.mark.parametrize(("guide", "shared"), [("tokens", True), ("tokens", False), ("pooled", True)])
def test_global_embedding_reaches_every_stream(guide: str, shared: bool) -> None:
    torch.manual_seed(0)
    spec = _spec(guide=guide, shared_streams=shared)
    model = build_model(spec).eval()
    x, lm = _inputs()
    outside = _outside_regions_mask(lm, spec["regions"])
    assert outside.float().mean() > 0.1  # the perturbation has room outside every region
    x2 = x.clone()
    x2[:, :, outside] += 3.0  # changes the whole face as the global stream sees it, no pixel of any region
    boxes = region_boxes(lm, spec["regions"])
    assert torch.equal(region_crops(x, boxes, 16), region_crops(x2, boxes, 16))  # regions unchanged
    with torch.no_grad():
        a, b = model(x, lm), model(x2, lm)
    assert not torch.allclose(a["embedding"], b["embedding"])
    change = (a["stream_logits"] - b["stream_logits"]).abs()[:, 1:]  # the K part streams
    assert (change > 1e-6).all(), change


def test_without_guidance_the_part_streams_do_not_see_the_whole_face() -> None:
    torch.manual_seed(0)
    spec = _spec(guide="none")
    model = build_model(spec).eval()
    x, lm = _inputs()
    x2 = x.clone()
    x2[:, :, _outside_regions_mask(lm, spec["regions"])] += 3.0
    with torch.no_grad():
        a, b = model(x, lm), model(x2, lm)
    torch.testing.assert_close(a["stream_logits"][:, 1:], b["stream_logits"][:, 1:])
    assert not torch.allclose(a["stream_logits"][:, 0], b["stream_logits"][:, 0])  # the global stream does


def test_fusion_weights_sum_to_one_and_depend_on_quality() -> None:
    torch.manual_seed(0)
    model = build_model(_spec()).eval()
    with torch.no_grad():
        model.fusion_quality.weight.normal_(0, 1.0)
    x, lm = _inputs(4)
    with torch.no_grad():
        out = model(x, lm)
    w = out["weights"]
    assert w.shape == (4, 5) and (w > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(4))
    torch.testing.assert_close(out["logit"], (w * out["stream_logits"]).sum(-1))
    # the same inputs with the quality block saying raw vs c40: other weights, still summing to 1
    weights = []
    for level in (0, 2):
        fixed = torch.full((4, 3), -10.0)
        fixed[:, level] = 10.0
        model.quality = torch.nn.Sequential(torch.nn.Flatten(), _Const(fixed))
        with torch.no_grad():
            weights.append(model(x, lm)["weights"])
        torch.testing.assert_close(weights[-1].sum(-1), torch.ones(4))
    assert not torch.allclose(weights[0], weights[1])


class _Const(torch.nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


def test_region_crops_cut_the_box_around_the_landmarks() -> None:
    # image whose channels hold the pixel's x and y: a crop's centre pixel reads the box centre
    ys, xs = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    img = torch.stack([xs, ys, xs * 0])[None]
    _, lm = _inputs(1)
    boxes = region_boxes(lm, ["eyes", "mouth"])
    d = float((lm[0, 1] - lm[0, 0]).norm())
    np.testing.assert_allclose(boxes[0, 0].numpy(), [*(lm[0, 0] + lm[0, 1]).numpy() / 2, d], rtol=1e-5)
    np.testing.assert_allclose(boxes[0, 1].numpy(), [*(lm[0, 3] + lm[0, 4]).numpy() / 2, 0.7 * d], rtol=1e-5)
    crops = region_crops(img, boxes, 17)  # odd side: pixel 8 is the centre
    for k in range(2):
        cx, cy, half = boxes[0, k].tolist()
        assert crops[0, k, 0, 8, 8].item() == pytest.approx(cx, abs=0.6)
        assert crops[0, k, 1, 8, 8].item() == pytest.approx(cy, abs=0.6)
        # the crop spans the box: first and last columns read cx -/+ half (pixel centres inset by half a pixel)
        step = 2 * half / 17
        assert crops[0, k, 0, 8, 0].item() == pytest.approx(cx - half + step / 2, abs=0.6)
        assert crops[0, k, 0, 8, 16].item() == pytest.approx(cx + half - step / 2, abs=0.6)


def test_loss_weights_levels_and_skips_unknown_quality() -> None:
    out = {
        "logit": torch.tensor([0.0, 0.0]),
        "stream_logits": torch.zeros(2, 3),
        "quality_logits": torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    }
    loss_fn = DeepfakeLoss((1.0, 2.0, 3.0), stream_weight=0.0, quality_weight=1.0)
    loss, logs = loss_fn(out, torch.tensor([1, 0]), torch.tensor([0, -1]))
    # BCE(0, y) = ln 2 whatever the weights; quality CE only on the labelled frame: CE([5, 0, 0], 0)
    ce = -torch.log_softmax(torch.tensor([5.0, 0.0, 0.0]), 0)[0]
    assert logs["bce"].item() == pytest.approx(np.log(2), rel=1e-5)
    assert loss.item() == pytest.approx(np.log(2) + ce.item(), rel=1e-5)
    # weighting: a wrong confident frame of level c40 (w 3) vs a right one of raw (w 1)
    out2 = {**out, "logit": torch.tensor([-4.0, -4.0])}
    _, logs2 = loss_fn(out2, torch.tensor([1, 0]), torch.tensor([2, 0]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (3 * bce(torch.tensor(-4.0), torch.tensor(1.0)) + bce(torch.tensor(-4.0), torch.tensor(0.0))) / 4
    assert logs2["bce"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_start_weights_reach_every_stream(tmp_path) -> None:  # noqa: ANN001
    """A ViT export (our safetensors + sidecar) and a timm-layout file load into the global and every part stream."""
    from medvit.apps.deepfake.train import _load_start_weights
    from medvit.shared.backbone.registry import create_backbone
    from medvit.shared.backbone.weights import save_backbone

    torch.manual_seed(5)
    model = build_model(_spec(shared_streams=False))
    src = create_backbone("test_vit_2d", **model.global_vit.arch_kwargs)
    save_backbone(src, tmp_path / "enc.safetensors")
    _load_start_weights(model, tmp_path / "enc.safetensors")
    for vit in (model.global_vit, *model.part_vits):
        assert torch.equal(vit.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    timm_file = tmp_path / "timm.pth"
    torch.manual_seed(6)
    other = create_backbone("test_vit_2d", **model.global_vit.arch_kwargs)
    torch.save(other.state_dict(), timm_file)
    _load_start_weights(model, timm_file)
    assert all(torch.equal(v.patch_embed.proj.weight, other.patch_embed.proj.weight) for v in model.part_vits)
