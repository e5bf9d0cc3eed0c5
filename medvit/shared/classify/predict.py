"""Batch prediction with a trained classifier, and its heat maps (attention rollout, Grad-CAM).

:func:`predict` runs a :class:`ClassifyJob` through the shared batch runner
(:func:`medvit.shared.engine.batch.run_batch`: manifest with a status per input, resume by skipping finished inputs,
``overwrite``, one bad input never stops the batch, atomic outputs, sharding under torchrun), then writes
``predictions.csv`` in the order of the samples::

    key, prob_<class>..., predicted, threshold_<class>..., status, message

``prob_*`` are sigmoid outputs (multi-label: one per finding; binary: the positive class) or softmax outputs
(multi-class / graded); ``predicted`` is the classes at or above their threshold joined by ``|`` (multi-label;
empty when none), the class name (binary: ``positive`` when ``prob >= threshold``) or the arg-max class
(multi-class / graded, no threshold columns); ``status`` is ``ok`` or ``error`` (an unreadable input, with the
reason in ``message``: its probability cells are empty). The probabilities are kept in the manifest's columns, so a
resumed run rebuilds the whole file without recomputing finished inputs.

Test-time preprocessing is the deterministic path of :mod:`medvit.shared.classify.inputs` with the settings of the
run's ``model.json``; the network runs in eval mode in float32, one forward pass per batch. Each image's outputs do
not depend on its batch neighbours (no batch statistics); batched matrix products may round differently from
single ones, within float32 precision (1e-6).

Heat maps (``heatmaps="rollout"`` or ``"gradcam"``), one PNG overlay per input under ``heatmaps/`` (mirroring the
inputs' folders; jet colours at 40 % over the preprocessed image):

* **attention rollout** (Abnar & Zuidema, ACL 2020): per block ``0.5 A + 0.5 I`` (head-averaged attention, residual
  added, rows renormalised), multiplied through the blocks; the map is the class token's row over the patch tokens,
  or with average pooling the mean of the patch tokens' rows (what the pooled feature mixes from);
* **Grad-CAM** on the last block (Selvaraju et al., ICCV 2017, on tokens): the gradient of the top class's logit
  (the arg-max, or the most probable finding) with respect to the last block's patch tokens, averaged over tokens,
  weights the tokens' features; ReLU of the sum.

3D inputs show the central B-scan (the middle index of the slice axis) of the volume and of the map.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medvit.shared.classify.inputs import EvalTransform, InputSpec, read_source
from medvit.shared.classify.labels import LabelSpace, Sample
from medvit.shared.classify.model import load_classifier
from medvit.shared.classify.train import output_probs
from medvit.shared.engine.batch import BatchJob, common_root, output_relpath, run_batch
from medvit.shared.engine.fit import resolve_device
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.files import write_csv_atomic

logger = logging.getLogger(__name__)

__all__ = ["ClassifyJob", "gradcam_map", "predict", "rollout_map"]

HEATMAPS = ("rollout", "gradcam")


def rollout_map(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Attention rollout of one input ``[1, C, *spatial]`` -> relevance per patch on the token grid, in [0, 1]."""
    with torch.no_grad():
        _, maps = model.forward_features_attention(x)
        n = maps[0].shape[-1]
        eye = torch.eye(n, dtype=maps[0].dtype, device=x.device)
        rollout = eye
        for a in maps:
            a = 0.5 * a[0] + 0.5 * eye
            rollout = (a / a.sum(-1, keepdim=True)) @ rollout
        p = model.num_prefix_tokens
        rel = rollout[0, p:] if model.global_pool == "token" else rollout[p:, p:].mean(0)
    return _normalise(rel.reshape(model.patch_embed.grid_for(x.shape[2:])))


def gradcam_map(model: Any, x: torch.Tensor, labels: LabelSpace) -> torch.Tensor:
    """Grad-CAM on the last block's patch tokens for the top class -> map on the token grid, in [0, 1]."""
    with torch.no_grad():
        tokens, _ = model.embed(x)
        for blk in model.blocks[:-1]:
            tokens = blk(tokens)
    with torch.enable_grad():
        last = model.blocks[-1](tokens)
        last.retain_grad()
        logits = model.forward_head(model.norm(last))
        top = int(output_probs(labels, logits)[0].argmax())
        logits[0, top].backward()
    p = model.num_prefix_tokens
    feats, grads = last[0, p:].detach(), last.grad[0, p:]
    cam = torch.relu((feats * grads.mean(0)).sum(-1))
    model.zero_grad(set_to_none=True)
    return _normalise(cam.reshape(model.patch_embed.grid_for(x.shape[2:])))


