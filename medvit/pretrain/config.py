"""Configuration of ``medvit pretrain``: frozen dataclasses, the source of truth (YAML is only their stored form).

Precedence: defaults < ``--config file.yaml`` < ``--set a.b=c`` < first-class options. The resolved config is
written to ``<out>/config.yaml``; its ``resolved:`` section says what the nulls below became.

CT (Hi-End-MAE, or 3D MAE): defaults follow the Hi-End-MAE code (FengheTan9/Hi-End-MAE ``main.py``,
``trainer.py``, ``dataloader/med_datasets.py``): AdamW betas (0.9, 0.95), weight decay
0.05, lr 1e-4 not scaled by batch, linear warmup for 1% of the run then cosine to 0, mask ratio 0.75; CT
preprocessing RAS, 1.5 mm, HU -175..250 -> [0, 1], foreground crop; crops biased to tissue (pos:neg 6:2);
flips p 0.5 per axis, rot90 p 0.3, intensity scale/shift 0.1 with p 0.1. The official run uses 8 crops per
volume and 24 volumes per GPU; our defaults are smaller (4 crops, 2 volumes) so that a first run fits a single
modest GPU.

Chest X-rays (2D MAE, thorax recipe) and eye data (Uni4Eye): the preset's :class:`~medvit.pretrain.presets.Recipe`
fills what is left null: lr = ``blr * effective batch / 256`` (blr 1.5e-4 / 1e-3), warmup = the recipe's warmup
share of its epochs (40 of 800 / 40 of 200), augmentation and intensity scaling. The ``data.*`` keys that only
apply to one kind of data say so.
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
        method: ``hi-end-mae``, ``mae`` or ``uni4eye``; ``auto`` picks from the data (3D CT -> hi-end-mae,
            2D X-rays -> mae with the thorax recipe, 2D fundus photographs and/or 3D OCT -> uni4eye).
        preset: preset name (see ``medvit.pretrain.presets``); None = the method's default for the data: ``base``
            (CT), ``cxr-vit-s`` (2D images), ``uni4eye-vit-b`` (eye).
        mask_ratio: fraction of patches removed; None = the preset's (0.75; 0.9 for the chest X-ray presets).
        norm_pix_loss: MAE and Uni4Eye: per-patch normalised intensity targets (None = the preset's).
        drop_path_rate: stochastic depth in the encoder (official: 0).
        init: continue from weights: an official Hi-End-MAE checkpoint (``state_dict`` with ``module.`` keys, whole
            model), a Uni4Eye(++) checkpoint (whole model), or a medvit/foreign encoder file (encoder only).
        mask_strategy: Uni4Eye only: ``random`` (MAE) or ``entropy`` (Uni4Eye++'s entropy-guided masking); None =
            the preset's (random).
        loss_weights: Uni4Eye only: ``[lambda1, lambda2]`` of the intensity and gradient-map losses (None = [1, 1]).
    """

    method: Literal["auto", "hi-end-mae", "mae", "uni4eye"] = "auto"
    preset: str | None = None
    mask_ratio: float | None = None
    norm_pix_loss: bool | None = None
    drop_path_rate: float = 0.0
    init: Path | None = None
    mask_strategy: Literal["random", "entropy"] | None = None
    loss_weights: tuple[float, float] | None = None


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
    """Reading, preprocessing and cropping the inputs (CT volumes, 2D images, OCT volumes).

    Attributes:
        spacing: CT: target voxel size in mm (None keeps the native grid).
        hu_window: CT: HU range mapped to [0, 1] (clipped).
        orientation: CT: axis codes after reorientation (None keeps the stored orientation).
        crop_foreground: CT: crop each volume to the tissue bounding box (voxels > 0 after windowing).
        crop_size: model input: CT crop in voxels (3 sizes) or 2D image size (2 sizes); None = the preset's
            (CT 96^3, tiny 48^3; 2D 224^2, tiny 64^2).
        crops_per_volume: CT: random crops drawn from each loaded volume per step.
        pos: CT: weight of crops centred on tissue.
        neg: CT: weight of crops centred anywhere else (air, padding).
        augment: CT: random augmentation (2D and OCT augmentation follow the preset's recipe).
        cache_dir: where preprocessed volumes and images are cached (default ``<out>/cache``).
        cache_dtype: CT: ``float16`` (about 0.1 HU error, half the disk) or ``float32``.
        views_csv: chest X-rays: a CSV of views (``Frontal/Lateral``, ``ViewPosition`` or ``View Position``
            column) that narrows any layout to frontal views, instead of the release's own table.
        frontal_only: chest X-rays: keep frontal (PA/AP) views where the layout or ``views_csv`` tells the view.
        split: chest X-rays: one split of a public release (``train``...; the reference pretrains on training
            splits only); None = every image.
        in_chans: 2D MAE: 3 (a grey X-ray replicated, as the released thorax weights) or 1; None = the recipe's (3).
        short_side: 2D images are cached with this shorter side (random crops are cut from it); None = the input
            size x 10/7 (320 for 224, the size of the reference's resized MIMIC-CXR files).
        image_dtype: 2D cache type: ``uint8`` (as the reference's 8-bit pipeline) or ``uint16`` (12/16-bit X-rays).
        volume_size: Uni4Eye: OCT volumes are resampled to ``[rows, columns, slices]`` (the model's volume size);
            None = the preset's (224 x 224 x 112; tiny 64 x 64 x 32).
        batch_size_3d: Uni4Eye: volumes per 3D step and process; None = ``train.batch_size // 8`` (at least 1), the
            successor's 3D batch.
        ratio_2d: Uni4Eye: share of the steps that are 2D; None = the data's share (2D batches / all batches).
    """

    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-175.0, 250.0)
    orientation: str | None = "RAS"
    crop_foreground: bool = True
    crop_size: tuple[int, ...] | None = None
    crops_per_volume: int = 4
    pos: float = 6.0
    neg: float = 2.0
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    cache_dir: Path | None = None
    cache_dtype: Literal["float16", "float32"] = "float16"
    views_csv: Path | None = None
    frontal_only: bool = True
    split: str | None = None
    in_chans: int | None = None
    short_side: int | None = None
    image_dtype: Literal["uint8", "uint16"] = "uint8"
    volume_size: tuple[int, int, int] | None = None
    batch_size_3d: int | None = None
    ratio_2d: float | None = None


