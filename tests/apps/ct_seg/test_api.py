"""The API takes a resolved config object; the CLI resolves it (and the run directory) and calls the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medvit.apps.ct_seg import api
from medvit.apps.ct_seg.config import CTSegConfig, load_ct_seg_config, load_train_config
from medvit.shared.config import dump_config, read_yaml
from medvit.shared.data.synth import synth_ct

ONE_STEP = {"data.fold": "all", "data.spacing": (3.0, 3.0, 3.0), "optim.steps": 1, "optim.workers": 0}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ct") / "small"
    synth_ct(root, n=2, seed=3, shape=(24, 24, 16), n_organs=(2, 3))
    return root


def test_train_takes_a_resolved_config(small: Path, tmp_path: Path) -> None:
    cfg = load_ct_seg_config("tiny", **ONE_STEP)
    run = tmp_path / "run"
    res = api.train(cfg, small, out=run, quiet=True)
    assert isinstance(res, api.TrainResult)
    assert (res.run_dir, res.steps, res.fold, res.best_dice) == (run, 1, "all", None)
    assert res.weights == run / "model.safetensors" and res.weights.is_file()
    stored = read_yaml(run / "config.yaml")  # the object it was given, resolved into the run
    assert stored["preset"] == "tiny" and stored["optim"]["steps"] == 1 and stored["data"]["spacing"] == [3, 3, 3]
    spec = json.loads((run / "model.json").read_text())
    assert spec["format"] == api.MODEL_FORMAT and spec["weights"] == {"from": "last.pt", "step": 1}


def test_train_refuses_anything_but_a_config(small: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="resolved CTSegConfig"):
        api.train(small, out=tmp_path / "run")  # type: ignore[arg-type] - the old (data, out=..., **options) style
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_starts_from_its_stored_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    dump_config(load_ct_seg_config("tiny", **{"optim.lr": 0.5}), run / "config.yaml")
    resumed = load_train_config(run, resume=True, **{"optim.steps": 7})
    assert (resumed.preset, resumed.optim.lr, resumed.optim.steps) == ("tiny", 0.5, 7)
    fresh = load_train_config(run, **{"optim.steps": 7})  # no --resume: the preset (base), not the stored config
    assert fresh.preset == "base" and fresh.optim.lr == load_ct_seg_config("base").optim.lr
    assert load_train_config(run, resume=True, preset="small").preset == "small"  # an explicit preset wins


def test_train_cli_resolves_the_config_and_calls_the_api(tmp_path: Path, monkeypatch, cli) -> None:
    seen: dict = {}

    def fake_train(cfg: CTSegConfig, data: Path | None, **kw) -> api.TrainResult:
        seen.update(cfg=cfg, data=data, **kw)
        out = Path(kw["out"])
        return api.TrainResult(out, 0, None, None, {}, out / "model.safetensors", cfg.data.fold)

    monkeypatch.setattr(api, "train", fake_train)
    monkeypatch.setenv("MEDVIT_RUNS", str(tmp_path / "runs"))
    args = ["ct-seg", "train", str(tmp_path / "data"), "--preset", "small", "--lr", "0.25", "--fold", "all"]
    res = CliRunner().invoke(cli, [*args, "--set", "optim.steps=3", "--weights", str(tmp_path / "enc.safetensors")])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert isinstance(cfg, CTSegConfig) and cfg.preset == "small"
    assert (cfg.optim.lr, cfg.optim.steps, cfg.data.fold) == (0.25, 3, "all")
    assert cfg.model.weights == tmp_path / "enc.safetensors"
    assert seen["data"] == tmp_path / "data" and seen["resume"] is False
    assert seen["out"] == tmp_path / "runs" / "ct-seg"  # no --out: $MEDVIT_RUNS/ct-seg

    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "mine")])
    assert res.exit_code == 0, res.output
    assert seen["out"] == tmp_path / "mine"  # --out wins over $MEDVIT_RUNS


def test_train_without_out_writes_the_run_under_medvit_runs(small: Path, tmp_path: Path, monkeypatch, cli) -> None:
    monkeypatch.setenv("MEDVIT_RUNS", str(tmp_path / "runs"))
    args = ["ct-seg", "train", str(small), "--preset", "tiny", "--fold", "all", "--steps", "1", "--workers", "0"]
    res = CliRunner().invoke(cli, [*args, "--quiet", "--set", "data.spacing=[3,3,3]"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "ct-seg"
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
