"""Face-image quality assessment with ViT-FIQA (``medvit fiqa``).

Atzori, Boutros, Damer, "ViT-FIQA: Assessing Face Image Quality using Vision Transformers", ICCV 2025 Workshops
(arXiv 2508.13957): a face ViT with a learnable quality token, trained jointly for recognition (CosFace) and for
regressing the online CR-FIQA certainty ratio. Modules: ``model`` (network, weights), ``losses`` (objective),
``data`` (identity folders, RecordIO, pair lists), ``bin_reader`` (insightface .bin), one module per command
(``train``, ``score``, ``evaluate`` with its EDC plumbing, ``convert`` with ``extract-bin`` and the weights a
command scores with, ``demo``) gathered by ``api``, ``cli`` (options -> config -> api), ``config`` (+ ``presets/``),
``formats`` (the checkpoint layout it registers).
Face detection and alignment are shared with the other face apps: :mod:`medvit.shared.faces.align`.
"""

# Registers the ViT-FIQA checkpoint layout with the shared weights layer (torch-free).
from medvit.apps.fiqa import formats as _formats  # noqa: E402, F401
