"""Configuration of ``medvit ct-seg``: frozen dataclasses (the source of truth) and the YAML presets.

Presets live in ``presets/*.yaml`` beside this module:

=======  ====================================================================================================
preset   what
=======  ====================================================================================================
paper    Hi-End-MAE's downstream recipe (FengheTan9/Hi-End-MAE ``downstream/``): ViT 1536/12/16 with 12^3
         patches built as the official downstream network (``official_downstream``: no cls token, LayerNorm eps
         1e-5, learned position table, no drop path), UNETR feature size 32, 96^3 crops, 1.5 mm, HU [-175, 250],
         DiceCE, AdamW lr 1e-4 wd 1e-5, 4 crops per volume, sliding window overlap 0.5
base     MONAI UNETR size: ViT-B/16 3D (768/12/12), feature size 16, otherwise as ``paper``
small    ViT-S/16 3D (384/12/6), feature size 16: fits a 12 GB GPU
tiny     CPU preset for tests and the demo: the 96-wide, 4-block, patch-16 encoder of ``pretrain --preset
         tiny``, 48^3 crops, feature size 8, a few hundred steps
=======  ====================================================================================================

Precedence: dataclass defaults < preset < ``--config file.yaml`` < ``--set a.b=c`` < first-class options.
Preprocessing (``data.spacing``, ``data.hu_window``) left at ``null`` comes from the encoder's sidecar (a CT
pretraining export records what it was trained on), else 1.5 mm and [-175, 250] HU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvit.shared.engine.section import OptimSection

__all__ = [
    "DEFAULT_HU_WINDOW",
    "DEFAULT_SPACING",
    "PRESETS",
    "CTSegConfig",
    "DataCfg",
    "InferCfg",
    "ModelCfg",
    "OptimCfg",
    "load_ct_seg_config",
    "load_train_config",
    "preset_path",
]

PRESETS: tuple[str, ...] = ("paper", "base", "small", "tiny")
DEFAULT_SPACING: tuple[float, float, float] = (1.5, 1.5, 1.5)
DEFAULT_HU_WINDOW: tuple[float, float] = (-175.0, 250.0)


@dataclass(frozen=True, kw_only=True)
class ModelCfg:
    """The UNETR network.

    Attributes:
        backbone: registered 3D backbone used when no ``weights`` are given (``vit_base_patch16_3d``...).
        backbone_overrides: architecture kwargs replacing the registry's (e.g. ``{embed_dim: 96}``).
        weights: encoder to start from: a medvit export (``.safetensors`` + sidecar, e.g. from ``medvit
            pretrain``), an official Hi-End-MAE checkpoint, a MONAI UNETR/ViT state dict (its decoder is taken
            too when the shapes match), a timm/MAE checkpoint, or a ``model.safetensors`` of an earlier ct-seg
            run. Its architecture then replaces ``backbone``.
        num_heads: attention heads of a foreign checkpoint (weights do not record them; standard widths are
            guessed).
        checkpoint_img_size: input size a foreign checkpoint with a learned, non-cubic position embedding was
            trained on (e.g. a MONAI UNETR's ``img_size``); cubic grids are inferred.
        taps: 0-based encoder blocks feeding the decoder (default: 4 evenly spaced, the last block included).
        feature_size: channels of the full-resolution decoder level.
        res_block: residual conv blocks in the decoder.
        drop_path_rate: stochastic depth of the encoder; ``null``: 0.1, or 0 with ``official_downstream``.
        official_downstream: build the encoder as Hi-End-MAE's official downstream network does (its
            ``downstream/factory.py`` puts the weights into a MONAI ViT): the cls token dropped from the sequence,
            LayerNorm eps 1e-5 instead of 1e-6, a learnable position table (initialised from the checkpoint's) instead
            of a fixed one, and no drop path unless ``drop_path_rate`` is set. Off: the encoder stays as it was
            pretrained. On in the ``paper`` preset, so that reproducing the paper's numbers uses the paper's network.
    """

    backbone: str = "vit_base_patch16_3d"
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    num_heads: int | None = None
    checkpoint_img_size: tuple[int, int, int] | None = None
    taps: tuple[int, ...] | None = None
    feature_size: int = 16
    res_block: bool = True
    drop_path_rate: float | None = None
    official_downstream: bool = False

    def __post_init__(self) -> None:
        from medvit.shared.schema import SchemaError, check_arch_kwargs

        try:  # keys and values here; their sum with the backbone's is checked when it is built
            check_arch_kwargs(self.backbone_overrides, partial=True)
        except SchemaError as err:
            raise ValueError(f"model.backbone_overrides: {err}") from None
        if self.feature_size < 1:
            raise ValueError(f"model.feature_size must be >= 1, got {self.feature_size}")
        if self.drop_path_rate is not None and not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def drop_path(self) -> float:
        """``drop_path_rate``, or its default: 0.1, and 0 for the official downstream network (it has none)."""
        if self.drop_path_rate is not None:
            return self.drop_path_rate
        return 0.0 if self.official_downstream else 0.1


@dataclass(frozen=True, kw_only=True)
class DataCfg:
    """Preprocessing, sampling, augmentation and the cross-validation split.

    Attributes:
        spacing: target voxel size in mm (``null``: the encoder sidecar's, else 1.5 mm); ``native`` keeps each
            scan's grid.
        hu_window: HU range mapped to [0, 1] and clipped (``null``: the sidecar's, else [-175, 250]).
        orientation: axis codes every volume is reoriented to.
        crop_foreground: crop the air around the body before sampling (and in inference).
        crop_size: training crop and sliding-window size (multiples of the patch size).
        samples_per_volume: crops drawn from each volume per step.
        foreground: relative weight of crops centred on labelled voxels; spread equally over the classes
            present in the case (label-balanced, ``RandCropByLabelClassesd``).
        background: relative weight of crops centred on background voxels inside the body.
        flip_prob: flip probability per axis.
        rot90_prob: probability of an axial 90-degree rotation.
        intensity_prob: probability of each intensity augmentation (scale and shift by 0.1).
        folds: number of cross-validation folds (nnU-Net: 5).
        fold: fold to train (0-based), or ``all`` (train on every case, no validation).
        val_max_cases: validate on at most this many cases of the fold (``null``: all).
        cache_dir: preprocessed-volume cache (default ``RUN/cache``).
    """

    spacing: tuple[float, float, float] | Literal["native"] | None = None
    hu_window: tuple[float, float] | None = None
    orientation: str = "RAS"
    crop_foreground: bool = True
    crop_size: tuple[int, int, int] = (96, 96, 96)
    samples_per_volume: int = 4
    foreground: float = 1.0
    background: float = 1.0
    flip_prob: float = 0.2
    rot90_prob: float = 0.2
    intensity_prob: float = 0.1
    folds: int = 5
    fold: int | Literal["all"] = 0
    val_max_cases: int | None = None
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.spacing, tuple) and min(self.spacing) <= 0:
            raise ValueError(f"data.spacing must be positive mm values, got {self.spacing}")
        if self.hu_window is not None and self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"data.hu_window must be [low, high] with low < high, got {self.hu_window}")
        if min(self.crop_size) < 1:
            raise ValueError(f"data.crop_size must be positive, got {self.crop_size}")
        if self.samples_per_volume < 1:
            raise ValueError(f"data.samples_per_volume must be >= 1, got {self.samples_per_volume}")
        if self.foreground < 0 or self.background < 0 or self.foreground + self.background <= 0:
            raise ValueError("data.foreground and data.background must be >= 0 and not both 0")
        if self.folds < 2:
            raise ValueError(f"data.folds must be >= 2, got {self.folds}")
        if isinstance(self.fold, int) and not 0 <= self.fold < self.folds:
            raise ValueError(f"data.fold must be in 0..{self.folds - 1} or 'all', got {self.fold}")
        if len(self.orientation) != 3:
            raise ValueError(f"data.orientation must be 3 axis codes such as RAS, got {self.orientation!r}")


@dataclass(frozen=True, kw_only=True)
class InferCfg:
    """Sliding-window inference (validation and ``predict``).

    Attributes:
        overlap: window overlap fraction.
        sw_batch_size: windows per forward pass.
        blend: ``gaussian`` (centre-weighted, nnU-Net/MONAI) or ``constant``.
        tta: average the 8 flip combinations (slower, usually slightly better).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        resample: bring ``probabilities`` (trilinear, then argmax) or ``labels`` (nearest) back to the input grid.
    """

    overlap: float = 0.5
    sw_batch_size: int = 4
    blend: Literal["gaussian", "constant"] = "gaussian"
    tta: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    resample: Literal["probabilities", "labels"] = "probabilities"

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"infer.overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ValueError(f"infer.sw_batch_size must be >= 1, got {self.sw_batch_size}")


@dataclass(frozen=True, kw_only=True)
class OptimCfg(OptimSection):
    """Optimisation (the shared :class:`~medvit.shared.engine.section.OptimSection`, ct-seg's defaults).

    ``lr`` is the decoder's peak learning rate; encoder blocks get ``lr * layer_decay ** (depth + 1 - layer)``.
    ``batch_size`` counts volumes per rank and step (each gives ``data.samples_per_volume`` crops); ``seed`` seeds
    weights, sampling and augmentation; ``eval_every`` is the validation interval.
    """

    steps: int | None = 25000
    batch_size: int = 1
    lr: float | None = 1e-4
    weight_decay: float = 1e-5
    layer_decay: float | None = 0.75
    warmup_fraction: float = 0.02
    grad_clip: float | None = 1.0
    workers: int = 2
    log_every: int = 50
    eval_every: int = 1000


@dataclass(frozen=True, kw_only=True)
class CTSegConfig:
    """Everything ``medvit ct-seg train`` needs (written resolved into ``RUN/config.yaml``).

    Attributes:
        preset: name of the preset the config started from (informational).
        model: network and initial weights.
        data: preprocessing, sampling, folds.
        infer: sliding-window inference used for validation (and the default of ``predict``).
        optim: optimisation.
    """

    preset: str = "base"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    infer: InferCfg = field(default_factory=InferCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)


def preset_path(name: str) -> Path:
    """YAML file of a named preset.

    Raises:
        ConfigError: unknown preset.
    """
    from medvit.shared.config import preset_file

    return preset_file(Path(__file__).with_name("presets"), name, PRESETS, "ct-seg")


def load_ct_seg_config(
    preset: str | None = "base",
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    base: dict[str, Any] | None = None,
    **options: Any,
) -> CTSegConfig:
    """Resolve the training config: defaults < preset (or ``base``) < ``config_file`` < ``overrides`` < ``options``.

    Through :func:`medvit.shared.config.load_config`: an error names the layer (preset, file, ``--set``, option)
    that set the bad key.

    Args:
        preset: preset name (see :data:`PRESETS`); None with ``base``.
        config_file: user YAML, applied over the preset.
        overrides: ``--set`` items (``optim.lr=3e-4``).
        base: a stored config (``RUN/config.yaml`` on ``--resume``) used instead of the preset.
        **options: first-class CLI options as dotted keys (None = not given).

    Returns:
        The validated config.

    Raises:
        ConfigError: unknown preset, key or value.
    """
    from medvit.shared.config import load_config, preset_layer

    if base is not None and preset is None:
        layer = dict(base)
    else:
        name = preset or "base"
        layer = preset_layer(preset_path(name), name)
    return load_config(CTSegConfig, config_file, list(overrides), preset=layer, **options)


def load_train_config(
    run: str | Path,
    *,
    resume: bool = False,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    **options: Any,
) -> CTSegConfig:
    """The config of ``ct-seg train`` into ``run``: :func:`load_ct_seg_config`, except that a resumed run
    (``resume`` without ``preset`` or ``config_file``) starts from its stored ``RUN/config.yaml`` instead of the
    ``base`` preset, so that it keeps its settings; ``overrides`` and ``options`` still apply over it.

    Raises:
        ConfigError: unknown preset, key or value (naming the layer that set it), or an unreadable stored config.
    """
    from medvit.shared.config import resumed_run_config

    base = resumed_run_config(run, resume=resume, preset=preset, config_file=config_file)
    return load_ct_seg_config(preset, config_file, overrides, base=base, **options)
