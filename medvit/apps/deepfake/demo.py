"""The deepfake part of ``medvit demo``: synthetic clips -> prepare -> train tiny -> predict held-out -> evaluate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medvit.apps.deepfake.config import load_deepfake_config
from medvit.apps.deepfake.evaluate import evaluate
from medvit.apps.deepfake.predict import predict
from medvit.apps.deepfake.prepare import prepare
from medvit.apps.deepfake.train import train
from medvit.shared.data.synth_deepfake import synth_deepfake

__all__ = ["held_out_list", "run_deepfake_demo"]


def held_out_list(ffpp: str | os.PathLike[str], out: str | os.PathLike[str], split: str = "test") -> Path:
    """A ``.txt`` list of the videos of ``split`` (FF++ split lists in ``ffpp/splits``), for ``predict``."""
    root = Path(ffpp)
    ids = {i for pair in json.loads((root / "splits" / f"{split}.json").read_text(encoding="utf-8")) for i in pair}
    videos = sorted(p for p in root.rglob("*.avi") if p.stem.split("_")[0] in ids)
    path = Path(out)
    path.write_text("".join(f"{p}\n" for p in videos), encoding="utf-8")
    return path


def run_deepfake_demo(
    out: str | os.PathLike[str],
    *,
    quiet: bool = False,
    pairs: int = 16,
    steps: int = 150,
    frames: int = 6,
    levels: tuple[str, ...] = ("c23",),
    train_levels: tuple[str, ...] = ("c23",),
) -> dict[str, Any]:
    """Train the tiny preset on synthetic FF++-style clips, score the held-out test split, evaluate.

    ``pairs`` identity pairs (60 / 20 / 20 % train / val / test), 12 frames per 128 px clip, Face2Face and
    NeuralTextures at ``levels``; ``frames`` evenly spaced frames per video, 128 px crops; the tiny preset trained
    on Face2Face at ``train_levels`` (c23, DeepfakeBench's training set) for ``steps`` steps of 16 frames; every
    held-out video (both methods, every level) scored. The defaults are the ``medvit demo`` part's (about 25 s on 2
    CPU cores: Face2Face video AUC 1.0, every held-out video 0.93); ``levels=("raw", "c23", "c40")`` fills the
    cross-compression grid (row c23 read across raw / c23 / c40) at about three times the data.

    Returns:
        ``{"video_auc" (Face2Face vs real at c23, the trained task), "video_auc_all" (every held-out video: both
        methods, every level), "frame_auc", "grid", "strip": a frame-strip PNG of a fake video, "metrics", "run"}``.
    """
    root = Path(out) / "deepfake"
    ffpp = root / "ffpp"
    if not (ffpp / "clips.csv").is_file():
        synth_deepfake(ffpp, n=pairs, frames=12, size=128, levels=levels, seed=0)
    prepare(ffpp, root / "prepared", frames=frames, size=128, workers=1, quiet=quiet)
    run = root / "run"
    # the tiny preset at 48 / 24 px inputs and batch 16: the CLI loop test's setting (video AUC >= 0.9 in ~40 s)
    overrides = ["model.global_size=48", "model.region_size=24", "optim.lr=2e-3"]
    cfg = load_deepfake_config(
        "tiny", None, overrides, **{"optim.steps": steps, "optim.batch_size": 16, "data.levels": list(train_levels)}
    )
    if not (run / "model.safetensors").is_file():
        train(cfg, root / "prepared", out=run, resume=(run / "last.pt").is_file(), quiet=quiet)
    listing = held_out_list(ffpp, root / "test_videos.txt")
    pred = predict(run, listing, root / "predict", frames=frames, workers=1, quiet=quiet)
    res = evaluate([root / "predict"], ffpp, root / "evaluate")
    strips = sorted((root / "predict" / "strips").rglob("*_*.png"))
    trained = [r for r in res.rows if r["subset"] == "method" and r["method"] == "Face2Face" and r["level"] == "c23"]
    return {
        "video_auc": trained[0]["video_auc"] if trained else res.overall["video_auc"],
        "video_auc_all": res.overall["video_auc"],
        "frame_auc": res.overall["frame_auc"],
        "grid": res.grid,
        "strip": strips[0] if strips else None,
        "metrics": res.metrics_csv,
        "videos": pred.videos,
        "run": run,
    }
