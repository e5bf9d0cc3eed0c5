"""Configuration of ``medvit deepfake train``: frozen dataclasses (the source of truth) and the YAML presets.

Presets live in ``presets/*.yaml`` beside this module:

==========  ==========================================================================================
preset      what
==========  ==========================================================================================
paper-like  ViT-B/16 global stream on the 224 px face, four ViT-B/16 part streams (shared weights) on
            112 px regions; start from timm/ImageNet ViT-B/16 weights with ``model.weights``
small       ViT-S/16 streams on a 128 px face and 64 px regions (one 12 GB GPU or a patient CPU)
tiny        CPU preset for tests and the demo: 64-wide 2-block ViTs on a 64 px face and 32 px regions
==========  ==========================================================================================

Precedence: dataclass defaults < preset < ``--config file.yaml`` < ``--set a.b=c`` < first-class options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvit.shared.engine.section import OptimSection
from medvit.shared.paths import runs_dir

__all__ = [
    "FFPP_METHODS",
    "LEVELS",
    "PRESETS",
    "REGIONS",
    "DataCfg",
    "DeepfakeConfig",
    "LossCfg",
    "ModelCfg",
    "OptimCfg",
    "default_run_dir",
    "load_deepfake_config",
    "parse_methods",
]

PRESETS: tuple[str, ...] = ("paper-like", "small", "tiny")
LEVELS: tuple[str, ...] = ("raw", "c23", "c40")
"""Compression levels of FaceForensics++ (quality-block classes, in this order)."""
REGIONS: tuple[str, ...] = ("eyes", "nose", "mouth", "contour")
"""Face regions a part stream can see (defined from the five landmarks in :mod:`medvit.apps.deepfake.model`)."""
FFPP_METHODS: tuple[str, ...] = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
"""Manipulation methods of FaceForensics++ (``manipulated_sequences/<method>``)."""


def parse_methods(text: str) -> tuple[str, ...] | None:
    """``data.method``: ``all`` -> None (every method found), else the comma-separated method names."""
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise ValueError("data.method is empty; give a method name (Face2Face), several (a,b) or all")
    return None if names == ("all",) else names


@dataclass(frozen=True, kw_only=True)
class ModelCfg:
    """The GGViT-style network (:class:`~medvit.apps.deepfake.model.GGViTStyle`).

    Attributes:
        backbone: registered backbone of the global stream (``vit_base_patch16_224``, ...).
        backbone_overrides: its architecture kwargs replacing the registry's (``img_size`` is set from
            ``global_size``).
        stream_backbone: registered backbone of the part streams (null: the same as ``backbone``).
        stream_overrides: their architecture kwargs (``img_size`` is set from ``region_size``).
        global_size: side the whole face crop is resized to for the global stream.
        region_size: side of each region crop fed to a part stream.
        regions: face regions, one part stream each (any of ``eyes``, ``nose``, ``mouth``, ``contour``).
        shared_streams: the part streams share one ViT (true) or each has its own.
        guide: where the global embedding g is added: ``tokens`` (to every token of a part stream before its
            blocks; default), ``pooled`` (to the stream's pooled output) or ``none`` (ablation: no guidance).
        quality_hidden: hidden width of the quality block.
        weights: optional starting weights for every ViT of the network (timm/ImageNet, MAE, a medvit backbone
            export or a FIQA face ViT export), or an earlier ``deepfake train`` model file.
    """

    backbone: str = "vit_base_patch16_224"
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    stream_backbone: str | None = None
    stream_overrides: dict[str, Any] = field(default_factory=dict)
    global_size: int = 224
    region_size: int = 112
    regions: tuple[str, ...] = REGIONS
    shared_streams: bool = True
    guide: Literal["tokens", "pooled", "none"] = "tokens"
    quality_hidden: int = 128
    weights: Path | None = None

    def __post_init__(self) -> None:
        if not self.regions:
            raise ValueError("model.regions is empty; give at least one of " + ", ".join(REGIONS))
        bad = [r for r in self.regions if r not in REGIONS]
        if bad or len(set(self.regions)) != len(self.regions):
            raise ValueError(f"model.regions must be distinct names among {', '.join(REGIONS)}, got {self.regions}")
        for key in ("global_size", "region_size", "quality_hidden"):
            if not 8 <= getattr(self, key) <= 1024:
                raise ValueError(f"model.{key} must be in [8, 1024], got {getattr(self, key)}")


@dataclass(frozen=True, kw_only=True)
class LossCfg:
    """The objective (ours: the paper names a compression-aware loss without giving it).

    Attributes:
        level_weights: weight of a frame's classification loss by compression level (raw, c23, c40); frames of
            unknown level use the quality block's predicted mixture of these weights.
        stream_weight: weight of the per-stream classification losses (each stream's own logit).
        quality_weight: weight of the quality block's cross-entropy on the compression level.
    """

    level_weights: tuple[float, float, float] = (1.0, 1.25, 1.5)
    stream_weight: float = 0.5
    quality_weight: float = 0.2

    def __post_init__(self) -> None:
        if any(not 0.0 <= w <= 100.0 for w in self.level_weights):
            raise ValueError(f"loss.level_weights must lie in [0, 100], got {self.level_weights}")
        for key in ("stream_weight", "quality_weight"):
            if not 0.0 <= getattr(self, key) <= 100.0:
                raise ValueError(f"loss.{key} must be in [0, 100], got {getattr(self, key)}")


@dataclass(frozen=True, kw_only=True)
class DataCfg:
    """Training data and augmentation.

    Attributes:
        method: fake frames from this FF++ method (``Face2Face``), several (``Face2Face,NeuralTextures``) or
            ``all``; real frames always come from ``original_sequences``.
        levels: compression levels trained on (``raw``, ``c23``, ``c40``; plain real/fake folders: ``unknown``).
        val_levels: levels of the validation frames (null: ``levels``).
        balance: class-balanced sampling (the smaller class is drawn again until both are equal per epoch).
        recompress_p: probability of a JPEG re-compression of a training frame.
        jpeg_quality: JPEG quality range drawn for it (DeepfakeBench: 40-100).
        video_like_p: probability that the re-compression is H.264-like instead (downscale x2, JPEG, upscale:
            block and blur artefacts of a low bit rate).
        flip_p: horizontal flip probability (landmarks mirrored with it).
        max_val_frames: validation frames evaluated at most (evenly over the videos; 0: all).
    """

    method: str = "Face2Face"
    levels: tuple[str, ...] = ("c23",)
    val_levels: tuple[str, ...] | None = None
    balance: bool = True
    recompress_p: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 100)
    video_like_p: float = 0.25
    flip_p: float = 0.5
    max_val_frames: int = 4000

    def __post_init__(self) -> None:
        parse_methods(self.method)
        for key in ("levels", "val_levels"):
            value = getattr(self, key)
            if value is None:
                continue
            bad = [lv for lv in value if lv not in (*LEVELS, "unknown")]
            if bad or not value:
                raise ValueError(f"data.{key} must be levels among raw, c23, c40, unknown; got {value}")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"data.jpeg_quality must be 1 <= low <= high <= 100, got {self.jpeg_quality}")
        for key in ("recompress_p", "video_like_p", "flip_p"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"data.{key} must be a probability, got {getattr(self, key)}")


@dataclass(frozen=True, kw_only=True)
class OptimCfg(OptimSection):
    """Optimisation (the shared :class:`~medvit.shared.engine.section.OptimSection`).

    Defaults follow DeepfakeBench's detector configs (Adam lr 2e-4, batch 32, 10 epochs, model selection by AUC);
    weight decay is AdamW's 0.05 on weights only (ours). ``eval_every`` 0 validates once per epoch.
    """

    epochs: int | None = 10
    batch_size: int = 32
    lr: float | None = 2e-4
    warmup_fraction: float = 0.05
    schedule: Literal["cosine", "linear", "constant", "exponential"] = "cosine"
    grad_clip: float | None = 5.0
    workers: int = 2
    seed: int = 1024
    log_every: int = 20
    ckpt_every: int = 1000


@dataclass(frozen=True, kw_only=True)
class DeepfakeConfig:
    """Everything ``medvit deepfake train`` needs (written resolved into ``RUN/config.yaml``).

    Attributes:
        preset: name of the preset the config started from (informational).
        model: network.
        loss: objective.
        data: training frames and augmentation.
        optim: optimisation.
    """

    preset: str = "paper-like"
    model: ModelCfg = field(default_factory=ModelCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)


def default_run_dir() -> Path:
    """Run directory of ``deepfake train`` without ``--out``: ``$MEDVIT_RUNS/deepfake``."""
    return runs_dir() / "deepfake"


def preset_path(name: str) -> Path:
    """YAML file of a named preset.

    Raises:
        ConfigError: unknown preset.
    """
    from medvit.shared.config import preset_file

    return preset_file(Path(__file__).with_name("presets"), name, PRESETS, "deepfake")


def load_deepfake_config(
    preset: str = "paper-like",
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    **options: Any,
) -> DeepfakeConfig:
    """Resolve the training config: defaults < preset < ``config_file`` < ``overrides`` < ``options``.

    Args:
        preset: preset name (see :data:`PRESETS`).
        config_file: user YAML, applied over the preset.
        overrides: ``--set`` items (``optim.lr=3e-4``).
        **options: first-class CLI options as dotted keys (None = not given).

    Returns:
        The validated config.

    Raises:
        ConfigError: unknown preset, key or value (naming the layer that set it).
    """
    from medvit.shared.config import load_config, preset_layer

    layer = preset_layer(preset_path(preset), preset)
    return load_config(DeepfakeConfig, config_file, list(overrides), preset=layer, **options)
