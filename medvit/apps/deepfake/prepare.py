"""``deepfake prepare``: face crops of every video of a FaceForensics++ tree or of real/fake folders.

Inputs:

* the FF++ layout: ``original_sequences/<source>/<level>/videos/*`` (real) and
  ``manipulated_sequences/<method>/<level>/videos/<target>_<source>.*`` (fake), with the official split lists
  ``train.json``/``val.json``/``test.json`` (lists of [target, source] id pairs) in ``ROOT/splits/``, ``ROOT/`` or
  ``--splits DIR``; a video is in the split of its pair (a real video: of the pair its id belongs to);
* plain folders: ``ROOT/real/**`` and ``ROOT/fake/**`` (videos or images; an image is a one-frame video),
  optionally under ``ROOT/{train,val,test}/``; without split folders a video's split is drawn from a hash of its
  relative path (70 / 15 / 15 %), so it is stable across runs. Level ``unknown``, method ``fake``.

Each video becomes ``OUT/crops/<relative path>.npy`` (uint8 ``[n, S, S, 3]``, the crops of the tracked face in
its sampled frames, memory-mappable) and ``.json`` (per crop: frame index, time, box and score in the frame,
landmarks in the crop; plus the frames without a face). The work runs on the shared batch runner: a killed
prepare continues where it stopped (finished videos are skipped), a bad video gets an ``error`` row in
``OUT/manifest.csv``. ``OUT/dataset.json`` indexes every prepared video (label, method, level, split, counts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit.apps.deepfake.faces import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    FaceSource,
    crop_face,
    frame_time,
    video_faces,
)
from medvit.shared.engine.batch import BatchJob, run_batch
from medvit.shared.engine.lock import FolderLock
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.files import write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["DATASET_FORMAT", "PrepareResult", "VideoItem", "discover", "prepare"]

DATASET_FORMAT = "medvit-deepfake-frames"
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class VideoItem:
    """One input video and what its place in the tree says about it."""

    path: str
    rel: str
    label: int
    method: str
    level: str
    video_id: str
    split: str


def _split_lists(root: Path, splits_dir: Path | None) -> dict[str, str] | None:
    """{video id: split} from the official JSON pair lists, or None when there are none."""
    folders = [splits_dir] if splits_dir is not None else [root / "splits", root]
    for folder in folders:
        files = [folder / f"{s}.json" for s in _SPLITS]
        if all(f.is_file() for f in files):
            out: dict[str, str] = {}
            for s, f in zip(_SPLITS, files, strict=True):
                try:
                    pairs = json.loads(f.read_text(encoding="utf-8"))
                    for a, b in pairs:
                        out[str(a)], out[str(b)] = s, s
                except (OSError, ValueError, TypeError) as err:
                    raise DataError(f"{f}: not an FF++ split list of [target, source] pairs ({err})") from None
            return out
        if splits_dir is not None:
            raise DataError(f"--splits {folder}: needs train.json, val.json and test.json")
    return None


def _hash_split(rel: str) -> str:
    h = int(hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if h < 70 else "val" if h < 85 else "test"


def _media(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


_FFPP = re.compile(
    r"^(?:original_sequences/(?P<real>[^/]+)|manipulated_sequences/(?P<method>[^/]+))/(?P<level>[^/]+)/videos/"
)


def _ffpp_items(root: Path, splits_dir: Path | None) -> list[VideoItem]:
    split_of = _split_lists(root, splits_dir)
    if split_of is None:
        logger.warning("%s: no train/val/test.json split lists; splits drawn from a hash of each path", root)
    items = []
    for p in _media(root / "original_sequences", VIDEO_SUFFIXES) + _media(
        root / "manipulated_sequences", VIDEO_SUFFIXES
    ):
        rel = p.relative_to(root).as_posix()
        m = _FFPP.match(rel)
        if m is None:
            continue
        vid = p.stem
        target = vid.split("_")[0]
        split = split_of.get(target) if split_of is not None else _hash_split(rel)
        if split is None:
            logger.info("%s: id %s is in no split list; skipped", rel, target)
            continue
        fake = m.group("method") is not None
        method = m.group("method") if fake else "original"
        items.append(VideoItem(str(p), rel, int(fake), method, m.group("level"), vid, split))
    return items


def _folder_items(root: Path) -> list[VideoItem]:
    items = []
    bases = [(root / s, s) for s in _SPLITS if (root / s).is_dir()] or [(root, None)]
    for base, split in bases:
        for label, name in ((0, "real"), (1, "fake")):
            for p in _media(base / name, VIDEO_SUFFIXES + IMAGE_SUFFIXES) if (base / name).is_dir() else []:
                rel = p.relative_to(root).as_posix()
                items.append(
                    VideoItem(
                        str(p),
                        rel,
                        label,
                        "fake" if label else "original",
                        "unknown",
                        rel.rsplit(".", 1)[0],
                        split or _hash_split(rel),
                    )
                )
    return items


def discover(root: str | os.PathLike[str], splits_dir: str | os.PathLike[str] | None = None) -> list[VideoItem]:
    """Every input video of an FF++ tree or of real/fake folders (module docstring), sorted by path.

    Raises:
        DataError: neither layout found, or no video in it.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "original_sequences").is_dir() or (root / "manipulated_sequences").is_dir():
        items = _ffpp_items(root, Path(splits_dir) if splits_dir else None)
    else:
        items = _folder_items(root)
    if not items:
        raise DataError(
            f"{root}: no videos found (expected FF++ original_sequences/ and manipulated_sequences/, or real/ and "
            f"fake/ folders of {', '.join(VIDEO_SUFFIXES)} videos or images)"
        )
    return sorted(items, key=lambda it: it.rel)


