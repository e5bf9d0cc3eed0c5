"""Frames and faces of a video: evenly spaced frames, a face per frame, tracks, and the 1.3-margin crops.

The conventions are DeepfakeBench's (SCLBD/DeepfakeBench ``preprocessing/preprocess.py``, config ``num_frames
32``): frames at ``np.linspace(0, n - 1, 32)`` (truncated to integers), the largest face, five landmarks aligned
by a similarity transform to the ArcFace template widened by 8 px (the 128 px variant of insightface's
``estimate_norm``) with an extra 1.3 margin, 256 px crops. Faces come from a per-frame source:

* a face sidecar beside the video (:mod:`medvit.shared.faces.sidecar`; synthetic clips carry one), used by
  ``detector="auto"`` when present and required by ``detector="sidecar"``;
* else a shared detector (:class:`medvit.shared.faces.align.FaceAligner`: SCRFD, MTCNN or dlib) with its
  per-detector confidence threshold.

Tracking: the first frame with a face starts a track at its largest face (``all_faces``: one track per face); in
each later frame a track takes the unclaimed face whose box centre is nearest to its last box centre, if within
one box side of it; otherwise that frame counts as a frame without a face for the track. So the same person is
followed when several faces are present, and a face that appears later in the video starts no new track.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.errors import DataError
from medvit.shared.faces.align import ARCFACE_TEMPLATE, umeyama_similarity
from medvit.shared.faces.sidecar import SidecarFaces, sidecar_path

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "FaceSource",
    "FrameFace",
    "Track",
    "crop_face",
    "crop_template",
    "read_frames",
    "sample_indices",
    "track_faces",
    "video_faces",
]

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
Detection = tuple[np.ndarray, float, np.ndarray]


def sample_indices(n_frames: int, num: int) -> list[int]:
    """Frame indices of ``num`` evenly spaced frames: ``np.linspace(0, n - 1, num)`` truncated, duplicates dropped.

    Args:
        n_frames: frames in the video.
        num: frames wanted (0: every frame).

    Returns:
        Sorted distinct indices (all frames when the video is shorter than ``num``).
    """
    if n_frames <= 0:
        return []
    if num <= 0 or num >= n_frames:
        return list(range(n_frames))
    return sorted({int(i) for i in np.linspace(0, n_frames - 1, num)})


def crop_template(size: int = 256, margin: float = 1.3) -> np.ndarray:
    """Where the five landmarks land in a crop: the ArcFace template shifted 8 px right at 128 px (insightface's
    128 px variant), scaled to ``size`` and shrunk towards the centre by ``margin`` (``[5, 2]``)."""
    t = (ARCFACE_TEMPLATE + np.array([8.0, 0.0])) * (size / 128.0)
    c = np.array([size / 2.0, size / 2.0])
    return c + (t - c) / margin


def crop_face(
    img: np.ndarray, landmarks: np.ndarray, size: int = 256, margin: float = 1.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align a face into a ``size`` crop with ``margin`` around the template face.

    Args:
        img: RGB uint8 ``[H, W, 3]``.
        landmarks: ``[5, 2]`` in ArcFace order, pixels of ``img``.
        size: crop side.
        margin: the template face is shrunk by this factor (1.3: DeepfakeBench).

    Returns:
        ``(crop [size, size, 3] uint8, M [2, 3] image -> crop, landmarks in the crop [5, 2])``.
    """
    import cv2

    m = umeyama_similarity(np.asarray(landmarks, dtype=np.float64), crop_template(size, margin))
    crop = cv2.warpAffine(np.ascontiguousarray(img), m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    lm = np.asarray(landmarks, dtype=np.float64) @ m[:, :2].T + m[:, 2]
    return crop, m, lm


def read_frames(path: str | os.PathLike[str], num: int) -> tuple[dict[int, np.ndarray], int, float]:
    """Decode the evenly spaced frames of a video, or an image as a one-frame video.

    Returns:
        ``({frame index: RGB uint8 frame}, frames in the video, frames per second (0 for an image))``.

    Raises:
        DataError: unreadable or empty file.
    """
    import cv2

    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from medvit.shared.data.io import read_image

        img, _ = read_image(path, mode="rgb")  # ReadError (a DataError) names the file
        if img.dtype != np.uint8:
            img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)  # 16-bit -> 8-bit
        return {0: np.ascontiguousarray(img)}, 1, 0.0
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(f"{path}: cannot open the video")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        wanted = set(sample_indices(n, num))
        frames: dict[int, np.ndarray] = {}
        for i in range(max(wanted, default=-1) + 1):
            if i in wanted:
                ok, f = cap.read()
                if not ok:
                    break
                frames[i] = np.ascontiguousarray(f[..., ::-1])
            elif not cap.grab():
                break
    finally:
        cap.release()
    if not frames:
        raise DataError(f"{path}: no decodable frame")
    return frames, n, fps


