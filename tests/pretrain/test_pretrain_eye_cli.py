"""``medvit pretrain`` on eye data (Uni4Eye): 2D fundus + 3D OCT, one dimensionality per step, both encoders, bad
files skipped, mask strategy and loss weights from the config, exact resume across an epoch; the mixed batches."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from medvit.pretrain.cli import main
from medvit.pretrain.data2d import MixedBatches, VolumeAugment
from medvit.pretrain.uni4eye import Uni4Eye
from medvit.shared.backbone.weights import load_backbone
from medvit.shared.data.synth_eye import synth_fundus, synth_oct
from medvit.shared.errors import ConfigError, DataError

TINY = ["--preset", "uni4eye-tiny", "--device", "cpu", "--quiet", "--batch-size", 2, "--set", "data.batch_size_3d=1"]


@pytest.fixture(scope="module")
def eye_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 colour fundus photographs (numbered alike: the folder scan takes them for B-scans; the pipeline reads them
    as photographs), 3 OCT volumes at the model's grid, an unreadable JPEG and an unreadable NIfTI."""
    root = tmp_path_factory.mktemp("eye")
    synth_fundus(root / "photos", n=8, size=64, seed=0)
    synth_oct(root / "oct", n=3, shape=(64, 64, 32), seed=0)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "bad_scan.nii.gz").write_bytes(b"not gzip")
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eye_cache")