class PrepareJob(BatchJob):
    """Batch job: load = decode + detect + track + crop (threads); process = write the crops and their JSON."""

    description = "deepfake prepare"
    log_name = "prepare.log"

    def __init__(
        self, items: Mapping[str, VideoItem], source: FaceSource, *, frames: int, size: int, margin: float
    ) -> None:
        self.items = items
        self.source = source
        self.frames = frames
        self.size = size
        self.margin = margin

    def outputs_for(self, item: Path) -> list[Path]:
        stem = "crops/" + self.items[str(item)].rel.rsplit(".", 1)[0]
        return [Path(stem + ".npy"), Path(stem + ".json")]

    def load(self, item: Path) -> tuple[np.ndarray, dict[str, Any]]:
        frames, tracks, info = video_faces(item, self.frames, self.source)
        crops, records = [], []
        for f in tracks[0].faces if tracks else []:
            crop, _, lm = crop_face(frames[f.frame], f.landmarks, self.size, self.margin)
            crops.append(crop)
            records.append(
                {
                    "frame": f.frame,
                    "time": round(frame_time(f.frame, info["fps"]), 4),
                    "box": [round(float(v), 2) for v in f.box],
                    "score": round(f.score, 4),
                    "landmarks": np.round(lm, 3).tolist(),
                }
            )
        used = {r["frame"] for r in records}
        meta = {
            **asdict(self.items[str(item)]),
            **info,
            "size": self.size,
            "margin": self.margin,
            "crops": records,
            "frames_no_face": sorted(set(frames) - used),
        }
        arr = np.stack(crops) if crops else np.zeros((0, self.size, self.size, 3), np.uint8)
        return arr, meta

    def process(self, item: Path, loaded: Any, tmp_outputs: list[Path]) -> Mapping[str, Any]:
        arr, meta = loaded
        with open(tmp_outputs[0], "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        tmp_outputs[1].write_text(json.dumps(meta), encoding="utf-8")
        return {
            "frames_used": len(arr),
            "frames_no_face": len(meta["frames_no_face"]),
            "frames_total": meta["frames_total"],
            "detector": meta["detector"],
        }


@dataclass(frozen=True)
class PrepareResult:
    """What :func:`prepare` returns: the index, counts, and the batch summary's exit code and line."""

    dataset_json: Path
    videos: int
    frames: int
    frames_no_face: int
    videos_no_face: int
    errors: int
    exit_code: int
    line: str


def _index(out: Path, items: list[VideoItem], frames: int, size: int, margin: float) -> dict[str, Any]:
    videos = []
    for it in items:
        meta_path = out / ("crops/" + it.rel.rsplit(".", 1)[0] + ".json")
        if not meta_path.is_file():
            continue  # an error row in the manifest
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        videos.append(
            {
                **asdict(it),
                "crops": meta_path.with_suffix(".npy").relative_to(out).as_posix(),
                "frames": len(meta["crops"]),
                "frames_no_face": len(meta["frames_no_face"]),
            }
        )
    return {
        "format": DATASET_FORMAT,
        "version": 1,
        "frames_per_video": frames,
        "size": size,
        "margin": margin,
        "videos": videos,
    }


def prepare(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    frames: int = 32,
    size: int = 256,
    margin: float = 1.3,
    splits: str | os.PathLike[str] | None = None,
    detector: str = "auto",
    models: str | os.PathLike[str] | None = None,
    min_face_score: float | None = None,
    workers: int = 2,
    overwrite: bool = False,
    quiet: bool = False,
) -> PrepareResult:
    """Crop the tracked face of ``frames`` evenly spaced frames of every video (module docstring).

    Args:
        root: FF++ root or a folder with ``real/`` and ``fake/``.
        out: output folder (``dataset.json``, ``crops/``, ``manifest.csv``, ``prepare.log``).
        frames: frames per video (0: all).
        size: crop side (256).
        margin: margin around the template face (1.3).
        splits: folder with the official ``train/val/test.json`` (default: ``ROOT/splits`` or ``ROOT``).
        detector: ``auto``, ``sidecar``, ``scrfd``, ``mtcnn``, ``dlib``.
        models: insightface model folder (SCRFD).
        min_face_score: detector confidence threshold (None: the detector's default).
        workers: threads decoding and detecting ahead.
        overwrite: redo videos already prepared.
        quiet: no progress bar.

    Returns:
        A :class:`PrepareResult`.

    Raises:
        ConfigError: a bad option or no usable detector. DataError: no videos.
    """
    if frames < 0 or not 32 <= size <= 1024 or not 1.0 <= margin <= 3.0:
        raise ConfigError(
            f"need --frames >= 0, --size in [32, 1024], --margin in [1, 3]; got {frames}, {size}, {margin}"
        )
    items = discover(root, splits)
    source = FaceSource(detector, models, min_face_score)
    source.check()
    out_dir = Path(out).expanduser()
    job = PrepareJob({it.path: it for it in items}, source, frames=frames, size=size, margin=margin)
    with FolderLock(out_dir, "deepfake prepare"):
        summary = run_batch(
            job, [Path(it.path) for it in items], out_dir, overwrite=overwrite, workers=workers, quiet=quiet
        )
        index = _index(out_dir, items, frames, size, margin)
        path = write_json_atomic(out_dir / "dataset.json", index)
    vids = index["videos"]
    n_frames = sum(v["frames"] for v in vids)
    no_face = sum(v["frames_no_face"] for v in vids)
    empty = sum(1 for v in vids if v["frames"] == 0)
    line = (
        f"{len(vids)} videos prepared ({n_frames} face crops; {no_face} sampled frames without a face skipped, "
        f"{empty} videos without any face), {summary.error} errors — see {path}"
    )
    return PrepareResult(path, len(vids), n_frames, no_face, empty, summary.error, summary.exit_code, line)
