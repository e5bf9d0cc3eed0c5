"""The CLI loop on synthetic clips: prepare -> train (tiny) -> predict held-out videos -> evaluate.

CPU budget (stated): about 20 s on one core for the whole loop (synth + prepare, 150 steps of 16 frames, predict
and evaluate); the held-out video AUC (4 test pairs: 8 real, 8 Face2Face) must reach 0.9 (300 steps gave 1.0).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medvit.apps.deepfake.cli import app
from medvit.apps.deepfake.demo import held_out_list
from medvit.shared.data.synth_deepfake import synth_deepfake

pytestmark = pytest.mark.slow


def _ok(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


@pytest.fixture(scope="session")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deepfake_loop")
    synth_deepfake(root / "ffpp", n=20, frames=8, size=128, levels=("c23",), methods=("Face2Face",), seed=0)
    _ok(
        [
            "prepare",
            str(root / "ffpp"),
            str(root / "prep"),
            "--frames",
            "6",
            "--size",
            "64",
            "--workers",
            "0",
            "--quiet",
        ]
    )
    _ok(
        [
            "train",
            str(root / "prep"),
            "--out",
            str(root / "run"),
            "--preset",
            "tiny",
            "--levels",
            "c23",
            "--steps",
            "150",
            "--batch-size",
            "16",
            "--lr",
            "2e-3",
            "--set",
            "model.global_size=48",
            "--set",
            "model.region_size=24",
            "--set",
            "optim.eval_every=100",
            "--quiet",
        ]
    )
    listing = held_out_list(root / "ffpp", root / "test.txt")
    _ok(
        [
            "predict",
            str(root / "run"),
            str(listing),
            "--out",
            str(root / "pred"),
            "--frames",
            "6",
            "--workers",
            "0",
            "--quiet",
        ]
    )
    out = _ok(["evaluate", str(root / "pred"), str(root / "ffpp"), "--out", str(root / "eval")])
    assert "video AUC" in out
    return {"root": root, "run": root / "run", "pred": root / "pred", "eval": root / "eval"}


def test_loop_reaches_video_auc(loop: dict[str, Path]) -> None:
    summary = json.loads((loop["eval"] / "summary.json").read_text())
    assert summary["overall"]["videos"] == 16  # 4 test pairs: 8 real + 8 Face2Face
    assert summary["overall"]["video_auc"] >= 0.9, summary
    assert summary["grid_video_auc"] == {"c23": {"c23": summary["overall"]["video_auc"]}}
    assert (loop["run"] / "model.safetensors").is_file() and (loop["run"] / "best.pt").is_file()
    with open(loop["eval"] / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["subset"], r["method"]) for r in rows} == {("all", "all"), ("level", "all"), ("method", "Face2Face")}
    assert (loop["eval"] / "roc.png").is_file() and len(list((loop["pred"] / "strips").rglob("*.png"))) == 16


def test_train_resumes_to_the_same_weights(loop: dict[str, Path], tmp_path: Path, kill_training_at: Any) -> None:
    def args(out: Path) -> list[str]:
        return [
            "train",
            str(loop["root"] / "prep"),
            "--preset",
            "tiny",
            "--levels",
            "c23",
            "--steps",
            "6",
            "--batch-size",
            "8",
            "--set",
            "model.global_size=32",
            "--set",
            "model.region_size=16",
            "--set",
            "optim.ckpt_every=3",
            "--set",
            "optim.eval_every=0",
            "--quiet",
            "--out",
            str(out),
        ]

    _ok(args(tmp_path / "full"))
    disarm = kill_training_at(3)
    res = CliRunner().invoke(app, args(tmp_path / "part"))
    assert res.exit_code != 0 and (tmp_path / "part/last.pt").is_file()  # killed after the step-3 checkpoint
    disarm()
    _ok([*args(tmp_path / "part"), "--resume"])
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "full/model.safetensors")), load_file(str(tmp_path / "part/model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
