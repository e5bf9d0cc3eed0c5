"""Configuration of ``medvit cell``: frozen dataclasses (the source of truth) and the YAML presets.

Presets live in ``presets/*.yaml`` beside this module:

=======  ====================================================================================================
preset   what
=======  ====================================================================================================
paper    CellVTA as published (Wang et al., arXiv 2504.00784): ViT-L/16 backbone (UNI's geometry; load UNI or any
         timm ViT-L/16 with ``--weights``) frozen for the whole run, the adapter (SPM inplanes 64, 4 interaction
         blocks, 8 deformable heads x 4 points, value ratio 0.5, ConvFFN 0.25, drop path 0.4), the full decoder,
         AdamW lr 3e-4 betas (0.85, 0.95) wd 1e-4, ExponentialLR with gamma 0.95 per epoch (the gamma the
         authors' code actually ran), 100 epochs of batch 8, cell+tissue sampling (gamma 0.85), best checkpoint
         by validation bPQ
base     the same recipe on ViT-B/16 (768 wide): fits a 24 GB GPU at batch 8
small    ViT-S/16 (384 wide) with the decoder at half width: a 12 GB GPU
tiny     CPU preset for tests and the demo: a 4-block, 96-wide ViT/16, decoder at 1/8 width, 64 px tiles
=======  ====================================================================================================

Precedence: dataclass defaults < preset < ``--config file.yaml`` < ``--set a.b=c`` < first-class options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvit.shared.engine.section import OptimSection

__all__ = [
    "PRESETS",
    "CellConfig",
    "DataCfg",
    "InferCfg",
    "LossCfg",
    "ModelCfg",
    "OptimCfg",
    "load_cell_config",
    "load_train_config",
    "preset_path",
]

PRESETS: tuple[str, ...] = ("paper", "base", "small", "tiny")
TISSUE_HEADS: tuple[str, ...] = ("pooled", "cls", "official")


@dataclass(frozen=True, kw_only=True)
class ModelCfg:
    """The CellVTA network: a registered 2D ViT/16, the adapter, the HoVer-style decoder.

    Attributes:
        backbone: registered 2D backbone with 16 px patches (``vit_large_patch16_224`` = UNI's geometry).
        backbone_overrides: architecture kwargs replacing the registry's (e.g. ``{init_values: 1e-5}`` for UNI).
        weights: starting weights: a timm / DINOv2-style ViT checkpoint (UNI's ``pytorch_model.bin``), a medvit
            backbone export, a CellVTA checkpoint (the whole model), or the ``model.safetensors`` of an earlier
            ``cell train`` run (the whole model).
        freeze_backbone: keep the ViT's patch embedding, tokens, position table and blocks frozen (as published).
        unfreeze_at: epoch (0-based) from which a frozen backbone trains too (null: never, as published).
        conv_inplane: channels of the spatial prior module's first convolutions.
        n_points: sampling points per head and level of the deformable attention.
        deform_num_heads: heads of the deformable attention.
        deform_ratio: value width / embedding width in the deformable attention.
        cffn_ratio: hidden width / embedding width of the extractors' ConvFFN.
        init_values: initial injector gamma.
        n_segments: interaction blocks, each around an equal segment of the ViT blocks.
        extra_extractors: two more extractors after the last interaction block.
        drop_path_rate: stochastic depth of the ViT blocks and the extractors.
        decoder_width: factor on every decoder channel count (1.0 = the paper's decoder).
        tissue_head: ``pooled`` (ours: LayerNorm of the mean final patch token, sees the image), ``cls`` (the class
            token runs through the blocks) or ``official`` (the published head, which never sees the image).
    """

    backbone: str = "vit_base_patch16_224"
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    freeze_backbone: bool = True
    unfreeze_at: int | None = None
    conv_inplane: int = 64
    n_points: int = 4
    deform_num_heads: int = 8
    deform_ratio: float = 0.5
    cffn_ratio: float = 0.25
    init_values: float = 1e-5
    n_segments: int = 4
    extra_extractors: bool = True
    drop_path_rate: float = 0.4
    decoder_width: float = 1.0
    tissue_head: Literal["pooled", "cls", "official"] = "pooled"

    def __post_init__(self) -> None:
        from medvit.shared.schema import SchemaError, check_arch_kwargs

        try:
            check_arch_kwargs(self.backbone_overrides, partial=True)
        except SchemaError as err:
            raise ValueError(f"model.backbone_overrides: {err}") from None
        if self.tissue_head not in TISSUE_HEADS:
            raise ValueError(f"model.tissue_head must be one of {', '.join(TISSUE_HEADS)}, got {self.tissue_head!r}")
        for key in ("conv_inplane", "n_points", "deform_num_heads", "n_segments"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 < self.decoder_width <= 4.0:
            raise ValueError(f"model.decoder_width must be in (0, 4], got {self.decoder_width}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.unfreeze_at is not None and self.unfreeze_at < 0:
            raise ValueError(f"model.unfreeze_at must be an epoch >= 0 or null, got {self.unfreeze_at}")

    def adapter_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~medvit.apps.cell_seg.model.CellVTA` besides backbone and classes."""
        keys = (
            "conv_inplane",
            "n_points",
            "deform_num_heads",
            "deform_ratio",
            "cffn_ratio",
            "init_values",
            "n_segments",
            "extra_extractors",
            "drop_path_rate",
            "decoder_width",
            "tissue_head",
        )
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True, kw_only=True)
class DataCfg:
    """Which tiles train and validate, sampling and augmentation.

    Attributes:
        split: PanNuke split 1, 2 or 3 (the folds of ``dataset.json`` ``splits``); ignored when ``train_folds`` is set.
        train_folds: folds to train on (overrides ``split``).
        val_folds: folds to validate on (with ``train_folds``; empty: no validation).
        sampling: ``cell+tissue`` (CellViT's weighted sampler) or ``random``.
        sampling_gamma: mixing factor of the weighted sampler (0: uniform, 1: fully inverse-frequency).
        augment: the published augmentations (flips, rotations, blur, noise, colour jitter, superpixels, zoom
            blur, sized crops, elastic).
        val_max_tiles: validate on at most this many tiles (null: all).
    """

    split: int = 1
    train_folds: tuple[str, ...] | None = None
    val_folds: tuple[str, ...] = ()
    sampling: Literal["cell+tissue", "random"] = "cell+tissue"
    sampling_gamma: float = 0.85
    augment: bool = True
    val_max_tiles: int | None = None

    def __post_init__(self) -> None:
        if self.split not in (1, 2, 3):
            raise ValueError(f"data.split must be 1, 2 or 3, got {self.split}")
        if self.sampling not in ("cell+tissue", "random"):
            raise ValueError(f"data.sampling must be cell+tissue or random, got {self.sampling!r}")
        if not 0.0 <= self.sampling_gamma <= 1.0:
            raise ValueError(f"data.sampling_gamma must be in [0, 1], got {self.sampling_gamma}")
        if self.val_max_tiles is not None and self.val_max_tiles < 1:
            raise ValueError(f"data.val_max_tiles must be >= 1 or null, got {self.val_max_tiles}")


@dataclass(frozen=True, kw_only=True)
class LossCfg:
    """Loss weights (CellViT/CellVTA's) and the documented fixes of the official loss code.

    Attributes:
        np_ft: nuclei-binary focal-Tversky.
        np_dice: nuclei-binary Dice.
        hv_mse: horizontal/vertical map MSE.
        hv_msge: horizontal/vertical map gradient MSE (inside nuclei).
        nt_ce: nuclei-type cross-entropy.
        nt_dice: nuclei-type Dice.
        nt_ft: nuclei-type multi-class focal-Tversky.
        tissue_ce: tissue-type cross-entropy (dropped when the dataset has one tissue, e.g. CoNIC).
        msge_orientation: ``hovernet`` (the x-map differentiated along x) or ``cellvit`` (the official PyTorch
            code's transposed kernel, for parity runs).
    """

    np_ft: float = 1.0
    np_dice: float = 1.0
    hv_mse: float = 2.5
    hv_msge: float = 8.0
    nt_ce: float = 0.5
    nt_dice: float = 0.2
    nt_ft: float = 0.5
    tissue_ce: float = 0.1
    msge_orientation: Literal["hovernet", "cellvit"] = "hovernet"

    def __post_init__(self) -> None:
        for key in ("np_ft", "np_dice", "hv_mse", "hv_msge", "nt_ce", "nt_dice", "nt_ft", "tissue_ce"):
            if getattr(self, key) < 0:
                raise ValueError(f"loss.{key} must be >= 0, got {getattr(self, key)}")
        if self.msge_orientation not in ("hovernet", "cellvit"):
            raise ValueError(f"loss.msge_orientation must be hovernet or cellvit, got {self.msge_orientation!r}")

    def weights(self) -> dict[str, float]:
        """The weight of every loss term by name (the names ``CellLoss`` logs)."""
        keys = ("np_ft", "np_dice", "hv_mse", "hv_msge", "nt_ce", "nt_dice", "nt_ft", "tissue_ce")
        return {k: float(getattr(self, k)) for k in keys}


@dataclass(frozen=True, kw_only=True)
class InferCfg:
    """Tiled inference (validation and the default of ``cell predict``).

    Attributes:
        tile: tile size in pixels at the working magnification (a multiple of 16).
        overlap: pixels shared by neighbouring tiles (cells cut by a border are taken from the neighbour).
        batch_size: tiles per forward pass.
        target_mag: working magnification, 40 (0.25 um/px) or 20 (0.5 um/px); null: the training data's.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        max_label_pixels: write the instance map (``NAME.labels.npz``) for images up to this many pixels.
    """

    tile: int = 256
    overlap: int = 64
    batch_size: int = 8
    target_mag: Literal[20, 40] | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    max_label_pixels: int = 8192 * 8192

    def __post_init__(self) -> None:
        if self.tile < 32 or self.tile % 16:
            raise ValueError(f"infer.tile must be a multiple of 16 and >= 32, got {self.tile}")
        if not 0 <= self.overlap < self.tile // 2:
            raise ValueError(f"infer.overlap must be in [0, tile/2), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"infer.batch_size must be >= 1, got {self.batch_size}")
        if self.target_mag not in (None, 20, 40):
            raise ValueError(f"infer.target_mag must be 20, 40 or null, got {self.target_mag}")


@dataclass(frozen=True, kw_only=True)
class OptimCfg(OptimSection):
    """Optimisation (the shared :class:`~medvit.shared.engine.section.OptimSection`, CellVTA's recipe).

    AdamW lr 3e-4, betas (0.85, 0.95), weight decay 1e-4; ``ExponentialLR`` per epoch with gamma 0.95: the
    authors' config file says 0.85, but their trainer reads another key and ran 0.95 (lr 3e-4 -> ~1.9e-6 after 100
    epochs). ``eval_every`` is the validation interval in steps (0: once per epoch).
    """

    epochs: int | None = 100
    batch_size: int = 8
    lr: float | None = 3e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.85, 0.95)
    schedule: Literal["cosine", "linear", "constant", "exponential"] = "exponential"
    lr_gamma: float = 0.95
    workers: int = 4
    log_every: int = 50
    seed: int = 19


@dataclass(frozen=True, kw_only=True)
class CellConfig:
    """Everything ``medvit cell train`` needs (written resolved into ``RUN/config.yaml``).

    Attributes:
        preset: name of the preset the config started from (informational).
        model: network and initial weights.
        data: folds, sampling, augmentation.
        loss: loss weights and fixes.
        infer: tiled inference of validation and ``predict``.
        optim: optimisation.
    """

    preset: str = "base"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    infer: InferCfg = field(default_factory=InferCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)


def preset_path(name: str) -> Path:
    """YAML file of a named preset.

    Raises:
        ConfigError: unknown preset.
    """
    from medvit.shared.config import preset_file

    return preset_file(Path(__file__).with_name("presets"), name, PRESETS, "cell")


def load_cell_config(
    preset: str | None = "base",
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    base: dict[str, Any] | None = None,
    **options: Any,
) -> CellConfig:
    """Resolve the training config: defaults < preset (or ``base``) < ``config_file`` < ``overrides`` < ``options``.

    Args:
        preset: preset name (see :data:`PRESETS`); None with ``base``.
        config_file: user YAML, applied over the preset.
        overrides: ``--set`` items (``optim.lr=3e-4``).
        base: a stored config (``RUN/config.yaml`` on ``--resume``) used instead of the preset.
        **options: first-class CLI options as dotted keys (None = not given).

    Returns:
        The validated config.

    Raises:
        ConfigError: unknown preset, key or value (naming the layer that set it).
    """
    from medvit.shared.config import load_config, preset_layer

    if base is not None and preset is None:
        layer = dict(base)
    else:
        name = preset or "base"
        layer = preset_layer(preset_path(name), name)
    return load_config(CellConfig, config_file, list(overrides), preset=layer, **options)


def load_train_config(
    run: str | Path,
    *,
    resume: bool = False,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    **options: Any,
) -> CellConfig:
    """The config of ``cell train`` into ``run``: a resumed run (``resume`` without ``preset`` or ``config_file``)
    starts from its stored ``RUN/config.yaml``; ``overrides`` and ``options`` still apply over it.

    Raises:
        ConfigError: unknown preset, key or value, or an unreadable stored config.
    """
    from medvit.shared.config import resumed_run_config

    base = resumed_run_config(run, resume=resume, preset=preset, config_file=config_file)
    return load_cell_config(preset, config_file, overrides, base=base, **options)