class FaceSource:
    """Faces per frame: the video's sidecar, or a shared detector (see the module docstring).

    Args:
        detector: ``auto`` (sidecar if present, else the shared ``auto`` detector), ``sidecar``, ``scrfd``,
            ``mtcnn``, ``dlib``.
        models: insightface model folder (SCRFD).
        min_score: detections below it are dropped (None: the detector's default).
    """

    def __init__(
        self, detector: str = "auto", models: str | os.PathLike[str] | None = None, min_score: float | None = None
    ) -> None:
        self.detector = detector
        self.models = models
        self.min_score = min_score
        self._aligner: Any = None

    def aligner(self) -> Any:
        """The shared detector, created on first use (so a folder of sidecar clips needs none)."""
        if self._aligner is None:
            from medvit.shared.faces.align import FaceAligner

            self._aligner = FaceAligner.create(
                "auto" if self.detector == "sidecar" else self.detector, self.models, min_score=self.min_score
            )
        return self._aligner

    def check(self) -> None:
        """Create the shared detector now unless every input may use sidecars (errors before any input is read)."""
        if self.detector not in ("auto", "sidecar"):
            self.aligner()

    def for_media(self, path: Path) -> tuple[str, Any]:
        """``(name, detect(frame_index, rgb) -> [Detection])`` for one video or image."""
        side = sidecar_path(path)
        if self.detector in ("auto", "sidecar") and side.is_file():
            faces = SidecarFaces(side)
            return "sidecar", lambda i, img: faces.detect(i)
        if self.detector == "sidecar":
            raise DataError(f"{path}: no face sidecar {side.name} (--detector sidecar)")
        aligner = self.aligner()

        def detect(i: int, img: np.ndarray) -> list[Detection]:
            faces, _ = aligner.detect_faces(img, all_faces=True)
            return [(f.box, float(f.score) if f.score is not None else 1.0, f.landmarks) for f in faces]

        return aligner.detector_name, detect


@dataclass
class FrameFace:
    """One face of one frame: frame index, box, detector score, landmarks (frame pixels)."""

    frame: int
    box: np.ndarray
    score: float
    landmarks: np.ndarray


@dataclass
class Track:
    """A face followed across the sampled frames."""

    faces: list[FrameFace] = field(default_factory=list)

    @property
    def last(self) -> FrameFace:
        return self.faces[-1]


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def track_faces(per_frame: Sequence[tuple[int, Sequence[Detection]]], all_faces: bool = False) -> list[Track]:
    """Follow faces over frames (module docstring): largest first, then the nearest box within one box side.

    Args:
        per_frame: ``(frame index, detections)`` in frame order.
        all_faces: one track per face of the first frame with faces (else the largest only).

    Returns:
        Tracks, the largest face's first.
    """
    tracks: list[Track] = []
    for idx, dets in per_frame:
        faces = sorted(
            (FrameFace(idx, np.asarray(b, float), float(s), np.asarray(lm, float)) for b, s, lm in dets),
            key=lambda f: -_area(f.box),
        )
        if not tracks:
            tracks = [Track([f]) for f in (faces if all_faces else faces[:1])]
            continue
        free = list(faces)
        for tr in tracks:
            if not free:
                break
            c = _centre(tr.last.box)
            dist = [float(np.linalg.norm(_centre(f.box) - c)) for f in free]
            j = int(np.argmin(dist))
            side = max(tr.last.box[2] - tr.last.box[0], tr.last.box[3] - tr.last.box[1])
            if dist[j] <= side:
                tr.faces.append(free.pop(j))
    return tracks


def video_faces(
    path: Path, num_frames: int, source: FaceSource, *, all_faces: bool = False
) -> tuple[dict[int, np.ndarray], list[Track], dict[str, Any]]:
    """Decode a video's sampled frames, find and track the faces.

    Returns:
        ``(frames {index: RGB}, tracks, info {"frames_total", "fps", "frames_sampled", "detector"})``.
    """
    frames, n, fps = read_frames(path, num_frames)
    name, detect = source.for_media(path)
    per_frame = [(i, detect(i, img)) for i, img in sorted(frames.items())]
    tracks = track_faces(per_frame, all_faces)
    info = {"frames_total": n, "fps": fps, "frames_sampled": len(frames), "detector": name}
    return frames, tracks, info


def frame_time(index: int, fps: float) -> float:
    """Seconds from the start of the video (NaN for an image or an unknown rate)."""
    return index / fps if fps > 0 else math.nan
