"""Face sidecars: the faces of every frame of a video (or of an image) stored beside it as JSON.

A sidecar ``<stem>.faces.json`` next to ``<stem>.avi`` (or ``.mp4``, ``.png``, ...) lists, per frame, the faces
a detector found or that a generator drew: box ``(x1, y1, x2, y2)``, score and the five landmarks in ArcFace order
(image-left eye, image-right eye, nose tip, mouth left, mouth right), all in pixels of the frame. Synthetic clips
(``medvit data synth deepfake``) carry one, because no face detector with offline weights is guaranteed to be
installed (SCRFD needs a model folder, MTCNN and dlib are optional extras) and none is trained on drawn faces;
users can write one for footage whose faces were annotated or detected by another tool, and the deepfake app
then reads the faces from it instead of running a detector (:class:`SidecarFaces`).

Format::

    {"format": "medvit-faces", "version": 1, "frame_size": [W, H], "frames": [[{"box": [..4], "score": s,
     "landmarks": [[x, y] x5]}, ...], ...]}

``frames[i]`` holds the faces of frame ``i`` (an empty list: no face in that frame).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.errors import DataError
from medvit.shared.files import write_json_atomic

__all__ = ["SIDECAR_FORMAT", "SidecarFaces", "read_face_sidecar", "sidecar_path", "write_face_sidecar"]

SIDECAR_FORMAT = "medvit-faces"
_SUFFIX = ".faces.json"

Detection = tuple[np.ndarray, float, np.ndarray]
"""``(box [4], score, landmarks [5, 2])``, as the shared detectors return them."""


def sidecar_path(media: str | os.PathLike[str]) -> Path:
    """``<folder>/<stem>.faces.json`` of a video or image file."""
    p = Path(media)
    return p.with_name(p.stem + _SUFFIX)


def write_face_sidecar(
    media: str | os.PathLike[str], frames: Sequence[Sequence[Detection]], frame_size: tuple[int, int]
) -> Path:
    """Write the sidecar of ``media`` (atomically).

    Args:
        media: the video or image the faces belong to.
        frames: per frame, its faces as ``(box, score, landmarks)``.
        frame_size: (width, height) of the frames.

    Returns:
        The sidecar's path.
    """
    data = {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "frame_size": [int(frame_size[0]), int(frame_size[1])],
        "frames": [
            [
                {
                    "box": [round(float(v), 2) for v in np.asarray(box).reshape(4)],
                    "score": round(float(score), 4),
                    "landmarks": np.round(np.asarray(lm, dtype=np.float64).reshape(5, 2), 2).tolist(),
                }
                for box, score, lm in faces
            ]
            for faces in frames
        ],
    }
    return write_json_atomic(sidecar_path(media), data, indent=None)


def _face(entry: Any, where: str) -> Detection:
    try:
        box = np.asarray(entry["box"], dtype=np.float64).reshape(4)
        lm = np.asarray(entry["landmarks"], dtype=np.float64).reshape(5, 2)
        score = float(entry.get("score", 1.0))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DataError(f"{where}: a face needs box [4], landmarks [5][2] and a score") from None
    if not (np.isfinite(box).all() and np.isfinite(lm).all() and np.isfinite(score)):
        raise DataError(f"{where}: non-finite face coordinates")
    return box, score, lm


def read_face_sidecar(path: str | os.PathLike[str]) -> list[list[Detection]]:
    """Per frame, the faces of a sidecar file.

    Raises:
        DataError: unreadable, not a faces sidecar, or a malformed face (naming the file and frame).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the face sidecar ({err})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT or not isinstance(data.get("frames"), list):
        raise DataError(f"{path}: not a {SIDECAR_FORMAT} sidecar")
    out = []
    for i, faces in enumerate(data["frames"]):
        if not isinstance(faces, list):
            raise DataError(f"{path}: frame {i}: expected a list of faces")
        out.append([_face(f, f"{path}: frame {i}") for f in faces])
    return out


class SidecarFaces:
    """A per-frame face source backed by a sidecar: ``detect(frame_index) -> [(box, score, landmarks)]``.

    Args:
        path: the sidecar file.

    Raises:
        DataError: see :func:`read_face_sidecar`.
    """

    name = "sidecar"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.frames = read_face_sidecar(self.path)

    def __len__(self) -> int:
        return len(self.frames)

    def detect(self, frame_index: int) -> list[Detection]:
        """The faces of frame ``frame_index`` (none past the sidecar's last frame)."""
        return list(self.frames[frame_index]) if 0 <= frame_index < len(self.frames) else []
