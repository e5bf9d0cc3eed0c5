"""Typed API behind ``medvit fiqa``: train, score, evaluate, convert, extract-bin, and the demo.

* :func:`train` trains ViT-FIQA through the shared engine (``fit``): AMP, DDP under ``torchrun``, resume,
  checkpoints, ``metrics.jsonl``; periodic verification accuracy on pair lists via an ``on_eval`` hook; the
  final model is exported as ``RUN/model.safetensors`` (+ sidecar), which ``score`` reads.
* :func:`score` runs the batch runner over a folder: images are decoded, (detected and) aligned in loader
  threads while the model scores the previous batch; ``scores.csv`` has one row per face (``ok``), per image
  without a face (``no_face``) and per unreadable input (``error``); plus a histogram and a contact sheet.
* :func:`evaluate` computes EDC curves (both threshold conventions), AUC and pAUC on a pair list.

Class centres and ``torchrun``: by default every rank holds all class centres (plain DDP; exact certainty ratio;
resumable). ``loss.centres=sharded`` (or ``auto`` above 2**28 centre floats, about 512k identities at D=512)
shards them across ranks as Partial FC does (see ``losses.py``); then a multi-rank ``--resume`` is refused,
because the engine checkpoints rank 0's state only and the other shards would be lost.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvit.shared.errors import ConfigError, DataError, TrainingError, WeightsError

if TYPE_CHECKING:  # torch is imported inside the functions: `medvit --help` stays fast
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluateResult",
    "ScoreResult",
    "TrainResult",
    "convert",
    "degradation_ranking",
    "evaluate",
    "extract_bin",
    "load_scoring_model",
    "run_demo",
    "score",
    "train",
]

NO_WEIGHTS_HINT = (
    "train a model with `medvit fiqa train DATA --out RUN` and pass --weights RUN, or import the official "
    "ViT-FIQA checkpoint with `medvit fiqa convert model.pt --out vit_fiqa.safetensors` (the ViT-FIQA converter "
    "behind `medvit weights convert`) and pass --weights vit_fiqa.safetensors"
)
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
_PARTIAL_FC_AUTO_FLOATS = 2**28


# ============================================================================= weights
def _model_from_training_checkpoint(path: Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model from an engine checkpoint (``last.pt`` / ``best.pt``) and its run's ``config.yaml``."""
    from medvit.apps.fiqa.config import FiqaConfig
    from medvit.apps.fiqa.model import build_fiqa_model, load_state_into
    from medvit.shared.config import from_dict, read_yaml
    from medvit.shared.engine.checkpoint import load_checkpoint

    cfg_path = path.parent / "config.yaml"
    if not cfg_path.is_file():
        raise WeightsError(f"{path}: a training checkpoint needs its run's config.yaml beside it")
    raw = read_yaml(cfg_path)
    # config.yaml holds the resolved FiqaConfig plus run records (engine ``train`` section, ``data_path``).
    cfg = from_dict(FiqaConfig, {k: v for k, v in raw.items() if k not in ("train", "data_path")})
    try:
        ckpt = load_checkpoint(path)
    except TrainingError as err:
        raise WeightsError(str(err)) from None
    sd = {k[len("model.") :]: v for k, v in ckpt["model"].items() if k.startswith("model.")}
    model = build_fiqa_model(cfg.model.backbone, head=cfg.model.head, mask_ratio=cfg.model.mask_ratio)
    load_state_into(model, sd, source=str(path))
    return model.eval(), {"source": str(path), "step": ckpt.get("step")}