def _run(args: list) -> int:
    return main([str(a) for a in args])


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def step_inputs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Shapes of the batches Uni4Eye trains on (previews, run in eval mode, are left out)."""
    shapes: list[tuple[int, ...]] = []
    real = Uni4Eye.forward

    def forward(self: Uni4Eye, batch, *args, **kwargs):  # noqa: ANN001, ANN202
        if self.training:
            shapes.append(tuple(batch.shape))
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(Uni4Eye, "forward", forward)
    return shapes


def test_end_to_end_one_dimensionality_per_step(
    eye_root: Path, cache_dir: Path, tmp_path: Path, step_inputs: list[tuple[int, ...]]
) -> None:
    out = tmp_path / "run"
    args = [eye_root, "--out", out, *TINY, "--steps", 8, "--set", "train.log_every=1", "--set", "train.preview_every=4"]
    assert _run([*args, "--set", f"data.cache_dir={cache_dir}"]) == 0

    # every step is a batch of 2 images or of 1 volume; epoch 0 (7 steps) holds each kind's share: 4 + 3
    assert len(step_inputs) == 8 and set(step_inputs) == {(2, 3, 64, 64), (1, 1, 64, 64, 32)}
    assert sum(len(s) == 4 for s in step_inputs[:7]) == 4
    metrics = _metrics(out)
    assert [r["step"] for r in metrics] == list(range(1, 9))
    for r, shape in zip(metrics, step_inputs, strict=True):
        assert r["loss"] == pytest.approx(r["loss_intensity"] + r["loss_edge"], rel=1e-5)
        assert f"loss_{len(shape) - 2}d" in r and f"loss_{7 - len(shape)}d" not in r

    rows = {r["path"]: r for r in csv.DictReader((out / "inputs.csv").open())}
    assert len(rows) == 13 and rows["broken.jpg"]["status"] == rows["bad_scan.nii.gz"]["status"] == "error"
    assert rows["broken.jpg"]["dims"] == "2" and rows["bad_scan.nii.gz"]["dims"] == "3"
    assert rows["oct/volumes/oct_000.nii.gz"]["shape"] == "64x64x32"
    assert rows["photos/fundus/fundus_00000.png"]["shape"] == "92x92x3"

    e2, s2 = load_backbone(out / "encoder_2d.safetensors")
    e3, s3 = load_backbone(out / "encoder_3d.safetensors")
    assert (s2["modality"], s2["input_size"], s2["in_chans"]) == ("fundus", [64, 64], 3)
    assert (s3["modality"], s3["input_size"], s3["in_chans"]) == ("OCT", [64, 64, 32], 1)
    assert s3["intensity"] == {"kind": "zscore_nonzero"} and s2["shares_blocks_with"] == "encoder_3d.safetensors"
    assert s2["pretrain_steps"] == s3["pretrain_steps"] == 8
    assert (s2["pretrain_images"], s2["pretrain_volumes"]) == (8, 3)
    assert (s2["steps_2d_per_epoch"], s2["steps_3d_per_epoch"]) == (4, 3) and s2["mask_strategy"] == "random"
    for k, v in e2.blocks.state_dict().items():
        assert torch.equal(v, e3.blocks.state_dict()[k]), k
    assert e3.forward_features(torch.randn(1, 1, 64, 64, 32)).shape == (1, 1 + 32, 48)
    for png in ("latest_2d.png", "latest_3d.png", "step_000004_2d.png", "step_000004_3d.png"):
        assert (out / "previews" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_mask_strategy_loss_weights_and_ratio_from_the_config(
    eye_root: Path, cache_dir: Path, tmp_path: Path, step_inputs: list[tuple[int, ...]]
) -> None:
    out = tmp_path / "run"
    args = [eye_root, "--out", out, *TINY, "--steps", 4, "--set", "train.log_every=1", "--set", "train.preview_every=0"]
    args += ["--set", "model.mask_strategy=entropy", "--set", "model.loss_weights=[1.0,0.5]"]
    args += ["--set", "data.ratio_2d=0.25", "--set", f"data.cache_dir={cache_dir}"]
    assert _run(args) == 0
    _, side = load_backbone(out / "encoder_2d.safetensors")
    assert side["mask_strategy"] == "entropy" and side["loss_weights"] == [1.0, 0.5]
    assert (side["steps_2d_per_epoch"], side["steps_3d_per_epoch"]) == (2, 5)  # round(0.25 x 7) 2D steps
    for r in _metrics(out):
        assert r["loss"] == pytest.approx(r["loss_intensity"] + 0.5 * r["loss_edge"], rel=1e-5)
    assert len(step_inputs) == 4


def test_resume_across_an_epoch_equals_uninterrupted(
    eye_root: Path, cache_dir: Path, tmp_path: Path, kill_training_at: Callable[[int], Callable[[], None]]
) -> None:
    common = [eye_root, *TINY, "--steps", 9, "--set", "train.ckpt_every=2", "--set", "train.log_every=1"]
    common += ["--set", "train.preview_every=0", "--set", f"data.cache_dir={cache_dir}"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert _run([*common, "--out", ref]) == 0
    disarm = kill_training_at(8)  # 7 steps per epoch: the kill lands in the second epoch
    assert _run([*common, "--out", run]) == 130
    disarm()
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 8
    assert _run([*common, "--out", run, "--resume"]) == 0
    got, want = _metrics(run), _metrics(ref)
    assert [r["step"] for r in got] == list(range(1, 10))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit for bit
    a = torch.load(ref / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_only_one_kind_and_too_few_inputs(
    eye_root: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos_only"
    shutil.copytree(eye_root / "photos", photos)
    out = tmp_path / "photos_run"
    assert _run([photos, "--out", out, *TINY, "--steps", 2, "--set", f"data.cache_dir={cache_dir}"]) == 0
    _, side = load_backbone(out / "encoder_3d.safetensors")  # written even though no volume was seen
    assert (side["steps_2d_per_epoch"], side["steps_3d_per_epoch"]) == (4, 0)
    assert _run([eye_root, "--out", tmp_path / "x", *TINY, "--steps", 1, "--set", "data.batch_size_3d=4"]) == 2
    assert "fewer than one 3D batch" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the batches
class _Stub:
    """A member dataset whose item ``i`` is a tensor of ``i`` (2D) and which records reseeds."""

    def __init__(self, n: int, dims: int) -> None:
        self.n, self.dims, self.seeds = n, dims, []

    def __len__(self) -> int:
        return self.n

    def reseed(self, seed: int) -> None:
        self.seeds.append(seed)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((1,) * (self.dims + 1), float(i))}


def test_mixed_batches_keep_ranks_in_step_and_use_each_input_once_per_epoch() -> None:
    images, volumes = _Stub(12, 2), _Stub(8, 3)
    mb = MixedBatches(images, volumes, batch_2d=3, batch_3d=2, world=2, seed=4)
    assert mb.steps_per_epoch == 2 + 2 and len(mb) == 8  # 12 / (3 x 2) and 8 / (2 x 2)
    for epoch in (0, 1):
        mb.set_epoch(epoch)
        used: dict[int, list[int]] = {2: [], 3: []}
        for step in range(mb.steps_per_epoch):
            a, b = mb[2 * step], mb[2 * step + 1]  # ranks 0 and 1 of one step
            assert a["dims"] == b["dims"] == mb.kind_of(2 * step) and a["image"].ndim == a["dims"] + 2
            assert len(a["members"]) == len(b["members"]) == (3 if a["dims"] == 2 else 2)
            used[a["dims"]] += a["members"].tolist() + b["members"].tolist()
            assert a["image"].flatten().tolist() == [float(m) for m in a["members"]]
        assert sorted(used[2]) == list(range(12)) and sorted(used[3]) == list(range(8))
        if epoch == 0:
            first = (list(mb.kinds), used)
    assert (list(mb.kinds), used) != first  # a new interleaving and new batches each epoch
    mb.set_epoch(0)
    again = [mb[k]["members"].tolist() for k in range(len(mb))]
    mb.set_epoch(0)
    assert again == [mb[k]["members"].tolist() for k in range(len(mb))]


def test_mixed_batches_ratio_and_errors() -> None:
    mb = MixedBatches(_Stub(40, 2), _Stub(10, 3), batch_2d=2, batch_3d=1, ratio_2d=0.5)
    assert mb.kinds.count(2) == mb.kinds.count(3) == 15  # 20 + 10 steps split evenly
    mb[len(mb) - 1]  # more 3D steps than volumes: a second permutation of them is appended
    assert sorted(mb.orders[3][:10].tolist()) == list(range(10))
    with pytest.raises(DataError, match="fewer than one 3D batch"):
        MixedBatches(_Stub(4, 2), _Stub(1, 3), batch_2d=2, batch_3d=2)
    with pytest.raises(ConfigError, match="ratio_2d"):
        MixedBatches(_Stub(4, 2), None, batch_2d=2, batch_3d=1, ratio_2d=0.5)


def test_volume_augment_z_scores_the_non_zero_voxels() -> None:
    rng = np.random.default_rng(0)
    vol = rng.integers(1, 255, (8, 6, 4)).astype(np.uint8)
    vol[:2] = 0  # background
    aug = VolumeAugment(train=False)
    out = aug(vol)[0].numpy()
    inside = out[2:]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-5
    ref = (vol[2:].astype(np.float64) - vol[2:].mean()) / vol[2:].std()
    np.testing.assert_allclose(inside, ref, atol=1e-5)
    train = VolumeAugment(flip=1.0, noise_prob=0.0)
    train.reseed(3)
    flipped = train(vol)[0].numpy()
    np.testing.assert_allclose(flipped[::-1, ::-1, ::-1][2:], ref, atol=1e-5)  # every axis flipped


@pytest.mark.slow  # torchrun spawn, two gloo processes
def test_torchrun_two_processes_take_the_same_kind_each_step(eye_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "medvit.pretrain.cli", str(eye_root), "--out", str(out), *map(str, TINY), "--steps", "4"]
    cmd += ["--set", "train.log_every=1", "--set", f"data.cache_dir={cache_dir}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["world_size"] == 2
    # 8 images / (2 x 2) = 2 2D steps and 3 volumes / (1 x 2) = 1 3D step per epoch: each step one kind on both ranks
    metrics = _metrics(out)
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    assert sum("loss_2d" in r for r in metrics[:3]) == 2 and sum("loss_3d" in r for r in metrics[:3]) == 1
    _, side = load_backbone(out / "encoder_3d.safetensors")
    assert side["pretrain_steps"] == 4 and (side["steps_2d_per_epoch"], side["steps_3d_per_epoch"]) == (2, 1)
