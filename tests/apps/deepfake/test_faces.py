"""Frame sampling, the 1.3-margin crop geometry, face tracking."""

from __future__ import annotations

import numpy as np
import pytest

from medvit.apps.deepfake.faces import crop_face, crop_template, sample_indices, track_faces
from medvit.shared.faces.align import ARCFACE_TEMPLATE


def test_sample_indices_are_deepfakebench_linspace() -> None:
    # np.linspace(0, 99, 32) truncated: 0, 3.19 -> 3, 6.39 -> 6, ..., 99
    idx = sample_indices(100, 32)
    assert len(idx) == 32 and idx[:4] == [0, 3, 6, 9] and idx[-1] == 99
    assert idx == [int(v) for v in np.linspace(0, 99, 32)]
    assert sample_indices(10, 4) == [0, 3, 6, 9]  # 0, 3, 6, 9 exactly
    assert sample_indices(5, 32) == [0, 1, 2, 3, 4]  # shorter video: every frame
    assert sample_indices(40, 0) == list(range(40)) and sample_indices(0, 32) == []


def test_crop_template_geometry() -> None:
    t = crop_template(256, 1.3)
    # ArcFace eyes at x 38.29 / 73.53 (112 px) -> +8 -> x2 (256/128) -> shrunk by 1.3 about 128
    assert t[0, 0] == pytest.approx(128 + ((38.2946 + 8) * 2 - 128) / 1.3)
    eye_dist = np.hypot(73.5318 - 38.2946, 51.5014 - 51.6963) * 2 / 1.3
    assert np.linalg.norm(t[1] - t[0]) == pytest.approx(eye_dist, rel=1e-6)
    assert np.linalg.norm(crop_template(256, 1.0)[1] - crop_template(256, 1.0)[0]) == pytest.approx(eye_dist * 1.3)


def test_crop_of_a_face_with_known_landmarks() -> None:
    # a face whose landmarks are the 112 template scaled x1.5, rotated 10 degrees and moved to (300, 200)
    ang = np.radians(10)
    rot = 1.5 * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    lm = (ARCFACE_TEMPLATE - 56) @ rot.T + np.array([300.0, 200.0])
    img = np.zeros((480, 640, 3), np.uint8)
    for x, y in lm:
        img[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2] = 255  # dots at the points
    crop, m, lm_crop = crop_face(img, lm, size=256, margin=1.3)
    assert crop.shape == (256, 256, 3)
    np.testing.assert_allclose(lm_crop, crop_template(256, 1.3), atol=1e-6)  # exact similarity: exact landmarks
    # scale of the transform: template eye distance in the crop / eye distance in the image
    scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
    assert scale == pytest.approx((2 / 1.3) / 1.5, rel=1e-6)
    for x, y in lm_crop:  # the dots land on the landmarks in the crop
        assert crop[int(round(y)), int(round(x))].max() > 100


def _det(cx: float, cy: float, side: float) -> tuple:
    box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
    return box, 0.99, np.tile([cx, cy], (5, 1)).astype(float)


def test_tracking_keeps_the_first_largest_face() -> None:
    # person A (large, left) drifts right and shrinks; person B (right) grows larger than A later
    frames = [
        (0, [_det(100, 100, 60), _det(300, 100, 40)]),
        (3, [_det(300, 100, 70), _det(120, 100, 50)]),  # B now larger: A is still followed (nearest box)
        (6, [_det(300, 100, 70)]),  # A missing: B is 180 px away, beyond one box side -> no face for A
        (9, [_det(140, 105, 50), _det(300, 100, 70)]),
    ]
    tracks = track_faces(frames)
    assert len(tracks) == 1
    assert [f.frame for f in tracks[0].faces] == [0, 3, 9]
    assert [round(float(f.box[0] + f.box[2]) / 2) for f in tracks[0].faces] == [100, 120, 140]
    both = track_faces(frames, all_faces=True)
    assert len(both) == 2 and [f.frame for f in both[1].faces] == [0, 3, 6, 9]
    assert track_faces([(0, []), (1, [_det(50, 50, 20)])])[0].faces[0].frame == 1  # starts at the first face
