"""Configuration of ``medvit fiqa train``: frozen dataclasses (the source of truth) and the YAML presets.

Presets live in ``presets/*.yaml`` beside this module:

=========  ======================================================================================
preset     what
=========  ======================================================================================
default    the ViT-FIQA reference recipe (configs/ms1mv2_vit_s_qs.py): ViT-S face ViT (512 wide, 12
           blocks), CosFace s=64 m=0.4, alpha=10, AdamW lr 1e-3 wd 0.05, 20 epochs with 2 of warmup
           then linear decay, grad clip 5, batch 256 per rank, flip + photometric/geometric augmentation
base       the same with the 24-block encoder (``vit_b_qs``)
tiny       CPU preset for tests and the demo: 64-wide 2-block encoder, batch 32, a few hundred steps
=========  ======================================================================================

Precedence: dataclass defaults < preset < ``--config file.yaml`` < ``--set a.b=c`` < first-class options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvit.shared.engine.section import OptimSection
from medvit.shared.paths import runs_dir

__all__ = [
    "PRESETS",
    "DataCfg",
    "FiqaConfig",
    "LossCfg",
    "ModelCfg",
    "OptimCfg",
    "default_run_dir",
    "load_fiqa_config",
    "preset_path",
]

PRESETS: tuple[str, ...] = ("default", "base", "tiny")


@dataclass(frozen=True, kw_only=True)
class ModelCfg:
    """The ViT-FIQA network.

    Attributes:
        backbone: registered backbone (``vit_fiqa_small_patch9_112``, ``vit_fiqa_base_patch9_112``,
            ``test_vit_fiqa``).
        head: ``token`` (quality head on the quality token; the paper's model), ``full`` (embedding head over
            all 145 tokens, quality from the embedding) or ``crfiqa`` (no quality token: CR-FIQA on a ViT).
        mask_ratio: fraction of patch tokens dropped in training (arcface_torch's token masking); the quality
            token is never dropped.
        drop_path_rate: stochastic depth of the last block (linear schedule).
        init: optional weights to start from: our FIQA ``.safetensors``, an official ViT-FIQA checkpoint or an
            insightface arcface_torch ViT (the quality head then starts fresh).
    """

    backbone: str = "vit_fiqa_small_patch9_112"
    head: Literal["token", "full", "crfiqa"] = "token"
    mask_ratio: float = 0.1
    drop_path_rate: float = 0.1
    init: Path | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"model.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


@dataclass(frozen=True, kw_only=True)
class LossCfg:
    """Margin softmax + certainty-ratio regression.

    Attributes:
        margin: ``cosface`` (ViT-FIQA: ``margin_list=(1.0, 0.0, 0.4)``) or ``arcface`` (CR-FIQA: m=0.5).
        scale: s of the margin softmax.
        cosface_m: additive cosine margin m3.
        arcface_m: additive angular margin m2.
        alpha: weight of the quality loss.
        beta: SmoothL1 beta.
        cr_eps: epsilon of CR = CCS / (NNCCS + 1 + eps).
        centres: class centres under ``torchrun``: ``replicated`` (every rank holds all; plain DDP; resumable),
            ``sharded`` (Partial FC: each rank holds ``1/world`` of them; multi-rank resume is refused) or
            ``auto`` (sharded above 2**28 centre floats, about 512k identities at D=512).
    """

    margin: Literal["cosface", "arcface"] = "cosface"
    scale: float = 64.0
    cosface_m: float = 0.4
    arcface_m: float = 0.5
    alpha: float = 10.0
    beta: float = 0.5
    cr_eps: float = 1e-9
    centres: Literal["auto", "replicated", "sharded"] = "auto"


@dataclass(frozen=True, kw_only=True)
class DataCfg:
    """Training data.

    Attributes:
        augment: ``full`` (flip + with probability ``augment_p`` the photometric/geometric family), ``flip``
            or ``none``.
        augment_p: probability of the heavy augmentation branch (reference: 0.6).
        align: ``auto``: images that are not 112x112 are detected and aligned on the fly; ``never``: they are
            an error.
        models: insightface model folder for on-the-fly alignment (default ``$INSIGHTFACE_HOME``).
        min_images: identities with fewer images are dropped (identity folders only).
    """

    augment: Literal["full", "flip", "none"] = "full"
    augment_p: float = 0.6
    align: Literal["auto", "never"] = "auto"
    models: Path | None = None
    min_images: int = 1


@dataclass(frozen=True, kw_only=True)
class OptimCfg(OptimSection):
    """Optimisation (the shared :class:`~medvit.shared.engine.section.OptimSection`, ViT-FIQA's recipe).

    Reference recipe: AdamW 1e-3, wd 0.05, 20 epochs with 2 of warmup then a linear decay (``PolynomialLRWarmup``
    with power 1), gradient clip 5, seed 2048; ``eval_every`` is the verification interval.
    """

    epochs: int | None = 20
    batch_size: int = 256
    lr: float | None = 1e-3
    warmup_fraction: float = 0.1
    schedule: Literal["cosine", "linear", "constant"] = "linear"
    grad_clip: float | None = 5.0
    workers: int = 2
    seed: int = 2048
    log_every: int = 50
    ckpt_every: int = 2000
    eval_every: int = 2000


@dataclass(frozen=True, kw_only=True)
class FiqaConfig:
    """Everything ``medvit fiqa train`` needs (written resolved into ``RUN/config.yaml``).

    Attributes:
        preset: name of the preset the config started from (informational).
        model: network.
        loss: objective.
        data: data and augmentation.
        optim: optimisation.
        val_pairs: pair lists for periodic verification accuracy (``pairs.txt``, ``pair_list.txt`` or
            insightface ``.bin``).
    """

    preset: str = "default"
    model: ModelCfg = field(default_factory=ModelCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    val_pairs: tuple[Path, ...] = ()


def default_run_dir() -> Path:
    """Run directory of ``fiqa train`` without ``--out``: ``$MEDVIT_RUNS/fiqa`` (``./runs/fiqa`` when unset)."""
    return runs_dir() / "fiqa"


def preset_path(name: str) -> Path:
    """YAML file of a named preset.

    Raises:
        ConfigError: unknown preset.
    """
    from medvit.shared.config import preset_file

    return preset_file(Path(__file__).with_name("presets"), name, PRESETS, "fiqa")


def load_fiqa_config(
    preset: str = "default",
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    **options: Any,
) -> FiqaConfig:
    """Resolve the training config: defaults < preset < ``config_file`` < ``overrides`` < ``options``.

    Through :func:`medvit.shared.config.load_config`: an error names the layer (preset, file, ``--set``, option)
    that set the bad key.

    Args:
        preset: preset name (see :data:`PRESETS`).
        config_file: user YAML, applied over the preset.
        overrides: ``--set`` items (``optim.lr=3e-4``).
        **options: first-class CLI options as dotted keys (None = not given).

    Returns:
        The validated config.

    Raises:
        ConfigError: unknown preset, key or value.
    """
    from medvit.shared.config import load_config, preset_layer

    layer = preset_layer(preset_path(preset), preset)
    return load_config(FiqaConfig, config_file, list(overrides), preset=layer, **options)
