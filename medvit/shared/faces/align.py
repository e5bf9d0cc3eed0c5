"""Face detection and alignment to the ArcFace 112x112 five-point template.

Alignment is insightface's (``insightface.utils.face_align.norm_crop2``: least-squares similarity transform
from the five landmarks to the template, ``cv2.warpAffine`` with a black border), the convention every
ArcFace-family model and ViT-FIQA was trained with. When insightface cannot be imported, or its scikit-image
call disappears (``SimilarityTransform.estimate`` is deprecated in scikit-image 0.26 and removed in 2.2), the
same fit is done by :func:`umeyama_similarity` in numpy.

Detectors, in the order ``--detector auto`` tries them:

* ``scrfd``: an insightface SCRFD ONNX with keypoints (``det_10g.onnx`` of the ``buffalo_l`` pack,
  ``scrfd_10g_bnkps.onnx``, ``det_500m.onnx``...) from a local model folder (``--models DIR``, default
  ``$INSIGHTFACE_HOME`` or ``~/.insightface/models``), loaded with ``insightface.model_zoo.get_model(path)``
  and run by onnxruntime. Nothing is downloaded; insightface's packs are for non-commercial research only.
* ``mtcnn``: facenet-pytorch's MTCNN (weights inside the wheel, MIT; 5 landmarks in ArcFace order), if
  installed (``pip install --no-deps facenet-pytorch``).
* ``dlib``: dlib's HOG detector and ``shape_predictor_5_face_landmarks.dat`` from ``face_recognition_models``
  (``pip install medvit[face]``: dlib-bin + face-recognition-models). The 5-point model gives eye corners and
  the base of the nose, not mouth corners: the mouth corners are placed by the template from a fit of the eyes
  and nose (approximate; prefer SCRFD or MTCNN).

Detection confidence. Each detector reports candidates down to a low floor, and :class:`FaceAligner` keeps those
scoring at least ``min_score`` (``fiqa score --min-face-score``; the rest are returned as rejected, and ``fiqa
score`` logs them). Defaults per detector, from the scores seen on real photos that ship offline: scikit-image's
``astronaut()`` at 0.25-1.5x, its other bundled photos, and a "group photo" tiling ``astronaut()`` at 0.5/0.75/1x
under the 100 face crops of ``lfw_subset()`` upscaled to 80 px (``python benchmarks/face_detector_scores.py``):

* ``dlib`` 0.3 (HOG SVM score; dlib's own threshold is 0). Faces: the astronaut 0.91-1.51 at 0.5-1.5x, alone and
  in the group photo (at 0.25x her 22 px face is not found); 92 of the 100 LFW crops score >= 0 and 88 >= 0.3
  (the 4 in between: 0.02-0.22). Non-faces: the round embroidered badge and the name tag on the astronaut's suit
  0.12-0.22 (the "second face" of a portrait); all others below 0 (highest -0.108). 0.3 rejects every non-face
  seen; the weakest LFW faces score inside the badge's range, where no threshold can separate them.
* ``mtcnn`` 0.9 (face probability). Faces 0.918-1.0: at 0.9 all 100 LFW crops and the 9 other faces are kept
  (0.95 would lose 2). Non-faces: a motorcycle wheel at 0.929 and 0.716; the first is inside the range of real
  faces.
* ``scrfd`` 0.5: insightface's own ``det_thresh`` default; not measured here (no SCRFD weights ship offline).

All images are RGB uint8 ``[H, W, 3]``; boxes ``(x1, y1, x2, y2)`` and landmarks ``[5, 2]`` (x, y) are in pixels of
the input image.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medvit.shared.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "ARCFACE_TEMPLATE",
    "DETECTORS",
    "Face",
    "FaceAligner",
    "Rejected",
    "align_face",
    "create_detector",
    "estimate_norm",
    "find_scrfd",
    "given_crop",
    "transform_points",
    "umeyama_similarity",
]

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
"""ArcFace 112x112 landmarks (x, y): image-left eye, image-right eye, nose tip, mouth left, mouth right."""
DETECTORS = ("auto", "scrfd", "mtcnn", "dlib")
_INSTALL_HINT = (
    "put an insightface SCRFD detector ONNX (e.g. buffalo_l/det_10g.onnx) in the model folder (--models DIR), "
    "or install an offline detector: `pip install medvit[face]` (dlib) or `pip install --no-deps facenet-pytorch` "
    "(MTCNN); or pass --aligned for 112x112 aligned crops"
)


# ============================================================================= geometry
def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns", TPAMI 1991
    (the estimator scikit-image's ``SimilarityTransform`` uses).

    Args:
        src: ``[N, 2]`` points.
        dst: ``[N, 2]`` points.

    Returns:
        ``[2, 3]`` matrix ``M`` with ``dst ~ M @ [x, y, 1]``.
    """
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / n
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    var_s = (s0**2).sum() / n
    scale = (sig * np.diag(e)).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a ``[2, 3]`` affine matrix to ``[N, 2]`` points."""
    p = np.asarray(points, dtype=np.float64)
    return p @ np.asarray(m, dtype=np.float64)[:, :2].T + np.asarray(m, dtype=np.float64)[:, 2]


def estimate_norm(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Matrix mapping image landmarks ``[5, 2]`` onto the ArcFace template scaled to ``size`` (multiple of 112).

    Uses insightface's ``face_align.estimate_norm``; falls back to :func:`umeyama_similarity` if insightface or its
    scikit-image call is unavailable.
    """
    lmk = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    if size % 112:
        raise ValueError(f"alignment size must be a multiple of 112, got {size}")
    try:
        from insightface.utils import face_align

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # skimage 0.26: `estimate` deprecated
            return np.asarray(face_align.estimate_norm(lmk, size), dtype=np.float64)
    except (ImportError, AttributeError, TypeError):
        return umeyama_similarity(lmk, ARCFACE_TEMPLATE * (size / 112.0))


