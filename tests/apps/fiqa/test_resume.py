"""`fiqa train --resume` after a kill lands on exactly the uninterrupted run: losses and weights, bit for bit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medvit.cli import app


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvit.shared.data.synth import synth_faces

    root = tmp_path_factory.mktemp("fiqa_resume")
    synth_faces(root, identities=6, images_per_identity=6, seed=0)
    return root


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_kill_equals_uninterrupted(
    faces: Path, tmp_path: Path, workers: int, kill_training_at: Callable[[int], Callable[[], None]]
) -> None:
    # Full augmentation (albumentations' own generators), masking and dropout (torch), DataLoader workers: every
    # random stream of the recipe is in play; the kill lands mid-epoch (36 faces, batch 8).
    args = [
        "fiqa", "train", str(faces), "--preset", "tiny", "--steps", "6", "--quiet",
        "--set", "data.augment=full", "--set", "optim.batch_size=8", "--set", f"optim.workers={workers}",
        "--set", "optim.ckpt_every=2", "--set", "optim.log_every=1",
    ]  # fmt: skip
    runner = CliRunner()
    ref, run = tmp_path / "ref", tmp_path / "run"
    res = runner.invoke(app, [*args, "--out", str(ref)])
    assert res.exit_code == 0, res.output

    disarm = kill_training_at(4)
    runner.invoke(app, [*args, "--out", str(run)])
    disarm()
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 4
    res = runner.invoke(app, [*args, "--out", str(run), "--resume"])
    assert res.exit_code == 0, res.output

    assert _losses(run) == _losses(ref)  # exact equality: same arithmetic, same random draws
    a = torch.load(ref / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
