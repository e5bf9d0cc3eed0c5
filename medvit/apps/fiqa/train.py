"""``fiqa train``: ViT-FIQA trained through the shared engine (``fit``).

AMP, DDP under ``torchrun``, resume, checkpoints and ``metrics.jsonl`` come from the engine; periodic
verification accuracy on pair lists runs as an ``on_eval`` hook; the final model is exported as
``RUN/model.safetensors`` (+ sidecar), which ``score`` reads.

Class centres and ``torchrun``: by default every rank holds all class centres (plain DDP; exact certainty ratio;
resumable). ``loss.centres=sharded`` (or ``auto`` above 2**28 centre floats, about 512k identities at D=512)
shards them across ranks as Partial FC does (see ``losses.py``); then a multi-rank ``--resume`` is refused,
because the engine checkpoints rank 0's state only and the other shards would be lost.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from medvit.apps.fiqa.config import FiqaConfig, default_run_dir
from medvit.apps.fiqa.data import PairSet, build_augment, open_training_set, read_pairs
from medvit.apps.fiqa.evaluate import verification_accuracy
from medvit.apps.fiqa.losses import ClassCentres, FIQATask
from medvit.apps.fiqa.model import (
    ViTFIQA,
    build_fiqa_model,
    convert_official_state_dict,
    load_state_into,
    preprocess_faces,
    read_foreign_state_dict,
    save_fiqa,
)
from medvit.shared.config import to_dict
from medvit.shared.engine import distributed as D
from medvit.shared.engine.fit import TrainConfig, fit, seed_everything
from medvit.shared.errors import TrainingError
from medvit.shared.faces.align import given_crop

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "train"]

_PARTIAL_FC_AUTO_FLOATS = 2**28


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory.
        weights: exported ``model.safetensors``.
        steps: optimizer steps done.
        final_loss: loss of the last step.
        identities: number of training identities.
        val: last verification metrics (``val/<set>_acc``...).
    """

    run_dir: Path
    weights: Path
    steps: int
    final_loss: float
    identities: int
    val: dict[str, float]


class _VerificationHook:
    """``on_eval``: verification accuracy (flip-augmented embeddings, 10 folds) and mean quality per pair set."""

    def __init__(self, pair_sets: Sequence[PairSet], batch_size: int) -> None:
        self.sets = []
        for ps in pair_sets:
            crops = np.stack([given_crop(ps.load(i)).crop for i in range(len(ps.refs))])
            self.sets.append((ps, crops))
        self.batch_size = batch_size
        self.last: dict[str, float] = {}

    def on_eval(self, state: Any) -> dict[str, float]:
        model = state.task.model
        out: dict[str, float] = {}
        for ps, crops in self.sets:
            embs, quals = [], []
            for i in range(0, len(crops), self.batch_size):
                x = preprocess_faces(crops[i : i + self.batch_size]).to(state.device)
                with state.autocast():
                    e, q = model(x)
                    e2, _ = model(torch.flip(x, dims=[3]))
                embs.append((e + e2).float().cpu().numpy())
                quals.append(q.float().cpu().numpy())
            emb = np.concatenate(embs)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            acc, _ = verification_accuracy(emb[ps.a], emb[ps.b], ps.issame)
            out[f"{ps.name}_acc"] = acc
            out[f"{ps.name}_quality"] = float(np.concatenate(quals).mean())
        self.last = {f"val/{k}": v for k, v in out.items()}
        return out


class _ExportHook:
    """``on_fit_end``: rank 0 writes ``RUN/model.safetensors`` (encoder + heads, no class centres)."""

    def __init__(self, path: Path, metadata: Mapping[str, Any]) -> None:
        self.path = path
        self.metadata = dict(metadata)

    def on_fit_end(self, state: Any) -> None:
        if state.rank == 0:
            save_fiqa(state.task.model, self.path, metadata={**self.metadata, "steps": state.step})


def _init_weights(model: ViTFIQA, path: Path) -> None:
    """Start from our FIQA file, an official ViT-FIQA checkpoint or an arcface_torch recognition ViT."""
    p = Path(path)
    side = p.with_suffix(".json")
    if p.suffix == ".safetensors" and side.is_file():
        sd = load_file(str(p))
    else:
        # The model being trained fixes the head count; the checkpoint only has to fit its shapes.
        sd, _ = convert_official_state_dict(read_foreign_state_dict(p), num_heads=model.backbone.num_heads)
    info = load_state_into(
        model, sd, expected_missing=["head_qs.*", "mask_token", "backbone.quality_token"], source=str(p)
    )
    logger.info("initialised from %s (%d keys missing: %s)", p, len(info["missing"]), ", ".join(info["missing"][:4]))


