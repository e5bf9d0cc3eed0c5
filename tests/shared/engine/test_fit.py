"""The fit loop on a tiny CPU regression task: overfitting, resume == uninterrupted, checkpoints, errors, hooks."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from medvit.shared.engine.checkpoint import load_checkpoint
from medvit.shared.engine.fit import (
    FitState,
    TrainConfig,
    fit,
    move_to_device,
    resolve_device,
    resolve_precision,
)
from medvit.shared.engine.optim import lr_at
from medvit.shared.engine.section import OptimSection
from medvit.shared.errors import ConfigError, DataError, TrainingError


class Regression(Dataset):
    """``y = tanh(x @ w)`` on ``n`` fixed points; with ``noise`` each fetch adds fresh noise from the global RNG."""

    def __init__(self, n: int = 256, noise: float = 0.0) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.tanh(self.x @ (0.5 * torch.randn(8, 2, generator=g)))
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i]
        if self.noise:
            x = x + self.noise * torch.randn_like(x)  # random augmentation: RNG state must survive resume
        return {"x": x, "y": self.y[i]}


class MLPTask(nn.Module):
    """2-layer MLP regression; optional dropout (RNG-dependent) and a NaN loss from a given forward call on."""

    def __init__(self, dropout: float = 0.0, nan_from_call: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 2))
        self.nan_from_call = nan_from_call
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        self.calls += 1
        loss = nn.functional.mse_loss(self.net(batch["x"]), batch["y"])
        if self.nan_from_call is not None and self.calls >= self.nan_from_call:
            loss = loss * float("nan")
        return {"loss": loss, "logs": {"abs_err": (self.net(batch["x"]) - batch["y"]).abs().mean()}}


def make_task(seed: int = 0, **kw: Any) -> MLPTask:
    torch.manual_seed(seed)
    return MLPTask(**kw)


def full_loss(task: nn.Module, data: Regression) -> float:
    task.eval()
    with torch.no_grad():
        return nn.functional.mse_loss(task.net(data.x), data.y).item()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def cfg_of(**kw: Any) -> TrainConfig:
    base = {"steps": 20, "batch_size": 16, "lr": 1e-2, "log_every": 5, "ckpt_every": 10, "device": "cpu", "seed": 0}
    return TrainConfig(**{**base, **kw})


class StopAt:
    """Simulates a kill: raises from ``on_step_end`` once ``step`` is reached."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: FitState) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt(f"simulated kill at step {state.step}")


def test_overfits_tiny_task_and_writes_run_dir(tmp_path: Path) -> None:
    data = Regression(256)
    task = make_task()
    before = full_loss(task, data)
    cfg = cfg_of(steps=200, batch_size=32, lr=5e-2, warmup_steps=10, weight_decay=0.0, log_every=10, ckpt_every=50)
    result = fit(task, data, cfg, tmp_path / "run", quiet=True, resolved_config={"app": "demo", "train": cfg.to_dict()})
    after = full_loss(task, data)
    assert after < 0.1 * before, (before, after)

    run = tmp_path / "run"
    assert result.step == 200 and result.run_dir == run and math.isfinite(result.final_loss)
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(10, 201, 10))
    for r in records:
        assert {"step", "epoch", "loss", "lr", "samples_per_s", "time", "abs_err"} <= r.keys()
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg))
    assert records[-1]["loss"] < 0.2 * records[0]["loss"]
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["app"] == "demo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 200 and summary["world_size"] == 1 and summary["device"] == "cpu"
    assert summary["final_loss"] == pytest.approx(result.final_loss)
    assert (run / "plots" / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in run.glob("ckpt_step*.pt")) == ["ckpt_step00000150.pt", "ckpt_step00000200.pt"]
    assert not list(run.glob(".*tmp*"))


