"""``fiqa score``: one quality per face, as a batch job over a folder.

Images are decoded, (detected and) aligned in loader threads while the model scores the previous batch
(:class:`ScoreJob` on the shared batch runner: manifest, resume, locks and sharding come with it). The manifest
keeps each image's faces as JSON; at the end the one process holding the whole manifest assembles
``scores.csv``: one row per face (``ok``), per image without a face (``no_face``) and per unreadable input
(``error``); plus a histogram of the qualities and a contact sheet of the lowest and highest scored faces.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medvit.apps.fiqa.convert import load_scoring_model
from medvit.apps.fiqa.data import read_face_file
from medvit.apps.fiqa.model import ViTFIQA, preprocess_faces
from medvit.shared.data.cards import MIN_FACE_SIZE
from medvit.shared.data.io import IMAGE_SUFFIXES, ReadError, list_folder
from medvit.shared.engine import distributed as D
from medvit.shared.engine.batch import BatchJob, BatchSummary, resolve_inputs, run_batch
from medvit.shared.engine.fit import resolve_device
from medvit.shared.engine.lock import FolderLock
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.faces.align import FaceAligner, align_face, given_crop
from medvit.shared.files import atomic_path, write_csv_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "ALIGNED_INPUT",
    "SCORE_COLUMNS",
    "ScoreJob",
    "ScoreResult",
    "plot_contact_sheet",
    "plot_histogram",
    "score",
]

_LANDMARK_COLUMNS = tuple(
    f"{p}_{c}" for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right") for c in ("x", "y")
)
SCORE_COLUMNS = (
    "path",
    "face",
    "status",
    "quality",
    "det_score",
    "detector",
    "x1",
    "y1",
    "x2",
    "y2",
    *_LANDMARK_COLUMNS,
    "message",
)
#: ``detector`` of the rows of ``--aligned`` inputs (no detection ran).
ALIGNED_INPUT = "aligned"


@dataclass(frozen=True)
class ScoreResult:
    """What :func:`score` returns.

    Attributes:
        scores_csv: ``OUT/scores.csv``.
        histogram: ``OUT/quality_hist.png`` (None without faces).
        contact_sheet: ``OUT/contact_sheet.png`` (None without faces).
        images: inputs.
        faces: scored faces.
        no_face: images without a face.
        errors: inputs that failed.
        exit_code: 1 if any input failed.
        line: one-line summary.
    """

    scores_csv: Path
    histogram: Path | None
    contact_sheet: Path | None
    images: int
    faces: int
    no_face: int
    errors: int
    exit_code: int
    line: str


# ============================================================================= the batch job
class ScoreJob(BatchJob):
    """Batch-runner job: load = decode + detect + align (threads), process_batch = one forward per batch."""

    description = "fiqa score"
    log_name = "score.log"

    def __init__(
        self, model: ViTFIQA, *, aligner: FaceAligner | None, all_faces: bool, batch_size: int, device: torch.device
    ) -> None:
        self.model = model
        self.aligner = aligner
        self.all_faces = all_faces
        self.batch_size = batch_size
        self.device = device
        self.detector = ALIGNED_INPUT if aligner is None else aligner.detector_name

    def outputs_for(self, item: Path) -> list[Path]:
        return []  # results live in the manifest columns; scores.csv is assembled at the end

    def load(self, item: Path) -> tuple[list[Any], list[Any]]:
        """(faces to score, detections rejected below ``--min-face-score``)."""
        if item.is_dir():  # only a folder the scan could not list is an item (see _unlistable)
            try:
                list_folder(item)
            except ReadError as err:
                raise DataError(f"{err}; the images in it were not scored") from None
            raise DataError(f"{item}: is a folder, expected an image file")
        img = read_face_file(item)
        if self.aligner is None:
            h, w = img.shape[:2]
            if min(h, w) < MIN_FACE_SIZE:
                raise DataError(
                    f"{item}: {w}x{h} px is below the minimum face size of {MIN_FACE_SIZE} px; "
                    "--aligned expects face crops (112x112)"
                )
            return [given_crop(img)], []
        faces, rejected = self.aligner.detect_faces(img, all_faces=self.all_faces)
        for r in rejected:
            # Logged, not scored: a low-confidence detection is often not a face (a round badge, a wheel).
            logger.info(
                "%s: rejected a %s detection with score %.3f < --min-face-score %g at box (%d, %d, %d, %d)",
                item,
                self.detector,
                r.score,
                self.aligner.min_score,
                *(round(float(v)) for v in r.box),
            )
        return faces, rejected

    def qualities(self, crops: list[np.ndarray]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), self.batch_size):
                x = preprocess_faces(crops[i : i + self.batch_size]).to(self.device, non_blocking=True)
                if self.device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        _, q = self.model(x)
                else:
                    _, q = self.model(x)
                out.append(q.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def process_batch(
        self, items: list[Path], loaded: list[Any], tmp_outputs: list[list[Path]]
    ) -> list[Mapping[str, Any] | None]:
        crops = [f.crop for faces, _ in loaded for f in faces]
        q = self.qualities(crops) if crops else np.zeros(0)
        results: list[Mapping[str, Any] | None] = []
        k = 0
        for faces, rejected in loaded:
            recs = []
            for f in faces:
                recs.append(
                    {
                        "q": round(float(q[k]), 6),
                        "box": [round(float(v), 2) for v in f.box],
                        "lm": [round(float(v), 2) for v in np.asarray(f.landmarks).reshape(-1)],
                        "det": None if f.score is None else round(float(f.score), 4),
                    }
                )
                k += 1
            results.append(
                {
                    "faces": len(faces),
                    "faces_json": json.dumps(recs, separators=(",", ":")),
                    "detector": self.detector,
                    "rejected_scores": " ".join(f"{r.score:.3f}" for r in rejected),
                }
            )
        return results


def _unlistable(folder: Path) -> bool:
    """True for a folder that cannot be listed: it becomes one input with an ``error`` row instead of vanishing
    from the scan (``os.walk`` skips such folders without a word)."""
    try:
        os.scandir(folder).close()
    except OSError:
        return True
    return False


# ============================================================================= scores.csv
def _face_rows(path: str, det: str, faces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for i, f in enumerate(faces):
        row: dict[str, Any] = {"path": path, "face": i, "status": "ok", "quality": f["q"], "message": ""}
        row["det_score"] = "" if f.get("det") is None else f["det"]
        row["detector"] = det
        row.update(zip(("x1", "y1", "x2", "y2"), f["box"], strict=True))
        row.update(zip(_LANDMARK_COLUMNS, f["lm"], strict=True))
        rows.append(row)
    return rows


def _item_rows(r: Mapping[str, str], detector: str) -> list[dict[str, Any]]:
    """``scores.csv`` rows of one manifest row (one per face, or one ``error`` / ``no_face`` row)."""
    path = r.get("input", "")
    det = r.get("detector") or detector  # the run that scored the item (a resumed run may differ)
    if r.get("status", "") == "error":
        return [{"path": path, "face": "", "status": "error", "detector": det, "message": r.get("message", "")}]
    try:
        faces = json.loads(r.get("faces_json") or "[]")
    except json.JSONDecodeError:
        bad = "unreadable manifest entry"
        return [{"path": path, "face": "", "status": "error", "detector": det, "message": bad}]
    if not faces:
        rejected = (r.get("rejected_scores") or "").split()
        message = "no face found"
        if rejected:
            message += f" ({len(rejected)} detection(s) below --min-face-score, scores {', '.join(rejected)})"
        return [{"path": path, "face": "", "status": "no_face", "detector": det, "message": message}]
    return _face_rows(path, det, faces)


def _score_rows(manifest: Path, detector: str) -> list[dict[str, Any]]:
    """``scores.csv`` rows from the manifest; ``detector`` names the detector of rows the manifest has none for."""
    with open(manifest, newline="", encoding="utf-8") as fh:
        return [row for r in csv.DictReader(fh) for row in _item_rows(r, detector)]


# ============================================================================= plots
def plot_histogram(qualities: np.ndarray, path: str | os.PathLike[str], title: str = "") -> Path:
    """Histogram of quality scores."""
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    q = np.asarray(qualities, dtype=np.float64)
    ax.hist(q, bins=min(50, max(5, q.size // 5)), color="tab:blue", alpha=0.8)
    ax.set_xlabel("quality (higher = better)")
    ax.set_ylabel("faces")
    if q.size:
        ax.axvline(float(np.median(q)), color="k", ls="--", lw=1, label=f"median {np.median(q):.3f}")
        ax.legend()
    ax.set_title(title or f"{q.size} faces")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return Path(path)


def plot_contact_sheet(
    lowest: Sequence[tuple[np.ndarray, float, str]],
    highest: Sequence[tuple[np.ndarray, float, str]],
    path: str | os.PathLike[str],
) -> Path:
    """Two rows of aligned crops: the lowest-quality faces (top) and the highest (bottom), with their scores."""
    cols = max(len(lowest), len(highest), 1)
    fig = Figure(figsize=(1.6 * cols, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    for r, (label, faces) in enumerate((("lowest quality", lowest), ("highest quality", highest))):
        for c in range(cols):
            ax = fig.add_subplot(2, cols, r * cols + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(faces):
                crop, q, name = faces[c]
                ax.imshow(crop)
                ax.set_title(f"{q:.3f}\n{name[:16]}", fontsize=7)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return Path(path)


def _realigned(rows: list[dict[str, Any]]) -> list[tuple[np.ndarray, float, str]]:
    """Each row's face re-read and re-aligned from its landmarks (unreadable images left out)."""
    out = []
    for r in rows:
        try:
            img = read_face_file(r["path"])
        except DataError:
            continue
        lm = np.array([float(r[c]) for c in _LANDMARK_COLUMNS]).reshape(5, 2)
        crop, _ = align_face(img, lm)
        out.append((crop, float(r["quality"]), Path(r["path"]).name))
    return out


