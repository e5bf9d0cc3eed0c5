"""``medvit cxr train``: read the labels, hold out a patient-wise validation set, fine-tune on the core.

The work is the classification core's (:func:`medvit.shared.classify.train.train_classifier`); this module turns a
dataset into samples (:mod:`medvit.apps.cxr.labels`) and decides the validation set: ``dataset.val`` /
``dataset.val_split`` when given (read with the training label set), else ``data.val_fraction`` of the training
samples held out by patient (:func:`~medvit.shared.classify.labels.group_split`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvit.apps.cxr.config import MODALITY, CxrConfig
from medvit.apps.cxr.labels import read_cxr_dataset
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
        train: Training samples.
        val: Validation samples.
        summary: The core's summary (best metric, step...).
    """

    run_dir: Path
    labels: LabelSpace
    train: int
    val: int
    summary: dict[str, Any]

    @property
    def line(self) -> str:
        """One line: sizes and the best validation metric."""
        best = self.summary.get("best_metric", self.summary.get("best"))
        name = self.summary.get("metric", "validation metric")
        shown = f"{best:.4f}" if isinstance(best, float) and math.isfinite(best) else "n/a"
        return (
            f"trained on {self.train} images ({self.val} for validation), {len(self.labels.classes)} findings; "
            f"best {name} {shown}"
        )


def _read(cfg: CxrConfig, data: Path, split: str | None, findings: Any) -> tuple[list[Sample], LabelSpace]:
    d = cfg.dataset
    return read_cxr_dataset(
        data, format=d.format, split=split, findings=findings, uncertain=d.uncertain, frontal_only=d.frontal_only
    )


def split_samples(cfg: CxrConfig, data: Path) -> tuple[list[Sample], list[Sample], LabelSpace]:
    """``(train, val, labels)`` of a dataset under ``cfg.dataset`` and ``cfg.data`` (see the module docstring).

    Raises:
        DataError: As the readers; a validation set with other findings.
    """
    samples, labels = _read(cfg, Path(data), cfg.dataset.split, list(cfg.dataset.findings) or None)
    if cfg.dataset.val is None and cfg.dataset.val_split is None:
        train, val = group_split(samples, cfg.data.val_fraction, cfg.data.split_seed)
        return train, val, labels
    source = Path(cfg.dataset.val) if cfg.dataset.val is not None else Path(data)
    val, val_labels = _read(cfg, source, cfg.dataset.val_split, list(labels.classes))
    if val_labels != labels:
        raise DataError(f"{source}: validation findings {list(val_labels.classes)} differ from training's")
    return samples, val, labels


def train(
    cfg: CxrConfig, data: str | Path, out: str | Path, *, resume: bool = False, quiet: bool = False
) -> TrainResult:
    """Fine-tune a classifier on ``data`` into the run directory ``out``.

    Args:
        cfg: The resolved config.
        data: Release folder, folder with ``labels.csv``, or a label CSV.
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
    logger.info("cxr train: %d training and %d validation images", len(train_s), len(val_s))
    summary = train_classifier(cfg, train_s, val_s, labels, MODALITY, Path(out), resume=resume, quiet=quiet)
    return TrainResult(Path(out), labels, len(train_s), len(val_s), dict(summary or {}))