@pytest.mark.parametrize(("grad_accum", "workers", "noise"), [(1, 0, 0.05), (2, 0, 0.05), (2, 2, 0.05)])
def test_resume_equals_uninterrupted(tmp_path: Path, grad_accum: int, workers: int, noise: float) -> None:
    # 36 samples / batch 4 = 9 micro-batches per epoch: with grad_accum=2 steps straddle epoch boundaries and
    # the kill lands mid-epoch, so the data position (epoch, batch) must be restored exactly. Dropout and the
    # dataset's random noise (main-process RNG when workers=0) check that the RNG states are restored too.
    data = Regression(36, noise=noise)
    cfg = cfg_of(
        steps=20, batch_size=4, grad_accum=grad_accum, workers=workers, log_every=1, ckpt_every=4, warmup_steps=3
    )

    task_a = make_task(seed=0, dropout=0.2)
    res_a = fit(task_a, data, cfg, tmp_path / "a", quiet=True)

    task_b = make_task(seed=0, dropout=0.2)
    with pytest.raises(KeyboardInterrupt):
        fit(task_b, data, cfg, tmp_path / "b", quiet=True, hooks=[StopAt(10)])
    run_b = tmp_path / "b"
    assert load_checkpoint(run_b / "last.pt")["step"] == 8
    assert [r["step"] for r in read_metrics(run_b)] == list(range(1, 11))  # steps 9, 10 came after the checkpoint
    with open(run_b / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "lo')  # a line torn by the kill
    task_b2 = make_task(seed=123, dropout=0.2)  # a fresh process: different init, all state comes from last.pt
    res_b = fit(task_b2, data, cfg, run_b, quiet=True, resume=True)

    assert res_b.step == res_a.step == 20
    for (name, pa), pb in zip(task_a.state_dict().items(), task_b2.state_dict().values(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-6, msg=f"weights differ at {name}")
    rec_a, rec_b = read_metrics(tmp_path / "a"), read_metrics(run_b)
    assert [r["step"] for r in rec_b] == list(range(1, 21))
    for ra, rb in zip(rec_a, rec_b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6) and rb["epoch"] == ra["epoch"]
    assert res_b.final_loss == pytest.approx(res_a.final_loss, abs=1e-6)
    summary = json.loads((run_b / "summary.json").read_text())
    assert summary["resumed_from_step"] == 8 and summary["steps_this_run"] == 12


def test_resume_when_finished_is_a_no_op(tmp_path: Path) -> None:
    data = Regression(64)
    task = make_task()
    fit(task, data, cfg_of(steps=6, ckpt_every=3), tmp_path / "r", quiet=True)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    res = fit(make_task(seed=5), data, cfg_of(steps=6, ckpt_every=3), tmp_path / "r", quiet=True, resume=True)
    assert res.step == 6
    assert torch.equal(load_checkpoint(tmp_path / "r" / "last.pt")["model"]["net.0.weight"], before["net.0.weight"])


def test_crash_during_save_keeps_previous_last_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save
    calls = collections.Counter()

    def flaky_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 4) dies half-written
            f.write(b"PK\x03\x04 half a zip file")
            raise OSError("No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    run = tmp_path / "run"
    cfg = cfg_of(steps=6, ckpt_every=2, log_every=1)
    with pytest.raises(OSError, match="No space"):
        fit(make_task(), Regression(64), cfg, run, quiet=True)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pt") == ["ckpt_step00000002.pt", "last.pt"]
    assert not list(run.glob(".*tmp*"))

    monkeypatch.setattr(torch, "save", real_save)
    res = fit(make_task(seed=9), Regression(64), cfg, run, quiet=True, resume=True)
    assert res.step == 6 and load_checkpoint(run / "last.pt")["step"] == 6


@pytest.mark.parametrize("keep_last", [1, 3])
def test_keep_last_and_weights_only_contents(tmp_path: Path, keep_last: int) -> None:
    run = tmp_path / "run"
    task = make_task()
    fit(task, Regression(64), cfg_of(steps=10, ckpt_every=2, keep_last=keep_last), run, quiet=True)
    steps = sorted(int(p.stem[len("ckpt_step") :]) for p in run.glob("ckpt_step*.pt"))
    assert steps == [10, 8, 6][:keep_last][::-1]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "step",
        "epoch",
        "batch_in_epoch",
        "rng",
        "medvit_version",
    } <= (ckpt.keys())
    assert ckpt["step"] == 10 and ckpt["scheduler"] == {"step": 10}
    assert {"python", "numpy", "torch", "cuda"} <= ckpt["rng"][0].keys()
    for k, v in task.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)