def align_face(img: np.ndarray, landmarks: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``img`` so that ``landmarks`` land on the ArcFace template (insightface ``norm_crop2``).

    Args:
        img: RGB uint8 ``[H, W, 3]``.
        landmarks: ``[5, 2]`` in ArcFace order.
        size: output side.

    Returns:
        ``(crop [size, size, 3] uint8, M [2, 3])``.
    """
    import cv2

    m = estimate_norm(landmarks, size)
    crop = cv2.warpAffine(np.ascontiguousarray(img), m, (size, size), borderValue=0.0)
    return crop, m


# ============================================================================= detectors
class Detector(Protocol):
    name: str
    #: ``--min-face-score`` default, chosen from scores seen on real photos (module docstring).
    default_min_score: float
    #: Range of the detector's scores: ``(0, 1)`` for probabilities, unbounded for dlib's SVM margin.
    score_range: tuple[float, float]

    def detect(self, img: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
        """RGB image -> list of ``(box [4], score, landmarks [5, 2])``."""
        ...


_SCRFD_PREFERENCE = ("det_10g", "scrfd_10g_bnkps", "scrfd_10g", "det_2.5g", "scrfd_2.5g_bnkps", "det_500m")


def find_scrfd(models: str | os.PathLike[str] | None = None) -> Path | None:
    """An SCRFD ONNX in ``models`` (a file, a pack folder, or the folder of packs), or None.

    Looks for ``det_*.onnx`` and ``*scrfd*.onnx`` up to two levels deep, preferring the larger detectors.
    """
    from medvit.shared.paths import insightface_models_dir

    root = insightface_models_dir(models)
    if root.is_file():
        return root if root.suffix == ".onnx" else None
    if not root.is_dir():
        return None
    found = [
        p
        for pattern in ("det_*.onnx", "*scrfd*.onnx", "*/det_*.onnx", "*/*scrfd*.onnx")
        for p in root.glob(pattern)
        if p.is_file()
    ]
    if not found:
        return None

    def rank(p: Path) -> tuple[int, str]:
        stem = p.stem.lower()
        return (_SCRFD_PREFERENCE.index(stem) if stem in _SCRFD_PREFERENCE else len(_SCRFD_PREFERENCE), str(p))

    return sorted(set(found), key=rank)[0]


class SCRFDDetector:
    """insightface SCRFD ONNX (must output keypoints) run by onnxruntime on the CPU or CUDA.

    Args:
        path: the ONNX file.
        det_size: detector input side (640 as insightface's ``FaceAnalysis``).
        threshold: lowest score reported (insightface's ``det_thresh``); :class:`FaceAligner` applies the
            ``--min-face-score`` above it, so that the candidates in between can be logged as rejected.
        providers: onnxruntime providers (default CPU).
    """

    name = "scrfd"
    default_min_score = 0.5  # insightface's det_thresh default
    report_floor = 0.25
    score_range = (0.0, 1.0)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        det_size: int = 640,
        threshold: float = report_floor,
        providers: list[str] | None = None,
    ) -> None:
        try:
            from insightface.model_zoo import get_model
        except ImportError as err:
            raise ConfigError(f"the SCRFD detector needs insightface ({err}); `pip install medvit[face]`") from None
        self.path = Path(path)
        try:
            model = get_model(str(self.path), providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise ConfigError(f"{self.path}: cannot load the detector ONNX ({type(err).__name__}: {err})") from None
        if model is None or getattr(model, "taskname", None) != "detection":
            raise ConfigError(f"{self.path}: not an insightface detector ONNX (SCRFD)")
        if not getattr(model, "use_kps", False):
            raise ConfigError(f"{self.path}: this SCRFD model outputs no keypoints; alignment needs a *kps model")
        model.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=threshold)
        self.model = model
        self.det_size = det_size

    def detect(self, img: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
        bgr = np.ascontiguousarray(img[..., ::-1])  # insightface detectors take BGR
        det, kps = self.model.detect(bgr, input_size=(self.det_size, self.det_size))
        if det is None or len(det) == 0:
            return []
        return [(det[i, :4].astype(np.float64), float(det[i, 4]), kps[i].astype(np.float64)) for i in range(len(det))]


class MTCNNDetector:
    """facenet-pytorch MTCNN (weights in the wheel; landmarks already in ArcFace order).

    Args:
        threshold: lowest face probability reported (MTCNN's own stage thresholds already stop most candidates).
    """

    name = "mtcnn"
    default_min_score = 0.9
    report_floor = 0.0
    score_range = (0.0, 1.0)

    def __init__(self, threshold: float = report_floor) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            raise ConfigError(f"MTCNN needs facenet-pytorch ({err}): `pip install --no-deps facenet-pytorch`") from None
        self.model = MTCNN(keep_all=True, device="cpu", post_process=False)
        self.threshold = threshold

    def detect(self, img: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
        boxes, probs, points = self.model.detect(img, landmarks=True)
        if boxes is None:
            return []
        out = []
        for box, p, pts in zip(boxes, probs, points, strict=True):
            if p is not None and float(p) >= self.threshold:  # numpy 2: object arrays -> cast
                out.append((np.asarray(box, dtype=np.float64), float(p), np.asarray(pts, dtype=np.float64)))
        return out


def import_dlib(what: str) -> Any:
    """``dlib``, or a ConfigError naming ``what`` needs it and how to install it."""
    try:
        import dlib
    except ImportError as err:
        raise ConfigError(f"{what} needs dlib ({err}): `pip install medvit[face]`") from None
    return dlib


def dlib_model_file(name: str) -> Path:
    """A model file of the ``face_recognition_models`` package (``shape_predictor_5_face_landmarks.dat``...).

    Located without importing the package: its ``__init__`` imports ``pkg_resources``, which setuptools >= 81
    no longer ships.

    Raises:
        ConfigError: the package or the file is not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "models" / name
        if path.is_file():
            return path
    raise ConfigError(
        f"{name} not found: the dlib models come from `pip install medvit[face]` (face-recognition-models)"
    )


class DlibDetector:
    """dlib HOG detector + the 5-point shape predictor of ``face_recognition_models``.

    Args:
        threshold: lowest SVM score reported (dlib's ``adjust_threshold``; 0 is dlib's own detection threshold).
    """

    name = "dlib"
    default_min_score = 0.3
    report_floor = 0.0
    score_range = (-math.inf, math.inf)

    def __init__(self, threshold: float = report_floor) -> None:
        dlib = import_dlib("the dlib detector")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))
        self._dlib = dlib
        self.threshold = float(threshold)
        # dlib's detector and predictor are not safe to call from several loader threads at once (segfaults
        # seen with 2 workers); detection is serialised, decoding and the forward pass still overlap with it.
        self._lock = threading.Lock()

    def detect(self, img: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
        img = np.ascontiguousarray(img)
        with self._lock:
            rects, scores, _ = self.detector.run(img, 1, self.threshold)
            shapes = [self.predictor(img, rect) for rect in rects]
        out = []
        for rect, score, shape in zip(rects, scores, shapes, strict=True):
            pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)
            # dlib 5-point: 0-1 image-right eye corners, 2-3 image-left eye corners, 4 base of the nose.
            eyes_nose = np.stack([pts[2:4].mean(0), pts[0:2].mean(0), pts[4]])
            tmpl = ARCFACE_TEMPLATE[:3] + np.array([[0, 0], [0, 0], [0, 5.0]])  # nose base ~5 px below the tip
            m = umeyama_similarity(tmpl, eyes_nose)  # template -> image
            mouth = transform_points(ARCFACE_TEMPLATE[3:], m)
            nose_tip = transform_points(ARCFACE_TEMPLATE[2:3], m)
            lm = np.vstack([eyes_nose[:2], nose_tip, mouth])
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)
            out.append((box, float(score), lm))
        return out


def create_detector(
    kind: str = "auto", models: str | os.PathLike[str] | None = None, *, min_score: float | None = None
) -> Detector:
    """The face detector to use.

    Args:
        kind: ``auto`` (SCRFD from ``models`` if present, else MTCNN, else dlib), ``scrfd``, ``mtcnn``, ``dlib``.
        models: insightface model folder or ONNX file (default ``$INSIGHTFACE_HOME`` / ``~/.insightface/models``).
        min_score: the confidence the caller will require; the detector then reports candidates down to
            ``min(its floor, min_score)``.

    Raises:
        ConfigError: no usable detector (the message says what to install or where to put a model).
    """
    if kind not in DETECTORS:
        raise ConfigError(f"unknown detector {kind!r}; choose one of {', '.join(DETECTORS)}")

    def floor(cls: Any) -> float:
        return cls.report_floor if min_score is None else min(cls.report_floor, float(min_score))

    if kind in ("auto", "scrfd"):
        path = find_scrfd(models)
        if path is not None:
            return SCRFDDetector(path, threshold=floor(SCRFDDetector))
        if kind == "scrfd":
            from medvit.shared.paths import insightface_models_dir

            raise ConfigError(f"no SCRFD detector ONNX (det_*.onnx, *scrfd*.onnx) in {insightface_models_dir(models)}")
    for name, cls in (("mtcnn", MTCNNDetector), ("dlib", DlibDetector)):
        if kind in ("auto", name):
            try:
                return cls(threshold=floor(cls))
            except ConfigError:
                if kind == name:
                    raise
    from medvit.shared.paths import insightface_models_dir

    where = insightface_models_dir(models)
    raise ConfigError(f"no face detector available (no SCRFD ONNX in {where}): {_INSTALL_HINT}")


@dataclass
class Face:
    """One detected and aligned face.

    Attributes:
        crop: aligned RGB uint8 ``[112, 112, 3]``.
        box: ``(x1, y1, x2, y2)`` in input pixels.
        landmarks: ``[5, 2]`` in input pixels, ArcFace order.
        score: detector confidence (None for given crops).
        matrix: ``[2, 3]`` input -> crop transform.
    """

    crop: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray
    score: float | None
    matrix: np.ndarray

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass
class Rejected:
    """A detection below the confidence threshold (not aligned, not scored).

    Attributes:
        box: ``(x1, y1, x2, y2)`` in input pixels.
        score: detector confidence.
    """

    box: np.ndarray
    score: float


class FaceAligner:
    """Detect faces, keep the confident ones and align them to the 112x112 template.

    Args:
        detector: any object with ``detect(rgb) -> [(box, score, landmarks)]``.
        size: crop side (112).
        min_score: detections scoring below it are rejected; None: the detector's ``default_min_score`` (0 for a
            detector without one).

    Raises:
        ConfigError: ``min_score`` outside the detector's score range (probabilities: [0, 1]).
    """

    def __init__(self, detector: Detector, size: int = 112, *, min_score: float | None = None) -> None:
        self.detector = detector
        self.size = size
        self.min_score = float(getattr(detector, "default_min_score", 0.0) if min_score is None else min_score)
        lo, hi = getattr(detector, "score_range", (-math.inf, math.inf))
        if not lo <= self.min_score <= hi:
            raise ConfigError(
                f"--min-face-score {self.min_score:g}: the {getattr(detector, 'name', 'face')} detector's scores lie "
                f"in [{lo:g}, {hi:g}]"
            )

    @property
    def detector_name(self) -> str:
        return str(getattr(self.detector, "name", type(self.detector).__name__))

    @classmethod
    def create(
        cls, kind: str = "auto", models: str | os.PathLike[str] | None = None, *, min_score: float | None = None
    ) -> FaceAligner:
        """Detector by name (:func:`create_detector`) with the confidence threshold ``min_score``."""
        return cls(create_detector(kind, models, min_score=min_score), min_score=min_score)

    def detect_faces(self, img: np.ndarray, *, all_faces: bool = False) -> tuple[list[Face], list[Rejected]]:
        """Confident faces of ``img`` (RGB uint8), largest first, and the detections rejected below ``min_score``.

        Only the largest confident face unless ``all_faces``: a low-confidence detection is never chosen over it.

        Raises:
            DataError: not an RGB image.
        """
        if img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
        faces, rejected = [], []
        for box, score, lm in self.detector.detect(img):
            box = np.asarray(box, dtype=np.float64)
            if score is not None and float(score) < self.min_score:
                rejected.append(Rejected(box, float(score)))
                continue
            crop, m = align_face(img, lm, self.size)
            faces.append(Face(crop, box, np.asarray(lm, dtype=np.float64), score, m))
        faces.sort(key=lambda f: -f.area)
        rejected.sort(key=lambda r: -r.score)
        return (faces if all_faces else faces[:1]), rejected

    def detect_align(self, img: np.ndarray, *, all_faces: bool = False) -> list[Face]:
        """The faces of :meth:`detect_faces` (the rejected detections are dropped)."""
        return self.detect_faces(img, all_faces=all_faces)[0]


def given_crop(img: np.ndarray, size: int = 112) -> Face:
    """Wrap an already aligned crop (resized to ``size`` if needed) as a :class:`Face`."""
    import cv2

    h, w = img.shape[:2]
    crop = img if (h, w) == (size, size) else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    sx, sy = w / size, h / size
    lm = ARCFACE_TEMPLATE * (size / 112.0) * np.array([sx, sy])
    m = np.array([[1 / sx, 0, 0], [0, 1 / sy, 0]], dtype=np.float64)
    return Face(np.ascontiguousarray(crop), np.array([0.0, 0.0, float(w), float(h)]), lm, None, m)
