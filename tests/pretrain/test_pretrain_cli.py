"""``medvit pretrain DIR`` end to end on synthetic CT: mixed layouts, bad files, outputs, resume, torchrun."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medvit.pretrain.api import run_pretrain
from medvit.pretrain.cli import main
from medvit.pretrain.config import PretrainConfig
from medvit.pretrain.hi_end_mae import official_key_shapes
from medvit.pretrain.preview import crop_center, mid_slices, save_preview
from medvit.shared.backbone.weights import load_backbone
from medvit.shared.config import load_config
from medvit.shared.data.synth import synth_ct

TINY = ["--preset", "tiny", "--device", "cpu", "--quiet", "--crops-per-volume", "2"]


def _write_dicom_series(folder: Path, n_slices: int = 16) -> None:
    """A small CT series from pydicom's bundled CT_small.dcm, slices 2.5 mm apart."""
    import pydicom
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True)
    src = get_testdata_file("CT_small.dcm")
    for k in range(n_slices):
        ds = pydicom.dcmread(src)
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mixed folder: nnU-Net raw layout (2 cases), a loose NIfTI, a DICOM series, and two unreadable files."""
    root = tmp_path_factory.mktemp("ct")
    synth_ct(root / "Dataset001_Synth", n=2, seed=0, shape=(48, 48, 32))
    extra = tmp_path_factory.mktemp("extra")
    synth_ct(extra, n=1, seed=5, shape=(40, 40, 24))
    shutil.copy(extra / "imagesTr" / "case_000_0000.nii.gz", root / "loose_scan.nii.gz")
    _write_dicom_series(root / "series_a")
    (root / "broken.nii.gz").write_bytes(b"not a gzip file at all")
    (root / "empty.nii").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _run(args: list[str]) -> int:
    return main([str(a) for a in args])


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_outputs(ct_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = _run(
        [ct_root, "--out", out, *TINY, "--steps", 3, "--batch-size", 2, "--set", "train.preview_every=2"]
        + ["--set", "train.log_every=1", "--set", f"data.cache_dir={cache_dir}"]
    )
    assert code == 0

    rows = list(csv.DictReader((out / "volumes.csv").open()))
    status = {Path(r["path"]).name: r["status"] for r in rows}
    assert len(rows) == 6
    assert status["series_a"] == "ok" and status["loose_scan.nii.gz"] == "ok"
    assert status["case_000_0000.nii.gz"] == status["case_001_0000.nii.gz"] == "ok"
    assert status["broken.nii.gz"].startswith("skipped:") and "gzip" in status["broken.nii.gz"]
    assert status["empty.nii"].startswith("skipped:") and "empty" in status["empty.nii"].lower()

    # encoder export: loads with load_backbone, sidecar carries what downstream apps need
    enc, side = load_backbone(out / "encoder.safetensors")
    assert side["method"] == "hi-end-mae" and side["preset"] == "tiny"
    assert side["spacing"] == [1.5, 1.5, 1.5] and side["orientation"] == "RAS"
    assert side["intensity"]["a_min"] == -175.0 and side["intensity"]["a_max"] == 250.0
    assert side["patch_size"] == [16, 16, 16] and side["crop_size"] == [48, 48, 48]
    assert side["taps"] == [1, 2, 3] and side["pretrain_steps"] == 3
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 3
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, ckpt["model"][f"encoder.{k}"], msg=k)
    feats = enc.forward_features(torch.rand(1, 1, 48, 48, 48))
    assert feats.shape == (1, 1 + 27, 96)

    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
    for png in ("previews/step_000002.png", "previews/step_000003.png", "previews/latest.png", "plots/loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert not list(out.glob("**/.*tmp*"))
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["resolved"]["method"] == "hi-end-mae" and resolved["train"]["steps"] == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "x.nii.gz").write_bytes(b"junk"), "none of the 1 volume"),
        (lambda d: (d / "notes.txt").write_text("hello"), "no volumes found"),
    ],
)
def test_no_usable_volume_is_a_clear_error(
    tmp_path: Path, make, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make(data)
    assert _run([data, "--out", tmp_path / "run", *TINY, "--steps", 1, "--batch-size", 1]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_existing_run_needs_resume_and_bad_options_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    assert _run([tmp_path, "--out", out, *TINY, "--steps", 1]) == 2
    assert "--resume" in capsys.readouterr().err
    assert _run([tmp_path, "--out", tmp_path / "r2", *TINY, "--steps", 1, "--set", "data.crop_size=[40,40,40]"]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
    assert _run([tmp_path, "--out", tmp_path / "r3", *TINY, "--steps", 1, "--set", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err


def test_out_defaults_to_the_runs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --out the run goes to $MEDVIT_RUNS/pretrain (./runs/pretrain when it is unset); a config file's out
    and --out still win. The command only resolves the config and hands it to the API."""
    import medvit.pretrain.api as api

    seen: list[PretrainConfig] = []
    monkeypatch.setattr(api, "run_pretrain", lambda cfg, resume=False: seen.append(cfg))
    monkeypatch.setenv("MEDVIT_RUNS", str(tmp_path / "root"))
    assert _run([tmp_path, *TINY, "--steps", 1]) == 0
    assert isinstance(seen[-1], PretrainConfig) and seen[-1].out == tmp_path / "root" / "pretrain"
    assert seen[-1].model.preset == "tiny" and seen[-1].train.steps == 1

    monkeypatch.delenv("MEDVIT_RUNS")
    monkeypatch.chdir(tmp_path)
    assert _run([tmp_path, *TINY, "--steps", 1]) == 0
    assert seen[-1].out == Path.cwd() / "runs" / "pretrain"

    cfg_file = tmp_path / "pre.yaml"
    cfg_file.write_text(f"out: {tmp_path / 'from_file'}\n")
    assert _run([tmp_path, *TINY, "--steps", 1, "--config", cfg_file]) == 0
    assert seen[-1].out == tmp_path / "from_file"
    assert _run([tmp_path, *TINY, "--steps", 1, "--config", cfg_file, "--out", tmp_path / "opt"]) == 0
    assert seen[-1].out == tmp_path / "opt"


