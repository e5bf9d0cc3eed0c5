"""The shared classification core: label spaces, inputs, the fine-tuning recipe, prediction and evaluation.

The apps (chest X-ray, eye) turn their datasets into :class:`~medvit.shared.classify.labels.Sample` lists and a
:class:`~medvit.shared.classify.labels.LabelSpace` and call ``train_classifier``, ``predict`` and ``evaluate``
from the modules of this package. Importing the package is torch-free.
"""
