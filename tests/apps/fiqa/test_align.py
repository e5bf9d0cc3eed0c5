"""Alignment to the ArcFace template and detection through insightface's SCRFD code (stand-in ONNX)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from medvit.shared.errors import ConfigError, DataError
from medvit.shared.faces.align import (
    ARCFACE_TEMPLATE,
    FaceAligner,
    align_face,
    create_detector,
    estimate_norm,
    find_scrfd,
    given_crop,
    transform_points,
    umeyama_similarity,
)

from .conftest import FAKE_BOX, FAKE_LANDMARKS, face_photo


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


@pytest.mark.parametrize(("angle", "scale", "tx", "ty"), [(25.0, 1.7, 120.0, 40.0), (-10.0, 2.5, 30.0, 90.0)])
def test_alignment_maps_known_landmarks_onto_the_template(synth_face: np.ndarray, angle, scale, tx, ty) -> None:
    t = _similarity(angle, scale, tx, ty)  # crop -> photo
    photo = cv2.warpAffine(synth_face, t, (400, 400), flags=cv2.INTER_LINEAR, borderValue=(90, 90, 90))
    landmarks = transform_points(ARCFACE_TEMPLATE, t)
    crop, m = align_face(photo, landmarks)
    np.testing.assert_allclose(transform_points(landmarks, m), ARCFACE_TEMPLATE, atol=1e-3)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    inner = (slice(20, 100), slice(20, 100))
    assert _corr(crop[inner], synth_face[inner]) > 0.95  # the face comes back upright at the template


def test_numpy_umeyama_matches_insightface(synth_face: np.ndarray) -> None:
    landmarks = transform_points(ARCFACE_TEMPLATE, _similarity(13.0, 1.3, 50.0, 20.0))
    landmarks = landmarks + np.random.default_rng(0).normal(0, 1.5, landmarks.shape)  # not an exact similarity
    np.testing.assert_allclose(estimate_norm(landmarks), umeyama_similarity(landmarks, ARCFACE_TEMPLATE), atol=1e-4)


def test_scrfd_detection_and_alignment(fake_models: Path, synth_face: np.ndarray) -> None:
    assert find_scrfd(fake_models) == fake_models / "buffalo_test" / "det_10g.onnx"
    aligner = FaceAligner.create("auto", models=fake_models)
    assert aligner.detector.name == "scrfd"
    faces = aligner.detect_align(face_photo(synth_face))
    assert len(faces) == 1
    face = faces[0]
    np.testing.assert_allclose(face.box, FAKE_BOX, atol=1e-3)
    np.testing.assert_allclose(face.landmarks, FAKE_LANDMARKS, atol=1e-3)
    assert face.score is not None and face.score > 0.99
    inner = (slice(20, 100), slice(20, 100))
    assert _corr(face.crop[inner], synth_face[inner]) > 0.95
    assert aligner.detect_align(np.zeros((640, 640, 3), np.uint8)) == []  # dark image: no face


def test_missing_detector_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without an SCRFD ONNX, auto falls back to the offline detectors (dlib is installed by `make install`)...
    assert create_detector("auto", models=tmp_path).name in ("mtcnn", "dlib")
    # ... and with none of them importable it names what to install.
    monkeypatch.setitem(sys.modules, "dlib", None)
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(ConfigError, match=r"pip install medvit\[face\]"):
        create_detector("auto", models=tmp_path)
    with pytest.raises(ConfigError, match=r"the dlib detector needs dlib"):
        create_detector("dlib", models=tmp_path)
    with pytest.raises(ConfigError, match="no SCRFD detector ONNX"):
        create_detector("scrfd", models=tmp_path)
    with pytest.raises(ConfigError, match="unknown detector"):
        create_detector("yolo", models=tmp_path)


def test_given_crop_and_bad_image(synth_face: np.ndarray) -> None:
    face = given_crop(cv2.resize(synth_face, (224, 224)))
    assert face.crop.shape == (112, 112, 3)
    np.testing.assert_allclose(face.landmarks, ARCFACE_TEMPLATE * 2)
    np.testing.assert_allclose(transform_points(face.landmarks, face.matrix), ARCFACE_TEMPLATE)

    class _Never:
        name = "never"

        def detect(self, img: np.ndarray) -> list:
            return []

    with pytest.raises(DataError, match="RGB image"):
        FaceAligner(_Never()).detect_align(np.zeros((10, 10), np.uint8))


def test_min_score_rejects_low_confidence_detections(fake_models: Path, synth_face: np.ndarray) -> None:
    """The stand-in SCRFD scores a bright photo about 0.99995: kept by the default 0.5, rejected (not dropped
    silently: returned for the log) by a threshold above it; a probability threshold outside [0, 1] is an error."""
    photo = face_photo(synth_face)
    aligner = FaceAligner.create("scrfd", models=fake_models)
    assert aligner.min_score == 0.5 and aligner.detector_name == "scrfd"
    faces, rejected = aligner.detect_faces(photo)
    assert len(faces) == 1 and rejected == []
    strict = FaceAligner.create("scrfd", models=fake_models, min_score=1.0)
    faces, rejected = strict.detect_faces(photo, all_faces=True)
    assert faces == [] and len(rejected) == 1 and 0.99 < rejected[0].score < 1.0
    np.testing.assert_allclose(rejected[0].box, FAKE_BOX, atol=1e-3)
    with pytest.raises(ConfigError, match=r"--min-face-score 1.5: the scrfd detector's scores lie in \[0, 1\]"):
        FaceAligner.create("scrfd", models=fake_models, min_score=1.5)
