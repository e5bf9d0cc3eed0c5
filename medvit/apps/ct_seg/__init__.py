"""CT organ segmentation app (``medvit ct-seg``): UNETR decoder on the shared ViT, fine-tuned from CT pretraining.

Modules: :mod:`~medvit.apps.ct_seg.model` (network), :mod:`~medvit.apps.ct_seg.data` (datasets, folds, sampling),
:mod:`~medvit.apps.ct_seg.config` (config and presets), :mod:`~medvit.apps.ct_seg.api` (train / predict /
evaluate), :mod:`~medvit.apps.ct_seg.cli` (the typer sub-app). Importing the package imports nothing heavy.
"""
