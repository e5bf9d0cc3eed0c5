"""Root CLI: help of every command, import cost, user errors, weights inspect/convert."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from medvit import __version__
from medvit.cli import app

runner = CliRunner()


def _all_command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd: object, path: list[str]) -> None:
        paths.append(path)
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "medvit")
def test_help_of_every_command(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_expected_commands_are_mounted() -> None:
    names = {" ".join(p) for p in _all_command_paths()}
    for expected in ("doctor", "demo", "weights inspect", "weights convert", "weights list", "data synth"):
        assert expected in names


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_import_is_light() -> None:
    # `medvit --help` stays fast because the CLI imports no heavy library at import time. Checked by the set of
    # imported modules, not by seconds (a loaded machine would fail a timing).
    heavy = [
        "torch", "monai", "timm", "cv2", "albumentations", "numpy", "scipy", "skimage", "nibabel", "pydicom",
        "onnxruntime", "insightface", "matplotlib", "safetensors",
    ]  # fmt: skip
    code = f"import sys, medvit.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing medvit.cli imports {out}"


def test_unknown_option_is_an_error() -> None:
    result = runner.invoke(app, ["weights", "list", "--no-such-option"])
    assert result.exit_code != 0


def test_weights_inspect_and_convert(tmp_path: Path) -> None:
    from medvit.shared.backbone import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pth")

    result = runner.invoke(app, ["weights", "inspect", str(tmp_path / "ckpt.pth"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format"] == "mae" and info["tensors"] == len(model.state_dict())
    assert info["architecture"]["depth"] == 2 and info["architecture"]["embed_dim"] == 32

    out = tmp_path / "out.safetensors"
    result = runner.invoke(
        app, ["weights", "convert", str(tmp_path / "ckpt.pth"), "--out", str(out), "--set", "num_heads=2"]
    )
    assert result.exit_code == 0, result.output
    assert out.exists() and out.with_suffix(".json").exists()
    result = runner.invoke(app, ["weights", "inspect", str(out)])
    assert result.exit_code == 0 and "medvit" in result.output

    # Refuses to overwrite, one clear line, no traceback.
    result = runner.invoke(app, ["weights", "convert", str(tmp_path / "ckpt.pth"), "--out", str(out)])
    assert result.exit_code == 2
    assert "exists" in result.output and "Traceback" not in result.output


def test_weights_convert_monai_unetr_on_a_non_cubic_grid_takes_img_size_and_num_heads(tmp_path: Path) -> None:
    """--set img_size is what tells a non-cubic learned position table its grid; it applies before inference."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    from medvit.shared.backbone.weights import load_backbone

    torch.manual_seed(0)
    unetr = monai_nets.UNETR(
        in_channels=1, out_channels=3, img_size=(32, 32, 48), feature_size=8, hidden_size=48, mlp_dim=96,
        num_heads=4, proj_type="conv", qkv_bias=True,
    ).eval()  # fmt: skip
    torch.save(unetr.state_dict(), tmp_path / "unetr.pt")
    out = tmp_path / "enc.safetensors"
    args = ["weights", "convert", str(tmp_path / "unetr.pt"), "--out", str(out), "--format", "monai"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--set img_size=" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, [*args, "--set", "img_size=[32,32,48]", "--set", "num_heads=4"])
    assert result.exit_code == 0, result.output
    assert "num_heads=4" in result.output
    enc, side = load_backbone(out)
    assert side["kwargs"]["img_size"] == [32, 32, 48] and side["kwargs"]["num_heads"] == 4
    x = torch.randn(1, 1, 32, 32, 48)
    with torch.no_grad():
        expected, _ = unetr.vit(x)
        torch.testing.assert_close(enc.eval().forward_features(x), expected, atol=1e-5, rtol=1e-4)


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"\x00garbage" * 20)
    proc = subprocess.run(
        [sys.executable, "-m", "medvit", "weights", "inspect", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "broken.pth" in lines[0] and lines[0].startswith("error:")


def test_help_shows_no_type_for_flags() -> None:
    result = runner.invoke(app, ["fiqa", "score", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--aligned" in result.output and "<bool>" not in result.output
    assert "<int range>" in result.output  # options that take a value keep their type