def _build_model(cfg: FiqaConfig) -> ViTFIQA:
    """The network of ``cfg.model``, started from ``model.init`` when one is given."""
    model = build_fiqa_model(
        cfg.model.backbone,
        head=cfg.model.head,
        mask_ratio=cfg.model.mask_ratio,
        drop_path_rate=cfg.model.drop_path_rate,
    )
    if cfg.model.init is not None:
        _init_weights(model, cfg.model.init)
    return model


def _shard_centres(cfg: FiqaConfig, centre_floats: int, world: int, *, resume: bool) -> bool:
    """Whether the class centres are sharded over the ranks (``loss.centres``); refuses what cannot resume."""
    shard = cfg.loss.centres == "sharded" or (cfg.loss.centres == "auto" and centre_floats > _PARTIAL_FC_AUTO_FLOATS)
    shard = shard and world > 1
    if shard and resume:
        raise TrainingError(
            "--resume of a multi-rank run with sharded class centres (loss.centres) is not supported: the "
            "checkpoint holds rank 0's shard only; train with --set loss.centres=replicated to be resumable"
        )
    return shard


def _build_task(cfg: FiqaConfig, model: ViTFIQA, num_classes: int, *, resume: bool) -> tuple[FIQATask, str]:
    """Class centres and the training task; also says where the centres live (for the log)."""
    rank, world = D.env_rank(), D.env_world_size()
    shard = _shard_centres(cfg, num_classes * model.embedding_dim, world, resume=resume)
    # Sharded centres: a different stream per rank, else every shard would start as a copy of rank 0's rows.
    # Replicated centres are broadcast from rank 0 by DDP, so the per-rank seed does not matter for them.
    torch.manual_seed(cfg.optim.seed + 1 + rank)
    centres = ClassCentres(
        model.embedding_dim,
        num_classes,
        margin=cfg.loss.margin,
        scale=cfg.loss.scale,
        cosface_m=cfg.loss.cosface_m,
        arcface_m=cfg.loss.arcface_m,
        cr_eps=cfg.loss.cr_eps,
        rank=rank if shard else 0,
        world=world if shard else 1,
    )
    where = f"sharded over {world} ranks" if shard else "replicated"
    return FIQATask(model, centres, alpha=cfg.loss.alpha, beta=cfg.loss.beta), where


def train(
    cfg: FiqaConfig,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
) -> TrainResult:
    """Train ViT-FIQA on identity folders or a RecordIO set.

    Args:
        cfg: the resolved config (:func:`~medvit.apps.fiqa.config.load_fiqa_config`).
        data: ``DATA/<identity>/*.jpg`` or a folder with ``train.rec``/``train.idx``.
        out: run directory; None: :func:`~medvit.apps.fiqa.config.default_run_dir` (``$MEDVIT_RUNS/fiqa``).
        resume: continue from ``RUN/last.pt``.
        quiet: no progress bar.

    Returns:
        A :class:`TrainResult`.
    """
    o = cfg.optim
    run_dir = Path(out) if out is not None else default_run_dir()
    seed_everything(o.seed)  # initial weights follow optim.seed: the engine seeds only from fit() on
    augment = build_augment(cfg.data.augment, cfg.data.augment_p)
    ds = open_training_set(data, augment, align=cfg.data.align, models=cfg.data.models, min_images=cfg.data.min_images)
    model = _build_model(cfg)
    task, centres = _build_task(cfg, model, ds.num_classes, resume=resume)

    hooks: list[Any] = []
    pair_sets = [read_pairs(p) for p in cfg.val_pairs]
    verif = _VerificationHook(pair_sets, batch_size=min(o.batch_size, 128)) if pair_sets else None
    if verif is not None:
        hooks.append(verif)
    weights = run_dir / "model.safetensors"
    meta = {"preset": cfg.preset, "identities": ds.num_classes, "train_images": len(ds), "data": str(data)}
    hooks.append(_ExportHook(weights, meta))
    best = f"val/{pair_sets[0].name}_acc" if pair_sets else None
    tc = TrainConfig.from_section(o, best_metric=best, drop_last=True)
    logger.info(
        "fiqa train: %d images of %d identities, %s (%s head), class centres %s",
        len(ds),
        ds.num_classes,
        cfg.model.backbone,
        cfg.model.head,
        centres,
    )
    resolved = {**to_dict(cfg), "train": tc.to_dict(), "data_path": str(data)}
    res = fit(task, ds, tc, run_dir, resume=resume, quiet=quiet, hooks=hooks, resolved_config=resolved)
    return TrainResult(
        run_dir=run_dir,
        weights=weights,
        steps=res.step,
        final_loss=res.final_loss,
        identities=ds.num_classes,
        val=verif.last if verif else {},
    )
