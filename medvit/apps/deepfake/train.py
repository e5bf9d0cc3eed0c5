"""``deepfake train``: the GGViT-style network on prepared frames, real vs one or more manipulation methods.

A run directory holds, besides what the engine writes (``config.yaml``, ``metrics.jsonl``, ``last.pt`` /
``best.pt``, ``summary.json``, ``plots/``), ``model.json`` and ``model.safetensors`` (the best checkpoint by
validation frame AUC, DeepfakeBench's model-selection metric; the last one without validation videos).

Training frames: the ``train`` split at ``data.levels``, real videos and the fakes of ``data.method``, drawn
class-balanced, with flips and JPEG / H.264-like re-compression. Validation: the ``val`` split at
``data.val_levels`` (default the training levels), frame AUC, video AUC (mean frame probability) and accuracy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medvit.apps.deepfake.config import DeepfakeConfig, parse_methods
from medvit.apps.deepfake.data import Balanced, Frames, PreparedSet, load_prepared, select_videos
from medvit.apps.deepfake.model import DeepfakeLoss, GGViTStyle
from medvit.apps.deepfake.model_file import (
    checkpoint_model_state,
    model_from_spec,
    new_model_spec,
    save_run_model,
)
from medvit.shared.config import to_dict
from medvit.shared.engine import distributed
from medvit.shared.engine.checkpoint import load_checkpoint
from medvit.shared.engine.fit import FitResult, TrainConfig, fit
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.files import write_json_atomic
from medvit.shared.metrics.detection_scores import detection_scores, video_level

logger = logging.getLogger(__name__)

__all__ = ["DeepfakeTask", "TrainResult", "frame_probabilities", "train"]


class DeepfakeTask(nn.Module):
    """Training task: :class:`GGViTStyle` scored by :class:`DeepfakeLoss`.

    Batch: ``{"image": [N, 3, S, S], "landmarks": [N, 5, 2], "label": [N], "level": [N], ...}``.
    """

    def __init__(self, model: GGViTStyle, loss: DeepfakeLoss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        out = self.model(batch["image"], batch["landmarks"])
        loss, logs = self.loss(out, batch["label"], batch["level"])
        return {"loss": loss, "logs": logs}


def frame_probabilities(
    model: GGViTStyle, frames: Frames, device: torch.device, batch_size: int = 64, autocast: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fake probability of every item of ``frames``: ``(probs [N], labels [N], video index [N])``."""
    probs, labels, vids = [], [], []
    for start in range(0, len(frames), batch_size):
        items = [frames[i] for i in range(start, min(start + batch_size, len(frames)))]
        x = torch.stack([it["image"] for it in items]).to(device)
        lm = torch.stack([it["landmarks"] for it in items]).to(device)
        with autocast() if autocast is not None else torch.autocast("cpu", enabled=False):
            logit = model(x, lm)["logit"]
        probs.append(torch.sigmoid(logit.float()).cpu().numpy())
        labels += [int(it["label"]) for it in items]
        vids += [int(it["video"]) for it in items]
    return np.concatenate(probs) if probs else np.zeros(0), np.array(labels), np.array(vids)


class _ValidationHook:
    """Frame AUC (selects ``best.pt``), video AUC and accuracy on the validation frames."""

    def __init__(self, frames: Frames, batch_size: int) -> None:
        self.frames = frames
        self.batch_size = batch_size
        self.last: dict[str, float] = {}

    def on_eval(self, state: Any) -> dict[str, float]:
        p, y, v = frame_probabilities(state.task.model, self.frames, state.device, self.batch_size, state.autocast)
        frame = detection_scores(y, p)
        _, vy, vp = video_level(v.tolist(), y, p)
        video = detection_scores(vy, vp)
        out = {"auc": frame["auc"], "acc": frame["acc"], "eer": frame["eer"], "video_auc": video["auc"]}
        self.last = out
        logger.info(
            "validation (%d frames, %d videos): frame AUC %.4f, video AUC %.4f, ACC %.4f",
            len(p),
            len(vp),
            out["auc"],
            out["video_auc"],
            out["acc"],
        )
        return out


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory.
        steps: optimizer steps done.
        best_auc: best validation frame AUC (None without validation).
        best_step: its step.
        val: metrics of the last validation.
        weights: ``model.safetensors``.
        frames: training frames (before balancing).
    """

    run_dir: Path
    steps: int
    best_auc: float | None
    best_step: int | None
    val: dict[str, float]
    weights: Path
    frames: int


def _training_frames(cfg: DeepfakeConfig, data: PreparedSet) -> tuple[Frames, Frames | None]:
    d = cfg.data
    methods = parse_methods(d.method)
    train_videos = select_videos(data, "train", methods, d.levels)
    if not train_videos:
        found = sorted({(v["split"], v["level"]) for v in data.videos})
        raise DataError(
            f"{data.root}: no training videos at levels {', '.join(d.levels)} (split, level found: {found[:8]})"
        )
    if methods is not None:
        known = {v["method"] for v in data.videos if v["label"] == 1}
        missing = sorted(set(methods) - known)
        if missing:
            raise ConfigError(f"data.method: {', '.join(missing)} not in {data.root} (methods: {sorted(known)})")
    frames = Frames(
        data.root,
        train_videos,
        augment=True,
        recompress_p=d.recompress_p,
        jpeg_quality=d.jpeg_quality,
        video_like_p=d.video_like_p,
        flip_p=d.flip_p,
    )
    val_videos = select_videos(data, "val", methods, d.val_levels or d.levels)
    val = Frames(data.root, val_videos, max_frames=d.max_val_frames) if val_videos else None
    if val is not None and len(set(val.labels().tolist())) < 2:
        logger.warning("validation frames hold one class only: no AUC, no best checkpoint")
        val = None
    return frames, val


def _model_and_spec(cfg: DeepfakeConfig, data: PreparedSet, run: Path, *, resume: bool) -> tuple[GGViTStyle, dict]:
    spec_path = run / "model.json"
    if resume and spec_path.is_file():
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        return model_from_spec(spec, source=str(spec_path)), spec
    m = to_dict(cfg.model)
    weights = m.pop("weights", None)
    spec = new_model_spec(
        m,
        crop_size=data.size,
        margin=float(json.loads((data.root / "dataset.json").read_text(encoding="utf-8")).get("margin", 1.3)),
        train={"method": cfg.data.method, "levels": list(cfg.data.levels), "data": str(data.root)},
    )
    model = model_from_spec(spec)
    if weights:
        _load_start_weights(model, Path(weights))
    return model, spec


def _load_start_weights(model: GGViTStyle, path: Path) -> None:
    """An earlier deepfake model file (whole network), or ViT weights loaded into every stream's ViT."""
    from medvit.shared.backbone.weights import load_pretrained

    side = path.with_suffix(".json")
    if path.suffix == ".safetensors" and side.is_file() and "deepfake" in side.read_text(encoding="utf-8")[:200]:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(path)))
        logger.info("start weights: %s (whole network)", path)
        return
    for name, vit in [
        ("global_vit", model.global_vit),
        *((f"part_vits.{i}", v) for i, v in enumerate(model.part_vits)),
    ]:
        report = load_pretrained(vit, path, expected_missing=("head.*",), allow_unexpected=("head.*", "fc_norm.*"))
        logger.info("start weights %s -> %s: %s", path, name, report.summary())


