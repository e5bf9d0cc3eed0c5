"""Configuration of the classification core: frozen dataclasses (torch-free) that the apps' presets fill.

Defaults are the fine-tuning recipe of the thorax Medical MAE paper (Xiao et al., "Delving into Masked Autoencoders
for Multi-Label Thorax Disease Classification", WACV 2023; lambert-x/medical_mae ``main_finetune_chestxray.py``):
global average pooling of the patch tokens + ``fc_norm``, a linear head initialised with a truncated normal of std
2e-5, layer-wise LR decay 0.55, drop path 0.2, timm's ``RandomResizedCrop`` + flip + RandAugment
``rand-m6-mstd0.5-inc1`` for training and ``Resize(size / 0.875) + CenterCrop(size)`` for evaluation, AdamW with
weight decay 0.05, 5 warmup epochs then a half cosine to ``min_lr`` 1e-5, ``lr = blr * batch / 256`` with
``blr`` 2.5e-4 (1e-3 at the paper's batch 1024), 75 epochs, no mixing. Each app keeps its presets (``paper``,
``tiny``, ...) as YAML layers over these dataclasses in its own ``presets/`` folder. A ``tiny`` CPU layer that the
core's tests use (a few seconds per run on one core; 3D: ``backbone: test_vit_3d`` and ``size: [32, 32, 16]``)::

    model: {backbone: test_vit_2d, backbone_overrides: {depth: 2}, drop_path: 0.1}
    data: {size: [32]}
    optim: {steps: 20, epochs: null, batch_size: 8, lr: 1.0e-3, warmup_epochs: 0, ckpt_every: 10, log_every: 5}
    infer: {batch_size: 16}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from medvit.shared.engine.section import OptimSection

__all__ = [
    "AugmentCfg",
    "ClassifyConfig",
    "ClassifyDataCfg",
    "ClassifyInferCfg",
    "ClassifyModelCfg",
    "ClassifyOptim",
    "LossCfg",
    "MixCfg",
]

MIX_MODES: tuple[str, ...] = ("none", "mixup", "cutmix", "tl-align")


def _check_range(where: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        raise ValueError(f"{where} must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}")


@dataclass(frozen=True, kw_only=True)
class ClassifyModelCfg:
    """The network: a ViT (2D or 3D) with a linear head.

    Attributes:
        backbone: registered backbone name, used when ``weights`` is null or a foreign checkpoint needs an
            architecture (null: inferred from the checkpoint's keys and shapes).
        backbone_overrides: architecture kwargs replacing the registry's or the file's (e.g. ``{img_size: 384}``).
        weights: starting weights: a medvit encoder export (``medvit pretrain``, ``medvit weights convert``) whose
            sidecar also gives the input size, channels and intensity normalisation; a foreign checkpoint the
            backbone importers know (Medical MAE, RETFound, Uni4Eye(++), timm ImageNet ``.pth`` / ``.safetensors``,
            Hi-End-MAE); or the ``model.safetensors`` of an earlier classification run (warm start).
        global_pool: ``avg`` (mean of the patch tokens, then ``fc_norm``: the paper) or ``token`` (class token).
        drop_path: stochastic depth rate of the last block (linear over blocks).
        head_init_std: std of the truncated normal that initialises the head weights (bias 0).
    """

    backbone: str | None = "vit_small_patch16_224"
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    global_pool: Literal["avg", "token"] = "avg"
    drop_path: float = 0.2
    head_init_std: float = 2e-5

    def __post_init__(self) -> None:
        from medvit.shared.schema import SchemaError, check_arch_kwargs

        try:
            check_arch_kwargs(self.backbone_overrides, partial=True)
        except SchemaError as err:
            raise ValueError(f"model.backbone_overrides: {err}") from None
        if self.global_pool not in ("avg", "token"):
            raise ValueError(f"model.global_pool must be avg or token, got {self.global_pool!r}")
        _check_range("model.drop_path", self.drop_path, 0.0, 0.99)
        _check_range("model.head_init_std", self.head_init_std, 0.0, 1.0, lo_open=True)
        if self.backbone is None and self.weights is None:
            raise ValueError("model: set model.backbone or model.weights")


@dataclass(frozen=True, kw_only=True)
class MixCfg:
    """Batch mixing (timm's ``Mixup`` in batch mode: one ratio per batch, image ``i`` mixed with ``B - 1 - i``).

    Attributes:
        mode: ``none`` (the paper), ``mixup``, ``cutmix`` (target = pasted area ratio) or ``tl-align`` (CutMix on the
            token grid whose target is the token label aligned through the attention, Xiao et al., ICCV 2023).
        mixup_alpha: Beta(alpha, alpha) of the mixup ratio.
        cutmix_alpha: Beta(alpha, alpha) of the CutMix ratio.
        prob: probability that a batch is mixed at all.
        switch_prob: ``cutmix`` / ``tl-align``: probability of a mixup batch instead (timm's ``switch_prob``).
    """

    mode: Literal["none", "mixup", "cutmix", "tl-align"] = "none"
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MIX_MODES:
            raise ValueError(f"mix.mode must be one of {', '.join(MIX_MODES)}, got {self.mode!r}")
        _check_range("mix.mixup_alpha", self.mixup_alpha, 0.0, 100.0, lo_open=True)
        _check_range("mix.cutmix_alpha", self.cutmix_alpha, 0.0, 100.0, lo_open=True)
        _check_range("mix.prob", self.prob, 0.0, 1.0)
        _check_range("mix.switch_prob", self.switch_prob, 0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class AugmentCfg:
    """Training augmentation (2D: timm's ``create_transform`` for training; 3D: flips and intensity jitter).

    Attributes:
        enabled: augment at all (off: the evaluation preprocessing is used for training too).
        crop_scale: area range of ``RandomResizedCrop`` (timm's default (0.08, 1), which the paper's fine-tuning
            used; its pretraining used (0.5, 1)).
        crop_ratio: aspect ratio range of the crop.
        hflip: probability of a horizontal flip (2D) / of a flip of each lateral axis (3D).
        randaugment: RandAugment in timm's notation (``rand-m6-mstd0.5-inc1``; ``""`` = off).
        eval_crop_pct: evaluation resize: the shorter side to ``size / eval_crop_pct``, then a centre crop (timm's
            ``crop_pct`` 0.875; 1.0 = resize straight to the input size).
        interpolation: ``bicubic`` (the paper) or ``bilinear``.
    """

    enabled: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: str = "rand-m6-mstd0.5-inc1"
    eval_crop_pct: float = 0.875
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {list(self.crop_scale)}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"augment.crop_ratio must satisfy 0 < lo <= hi, got {list(self.crop_ratio)}")
        _check_range("augment.hflip", self.hflip, 0.0, 1.0)
        _check_range("augment.eval_crop_pct", self.eval_crop_pct, 0.1, 1.0)
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"augment.interpolation must be bicubic or bilinear, got {self.interpolation!r}")
        if self.randaugment:
            from medvit.shared.classify.randaugment import parse_randaugment

            parse_randaugment(self.randaugment)  # raises ValueError naming the bad part


@dataclass(frozen=True, kw_only=True)
class LossCfg:
    """Loss: BCE with logits for multi-label / binary tasks, cross-entropy for multi-class / graded ones.

    Attributes:
        label_smoothing: cross-entropy label smoothing (multi-class / graded; 0 = off).
        class_weights: ``none`` or ``balanced``: BCE ``pos_weight = negatives / positives`` per finding;
            cross-entropy class weights ``n / (C * count_c)``; both from the training labels.
        sampler: ``random`` or ``balanced`` (draws with replacement, each sample weighted by the inverse frequency
            of its rarest positive class, see :func:`medvit.shared.classify.data.balanced_weights`).
    """

    label_smoothing: float = 0.0
    class_weights: Literal["none", "balanced"] = "none"
    sampler: Literal["random", "balanced"] = "random"

    def __post_init__(self) -> None:
        _check_range("loss.label_smoothing", self.label_smoothing, 0.0, 0.99)
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(f"loss.class_weights must be none or balanced, got {self.class_weights!r}")
        if self.sampler not in ("random", "balanced"):
            raise ValueError(f"loss.sampler must be random or balanced, got {self.sampler!r}")


@dataclass(frozen=True, kw_only=True)
class ClassifyDataCfg:
    """Inputs.

    Attributes:
        size: input size (one value: square / cubic; or one per axis); null = the encoder sidecar's input size,
            else the backbone's ``img_size``.
        in_chans: input channels; null = the sidecar's, else the backbone's.
        mean: per-channel mean on [0, 1] intensities; null = the sidecar's, else the modality preset's.
        std: per-channel std; null as ``mean``.
        val_fraction: share of the training samples held out for validation (by group) when the app gives no
            validation list.
        split_seed: seed of that split.
    """

    size: tuple[int, ...] | None = None
    in_chans: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.size is not None and (not 1 <= len(self.size) <= 3 or min(self.size) < 8 or max(self.size) > 4096):
            raise ValueError(f"data.size must be 1 to 3 sides in 8..4096, got {self.size}")
        if self.in_chans is not None and self.in_chans not in (1, 3):
            raise ValueError(f"data.in_chans must be 1 or 3, got {self.in_chans}")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise ValueError(f"data.std must be positive, got {self.std}")
        _check_range("data.val_fraction", self.val_fraction, 0.0, 0.9)


@dataclass(frozen=True, kw_only=True)
class ClassifyInferCfg:
    """Inference and validation.

    Attributes:
        batch_size: images per forward pass (validation and predict).
        threshold: ``youden`` (per class, maximising sensitivity + specificity on the validation set of the
            selected checkpoint) or a fixed probability, for multi-label and binary tasks. Multi-class and graded
            tasks take the arg-max.
        val_metric: metric that selects the best checkpoint: ``auto`` (mean AUC for multi-label / binary,
            quadratic-weighted kappa for graded, accuracy for multi-class), or one of ``mauc``, ``kappa``,
            ``accuracy``, ``macro_f1``.
    """

    batch_size: int = 32
    threshold: str = "youden"
    val_metric: Literal["auto", "mauc", "kappa", "accuracy", "macro_f1"] = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"infer.batch_size must be >= 1, got {self.batch_size}")
        if self.threshold != "youden":
            try:
                value = float(self.threshold)
            except ValueError:
                raise ValueError(f"infer.threshold: youden or a number in (0, 1), got {self.threshold!r}") from None
            _check_range("infer.threshold", value, 0.0, 1.0, lo_open=True)
        if self.val_metric not in ("auto", "mauc", "kappa", "accuracy", "macro_f1"):
            raise ValueError(f"infer.val_metric: unknown metric {self.val_metric!r}")


@dataclass(frozen=True, kw_only=True)
class ClassifyOptim(OptimSection):
    """The optimisation section with the paper's fine-tuning recipe as defaults.

    ``lr`` null means ``blr * effective batch / 256`` (MAE's rule). ``warmup_epochs`` (5 of 75 in the paper) is
    turned into the loop's ``warmup_fraction``.

    Attributes:
        blr: base learning rate for the rule above.
        warmup_epochs: linear warmup length in epochs (ignored when ``warmup_fraction`` is set above 0).
    """

    APP_FIELDS: ClassVar[tuple[str, ...]] = ("blr", "warmup_epochs")

    epochs: int | None = 75
    batch_size: int = 128
    lr: float | None = None
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    layer_decay: float | None = 0.55
    blr: float = 2.5e-4
    warmup_epochs: float = 5.0
    eval_every: int = 0
    ckpt_every: int = 1000

    def __post_init__(self) -> None:
        _check_range("optim.blr", self.blr, 0.0, 1.0, lo_open=True)
        _check_range("optim.warmup_epochs", self.warmup_epochs, 0.0, 1e6)


@dataclass(frozen=True, kw_only=True)
class ClassifyConfig:
    """Everything ``train_classifier`` needs.

    Attributes:
        model: the network.
        mix: batch mixing (none / mixup / cutmix / tl-align).
        augment: training augmentation and evaluation preprocessing.
        loss: loss options.
        data: input size, channels and normalisation overrides; validation split.
        optim: the training loop.
        infer: validation / prediction batch size, thresholds, model-selection metric.
    """

    model: ClassifyModelCfg = field(default_factory=ClassifyModelCfg)
    mix: MixCfg = field(default_factory=MixCfg)
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    data: ClassifyDataCfg = field(default_factory=ClassifyDataCfg)
    optim: ClassifyOptim = field(default_factory=ClassifyOptim)
    infer: ClassifyInferCfg = field(default_factory=ClassifyInferCfg)
