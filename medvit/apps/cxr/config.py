"""Configuration of ``medvit cxr train``: the classification core's config plus the chest X-ray data options.

:class:`CxrConfig` extends :class:`~medvit.shared.classify.config.ClassifyConfig` (model, mix, augment, loss, data,
optim, infer: the fine-tuning recipe of the thorax Medical MAE, Xiao et al., WACV 2023) with ``dataset``, which
says how to read the labels (:mod:`medvit.apps.cxr.labels`). Presets in ``presets/*.yaml``:

=========  ========================================================================================================
preset     what
=========  ========================================================================================================
paper      the thorax fine-tuning recipe (lambert-x/medical_mae FINETUNE.md, ViT-S/16): 224 px, global average
           pooling, drop path 0.2, layer decay 0.55, AdamW blr 2.5e-4 (lr = blr x batch / 256), wd 0.05, 75 epochs
           with 5 of warmup then a half cosine to 1e-5, RandAugment m6, no mixing, X-ray mean/std 0.5056/0.252
tiny       CPU preset for tests and the demo: a 4-block 64-wide ViT/16 at 64 px, 300 steps, no augmentation
=========  ========================================================================================================

Precedence: dataclass defaults < preset < ``--config file.yaml`` < ``--set a.b=c`` < first-class options; a resumed
run starts from its stored ``RUN/config.yaml`` instead of the preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvit.shared.classify.config import ClassifyConfig
from medvit.shared.paths import runs_dir

__all__ = ["PRESETS", "CxrConfig", "CxrDatasetCfg", "default_run_dir", "load_cxr_config", "load_train_config"]

PRESETS: tuple[str, ...] = ("paper", "tiny")
MODALITY = "cxr"


@dataclass(frozen=True, kw_only=True)
class CxrDatasetCfg:
    """How the training labels are read (:func:`medvit.apps.cxr.labels.read_cxr_dataset`).

    Attributes:
        format: ``auto`` (recognised from the folder or the CSV header), ``chestxray14``, ``chexpert``, ``mimic`` or
            ``csv`` (path + one 0/1 column per finding).
        split: the release split to train on (ChestX-ray14 ``train`` = train_val_list; CheXpert ``train``; MIMIC
            ``train``); null = that default.
        val: a separate validation set (folder or CSV, read the same way); null = hold out ``data.val_fraction``
            of the training samples by patient.
        val_split: the release split of ``val`` (e.g. ``valid`` for CheXpert's radiologist-labelled set, ``validate``
            for MIMIC); ``val`` defaults to the training folder when only this is set.
        findings: findings to train on, in order; empty = the release's set (ChestX-ray14: 14; CheXpert and MIMIC:
            the five competition findings; CSV: every label column); ``[all]`` = every finding in the table.
        uncertain: CheXpert / MIMIC uncertain (-1) labels: ``reference`` (U-Ones for Atelectasis and Edema,
            U-Zeros for the others, as medical_mae), ``ones``, ``zeros`` or ``ignore`` (excluded from loss and
            metrics).
        frontal_only: keep frontal views only (CheXpert, MIMIC).
    """

    format: Literal["auto", "chestxray14", "chexpert", "mimic", "csv"] = "auto"
    split: str | None = None
    val: Path | None = None
    val_split: str | None = None
    findings: tuple[str, ...] = ()
    uncertain: Literal["reference", "ones", "zeros", "ignore"] = "reference"
    frontal_only: bool = True


@dataclass(frozen=True, kw_only=True)
class CxrConfig(ClassifyConfig):
    """Everything ``medvit cxr train`` needs (written resolved into ``RUN/config.yaml``).

    Attributes:
        preset: the preset the config started from (informational).
        dataset: how the labels are read.
    """

    preset: str = "paper"
    dataset: CxrDatasetCfg = field(default_factory=CxrDatasetCfg)


def default_run_dir() -> Path:
    """Run directory of ``cxr train`` without ``--out``: ``$MEDVIT_RUNS/cxr`` (``./runs/cxr`` when unset)."""
    return runs_dir() / "cxr"


def preset_path(name: str) -> Path:
    """YAML file of a named preset.

    Raises:
        ConfigError: unknown preset.
    """
    from medvit.shared.config import preset_file

    return preset_file(Path(__file__).with_name("presets"), name, PRESETS, "cxr")


def load_cxr_config(
    preset: str | None = "paper",
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    *,
    base: dict[str, Any] | None = None,
    **options: Any,
) -> CxrConfig:
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
    return load_config(CxrConfig, config_file, list(overrides), preset=layer, **options)


def load_train_config(
    run: str | Path,
    *,
    resume: bool = False,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    **options: Any,
) -> CxrConfig:
    """The config of ``cxr train`` into ``run``: a resumed run (``resume`` without ``preset`` or ``config_file``)
    starts from its stored ``RUN/config.yaml``; ``overrides`` and ``options`` still apply over it.

    Raises:
        ConfigError: unknown preset, key or value, or an unreadable stored config.
    """
    from medvit.shared.config import resumed_run_config

    base = resumed_run_config(run, resume=resume, preset=preset, config_file=config_file)
    return load_cxr_config(preset, config_file, overrides, base=base, **options)
