"""The optimisation section every app and pretraining method embeds in its config (torch-free).

One dataclass, so that the ~20 settings of the training loop are declared once: an app subclasses it to set its
own defaults (the paper's recipe) and to add the few settings that are its own (declared in ``APP_FIELDS``), and
:meth:`medvit.shared.engine.fit.TrainConfig.from_section` maps every field onto the loop, refusing a field it
does not know instead of dropping it. In YAML it is the ``optim:`` section of the apps (``train:`` of
``medvit pretrain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

__all__ = ["OptimSection"]


@dataclass(frozen=True, kw_only=True)
class OptimSection:
    """Optimisation settings, as the training loop takes them.

    Attributes:
        steps: optimizer steps; wins over ``epochs`` when both are set.
        epochs: passes over the training set (used when ``steps`` is null).
        batch_size: samples per rank and micro-batch.
        workers: DataLoader worker processes per rank.
        lr: peak learning rate; null = the method's or preset's own.
        min_lr: learning rate at the end of the schedule.
        weight_decay: AdamW weight decay (not on biases, norms, tokens, position tables).
        betas: AdamW betas.
        warmup_fraction: linear warmup as a fraction of the run.
        schedule: decay after warmup: ``cosine`` (half cycle), ``linear``, ``constant`` or ``exponential``.
        lr_gamma: factor per epoch of the ``exponential`` schedule (torch's ``ExponentialLR``).
        layer_decay: layer-wise LR decay of the encoder (null: off).
        grad_accum: micro-batches per optimizer step.
        grad_clip: global gradient-norm clip (null: off).
        precision: ``auto`` (fp32 on CPU; bf16 autocast on CUDA when supported), ``fp32``, ``bf16``, ``fp16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        seed: seed of the initial weights, data order, augmentation and masks.
        log_every: steps between ``metrics.jsonl`` lines.
        ckpt_every: steps between checkpoints (0: only at the end).
        keep_last: step checkpoints kept besides ``last.pt`` / ``best.pt``.
        eval_every: steps between validations (0: only at the end).
        compile: ``torch.compile`` the model (opt-in: a long first step for a few percent).
    """

    APP_FIELDS: ClassVar[tuple[str, ...]] = ()
    """Fields a subclass adds that are the app's own (the loop never sees them), e.g. ``("preview_every",)``."""

    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    workers: int = 0
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.0
    schedule: Literal["cosine", "linear", "constant", "exponential"] = "cosine"
    lr_gamma: float = 0.95
    layer_decay: float | None = None
    grad_accum: int = 1
    grad_clip: float | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2
    eval_every: int = 0
    compile: bool = False
