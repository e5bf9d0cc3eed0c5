"""Fine-tuning a ViT classifier: the task, validation-based model selection and the run's model file.

:func:`train_classifier` trains through the shared loop (:func:`medvit.shared.engine.fit.fit`: AdamW param groups
with layer-wise LR decay from the backbone's ``layer_id`` - patch/position embedding and tokens 0, block ``i`` at
``i + 1``, ``norm``/``fc_norm``/``head`` at ``depth + 1``, scale ``decay ** (depth + 1 - id)`` - warmup + half-cosine
per iteration, DDP under torchrun, checkpoints and bit-exact resume). The run directory holds what the engine writes
(``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``last.pt`` / ``best.pt``, ``plots/``) plus:

* ``model.json`` + ``model.safetensors``: the network of the best checkpoint by the task's validation metric
  (mean AUC for multi-label / binary, quadratic-weighted kappa for graded, accuracy for multi-class; never a test
  set), or of the last one without validation samples; ``model.json`` holds the label space, the input spec, the
  evaluation preprocessing, the thresholds and the modality (:mod:`medvit.shared.classify.model`);
* ``splits.json``: the keys of the training and validation samples;
* ``val_metrics.json``: every metric of the selected checkpoint on the validation samples.

An unreadable training input is logged and replaced by the next readable one (see
:class:`~medvit.shared.classify.data.SampleDataset`); an unreadable validation input stops the run with a
``DataError`` naming it (metrics on a silently changed validation set would mislead).

Thresholds (multi-label / binary): ``infer.threshold: youden`` picks, per output, the probability maximising
sensitivity + specificity on the validation samples with the selected weights; a number fixes it for every output
(0.5 without validation samples).

Losses: ``BCEWithLogitsLoss`` over the known findings (NaN targets masked out, mean over the known entries;
``pos_weight`` with ``loss.class_weights: balanced``) for multi-label / binary tasks, cross-entropy with soft
targets (label smoothing, mixing) and optional class weights for multi-class / graded ones. The learning rate
defaults to ``blr * effective batch / 256``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.classify.config import ClassifyConfig
from medvit.shared.classify.data import (
    SampleDataset,
    WeightedDraws,
    balanced_weights,
    class_weights,
    targets_array,
)
from medvit.shared.classify.evaluate import headline_metric, score
from medvit.shared.classify.inputs import EvalTransform, InputSpec, TrainTransform
from medvit.shared.classify.labels import LabelSpace, Sample, group_split
from medvit.shared.classify.mixing import (
    aligned_weight,
    apply_mix,
    draw_mix,
    initial_token_labels,
    mix_targets,
)
from medvit.shared.classify.model import (
    build_classifier,
    model_from_spec,
    new_model_spec,
    read_model_spec,
    save_classifier,
    write_spec_json,
)
from medvit.shared.config import to_dict
from medvit.shared.engine import distributed
from medvit.shared.engine.checkpoint import load_checkpoint
from medvit.shared.engine.fit import TrainConfig, fit, resolve_device
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.files import write_json_atomic
from medvit.shared.metrics.classification import youden_threshold

logger = logging.getLogger(__name__)

__all__ = ["ClassifyTask", "predict_probs", "train_classifier"]


class ClassifyTask(nn.Module):
    """Training task: mixing, forward (with TL-Align's label propagation when asked) and the loss.

    Batch: ``{"image": [B, C, *spatial], "target": [B, T]}`` in the label space's target encoding.

    Args:
        model: The classifier (a ViT with its head).
        labels: The label space.
        mix: ``ClassifyConfig.mix``.
        label_smoothing: Cross-entropy label smoothing.
        weights: BCE ``pos_weight`` or cross-entropy class weights (None: none).
    """

    def __init__(
        self,
        model: VisionTransformer,
        labels: LabelSpace,
        mix: Any,
        *,
        label_smoothing: float = 0.0,
        weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.labels = labels
        self.mix = mix
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("loss_weights", weights if weights is not None else torch.ones(0), persistent=False)

    def dense_targets(self, target: torch.Tensor) -> torch.Tensor:
        """Targets as the loss reads them: sigmoid tasks as given, softmax tasks one-hot (smoothed)."""
        if self.labels.uses_sigmoid:
            return target.float()
        c = len(self.labels.classes)
        onehot = F.one_hot(target[:, 0].long(), c).float()
        eps = self.label_smoothing
        return onehot * (1.0 - eps) + eps / c if eps > 0 else onehot

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE over known entries, or soft-target cross-entropy (both averaged)."""
        logits = logits.float()
        w = self.loss_weights if self.loss_weights.numel() else None
        if self.labels.uses_sigmoid:
            known = ~torch.isnan(target)
            per = F.binary_cross_entropy_with_logits(
                logits, torch.nan_to_num(target, nan=0.0), pos_weight=w, reduction="none"
            )
            return (per * known).sum() / known.sum().clamp_min(1)
        logp = F.log_softmax(logits, dim=-1)
        per = -(target * logp * (w if w is not None else 1.0)).sum(-1)
        return per.mean()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        x, target = batch["image"], self.dense_targets(batch["target"])
        m = self.mix
        plan = None
        if self.training:
            spatial = tuple(x.shape[2:])
            plan = draw_mix(
                m.mode,
                spatial,
                mixup_alpha=m.mixup_alpha,
                cutmix_alpha=m.cutmix_alpha,
                prob=m.prob,
                switch_prob=m.switch_prob,
                patch=self.model.patch_size,
            )
        if plan is None:
            return {"loss": self.loss(self.model(x), target)}
        x = apply_mix(x, plan)
        weight: torch.Tensor | float = plan.lam
        if plan.align:
            vit = self.model
            patches, prefix = initial_token_labels(plan, x.shape[0], x.shape[2:], vit.patch_size, x.device)
            tokens, carry = vit.forward_features_carry(x, patches, prefix)
            logits = vit.forward_head(tokens)
            weight = aligned_weight(carry, vit.num_prefix_tokens, vit.global_pool)
        else:
            logits = self.model(x)
        logs = {"mix_weight": weight.mean() if isinstance(weight, torch.Tensor) else weight}
        return {"loss": self.loss(logits, mix_targets(target, weight)), "logs": logs}


def output_probs(labels: LabelSpace, logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid (multi-label / binary) or softmax (multi-class / graded) probabilities, float32."""
    logits = logits.float()
    return torch.sigmoid(logits) if labels.uses_sigmoid else torch.softmax(logits, dim=-1)


def predict_probs(
    model: nn.Module, dataset: SampleDataset, labels: LabelSpace, *, batch_size: int, workers: int, device: Any
) -> np.ndarray:
    """Probabilities ``[N, num_outputs]`` of a dataset, in order (eval mode, no grad)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    out = []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                out.append(output_probs(labels, model(batch["image"].to(device))).cpu().numpy())
    finally:
        model.train(was)
    return np.concatenate(out) if out else np.zeros((0, labels.num_outputs()), np.float32)


class _ValidationHook:
    """Scores the validation samples (``on_eval``): every metric, logged as ``val/<name>``."""

    def __init__(self, dataset: SampleDataset, labels: LabelSpace, targets: np.ndarray, cfg: ClassifyConfig) -> None:
        self.dataset = dataset
        self.labels = labels
        self.targets = targets
        self.batch_size = cfg.infer.batch_size
        self.workers = cfg.optim.workers
        self.threshold = cfg.infer.threshold

    def on_eval(self, state: Any) -> dict[str, float]:
        model = state.task.model
        with state.autocast():
            probs = predict_probs(
                model, self.dataset, self.labels, batch_size=self.batch_size, workers=self.workers, device=state.device
            )
        fixed = None if self.threshold == "youden" else [float(self.threshold)] * probs.shape[1]
        overall = score(self.labels, probs, self.targets, fixed)["overall"]
        logger.info("validation (%d): %s", len(self.dataset), ", ".join(f"{k} {v:.4f}" for k, v in overall.items()))
        return {k: float(v) for k, v in overall.items()}


def _rank() -> int:
    return distributed.rank() if distributed.is_initialized() else distributed.env_rank()


def _splits(cfg: ClassifyConfig, train: Sequence[Sample], val: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    if not train:
        raise DataError("no training samples")
    if not val and cfg.data.val_fraction > 0:
        train, val = group_split(train, cfg.data.val_fraction, cfg.data.split_seed)
        logger.info("validation: %d of %d samples held out by group", len(val), len(train) + len(val))
    return list(train), list(val)


def _model(
    cfg: ClassifyConfig, labels: LabelSpace, modality: str, run: Path, *, resume: bool
) -> tuple[VisionTransformer, InputSpec, dict[str, Any]]:
    """The network: rebuilt from the run's ``model.json`` on resume, else built with its starting weights."""
    if resume and (run / "model.json").is_file():
        spec, path = read_model_spec(run)
        if spec.get("labels") != labels.to_dict():
            raise ConfigError(f"{path}: the run was trained for other labels; resume with the same data")
        return model_from_spec(spec, source=str(path)), InputSpec.from_dict(spec["input"]), spec
    model, input_spec, provenance = build_classifier(cfg.model, cfg.data, labels, modality)
    eval_cfg = {"crop_pct": cfg.augment.eval_crop_pct, "interpolation": cfg.augment.interpolation}
    spec = new_model_spec(model, labels, input_spec, modality, eval_cfg=eval_cfg, extra=provenance)
    return model, input_spec, spec


def _train_config(cfg: ClassifyConfig, n_train: int, has_val: bool, metric: str) -> TrainConfig:
    """The loop's config: lr by the batch rule, warmup epochs as a fraction, validation once per epoch."""
    o = cfg.optim
    world = max(distributed.env_world_size(), 1)
    eff_batch = o.batch_size * o.grad_accum * world
    per_epoch = max(n_train // (o.batch_size * world) // o.grad_accum, 1)
    steps = o.steps if o.steps is not None else (o.epochs or 1) * per_epoch
    lr = o.lr if o.lr is not None else o.blr * eff_batch / 256
    warmup = o.warmup_fraction if o.warmup_fraction > 0 else min(o.warmup_epochs * per_epoch / steps, 0.99)
    eval_every = o.eval_every or per_epoch
    return TrainConfig.from_section(
        o,
        lr=lr,
        warmup_fraction=warmup,
        eval_every=eval_every if has_val else 0,
        best_metric=f"val/{metric}" if has_val else None,
        best_mode="max",
    )


def _thresholds(cfg: ClassifyConfig, labels: LabelSpace, probs: np.ndarray | None, targets: np.ndarray) -> list:
    if not labels.uses_sigmoid:
        return []
    n = labels.num_outputs()
    if cfg.infer.threshold != "youden":
        return [float(cfg.infer.threshold)] * n
    if probs is None or probs.shape[0] == 0:
        return [0.5] * n
    return [youden_threshold(targets[:, c], probs[:, c]) for c in range(n)]


def _export(
    run: Path,
    spec: dict[str, Any],
    model: VisionTransformer,
    labels: LabelSpace,
    val_set: SampleDataset | None,
    val_targets: np.ndarray,
    cfg: ClassifyConfig,
    result: Any,
) -> dict[str, Any]:
    """Best (else last) checkpoint -> thresholds and validation metrics -> ``model.safetensors`` + ``model.json``."""
    src = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
    ck = load_checkpoint(src)
    sd = {k[len("model.") :]: v for k, v in ck["model"].items() if k.startswith("model.")}
    model.load_state_dict(sd)
    probs = None
    metrics: dict[str, Any] = {}
    if val_set is not None and len(val_set):
        device = resolve_device(cfg.optim.device)
        model.to(device)
        probs = predict_probs(
            model, val_set, labels, batch_size=cfg.infer.batch_size, workers=cfg.optim.workers, device=device
        )
        model.cpu()
    thresholds = _thresholds(cfg, labels, probs, val_targets)
    if probs is not None:
        metrics = score(labels, probs, val_targets, thresholds or None)
        write_json_atomic(run / "val_metrics.json", _finite(metrics))
    final = {
        **spec,
        "thresholds": thresholds or None,
        "weights": {"from": src.name, "step": int(ck.get("step", result.step))},
        "best": {"metric": spec.get("best_metric"), "value": result.best, "step": result.best_step},
    }
    save_classifier(run / "model.safetensors", sd, final)
    logger.info("wrote %s (from %s)", run / "model.safetensors", src.name)
    return {"thresholds": thresholds, "val": metrics.get("overall", {}), "weights_from": src.name}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def train_classifier(
    cfg: ClassifyConfig,
    train: Sequence[Sample],
    val: Sequence[Sample],
    labels: LabelSpace,
    modality: str,
    run_dir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Fine-tune a classifier (see the module docstring for the run folder).

    Args:
        cfg: The resolved config.
        train: Labelled training samples.
        val: Labelled validation samples (empty: ``data.val_fraction`` of ``train`` is held out by group; 0: no
            validation, the last checkpoint is exported).
        labels: The label space.
        modality: ``cxr``, ``fundus``, ``oct`` or ``image`` (how files are read).
        run_dir: Run directory.
        resume: Continue from ``run_dir/last.pt``.
        quiet: No progress bars.

    Returns:
        Summary: ``run_dir``, ``steps``, ``metric``, ``best`` (value), ``best_step``, ``val`` (metrics of the exported
        weights), ``thresholds``, ``weights``.

    Raises:
        MedvitError: Bad samples, config or weights (naming the key or file).
    """
    if not isinstance(cfg, ClassifyConfig):
        raise TypeError(f"train_classifier() takes a ClassifyConfig, got {type(cfg).__name__}")
    run = Path(run_dir)
    train, val = _splits(cfg, train, val)
    train_targets, val_targets = targets_array(train, labels), targets_array(val, labels)
    metric = headline_metric(labels, cfg.infer.val_metric)
    torch.manual_seed(cfg.optim.seed)
    model, spec_in, spec = _model(cfg, labels, modality, run, resume=resume)
    spec["best_metric"] = f"val/{metric}" if val else None
    main = _rank() == 0
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_spec_json(run / "model.json", spec)
        write_json_atomic(run / "splits.json", {"train": [s.key for s in train], "val": [s.key for s in val]})
    transform = TrainTransform(spec_in, cfg.augment) if cfg.augment.enabled else _eval_transform(spec_in, cfg)
    train_set: Any = SampleDataset(train, labels, spec_in, transform, substitute=True)
    if cfg.loss.sampler == "balanced":
        train_set = WeightedDraws(train_set, balanced_weights(train_targets, labels))
    weights = class_weights(train_targets, labels) if cfg.loss.class_weights == "balanced" else None
    task = ClassifyTask(model, labels, cfg.mix, label_smoothing=cfg.loss.label_smoothing, weights=weights)
    val_set = SampleDataset(val, labels, spec_in, _eval_transform(spec_in, cfg)) if val else None
    hooks = [_ValidationHook(val_set, labels, val_targets, cfg)] if val_set is not None else []
    tcfg = _train_config(cfg, len(train), bool(val), metric)
    result = fit(task, train_set, tcfg, run, resume=resume, quiet=quiet, hooks=hooks, resolved_config=to_dict(cfg))
    summary: dict[str, Any] = {
        "run_dir": str(run),
        "steps": result.step,
        "metric": f"val/{metric}" if val else None,
        "best": result.best,
        "best_step": result.best_step,
        "weights": str(run / "model.safetensors"),
    }
    if main:
        summary.update(_export(run, spec, model.cpu(), labels, val_set, val_targets, cfg, result))
    return summary


def _eval_transform(spec: InputSpec, cfg: ClassifyConfig) -> EvalTransform:
    return EvalTransform(spec, cfg.augment.eval_crop_pct, cfg.augment.interpolation)
