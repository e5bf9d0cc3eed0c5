"""Evaluation of a face-image quality measure on verification pairs: EDC curves, verification accuracy, plots.

The metric itself (discard protocol, thresholds, AUC) lives in :mod:`medvit.shared.metrics.quality`; this module
joins quality scores and embeddings to a pair list and draws the curves. Embedding sources, as the CR-FIQA
protocol uses several face-recognition models:

* ``fiqa``: our model's embedding head (the FR half of ViT-FIQA), from ``--weights``;
* a path to an insightface recognition ONNX (``w600k_r50.onnx``, ``glintr100.onnx``...), run by onnxruntime
  through ``insightface.model_zoo.get_model`` on the aligned crops (BGR, as insightface expects);
* a folder of ``<image stem>.npy`` embeddings (the layout of CR-FIQA's ``feature_extraction`` scripts).

Verification accuracy during training is insightface's protocol (``eval/verification.py``): embeddings of the
image plus its horizontal flip, L2-normalised, cosine similarity, the best threshold chosen on 9 folds and
applied to the 10th, mean over the folds.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit.apps.fiqa.data import PairSet
from medvit.shared.errors import DataError
from medvit.shared.metrics.quality import EDCResult

logger = logging.getLogger(__name__)

__all__ = [
    "QualityTable",
    "embed_crops",
    "plot_edc",
    "read_quality_csv",
    "verification_accuracy",
    "write_csv_atomic",
]


def write_csv_atomic(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` as CSV through a temp file + ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore", restval="")
            w.writeheader()
            for r in rows:
                w.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ============================================================================= quality scores
@dataclass
class QualityTable:
    """Quality per image from a ``scores.csv`` of ``medvit fiqa score`` (or any ``path,quality`` CSV).

    Only each image's first face (face index 0, the largest) with status ``ok`` is used.
    """

    by_path: dict[str, float]
    by_stem: dict[str, float]

    def lookup(self, ref: str) -> float | None:
        if ref.startswith("bin:"):
            return self.by_stem.get(ref[4:])
        key = os.path.abspath(ref)
        if key in self.by_path:
            return self.by_path[key]
        return self.by_stem.get(Path(ref).stem)


def read_quality_csv(path: str | os.PathLike[str]) -> QualityTable:
    """Read ``path,quality`` (plus optional ``face``, ``status``) rows.

    Raises:
        DataError: missing file or columns.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: quality file not found")
    by_path: dict[str, float] = {}
    by_stem: dict[str, float] = {}
    stems_seen: dict[str, int] = {}
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "path" not in reader.fieldnames or "quality" not in reader.fieldnames:
            raise DataError(f"{p}: needs the columns path and quality (got {reader.fieldnames})")
        for row in reader:
            if row.get("status", "ok") != "ok" or row.get("face", "0") not in ("0", ""):
                continue
            try:
                q = float(row["quality"])
            except ValueError:
                continue
            ap = os.path.abspath(row["path"] if os.path.isabs(row["path"]) else p.parent / row["path"])
            by_path[row["path"]] = q
            by_path[ap] = q
            stem = Path(row["path"]).stem
            stems_seen[stem] = stems_seen.get(stem, 0) + 1
            by_stem[stem] = q
    # A stem shared by several files cannot identify an image.
    by_stem = {k: v for k, v in by_stem.items() if stems_seen[k] == 1}
    if not by_path:
        raise DataError(f"{p}: no scored faces (status ok)")
    return QualityTable(by_path, by_stem)


