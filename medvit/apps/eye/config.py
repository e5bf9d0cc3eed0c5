"""Configuration of ``medvit eye train``: the classification core's config plus the ophthalmic data options.

:class:`EyeConfig` extends :class:`~medvit.shared.classify.config.ClassifyConfig` (model, mix, augment, loss, data,
optim, infer) with ``dataset``, which says how to read the labels (:mod:`medvit.apps.eye.labels`). Uni4Eye (Cai et
al., MICCAI 2022) fine-tunes its encoder with a linear head but its fine-tuning code is not released, so the
``paper`` presets apply the thorax Medical MAE recipe (Xiao et al., WACV 2023) to eye images. Presets in
``presets/*.yaml``:

==========  =======================================================================================================
preset      what
==========  =======================================================================================================
paper       2D (fundus photographs, OCT B-scans): the thorax recipe - ViT-S/16 at 224 px, average pooling, drop path
            0.2, layer decay 0.55, AdamW blr 2.5e-4, wd 0.05, 75 epochs (5 warmup), RandAugment m6, ImageNet mean/std
paper-3d    OCT volumes: the same recipe on a 3D ViT-S/16 (cubic patches, as Uni4Eye's unified patch embedding) at
            112 x 112 x 112 voxels, flips and intensity jitter instead of RandAugment
tiny        CPU preset for tests and the demo (2D): a 4-block 64-wide ViT at 64 px, a few hundred steps
tiny-3d     CPU preset for OCT volumes: the same at 32^3 voxels
==========  =======================================================================================================

Precedence: dataclass defaults < preset < ``--config file.yaml`` < ``--set a.b=c`` < first-class options; a resumed
run starts from its stored ``RUN/config.yaml`` instead of the preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvit.shared.classify.config import ClassifyConfig
from medvit.shared.paths import runs_dir

__all__ = ["PRESETS", "EyeConfig", "EyeDatasetCfg", "default_run_dir", "load_eye_config", "load_train_config"]

PRESETS: tuple[str, ...] = ("paper", "paper-3d", "tiny", "tiny-3d")


@dataclass(frozen=True, kw_only=True)
class EyeDatasetCfg:
    """How the training labels are read (:func:`medvit.apps.eye.labels.read_eye_dataset`).

    Attributes:
        task: ``auto`` (integer labels: graded, 0/1 only: binary; names: binary when one reads as negative, else
            multi-class), ``graded`` (ordered grades, e.g. DR 0-4; kappa), ``multiclass`` or ``binary``.
        classes: class names in order; empty = inferred (graded: ``0..max``; set ``[0, 1, 2, 3, 4]`` to keep all
            five DR grades when the training set lacks one).
        positive: binary tasks: the positive class name (default: the one not named like a negative).
        split: ImageFolder trees split into ``train/`` / ``test/`` folders: the one to train on (default train).
        images: folder the CSV's paths are relative to (default: the CSV's folder).
        label_column: the CSV's label column (default: ``label``, ``class``, ``grade``, ``level``, ``diagnosis``...).
        modality: ``auto`` (volumes: OCT 3D; grayscale 2D scans: OCT 2D; colour: fundus), ``fundus`` or ``oct``.
            Fundus photographs are cropped to their field of view before resizing.
        val: a separate validation set (CSV or tree); null = hold out ``data.val_fraction`` by patient / eye.
        val_split: the split folder of ``val`` (``val``, ``test``); ``val`` defaults to the training tree.
    """

    task: Literal["auto", "graded", "multiclass", "binary"] = "auto"
    classes: tuple[str, ...] = ()
    positive: str | None = None
    split: str | None = None
    images: Path | None = None
    label_column: str | None = None
    modality: Literal["auto", "fundus", "oct"] = "auto"
    val: Path | None = None
    val_split: str | None = None


@dataclass(frozen=True, kw_only=True)
class EyeConfig(ClassifyConfig):
    """Everything ``medvit eye train`` needs (written resolved into ``RUN/config.yaml``).

    Attributes:
        preset: the preset the config started from (informational).
        dataset: how the labels are read.
    """

    preset: str = "paper"
    dataset: EyeDatasetCfg = field(default_factory=EyeDatasetCfg)


def default_run_dir() -> Path:
    """Run directory of ``eye train`` without ``--out``: ``$MEDVIT_RUNS/eye`` (``./runs/eye`` when unset)."""
    return runs_dir() / "eye"


def preset_path(name: str) -> Path:
    """YAML file of a named preset.

    Raises:
        ConfigError: unknown preset.
    """
    from medvit.shared.config import preset_file

    return preset_file(Path(__file__).with_name("presets"), name, PRESETS, "eye")


def load_eye_config(
    preset: str | None = "paper",
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    *,
    base: dict[str, Any] | None = None,
    **options: Any,
) -> EyeConfig:
    """Resolve the training config: defaults < preset (or ``base``) < ``config_file`` < ``overrides`` < ``options``.

    Args:
        preset: preset name (see :data:`PRESETS`); null = ``paper``.
        config_file: user YAML, applied over the preset.
        overrides: ``--set`` items (``optim.lr=3e-4``).
        base: a stored config mapping used instead of the preset (resume).
        **options: first-class CLI options as dotted keys (None = not given).

    Raises:
        ConfigError: unknown preset, key or value (naming the layer that set it).
    """
    from medvit.shared.config import load_config, preset_layer

    layer = base if base is not None else preset_layer(preset_path(preset or "paper"), preset or "paper")
    return load_config(EyeConfig, config_file, list(overrides), preset=layer, **options)


def load_train_config(
    run: str | Path,
    *,
    resume: bool = False,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    **options: Any,
) -> EyeConfig:
    """The config of ``eye train`` into ``run``: a resumed run (``resume`` without ``preset`` or ``config_file``)
    starts from its stored ``RUN/config.yaml``; ``overrides`` and ``options`` still apply over it.

    Raises:
        ConfigError: unknown preset, key or value, or an unreadable stored config.
    """
    from medvit.shared.config import resumed_run_config

    base = resumed_run_config(run, resume=resume, preset=preset, config_file=config_file)
    return load_eye_config(preset, config_file, overrides, base=base, **options)
