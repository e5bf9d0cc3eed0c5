"""``deepfake predict``: fake probabilities of videos, image folders or single images, as a batch job.

Per input (a video, or an image as a one-frame video): the evenly spaced frames are decoded, the faces found and
tracked (:mod:`medvit.apps.deepfake.faces`), each tracked face cropped as in ``prepare`` (the run's crop size and
margin) and scored. Outputs in ``OUT``:

* ``frames/<input>.csv``: per scored face: track, frame index, time (s), box, fake probability, predicted
  compression level;
* ``strips/<input>.png``: a strip of the scored crops with their probabilities (the sampled frames marked
  "no face" when none was found);
* ``videos.csv``: per input (per track with ``--all-faces``): status ``ok`` / ``no_face`` / ``error``, mean fake
  probability, the decision at ``--threshold``, frames used, frames without a face, the majority predicted
  compression level; a video without any face is ``no_face`` and gets no score;
* ``frames.csv`` (every frame row), ``manifest.csv`` (the batch runner's), ``predict.json`` (the run and options
  used; ``deepfake evaluate`` reads the training levels from it), ``predict.log``.

Decoding, detection and cropping run in loader threads while the model scores the previous video (the shared
batch runner; resume, ``--overwrite``, locks and sharding come with it).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvit.apps.deepfake.config import LEVELS
from medvit.apps.deepfake.faces import IMAGE_SUFFIXES, VIDEO_SUFFIXES, FaceSource, crop_face, frame_time, video_faces
from medvit.apps.deepfake.model import GGViTStyle, preprocess_crops
from medvit.apps.deepfake.model_file import load_run_model
from medvit.shared.engine import distributed as D
from medvit.shared.engine.batch import BatchJob, BatchSummary, output_relpath, resolve_inputs, run_batch
from medvit.shared.engine.fit import resolve_device
from medvit.shared.engine.lock import FolderLock
from medvit.shared.errors import ConfigError
from medvit.shared.files import write_csv_atomic, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["FRAME_COLUMNS", "VIDEO_COLUMNS", "PredictJob", "PredictResult", "predict", "score_crops"]

FRAME_COLUMNS = ("path", "track", "frame", "time", "x1", "y1", "x2", "y2", "fake_prob", "level_pred")
VIDEO_COLUMNS = (
    "path",
    "track",
    "status",
    "fake_prob",
    "decision",
    "threshold",
    "frames_used",
    "frames_no_face",
    "frames_sampled",
    "frames_total",
    "level_pred",
    "detector",
    "message",
)


def score_crops(
    model: GGViTStyle, crops: np.ndarray, landmarks: np.ndarray, device: torch.device, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Fake probability ``[N]`` and predicted compression level index ``[N]`` of crops ``[N, S, S, 3]``."""
    probs, levels = [], []
    with torch.inference_mode():
        for i in range(0, len(crops), batch_size):
            x = preprocess_crops(crops[i : i + batch_size]).to(device, non_blocking=True)
            lm = torch.from_numpy(np.asarray(landmarks[i : i + batch_size], np.float32)).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model(x, lm)
            probs.append(torch.sigmoid(out["logit"].float()).cpu().numpy())
            levels.append(out["quality_logits"].float().argmax(-1).cpu().numpy())
    if not probs:
        return np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(probs), np.concatenate(levels)


