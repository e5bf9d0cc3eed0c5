"""``medvit cxr`` option parsing and config resolution, without training: options land on the right config keys,
presets and a resumed run's stored config are the base layer, bad options are one ``error:`` line, no torch at
import. The API is replaced by a recorder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from medvit.apps.cxr import api
from medvit.apps.cxr.cli import app as cxr_app
from medvit.apps.cxr.config import PRESETS, CxrConfig, load_cxr_config, load_train_config
from medvit.shared.config import dump_config
from medvit.shared.errors import ConfigError

runner = CliRunner()


def _invoke(*args: object) -> Any:
    from medvit import cli

    root = typer.Typer(cls=cli._MedvitGroup)
    root.add_typer(cxr_app, name="cxr")
    return runner.invoke(root, ["cxr", *[str(a) for a in args]])


class _Recorded:
    line = "trained"

    def __init__(self, run: Path) -> None:
        self.run_dir = run


@pytest.fixture()
def recorder(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake_train(cfg: CxrConfig, data: Path, out: Path, *, resume: bool, quiet: bool) -> _Recorded:
        seen.update(cfg=cfg, data=data, out=out, resume=resume)
        return _Recorded(out)

    monkeypatch.setattr(api, "train", fake_train)
    return seen


def test_train_options_land_on_config_keys(tmp_path: Path, recorder: dict[str, Any]) -> None:
    res = _invoke(
        "train", tmp_path / "data", "--out", tmp_path / "run", "--preset", "tiny",
        "--init", tmp_path / "enc.safetensors", "--mix", "tl-align", "--split", "train",
        "--val-split", "valid", "--val-fraction", "0.2",
        "--findings", "Edema, Atelectasis", "--uncertain", "zeros", "--batch-size", "7", "--workers", "3",
        "--steps", "11", "--set", "optim.blr=5e-4", "--set", "dataset.frontal_only=false",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cfg = recorder["cfg"]
    assert cfg.preset == "tiny" and cfg.model.weights == tmp_path / "enc.safetensors"
    assert cfg.mix.mode == "tl-align" and cfg.data.val_fraction == 0.2
    assert cfg.dataset.split == "train" and cfg.dataset.val_split == "valid"
    assert cfg.dataset.findings == ("Edema", "Atelectasis") and cfg.dataset.uncertain == "zeros"
    assert not cfg.dataset.frontal_only
    assert (cfg.optim.batch_size, cfg.optim.workers, cfg.optim.steps, cfg.optim.blr) == (7, 3, 11, 5e-4)
    assert recorder["resume"] is False and "trained" in res.output


def test_paper_preset_is_the_thorax_recipe() -> None:
    cfg = load_cxr_config("paper")
    assert cfg.model.backbone == "vit_small_patch16_224" and cfg.model.global_pool == "avg"
    assert (cfg.model.drop_path, cfg.model.head_init_std) == (0.2, 2e-5)
    assert (cfg.optim.epochs, cfg.optim.blr, cfg.optim.min_lr, cfg.optim.layer_decay) == (75, 2.5e-4, 1e-5, 0.55)
    assert (cfg.optim.weight_decay, cfg.optim.warmup_epochs) == (0.05, 5)
    assert cfg.mix.mode == "none" and cfg.augment.randaugment == "rand-m6-mstd0.5-inc1"
    assert cfg.data.mean == (0.5056,) * 3 and cfg.data.std == (0.252,) * 3 and cfg.data.size == (224,)
    assert cfg.dataset.uncertain == "reference" and cfg.dataset.frontal_only
    assert set(PRESETS) == {"paper", "tiny"}


def test_resume_starts_from_the_stored_config(tmp_path: Path, recorder: dict[str, Any]) -> None:
    stored = load_cxr_config("tiny", overrides=["dataset.uncertain=ignore", "optim.steps=5"])
    dump_config(stored, tmp_path / "config.yaml")
    cfg = load_train_config(tmp_path, resume=True, overrides=["optim.steps=9"])
    assert cfg.preset == "tiny" and cfg.dataset.uncertain == "ignore" and cfg.optim.steps == 9
    res = _invoke("train", tmp_path / "data", "--out", tmp_path, "--resume")
    assert res.exit_code == 0, res.output
    assert recorder["resume"] is True and recorder["cfg"].dataset.uncertain == "ignore"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mix", "blend"], "--mix must be one of none, mixup, cutmix, tl-align"),
        (["--preset", "huge"], "unknown cxr preset 'huge'"),
        (["--uncertain", "maybe"], "dataset.uncertain"),
        (["--set", "dataset.colour=red"], "dataset.colour"),
        (["--findings", " , "], "--findings"),
    ],
)
def test_bad_train_options_are_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = _invoke("train", tmp_path, "--out", tmp_path / "run", *args)
    assert res.exit_code == 2
    assert "error:" in res.output and message in res.output and "Traceback" not in res.output


def test_predict_and_evaluate_option_errors(tmp_path: Path) -> None:
    res = _invoke("predict", tmp_path, tmp_path, "--out", tmp_path / "o", "--heatmaps", "glow")
    assert res.exit_code == 2 and "--heatmaps must be one of none, rollout, gradcam" in res.output
    res = _invoke("evaluate", tmp_path / "nothing.csv", tmp_path)
    assert res.exit_code == 2 and "nothing.csv: not found" in res.output


def test_cli_and_config_import_without_torch() -> None:
    code = (
        "import sys; import medvit.apps.cxr.cli, medvit.apps.cxr.config, medvit.apps.eye.cli, medvit.apps.eye.config;"
        "bad = [m for m in ('torch', 'cv2', 'monai', 'timm') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_rejects_unknown_format() -> None:
    with pytest.raises(ConfigError, match="dataset.format"):
        load_cxr_config("tiny", overrides=["dataset.format=dicomdir"])
