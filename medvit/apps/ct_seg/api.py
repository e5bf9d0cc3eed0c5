"""Typed API behind ``medvit ct-seg``: the functions the CLI, the demo, the benchmarks and tests call.

A facade over the modules that do the work, one per verb:

=========================================  ===================================================================
module                                     what
=========================================  ===================================================================
:mod:`~medvit.apps.ct_seg.train`           :func:`train` (takes a resolved :class:`CTSegConfig`), the task
:mod:`~medvit.apps.ct_seg.predict`         :func:`predict` (the batch job), label maps, overlays
:mod:`~medvit.apps.ct_seg.evaluate`        :func:`evaluate`: Dice / HD95, ``metrics.csv``, ``summary.json``
:mod:`~medvit.apps.ct_seg.inference`       :class:`Segmenter`, :func:`sliding_probs`: the inference core
:mod:`~medvit.apps.ct_seg.model_file`      ``model.json`` + ``model.safetensors``: :func:`build_model`,
                                           :func:`model_from_spec`, :func:`load_run_model`
=========================================  ===================================================================
"""

from __future__ import annotations

from medvit.apps.ct_seg.config import CTSegConfig, load_ct_seg_config
from medvit.apps.ct_seg.evaluate import evaluate
from medvit.apps.ct_seg.inference import Segmenter, sliding_probs
from medvit.apps.ct_seg.model_file import (
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    build_model,
    load_run_model,
    model_from_spec,
    model_schema,
    preprocess_transform,
)
from medvit.apps.ct_seg.predict import predict, save_overlay, write_label_map
from medvit.apps.ct_seg.train import SegTask, TrainResult, train

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "CTSegConfig",
    "SegTask",
    "Segmenter",
    "TrainResult",
    "build_model",
    "evaluate",
    "load_ct_seg_config",
    "load_run_model",
    "model_from_spec",
    "model_schema",
    "predict",
    "preprocess_transform",
    "save_overlay",
    "sliding_probs",
    "train",
    "write_label_map",
]
