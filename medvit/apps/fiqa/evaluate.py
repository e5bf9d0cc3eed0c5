"""``fiqa evaluate``: a face-image quality measure on verification pairs (EDC curves, verification accuracy, plots).

:func:`evaluate` is the command; the rest is its plumbing. The metric itself (discard protocol, thresholds, AUC)
lives in :mod:`medvit.shared.metrics.quality`; this module joins quality scores and embeddings to a pair list and
draws the curves. Embedding sources, as the CR-FIQA protocol uses several face-recognition models:

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
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medvit.apps.fiqa.convert import load_scoring_model
from medvit.apps.fiqa.data import PairSet, read_pairs
from medvit.apps.fiqa.model import ViTFIQA, preprocess_faces
from medvit.shared.engine.fit import resolve_device
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.faces.align import ARCFACE_TEMPLATE, dlib_model_file, given_crop, import_dlib
from medvit.shared.files import atomic_path, write_csv_atomic, write_json_atomic
from medvit.shared.metrics.quality import EDCResult, dissimilarity, edc, pair_quality

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluateResult",
    "QualityTable",
    "dlib_embedder",
    "embed_crops",
    "evaluate",
    "npy_embeddings",
    "onnx_embedder",
    "pair_rows",
    "plot_edc",
    "read_quality_csv",
    "verification_accuracy",
]

EDC_COLUMNS = ("convention", "fmr", "discard", "fnmr", "threshold", "kept_pairs", "kept_genuine")
SUMMARY_COLUMNS = ("convention", "fmr", "fnmr_0", "auc", "pauc_20", "pauc_30")
PAIR_COLUMNS = ("a", "b", "issame", "similarity", "dissimilarity", "quality_a", "quality_b", "pair_quality")


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return Path(path)


def pair_rows(pairs: PairSet, sim: np.ndarray, q: np.ndarray) -> list[dict[str, Any]]:
    """Per-pair CSV rows: the two images, genuine flag, similarity, qualities and the pair quality."""
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


# ============================================================================= the command
@dataclass(frozen=True)
class EvaluateResult:
    """What :func:`evaluate` returns: output paths and the summary rows (one per convention x FMR)."""

    edc_csv: Path
    summary_csv: Path
    plot: Path
    pairs_csv: Path
    summary: list[dict[str, Any]]
    accuracy: float


def _read_edc_pairs(pairs_path: str | os.PathLike[str], images: str | os.PathLike[str] | None) -> PairSet:
    """The pair list, refused unless it holds both genuine and impostor pairs."""
    pairs = read_pairs(pairs_path, images)
    n_genuine = int(np.count_nonzero(pairs.issame))
    if n_genuine == 0 or n_genuine == len(pairs):
        raise DataError(
            f"{pairs_path}: an EDC needs both genuine and impostor pairs; this list has {n_genuine} genuine and "
            f"{len(pairs) - n_genuine} impostor pairs"
        )
    return pairs


def _crops_of(pairs: PairSet) -> list[np.ndarray]:
    """Every pair image as an aligned 112 px crop."""
    return [given_crop(pairs.load(i)).crop for i in range(len(pairs.refs))]


class _FiqaForward:
    """``crops -> (embeddings, qualities)`` with the FIQA model on its device."""

    def __init__(self, model: ViTFIQA, device: torch.device) -> None:
        self.model = model
        self.device = device

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            e, q = self.model(preprocess_faces(batch).to(self.device))
        return e.float().cpu().numpy(), q.float().cpu().numpy()

    def embeddings(self, batch: np.ndarray) -> np.ndarray:
        return self(batch)[0]


def _table_qualities(quality: str | os.PathLike[str], pairs: PairSet) -> np.ndarray:
    """Each pair image's quality from a ``scores.csv``; every image must have one."""
    table = read_quality_csv(quality)
    vals = [table.lookup(r) for r in pairs.refs]
    missing = [r for r, v in zip(pairs.refs, vals, strict=True) if v is None]
    if missing:
        raise DataError(
            f"{quality}: no quality for {len(missing)} of {len(pairs.refs)} pair images (first: {missing[0]}); "
            "score the pair images with `medvit fiqa score` first"
        )
    return np.asarray(vals, dtype=np.float64)


