"""Typed API behind ``medvit cxr``: the functions the CLI, the demo and tests call.

=========================================  ===================================================================
module                                     what
=========================================  ===================================================================
:mod:`~medvit.apps.cxr.labels`             release readers: ChestX-ray14, CheXpert, MIMIC-CXR-JPG, generic CSV
:mod:`~medvit.apps.cxr.config`             :class:`CxrConfig` (the core's config + ``dataset``), presets
:mod:`~medvit.apps.cxr.train`              :func:`train`: patient-wise validation, fine-tuning on the core
:mod:`~medvit.apps.cxr.predict`            :func:`predict`: inputs listed, the core's batch job
:mod:`~medvit.apps.cxr.evaluate`           :func:`evaluate`: ground truth aligned to predictions, AUC metrics
:mod:`~medvit.apps.cxr.demo`               :func:`run_cxr_demo`: synthetic set -> train tiny -> predict -> evaluate
=========================================  ===================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from medvit.apps.cxr.config import CxrConfig, load_cxr_config, load_train_config
from medvit.apps.cxr.demo import run_cxr_demo
from medvit.apps.cxr.evaluate import evaluate
from medvit.apps.cxr.labels import (
    read_chestxray14,
    read_chexpert,
    read_cxr_dataset,
    read_label_csv,
    read_mimic_cxr,
)
from medvit.apps.cxr.predict import PredictResult, predict
from medvit.apps.cxr.train import TrainResult, train

__all__ = [
    "CxrConfig",
    "PredictResult",
    "TrainResult",
    "evaluate",
    "load_cxr_config",
    "load_train_config",
    "predict",
    "print_summary",
    "run_cxr_demo",
    "read_chestxray14",
    "read_chexpert",
    "read_cxr_dataset",
    "read_label_csv",
    "read_mimic_cxr",
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