def _strip(crops: list[np.ndarray], labels: list[str], title: str, side: int = 112) -> np.ndarray:
    """RGB strip: the crops side by side with a caption each, a title bar on top."""
    import cv2

    tiles = []
    for crop, text in zip(crops, labels, strict=True):
        tile = cv2.resize(np.ascontiguousarray(crop), (side, side), interpolation=cv2.INTER_AREA)
        tile = np.vstack([tile, np.full((20, side, 3), 255, np.uint8)])
        cv2.putText(tile, text, (4, side + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    body = np.hstack(tiles) if tiles else np.full((side + 20, side, 3), 255, np.uint8)
    bar = np.full((24, body.shape[1], 3), 255, np.uint8)
    cv2.putText(
        bar, title[: max(8, body.shape[1] // 7)], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.vstack([bar, body])


class PredictJob(BatchJob):
    """Batch job: load = decode + detect + track + crop (threads); process = score, write CSV and strip."""

    description = "deepfake predict"
    log_name = "predict.log"

    def __init__(
        self,
        model: GGViTStyle,
        spec: Mapping[str, Any],
        source: FaceSource,
        *,
        root: Path,
        frames: int,
        all_faces: bool,
        threshold: float,
        batch_size: int,
        device: torch.device,
        strip_frames: int = 8,
    ) -> None:
        self.model, self.source, self.root = model, source, root
        self.size, self.margin = int(spec["crop"]["size"]), float(spec["crop"]["margin"])
        self.frames, self.all_faces, self.threshold = frames, all_faces, threshold
        self.batch_size, self.device, self.strip_frames = batch_size, device, strip_frames

    def outputs_for(self, item: Path) -> list[Path]:
        return [
            Path("frames") / output_relpath(item, self.root, ".csv"),
            Path("strips") / output_relpath(item, self.root, ".png"),
        ]

    def load(self, item: Path) -> dict[str, Any]:
        frames, tracks, info = video_faces(item, self.frames, self.source, all_faces=self.all_faces)
        out = []
        for t, track in enumerate(tracks):
            crops, lms = [], []
            for f in track.faces:
                crop, _, lm = crop_face(frames[f.frame], f.landmarks, self.size, self.margin)
                crops.append(crop)
                lms.append(lm)
            out.append({"track": t, "faces": track.faces, "crops": crops, "landmarks": lms})
        sampled = [frames[i] for i in sorted(frames)[: self.strip_frames]] if not out else []
        return {"tracks": out, "info": info, "fps": info["fps"], "no_face_frames": sampled}

    def process(self, item: Path, loaded: Any, tmp_outputs: list[Path]) -> Mapping[str, Any]:
        import cv2

        info, rows, results, strip_crops, strip_text = loaded["info"], [], [], [], []
        for tr in loaded["tracks"]:
            p, lv = score_crops(
                self.model, np.stack(tr["crops"]), np.stack(tr["landmarks"]), self.device, self.batch_size
            )
            for f, prob, level in zip(tr["faces"], p, lv, strict=True):
                t = frame_time(f.frame, info["fps"])
                rows.append(
                    {
                        "path": str(item),
                        "track": tr["track"],
                        "frame": f.frame,
                        "time": "" if np.isnan(t) else round(t, 4),
                        **dict(zip(("x1", "y1", "x2", "y2"), (round(float(v), 1) for v in f.box), strict=True)),
                        "fake_prob": round(float(prob), 6),
                        "level_pred": LEVELS[int(level)],
                    }
                )
            used = {f.frame for f in tr["faces"]}
            results.append(
                {
                    "track": tr["track"],
                    "fake_prob": float(p.mean()),
                    "frames_used": len(used),
                    "frames_no_face": info["frames_sampled"] - len(used),
                    "level_pred": LEVELS[int(np.bincount(lv, minlength=3).argmax())],
                }
            )
            if tr["track"] == 0:
                k = np.linspace(0, len(p) - 1, min(self.strip_frames, len(p))).astype(int)
                strip_crops += [tr["crops"][i] for i in k]
                strip_text += [f"#{tr['faces'][i].frame} p={p[i]:.2f}" for i in k]
        write_csv_atomic(tmp_outputs[0], rows, FRAME_COLUMNS)
        if results:
            r0 = results[0]
            title = f"{item.name}: fake {r0['fake_prob']:.3f} ({self._decision(r0['fake_prob'])})"
        else:
            strip_crops, strip_text = loaded["no_face_frames"], ["no face"] * len(loaded["no_face_frames"])
            title = f"{item.name}: no face"
        ok = cv2.imwrite(str(tmp_outputs[1]), _strip(strip_crops, strip_text, title)[..., ::-1])
        if not ok:
            raise OSError(f"cannot write {tmp_outputs[1]}")
        return {
            "result": "ok" if results else "no_face",
            "tracks_json": json.dumps(results),
            "frames_sampled": info["frames_sampled"],
            "frames_total": info["frames_total"],
            "detector": info["detector"],
        }

    def _decision(self, prob: float) -> str:
        return "fake" if prob > self.threshold else "real"


def _video_rows(manifest: Path, threshold: float) -> list[dict[str, Any]]:
    rows = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            base = {
                "path": r["input"],
                "threshold": threshold,
                "detector": r.get("detector", ""),
                "frames_sampled": r.get("frames_sampled", ""),
                "frames_total": r.get("frames_total", ""),
            }
            if r["status"] not in ("ok", "skipped"):  # skipped: finished by an earlier run (columns kept)
                rows.append({**base, "track": "", "status": "error", "message": r.get("message", "")})
                continue
            tracks = json.loads(r.get("tracks_json") or "[]")
            if not tracks:
                rows.append(
                    {
                        **base,
                        "track": "",
                        "status": "no_face",
                        "frames_used": 0,
                        "frames_no_face": r.get("frames_sampled", ""),
                        "message": "no face in any sampled frame",
                    }
                )
            for t in tracks:
                prob = float(t["fake_prob"])
                rows.append(
                    {
                        **base,
                        **t,
                        "status": "ok",
                        "fake_prob": round(prob, 6),
                        "decision": "fake" if prob > threshold else "real",
                        "message": "",
                    }
                )
    return rows


def _frame_rows(out_dir: Path, manifest: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            first = (r.get("outputs") or "").split(";")[0]
            if r["status"] in ("ok", "skipped") and first and (out_dir / first).is_file():
                with open(out_dir / first, newline="", encoding="utf-8") as f2:
                    rows += list(csv.DictReader(f2))
    return rows


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` returns: the tables, counts, exit code and a one-line summary."""

    videos_csv: Path
    frames_csv: Path
    strips: Path
    videos: int
    fake: int
    no_face: int
    errors: int
    exit_code: int
    line: str


def _folder_outputs(summary: BatchSummary, out_dir: Path, threshold: float) -> list[dict[str, Any]]:
    if not summary.final:
        return []
    rows = _video_rows(summary.manifest_path, threshold)
    write_csv_atomic(out_dir / "videos.csv", rows, VIDEO_COLUMNS)
    write_csv_atomic(out_dir / "frames.csv", _frame_rows(out_dir, summary.manifest_path), FRAME_COLUMNS)
    return rows


def _result(rows: list[dict[str, Any]], summary: BatchSummary, out_dir: Path, threshold: float) -> PredictResult:
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "no_face", "error")}
    fake = sum(1 for r in rows if r.get("decision") == "fake")
    line = summary.line
    if summary.final:
        line = (
            f"{len(rows)} videos: {counts['ok']} scored ({fake} fake at {threshold:g}), {counts['no_face']} "
            f"without a face, {counts['error']} errors — see {out_dir / 'videos.csv'}"
        )
    return PredictResult(
        out_dir / "videos.csv",
        out_dir / "frames.csv",
        out_dir / "strips",
        len(rows),
        fake,
        counts["no_face"],
        counts["error"],
        summary.exit_code,
        line,
    )


def predict(
    run: str | os.PathLike[str],
    inp: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    frames: int = 32,
    threshold: float = 0.5,
    all_faces: bool = False,
    detector: str = "auto",
    models: str | os.PathLike[str] | None = None,
    min_face_score: float | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    overwrite: bool = False,
    quiet: bool = False,
) -> PredictResult:
    """Score videos / images with a trained run (module docstring for the outputs).

    Args:
        run: run directory (or ``model.safetensors`` with its sidecar).
        inp: a video, an image, a folder (recursive) or a ``.txt`` list of them.
        out: output folder.
        frames: evenly spaced frames per video (0: all).
        threshold: a video is ``fake`` when its mean probability is above it.
        all_faces: score every face track, not only the largest face's.
        detector: ``auto`` (the video's face sidecar if present, else SCRFD/MTCNN/dlib), ``sidecar``, ``scrfd``,
            ``mtcnn``, ``dlib``.
        models: insightface model folder (SCRFD).
        min_face_score: detector confidence threshold (None: the detector's default).
        batch_size: crops per forward pass.
        workers: loader threads.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        overwrite: redo inputs already scored in ``out``.
        quiet: no progress bar.

    Returns:
        A :class:`PredictResult`.
    """
    if not 0.0 <= threshold <= 1.0 or frames < 0 or batch_size < 1 or workers < 0:
        raise ConfigError("need --threshold in [0, 1], --frames >= 0, --batch-size >= 1, --workers >= 0")
    dev = resolve_device(device)
    model, spec = load_run_model(run)
    model = model.to(dev).eval()
    source = FaceSource(detector, models, min_face_score)
    source.check()
    items = resolve_inputs(inp, VIDEO_SUFFIXES + IMAGE_SUFFIXES)
    root = Path(os.path.commonpath([str(p.parent) for p in items]))
    D.init_distributed(str(dev), required=False)
    job = PredictJob(
        model,
        spec,
        source,
        root=root,
        frames=frames,
        all_faces=all_faces,
        threshold=threshold,
        batch_size=batch_size,
        device=dev,
    )
    out_dir = Path(out).expanduser()
    with FolderLock(out_dir, "deepfake predict", rank=D.rank(), world=D.world_size()):
        summary = run_batch(job, items, out_dir, overwrite=overwrite, workers=workers, quiet=quiet)
        rows = _folder_outputs(summary, out_dir, threshold)
        if summary.final:
            write_json_atomic(
                out_dir / "predict.json",
                {
                    "run": str(Path(run).expanduser().resolve()),
                    "train": spec.get("train", {}),
                    "frames": frames,
                    "threshold": threshold,
                    "all_faces": all_faces,
                    "input": str(Path(inp).expanduser().resolve()),
                },
            )
    return _result(rows, summary, out_dir, threshold)
