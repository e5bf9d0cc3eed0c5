"""``ct-seg predict``: segment scans with a trained run through the shared batch runner.

:func:`predict` loads the run's network (:func:`~medvit.apps.ct_seg.model_file.load_run_model`), builds a
:class:`~medvit.apps.ct_seg.inference.Segmenter` with the run's inference defaults (each overridable) and runs
:class:`PredictJob` over the inputs with :func:`medvit.shared.engine.batch.run_batch` (manifest, resume, atomic
outputs, folder lock, ``predict.log``). Per case: a label map with exactly the input's shape and affine
(:func:`write_label_map`), an overlay PNG (:func:`save_overlay`) and optionally the probabilities.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from medvit.apps.ct_seg.config import DEFAULT_HU_WINDOW
from medvit.apps.ct_seg.data import case_id_of
from medvit.apps.ct_seg.inference import Segmenter
from medvit.apps.ct_seg.model_file import load_run_model
from medvit.shared.data.io import NIFTI_SUFFIXES, ImageMeta, read_volume
from medvit.shared.data.scan import _is_dicom_candidate, find_volumes
from medvit.shared.engine.batch import LIST_FILE_SUFFIXES, BatchJob, BatchSummary, resolve_inputs, run_batch
from medvit.shared.engine.fit import resolve_device
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["PredictJob", "predict", "save_overlay", "write_label_map"]


# ====================================================================================================== outputs
def write_label_map(path: str | Path, labels: np.ndarray, meta: ImageMeta) -> None:
    """Write a label map with the input's affine; a NIfTI input's header (codes, units) is reused.

    Free-text header fields (``descrip``, ``aux_file``) are cleared: they may hold identifiers and say nothing
    about the label map.
    """
    affine = np.asarray(meta.affine if meta.affine is not None else np.eye(4), dtype=np.float64)
    src = Path(meta.path)
    img = None
    if src.is_file() and src.name.lower().endswith(NIFTI_SUFFIXES):
        ref = nib.load(src)
        hdr = ref.header.copy()
        img = type(ref)(labels, affine, header=hdr)
        img.header["descrip"] = b""
        img.header["aux_file"] = b""
        img.set_qform(affine, code=int(hdr["qform_code"]) or 1)
        img.set_sform(affine, code=int(hdr["sform_code"]) or 1)
    if img is None:
        img = nib.Nifti1Image(labels, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
    img.header.set_data_dtype(labels.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))


def _ras_view(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array reoriented to the closest RAS axes (for display) and its voxel sizes."""
    ornt = nib.orientations.io_orientation(affine)
    tr = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    arr = nib.orientations.apply_orientation(array, tr)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)[np.argsort(ornt[:, 0])]
    return arr, zooms


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray | None,
    *,
    window: Sequence[float] = DEFAULT_HU_WINDOW,
    names: Mapping[int, str] | None = None,
    title: str = "",
) -> None:
    """Axial, coronal and sagittal slices through the segmentation's centre with labels coloured (PNG).

    Displayed in radiological convention (patient right on the left, anterior on the left in the sagittal view),
    slices through the centre of mass of the foreground (the volume centre if nothing was segmented), aspect from
    the voxel size.
    """
    aff = np.asarray(affine if affine is not None else np.eye(4), dtype=np.float64)
    img, zooms = _ras_view(np.asarray(image, dtype=np.float32), aff)
    lab, _ = _ras_view(np.asarray(labels), aff)
    fg = np.argwhere(lab > 0)
    c = fg.mean(0).round().astype(int) if fg.size else np.asarray(lab.shape) // 2
    lo, hi = float(window[0]), float(window[1])
    n_cls = int(max(int(lab.max()), max(names or {0: ""}))) + 1
    tab10 = colormaps["tab10"]
    base = [(0.0, 0.0, 0.0, 0.0)] + [tuple(tab10(i % 10)) for i in range(n_cls - 1)]
    cmap = ListedColormap(base)
    views = [
        ("axial", img[::-1, :, c[2]].T, lab[::-1, :, c[2]].T, zooms[1] / zooms[0]),
        ("coronal", img[::-1, c[1], :].T, lab[::-1, c[1], :].T, zooms[2] / zooms[0]),
        ("sagittal", img[c[0], ::-1, :].T, lab[c[0], ::-1, :].T, zooms[2] / zooms[1]),
    ]
    fig = Figure(figsize=(12, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, im, lb, aspect) in enumerate(views):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
        ax.imshow(
            np.ma.masked_equal(lb, 0),
            cmap=cmap,
            vmin=0,
            vmax=n_cls - 1,
            alpha=0.45,
            origin="lower",
            aspect=aspect,
            interpolation="nearest",
        )
        ax.set_title(name)
        ax.axis("off")
    present = sorted(int(v) for v in np.unique(lab) if v > 0)
    if present:
        handles = [Patch(color=cmap(v), label=(names or {}).get(v, str(v))) for v in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False)
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    Path(path).write_bytes(buf.getvalue())


# ====================================================================================================== the job
def _case_ids(items: Sequence[Path], found: Mapping[Path, str]) -> dict[Path, str]:
    out: dict[Path, str] = {}
    used: dict[str, Path] = {}
    for p in items:
        cid = found.get(p) or (p.name if p.is_dir() else case_id_of(p))
        if not p.is_dir() and cid.endswith("_0000"):  # nnU-Net channel suffix, wherever the file lies
            cid = cid[: -len("_0000")]
        if cid in used:
            raise DataError(f"inputs {used[cid]} and {p} would both be written as {cid}.nii.gz")
        used[cid] = p
        out[p] = cid
    return out


class PredictJob(BatchJob):
    """Batch job of :func:`predict`: one scan in, ``<case>.nii.gz`` (+ overlay, probabilities) out."""

    description = "ct-seg predict"
    log_name = "predict.log"

    def __init__(
        self,
        segmenter: Segmenter,
        case_ids: Mapping[Path, str],
        *,
        probabilities: bool,
        overlay: bool,
    ) -> None:
        self.seg = segmenter
        self.case_ids = dict(case_ids)
        self.probabilities = probabilities
        self.overlay = overlay

    def outputs_for(self, item: Path) -> list[Path]:
        cid = self.case_ids[item]
        outs = [Path(f"{cid}.nii.gz")]
        if self.overlay:
            outs.append(Path("overlays") / f"{cid}.png")
        if self.probabilities:
            outs.append(Path("probabilities") / f"{cid}.npz")
        return outs

    def load(self, item: Path) -> Any:
        array, meta = read_volume(item)
        if array.ndim != 3:
            raise DataError(f"{item}: expected a 3D CT volume, got shape {array.shape}")
        return array, meta, self.seg.preprocess(array, meta)  # resampling overlaps the previous case's compute

    def process(self, item: Path, loaded: Any, tmp_outputs: list[Path]) -> Mapping[str, Any]:
        array, meta, pre = loaded
        t0 = time.perf_counter()
        probs = self.seg.probabilities(pre)
        labels, full = self.seg.to_input_grid(probs, pre.affine, meta, array.shape, keep=self.probabilities)
        t_net = time.perf_counter() - t0
        write_label_map(tmp_outputs[0], labels, meta)
        k = 1
        if self.overlay:
            self._write_overlay(tmp_outputs[k], item, array, labels, meta)
            k += 1
        if self.probabilities and full is not None:
            names = json.dumps({str(v): n for v, n in self.seg.labels.items()})
            np.savez_compressed(tmp_outputs[k], probabilities=full, labels=np.asarray(names))
        present = sorted(int(v) for v in np.unique(labels) if v > 0)
        return {
            "case": self.case_ids[item],
            "shape": "x".join(str(s) for s in array.shape),
            "labels_found": " ".join(self.seg.labels.get(v, str(v)) for v in present),
            "foreground_voxels": int(np.count_nonzero(labels)),
            "inference_s": round(t_net, 3),
        }

    def _write_overlay(self, path: Path, item: Path, array: np.ndarray, labels: np.ndarray, meta: ImageMeta) -> None:
        save_overlay(
            path,
            array,
            labels,
            meta.affine,
            window=self.seg.spec["preprocess"]["hu_window"],
            names=self.seg.labels,
            title=self.case_ids[item],
        )


# ====================================================================================================== predict
def _resolve_infer_device(device: str, precision: str) -> tuple[torch.device, str]:
    dev = resolve_device(device)
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and dev.type != "cuda":
        logger.warning("precision=bf16 on CPU is very slow; using fp32")
        precision = "fp32"
    return dev, precision


def _run_segmenter(
    run: str | Path,
    checkpoint: str,
    *,
    overlap: float | None,
    sw_batch_size: int | None,
    tta: bool | None,
    resample: str | None,
    device: str | None,
    precision: str | None,
) -> Segmenter:
    """The run's network on its device, with the run's inference settings where the caller gave none."""
    model, spec = load_run_model(run, checkpoint)
    inf = dict(spec.get("infer") or {})
    dev, prec = _resolve_infer_device(device or inf.get("device", "auto"), precision or inf.get("precision", "auto"))
    model.to(dev)
    return Segmenter(
        model,
        spec,
        device=dev,
        precision=prec,
        overlap=overlap if overlap is not None else float(inf.get("overlap", 0.5)),
        sw_batch_size=sw_batch_size or int(inf.get("sw_batch_size", 4)),
        blend=str(inf.get("blend", "gaussian")),
        tta=tta if tta is not None else bool(inf.get("tta", False)),
        resample=resample or str(inf.get("resample", "probabilities")),
    )


def _is_series_dir(path: Path) -> bool:
    try:
        return any(f.is_file() and _is_dicom_candidate(f) for f in path.iterdir())
    except OSError:
        # A folder that cannot be listed becomes one input: its reader reports it in the manifest as an error
        # row, where the folder scan would skip it without a word.
        return True


def _find_inputs(inp: str | Path) -> dict[Path, str]:
    """Input items and their case ids: a list file's entries, or the scans found in a file or folder."""
    p = Path(inp)
    found: dict[Path, str] = {}
    if p.is_file() and p.suffix.lower() in LIST_FILE_SUFFIXES:
        items = resolve_inputs(p, NIFTI_SUFFIXES, dirs_as_items=_is_series_dir)
    else:
        if not p.exists():
            raise DataError(f"input not found: {p}")
        sources = find_volumes(p)
        items = [Path(os.path.abspath(s.path)) for s in sources]
        found = {Path(os.path.abspath(s.path)): s.case_id for s in sources}
    return _case_ids(items, found)


def predict(
    run: str | Path,
    inp: str | Path,
    out: str | Path,
    *,
    checkpoint: str = "auto",
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    tta: bool | None = None,
    resample: str | None = None,
    probabilities: bool = False,
    overlay: bool = True,
    device: str | None = None,
    precision: str | None = None,
    overwrite: bool = False,
    workers: int = 1,
    quiet: bool = False,
) -> BatchSummary:
    """Segment NIfTI files, DICOM series folders or an nnU-Net ``imagesTs`` folder with a trained run.

    Writes ``OUT/<case>.nii.gz`` (uint8/uint16, the input's exact shape and affine), ``OUT/overlays/<case>.png``,
    optionally ``OUT/probabilities/<case>.npz`` (float16 ``[C, X, Y, Z]``), and ``OUT/manifest.csv`` through
    the batch runner (resume: finished cases are skipped; ``overwrite`` redoes them).

    Args:
        run: run directory of :func:`~medvit.apps.ct_seg.train.train` (or a ``model.safetensors`` with its
            ``model.json``).
        inp: a NIfTI file, a folder (searched recursively; nnU-Net ``_0000`` suffixes dropped from names; DICOM
            series folders are one case each), or a ``.txt`` list of paths.
        out: output folder.
        checkpoint: see :func:`~medvit.apps.ct_seg.model_file.load_run_model`.
        overlap: window overlap (default: the run's).
        sw_batch_size: windows per forward pass (default: the run's).
        tta: flip test-time augmentation (default: the run's).
        resample: ``probabilities`` or ``labels`` (default: the run's).
        probabilities: also write the probability maps.
        overlay: write the overlay PNGs.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (default: the run's).
        precision: ``auto``, ``fp32`` or ``bf16`` (default: the run's).
        overwrite: redo cases whose outputs exist.
        workers: threads reading and preprocessing the next cases.
        quiet: no progress bar.

    Returns:
        The :class:`~medvit.shared.engine.batch.BatchSummary` (``exit_code`` 1 if any case failed).
    """
    seg = _run_segmenter(
        run,
        checkpoint,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        tta=tta,
        resample=resample,
        device=device,
        precision=precision,
    )
    case_ids = _find_inputs(inp)
    job = PredictJob(seg, case_ids, probabilities=probabilities, overlay=overlay)
    weights = getattr(seg.model, "weights_path", "")
    logger.info("predicting %d input(s) on %s (%s) with %s", len(case_ids), seg.device, seg.precision, weights)
    return run_batch(job, list(case_ids), out, overwrite=overwrite, workers=workers, batch_size=1, quiet=quiet)
