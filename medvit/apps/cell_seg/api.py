"""Typed API behind ``medvit cell``: the functions the CLI, the demo, the benchmarks and tests call.

A facade over the modules that do the work, one per verb:

=========================================  ===================================================================
module                                     what
=========================================  ===================================================================
:mod:`~medvit.apps.cell_seg.prepare`       :func:`prepare`: PanNuke / CoNIC release arrays -> training layout
:mod:`~medvit.apps.cell_seg.train`         :func:`train` (takes a resolved :class:`CellConfig`), the task
:mod:`~medvit.apps.cell_seg.predict`       :func:`predict` (the batch job): GeoJSON, CSV, label maps, overlays
:mod:`~medvit.apps.cell_seg.evaluate`      :func:`evaluate`: PQ family, AJI, F1; ``metrics.csv``, ``summary.json``
:mod:`~medvit.apps.cell_seg.model_file`    ``model.json`` + ``model.safetensors``: :func:`load_run_model`
=========================================  ===================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medvit.apps.cell_seg.config import CellConfig, load_cell_config
from medvit.apps.cell_seg.evaluate import evaluate
from medvit.apps.cell_seg.model_file import MODEL_FORMAT, MODEL_FORMAT_VERSION, load_run_model, model_from_spec
from medvit.apps.cell_seg.predict import predict
from medvit.apps.cell_seg.train import CellTask, TrainResult, train

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "CellConfig",
    "CellTask",
    "TrainResult",
    "evaluate",
    "load_cell_config",
    "load_run_model",
    "model_from_spec",
    "predict",
    "prepare",
    "print_summary",
    "train",
]


def prepare(kind: str, src: str | Path, out: str | Path, *, overwrite: bool = False, quiet: bool = False) -> dict:
    """Convert a PanNuke / CoNIC release to the training layout, with a progress bar (see :mod:`.prepare`)."""
    from medvit.apps.cell_seg.prepare import prepare as prepare_impl
    from medvit.shared.engine.progress import ItemProgress

    bars: list[ItemProgress] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(ItemProgress(total, f"prepare {kind}", enabled=not quiet).__enter__())
        while bars[0].done < done:
            bars[0].advance()

    try:
        return prepare_impl(kind, Path(src), Path(out), overwrite=overwrite, progress=progress)
    finally:
        for bar in bars:
            bar.close()


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def print_summary(summary: Mapping[str, Any]) -> None:
    """The headline metrics of :func:`evaluate` as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary.get('images', '?')} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            table.add_row(key, _fmt(float(value)))
        elif isinstance(value, Mapping) and all(isinstance(v, (int, float)) for v in value.values()):
            for sub, v in value.items():
                table.add_row(f"{key}.{sub}", _fmt(float(v)))
    Console().print(table)