def test_non_finite_loss_names_step_and_keeps_last_good(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # batch 16 of 64 samples, grad_accum 1: forward call 14 is step 14 (with the abs_err log no extra call)
    task = make_task(nan_from_call=14)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 14") as info:
        fit(task, Regression(64), cfg_of(steps=20, ckpt_every=5), run, quiet=True)
    assert "last.pt (step 10)" in str(info.value)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(torch.isfinite(v).all() for v in task.state_dict().values())  # the bad step was not applied


def test_non_finite_weights_after_an_update_stop_the_run(tmp_path: Path) -> None:
    # lr 1e39 is a finite float64 but overflows the float32 update: step 1's loss is finite, its weights are not.
    run = tmp_path / "run"
    task = make_task()
    with pytest.raises(
        TrainingError, match=r"non-finite weights after the update of step 1 .*Last good checkpoint: none"
    ):
        fit(task, Regression(64), cfg_of(steps=4, lr=1e39, warmup_steps=0, ckpt_every=1), run, quiet=True)
    assert not (run / "last.pt").exists()  # the bad weights never reach a checkpoint


def test_second_training_into_a_run_dir_in_use_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / ".medvit.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "since": 0}))
    with pytest.raises(TrainingError, match=f"in use by another run .*pid {os.getppid()}"):
        fit(make_task(), Regression(64), cfg_of(steps=2), run, quiet=True)
    assert sorted(p.name for p in run.iterdir()) == [".medvit.lock"]


def test_run_dir_guards(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="no checkpoint to resume"):
        fit(make_task(), Regression(64), cfg_of(steps=2), run, quiet=True, resume=True)
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # an attempt that died before a checkpoint
    fit(make_task(), Regression(64), cfg_of(steps=2, log_every=1), run, quiet=True)
    assert [r["step"] for r in read_metrics(run)] == [1, 2] and read_metrics(run)[0]["loss"] != 9.0
    with pytest.raises(TrainingError, match="pass --resume .* another --out"):
        fit(make_task(), Regression(64), cfg_of(steps=4), run, quiet=True)


def test_epochs_convert_to_steps_and_small_dataset_error(tmp_path: Path) -> None:
    # 36 samples, batch 4, drop_last: 9 batches/epoch; grad_accum 2 -> 2 * 9 // 2 = 9 steps
    res = fit(
        make_task(),
        Regression(36),
        cfg_of(steps=None, epochs=2, batch_size=4, grad_accum=2),
        tmp_path / "e",
        quiet=True,
    )
    assert res.step == 9
    with pytest.raises(DataError, match="fewer than one batch"):
        fit(make_task(), Regression(3), cfg_of(batch_size=4), tmp_path / "small", quiet=True)


class EvalHook:
    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.seen: list[int] = []
        self.ended = False

    def on_eval(self, state: FitState) -> dict[str, float]:
        assert not state.task.training and not torch.is_grad_enabled()
        self.seen.append(state.step)
        return {"score": self.values[len(self.seen) - 1]}

    def on_fit_end(self, state: FitState) -> None:
        self.ended = state.step == state.total_steps


@pytest.mark.parametrize(
    ("metric", "mode", "best", "best_step"), [("val/score", "max", 0.9, 4), ("score", "min", 0.1, 6)]
)
def test_eval_hooks_and_best_checkpoint(tmp_path: Path, metric: str, mode: str, best: float, best_step: int) -> None:
    hook = EvalHook([0.5, 0.9, 0.1, 0.3])
    cfg = cfg_of(steps=8, eval_every=2, log_every=4, best_metric=metric, best_mode=mode)
    task = make_task()
    res = fit(task, Regression(64), cfg, tmp_path / "run", quiet=True, hooks=[hook])
    assert hook.seen == [2, 4, 6, 8] and hook.ended
    assert (res.best, res.best_step) == (best, best_step)
    records = {r["step"]: r for r in read_metrics(tmp_path / "run")}
    assert sorted(records) == [2, 4, 6, 8]
    assert records[2]["val/score"] == 0.5 and "loss" not in records[2]
    assert records[4]["val/score"] == 0.9 and "loss" in records[4]
    best_ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best_ckpt["step"] == best_step and best_ckpt["best"]["value"] == best
    assert task.training  # eval mode is undone


def test_grad_clip_logs_grad_norm(tmp_path: Path) -> None:
    fit(make_task(), Regression(64), cfg_of(steps=4, log_every=2, grad_clip=0.5), tmp_path / "run", quiet=True)
    assert all(r["grad_norm"] > 0 for r in read_metrics(tmp_path / "run"))


def test_move_to_device_nested() -> None:
    Pair = collections.namedtuple("Pair", "a b")
    batch = {"x": torch.ones(2), "meta": ["id", 3], "nested": (torch.zeros(1), Pair(torch.ones(1), "s"))}
    out = move_to_device(batch, torch.device("cpu"))
    assert out["meta"] == ["id", 3] and isinstance(out["nested"], tuple) and isinstance(out["nested"][1], Pair)
    assert torch.equal(out["x"], batch["x"]) and out["nested"][1].b == "s"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of steps or epochs"),
        ({"steps": 5, "epochs": 2}, "exactly one of steps or epochs"),
        ({"steps": 5, "precision": "fp8"}, "train.precision"),
        ({"steps": 5, "device": "gpu"}, "train.device"),
        ({"steps": 5, "grad_accum": 0}, "train.grad_accum"),
        ({"steps": 5, "warmup_steps": 2, "warmup_fraction": 0.1}, "not both"),
        ({"steps": 5, "layer_decay": 1.5}, "train.layer_decay"),
        ({"steps": 5, "best_mode": "up"}, "train.best_mode"),
        ({"steps": 5, "lr": math.inf}, "train.lr: must be a finite number"),
        ({"steps": 5, "lr": math.nan}, "train.lr: must be a finite number"),
        ({"steps": 5, "lr": -1e-3}, "train.lr: must be >= 0"),
        ({"steps": 5, "weight_decay": math.nan}, "train.weight_decay: must be a finite number"),
        ({"steps": 5, "grad_clip": math.inf}, "train.grad_clip: must be a finite number"),
        ({"steps": 5, "betas": (0.9, math.nan)}, "train.betas"),
        ({"steps": 5, "eps": 0.0}, "train.eps: must be > 0"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_train_config_from_section_maps_every_field_and_refuses_undeclared_ones() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Optim(OptimSection):
        APP_FIELDS = ("preview_every",)

        steps: int | None = 40
        epochs: int | None = 3  # steps win
        lr: float | None = 3e-4
        betas: tuple[float, float] = (0.8, 0.9)
        eval_every: int = 10
        preview_every: int = 7  # the app's own: declared, never reaches the loop

    tc = TrainConfig.from_section(Optim(), eval_every=0, best_metric="val/dice")
    assert (tc.steps, tc.epochs, tc.lr, tc.betas) == (40, None, 3e-4, (0.8, 0.9))
    assert (tc.eval_every, tc.best_metric) == (0, "val/dice")  # overrides win
    assert TrainConfig.from_section(Optim(steps=None)).epochs == 3
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig.from_section(Optim(lr=-1.0))
    with pytest.raises(ConfigError, match="no learning rate"):
        TrainConfig.from_section(Optim(lr=None))
    with pytest.raises(TypeError):
        TrainConfig.from_section(Optim(), preview_every=3)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Misspelt(OptimSection):
        warmup_frac: float = 0.1  # a typo: would be dropped silently by a copy-by-name

    with pytest.raises(TypeError, match=r"adds \['warmup_frac'\] .* APP_FIELDS"):
        TrainConfig.from_section(Misspelt(lr=1e-3, steps=2))


def test_every_app_section_maps_onto_the_loop() -> None:
    from medvit.apps.ct_seg.config import OptimCfg as SegOptim
    from medvit.apps.fiqa.config import OptimCfg as FiqaOptim
    from medvit.pretrain.config import TrainCfg

    assert TrainConfig.from_section(SegOptim()).steps == 25000
    assert TrainConfig.from_section(FiqaOptim()).epochs == 20
    assert TrainConfig.from_section(TrainCfg(steps=5), lr=1e-4).betas == (0.9, 0.95)


def test_precision_and_device_resolution() -> None:
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="cuda"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_path_runs_on_cpu(tmp_path: Path, precision: str) -> None:
    # The CUDA AMP code path (autocast + GradScaler for fp16) exercised on CPU; slow there, so only 4 steps.
    res = fit(make_task(), Regression(64), cfg_of(steps=4, precision=precision), tmp_path / "run", quiet=True)
    assert res.step == 4 and math.isfinite(res.final_loss)
    scaler = load_checkpoint(tmp_path / "run" / "last.pt")["scaler"]
    assert ("scale" in scaler) == (precision == "fp16")


def test_plain_log_lines_without_terminal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="medvit.shared.engine.progress")
    fit(make_task(), Regression(64), cfg_of(steps=6, log_every=3), tmp_path / "run", quiet=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "medvit.shared.engine.progress"]
    assert len(lines) == 2 and lines[0].startswith("train step 3/6") and "samples/s" in lines[0]


def test_run_directory_keeps_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    fit(make_task(), Regression(64), cfg_of(steps=4, ckpt_every=2), run, quiet=True)
    first = (run / "train.log").read_text()
    assert "training MLPTask: 4 steps" in first
    fit(make_task(), Regression(64), cfg_of(steps=6, ckpt_every=2), run, quiet=True, resume=True)
    text = (run / "train.log").read_text()
    assert text.startswith(first) and "resuming from" in text  # appended across resumes


class UnfreezeTask(MLPTask):
    """The first layer frozen (``unfreezable``) until epoch ``at``; records the epochs it was told about."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.epochs_seen = at, []
        for p in self.net[0].parameters():
            p.requires_grad_(False)
            p.unfreezable = True

    def on_epoch_start(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)
        for p in self.net[0].parameters():
            p.requires_grad_(epoch >= self.at)


def test_on_epoch_start_unfreezes_a_frozen_layer_at_its_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = UnfreezeTask(at=1)
    first = task.net[0].weight.detach().clone()
    data = Regression(n=64)  # batch 16 -> 4 steps per epoch
    fit(task, data, cfg_of(steps=4, batch_size=16, log_every=1), tmp_path / "a", quiet=True)
    assert torch.equal(task.net[0].weight, first)  # epoch 0: frozen, untouched by AdamW (no grad, no decay)
    fit(task, data, cfg_of(steps=8, batch_size=16, log_every=1), tmp_path / "a", resume=True, quiet=True)
    assert not torch.equal(task.net[0].weight, first)  # epoch 1: trained
    assert task.epochs_seen == [0, 1]