def _normalise(m: torch.Tensor) -> torch.Tensor:
    m = m.float()
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def overlay_png(x: torch.Tensor, heat: torch.Tensor, spec: InputSpec) -> bytes:
    """PNG bytes of a heat map over the (denormalised) input; 3D: the central slice.

    Args:
        x: The preprocessed input ``[C, *spatial]``.
        heat: Map on the token grid, in [0, 1].
        spec: The input spec (to undo the normalisation).
    """
    import cv2
    from matplotlib import colormaps

    shape = (-1, *([1] * (x.ndim - 1)))
    mean, std = torch.tensor(spec.mean).view(shape), torch.tensor(spec.std).view(shape)
    img = x.float().cpu() * std + mean
    mode = "bilinear" if x.ndim == 3 else "trilinear"
    up = F.interpolate(heat[None, None].float(), size=tuple(x.shape[1:]), mode=mode)[0, 0]
    if x.ndim == 4:  # [1, R, C, S]: the central slice
        mid = x.shape[-1] // 2
        img, up = img[..., mid], up[..., mid]
    img = img.numpy()
    if spec.intensity != "mean_std":  # z-scored volume: min-max for display
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    base = np.clip(img, 0, 1)
    base = np.repeat(base, 3, 0) if base.shape[0] == 1 else base
    base = base.transpose(1, 2, 0)
    colour = colormaps["jet"](up.numpy())[..., :3]
    blend = (0.6 * base + 0.4 * colour) * 255
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(blend[..., ::-1]).round().astype(np.uint8))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


class ClassifyJob(BatchJob):
    """One input -> probabilities in the manifest columns (and optionally a heat-map PNG).

    Args:
        model: The classifier (eval mode) on ``device``.
        spec: The run's ``model.json``.
        device: Inference device.
        root: Common folder of the inputs (heat maps mirror the folders below it).
        heatmaps: ``rollout``, ``gradcam`` or None.
    """

    description = "classify"

    def __init__(
        self, model: Any, spec: Mapping[str, Any], device: torch.device, root: Path, heatmaps: str | None
    ) -> None:
        self.model = model
        self.labels = LabelSpace.from_dict(spec["labels"])
        self.input = InputSpec.from_dict(spec["input"])
        ev = spec.get("eval") or {}
        self.transform = EvalTransform(self.input, ev.get("crop_pct", 0.875), ev.get("interpolation", "bicubic"))
        self.device = device
        self.root = root
        self.heatmaps = heatmaps

    def outputs_for(self, item: Path) -> list[Path]:
        if self.heatmaps is None:
            return []
        return [Path("heatmaps") / output_relpath(item, self.root, f".{self.heatmaps}.png")]

    def load(self, item: Path) -> torch.Tensor:
        arr = read_source(item, self.input.modality)
        want = (3,) if self.input.dims == 3 else (2, 3)
        if arr.ndim not in want:
            raise DataError(f"{item}: decoded to shape {arr.shape}, not a {self.input.dims}D input")
        if not np.isfinite(arr).all():
            raise DataError(f"{item}: contains NaN or infinite values")
        return self.transform(arr)

    def process_batch(
        self, items: list[Path], loaded: list[Any], tmp_outputs: list[list[Path]]
    ) -> list[Mapping[str, Any] | None]:
        x = torch.stack(loaded).to(self.device)
        with torch.no_grad():
            probs = output_probs(self.labels, self.model(x)).cpu().numpy()
        cols = self.labels.prob_columns
        out: list[Mapping[str, Any] | None] = []
        for i, tmps in enumerate(tmp_outputs):
            if self.heatmaps is not None:
                xi = x[i : i + 1]
                if self.heatmaps == "rollout":
                    heat = rollout_map(self.model, xi)
                else:
                    heat = gradcam_map(self.model, xi, self.labels)
                tmps[0].write_bytes(overlay_png(loaded[i], heat.cpu(), self.input))
            out.append({c: float(p) for c, p in zip(cols, probs[i], strict=True)})
        return out


