"""The prepared frame set (``deepfake prepare``'s ``dataset.json``) and the training frames.

:class:`Frames` reads the crops of the chosen videos (memory-mapped ``.npy``) with their landmarks, label and
compression level; in training it flips and re-compresses (JPEG at a random quality, or H.264-like: downscale
x2, JPEG, upscale) with its own generator, reseeded per sample by the engine (``reseed``). :class:`Balanced`
draws the two classes equally often per epoch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medvit.apps.deepfake.config import LEVELS
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["Balanced", "Frames", "PreparedSet", "load_prepared", "select_videos"]

# image-left eye <-> image-right eye, mouth left <-> mouth right when the crop is mirrored
_FLIP_ORDER = [1, 0, 2, 4, 3]


@dataclass(frozen=True)
class PreparedSet:
    """A prepared folder: its root, crop size and the video records of ``dataset.json``."""

    root: Path
    size: int
    videos: list[dict[str, Any]]


def load_prepared(root: str | os.PathLike[str]) -> PreparedSet:
    """Read ``ROOT/dataset.json`` of ``deepfake prepare``.

    Raises:
        DataError: missing or not a prepared deepfake folder.
    """
    root = Path(root).expanduser()
    path = root / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read ({err}); prepare the data with `medvit deepfake prepare`") from None
    if not isinstance(data, dict) or data.get("format") != "medvit-deepfake-frames":
        raise DataError(f"{path}: not a prepared deepfake dataset (run `medvit deepfake prepare`)")
    return PreparedSet(root, int(data["size"]), list(data["videos"]))


def select_videos(
    data: PreparedSet, split: str, methods: Sequence[str] | None, levels: Sequence[str]
) -> list[dict[str, Any]]:
    """Videos of ``split`` at ``levels``: every real one and the fakes of ``methods`` (None: every method)."""
    return [
        v
        for v in data.videos
        if v["split"] == split
        and v["level"] in levels
        and v["frames"] > 0
        and (v["label"] == 0 or methods is None or v["method"] in methods)
    ]


def _recompress(img: np.ndarray, rng: np.random.Generator, quality: tuple[int, int], video_like_p: float) -> np.ndarray:
    import cv2

    q = int(rng.integers(quality[0], quality[1] + 1))
    video_like = rng.random() < video_like_p
    src = img
    if video_like:  # low bit-rate H.264-like: coarser blocks and blur
        src = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(src), [cv2.IMWRITE_JPEG_QUALITY, q])
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else src
    if video_like:
        out = cv2.resize(out, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    return out


class Frames(Dataset):
    """Face crops of the given videos, one item per crop.

    Args:
        root: the prepared folder.
        videos: records of ``dataset.json`` (see :func:`select_videos`).
        augment: flip and re-compression (training).
        recompress_p, jpeg_quality, video_like_p, flip_p: augmentation (:class:`~.config.DataCfg`).
        max_frames: keep at most this many crops, evenly spread (0: all).

    Items: ``{"image": [3, S, S] float (mean/std 0.5), "landmarks": [5, 2], "label": long, "level": long (-1:
    unknown), "video": long (index into ``videos``)}``.
    """

    def __init__(
        self,
        root: Path,
        videos: Sequence[dict[str, Any]],
        *,
        augment: bool = False,
        recompress_p: float = 0.5,
        jpeg_quality: tuple[int, int] = (40, 100),
        video_like_p: float = 0.25,
        flip_p: float = 0.5,
        max_frames: int = 0,
    ) -> None:
        self.root = Path(root)
        self.videos = list(videos)
        self.augment = augment
        self.recompress_p, self.jpeg_quality = recompress_p, tuple(jpeg_quality)
        self.video_like_p, self.flip_p = video_like_p, flip_p
        self.landmarks: list[np.ndarray] = []
        index = []
        for k, v in enumerate(self.videos):
            meta = json.loads((self.root / v["crops"]).with_suffix(".json").read_text(encoding="utf-8"))
            self.landmarks.append(np.array([c["landmarks"] for c in meta["crops"]], np.float32).reshape(-1, 5, 2))
            index += [(k, j) for j in range(len(meta["crops"]))]
        if max_frames and len(index) > max_frames:
            index = [index[int(i)] for i in np.linspace(0, len(index) - 1, max_frames)]
        self.index = index
        self._arrays: dict[int, np.ndarray] = {}
        self._rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.index)

    def labels(self) -> np.ndarray:
        """Label of every item (0 real, 1 fake)."""
        return np.array([self.videos[k]["label"] for k, _ in self.index], np.int64)

    def reseed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def _array(self, k: int) -> np.ndarray:
        if k not in self._arrays:
            self._arrays[k] = np.load(self.root / self.videos[k]["crops"], mmap_mode="r", allow_pickle=False)
        return self._arrays[k]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k, j = self.index[i]
        v = self.videos[k]
        img = np.array(self._array(k)[j])
        lm = self.landmarks[k][j].copy()
        if self.augment:
            if self._rng.random() < self.flip_p:
                img = img[:, ::-1]
                lm = lm[_FLIP_ORDER]
                lm[:, 0] = img.shape[1] - lm[:, 0]
            if self._rng.random() < self.recompress_p:
                img = _recompress(img, self._rng, self.jpeg_quality, self.video_like_p)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return {
            "image": x,
            "landmarks": torch.from_numpy(lm),
            "label": torch.tensor(int(v["label"])),
            "level": torch.tensor(LEVELS.index(v["level"]) if v["level"] in LEVELS else -1),
            "video": torch.tensor(k),
        }


class Balanced(Dataset):
    """Both classes equally often: item ``i`` is class ``i % 2``, its ``(i // 2)``-th crop (cycling the smaller).

    An epoch is ``2 x`` the larger class; the loop's sampler shuffles the order. Forwards ``reseed``.
    """

    def __init__(self, frames: Frames) -> None:
        labels = frames.labels()
        self.frames = frames
        self.by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
        if not all(len(c) for c in self.by_class):
            raise DataError(
                "class-balanced sampling needs real and fake training frames; found "
                f"{len(self.by_class[0])} real, {len(self.by_class[1])} fake"
            )

    def __len__(self) -> int:
        return 2 * max(len(c) for c in self.by_class)

    def reseed(self, seed: int) -> None:
        self.frames.reseed(seed)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        members = self.by_class[i % 2]
        return self.frames[int(members[(i // 2) % len(members)])]