class _Interrupt:
    """Simulates a kill right after the step-``at`` checkpoint was written."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, state) -> None:  # noqa: ANN001
        if state.step == self.at:
            raise KeyboardInterrupt


def test_resume_after_interruption_matches_uninterrupted_run(ct_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    common = [*TINY, "--steps", 4, "--batch-size", 2, "--set", "train.ckpt_every=2", "--set", "train.log_every=1"]
    common += ["--set", f"data.cache_dir={cache_dir}", "--set", "train.preview_every=0"]
    ref = tmp_path / "ref"
    assert _run([ct_root, "--out", ref, *common]) == 0

    out = tmp_path / "run"
    cfg = load_config(
        PretrainConfig,
        None,
        ["train.ckpt_every=2", "train.log_every=1", f"data.cache_dir={cache_dir}", "train.preview_every=0"],
        data_dir=ct_root,
        out=out,
        **{
            "model.preset": "tiny",
            "train.device": "cpu",
            "train.steps": 4,
            "train.batch_size": 2,
            "data.crops_per_volume": 2,
            "quiet": True,
        },
    )
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(cfg, hooks=[_Interrupt(2)])
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    assert not (out / "encoder.safetensors").exists()

    assert _run([ct_root, "--out", out, *common, "--resume"]) == 0
    got, want = _metrics(out), _metrics(ref)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit for bit
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4
    a, _ = load_backbone(out / "encoder.safetensors")
    b, _ = load_backbone(ref / "encoder.safetensors")
    assert [k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k])] == []


def test_mae_method_with_config_file_and_official_init(ct_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    """--method mae from a YAML config (--steps overrides its epochs); Hi-End-MAE continued from official weights."""
    cfg_file = tmp_path / "pre.yaml"
    cfg_file.write_text("model:\n  method: mae\n  mask_ratio: 0.6\ntrain:\n  epochs: 50\n")
    out = tmp_path / "mae"
    assert (
        _run([ct_root, "--out", out, "--config", cfg_file, *TINY, "--steps", 1, "--set", f"data.cache_dir={cache_dir}"])
        == 0
    )
    _, side = load_backbone(out / "encoder.safetensors")
    assert side["method"] == "mae" and side["mask_ratio"] == 0.6 and side["pretrain_steps"] == 1

    # an official-layout checkpoint (module. prefixes, 'state_dict' wrapper) of the tiny sizes
    from medvit.pretrain.presets import build_model, get_preset

    torch.manual_seed(123)
    src = build_model(get_preset("hi-end-mae", "tiny"))
    shapes = official_key_shapes(src)
    sd = {k: torch.randn(s) * 0.02 for k, s in shapes.items()}
    sd["encoder_pos_embed"] = src.encoder.pos_embed.detach().clone()
    ckpt = tmp_path / "hi_end_mae_10k.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, ckpt)
    out2 = tmp_path / "cont"
    args = [ct_root, "--out", out2, *TINY, "--steps", 1, "--lr", "1e-5", "--set", f"model.init={ckpt}"]
    assert _run([*args, "--set", f"data.cache_dir={cache_dir}"]) == 0
    enc, _ = load_backbone(out2 / "encoder.safetensors")
    # one step at lr 1e-5 moves each weight by about 1e-5: the export is the imported checkpoint
    torch.testing.assert_close(enc.blocks[0].attn.qkv.weight, sd["encoder.blocks.0.attn.qkv.weight"], atol=1e-4, rtol=0)
    last = torch.load(out2 / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(
        last["decoder.cross_attention_blocks.2.cross_attn.kv.weight"],
        sd["decoder.cross_attention_blocks.2.cross_attn.kv.weight"],
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.slow  # torchrun spawn
def test_torchrun_two_processes(ct_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "medvit.pretrain.cli", str(ct_root), "--out", str(out), *TINY, "--steps", "2", "--batch-size", "1"]
    cmd += ["--set", "train.log_every=1", "--set", f"data.cache_dir={cache_dir}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["world_size"] == 2
    assert [r["step"] for r in _metrics(out)] == [1, 2]
    enc, side = load_backbone(out / "encoder.safetensors")
    assert side["pretrain_steps"] == 2
    assert (out / "previews" / "latest.png").is_file() and (out / "plots" / "loss.png").is_file()


# ---------------------------------------------------------------------------------------------- previews
def test_preview_png_and_helpers(tmp_path: Path) -> None:
    vol = np.random.default_rng(0).random((20, 16, 12)).astype(np.float32)
    slices = mid_slices(vol)
    assert [s.shape for _, s in slices] == [(16, 20), (12, 20), (12, 16)]
    path = save_preview(tmp_path / "p.png", {"original": vol, "masked": vol, "reconstruction": vol, "error": vol * 0})
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 400
    t = torch.arange(5 * 3 * 8, dtype=torch.float32).reshape(1, 5, 3, 8)
    c = crop_center(t, (3, 5, 4))
    assert c.shape == (1, 3, 5, 4)
    torch.testing.assert_close(c[0, :, 1:4, :], t[0, 1:4, :, 2:6])  # cropped x/z, zero-padded y
    assert torch.all(c[0, :, 0] == 0) and torch.all(c[0, :, 4] == 0)


def test_preprocessing_pass_in_worker_processes_gives_the_same_verdicts(ct_root: Path, tmp_path: Path) -> None:
    from medvit.pretrain.api import _check_volumes
    from medvit.shared.data.cache import VolumeCache
    from medvit.shared.data.scan import find_volumes
    from medvit.shared.data.transforms import ct_preprocess

    sources = find_volumes(ct_root)
    pre = ct_preprocess(spacing=(1.5, 1.5, 1.5), hu_window=(-175.0, 250.0), load=True)
    serial = _check_volumes(sources, VolumeCache(tmp_path / "a", "sig"), pre, progress=False, workers=0)
    pooled = _check_volumes(sources, VolumeCache(tmp_path / "b", "sig"), pre, progress=False, workers=2)
    assert [(s.case_id, s.status, s.shape) for s in pooled] == [(s.case_id, s.status, s.shape) for s in serial]
    assert sum(s.status == "ok" for s in pooled) == 4
    assert len(list((tmp_path / "b").glob("*.json"))) == 4  # the workers filled the cache
