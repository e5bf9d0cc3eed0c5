"""``medvit eye`` end to end on the synthetic sets: graded fundus photographs (train a few steps -> predict with
resume and bad inputs -> evaluate with kappa) and OCT volumes (NIfTI files and B-scan folders, the 3D preset)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from medvit.apps.eye.cli import app as eye_app
from medvit.shared.data.synth_eye import OCT_CLASSES, synth_fundus, synth_oct

runner = CliRunner()
FAST = ["--steps", "3", "--batch-size", "8", "--workers", "0", "--quiet", "--set", "optim.eval_every=3"]


def _invoke(*args: object) -> Any:
    from medvit import cli

    root = typer.Typer(cls=cli._MedvitGroup)
    root.add_typer(eye_app, name="eye")
    return runner.invoke(root, ["eye", *[str(a) for a in args]])


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))


@pytest.fixture(scope="module")
def fundus_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eye_e2e")
    synth_fundus(root / "train", n=24, size=64, seed=0)
    synth_fundus(root / "heldout", n=8, size=64, seed=1)
    res = _invoke("train", root / "train", "--out", root / "run", "--preset", "tiny", "--classes", "0,1,2,3,4", *FAST)
    assert res.exit_code == 0, res.output
    return {"run": root / "run", "heldout": root / "heldout"}


def test_fundus_graded_train_predict_evaluate(fundus_run: dict[str, Path], tmp_path: Path) -> None:
    spec = json.loads((fundus_run["run"] / "model.json").read_text())
    assert spec["labels"] == {"kind": "graded", "classes": ["0", "1", "2", "3", "4"]}
    assert spec["input"]["modality"] == "fundus"
    out = tmp_path / "pred"
    res = _invoke("predict", fundus_run["run"], fundus_run["heldout"], "--out", out, "--workers", "0", "--quiet")
    assert res.exit_code == 0, res.output
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 8
    for r in rows:
        assert abs(sum(float(r[f"prob_{g}"]) for g in range(5)) - 1.0) < 1e-4  # softmax over the grades
    before = (out / "predictions.csv").read_bytes()
    res = _invoke("predict", fundus_run["run"], fundus_run["heldout"], "--out", out, "--workers", "0", "--quiet")
    assert res.exit_code == 0 and (out / "predictions.csv").read_bytes() == before
    res = _invoke("evaluate", out, fundus_run["heldout"], "--bootstrap", "10")
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "graded" and summary["headline"]["metric"] == "kappa" and summary["cases"] == 8
    assert len(summary["confusion"]) == 5


def test_bad_inputs_get_error_rows(fundus_run: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    good = next((fundus_run["heldout"] / "fundus").glob("*.png"))
    (tmp_path / "in" / "good.png").write_bytes(good.read_bytes())
    (tmp_path / "in" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    out = tmp_path / "pred"
    res = _invoke("predict", fundus_run["run"], tmp_path / "in", "--out", out, "--workers", "0", "--quiet")
    assert res.exit_code == 1, res.output
    status = {Path(r["input"]).name: r["status"] for r in _rows(out / "manifest.csv")}
    assert status == {"good.png": "ok", "truncated.jpg": "error", "empty.png": "error"}


def test_oct_volumes_and_bscan_folders(tmp_path: Path) -> None:
    synth_oct(tmp_path / "oct", n=12, shape=(16, 16, 16), seed=0, bscan_folders=True)
    res = _invoke("train", tmp_path / "oct", "--out", tmp_path / "run", "--preset", "tiny-3d",
                  "--set", "data.size=[16]", "--set", "model.backbone_overrides.img_size=16", *FAST,
                  "--batch-size", "4")  # fmt: skip
    assert res.exit_code == 0, res.output
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert spec["labels"] == {"kind": "multiclass", "classes": list(OCT_CLASSES)}
    assert spec["input"]["modality"] == "oct" and spec["input"]["dims"] == 3
    out = tmp_path / "pred"
    res = _invoke("predict", tmp_path / "run", tmp_path / "oct" / "bscans", "--out", out, "--workers", "0", "--quiet")
    assert res.exit_code == 0, res.output
    assert sorted(r["key"] for r in _rows(out / "predictions.csv")) == [f"oct_{k:03d}" for k in range(12)]
    res = _invoke("predict", tmp_path / "run", tmp_path / "oct" / "volumes", "--out", tmp_path / "pv", "--quiet",
                  "--workers", "0", "--batch-size", "4")  # fmt: skip
    assert res.exit_code == 0, res.output
    res = _invoke("evaluate", tmp_path / "pv", tmp_path / "oct", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "pv" / "summary.json").read_text())
    assert summary["task"] == "multiclass" and summary["cases"] == 12
