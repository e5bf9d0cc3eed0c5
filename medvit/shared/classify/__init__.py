"""The shared classification core: label spaces, inputs, the fine-tuning recipe, prediction and evaluation.

The apps (chest X-ray, eye) turn their datasets into :class:`~medvit.shared.classify.labels.Sample` lists and a
:class:`~medvit.shared.classify.labels.LabelSpace` and call :func:`train_classifier`, :func:`predict` and
:func:`evaluate`. Re-exports are lazy: importing the package (e.g. the torch-free ``labels`` and ``config``) does
not import torch.
"""

from __future__ import annotations

from medvit.shared.lazy import lazy_getattr

_LAZY = {
    "LabelSpace": "medvit.shared.classify.labels",
    "Sample": "medvit.shared.classify.labels",
    "group_split": "medvit.shared.classify.labels",
    "ClassifyConfig": "medvit.shared.classify.config",
    "InputSpec": "medvit.shared.classify.inputs",
    "load_input": "medvit.shared.classify.inputs",
    "train_classifier": "medvit.shared.classify.train",
    "predict": "medvit.shared.classify.predict",
    "evaluate": "medvit.shared.classify.evaluate",
    "load_classifier": "medvit.shared.classify.model",
}

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = sorted(_LAZY)
