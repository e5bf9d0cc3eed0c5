"""``medvit eye train``: read the labels, pick the input modality, hold out a validation set, fine-tune on the core.

The work is the classification core's (:func:`medvit.shared.classify.train.train_classifier`); this module reads
the dataset (:mod:`medvit.apps.eye.labels`), tells the core how to read the inputs (colour fundus photographs
cropped to their field of view, 2D scans, or OCT volumes: :func:`~medvit.apps.eye.labels.detect_modality`) and
decides the validation set: ``dataset.val`` / ``dataset.val_split`` when given (read with the training classes),
else ``data.val_fraction`` held out by patient / eye where the data names them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvit.apps.eye.config import EyeConfig
from medvit.apps.eye.labels import detect_modality, read_eye_dataset
from medvit.shared.classify.labels import LabelSpace, Sample, group_split
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "split_samples", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: The run directory (``model.safetensors`` + ``model.json``).
        labels: The label space trained.
        modality: ``fundus``, ``image`` (2D scans) or ``oct`` (volumes).
        train: Training samples.
        val: Validation samples.
        summary: The core's summary (best metric, step...).
    """

    run_dir: Path
    labels: LabelSpace
    modality: str
    train: int
    val: int
    summary: dict[str, Any]

    @property
    def line(self) -> str:
        """One line: sizes, task and the best validation metric."""
        best = self.summary.get("best_metric", self.summary.get("best"))
        name = self.summary.get("metric", "validation metric")
        shown = f"{best:.4f}" if isinstance(best, float) and math.isfinite(best) else "n/a"
        return (
            f"trained on {self.train} {self.modality} inputs ({self.val} for validation), {self.labels.kind} with "
            f"{len(self.labels.classes)} classes; best {name} {shown}"
        )


def _read(cfg: EyeConfig, data: Path, split: str | None, classes: Any, task: str) -> tuple[list[Sample], LabelSpace]:
    d = cfg.dataset
    return read_eye_dataset(
        data,
        task=task,
        classes=classes,
        positive=d.positive,
        split=split,
        images=d.images,
        label_column=d.label_column,
    )


def split_samples(cfg: EyeConfig, data: Path) -> tuple[list[Sample], list[Sample], LabelSpace]:
    """``(train, val, labels)`` of a dataset under ``cfg.dataset`` and ``cfg.data`` (see the module docstring).

    Raises:
        DataError: As the readers; a validation set with other classes.
    """
    d = cfg.dataset
    samples, labels = _read(cfg, Path(data), d.split, list(d.classes) or None, d.task)
    if d.val is None and d.val_split is None:
        train, val = group_split(samples, cfg.data.val_fraction, cfg.data.split_seed)
        return train, val, labels
    source = Path(d.val) if d.val is not None else Path(data)
    fixed = None if labels.kind == "binary" else list(labels.classes)
    val, val_labels = _read(cfg, source, d.val_split, fixed, labels.kind)
    if val_labels != labels:
        raise DataError(f"{source}: validation classes {list(val_labels.classes)} differ from training's")
    return samples, val, labels


def train(
    cfg: EyeConfig, data: str | Path, out: str | Path, *, resume: bool = False, quiet: bool = False
) -> TrainResult:
    """Fine-tune a classifier on ``data`` into the run directory ``out``.

    Args:
        cfg: The resolved config.
        data: ImageFolder tree, folder with ``labels.csv``, or a (path, label) CSV.
        out: Run directory.
        resume: Continue from ``out/last.pt``.
        quiet: No progress bar.

    Returns:
        The result (the core's summary included).

    Raises:
        DataError, ConfigError, TrainingError: From the readers and the core.
    """
    from medvit.shared.classify.train import train_classifier

    train_s, val_s, labels = split_samples(cfg, Path(data))
    modality = detect_modality(train_s + val_s, cfg.dataset.modality)
    logger.info("eye train: %d training and %d validation inputs (%s)", len(train_s), len(val_s), modality)
    summary = train_classifier(cfg, train_s, val_s, labels, modality, Path(out), resume=resume, quiet=quiet)
    return TrainResult(Path(out), labels, modality, len(train_s), len(val_s), dict(summary or {}))
