"""``medvit eye`` option parsing and config resolution, without training: options land on the right config keys,
the presets (2D and 3D), bad options are one ``error:`` line. The API is replaced by a recorder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from medvit.apps.eye import api
from medvit.apps.eye.cli import app as eye_app
from medvit.apps.eye.config import PRESETS, EyeConfig, load_eye_config

runner = CliRunner()


def _invoke(*args: object) -> Any:
    from medvit import cli

    root = typer.Typer(cls=cli._MedvitGroup)
    root.add_typer(eye_app, name="eye")
    return runner.invoke(root, ["eye", *[str(a) for a in args]])


class _Recorded:
    line = "trained"

    def __init__(self, run: Path) -> None:
        self.run_dir = run


@pytest.fixture()
def recorder(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake_train(cfg: EyeConfig, data: Path, out: Path, *, resume: bool, quiet: bool) -> _Recorded:
        seen.update(cfg=cfg, data=data, out=out, resume=resume)
        return _Recorded(out)

    monkeypatch.setattr(api, "train", fake_train)
    return seen


def test_train_options_land_on_config_keys(tmp_path: Path, recorder: dict[str, Any]) -> None:
    res = _invoke(
        "train", tmp_path / "train.csv", "--out", tmp_path / "run", "--preset", "tiny-3d", "--task", "graded",
        "--classes", "0,1,2,3,4", "--images", tmp_path / "imgs", "--modality", "oct", "--mix", "mixup",
        "--val", tmp_path / "val.csv", "--init", tmp_path / "uni4eye.safetensors", "--epochs", "2", "--lr", "1e-3",
        "--set", "dataset.label_column=Retinopathy grade",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cfg = recorder["cfg"]
    assert cfg.preset == "tiny-3d" and cfg.model.backbone == "vit_tiny_patch16_3d"
    assert cfg.dataset.task == "graded" and cfg.dataset.classes == ("0", "1", "2", "3", "4")
    assert cfg.dataset.images == tmp_path / "imgs" and cfg.dataset.modality == "oct"
    assert cfg.dataset.val == tmp_path / "val.csv" and cfg.dataset.label_column == "Retinopathy grade"
    assert cfg.mix.mode == "mixup" and cfg.model.weights == tmp_path / "uni4eye.safetensors"
    assert (cfg.optim.epochs, cfg.optim.lr) == (2, 1e-3)


def test_presets() -> None:
    assert set(PRESETS) == {"paper", "paper-3d", "tiny", "tiny-3d"}
    paper = load_eye_config("paper")
    assert paper.model.backbone == "vit_small_patch16_224" and paper.optim.layer_decay == 0.55
    assert paper.augment.randaugment == "rand-m6-mstd0.5-inc1" and paper.data.size == (224,)
    paper3d = load_eye_config("paper-3d")
    assert paper3d.model.backbone == "vit_small_patch16_3d" and paper3d.augment.randaugment == ""
    assert (paper3d.optim.blr, paper3d.optim.epochs, paper3d.model.drop_path) == (2.5e-4, 75, 0.2)
    tiny = load_eye_config("tiny")
    assert tiny.optim.device == "cpu" and tiny.dataset.task == "auto"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mix", "blend"], "--mix must be one of"),
        (["--preset", "paper3d"], "unknown eye preset 'paper3d'"),
        (["--task", "ranking"], "dataset.task"),
        (["--modality", "ct"], "dataset.modality"),
        (["--classes", "0"], "--classes: give at least two class names"),
    ],
)
def test_bad_train_options_are_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = _invoke("train", tmp_path, "--out", tmp_path / "run", *args)
    assert res.exit_code == 2
    assert "error:" in res.output and message in res.output and "Traceback" not in res.output


def test_predict_and_evaluate_option_errors(tmp_path: Path) -> None:
    res = _invoke("predict", tmp_path, tmp_path, "--out", tmp_path / "o", "--heatmaps", "glow")
    assert res.exit_code == 2 and "--heatmaps must be one of" in res.output
    res = _invoke("evaluate", tmp_path, tmp_path)
    assert res.exit_code == 2 and "predictions.csv: not found" in res.output
