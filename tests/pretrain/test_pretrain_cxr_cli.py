"""``medvit pretrain`` on chest X-rays (2D MAE, thorax recipe): outputs, DICOM / 16-bit inputs, bad files, the
image cache, the recipe augmentation and exact resume."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medvit.pretrain.cli import main
from medvit.pretrain.data2d import ImageAugment, random_resized_crop_box
from medvit.shared.backbone.weights import load_backbone
from medvit.shared.data.synth_xray import synth_cxr

TINY = ["--method", "mae", "--preset", "cxr-tiny", "--device", "cpu", "--quiet", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def cxr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic radiographs (14 8-bit PNGs, a MONOCHROME2 and a MONOCHROME1 DICOM), a 16-bit PNG, a broken PNG."""
    root = tmp_path_factory.mktemp("cxr")
    synth_cxr(root, n=16, size=64, n_dicom=2, seed=0)
    deep = tmp_path_factory.mktemp("cxr16")
    synth_cxr(deep, n=1, size=64, bit_depth=16, seed=7)
    (root / "extra").mkdir()
    shutil.copy(deep / "images" / "cxr_00000.png", root / "extra" / "sixteen_bit.png")
    (root / "extra" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cxr_cache")


def _run(args: list) -> int:
    return main([str(a) for a in args])


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_outputs(cxr_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [cxr_root, "--out", out, *TINY, "--steps", 3, "--batch-size", 4, "--set", "train.preview_every=2"]
    assert _run([*args, "--set", "train.log_every=1", "--set", f"data.cache_dir={cache_dir}"]) == 0

    # manifest of inputs: every file with its verdict; the broken one is an error row, the run went on
    rows = {r["path"]: r for r in csv.DictReader((out / "inputs.csv").open())}
    assert len(rows) == 18 and all(r["dims"] == "2" for r in rows.values())
    assert rows["extra/broken.png"]["status"] == "error" and rows["extra/broken.png"]["error"]
    for name in ("dicom/cxr_00000.dcm", "dicom/cxr_00001.dcm", "extra/sixteen_bit.png", "images/cxr_00005.png"):
        assert rows[name]["status"] == "ok" and rows[name]["shape"] == "92x92", name  # short side 64 * 10 / 7

    enc, side = load_backbone(out / "encoder.safetensors")
    assert (side["method"], side["preset"], side["modality"], side["in_chans"]) == ("mae", "cxr-tiny", "CXR", 3)
    assert side["intensity"] == {"kind": "mean_std", "scale": [0.0, 1.0], "mean": [0.5056] * 3, "std": [0.252] * 3}
    assert side["input_size"] == [64, 64] and side["grayscale"] == "replicated to 3 channels"
    assert side["mask_ratio"] == 0.9 and side["pretrain_steps"] == 3 and side["pretrain_images"] == 17
    assert side["recipe"]["blr"] == 1.5e-4 and side["recipe"]["image"]["augment"]["crop_scale"] == [0.5, 1.0]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, ckpt["model"][f"encoder.{k}"], msg=k)
    assert enc.forward_features(torch.rand(2, 3, 64, 64)).shape == (2, 1 + 64, 64)

    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
    for png in ("previews/step_000002.png", "previews/step_000003.png", "previews/latest.png", "plots/loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    resolved = yaml.safe_load((out / "config.yaml").read_text())["resolved"]
    assert resolved["method"] == "mae" and resolved["preset"] == "cxr-tiny" and resolved["images"] == 17
    assert resolved["lr"] == 1e-3 and resolved["warmup_fraction"] == pytest.approx(40 / 800)


def test_cache_decodes_each_file_once(cxr_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two epochs decode each X-ray once; a second run on a warm cache decodes nothing that was cached. One
    channel, frontal views narrowed by a CSV and the recipe's lr from blr are exercised on the way."""
    import medvit.shared.data.xray as xray

    calls: list[str] = []
    real = xray.read_xray
    monkeypatch.setattr(xray, "read_xray", lambda path, **kw: calls.append(Path(path).name) or real(path, **kw))
    views = tmp_path / "views.csv"
    files = sorted(f.relative_to(cxr_root).as_posix() for f in cxr_root.rglob("*") if f.suffix in (".png", ".dcm"))
    lateral = "images/cxr_00003.png"
    views.write_text("path,view\n" + "".join(f"{f},{'LATERAL' if f == lateral else 'PA'}\n" for f in files))
    cache = tmp_path / "cache"
    common = [cxr_root, *TINY[:-2], "--epochs", 2, "--batch-size", 8, "--set", f"data.cache_dir={cache}"]
    common += ["--set", "data.in_chans=1", "--set", f"data.views_csv={views}", "--set", "train.preview_every=0"]
    common += ["--set", "train.blr=1.5e-4"]
    assert _run([*common, "--out", tmp_path / "cold"]) == 0
    # the 17 files the CSV calls frontal (the broken one among them), once each; the lateral view never
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 17 and "cxr_00003.png" not in calls
    assert torch.load(tmp_path / "cold" / "last.pt", weights_only=True)["step"] == 4  # 2 epochs x 16 // 8
    calls.clear()
    assert _run([*common, "--out", tmp_path / "warm"]) == 0
    assert calls == ["broken.png"]  # only the file that never made it into the cache

    enc, side = load_backbone(tmp_path / "warm" / "encoder.safetensors")
    assert enc.patch_embed.proj.in_channels == 1 and side["intensity"]["mean"] == [0.5056]
    assert "grayscale" not in side
    resolved = yaml.safe_load((tmp_path / "warm" / "config.yaml").read_text())["resolved"]
    assert resolved["lr"] == pytest.approx(1.5e-4 * 8 / 256)  # blr x effective batch / 256
    assert resolved["lr_rule"] == "blr 0.00015 x effective batch 8 / 256" and resolved["images"] == 16


def test_resume_after_kill_equals_uninterrupted(
    cxr_root: Path, cache_dir: Path, tmp_path: Path, kill_training_at: Callable[[int], Callable[[], None]]
) -> None:
    common = [cxr_root, *TINY, "--steps", 5, "--batch-size", 4, "--set", "train.ckpt_every=2"]
    common += ["--set", "train.log_every=1", "--set", f"data.cache_dir={cache_dir}", "--set", "train.preview_every=0"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert _run([*common, "--out", ref]) == 0
    disarm = kill_training_at(2)
    assert _run([*common, "--out", run]) == 130  # the command's exit status after Ctrl-C
    disarm()
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2 and not (run / "encoder.safetensors").exists()
    assert _run([*common, "--out", run, "--resume"]) == 0

    got, want = _metrics(run), _metrics(ref)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit for bit (steps 4-5 in the second epoch)
    a = torch.load(ref / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_too_few_images_and_a_3d_preset_are_clear_errors(
    cxr_root: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [cxr_root, *TINY, "--steps", 1, "--set", f"data.cache_dir={cache_dir}"]
    assert _run([*base, "--out", tmp_path / "a", "--batch-size", 32]) == 2
    assert "fewer than one batch" in capsys.readouterr().err
    assert _run([*base, "--out", tmp_path / "b", "--set", "data.crop_size=[60,60]"]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- augmentation
def test_random_resized_crop_box_follows_the_scale_and_ratio() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(rng, 300, 200, (0.5, 1.0), (3 / 4, 4 / 3))
        assert min(top, left) >= 0 and top + h <= 300 and left + w <= 200
        # rounding of each side moves the area by at most ~1 px per side
        assert 0.5 * 60000 - 300 - 200 <= h * w <= 60000 and 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # nothing fits an aspect of 4..5 in a square: the centre crop clamped to the allowed aspect
    assert random_resized_crop_box(rng, 100, 100, (0.9, 1.0), (4.0, 5.0)) == (37, 0, 25, 100)


def test_image_augment_is_the_recipe_and_replays_per_seed() -> None:
    grey = np.full((80, 100), 128, np.uint8)
    aug = ImageAugment((32, 32), scale=(0.5, 1.0), in_chans=3, mean=0.5056, std=0.252)
    aug.reseed(1)
    out = aug(grey)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, (128 / 255 - 0.5056) / 0.252))  # a flat image stays flat

    ramp = np.tile(np.linspace(0, 65535, 120).astype(np.uint16), (90, 1))  # 16-bit: left dark, right bright
    aug.reseed(5)
    a = aug(ramp)
    aug.reseed(5)
    assert torch.equal(a, aug(ramp)) and torch.equal(a[0], a[1]) and torch.equal(a[1], a[2])
    aug.reseed(6)
    assert not torch.equal(a, aug(ramp))
    flips = []
    for seed in range(40):
        aug.reseed(seed)
        x = aug(ramp)[0]
        flips.append(bool(x[:, 0].mean() > x[:, -1].mean()))  # bright on the left: flipped
    assert 8 <= sum(flips) <= 32  # p = 0.5

    view = ImageAugment((30, 30), train=False, in_chans=1)  # previews: the centre square, resized
    square = np.arange(90 * 120, dtype=np.float32).reshape(90, 120) / (90 * 120)
    expect = torch.nn.functional.interpolate(
        torch.from_numpy(square[:, 15:105])[None, None], size=(30, 30), mode="bicubic", antialias=True
    )[0].clamp(0, 1)
    torch.testing.assert_close(view(square), expect)
    assert math.isclose(float(view(square).mean()), float(expect.mean()))


@pytest.mark.slow  # about 20 s: the two demo runs
def test_pretrain_demo_learns_and_exports(tmp_path: Path) -> None:
    from medvit.pretrain.demo import run_pretrain_demo

    result = run_pretrain_demo(tmp_path, quiet=True)
    cxr, eye = result["cxr"], result["eye"]
    assert cxr["final_loss"] < 0.7 * cxr["first_loss"]
    assert eye["final_loss_2d"] < eye["first_loss_2d"] and eye["final_loss_3d"] < eye["first_loss_3d"]
    for path in (cxr["encoder"], eye["encoder_2d"], eye["encoder_3d"]):
        load_backbone(path)
    assert (cxr["previews"] / "latest.png").is_file() and (eye["previews"] / "latest_3d.png").is_file()
