"""``medvit cxr`` end to end on the synthetic set: train a few steps -> predict (PNG and DICOM, resume, overwrite,
bad inputs as ``error`` rows) -> evaluate; the ChestX-ray14 layout of the synthetic set trains too."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from medvit.apps.cxr.cli import app as cxr_app
from medvit.shared.data.synth_xray import CXR_FINDINGS, synth_cxr

runner = CliRunner()
FAST = ["--preset", "tiny", "--steps", "4", "--batch-size", "8", "--workers", "0", "--quiet"]
FAST_SET = ["--set", "optim.eval_every=2", "--set", "optim.ckpt_every=2", "--set", "optim.log_every=2"]


def _invoke(*args: object) -> Any:
    from medvit import cli

    root = typer.Typer(cls=cli._MedvitGroup)
    root.add_typer(cxr_app, name="cxr")
    return runner.invoke(root, ["cxr", *[str(a) for a in args]])


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cxr_e2e")
    synth_cxr(root / "train", n=32, size=64, seed=0, prevalence=0.4)
    synth_cxr(root / "heldout", n=10, size=64, seed=1, prevalence=0.4, n_dicom=2)
    res = _invoke("train", root / "train", "--out", root / "run", *FAST, *FAST_SET)
    assert res.exit_code == 0, res.output
    return {"root": root, "run": root / "run", "heldout": root / "heldout"}


def test_train_writes_a_run(trained: dict[str, Path]) -> None:
    run = trained["run"]
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    spec = json.loads((run / "model.json").read_text())
    assert spec["labels"] == {"kind": "multilabel", "classes": list(CXR_FINDINGS)}
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["train"]) + len(splits["val"]) == 32 and splits["val"]  # 15 % held out (tiny preset)


def test_predict_evaluate_and_resume(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pred"
    res = _invoke("predict", trained["run"], trained["heldout"], "--out", out, "--workers", "0", "--quiet",
                  "--heatmaps", "rollout")  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 10 and {r["key"] for r in rows} >= {"dicom/cxr_00000.dcm", "images/cxr_00009.png"}
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in CXR_FINDINGS]
        assert all(0.0 <= p <= 1.0 for p in probs)
    assert len(list((out / "heatmaps").rglob("*.png"))) == 10
    before = (out / "predictions.csv").read_bytes()
    res = _invoke("predict", trained["run"], trained["heldout"], "--out", out, "--workers", "0", "--quiet")
    assert res.exit_code == 0 and "10 ok" in res.output
    assert (out / "predictions.csv").read_bytes() == before  # resumed: nothing recomputed or reordered
    statuses = {r["status"] for r in _rows(out / "manifest.csv")}
    assert statuses <= {"ok", "skipped"}
    res = _invoke("evaluate", out, trained["heldout"], "--out", tmp_path / "eval", "--bootstrap", "20")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["task"] == "multilabel" and summary["cases"] == 10 and summary["missing_predictions"] == 0
    assert summary["headline"]["metric"] == "mauc"
    assert {r["class"] for r in _rows(tmp_path / "eval" / "metrics.csv")} >= set(CXR_FINDINGS)


def test_predict_keys_from_another_root_still_evaluate(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pred"
    res = _invoke("predict", trained["run"], trained["heldout"] / "images", "--out", out, "--workers", "0", "--quiet")
    assert res.exit_code == 0, res.output
    assert {r["key"] for r in _rows(out / "predictions.csv")} == {f"cxr_{k:05d}.png" for k in range(2, 10)}
    res = _invoke("evaluate", out / "predictions.csv", trained["heldout"] / "labels.csv", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 8 and summary["missing_predictions"] == 2  # the DICOM items were not predicted


def test_bad_inputs_get_error_rows(trained: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty.dcm").write_bytes(b"")
    listing = tmp_path / "list.txt"
    good = trained["heldout"] / "images" / "cxr_00003.png"
    listing.write_text(f"{good}\nbroken.png\nempty.dcm\nmissing.png\n")
    out = tmp_path / "pred"
    res = _invoke("predict", trained["run"], listing, "--out", out, "--workers", "0", "--quiet")
    assert res.exit_code == 1, res.output
    status = {Path(r["input"]).name: r for r in _rows(out / "manifest.csv")}
    assert status["cxr_00003.png"]["status"] == "ok"
    for name in ("broken.png", "empty.dcm", "missing.png"):
        assert status[name]["status"] == "error" and status[name]["message"], status[name]
    assert "Traceback" not in res.output


def test_train_on_the_chestxray14_layout(tmp_path: Path) -> None:
    synth_cxr(tmp_path / "nih", n=24, size=64, layout="chestxray14", prevalence=0.4)
    res = _invoke(
        "train", tmp_path / "nih", "--out", tmp_path / "run", *FAST, "--steps", "2",
        "--findings", ",".join(CXR_FINDINGS), "--val-fraction", "0.25",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    patients = {k: Path(k).name.split("_")[0] for k in splits["train"] + splits["val"]}
    assert not {patients[k] for k in splits["train"]} & {patients[k] for k in splits["val"]}  # patient-wise
    test_list = (tmp_path / "nih" / "test_list.txt").read_text().split()
    assert not {Path(k).name for k in splits["train"] + splits["val"]} & set(test_list)


def test_resume_after_kill_equals_uninterrupted(
    trained: dict[str, Path], tmp_path: Path, kill_training_at: Callable[[int], Callable[[], None]]
) -> None:
    from safetensors.numpy import load_file

    run = tmp_path / "killed"
    disarm = kill_training_at(2)  # after step 2's checkpoint (ckpt_every=2), before its validation
    _invoke("train", trained["root"] / "train", "--out", run, *FAST, *FAST_SET)
    disarm()
    assert not (run / "model.safetensors").exists()
    res = _invoke("train", trained["root"] / "train", "--out", run, "--resume", "--quiet")  # the stored config
    assert res.exit_code == 0, res.output
    a = load_file(trained["run"] / "model.safetensors")  # the module's uninterrupted 4-step run
    b = load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not (a[k] == b[k]).all()] == []
    losses = [json.loads(line).get("loss") for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed == losses


def test_warm_start_from_a_run(trained: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke("train", trained["root"] / "train", "--out", tmp_path / "warm", *FAST, "--steps", "2",
                  "--init", trained["run"] / "model.safetensors")  # fmt: skip
    assert res.exit_code == 0, res.output
    spec = json.loads((tmp_path / "warm" / "model.json").read_text())
    assert spec["labels"]["classes"] == list(CXR_FINDINGS)