@dataclass(frozen=True, kw_only=True)
class TrainCfg(OptimSection):
    """Optimisation (the shared :class:`~medvit.shared.engine.section.OptimSection`; the ``train:`` section).

    ``steps`` or ``epochs`` (neither = 100 epochs); ``batch_size`` counts CT volumes (each giving
    ``data.crops_per_volume`` crops) or 2D images per step and process; ``lr`` null = CT: the preset's (1e-4; tiny
    1e-3), not scaled with the batch (as official); presets with a recipe: ``blr * effective batch / 256``;
    ``warmup_fraction`` null = CT 0.01, recipes their warmup share; ``grad_clip`` off as official; ``seed`` seeds
    weights, masks, crops and data order.

    Attributes:
        preview_every: steps between reconstruction previews (0: only at the end).
        blr: base learning rate of a recipe preset (``lr = blr * batch_size * grad_accum * processes / 256``);
            null = the recipe's (1.5e-4 chest X-ray, 1e-3 Uni4Eye). Ignored when ``lr`` is set.
    """

    APP_FIELDS = ("preview_every", "blr")

    batch_size: int = 2
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float | None = None  # type: ignore[assignment]
    preview_every: int = 200
    blr: float | None = None


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Everything ``medvit pretrain DIR`` needs.

    Attributes:
        data_dir: folder of CT volumes (NIfTI, nnU-Net raw layout, DICOM series; mixed), of chest X-rays (PNG,
            JPEG, DICOM CR/DX; ChestX-ray14, CheXpert and MIMIC-CXR-JPG layouts as released) or of eye data (colour
            fundus photographs and OCT volumes: NIfTI, ``.npy``, B-scan folders, vendor files).
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
        if d.crop_size is not None and (len(d.crop_size) not in (2, 3) or min(d.crop_size) < 1):
            raise ConfigError(f"data.crop_size: must be 2 or 3 sizes >= 1 (got {list(d.crop_size)})")
        self._check_2d_and_eye()
        if t.preview_every < 0:
            raise ConfigError(f"train.preview_every: must be >= 0 (got {t.preview_every})")
        if t.lr is not None and t.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0 (got {t.lr})")
        if t.blr is not None and t.blr <= 0:
            raise ConfigError(f"train.blr: must be > 0 (got {t.blr})")
        if t.warmup_fraction is not None and not 0.0 <= t.warmup_fraction < 1.0:
            raise ConfigError(f"train.warmup_fraction: must be in [0, 1) (got {t.warmup_fraction})")

    def _check_2d_and_eye(self) -> None:
        d, m = self.data, self.model
        if d.in_chans is not None and d.in_chans not in (1, 3):
            raise ConfigError(f"data.in_chans: must be 1 or 3 (got {d.in_chans})")
        if d.short_side is not None and d.short_side < 8:
            raise ConfigError(f"data.short_side: must be >= 8 pixels (got {d.short_side})")
        if d.volume_size is not None and min(d.volume_size) < 1:
            raise ConfigError(f"data.volume_size: must be >= 1 voxel (got {list(d.volume_size)})")
        if d.batch_size_3d is not None and d.batch_size_3d < 1:
            raise ConfigError(f"data.batch_size_3d: must be >= 1 (got {d.batch_size_3d})")
        if d.ratio_2d is not None and not 0.0 <= d.ratio_2d <= 1.0:
            raise ConfigError(f"data.ratio_2d: must be in [0, 1] (got {d.ratio_2d})")
        if m.loss_weights is not None and (min(m.loss_weights) < 0 or sum(m.loss_weights) <= 0):
            raise ConfigError(f"model.loss_weights: must be >= 0 and not both 0 (got {list(m.loss_weights)})")
