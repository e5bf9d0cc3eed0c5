"""``ct-seg train``: fine-tune a UNETR on one fold of an nnU-Net raw / MSD dataset.

A run directory written by :func:`train` holds, besides what the engine writes (``config.yaml``,
``metrics.jsonl``, ``last.pt``/``best.pt``, ``summary.json``, ``plots/``):

* ``splits.json``: the nnU-Net-style folds (``[{"train": [...], "val": [...]}, ...]``);
* ``model.json``: everything :func:`~medvit.apps.ct_seg.predict.predict` needs to rebuild the network and
  reproduce the preprocessing (see :mod:`medvit.apps.ct_seg.model_file`);
* ``model.safetensors``: the weights of the best checkpoint (by mean foreground validation Dice; the last one
  with ``--fold all``), written at the end (``model.json`` is its sidecar).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from medvit.apps.ct_seg.config import CTSegConfig
from medvit.apps.ct_seg.data import (
    CTCase,
    CTDataset,
    SegCropDataset,
    check_label_values,
    collate_crops,
    crop_transform,
    load_dataset,
    make_splits,
)
from medvit.apps.ct_seg.inference import sliding_probs
from medvit.apps.ct_seg.model import UNETR
from medvit.apps.ct_seg.model_file import (
    build_model,
    checkpoint_model_state,
    model_from_spec,
    new_model_spec,
    preprocess_transform,
    read_model_spec,
    save_run_model,
    write_model_spec,
)
from medvit.shared.config import to_dict
from medvit.shared.data.cache import VolumeCache, transform_signature
from medvit.shared.engine import distributed
from medvit.shared.engine.checkpoint import load_checkpoint
from medvit.shared.engine.fit import FitResult, TrainConfig, fit
from medvit.shared.engine.progress import ItemProgress
from medvit.shared.errors import ConfigError, DataError, MedvitError
from medvit.shared.files import write_json_atomic
from medvit.shared.metrics.segmentation import dice_only

logger = logging.getLogger(__name__)

__all__ = ["SegTask", "TrainResult", "train"]


class SegTask(nn.Module):
    """Training task: DiceCE loss of the UNETR logits (Hi-End-MAE downstream: softmax, squared denominators).

    Batch: ``{"image": [N, 1, *crop], "label": [N, 1, *crop] int}``.
    """

    def __init__(self, model: UNETR) -> None:
        super().__init__()
        self.model = model
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        logits = self.model(batch["image"])
        return {"loss": self.loss(logits.float(), batch["label"])}


class _ValidationHook:
    """Sliding-window Dice on the validation fold (in the preprocessed grid, like nnU-Net's pseudo-Dice)."""

    def __init__(self, dataset: SegCropDataset, labels: Mapping[int, str], segmenter_kw: Mapping[str, Any]) -> None:
        self.dataset = dataset
        self.labels = dict(labels)
        self.kw = dict(segmenter_kw)
        self.last: dict[str, float] = {}

    def on_eval(self, state: Any) -> dict[str, float]:
        model: UNETR = state.task.model
        fg = [v for v in self.labels if v != 0]
        per_case: list[dict[int, float]] = []
        for i in range(len(self.dataset)):
            d = self.dataset.preprocessed(i)
            with state.autocast():
                probs = sliding_probs(model, d["image"].as_tensor(), state.device, **self.kw)
            pred = probs.argmax(0).numpy()
            ref = d["label"].as_tensor()[0].numpy().round().astype(np.int64)
            per_case.append(dice_only(pred, ref, fg))
        out = {"dice": float(np.mean([np.mean(list(s.values())) for s in per_case]))}
        for v in fg:
            out[f"dice_{self.labels[v]}"] = float(np.mean([s[v] for s in per_case]))
        self.last = out
        logger.info("validation (%d cases): mean foreground Dice %.4f", len(per_case), out["dice"])
        return out


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory.
        steps: optimizer steps done.
        best_dice: best mean foreground validation Dice (None without validation).
        best_step: its step.
        val_dice: per-class Dice of the last validation (name -> Dice).
        weights: ``model.safetensors``.
        fold: the fold trained.
    """

    run_dir: Path
    steps: int
    best_dice: float | None
    best_step: int | None
    val_dice: dict[str, float]
    weights: Path
    fold: int | str


def train(
    cfg: CTSegConfig,
    data: str | Path | None = None,
    *,
    out: str | Path,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    dataset_json: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> TrainResult:
    """Fine-tune a UNETR on an nnU-Net raw / MSD dataset (one fold of a 5-fold split, or ``all``).

    Args:
        cfg: the resolved config (:func:`~medvit.apps.ct_seg.config.load_ct_seg_config`; the CLI resolves it
            with :func:`~medvit.apps.ct_seg.config.load_train_config`, which starts a resumed run from its stored
            ``config.yaml``).
        data: dataset folder (``dataset.json`` + ``imagesTr``/``labelsTr``), or None with ``images``/``labels``.
        out: run directory.
        images: images folder (instead of ``data``).
        labels: label-map folder (with ``images``).
        dataset_json: label set for ``images``/``labels``.
        resume: continue from ``out/last.pt``.
        quiet: no progress bars.

    Returns:
        A :class:`TrainResult`.

    Raises:
        MedvitError: bad data (naming the case), config or weights.
        TypeError: ``cfg`` is not a :class:`~medvit.apps.ct_seg.config.CTSegConfig`.
    """
    if not isinstance(cfg, CTSegConfig):
        raise TypeError(f"train() takes a resolved CTSegConfig (load_ct_seg_config), got {type(cfg).__name__}")
    run = Path(out)
    ds = load_dataset(data, images=images, labels=labels, dataset_json=dataset_json)
    label_set = _label_set(ds)
    num_classes = max(label_set) + 1
    main = _rank() == 0
    train_cases, val_cases = _fold_cases(cfg, ds, run, ds.root if data is not None else None, main=main)

    torch.manual_seed(cfg.optim.seed)
    model, spec = _model_and_spec(cfg, ds, label_set, num_classes, run, resume=resume)
    _check_crop_size(model, cfg)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_model_spec(run / "model.json", spec)
    run_labels = {int(v): n for v, n in spec["labels"].items()}

    train_set, val_set = _datasets(cfg, spec, run_labels, num_classes, run, train_cases, val_cases)
    _warm_cache(train_set, val_set, quiet=quiet)
    hook = _ValidationHook(val_set, run_labels, _validation_window(cfg))
    result = _fit(cfg, model, train_set, hook if val_cases else None, run, resume=resume, quiet=quiet)

    weights = run / "model.safetensors"
    if main:
        _export_weights(weights, spec, result)
    return TrainResult(run, result.step, result.best, result.best_step, hook.last, weights, cfg.data.fold)


# ====================================================================================================== labels
def _label_set(ds: CTDataset) -> dict[int, str]:
    """The dataset's classes: declared by ``dataset.json``, else found in the label maps; consecutive from 0."""
    label_set = ds.labels or _infer_labels(ds.cases)
    if sorted(label_set) != list(range(max(label_set) + 1)):
        raise DataError(f"labels {sorted(label_set)}: values must be consecutive from 0 (nnU-Net convention)")
    return label_set


def _infer_labels(cases: Sequence[CTCase]) -> dict[int, str]:
    """Label set found in the label maps (when no dataset.json declares one)."""
    found: set[int] = set()
    for c in cases:
        arr = np.asarray(nib.load(c.label).dataobj)
        found |= set(check_label_values(c.case_id, c.label, arr, None).tolist())
    found.add(0)
    logger.info("no dataset.json: labels found in the data: %s", sorted(found))
    return {v: ("background" if v == 0 else f"label_{v}") for v in sorted(found)}


# ======================================================================================================= folds
def _rank() -> int:
    return distributed.rank() if distributed.is_initialized() else distributed.env_rank()


def _load_splits(run: Path, data_root: Path | None, ids: Sequence[str], folds: int) -> list[dict[str, list[str]]]:
    for cand in [run / "splits.json", *([data_root / "splits_final.json"] if data_root else [])]:
        if cand.is_file():
            try:
                splits = json.loads(cand.read_text(encoding="utf-8"))
                assert isinstance(splits, list) and all("train" in s and "val" in s for s in splits)
            except (json.JSONDecodeError, AssertionError):
                raise DataError(f"{cand}: not a list of {{'train': [...], 'val': [...]}} folds") from None
            unknown = sorted({c for s in splits for c in [*s["train"], *s["val"]]} - set(ids))
            if unknown:
                raise DataError(f"{cand}: case {unknown[0]} is not in the dataset ({len(unknown)} unknown)")
            logger.info("folds from %s", cand)
            return splits
    return make_splits(ids, folds)


def _fold_cases(
    cfg: CTSegConfig, ds: CTDataset, run: Path, data_root: Path | None, *, main: bool
) -> tuple[list[CTCase], list[CTCase]]:
    """(training cases, validation cases) of ``data.fold``; the split is written to ``RUN/splits.json``."""
    fold = cfg.data.fold
    if fold == "all":
        train_ids, val_ids = ds.ids, []
    else:
        splits = _load_splits(run, data_root, ds.ids, cfg.data.folds)
        if fold >= len(splits):
            raise ConfigError(f"data.fold={fold} but the split has {len(splits)} folds")
        train_ids, val_ids = splits[fold]["train"], splits[fold]["val"]
        if main:
            run.mkdir(parents=True, exist_ok=True)
            if not (run / "splits.json").is_file():
                write_json_atomic(run / "splits.json", splits)
    by_id = {c.case_id: c for c in ds.cases}
    train_cases = [by_id[i] for i in train_ids]
    val_cases = [by_id[i] for i in val_ids][: cfg.data.val_max_cases]
    if not train_cases:
        raise DataError("no training cases in this fold")
    return train_cases, val_cases


# ======================================================================================================= model
def _model_and_spec(
    cfg: CTSegConfig, ds: CTDataset, label_set: Mapping[int, str], num_classes: int, run: Path, *, resume: bool
) -> tuple[UNETR, dict[str, Any]]:
    """The network and its ``model.json``: rebuilt from the run's on ``resume``, else built from the config."""
    spec_path = run / "model.json"
    if resume and spec_path.is_file():
        spec = read_model_spec(spec_path)
        model = model_from_spec(spec, source=str(spec_path))
        if model.num_classes != num_classes:
            raise DataError(f"{spec_path}: the run has {model.num_classes} classes, the dataset {num_classes}")
        return model, spec
    model, meta = build_model(cfg, num_classes)
    spec = new_model_spec(cfg, model, meta, label_set, dataset=str(ds.source or ds.root), fold=cfg.data.fold)
    return model, spec


def _check_crop_size(model: UNETR, cfg: CTSegConfig) -> None:
    try:
        model.check_input_size(cfg.data.crop_size)
    except ValueError:
        raise ConfigError(
            f"data.crop_size {tuple(cfg.data.crop_size)} must be a multiple of the patch size {model.patch_size}"
        ) from None


# ======================================================================================================== data
def _datasets(
    cfg: CTSegConfig,
    spec: Mapping[str, Any],
    labels: Mapping[int, str],
    num_classes: int,
    run: Path,
    train_cases: Sequence[CTCase],
    val_cases: Sequence[CTCase],
) -> tuple[SegCropDataset, SegCropDataset]:
    """(training crops with augmentation, whole validation cases), both on the run's volume cache."""
    pre = spec["preprocess"]
    signature = transform_signature(
        "ct_seg",
        spacing=pre["spacing"],
        hu_window=pre["hu_window"],
        orientation=pre["orientation"],
        crop_foreground=pre["crop_foreground"],
        labels=sorted(labels),
    )
    cache = VolumeCache(cfg.data.cache_dir or run / "cache", signature)
    d = cfg.data
    crops = crop_transform(
        d.crop_size,
        d.samples_per_volume,
        num_classes,
        foreground=d.foreground,
        background=d.background,
        flip_prob=d.flip_prob,
        rot90_prob=d.rot90_prob,
        intensity_prob=d.intensity_prob,
    )
    crops.set_random_state(seed=cfg.optim.seed)
    preprocess = preprocess_transform(spec, with_label=True)
    train_set = SegCropDataset(train_cases, labels, preprocess, crops, cache)
    val_set = SegCropDataset(val_cases, labels, preprocess, None, cache)
    return train_set, val_set


def _warm_cache(train_set: SegCropDataset, val_set: SegCropDataset, *, quiet: bool) -> None:
    """Read, check and preprocess every case once (in this process: errors name the case, not a worker)."""
    rank, world = _rank(), max(distributed.env_world_size(), 1)
    todo = [(train_set, i) for i in range(len(train_set))] + [(val_set, i) for i in range(len(val_set))]
    todo = todo[rank::world]
    t0 = time.perf_counter()
    with ItemProgress(len(todo), "preprocessing", enabled=not quiet and rank == 0) as progress:
        for dset, i in todo:
            try:
                dset.preprocessed(i)
            except MedvitError:
                raise
            except Exception as err:  # noqa: BLE001 - MONAI wraps transform errors; name the case
                raise DataError(f"case {dset.cases[i].case_id}: preprocessing failed ({err})") from err
            progress.advance()
    logger.info("preprocessed %d case(s) in %.1f s", len(todo), time.perf_counter() - t0)


# ========================================================================================================= fit
def _validation_window(cfg: CTSegConfig) -> dict[str, Any]:
    """Sliding-window settings of validation: the training crop as window, the config's inference settings."""
    return {
        "roi": tuple(cfg.data.crop_size),
        "overlap": cfg.infer.overlap,
        "sw_batch_size": cfg.infer.sw_batch_size,
        "blend": cfg.infer.blend,
    }


def _fit(
    cfg: CTSegConfig,
    model: UNETR,
    train_set: SegCropDataset,
    hook: _ValidationHook | None,
    run: Path,
    *,
    resume: bool,
    quiet: bool,
) -> FitResult:
    """The shared training loop on the segmentation task; validation (and ``best.pt``) when there is a hook."""
    o = cfg.optim
    tcfg = TrainConfig.from_section(
        o,
        drop_last=False,
        eval_every=o.eval_every if hook is not None else 0,
        best_metric="val/dice" if hook is not None else None,
    )
    return fit(
        SegTask(model),
        train_set,
        tcfg,
        run,
        collate_fn=collate_crops,
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
        "best": {"metric": "val/dice", "value": result.best, "step": result.best_step},
    }
    save_run_model(weights, checkpoint_model_state(ck), final)
    logger.info("wrote %s (from %s)", weights, src.name)
