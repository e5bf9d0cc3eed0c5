"""The whole CLI loop on synthetic CT: train -> predict -> evaluate, and train --resume.

CPU budget of the loop: 16 training cases of 64x64x32 voxels (all five organs in each), the ``tiny`` preset at
the scans' native spacing, 200 steps of 2 crops of 48x48x32 (about 0.4 s per step on one core), then sliding-
window prediction of the 4 held-out cases and their evaluation: about 1.5-2 minutes with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medvit.shared.data.synth import synth_ct

STEPS = 200


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ct") / "Dataset900_Synth"
    synth_ct(root, n=16, seed=0, shape=(64, 64, 32), n_organs=(5, 5), n_test=4)
    return root


def test_train_predict_evaluate_reaches_dice_0_8(synthetic: Path, tmp_path: Path, cli) -> None:
    run, pred, runner = tmp_path / "run", tmp_path / "pred", CliRunner()
    res = runner.invoke(cli, ["ct-seg", "train", str(synthetic), "--out", str(run), "--preset", "tiny",
                              "--set", "data.spacing=native", "--steps", str(STEPS), "--fold", "0", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits) == 5 and sorted(c for s in splits for c in s["val"]) == [f"case_{i:03d}" for i in range(16)]
    spec = json.loads((run / "model.json").read_text())
    assert spec["preprocess"]["spacing"] == "native" and spec["weights"]["from"] == "best.pt"
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val/dice" in line]
    assert val and val[-1]["step"] == STEPS
    assert (run / "model.safetensors").is_file() and (run / "plots" / "loss.png").is_file()

    res = runner.invoke(cli, ["ct-seg", "predict", str(run), str(synthetic / "imagesTs"), "--out", str(pred), "--quiet"])
    assert res.exit_code == 0, res.output
    for case in ("case_016", "case_017", "case_018", "case_019"):
        src, out = nib.load(synthetic / "imagesTs" / f"{case}_0000.nii.gz"), nib.load(pred / f"{case}.nii.gz")
        assert out.shape == src.shape
        np.testing.assert_array_equal(out.affine, src.affine)
        assert (pred / "overlays" / f"{case}.png").is_file()

    res = runner.invoke(cli, ["ct-seg", "evaluate", str(pred), str(synthetic / "labelsTs"),
                              "--labels", str(synthetic / "dataset.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["cases"] == 4
    assert summary["overall"]["dice"]["mean"] >= 0.8, summary["per_class"]


def test_train_resumes_to_the_requested_step(synthetic: Path, tmp_path: Path, cli) -> None:
    run, runner = tmp_path / "run", CliRunner()
    base = ["ct-seg", "train", str(synthetic), "--out", str(run), "--preset", "tiny", "--fold", "all", "--quiet",
            "--set", "data.spacing=[3,3,3]", "--set", "optim.ckpt_every=2"]  # fmt: skip
    assert runner.invoke(cli, [*base, "--steps", "2"]).exit_code == 0
    again = runner.invoke(cli, [*base, "--steps", "2"])
    assert again.exit_code == 2 and "--resume" in again.output  # never overwrites a run silently
    res = runner.invoke(cli, [*base, "--steps", "4", "--resume"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2
    assert json.loads((run / "model.json").read_text())["weights"] == {"from": "last.pt", "step": 4}
