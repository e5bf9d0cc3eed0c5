"""Typed API behind ``medvit deepfake`` (GGViT-style), one module per command; this module gathers them.

=================  ==============================================================================================
module             what
=================  ==============================================================================================
``prepare.py``     :func:`prepare`: FF++ tree or real/fake folders -> 1.3-margin face crops of 32 frames per video
``train.py``       :func:`train` (``DeepfakeConfig`` -> run directory with ``model.safetensors``), through ``fit``
``predict.py``     :func:`predict`: the batch job over videos/images, per-frame and per-video CSVs, frame strips
``evaluate.py``    :func:`evaluate`: frame/video AUC, ACC, EER, AP, per level, per method, cross-compression grid
``demo.py``        :func:`run_deepfake_demo` (the deepfake part of ``medvit demo``)
=================  ==============================================================================================
"""

from __future__ import annotations

from medvit.apps.deepfake.demo import run_deepfake_demo
from medvit.apps.deepfake.evaluate import EvaluateResult, evaluate
from medvit.apps.deepfake.model_file import load_run_model
from medvit.apps.deepfake.predict import PredictResult, predict
from medvit.apps.deepfake.prepare import PrepareResult, prepare
from medvit.apps.deepfake.train import TrainResult, train

__all__ = [
    "EvaluateResult",
    "PredictResult",
    "PrepareResult",
    "TrainResult",
    "evaluate",
    "load_run_model",
    "predict",
    "prepare",
    "run_deepfake_demo",
    "train",
]