def _predicted(labels: LabelSpace, probs: np.ndarray, thresholds: Sequence[float]) -> str:
    if labels.kind == "multilabel":
        return "|".join(c for c, p, t in zip(labels.classes, probs, thresholds, strict=True) if p >= t)
    if labels.kind == "binary":
        return labels.classes[1] if probs[0] >= thresholds[0] else labels.classes[0]
    return labels.classes[int(np.argmax(probs))]


def _manifest_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["input"]: r for r in csv.DictReader(f) if r.get("input")}


def _prediction_rows(
    samples: Sequence[Sample], manifest: Mapping[str, Mapping[str, str]], labels: LabelSpace, thresholds: list[float]
) -> list[dict[str, Any]]:
    cols = labels.prob_columns
    thr_cols = [f"threshold_{c[len('prob_') :]}" for c in cols] if labels.uses_sigmoid else []
    rows = []
    for s in samples:
        m = manifest.get(os.path.abspath(s.source))
        row: dict[str, Any] = {"key": s.key}
        if m is None or m.get("status") not in ("ok", "skipped") or not all(m.get(c) for c in cols):
            row.update(status="error", message=(m or {}).get("message") or "not processed")
            rows.append(row)
            continue
        probs = np.array([float(m[c]) for c in cols])
        row.update({c: float(p) for c, p in zip(cols, probs, strict=True)})
        row["predicted"] = _predicted(labels, probs, thresholds)
        row.update({c: t for c, t in zip(thr_cols, thresholds, strict=True)})
        row.update(status="ok", message="")
        rows.append(row)
    return rows


def predict(
    run: str | Path,
    samples: Sequence[Sample],
    out: str | Path,
    *,
    batch_size: int = 32,
    workers: int = 2,
    heatmaps: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    device: str = "auto",
) -> Path:
    """Predict every sample with the classifier of a run; write ``predictions.csv`` (see the module docstring).

    Args:
        run: Run directory (``model.json`` + ``model.safetensors``) or a ``.safetensors`` file with its sidecar.
        samples: Inputs (targets are ignored); ``Sample.key`` names the rows.
        out: Output folder (manifest, ``predictions.csv``, ``heatmaps/``).
        batch_size: Inputs per forward pass.
        workers: Threads decoding the next inputs.
        heatmaps: ``rollout``, ``gradcam`` or None.
        overwrite: Recompute inputs that are already done.
        quiet: No progress bar.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The path of ``predictions.csv`` (written by the process that holds the whole manifest).

    Raises:
        ConfigError: Unknown heat-map kind.
        WeightsError: Not a classification run.
        DataError: No inputs, or an output folder in use.
    """
    if heatmaps is not None and heatmaps not in HEATMAPS:
        raise ConfigError(f"heatmaps must be one of {', '.join(HEATMAPS)} or none, got {heatmaps!r}")
    if not samples:
        raise DataError("no samples to predict")
    model, spec = load_classifier(run)
    dev = resolve_device(device)
    model.to(dev)
    labels = LabelSpace.from_dict(spec["labels"])
    thresholds = list(spec.get("thresholds") or [0.5] * labels.num_outputs()) if labels.uses_sigmoid else []
    inputs = list(dict.fromkeys(Path(os.path.abspath(s.source)) for s in samples))
    job = ClassifyJob(model, spec, dev, common_root(inputs), heatmaps)
    summary = run_batch(job, inputs, out, overwrite=overwrite, workers=workers, batch_size=batch_size, quiet=quiet)
    path = Path(out) / "predictions.csv"
    if summary.final:
        rows = _prediction_rows(samples, _manifest_rows(summary.manifest_path), labels, thresholds)
        thr_cols = [f"threshold_{c[len('prob_') :]}" for c in labels.prob_columns] if labels.uses_sigmoid else []
        columns = ["key", *labels.prob_columns, "predicted", *thr_cols, "status", "message"]
        write_csv_atomic(path, rows, columns)
        logger.info("%s -> %s", summary.line, path)
    return path
