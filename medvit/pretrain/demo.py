"""The 2D pretraining part of ``medvit demo``: thorax MAE on synthetic chest X-rays, Uni4Eye on synthetic eye data.

1. ``synth_cxr``: 24 radiographs in the ChestX-ray14 release layout (64 px) -> ``medvit pretrain`` with
   ``cxr-tiny`` (the thorax recipe on a CPU-sized ViT): ``encoder.safetensors``.
2. ``synth_fundus`` + ``synth_oct``: 12 colour fundus photographs and 6 OCT volumes (64 x 64 x 32) -> ``medvit
   pretrain`` with ``uni4eye-cpu``: 2D and 3D steps interleaved, ``encoder_2d.safetensors`` and
   ``encoder_3d.safetensors``.

Sized for about 20-30 s on 2 CPU cores (masked-patch loss 0.84 -> 0.36 for the thorax MAE; Uni4Eye (uni4eye-cpu)
2D steps 1.92 -> 0.99, 3D steps 2.22 -> 1.78). Layout under ``out``::

    data/cxr/  data/eye/                      the synthetic inputs
    runs/pretrain-cxr/  runs/pretrain-eye/    the runs (previews, loss plots, encoders)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CXR_STEPS", "EYE_STEPS", "run_cxr_pretrain_demo", "run_eye_pretrain_demo", "run_pretrain_demo"]

CXR_STEPS = 200
EYE_STEPS = 160


def _run(data: Path, out: Path, preset: str, steps: int, quiet: bool, **options: Any) -> dict[str, Any]:
    """One ``medvit pretrain`` run; its summary: the mean losses of the first and the last logging interval (of
    every ``loss*`` key of ``metrics.jsonl``), seconds."""
    from medvit.pretrain.api import run_pretrain
    from medvit.pretrain.config import PretrainConfig
    from medvit.shared.config import load_config

    cfg = load_config(
        PretrainConfig,
        None,
        (f"train.preview_every={steps // 2}", "train.log_every=10"),
        **{
            "data_dir": data,
            "out": out,
            "model.preset": preset,
            "train.steps": steps,
            "train.device": "cpu",
            "train.seed": 0,
            "quiet": quiet,
            **options,
        },
    )
    t = time.perf_counter()
    run = run_pretrain(cfg)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result: dict[str, Any] = {"run": run, "seconds": time.perf_counter() - t, "previews": run / "previews"}
    for key in (k for k in lines[-1] if k.startswith("loss") and k != "loss_visible"):
        result[f"first_{key}"], result[f"final_{key}"] = lines[0].get(key), lines[-1][key]
    return result


def run_cxr_pretrain_demo(out: Path, *, quiet: bool) -> dict[str, Any]:
    """Synthetic chest X-rays (ChestX-ray14 layout, 64 px) -> thorax MAE (``cxr-tiny``) -> ``encoder.safetensors``.

    Returns:
        ``run``, ``encoder``, ``previews``, ``seconds``, ``first_loss`` and ``final_loss`` (masked-patch MSE, mean of
        the first and of the last 10 steps).
    """
    from medvit.shared.data.synth_xray import synth_cxr

    cxr_data = Path(out) / "data" / "cxr"
    synth_cxr(cxr_data, n=24, size=64, layout="chestxray14", seed=0)
    cxr = _run(cxr_data, Path(out) / "runs" / "pretrain-cxr", "cxr-tiny", CXR_STEPS, quiet, **{"train.batch_size": 8})
    cxr["encoder"] = cxr["run"] / "encoder.safetensors"
    logger.info("thorax MAE demo: loss %.3f -> %.3f (%.0f s)", cxr["first_loss"], cxr["final_loss"], cxr["seconds"])
    return cxr


def run_eye_pretrain_demo(out: Path, *, quiet: bool) -> dict[str, Any]:
    """Synthetic fundus photographs + OCT volumes -> Uni4Eye (``uni4eye-cpu``), 2D and 3D steps interleaved.

    Returns:
        ``run``, ``encoder_2d``, ``encoder_3d``, ``previews``, ``seconds`` and the first/final losses: ``*_loss``,
        ``*_loss_2d`` / ``*_loss_3d`` (mean loss of the 2D / 3D steps), ``*_loss_intensity`` and ``*_loss_edge``.
    """
    from medvit.shared.data.synth_eye import synth_fundus, synth_oct

    eye_data = Path(out) / "data" / "eye"
    synth_fundus(eye_data / "fundus", n=12, size=64, seed=0)
    synth_oct(eye_data / "oct", n=6, shape=(64, 64, 32), seed=0)
    options = {"train.batch_size": 4, "data.batch_size_3d": 1}
    # uni4eye-cpu: the eye app's tiny classifier (ViT/8, 64 wide, 4 blocks), so that DR grading can be fine-tuned
    # from the export (the 16 tokens of uni4eye-tiny's ViT/16 at 64 px are too coarse for the lesions).
    eye = _run(eye_data, Path(out) / "runs" / "pretrain-eye", "uni4eye-cpu", EYE_STEPS, quiet, **options)
    eye["encoder_2d"] = eye["run"] / "encoder_2d.safetensors"
    eye["encoder_3d"] = eye["run"] / "encoder_3d.safetensors"
    logger.info(
        "Uni4Eye demo: 2D loss %.3f -> %.3f, 3D loss %.3f -> %.3f (%.0f s)",
        eye["first_loss_2d"],
        eye["final_loss_2d"],
        eye["first_loss_3d"],
        eye["final_loss_3d"],
        eye["seconds"],
    )
    return eye


def run_pretrain_demo(out: Path, *, quiet: bool) -> dict[str, Any]:
    """Both runs: :func:`run_cxr_pretrain_demo` and :func:`run_eye_pretrain_demo`.

    Args:
        out: folder for the data and the runs (its ``runs/pretrain-cxr`` and ``runs/pretrain-eye`` must not hold
            earlier runs; ``medvit demo`` clears its folder first).
        quiet: no progress bars.

    Returns:
        ``{"cxr": {...}, "eye": {...}, "seconds": float}``.
    """
    t0 = time.perf_counter()
    cxr = run_cxr_pretrain_demo(out, quiet=quiet)
    eye = run_eye_pretrain_demo(out, quiet=quiet)
    return {"cxr": cxr, "eye": eye, "seconds": time.perf_counter() - t0}
