"""Typed API behind ``medvit eye``: the functions the CLI, the demo and tests call.

=========================================  ===================================================================
module                                     what
=========================================  ===================================================================
:mod:`~medvit.apps.eye.labels`             ImageFolder trees, (path, label) CSVs, modality detection
:mod:`~medvit.apps.eye.config`             :class:`EyeConfig` (the core's config + ``dataset``), presets
:mod:`~medvit.apps.eye.train`              :func:`train`: modality, validation split, fine-tuning on the core
:mod:`~medvit.apps.eye.predict`            :func:`predict`: inputs listed, the core's batch job
:mod:`~medvit.apps.eye.evaluate`           :func:`evaluate`: ground truth aligned, kappa / accuracy / AUC
:mod:`~medvit.apps.eye.demo`               :func:`run_eye_demo`: synthetic set -> train tiny -> predict -> evaluate
=========================================  ===================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from medvit.apps.eye.config import EyeConfig, load_eye_config, load_train_config
from medvit.apps.eye.demo import run_eye_demo
from medvit.apps.eye.evaluate import evaluate
from medvit.apps.eye.labels import detect_modality, read_eye_csv, read_eye_dataset, read_image_folder
from medvit.apps.eye.predict import PredictResult, predict
from medvit.apps.eye.train import TrainResult, train

__all__ = [
    "EyeConfig",
    "PredictResult",
    "TrainResult",
    "evaluate",
    "load_eye_config",
    "load_train_config",
    "predict",
    "print_summary",
    "run_eye_demo",
    "detect_modality",
    "read_eye_csv",
    "read_eye_dataset",
    "read_image_folder",
    "train",
]


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def print_summary(summary: Mapping[str, Any]) -> None:
    """The numbers of an evaluation summary as a table on stdout (nested mappings flattened one level)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            table.add_row(key, _fmt(float(value)))
        elif isinstance(value, Mapping):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    table.add_row(f"{key}.{sub}", _fmt(float(v)))
    Console().print(table)