def _contact_faces(rows: list[dict[str, Any]], n: int) -> tuple[list, list]:
    """Re-read and re-align the n lowest and n highest scored faces for the contact sheet."""
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: float(r["quality"]))
    return _realigned(ok[:n]), _realigned(ok[::-1][:n])


# ============================================================================= the command
def _folder_outputs(
    summary: BatchSummary, detector: str, out_dir: Path, inp: str | os.PathLike[str], contact: int
) -> tuple[list[dict[str, Any]], Path | None, Path | None]:
    """``scores.csv`` and the plots, written by the one process holding the folder's whole manifest."""
    if not summary.final:
        return [], None, None
    rows = _score_rows(summary.manifest_path, detector)
    write_csv_atomic(out_dir / "scores.csv", rows, SCORE_COLUMNS)
    q = np.array([float(r["quality"]) for r in rows if r["status"] == "ok"])
    if not q.size:
        return rows, None, None
    hist = plot_histogram(q, out_dir / "quality_hist.png", title=f"{q.size} faces, {Path(inp).name}")
    lo, hi = _contact_faces(rows, contact)
    return rows, hist, plot_contact_sheet(lo, hi, out_dir / "contact_sheet.png")


def _score_job(
    weights: str | os.PathLike[str] | None,
    *,
    aligned: bool,
    all_faces: bool,
    models: str | os.PathLike[str] | None,
    detector: str,
    min_face_score: float | None,
    batch_size: int,
    device: str,
) -> ScoreJob:
    """The model on its device and the face detector, checked before any input is read."""
    dev = resolve_device(device)
    model, _ = load_scoring_model(weights)
    model = model.to(dev).eval()
    if aligned and min_face_score is not None:
        raise ConfigError("--min-face-score applies to face detection; --aligned inputs are not detected")
    aligner = None if aligned else FaceAligner.create(detector, models, min_score=min_face_score)
    if aligner is not None:
        logger.info("face detector %s, --min-face-score %g", aligner.detector_name, aligner.min_score)
    return ScoreJob(model, aligner=aligner, all_faces=all_faces, batch_size=batch_size, device=dev)


