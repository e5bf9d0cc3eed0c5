"""Configuration of ``medvit pretrain``: frozen dataclasses, the source of truth (YAML is only their stored form).

Precedence: defaults < ``--config file.yaml`` < ``--set a.b=c`` < first-class options. The resolved config is
written to ``<out>/config.yaml``. Defaults follow the Hi-End-MAE code (FengheTan9/Hi-End-MAE ``main.py``,
``trainer.py``, ``dataloader/med_datasets.py``): AdamW betas (0.9, 0.95), weight decay
0.05, lr 1e-4 not scaled by batch, linear warmup for 1% of the run then cosine to 0, mask ratio 0.75; CT
preprocessing RAS, 1.5 mm, HU -175..250 -> [0, 1], foreground crop; crops biased to tissue (pos:neg 6:2);
flips p 0.5 per axis, rot90 p 0.3, intensity scale/shift 0.1 with p 0.1. The official run uses 8 crops per
volume and 24 volumes per GPU; our defaults are smaller (4 crops, 2 volumes) so that a first run fits a single
modest GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medvit.shared.engine.section import OptimSection
from medvit.shared.errors import ConfigError
from medvit.shared.paths import runs_dir

__all__ = ["AugmentCfg", "DataCfg", "ModelCfg", "PretrainConfig", "TrainCfg"]

DEFAULT_EPOCHS = 100


def default_out() -> Path:
    """Default run directory: ``$MEDVIT_RUNS/pretrain`` (``./runs/pretrain`` when the variable is unset)."""
    return runs_dir() / "pretrain"


@dataclass(frozen=True, kw_only=True)
class ModelCfg:
    """Which method and model size.

    Attributes:
        method: ``hi-end-mae`` (3D CT default) or ``mae``; ``auto`` picks from the data (3D CT -> hi-end-mae).
        preset: preset name (see ``medvit.pretrain.presets``): ``paper``, ``base``, ``small``, ``tiny``.
        mask_ratio: fraction of patches removed; None = the preset's (0.75).
        norm_pix_loss: plain MAE only: per-patch normalised targets (None = the preset's, True).
        drop_path_rate: stochastic depth in the encoder (official: 0).
        init: continue from weights: an official Hi-End-MAE checkpoint (``state_dict`` with ``module.`` keys, whole
            model) or a medvit/foreign encoder file (encoder only).
    """

    method: Literal["auto", "hi-end-mae", "mae"] = "auto"
    preset: str = "base"
    mask_ratio: float | None = None
    norm_pix_loss: bool | None = None
    drop_path_rate: float = 0.0
    init: Path | None = None


@dataclass(frozen=True, kw_only=True)
class AugmentCfg:
    """Random augmentation of each crop (MONAI ``RandFlipd`` x3, ``RandRotate90d``, scale/shift intensity)."""

    prob_flip: float = 0.5
    prob_rot90: float = 0.3
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    prob_intensity: float = 0.1


@dataclass(frozen=True, kw_only=True)
class DataCfg:
    """CT preprocessing and cropping.

    Attributes:
        spacing: target voxel size in mm (None keeps the native grid).
        hu_window: HU range mapped to [0, 1] (clipped).
        orientation: axis codes after reorientation (None keeps the stored orientation).
        crop_foreground: crop each volume to the tissue bounding box (voxels > 0 after windowing).
        crop_size: crop size in voxels; None = the preset's (96^3; tiny 48^3).
        crops_per_volume: random crops drawn from each loaded volume per step.
        pos: weight of crops centred on tissue.
        neg: weight of crops centred anywhere else (air, padding).
        augment: random augmentation.
        cache_dir: where preprocessed volumes are cached (default ``<out>/cache``).
        cache_dtype: ``float16`` (about 0.1 HU error, half the disk) or ``float32``.
    """

    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-175.0, 250.0)
    orientation: str | None = "RAS"
    crop_foreground: bool = True
    crop_size: tuple[int, int, int] | None = None
    crops_per_volume: int = 4
    pos: float = 6.0
    neg: float = 2.0
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    cache_dir: Path | None = None
    cache_dtype: Literal["float16", "float32"] = "float16"


@dataclass(frozen=True, kw_only=True)
class TrainCfg(OptimSection):
    """Optimisation (the shared :class:`~medvit.shared.engine.section.OptimSection`; the ``train:`` section).

    ``steps`` or ``epochs`` (neither = 100 epochs); ``batch_size`` counts volumes per step and process, each giving
    ``data.crops_per_volume`` crops; ``lr`` null = the preset's (1e-4; tiny 1e-3), not scaled with the batch (as
    official); ``grad_clip`` off as official; ``seed`` seeds weights, masks, crops and data order.

    Attributes:
        preview_every: steps between reconstruction previews (0: only at the end).
    """

    APP_FIELDS = ("preview_every",)

    batch_size: int = 2
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float = 0.01
    preview_every: int = 200


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Everything ``medvit pretrain DIR`` needs.

    Attributes:
        data_dir: folder of CT volumes (NIfTI, nnU-Net raw layout, DICOM series; mixed).
        out: run directory (default :func:`default_out`, read when the config is built).
        model: method and size.
        data: preprocessing and crops.
        train: optimisation.
        quiet: no progress bars.
    """

    data_dir: Path
    out: Path = field(default_factory=default_out)
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    quiet: bool = False

    def __post_init__(self) -> None:
        t, d, m = self.train, self.data, self.model
        if t.steps is not None and t.epochs is not None:
            raise ConfigError(f"train: set steps or epochs, not both (got steps={t.steps}, epochs={t.epochs})")
        if m.mask_ratio is not None and not 0.0 < m.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio: must be in (0, 1) (got {m.mask_ratio})")
        if d.crops_per_volume < 1:
            raise ConfigError(f"data.crops_per_volume: must be >= 1 (got {d.crops_per_volume})")
        if d.pos < 0 or d.neg < 0 or d.pos + d.neg <= 0:
            raise ConfigError(f"data.pos/data.neg: must be >= 0 and not both 0 (got {d.pos}, {d.neg})")
        if d.hu_window[0] >= d.hu_window[1]:
            raise ConfigError(f"data.hu_window: low must be below high (got {list(d.hu_window)})")
        if d.spacing is not None and min(d.spacing) <= 0:
            raise ConfigError(f"data.spacing: must be > 0 mm (got {list(d.spacing)})")
        if d.crop_size is not None and min(d.crop_size) < 1:
            raise ConfigError(f"data.crop_size: must be >= 1 voxel (got {list(d.crop_size)})")
        if t.preview_every < 0:
            raise ConfigError(f"train.preview_every: must be >= 0 (got {t.preview_every})")
        if t.lr is not None and t.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0 (got {t.lr})")
