"""Typed API behind ``medvit fiqa``, one module per command; this module gathers their public functions.

=====================  ========================================================================================
module                 what
=====================  ========================================================================================
``train.py``           :func:`train` (``FiqaConfig`` -> run directory with ``model.safetensors``), through ``fit``
``score.py``           :func:`score`: the batch job over a folder, ``scores.csv``, histogram and contact sheet
``evaluate.py``        :func:`evaluate`: EDC curves (both threshold conventions), AUC and pAUC on a pair list
``convert.py``         :func:`load_scoring_model` (``--weights``), :func:`convert`, :func:`extract_bin`
``demo.py``            :func:`run_demo` (the fiqa part of ``medvit demo``), :func:`degradation_ranking`
=====================  ========================================================================================

The CLI (``cli.py``) parses options, resolves the config and calls these; user errors raise ``MedvitError``.
"""

from __future__ import annotations

from medvit.apps.fiqa.convert import NO_WEIGHTS_HINT, convert, extract_bin, load_scoring_model
from medvit.apps.fiqa.demo import degradation_ranking, run_demo
from medvit.apps.fiqa.evaluate import EvaluateResult, evaluate
from medvit.apps.fiqa.score import ALIGNED_INPUT, SCORE_COLUMNS, ScoreResult, score
from medvit.apps.fiqa.train import TrainResult, train

__all__ = [
    "ALIGNED_INPUT",
    "NO_WEIGHTS_HINT",
    "SCORE_COLUMNS",
    "EvaluateResult",
    "ScoreResult",
    "TrainResult",
    "convert",
    "degradation_ranking",
    "evaluate",
    "extract_bin",
    "load_scoring_model",
    "run_demo",
    "score",
    "train",
]