def score(
    inp: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    aligned: bool = False,
    all_faces: bool = False,
    models: str | os.PathLike[str] | None = None,
    detector: str = "auto",
    min_face_score: float | None = None,
    batch_size: int = 64,
    workers: int = 2,
    threads: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    quiet: bool = False,
    contact: int = 8,
) -> ScoreResult:
    """Score face images (one quality per face, higher = better).

    Args:
        inp: image file, folder (recursive) or ``.txt`` list; a sub-folder that cannot be listed is an ``error`` row.
        out: output folder: ``scores.csv``, ``manifest.csv``, ``quality_hist.png``, ``contact_sheet.png``,
            ``score.log``.
        weights: see :func:`~medvit.apps.fiqa.convert.load_scoring_model`.
        aligned: inputs are aligned crops (resized to 112 if needed): no detection; an image whose shorter side
            is below :data:`~medvit.shared.data.cards.MIN_FACE_SIZE` is an ``error`` row.
        all_faces: score every detected face, not only the largest.
        models: insightface model folder (SCRFD detector).
        detector: ``auto``, ``scrfd``, ``mtcnn``, ``dlib``.
        min_face_score: detections scoring below it are not scored, only logged; None: the detector's default
            (:mod:`medvit.shared.faces.align`: scrfd 0.5, mtcnn 0.9, dlib 0.3).
        batch_size: faces per forward pass.
        workers: loader threads (decode + detect + align ahead of the forward pass).
        threads: torch intra-op threads (default: torch's).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        overwrite: redo images already scored in ``out``.
        quiet: no progress bar.
        contact: faces per row of the contact sheet.

    Returns:
        A :class:`ScoreResult`.
    """
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"need --batch-size >= 1 and --workers >= 0, got {batch_size}, {workers}")
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    job = _score_job(
        weights,
        aligned=aligned,
        all_faces=all_faces,
        models=models,
        detector=detector,
        min_face_score=min_face_score,
        batch_size=batch_size,
        device=device,
    )
    items = resolve_inputs(inp, IMAGE_SUFFIXES, dirs_as_items=_unlistable)
    D.init_distributed(str(job.device), required=False)  # RANK/WORLD_SIZE alone shard the inputs (a Slurm array)
    images_per_batch = batch_size if aligned or not all_faces else max(1, batch_size // 4)
    out_dir = Path(out).expanduser()
    # The folder stays locked until scores.csv and the plots are written (run_batch's own lock nests in this one),
    # so a second run cannot slip in between the manifest and the files built from it.
    with FolderLock(out_dir, "fiqa score", rank=D.rank(), world=D.world_size()):
        summary = run_batch(
            job, items, out_dir, overwrite=overwrite, workers=workers, batch_size=max(1, images_per_batch), quiet=quiet
        )
        rows, hist, sheet = _folder_outputs(summary, job.detector, out_dir, inp, contact)
    scores_csv = out_dir / "scores.csv"
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "no_face", "error")}
    images = len({r["path"] for r in rows})
    line = (
        f"{images} images: {counts['ok']} faces scored, {counts['no_face']} without a face, {counts['error']} "
        f"errors — see {scores_csv}"
        if summary.final
        else summary.line
    )
    return ScoreResult(
        scores_csv, hist, sheet, images, counts["ok"], counts["no_face"], counts["error"], summary.exit_code, line
    )
