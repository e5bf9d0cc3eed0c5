"""``cell train``: fine-tune CellVTA (adapter + HoVer-style decoder on a frozen ViT) on a prepared cell dataset.

A run directory written by :func:`train` holds, besides what the engine writes (``config.yaml``,
``metrics.jsonl``, ``last.pt``/``best.pt``, ``summary.json``, ``plots/``):

* ``model.json``: everything ``cell predict`` needs to rebuild the network (:mod:`medvit.apps.cell_seg.model_file`);
* ``model.safetensors``: the weights of the best checkpoint by validation bPQ (CellVTA's ``model_best.pth``
  criterion), or of the last one without validation folds, written at the end.

Validation runs the whole inference path on each validation tile (forward pass, post-processing into instances)
and scores it with the PanNuke definitions (:mod:`medvit.shared.metrics.instance`): bPQ and mPQ averaged over
tiles, as CellViT/CellVTA log them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medvit.apps.cell_seg.config import CellConfig
from medvit.apps.cell_seg.data import CellDatasetInfo, CellTiles, WeightedDraws, load_cell_dataset, sampling_weights
from medvit.apps.cell_seg.losses import CellLoss
from medvit.apps.cell_seg.model import CellVTA
from medvit.apps.cell_seg.model_file import (
    build_new_model,
    checkpoint_model_state,
    model_from_spec,
    new_model_spec,
    save_run_model,
)
from medvit.apps.cell_seg.postproc import postprocess
from medvit.apps.cell_seg.weights import load_start_weights
from medvit.shared.config import to_dict
from medvit.shared.engine import distributed
from medvit.shared.engine.checkpoint import load_checkpoint
from medvit.shared.engine.fit import FitResult, TrainConfig, fit
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.files import write_json_atomic
from medvit.shared.metrics.instance import score_image

logger = logging.getLogger(__name__)

__all__ = ["CellTask", "TrainResult", "train", "types_of"]

TARGET_KEYS = ("nuclei_binary_map", "hv_map", "nuclei_type_map", "tissue")


class CellTask(nn.Module):
    """Training task: the CellVTA outputs scored by :class:`~medvit.apps.cell_seg.losses.CellLoss`.

    Batch: ``{"image": [N, 3, H, W], "nuclei_binary_map": [N, H, W], "hv_map": [N, 2, H, W],
    "nuclei_type_map": [N, H, W], "tissue": [N], ...}``.

    Args:
        model: the network.
        loss: the loss.
        unfreeze_at: epoch from which a frozen backbone trains too (None: never).
    """

    def __init__(self, model: CellVTA, loss: CellLoss, *, unfreeze_at: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.unfreeze_at = unfreeze_at

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        out = self.model(batch["image"])
        loss, logs = self.loss(out, {k: batch[k] for k in TARGET_KEYS})
        return {"loss": loss, "logs": logs}

    def on_epoch_start(self, epoch: int) -> None:
        """Unfreeze the backbone from epoch ``unfreeze_at`` on (CellViT's ``unfreeze_epoch``)."""
        if self.unfreeze_at is not None and epoch >= self.unfreeze_at:
            self.model.freeze_backbone(False)


def types_of(inst_map: np.ndarray, cells: Sequence[Any]) -> np.ndarray:
    """The type map of an instance map: every pixel of cell ``c`` gets ``c.type`` ([H, W] uint8)."""
    lut = np.zeros(int(inst_map.max(initial=0)) + 1, np.uint8)
    for c in cells:
        lut[c.id] = c.type
    return lut[inst_map]


def predict_tiles(model: CellVTA, images: torch.Tensor, magnification: int) -> list[tuple[np.ndarray, list[Any]]]:
    """Forward a batch of normalised tiles and post-process each into instances.

    Args:
        model: the network in eval mode.
        images: ``[B, 3, H, W]`` normalised tiles on the model's device.
        magnification: 40 or 20 (post-processing kernel sizes).

    Returns:
        Per tile: (instance map ``[H, W]`` int32, cells).
    """
    out = model(images)
    np_prob = torch.softmax(out["nuclei_binary_map"].float(), 1)[:, 1].cpu().numpy()
    hv = out["hv_map"].float().cpu().numpy()
    nt = torch.softmax(out["nuclei_type_map"].float(), 1).cpu().numpy()
    return [postprocess(np_prob[i], hv[i], nt[i], magnification=magnification) for i in range(len(np_prob))]


class _ValidationHook:
    """bPQ / mPQ on the validation tiles through the full inference path (forward, post-processing)."""

    def __init__(self, dataset: CellTiles, num_classes: int, magnification: int, batch_size: int) -> None:
        self.dataset = dataset
        self.num_classes = num_classes
        self.magnification = magnification
        self.batch_size = batch_size
        self.last: dict[str, float] = {}

    def on_eval(self, state: Any) -> dict[str, float]:
        model: CellVTA = state.task.model
        bpq: list[float] = []
        mpq: list[float] = []
        for start in range(0, len(self.dataset), self.batch_size):
            items = [self.dataset[i] for i in range(start, min(start + self.batch_size, len(self.dataset)))]
            images = torch.stack([it["image"] for it in items]).to(state.device)
            with state.autocast():
                results = predict_tiles(model, images, self.magnification)
            for it, (inst, cells) in zip(items, results, strict=True):
                gt_inst = it["instance_map"].numpy()
                gt_type = it["nuclei_type_map"].numpy()
                scores = score_image(gt_inst, gt_type, inst, types_of(inst, cells), self.num_classes)
                bpq.append(scores.bpq)
                mpq.append(scores.mpq)
        out = {"bpq": _nanmean(bpq), "mpq": _nanmean(mpq)}
        self.last = out
        logger.info("validation (%d tiles): bPQ %.4f, mPQ %.4f", len(bpq), out["bpq"], out["mpq"])
        return out


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory.
        steps: optimizer steps done.
        best_bpq: best validation bPQ (None without validation).
        best_step: its step.
        val: metrics of the last validation (``bpq``, ``mpq``).
        weights: ``model.safetensors``.
    """

    run_dir: Path
    steps: int
    best_bpq: float | None
    best_step: int | None
    val: dict[str, float]
    weights: Path


def train(
    cfg: CellConfig, data: str | Path, *, out: str | Path, resume: bool = False, quiet: bool = False
) -> TrainResult:
    """Train CellVTA on a prepared dataset (``medvit cell prepare``): one PanNuke split or explicit folds.

    Args:
        cfg: the resolved config (:func:`~medvit.apps.cell_seg.config.load_train_config`).
        data: the prepared dataset folder (``dataset.json``, ``foldN/``).
        out: run directory.
        resume: continue from ``out/last.pt``.
        quiet: no progress bars.

    Returns:
        A :class:`TrainResult`.

    Raises:
        MedvitError: bad data (naming the file), config or weights.
        TypeError: ``cfg`` is not a :class:`~medvit.apps.cell_seg.config.CellConfig`.
    """
    if not isinstance(cfg, CellConfig):
        raise TypeError(f"train() takes a resolved CellConfig (load_cell_config), got {type(cfg).__name__}")
    run = Path(out)
    info = load_cell_dataset(data)
    train_folds, val_folds = _folds(cfg, info)
    main = _rank() == 0
    torch.manual_seed(cfg.optim.seed)
    model, spec = _model_and_spec(cfg, info, run, resume=resume)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run / "model.json", spec)
        write_json_atomic(run / "folds.json", {"train": list(train_folds), "val": list(val_folds)})
    train_set = _train_set(cfg, info, train_folds)
    hook = None
    if val_folds:
        val_set = CellTiles(info.root, val_folds, augment=False, info=info, limit=cfg.data.val_max_tiles)
        hook = _ValidationHook(val_set, len(info.nuclei_types) - 1, info.magnification, cfg.infer.batch_size)
    loss = CellLoss(
        len(info.nuclei_types) - 1,
        weights=cfg.loss.weights(),
        msge_orientation=cfg.loss.msge_orientation,
        tissue=len(info.tissue_types) > 1,
    )
    task = CellTask(model, loss, unfreeze_at=cfg.model.unfreeze_at if cfg.model.freeze_backbone else None)
    result = _fit(cfg, task, train_set, hook, run, resume=resume, quiet=quiet)
    weights = run / "model.safetensors"
    if main:
        _export_weights(weights, spec, result)
    return TrainResult(run, result.step, result.best, result.best_step, hook.last if hook else {}, weights)


def _rank() -> int:
    return distributed.rank() if distributed.is_initialized() else distributed.env_rank()


def _folds(cfg: CellConfig, info: CellDatasetInfo) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training folds, validation folds): ``data.train_folds``/``val_folds``, else split ``data.split``."""
    d = cfg.data
    if d.train_folds is not None:
        train_folds, val_folds = tuple(d.train_folds), tuple(d.val_folds)
    else:
        split = info.splits.get(str(d.split))
        if split is None:
            known = ", ".join(sorted(info.splits)) or "none"
            raise ConfigError(f"data.split={d.split}: {info.root}/dataset.json defines splits {known}")
        train_folds, val_folds = tuple(split["train"]), tuple(split.get("val", ()))
    unknown = sorted((set(train_folds) | set(val_folds)) - set(info.folds))
    if unknown:
        raise ConfigError(f"fold(s) {', '.join(unknown)} not in {info.root}/dataset.json (folds: {list(info.folds)})")
    if not train_folds:
        raise ConfigError("no training folds")
    return train_folds, val_folds


def _train_set(cfg: CellConfig, info: CellDatasetInfo, folds: Sequence[str]) -> Any:
    """The augmented training tiles, drawn by CellViT's cell+tissue weights when ``data.sampling`` says so."""
    tiles = CellTiles(info.root, folds, augment=cfg.data.augment, info=info)
    if len(tiles) == 0:
        raise DataError(f"{info.root}: no training tiles in fold(s) {', '.join(folds)}")
    if cfg.data.sampling == "random":
        return tiles
    return WeightedDraws(tiles, sampling_weights(info.root, folds, gamma=cfg.data.sampling_gamma))


def _model_and_spec(cfg: CellConfig, info: CellDatasetInfo, run: Path, *, resume: bool) -> tuple[CellVTA, dict]:
    """The network and its ``model.json``: rebuilt from the run's on ``resume``, else built from the config."""
    spec_path = run / "model.json"
    if resume and spec_path.is_file():
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        model = model_from_spec(spec, source=str(spec_path))
    else:
        m = cfg.model
        n_types, n_tissues = len(info.nuclei_types) - 1, len(info.tissue_types)
        model = build_new_model(m.backbone, m.backbone_overrides, m.adapter_kwargs(), n_types, n_tissues)
        if m.weights is not None:
            report = load_start_weights(model, m.weights)
            logger.info("start weights %s: %s", m.weights, report.summary())
        spec = new_model_spec(
            model,
            adapter=m.adapter_kwargs(),
            nuclei_types=list(info.nuclei_types),
            tissue_types=list(info.tissue_types),
            magnification=info.magnification,
            mpp=info.mpp,
            infer=to_dict(cfg.infer),
            start_weights=str(m.weights) if m.weights else None,
            dataset=str(info.root),
        )
    frozen = cfg.model.freeze_backbone
    model.freeze_backbone(frozen)
    if frozen and cfg.model.unfreeze_at is not None:
        if distributed.env_world_size() > 1:
            raise ConfigError("model.unfreeze_at is not supported under torchrun yet: train frozen, then continue")
        for p in model.frozen_backbone_parameters():
            p.unfreezable = True
    return model, spec


def _fit(
    cfg: CellConfig,
    task: CellTask,
    train_set: Any,
    hook: _ValidationHook | None,
    run: Path,
    *,
    resume: bool,
    quiet: bool,
) -> FitResult:
    """The shared training loop; validation (and ``best.pt`` by bPQ) when there are validation folds."""
    o = cfg.optim
    eval_every = o.eval_every
    if hook is not None and eval_every == 0:  # once per epoch, as CellVTA on PanNuke
        world = max(distributed.env_world_size(), 1)
        eval_every = max(len(train_set) // (o.batch_size * o.grad_accum * world), 1)
    tcfg = TrainConfig.from_section(
        o,
        eval_every=eval_every if hook is not None else 0,
        best_metric="val/bpq" if hook is not None else None,
    )
    return fit(
        task,
        train_set,
        tcfg,
        run,
        resume=resume,
        quiet=quiet,
        hooks=[hook] if hook is not None else [],
        resolved_config=to_dict(cfg),
    )


def _export_weights(weights: Path, spec: Mapping[str, Any], result: FitResult) -> None:
    """``model.safetensors`` + ``model.json`` from ``best.pt`` (else ``last.pt``), naming the checkpoint used."""
    run = weights.parent
    src = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
    ck = load_checkpoint(src)
    final = {
        **spec,
        "weights": {"from": src.name, "step": int(ck.get("step", result.step))},
        "best": {"metric": "val/bpq", "value": result.best, "step": result.best_step},
    }
    save_run_model(weights, checkpoint_model_state(ck), final)
    logger.info("wrote %s (from %s)", weights, src.name)