def _pair_embeddings(
    embeddings: str,
    pairs: PairSet,
    crops: list[np.ndarray] | None,
    fiqa: _FiqaForward | None,
    dlib_forward: Callable[[np.ndarray], np.ndarray] | None,
    batch_size: int,
) -> tuple[np.ndarray, str]:
    """L2-normalised embeddings of the pair images from the source ``--embeddings`` names, and its name."""
    emb_src = Path(embeddings) if embeddings not in ("fiqa", "dlib") else None
    if dlib_forward is not None:
        assert crops is not None
        return embed_crops(crops, dlib_forward, batch_size), "dlib"
    if emb_src is None:
        assert crops is not None and fiqa is not None
        return embed_crops(crops, fiqa.embeddings, batch_size), "fiqa"
    if emb_src.suffix == ".onnx":
        assert crops is not None
        return embed_crops(crops, onnx_embedder(emb_src), batch_size), emb_src.name
    if emb_src.is_dir():
        return npy_embeddings(emb_src, pairs.refs), emb_src.name
    raise ConfigError(
        f"--embeddings must be 'fiqa', 'dlib', an .onnx file or a folder of .npy files, got {embeddings!r}"
    )


def _write_outputs(
    out_dir: Path,
    pairs: PairSet,
    result: EDCResult,
    sim: np.ndarray,
    q_img: np.ndarray,
    *,
    title: str,
    record: dict[str, Any],
) -> EvaluateResult:
    """``edc.csv``, ``edc_summary.csv``, ``pairs_scored.csv``, ``edc.png`` and ``summary.json`` (``record`` plus
    the curves)."""
    edc_csv = write_csv_atomic(out_dir / "edc.csv", result.rows(), EDC_COLUMNS)
    summary = result.summary()
    summary_csv = write_csv_atomic(out_dir / "edc_summary.csv", summary, SUMMARY_COLUMNS)
    pairs_csv = write_csv_atomic(out_dir / "pairs_scored.csv", pair_rows(pairs, sim, q_img), PAIR_COLUMNS)
    plot = plot_edc(result, out_dir / "edc.png", title=title)
    curves = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()} for s in summary]
    write_json_atomic(out_dir / "summary.json", {**record, "curves": curves})
    return EvaluateResult(edc_csv, summary_csv, plot, pairs_csv, summary, record["verification_accuracy"])


def evaluate(
    pairs_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    quality: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    embeddings: str = "fiqa",
    images: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
) -> EvaluateResult:
    """EDC of a quality measure on a pair list.

    Args:
        pairs_path: ``pairs.txt``, ``pair_list.txt`` or ``.bin``.
        out: output folder: ``edc.csv``, ``edc_summary.csv``, ``edc.png``, ``pairs_scored.csv``, ``summary.json``.
        quality: ``scores.csv`` of ``fiqa score`` (per-image quality); None: computed with ``weights``.
        weights: FIQA model (needed for ``embeddings="fiqa"`` or when ``quality`` is None).
        embeddings: ``fiqa``, ``dlib`` (dlib's ResNet recognizer, ``medvit[face]``), a recognition ``.onnx``
            (insightface), or a folder of ``<stem>.npy``.
        images: image root for the pair list.
        batch_size: faces per forward pass.
        device: ``auto``, ``cpu``, ``cuda``.

    Raises:
        DataError: images without quality, unreadable pairs or embeddings.
    """
    pairs = _read_edc_pairs(pairs_path, images)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    fiqa = None
    if quality is None or embeddings == "fiqa":
        model, _ = load_scoring_model(weights)
        fiqa = _FiqaForward(model.to(dev).eval(), dev)
    # Load the recognizer before decoding every pair image, so a missing extra fails fast.
    dlib_forward = dlib_embedder() if embeddings == "dlib" else None
    onnx = embeddings not in ("fiqa", "dlib") and Path(embeddings).suffix == ".onnx"
    crops = _crops_of(pairs) if fiqa is not None or dlib_forward is not None or onnx else None
    if quality is not None:
        q_img = _table_qualities(quality, pairs)
    else:
        assert crops is not None and fiqa is not None
        q_img = np.concatenate([fiqa(np.stack(crops[i : i + batch_size]))[1] for i in range(0, len(crops), batch_size)])
    emb, emb_name = _pair_embeddings(embeddings, pairs, crops, fiqa, dlib_forward, batch_size)
    sim = np.sum(emb[pairs.a] * emb[pairs.b], axis=1)
    result = edc(sim, pairs.issame, pair_quality(q_img[pairs.a], q_img[pairs.b]))
    acc, _ = verification_accuracy(emb[pairs.a], emb[pairs.b], pairs.issame)
    record = {
        "pairs": str(pairs_path),
        "n_pairs": len(pairs),
        "genuine": int(pairs.issame.sum()),
        "embeddings": emb_name,
        "quality": str(quality) if quality else "fiqa model",
        "verification_accuracy": acc,
    }
    title = f"{pairs.name}: EDC, embeddings {emb_name}"
    return _write_outputs(out_dir, pairs, result, sim, q_img, title=title, record=record)