def load_scoring_model(weights: str | os.PathLike[str] | None) -> tuple[Any, dict[str, Any]]:
    """The FIQA model to score with (eval mode, CPU).

    Args:
        weights: a run directory (``model.safetensors``, else ``best.pt``/``last.pt``), our ``.safetensors``, an
            engine checkpoint, or an official ViT-FIQA / arcface_torch checkpoint (``.pt``/``.pth``, converted in
            memory). None: ``$MEDVIT_WEIGHTS/vit_fiqa.safetensors`` if it exists.

    Raises:
        WeightsError: nothing found or unreadable (the message says how to get weights).
    """
    from medvit.apps.fiqa.model import FIQA_FORMAT, load_fiqa, model_from_official, read_foreign_checkpoint
    from medvit.shared.paths import weights_dir
    from medvit.shared.schema import read_json_sidecar

    if weights is None:
        default = weights_dir() / "vit_fiqa.safetensors"
        if not default.is_file():
            raise WeightsError(f"no FIQA weights given (--weights) and none at {default}: {NO_WEIGHTS_HINT}")
        weights = default
    p = Path(weights).expanduser()
    if p.is_dir():
        for name in ("model.safetensors", "best.pt", "last.pt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise WeightsError(f"{p}: no model.safetensors, best.pt or last.pt in this folder: {NO_WEIGHTS_HINT}")
    if not p.is_file():
        raise WeightsError(f"{p}: weight file not found: {NO_WEIGHTS_HINT}")
    side = p.with_suffix(".json")
    if p.suffix == ".safetensors" and side.is_file():
        fmt = read_json_sidecar(side).get("format")  # a hostile sidecar is refused here, before anything is built
        if fmt == FIQA_FORMAT:
            return load_fiqa(p)
    if p.suffix == ".pt":
        import torch

        from medvit.shared.engine.checkpoint import CKPT_FORMAT

        try:
            head = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - read again below with the full error handling
            head = None
        if isinstance(head, dict) and head.get("format") == CKPT_FORMAT:
            return _model_from_training_checkpoint(p)
    sd, config = read_foreign_checkpoint(p)
    if "patch_embed.proj.weight" not in sd or "feature.0.weight" not in sd:
        raise WeightsError(f"{p}: neither a medvit FIQA model nor a ViT-FIQA checkpoint: {NO_WEIGHTS_HINT}")
    model = model_from_official(sd, config=config)
    logger.info("converted the ViT-FIQA checkpoint %s in memory (head mode %s)", p, model.head)
    return model, {"source": str(p), "converted": True}


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    num_heads: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Import an official ViT-FIQA checkpoint (``backbones/vit_qs.py`` keys, ``module.`` prefixes) into our format.

    Args:
        src: the checkpoint file.
        out: output ``.safetensors`` (a ``.json`` sidecar is written beside it).
        overwrite: replace an existing output.
        state_dict: ``src`` already read (``module.`` prefixes removed), e.g. by ``medvit weights convert``.
        num_heads: attention heads, which weights do not record (see
            :func:`~medvit.apps.fiqa.model.resolve_num_heads`); None: the checkpoint's config, else the published
            architecture of that shape, else refused.
        config: settings carried by ``src`` (``checkpoint_config``); None: read from ``src`` and the JSON beside it.

    Returns:
        The written sidecar (``num_heads_source`` says where the head count came from).
    """
    from medvit.apps.fiqa.model import checkpoint_config, model_from_official, read_foreign_checkpoint, save_fiqa

    out = Path(out)
    if out.suffix != ".safetensors":
        raise WeightsError(f"{out}: the output must end in .safetensors")
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} exists; pass --overwrite to replace it")
    if state_dict is None:
        state_dict, found = read_foreign_checkpoint(src)
        config = found if config is None else config
    elif config is None:
        config = checkpoint_config(src)
    model = model_from_official(state_dict, num_heads=num_heads, config=config)
    meta = {"source": "vit-fiqa", "converted_from": Path(src).name, "num_heads_source": model.num_heads_source}
    save_fiqa(model, out, metadata=meta)
    return json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))


# ============================================================================= training
@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory.
        weights: exported ``model.safetensors``.
        steps: optimizer steps done.
        final_loss: loss of the last step.
        identities: number of training identities.
        val: last verification metrics (``val/<set>_acc``...).
    """

    run_dir: Path
    weights: Path
    steps: int
    final_loss: float
    identities: int
    val: dict[str, float]


class _VerificationHook:
    """``on_eval``: verification accuracy (flip-augmented embeddings, 10 folds) and mean quality per pair set."""

    def __init__(self, pair_sets: Sequence[Any], batch_size: int) -> None:
        from medvit.shared.faces.align import given_crop

        self.sets = []
        for ps in pair_sets:
            crops = np.stack([given_crop(ps.load(i)).crop for i in range(len(ps.refs))])
            self.sets.append((ps, crops))
        self.batch_size = batch_size
        self.last: dict[str, float] = {}

    def on_eval(self, state: Any) -> dict[str, float]:
        import torch

        from medvit.apps.fiqa.evaluate import verification_accuracy
        from medvit.apps.fiqa.model import preprocess_faces

        model = state.task.model
        out: dict[str, float] = {}
        for ps, crops in self.sets:
            embs, quals = [], []
            for i in range(0, len(crops), self.batch_size):
                x = preprocess_faces(crops[i : i + self.batch_size]).to(state.device)
                with state.autocast():
                    e, q = model(x)
                    e2, _ = model(torch.flip(x, dims=[3]))
                embs.append((e + e2).float().cpu().numpy())
                quals.append(q.float().cpu().numpy())
            emb = np.concatenate(embs)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            acc, _ = verification_accuracy(emb[ps.a], emb[ps.b], ps.issame)
            out[f"{ps.name}_acc"] = acc
            out[f"{ps.name}_quality"] = float(np.concatenate(quals).mean())
        self.last = {f"val/{k}": v for k, v in out.items()}
        return out


class _ExportHook:
    """``on_fit_end``: rank 0 writes ``RUN/model.safetensors`` (encoder + heads, no class centres)."""

    def __init__(self, path: Path, metadata: Mapping[str, Any]) -> None:
        self.path = path
        self.metadata = dict(metadata)

    def on_fit_end(self, state: Any) -> None:
        from medvit.apps.fiqa.model import save_fiqa

        if state.rank == 0:
            save_fiqa(state.task.model, self.path, metadata={**self.metadata, "steps": state.step})


def _init_weights(model: Any, path: Path) -> None:
    """Start from our FIQA file, an official ViT-FIQA checkpoint or an arcface_torch recognition ViT."""
    from medvit.apps.fiqa.model import convert_official_state_dict, load_state_into, read_foreign_state_dict

    p = Path(path)
    side = p.with_suffix(".json")
    if p.suffix == ".safetensors" and side.is_file():
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        # The model being trained fixes the head count; the checkpoint only has to fit its shapes.
        sd, _ = convert_official_state_dict(read_foreign_state_dict(p), num_heads=model.backbone.num_heads)
    info = load_state_into(
        model, sd, expected_missing=["head_qs.*", "mask_token", "backbone.quality_token"], source=str(p)
    )
    logger.info("initialised from %s (%d keys missing: %s)", p, len(info["missing"]), ", ".join(info["missing"][:4]))


def train(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    preset: str = "default",
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    quiet: bool = False,
    **options: Any,
) -> TrainResult:
    """Train ViT-FIQA on identity folders or a RecordIO set.

    Args:
        data: ``DATA/<identity>/*.jpg`` or a folder with ``train.rec``/``train.idx``.
        out: run directory.
        preset: ``default`` (reference recipe), ``base``, ``tiny``.
        config_file: YAML over the preset.
        overrides: ``--set`` items.
        resume: continue from ``RUN/last.pt``.
        quiet: no progress bar.
        **options: first-class options as dotted config keys (``optim.steps``...).

    Returns:
        A :class:`TrainResult`.
    """
    import torch

    from medvit.apps.fiqa.config import load_fiqa_config
    from medvit.apps.fiqa.data import build_augment, open_training_set, read_pairs
    from medvit.apps.fiqa.losses import ClassCentres, FIQATask
    from medvit.apps.fiqa.model import build_fiqa_model
    from medvit.shared.config import to_dict
    from medvit.shared.engine import distributed as D
    from medvit.shared.engine.fit import TrainConfig, fit, seed_everything

    cfg = load_fiqa_config(preset, config_file, list(overrides), **options)
    o = cfg.optim
    seed_everything(o.seed)  # initial weights follow optim.seed: the engine seeds only from fit() on
    ds = open_training_set(
        data,
        build_augment(cfg.data.augment, cfg.data.augment_p),
        align=cfg.data.align,
        models=cfg.data.models,
        min_images=cfg.data.min_images,
    )
    model = build_fiqa_model(
        cfg.model.backbone,
        head=cfg.model.head,
        mask_ratio=cfg.model.mask_ratio,
        drop_path_rate=cfg.model.drop_path_rate,
    )
    if cfg.model.init is not None:
        _init_weights(model, cfg.model.init)
    rank, world = D.env_rank(), D.env_world_size()
    shard = cfg.loss.centres == "sharded" or (
        cfg.loss.centres == "auto" and ds.num_classes * model.embedding_dim > _PARTIAL_FC_AUTO_FLOATS
    )
    shard = shard and world > 1
    if shard and resume:
        raise TrainingError(
            "--resume of a multi-rank run with sharded class centres (loss.centres) is not supported: the "
            "checkpoint holds rank 0's shard only; train with --set loss.centres=replicated to be resumable"
        )
    # Sharded centres: a different stream per rank, else every shard would start as a copy of rank 0's rows.
    # Replicated centres are broadcast from rank 0 by DDP, so the per-rank seed does not matter for them.
    torch.manual_seed(o.seed + 1 + rank)
    centres = ClassCentres(
        model.embedding_dim,
        ds.num_classes,
        margin=cfg.loss.margin,
        scale=cfg.loss.scale,
        cosface_m=cfg.loss.cosface_m,
        arcface_m=cfg.loss.arcface_m,
        cr_eps=cfg.loss.cr_eps,
        rank=rank if shard else 0,
        world=world if shard else 1,
    )
    task = FIQATask(model, centres, alpha=cfg.loss.alpha, beta=cfg.loss.beta)

    hooks: list[Any] = []
    verif = None
    if cfg.val_pairs:
        verif = _VerificationHook([read_pairs(p) for p in cfg.val_pairs], batch_size=min(o.batch_size, 128))
        hooks.append(verif)
    run_dir = Path(out)
    weights = run_dir / "model.safetensors"
    meta = {"preset": cfg.preset, "identities": ds.num_classes, "train_images": len(ds), "data": str(data)}
    hooks.append(_ExportHook(weights, meta))
    best = f"val/{read_pairs(cfg.val_pairs[0]).name}_acc" if cfg.val_pairs else None
    tc = TrainConfig.from_section(o, best_metric=best, drop_last=True)
    logger.info(
        "fiqa train: %d images of %d identities, %s (%s head), class centres %s",
        len(ds),
        ds.num_classes,
        cfg.model.backbone,
        cfg.model.head,
        f"sharded over {world} ranks" if shard else "replicated",
    )
    resolved = {**to_dict(cfg), "train": tc.to_dict(), "data_path": str(data)}
    res = fit(task, ds, tc, run_dir, resume=resume, quiet=quiet, hooks=hooks, resolved_config=resolved)
    return TrainResult(
        run_dir=run_dir,
        weights=weights,
        steps=res.step,
        final_loss=res.final_loss,
        identities=ds.num_classes,
        val=verif.last if verif else {},
    )


# ============================================================================= scoring
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


class _ScoreJob:
    """Batch-runner job: load = decode + detect + align (threads), process_batch = one forward per batch."""

    description = "fiqa score"

    def __init__(self, model: Any, *, aligner: Any, all_faces: bool, batch_size: int, device: Any) -> None:
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
        from medvit.apps.fiqa.data import read_face_file
        from medvit.shared.data.cards import MIN_FACE_SIZE
        from medvit.shared.data.io import ReadError, list_folder
        from medvit.shared.faces.align import given_crop

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
        import torch

        from medvit.apps.fiqa.model import preprocess_faces

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

    def process(self, item: Path, loaded: Any, tmp_outputs: list[Path]) -> Mapping[str, Any] | None:
        return self.process_batch([item], [loaded], [tmp_outputs])[0]

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


def _score_rows(manifest: Path, detector: str) -> list[dict[str, Any]]:
    """``scores.csv`` rows from the manifest; ``detector`` names the detector of rows the manifest has none for."""
    rows: list[dict[str, Any]] = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            path = r.get("input", "")
            status = r.get("status", "")
            det = r.get("detector") or detector  # the run that scored the item (a resumed run may differ)
            if status == "error":
                rows.append(
                    {"path": path, "face": "", "status": "error", "detector": det, "message": r.get("message", "")}
                )
                continue
            try:
                faces = json.loads(r.get("faces_json") or "[]")
            except json.JSONDecodeError:
                bad = "unreadable manifest entry"
                rows.append({"path": path, "face": "", "status": "error", "detector": det, "message": bad})
                continue
            if not faces:
                rejected = (r.get("rejected_scores") or "").split()
                message = "no face found"
                if rejected:
                    message += f" ({len(rejected)} detection(s) below --min-face-score, scores {', '.join(rejected)})"
                rows.append({"path": path, "face": "", "status": "no_face", "detector": det, "message": message})
                continue
            for i, f in enumerate(faces):
                row: dict[str, Any] = {"path": path, "face": i, "status": "ok", "quality": f["q"], "message": ""}
                row["det_score"] = "" if f.get("det") is None else f["det"]
                row["detector"] = det
                row.update(zip(("x1", "y1", "x2", "y2"), f["box"], strict=True))
                row.update(zip(_LANDMARK_COLUMNS, f["lm"], strict=True))
                rows.append(row)
    return rows


def _contact_faces(rows: list[dict[str, Any]], n: int) -> tuple[list, list]:
    """Re-read and re-align the n lowest and n highest scored faces for the contact sheet."""
    from medvit.apps.fiqa.data import read_face_file
    from medvit.shared.faces.align import align_face

    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: float(r["quality"]))
    lo, hi = ok[:n], ok[::-1][:n]

    def crops(sel: list[dict[str, Any]]) -> list[tuple[np.ndarray, float, str]]:
        out = []
        for r in sel:
            try:
                img = read_face_file(r["path"])
            except DataError:
                continue
            lm = np.array([float(r[c]) for c in _LANDMARK_COLUMNS]).reshape(5, 2)
            crop, _ = align_face(img, lm)
            out.append((crop, float(r["quality"]), Path(r["path"]).name))
        return out

    return crops(lo), crops(hi)


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
        out: output folder: ``scores.csv``, ``manifest.csv``, ``quality_hist.png``, ``contact_sheet.png``.
        weights: see :func:`load_scoring_model`.
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
    import torch

    from medvit.apps.fiqa.evaluate import plot_contact_sheet, plot_histogram, write_csv_atomic
    from medvit.shared.data.io import IMAGE_SUFFIXES
    from medvit.shared.engine import distributed as D
    from medvit.shared.engine.batch import resolve_inputs, run_batch
    from medvit.shared.engine.fit import resolve_device
    from medvit.shared.faces.align import FaceAligner

    if batch_size < 1 or workers < 0:
        raise ConfigError(f"need --batch-size >= 1 and --workers >= 0, got {batch_size}, {workers}")
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    dev = resolve_device(device)
    model, info = load_scoring_model(weights)
    model = model.to(dev).eval()
    if aligned and min_face_score is not None:
        raise ConfigError("--min-face-score applies to face detection; --aligned inputs are not detected")
    aligner = None if aligned else FaceAligner.create(detector, models, min_score=min_face_score)
    if aligner is not None:
        logger.info("face detector %s, --min-face-score %g", aligner.detector_name, aligner.min_score)
    items = resolve_inputs(inp, IMAGE_SUFFIXES, dirs_as_items=_unlistable)
    D.init_distributed(str(dev), required=False)  # RANK/WORLD_SIZE alone shard the inputs (a Slurm array)
    job = _ScoreJob(model, aligner=aligner, all_faces=all_faces, batch_size=batch_size, device=dev)
    summary = run_batch(
        job,  # type: ignore[arg-type] - duck-typed BatchJob
        items,
        out,
        overwrite=overwrite,
        workers=workers,
        batch_size=max(1, batch_size if aligned or not all_faces else max(1, batch_size // 4)),
        quiet=quiet,
    )
    out_dir = Path(out)
    scores_csv = out_dir / "scores.csv"
    hist = sheet = None
    rows: list[dict[str, Any]] = []
    if summary.final:  # the one process holding the folder's whole manifest
        rows = _score_rows(summary.manifest_path, job.detector)
        write_csv_atomic(scores_csv, rows, SCORE_COLUMNS)
        q = np.array([float(r["quality"]) for r in rows if r["status"] == "ok"])
        if q.size:
            hist = plot_histogram(q, out_dir / "quality_hist.png", title=f"{q.size} faces, {Path(inp).name}")
            lo, hi = _contact_faces(rows, contact)
            sheet = plot_contact_sheet(lo, hi, out_dir / "contact_sheet.png")
    n_faces = sum(1 for r in rows if r["status"] == "ok")
    n_noface = sum(1 for r in rows if r["status"] == "no_face")
    n_err = sum(1 for r in rows if r["status"] == "error")
    images = len({r["path"] for r in rows})
    line = (
        f"{images} images: {n_faces} faces scored, {n_noface} without a face, {n_err} errors — see {scores_csv}"
        if summary.final
        else summary.line
    )
    return ScoreResult(scores_csv, hist, sheet, images, n_faces, n_noface, n_err, summary.exit_code, line)


# ============================================================================= evaluation
@dataclass(frozen=True)
class EvaluateResult:
    """What :func:`evaluate` returns: output paths and the summary rows (one per convention x FMR)."""

    edc_csv: Path
    summary_csv: Path
    plot: Path
    pairs_csv: Path
    summary: list[dict[str, Any]]
    accuracy: float


def _crops_of(pairs: Any, aligner: Any = None) -> list[np.ndarray]:
    from medvit.shared.faces.align import given_crop

    crops = []
    for i in range(len(pairs.refs)):
        img = pairs.load(i)
        if aligner is not None and img.shape[:2] != (112, 112):
            faces = aligner.detect_align(img)
            if not faces:
                raise DataError(f"{pairs.refs[i]}: no face found")
            crops.append(faces[0].crop)
        else:
            crops.append(given_crop(img).crop)
    return crops


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
    import torch

    from medvit.apps.fiqa.data import read_pairs
    from medvit.apps.fiqa.evaluate import (
        dlib_embedder,
        embed_crops,
        npy_embeddings,
        onnx_embedder,
        pair_rows,
        plot_edc,
        read_quality_csv,
        verification_accuracy,
        write_csv_atomic,
    )
    from medvit.apps.fiqa.model import preprocess_faces
    from medvit.shared.engine.fit import resolve_device
    from medvit.shared.metrics.quality import edc, pair_quality

    pairs = read_pairs(pairs_path, images)
    n_genuine = int(np.count_nonzero(pairs.issame))
    if n_genuine == 0 or n_genuine == len(pairs):
        raise DataError(
            f"{pairs_path}: an EDC needs both genuine and impostor pairs; this list has {n_genuine} genuine and "
            f"{len(pairs) - n_genuine} impostor pairs"
        )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    need_model = quality is None or embeddings == "fiqa"
    model = None
    if need_model:
        model, _ = load_scoring_model(weights)
        model = model.to(dev).eval()
    emb_src = Path(embeddings) if embeddings not in ("fiqa", "dlib") else None
    # Load the recognizer before decoding every pair image, so a missing extra fails fast.
    dlib_forward = dlib_embedder() if embeddings == "dlib" else None
    crops: list[np.ndarray] | None = None
    if need_model or dlib_forward is not None or (emb_src is not None and emb_src.suffix == ".onnx"):
        crops = _crops_of(pairs)

    def fiqa_forward(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            e, q = model(preprocess_faces(batch).to(dev))
        return e.float().cpu().numpy(), q.float().cpu().numpy()

    q_img: np.ndarray
    if quality is not None:
        table = read_quality_csv(quality)
        vals = [table.lookup(r) for r in pairs.refs]
        missing = [r for r, v in zip(pairs.refs, vals, strict=True) if v is None]
        if missing:
            raise DataError(
                f"{quality}: no quality for {len(missing)} of {len(pairs.refs)} pair images (first: {missing[0]}); "
                "score the pair images with `medvit fiqa score` first"
            )
        q_img = np.asarray(vals, dtype=np.float64)
    else:
        assert crops is not None
        q_img = np.concatenate(
            [fiqa_forward(np.stack(crops[i : i + batch_size]))[1] for i in range(0, len(crops), batch_size)]
        )
    if dlib_forward is not None:
        assert crops is not None
        emb = embed_crops(crops, dlib_forward, batch_size)
        emb_name = "dlib"
    elif emb_src is None:
        assert crops is not None
        emb = embed_crops(crops, lambda b: fiqa_forward(b)[0], batch_size)
        emb_name = "fiqa"
    elif emb_src.suffix == ".onnx":
        assert crops is not None
        emb = embed_crops(crops, onnx_embedder(emb_src), batch_size)
        emb_name = emb_src.name
    elif emb_src.is_dir():
        emb = npy_embeddings(emb_src, pairs.refs)
        emb_name = emb_src.name
    else:
        raise ConfigError(
            f"--embeddings must be 'fiqa', 'dlib', an .onnx file or a folder of .npy files, got {embeddings!r}"
        )
    sim = np.sum(emb[pairs.a] * emb[pairs.b], axis=1)
    pq = pair_quality(q_img[pairs.a], q_img[pairs.b])
    result = edc(sim, pairs.issame, pq)
    acc, _ = verification_accuracy(emb[pairs.a], emb[pairs.b], pairs.issame)

    edc_csv = write_csv_atomic(
        out_dir / "edc.csv",
        result.rows(),
        ("convention", "fmr", "discard", "fnmr", "threshold", "kept_pairs", "kept_genuine"),
    )
    summary = result.summary()
    summary_csv = write_csv_atomic(
        out_dir / "edc_summary.csv", summary, ("convention", "fmr", "fnmr_0", "auc", "pauc_20", "pauc_30")
    )
    pairs_csv = write_csv_atomic(
        out_dir / "pairs_scored.csv",
        pair_rows(pairs, sim, q_img),
        ("a", "b", "issame", "similarity", "dissimilarity", "quality_a", "quality_b", "pair_quality"),
    )
    plot = plot_edc(result, out_dir / "edc.png", title=f"{pairs.name}: EDC, embeddings {emb_name}")
    from medvit.shared.engine.rundir import write_text_atomic

    write_text_atomic(
        out_dir / "summary.json",
        json.dumps(
            {
                "pairs": str(pairs_path),
                "n_pairs": len(pairs),
                "genuine": int(pairs.issame.sum()),
                "embeddings": emb_name,
                "quality": str(quality) if quality else "fiqa model",
                "verification_accuracy": acc,
                "curves": [
                    {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()} for s in summary
                ],
            },
            indent=2,
        )
        + "\n",
    )
    return EvaluateResult(edc_csv, summary_csv, plot, pairs_csv, summary, acc)


def extract_bin(bin_path: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Unpack an insightface ``.bin`` into ``OUT/images/<i>.jpg`` + ``OUT/pair_list.txt`` (CR-FIQA's layout).

    The encoded bytes are written as they are (no re-compression); the extension follows the format.

    Returns:
        The ``pair_list.txt`` path.
    """
    from medvit.apps.fiqa.bin_reader import read_bin
    from medvit.shared.engine.rundir import write_text_atomic

    bins, issame = read_bin(bin_path)
    root = Path(out)
    img_dir = root / "images"
    if (root / "pair_list.txt").exists() and not overwrite:
        raise DataError(f"{root / 'pair_list.txt'} exists; pass --overwrite to replace it")
    img_dir.mkdir(parents=True, exist_ok=True)
    for i, blob in enumerate(bins):
        ext = ".png" if blob[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg"
        target = img_dir / f"{i}{ext}"
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_bytes(blob)
        os.replace(tmp, target)
    lines = [f"{2 * k} {2 * k + 1} {int(s)}" for k, s in enumerate(issame)]
    return write_text_atomic(root / "pair_list.txt", "\n".join(lines) + "\n")


# ============================================================================= demo
def degradation_ranking(scores_csv: str | os.PathLike[str], folder: str | os.PathLike[str]) -> dict[str, float]:
    """How well qualities rank the degradations of a :func:`~medvit.shared.data.synth.synth_faces` folder.

    Args:
        scores_csv: ``scores.csv`` of :func:`score` over ``folder`` (absolute paths, as score writes them).
        folder: The scored folder; its ``degradations.csv`` gives each face's kind and strength.

    Returns:
        ``{"rho": Spearman(quality, -strength) over every ok row, "rho_<kind>": the same over the faces of one
        degradation kind together with the clean faces}``.
    """
    from scipy.stats import spearmanr

    root = Path(folder)
    with open(root / "degradations.csv", newline="", encoding="utf-8") as fh:
        deg = {os.path.abspath(root / r["path"]): (r["degradation"], float(r["strength"])) for r in csv.DictReader(fh)}
    with open(scores_csv, newline="", encoding="utf-8") as fh:
        ok = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    q = np.array([float(r["quality"]) for r in ok])
    kind = np.array([deg[r["path"]][0] for r in ok])
    strength = np.array([deg[r["path"]][1] for r in ok])
    out = {"rho": float(spearmanr(q, -strength).statistic)}
    for k in sorted(set(kind) - {"none"}):
        m = (kind == k) | (kind == "none")
        out[f"rho_{k}"] = float(spearmanr(q[m], -strength[m]).statistic)
    return out


def run_demo(out: str | os.PathLike[str], *, quiet: bool = False, steps: int = 600) -> dict[str, Any]:
    """Train the tiny preset on synthetic identities with graded degradations, score a held-out folder.

    40 identities x 100 faces with blur, occlusion and low light of graded strength; the tiny preset with the
    CR-FIQA head (``model.head=crfiqa``: at 2 blocks x 64 wide the quality token learns the ranking less reliably,
    BENCHMARKS.md); 400 faces of 20 unseen identities scored (the Spearman of fewer faces is too noisy to read).

    Returns:
        ``{"spearman": rho(quality, -degradation strength), "contact_sheet": path, "scores": path, "run": path}``.
    """
    from medvit.shared.data.synth import synth_faces

    root = Path(out) / "fiqa"
    kinds = ("blur", "occlusion", "low_light")
    synth_faces(root / "train", identities=40, images_per_identity=100, seed=0, degradations=kinds)
    synth_faces(root / "heldout", identities=20, images_per_identity=20, seed=0, held_out=True, degradations=kinds)
    run = root / "run"
    resume = (run / "last.pt").is_file()
    train(
        root / "train",
        run,
        preset="tiny",
        resume=resume,
        quiet=quiet,
        overrides=["model.head=crfiqa"],
        **{"optim.steps": steps},
    )
    res = score(root / "heldout", root / "scores", weights=run, aligned=True, workers=1, quiet=quiet, overwrite=True)
    rho = degradation_ranking(res.scores_csv, root / "heldout")["rho"]
    return {"spearman": rho, "contact_sheet": res.contact_sheet, "scores": res.scores_csv, "run": run}
