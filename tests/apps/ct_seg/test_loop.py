"""ct-seg train on synthetic CT: --resume (to the requested step; after a kill, bit for bit), weights from encoder
sidecars and MONAI UNETR checkpoints, torchrun.

The learning loop (pretrain -> train -> predict -> evaluate, Dice >= 0.8) is the demo's ct-seg part, run once per
test session in ``tests/test_demo.py``: one loop trained once serves both the demo's promise and the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medvit.shared.data.synth import synth_ct


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ct") / "Dataset900_Synth"
    synth_ct(root, n=16, seed=0, shape=(64, 64, 32), n_organs=(5, 5), n_test=4)
    return root


def test_train_resumes_to_the_requested_step(synthetic: Path, tmp_path: Path, cli) -> None:
    run, runner = tmp_path / "run", CliRunner()
    base = [
        "ct-seg",
        "train",
        str(synthetic),
        "--out",
        str(run),
        "--preset",
        "tiny",
        "--fold",
        "all",
        "--quiet",
        "--set",
        "data.spacing=[3,3,3]",
        "--set",
        "optim.ckpt_every=2",
    ]
    assert runner.invoke(cli, [*base, "--steps", "2"]).exit_code == 0
    again = runner.invoke(cli, [*base, "--steps", "2"])
    assert again.exit_code == 2 and "--resume" in again.output  # never overwrites a run silently
    res = runner.invoke(cli, [*base, "--steps", "4", "--resume"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2
    assert json.loads((run / "model.json").read_text())["weights"] == {"from": "last.pt", "step": 4}


@pytest.mark.slow  # three training runs
@pytest.mark.parametrize("workers", [2])  # 0 workers: the engine and fiqa resume tests
def test_resume_after_kill_equals_uninterrupted(
    synthetic: Path, tmp_path: Path, cli, workers: int, kill_training_at
) -> None:
    # Random crops and flips/rotations/intensity (MONAI transforms with their own generators), validation every
    # 2 steps (best.pt), DataLoader workers: the kill after step 4 lands mid-epoch (12 training cases, batch 2).
    import torch

    args = ["ct-seg", "train", str(synthetic), "--preset", "tiny", "--fold", "0", "--steps", "6", "--quiet"]
    for s in ("data.spacing=[3,3,3]", "optim.ckpt_every=2", "optim.log_every=1", "optim.eval_every=2"):
        args += ["--set", s]
    args += ["--set", f"optim.workers={workers}"]
    runner = CliRunner()
    ref, run = tmp_path / "ref", tmp_path / "run"
    res = runner.invoke(cli, [*args, "--out", str(ref)])
    assert res.exit_code == 0, res.output

    disarm = kill_training_at(4)
    runner.invoke(cli, [*args, "--out", str(run)])
    disarm()
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 4
    res = runner.invoke(cli, [*args, "--out", str(run), "--resume"])
    assert res.exit_code == 0, res.output

    def records(r: Path) -> list[dict]:
        return [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]

    strip = ("time", "samples_per_s")
    assert [{k: v for k, v in x.items() if k not in strip} for x in records(run)] == [
        {k: v for k, v in x.items() if k not in strip} for x in records(ref)
    ]  # losses and validation Dice, exactly
    a = torch.load(ref / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ct") / "small"
    synth_ct(root, n=2, seed=3, shape=(24, 24, 16), n_organs=(2, 3))
    return root


def test_preprocessing_comes_from_the_encoder_sidecar_unless_overridden(small: Path, tmp_path: Path, cli) -> None:
    from medvit.shared.backbone import create_backbone
    from medvit.shared.backbone.weights import save_backbone

    enc = create_backbone("test_vit_3d", img_size=48, patch_size=(16, 16, 16), embed_dim=24, depth=2, num_heads=2)
    weights = save_backbone(
        enc, tmp_path / "enc.safetensors", metadata={"spacing": [2.5, 2.5, 3.0], "hu_window": [-100.0, 200.0]}
    )
    opts = "--preset tiny --fold all --steps 1 --quiet"
    base = ["ct-seg", "train", str(small), "--weights", str(weights), *opts.split()]
    runner = CliRunner()
    assert runner.invoke(cli, [*base, "--out", str(tmp_path / "a")]).exit_code == 0
    pre = json.loads((tmp_path / "a" / "model.json").read_text())["preprocess"]
    assert pre["spacing"] == [2.5, 2.5, 3.0] and pre["hu_window"] == [-100.0, 200.0]
    spec = json.loads((tmp_path / "a" / "model.json").read_text())
    assert spec["encoder"]["embed_dim"] == 24  # the export's architecture, not the preset's
    res = runner.invoke(cli, [*base, "--out", str(tmp_path / "b"), "--set", "data.spacing=[3,3,3]"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b" / "model.json").read_text())["preprocess"]["spacing"] == [3.0, 3.0, 3.0]


def test_monai_unetr_weights_start_the_whole_network(small: Path, tmp_path: Path, cli) -> None:
    import monai.networks.nets as monai_nets
    import torch

    ref = monai_nets.UNETR(1, 6, (48, 48, 32), feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "unetr.pt")
    run = tmp_path / "run"
    opts = "--preset tiny --fold all --steps 1 --quiet --set model.num_heads=2 --set data.spacing=[3,3,3]"
    # a non-cubic grid is not inferable from 18 position embeddings: name the size MONAI was trained on
    opts += " --set model.checkpoint_img_size=[48,48,32]"
    args = ["ct-seg", "train", str(small), "--out", str(run), "--weights", str(tmp_path / "unetr.pt"), *opts.split()]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    dec = json.loads((run / "model.json").read_text())["decoder"]
    assert dec["taps"] == [3, 6, 9, 11] and dec["feature_size"] == 4  # MONAI's layout, kept


@pytest.mark.slow  # torchrun spawn
def test_train_under_torchrun_two_processes(synthetic: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 -m medvit ct-seg train``: gloo, 2 steps, one checkpoint written by rank 0."""
    import os
    import subprocess
    import sys

    import torch

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "medvit"]
    cmd += ["ct-seg", "train", str(synthetic), "--out", str(run), "--preset", "tiny", "--fold", "all", "--quiet"]
    cmd += ["--steps", "2", "--set", "data.spacing=[3,3,3]", "--set", "optim.log_every=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["world_size"] == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2]  # rank 0 alone writes the metrics
    assert (run / "model.safetensors").is_file()
