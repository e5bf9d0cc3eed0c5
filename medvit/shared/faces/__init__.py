"""Face detection and alignment shared by the face apps (``fiqa``; ``deepfake``).

:mod:`~medvit.shared.faces.align`: SCRFD (insightface ONNX), MTCNN or dlib detectors with per-detector confidence
thresholds, five-point landmarks and the ArcFace 112x112 template alignment.
"""
