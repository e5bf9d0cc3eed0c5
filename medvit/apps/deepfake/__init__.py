"""GGViT-style deepfake (facial reenactment) detection (``medvit deepfake``).

Wu, Wang, Wang, Xiang, Gong, "GGViT: Multistream Vision Transformer Network in Face2Face Facial Reenactment
Detection", ICPR 2022 (arXiv 2210.05990): a ViT embedding of the whole face guides per-part stream networks by
addition, an image-quality block conditions the classification on the compression level, and a fusion-attention
block re-weights the streams' predictions. Only the paper's abstract and introduction are known and no code is
public, so every other choice here is ours and is listed in :mod:`medvit.apps.deepfake.model`; the app is
"GGViT-style", not a reproduction.

Modules: ``model`` (network, loss), ``faces`` (frame sampling, face tracking, the 1.3-margin crops), ``prepare``
(FaceForensics++ layout or real/fake folders -> face crops), ``data`` (the prepared set, training frames),
``train``, ``predict``, ``evaluate``, ``model_file``, ``demo``, gathered by ``api``; ``cli`` and ``config``
(+ ``presets/``). Face detection and alignment come from :mod:`medvit.shared.faces.align`.
"""