# ============================================================================= embeddings
def embed_crops(
    crops: Sequence[np.ndarray],
    forward: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 64,
) -> np.ndarray:
    """Run ``forward`` (``[B, 112, 112, 3]`` uint8 -> ``[B, D]``) over crops in batches; L2-normalise."""
    out = []
    for i in range(0, len(crops), batch_size):
        out.append(np.asarray(forward(np.stack(crops[i : i + batch_size])), dtype=np.float64))
    emb = np.concatenate(out) if out else np.zeros((0, 1))
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def onnx_embedder(path: str | os.PathLike[str]) -> Callable[[np.ndarray], np.ndarray]:
    """An insightface recognition ONNX as ``crops (RGB) -> embeddings``.

    Raises:
        DataError: not loadable or not a recognition model.
    """
    try:
        from insightface.model_zoo import get_model
    except ImportError as err:
        raise DataError(f"ONNX embeddings need insightface ({err}); `pip install medvit[face]`") from None
    try:
        model = get_model(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's own error types
        raise DataError(f"{path}: cannot load the recognition ONNX ({type(err).__name__}: {err})") from None
    if model is None or getattr(model, "taskname", None) != "recognition":
        raise DataError(f"{path}: not an insightface recognition (ArcFace) ONNX")
    model.prepare(ctx_id=-1)

    def forward(batch: np.ndarray) -> np.ndarray:
        return model.get_feat([np.ascontiguousarray(x[..., ::-1]) for x in batch])  # insightface wants BGR

    return forward


def _template_face_box(size: int = 112) -> tuple[int, int, int, int]:
    """dlib HOG's box for a face aligned to the ArcFace template, as (left, top, right, bottom).

    Every crop is aligned to the same template, so the box dlib's 5-point predictor expects can be derived once:
    on frontal photos the HOG box is ~2.09 inter-eye distances wide, centred on the eyes, its top 0.29 box widths
    above them ((19, 30, 93, 104) at 112 px; the detector itself finds (22, 31, 97, 105) on an aligned crop).
    """
    from medvit.shared.faces.align import ARCFACE_TEMPLATE

    tmpl = ARCFACE_TEMPLATE * (size / 112.0)
    eyes = tmpl[:2]
    width = 2.09 * float(np.linalg.norm(eyes[1] - eyes[0]))
    cx, ey = eyes.mean(0)
    left, top = cx - width / 2, ey - 0.29 * width
    return round(left), round(top), round(left + width), round(top + width)


def dlib_embedder() -> Callable[[np.ndarray], np.ndarray]:
    """dlib's ResNet face recognizer (128-d, ``face_recognition_models``) as ``crops (RGB) -> embeddings``.

    dlib aligns its own 150 px chip from its 5-point landmarks, so the predictor runs on each ArcFace crop in the
    template's face box (:func:`_template_face_box`) and ``compute_face_descriptor`` takes it from there. The chip
    (padding 0.25) reaches slightly beyond a 112 px ArcFace crop; that border is black, as in the crop.

    Raises:
        ConfigError: dlib or its model files are not installed (``pip install medvit[face]``).
    """
    from medvit.shared.faces.align import dlib_model_file, import_dlib

    dlib = import_dlib("--embeddings dlib")
    predictor = dlib.shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))
    recognizer = dlib.face_recognition_model_v1(str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")))

    rects: dict[int, Any] = {}  # crop size -> the template's face box (one size in practice)

    def forward(batch: np.ndarray) -> np.ndarray:
        out = []
        for crop in batch:
            img = np.ascontiguousarray(crop)
            size = img.shape[0]
            if size not in rects:
                rects[size] = dlib.rectangle(*_template_face_box(size))
            out.append(np.asarray(recognizer.compute_face_descriptor(img, predictor(img, rects[size])), np.float64))
        return np.stack(out)

    return forward


def npy_embeddings(folder: str | os.PathLike[str], refs: Sequence[str]) -> np.ndarray:
    """Embeddings ``<folder>/<stem>.npy`` for each ref (bin refs use their index as stem), L2-normalised."""
    root = Path(folder)
    vecs = []
    for ref in refs:
        stem = ref[4:] if ref.startswith("bin:") else Path(ref).stem
        f = root / f"{stem}.npy"
        if not f.is_file():
            raise DataError(f"{f}: embedding file not found (one <image stem>.npy per image expected)")
        vecs.append(np.load(f, allow_pickle=False).reshape(-1).astype(np.float64))
    emb = np.stack(vecs)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


# ============================================================================= verification accuracy
def verification_accuracy(
    emb_a: np.ndarray, emb_b: np.ndarray, issame: np.ndarray, folds: int = 10
) -> tuple[float, float]:
    """k-fold verification accuracy (insightface ``eval/verification.py`` protocol, cosine similarity).

    Args:
        emb_a: L2-normalised embeddings of the first images ``[N, D]``.
        emb_b: of the second images ``[N, D]``.
        issame: ``[N]`` bool.
        folds: folds (fewer when there are fewer pairs).

    Returns:
        (mean accuracy, standard deviation over folds).
    """
    sim = np.sum(emb_a * emb_b, axis=1)
    same = np.asarray(issame, dtype=bool)
    n = sim.size
    k = max(2, min(folds, n))
    idx = np.arange(n)
    thresholds = np.unique(np.concatenate([sim, [-1.0, 1.0]]))
    accs = []
    for f in range(k):
        test = idx % k == f
        train = ~test
        if not test.any() or not train.any():
            continue
        acc_train = [np.mean((sim[train] >= t) == same[train]) for t in thresholds]
        best = thresholds[int(np.argmax(acc_train))]
        accs.append(np.mean((sim[test] >= best) == same[test]))
    return float(np.mean(accs)), float(np.std(accs))


# ============================================================================= plots
def plot_edc(result: EDCResult, path: str | os.PathLike[str], title: str = "") -> Path:
    """Two panels (recomputed / fixed threshold), FNMR vs discarded fraction, one curve per FMR; AUCs in legends."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conventions = list(dict.fromkeys(c.convention for c in result.curves))
    fig = Figure(figsize=(6 * len(conventions), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, conv in enumerate(conventions, 1):
        ax = fig.add_subplot(1, len(conventions), i)
        for c in (c for c in result.curves if c.convention == conv):
            ax.plot(100 * c.discard, c.fnmr, marker="o", ms=3, label=f"FMR {c.fmr:g} (AUC {c.auc:.4f})")
        ax.set_xlabel("discarded pairs, lowest quality first (%)")
        ax.set_ylabel("FNMR")
        what = "threshold recomputed per level (CR-FIQA)" if conv == "recomputed" else "threshold fixed at 0% (ISO)"
        ax.set_title(what, fontsize=10)
        ax.set_xlim(0, 98)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def plot_histogram(qualities: np.ndarray, path: str | os.PathLike[str], title: str = "") -> Path:
    """Histogram of quality scores."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def plot_contact_sheet(
    lowest: Sequence[tuple[np.ndarray, float, str]],
    highest: Sequence[tuple[np.ndarray, float, str]],
    path: str | os.PathLike[str],
) -> Path:
    """Two rows of aligned crops: the lowest-quality faces (top) and the highest (bottom), with their scores."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def pair_rows(pairs: PairSet, sim: np.ndarray, q: np.ndarray) -> list[dict[str, Any]]:
    """Per-pair CSV rows: the two images, genuine flag, similarity, qualities and the pair quality."""
    from medvit.shared.metrics.quality import dissimilarity

    d = dissimilarity(sim)
    rows = []
    for k in range(len(pairs)):
        i, j = int(pairs.a[k]), int(pairs.b[k])
        rows.append(
            {
                "a": pairs.refs[i],
                "b": pairs.refs[j],
                "issame": int(pairs.issame[k]),
                "similarity": float(sim[k]),
                "dissimilarity": float(d[k]),
                "quality_a": float(q[i]),
                "quality_b": float(q[j]),
                "pair_quality": float(min(q[i], q[j])),
            }
        )
    return rows
