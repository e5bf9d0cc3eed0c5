"""Pathology nucleus instance segmentation and classification with CellVTA (``medvit cell``)."""

# Registers the CellVTA / CellViT checkpoint layouts with the shared weights layer (torch-free).
from medvit.apps.cell_seg import formats as _formats  # noqa: E402, F401