def _fit(
    cfg: DeepfakeConfig,
    task: DeepfakeTask,
    train_set: Balanced | Frames,
    hook: _ValidationHook | None,
    run: Path,
    *,
    resume: bool,
    quiet: bool,
) -> FitResult:
    o = cfg.optim
    eval_every = o.eval_every
    if hook is not None and eval_every == 0:  # once per epoch
        world = max(distributed.env_world_size(), 1)
        eval_every = max(len(train_set) // (o.batch_size * o.grad_accum * world), 1)
    tcfg = TrainConfig.from_section(o, eval_every=eval_every if hook else 0, best_metric="val/auc" if hook else None)
    return fit(
        task,
        train_set,
        tcfg,
        run,
        resume=resume,
        quiet=quiet,
        hooks=[hook] if hook else [],
        resolved_config=to_dict(cfg),
    )


def train(
    cfg: DeepfakeConfig, data: str | Path, *, out: str | Path, resume: bool = False, quiet: bool = False
) -> TrainResult:
    """Train on a prepared folder (``medvit deepfake prepare``).

    Args:
        cfg: the resolved config (:func:`~medvit.apps.deepfake.config.load_deepfake_config`).
        data: the prepared folder (``dataset.json``, ``crops/``).
        out: run directory.
        resume: continue from ``out/last.pt``.
        quiet: no progress bar.

    Returns:
        A :class:`TrainResult`.

    Raises:
        MedvitError: bad data, config or weights (naming the file or key).
        TypeError: ``cfg`` is not a :class:`~medvit.apps.deepfake.config.DeepfakeConfig`.
    """
    if not isinstance(cfg, DeepfakeConfig):
        raise TypeError(f"train() takes a resolved DeepfakeConfig (load_deepfake_config), got {type(cfg).__name__}")
    run = Path(out).expanduser()
    prepared = load_prepared(data)
    frames, val = _training_frames(cfg, prepared)
    main = (distributed.rank() if distributed.is_initialized() else distributed.env_rank()) == 0
    torch.manual_seed(cfg.optim.seed)
    model, spec = _model_and_spec(cfg, prepared, run, resume=resume)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run / "model.json", spec)
    loss = DeepfakeLoss(cfg.loss.level_weights, cfg.loss.stream_weight, cfg.loss.quality_weight)
    train_set: Balanced | Frames = Balanced(frames) if cfg.data.balance else frames
    hook = _ValidationHook(val, max(cfg.optim.batch_size, 32)) if val is not None else None
    logger.info(
        "training frames: %d (%d real, %d fake); validation frames: %d",
        len(frames),
        int((frames.labels() == 0).sum()),
        int(frames.labels().sum()),
        len(val) if val else 0,
    )
    result = _fit(cfg, DeepfakeTask(model, loss), train_set, hook, run, resume=resume, quiet=quiet)
    weights = run / "model.safetensors"
    if main:
        src = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
        ck = load_checkpoint(src)
        final = {
            **spec,
            "weights": {"from": src.name, "step": int(ck.get("step", result.step))},
            "best": {"metric": "val/auc", "value": result.best, "step": result.best_step},
        }
        save_run_model(weights, checkpoint_model_state(ck), final)
        logger.info("wrote %s (from %s)", weights, src.name)
    return TrainResult(run, result.step, result.best, result.best_step, hook.last if hook else {}, weights, len(frames))
