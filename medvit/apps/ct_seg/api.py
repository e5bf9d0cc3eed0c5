"""Typed API behind ``medvit ct-seg``: :func:`train`, :func:`predict`, :func:`evaluate`, and the inference core.

A run directory written by :func:`train` holds, besides what the engine writes (``config.yaml``,
``metrics.jsonl``, ``last.pt``/``best.pt``, ``summary.json``, ``plots/``):

* ``splits.json``: the nnU-Net-style folds (``[{"train": [...], "val": [...]}, ...]``);
* ``model.json``: everything :func:`predict` needs to rebuild the network and reproduce the preprocessing
  (encoder architecture, decoder kwargs, labels, spacing, HU window, crop, inference defaults);
* ``model.safetensors``: the weights of the best checkpoint (by mean foreground validation Dice; the last one
  with ``--fold all``), written at the end (``model.json`` is its sidecar).

Inference (:class:`Segmenter`): the training preprocessing (RAS, spacing, HU window, foreground crop), MONAI
``sliding_window_inference`` with Gaussian blending (optional flip test-time augmentation), softmax, then the
probabilities are resampled with MONAI ``SpatialResample`` from the network grid straight onto the input's
own voxel grid (its affine and shape), and the argmax is taken there. The label map written therefore has
exactly the input's shape and affine, whatever its orientation, obliquity or spacing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medvit.apps.ct_seg.config import DEFAULT_HU_WINDOW, DEFAULT_SPACING, CTSegConfig, load_ct_seg_config
from medvit.apps.ct_seg.data import (
    CTCase,
    SegCropDataset,
    case_id_of,
    check_label_values,
    collate_crops,
    crop_transform,
    load_dataset,
    make_splits,
)
from medvit.apps.ct_seg.model import UNETR, build_encoder_from_checkpoint, official_downstream_encoder
from medvit.shared.data.io import NIFTI_SUFFIXES, ImageMeta
from medvit.shared.errors import ConfigError, DataError, MedvitError, WeightsError
from medvit.shared.schema import (
    SidecarSchema,
    int_in,
    int_or_ints,
    list_of,
    mapping_of,
    one_of,
    optional,
    read_json_sidecar,
    real_in,
    validate_sidecar,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_FORMAT",
    "Segmenter",
    "SegTask",
    "TrainResult",
    "build_model",
    "evaluate",
    "load_run_model",
    "predict",
    "save_overlay",
    "train",
]

MODEL_FORMAT = "medvit-ct-seg"
MODEL_FORMAT_VERSION = 1


# =============================================================================================== model building
def _encoder_meta_preprocessing(meta: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """``(spacing, hu_window)`` recorded by a CT pretraining export, if any."""
    if not meta:
        return None, None
    spacing = meta.get("spacing")
    window = meta.get("hu_window")
    intensity = meta.get("intensity")
    if window is None and isinstance(intensity, Mapping):
        window = intensity.get("hu_window") or intensity.get("window")
    return spacing, window


def build_model(cfg: CTSegConfig, num_classes: int) -> tuple[UNETR, dict[str, Any]]:
    """The network of a config: weights from ``model.weights`` (any supported format) or a registry backbone.

    Returns:
        (model, the encoder's sidecar or ``{}``); ``model.load_report`` is set when weights were loaded.

    Raises:
        WeightsError: unreadable or mismatching weights.
        ConfigError: a 2D encoder.
    """
    from medvit.shared.backbone.weights import detect_format, read_checkpoint, read_sidecar

    m = cfg.model
    dec = {"taps": m.taps, "feature_size": m.feature_size, "res_block": m.res_block}
    over = {**m.backbone_overrides, "drop_path_rate": m.drop_path}
    meta: dict[str, Any] = {}
    if m.weights is None:
        model = UNETR.from_registry(m.backbone, num_classes, backbone_overrides=over, **dec)
    else:
        path = Path(m.weights).expanduser()
        side = read_sidecar(path) if path.suffix == ".safetensors" else None
        if side is not None and side.get("format") == "medvit":
            # The export fixes the architecture; only regularisation is ours to set.
            model = UNETR.from_export(path, num_classes, backbone_overrides={"drop_path_rate": m.drop_path}, **dec)
            meta = dict(side)
        elif side is not None and side.get("format") == MODEL_FORMAT:
            model, meta = _from_ct_seg_weights(path, side, num_classes)
        else:
            sd, info = read_checkpoint(path)
            fmt = detect_format(sd, info)
            foreign = {"drop_path_rate": m.drop_path}
            if m.checkpoint_img_size is not None:
                foreign["img_size"] = list(m.checkpoint_img_size)
            kw = {"num_heads": m.num_heads, "backbone_overrides": foreign}
            if fmt == "hi-end-mae":
                model = UNETR.from_hi_end_mae(sd, num_classes, **kw, **dec)
            elif fmt == "monai":
                # feature size and taps follow the checkpoint's decoder unless taps are set explicitly
                model = UNETR.from_monai_unetr(sd, num_classes, **kw, taps=m.taps, res_block=m.res_block)
            else:
                enc, report = build_encoder_from_checkpoint(
                    sd, source_format=fmt, num_heads=m.num_heads, overrides=foreign
                )
                model = UNETR(enc, num_classes, **dec)
                model.load_report = report  # type: ignore[attr-defined]
        report = getattr(model, "load_report", None)
        if report is not None:
            logger.info("weights %s: %s", path.name, report.summary())
    if model.spatial_dims != 3:
        raise ConfigError(f"model: ct-seg needs a 3D encoder, got a {model.spatial_dims}D one")
    if m.official_downstream:
        try:
            model.encoder = official_downstream_encoder(model.encoder)
        except ValueError as err:
            raise ConfigError(f"model.{err}") from None
        logger.info("encoder built as Hi-End-MAE's official downstream network (no cls token, eps 1e-5, learned PE)")
    return model, meta


def _from_ct_seg_weights(path: Path, side: Mapping[str, Any], num_classes: int) -> tuple[UNETR, dict[str, Any]]:
    """A whole network from an earlier ct-seg run (its output layer is dropped if the classes differ)."""
    from safetensors.torch import load_file

    model = model_from_spec(side, num_classes=num_classes, source=str(path.with_suffix(".json")))
    sd = load_file(str(path))
    target = model.state_dict()
    keep = {k: v for k, v in sd.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
    missing = sorted(set(target) - set(keep))
    if any(not k.startswith("out.") for k in missing):
        raise WeightsError(f"{path}: does not match its own model.json ({len(missing)} tensors missing)")
    model.load_state_dict(keep, strict=False)
    if missing:
        logger.info("%s: output layer re-initialised for %d classes", path.name, num_classes)
    return model, {"spacing": side["preprocess"]["spacing"], "hu_window": side["preprocess"]["hu_window"]}


def _spacing_check(value: Any) -> str | None:
    if value == "native":
        return None
    ok = isinstance(value, list) and len(value) == 3
    if ok and all(real_in(0.0, 1000.0, lo_open=True)(v) is None for v in value):
        return None
    return f"must be 'native' or 3 positive mm values, got {value!r}"[:120]


def _infer_check(value: Any) -> str | None:
    from medvit.apps.ct_seg.config import InferCfg
    from medvit.shared.config import from_dict

    if not isinstance(value, Mapping):
        return f"must be an object, got {type(value).__name__}"
    try:
        from_dict(InferCfg, value)
    except ConfigError as err:
        return str(err)
    return None


def _axcodes_check(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= 8:
        return None
    return f"must be axis codes such as 'RAS', got {value!r}"[:120]


def _labels_check(value: Any) -> str | None:
    if (
        isinstance(value, Mapping)
        and len(value) <= 10_000
        and all(isinstance(k, str) and k.isdigit() and isinstance(n, str) for k, n in value.items())
    ):
        return None
    return "must map label values ('0', '1', ...) to names"


def _norm_name_check(value: Any) -> str | None:
    # MONAI norm spec: a name, or [name, {args}] (stored as a list).
    if isinstance(value, str) and len(value) <= 32:
        return None
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], Mapping):
        return None
    return f"must be a norm name or [name, {{args}}], got {value!r}"[:120]


def model_schema() -> SidecarSchema:
    """What a ``model.json`` must hold: the encoder within the backbone bounds, the decoder, the preprocessing."""
    decoder = mapping_of(
        {
            "num_classes": int_in(1, 10_000),
            "taps": list_of(int_in(0, 511), max_len=64),
            "feature_size": int_in(1, 512),
            "upsample_factors": list_of(int_or_ints(1, 1024, (2, 3)), max_len=64),
            "norm_name": _norm_name_check,
            "res_block": one_of(True, False),
        },
        required=("num_classes",),
    )
    preprocess = mapping_of(
        {
            "spacing": _spacing_check,
            "hu_window": list_of(real_in(-1e6, 1e6), max_len=2),
            "orientation": optional(_axcodes_check),
            "crop_foreground": one_of(True, False),
        },
        required=("spacing", "hu_window"),
    )
    return SidecarSchema(
        format=MODEL_FORMAT,
        max_version=MODEL_FORMAT_VERSION,
        arch_key="encoder",
        fields={"decoder": decoder, "preprocess": preprocess},
        optional_fields={
            "crop_size": list_of(int_in(1, 4096), max_len=3),
            "labels": _labels_check,
            "infer": _infer_check,
        },
    )


def model_from_spec(spec: Mapping[str, Any], *, num_classes: int | None = None, source: str = "model.json") -> UNETR:
    """Rebuild the (randomly initialised) network described by a ``model.json``.

    Args:
        spec: the parsed ``model.json``.
        num_classes: output classes (default: the spec's).
        source: the file, as errors name it.

    Raises:
        WeightsError: a spec against :func:`model_schema` (naming ``source`` and the problem), checked before any
            layer is built.
    """
    from medvit.shared.backbone.weights import build_vit

    if spec.get("format") != MODEL_FORMAT:
        raise WeightsError(f"{source}: not a ct-seg model description (format {spec.get('format')!r})")
    validate_sidecar(spec, source, model_schema())
    enc = build_vit(spec["encoder"], source=source)
    dec = dict(spec["decoder"])
    n = int(num_classes if num_classes is not None else dec.pop("num_classes"))
    dec.pop("num_classes", None)
    norm = dec.get("norm_name")
    if isinstance(norm, list):
        dec["norm_name"] = tuple(norm)
    return UNETR(enc, n, **dec)


def _atomic_json(path: Path, doc: Any) -> None:
    from medvit.shared.engine.rundir import write_text_atomic

    write_text_atomic(path, json.dumps(doc, indent=2, default=str) + "\n")


def load_run_model(run: str | Path, checkpoint: str = "auto") -> tuple[UNETR, dict[str, Any]]:
    """The trained network of a run directory (or of a ``model.safetensors`` + ``model.json`` pair).

    Args:
        run: run directory, or a ``.safetensors`` file with its ``.json`` sidecar.
        checkpoint: ``auto`` (``model.safetensors``, else ``best.pt``, else ``last.pt``), ``best``, ``last``, or a
            checkpoint path.

    Returns:
        (model in eval mode on the CPU, the ``model.json`` dict).

    Raises:
        WeightsError: no model description or weights in ``run``.
    """
    from safetensors.torch import load_file

    from medvit.shared.engine.checkpoint import load_checkpoint

    run = Path(run)
    spec_path = run.with_suffix(".json") if run.suffix == ".safetensors" else run / "model.json"
    if not spec_path.is_file():
        raise WeightsError(f"{run}: no model.json (not a ct-seg run directory; train one with `medvit ct-seg train`)")
    spec = read_json_sidecar(spec_path, model_schema())
    model = model_from_spec(spec, source=str(spec_path))
    folder = spec_path.parent
    candidates: list[Path]
    if run.suffix == ".safetensors":
        candidates = [run]
    elif checkpoint == "auto":
        candidates = [folder / "model.safetensors", folder / "best.pt", folder / "last.pt"]
    elif checkpoint in ("best", "last"):
        candidates = [folder / f"{checkpoint}.pt"]
    else:
        candidates = [Path(checkpoint)]
    src = next((p for p in candidates if p.is_file()), None)
    if src is None:
        raise WeightsError(f"{run}: no weights ({', '.join(p.name for p in candidates)} missing)")
    if src.suffix == ".safetensors":
        sd = load_file(str(src))
    else:
        ck = load_checkpoint(src)
        sd = {k[len("model.") :]: v for k, v in ck["model"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(sd)
    except RuntimeError as err:
        raise WeightsError(f"{src}: weights do not match {spec_path.name} ({str(err).splitlines()[0]})") from None
    model.eval()
    model.weights_path = str(src)  # type: ignore[assignment]
    logger.info("loaded %s", src)
    return model, spec


# ===================================================================================================== training
class SegTask(nn.Module):
    """Training task: DiceCE loss of the UNETR logits (Hi-End-MAE downstream: softmax, squared denominators).

    Batch: ``{"image": [N, 1, *crop], "label": [N, 1, *crop] int}``.
    """

    def __init__(self, model: UNETR) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.model = model
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        logits = self.model(batch["image"])
        return {"loss": self.loss(logits.float(), batch["label"])}


class _ValidationHook:
    """Sliding-window Dice on the validation fold (in the preprocessed grid, like nnU-Net's pseudo-Dice)."""

    def __init__(self, dataset: SegCropDataset, labels: Mapping[int, str], segmenter_kw: Mapping[str, Any]) -> None:
        self.dataset = dataset
        self.labels = dict(labels)
        self.kw = dict(segmenter_kw)
        self.last: dict[str, float] = {}

    def on_eval(self, state: Any) -> dict[str, float]:
        from medvit.shared.metrics.segmentation import dice_only

        model: UNETR = state.task.model
        fg = [v for v in self.labels if v != 0]
        per_case: list[dict[int, float]] = []
        for i in range(len(self.dataset)):
            d = self.dataset.preprocessed(i)
            with state.autocast():
                probs = sliding_probs(model, d["image"].as_tensor(), state.device, **self.kw)
            pred = probs.argmax(0).numpy()
            ref = d["label"].as_tensor()[0].numpy().round().astype(np.int64)
            per_case.append(dice_only(pred, ref, fg))
        out = {"dice": float(np.mean([np.mean(list(s.values())) for s in per_case]))}
        for v in fg:
            out[f"dice_{self.labels[v]}"] = float(np.mean([s[v] for s in per_case]))
        self.last = out
        logger.info("validation (%d cases): mean foreground Dice %.4f", len(per_case), out["dice"])
        return out


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory.
        steps: optimizer steps done.
        best_dice: best mean foreground validation Dice (None without validation).
        best_step: its step.
        val_dice: per-class Dice of the last validation (name -> Dice).
        weights: ``model.safetensors``.
        fold: the fold trained.
    """

    run_dir: Path
    steps: int
    best_dice: float | None
    best_step: int | None
    val_dice: dict[str, float]
    weights: Path
    fold: int | str


def _resolve_preprocessing(cfg: CTSegConfig, meta: Mapping[str, Any]) -> tuple[Any, tuple[float, float]]:
    sp_meta, win_meta = _encoder_meta_preprocessing(meta)
    spacing: Any = cfg.data.spacing if cfg.data.spacing is not None else sp_meta
    if spacing is None:
        spacing = DEFAULT_SPACING
    window = cfg.data.hu_window if cfg.data.hu_window is not None else win_meta
    if window is None:
        window = DEFAULT_HU_WINDOW
    if spacing != "native":
        spacing = [float(s) for s in spacing]
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ConfigError(f"data.spacing: need 3 positive mm values, got {spacing}")
    window = (float(window[0]), float(window[1]))
    return spacing, window


def preprocess_transform(spec: Mapping[str, Any], *, with_label: bool) -> Any:
    """The deterministic preprocessing recorded in ``model.json`` (``spec["preprocess"]``)."""
    from medvit.shared.data.transforms import ct_preprocess

    pre = spec["preprocess"]
    spacing = None if pre["spacing"] == "native" else tuple(pre["spacing"])
    return ct_preprocess(
        spacing=spacing,
        hu_window=tuple(pre["hu_window"]),
        orientation=pre.get("orientation") or None,
        crop_foreground=bool(pre.get("crop_foreground", True)),
        keys=("image",),
        label_key="label" if with_label else None,
    )


def _rank() -> int:
    from medvit.shared.engine import distributed

    return distributed.rank() if distributed.is_initialized() else distributed.env_rank()


def _load_splits(run: Path, data_root: Path | None, ids: Sequence[str], folds: int) -> list[dict[str, list[str]]]:
    for cand in [run / "splits.json", *([data_root / "splits_final.json"] if data_root else [])]:
        if cand.is_file():
            try:
                splits = json.loads(cand.read_text(encoding="utf-8"))
                assert isinstance(splits, list) and all("train" in s and "val" in s for s in splits)
            except (json.JSONDecodeError, AssertionError):
                raise DataError(f"{cand}: not a list of {{'train': [...], 'val': [...]}} folds") from None
            unknown = sorted({c for s in splits for c in [*s["train"], *s["val"]]} - set(ids))
            if unknown:
                raise DataError(f"{cand}: case {unknown[0]} is not in the dataset ({len(unknown)} unknown)")
            logger.info("folds from %s", cand)
            return splits
    return make_splits(ids, folds)


def _infer_labels(cases: Sequence[CTCase]) -> dict[int, str]:
    """Label set found in the label maps (when no dataset.json declares one)."""
    import nibabel as nib

    found: set[int] = set()
    for c in cases:
        arr = np.asarray(nib.load(c.label).dataobj)
        found |= set(check_label_values(c.case_id, c.label, arr, None).tolist())
    found.add(0)
    logger.info("no dataset.json: labels found in the data: %s", sorted(found))
    return {v: ("background" if v == 0 else f"label_{v}") for v in sorted(found)}


def train(
    data: str | Path | None = None,
    *,
    out: str | Path,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    dataset_json: str | Path | None = None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    quiet: bool = False,
    **options: Any,
) -> TrainResult:
    """Fine-tune a UNETR on an nnU-Net raw / MSD dataset (one fold of a 5-fold split, or ``all``).

    Args:
        data: dataset folder (``dataset.json`` + ``imagesTr``/``labelsTr``), or None with ``images``/``labels``.
        out: run directory.
        images: images folder (instead of ``data``).
        labels: label-map folder (with ``images``).
        dataset_json: label set for ``images``/``labels``.
        preset: preset name (default ``base``; on ``resume`` the run's stored config).
        config_file: YAML applied over the preset.
        overrides: ``--set`` items.
        resume: continue from ``out/last.pt``.
        quiet: no progress bars.
        **options: first-class options as dotted config keys (``model.weights``, ``data.fold``, ``optim.steps``...).

    Returns:
        A :class:`TrainResult`.

    Raises:
        MedvitError: bad data (naming the case), config or weights.
    """
    from medvit.shared.config import read_yaml, to_dict
    from medvit.shared.data.cache import VolumeCache, transform_signature
    from medvit.shared.engine.fit import TrainConfig, fit

    run = Path(out)
    stored = run / "config.yaml"
    base = None
    if resume and stored.is_file() and preset is None and config_file is None:
        base = read_yaml(stored) or None
    cfg = load_ct_seg_config(preset, config_file, overrides, base=base, **options)
    ds = load_dataset(data, images=images, labels=labels, dataset_json=dataset_json)
    label_set = ds.labels or _infer_labels(ds.cases)
    if sorted(label_set) != list(range(max(label_set) + 1)):
        raise DataError(f"labels {sorted(label_set)}: values must be consecutive from 0 (nnU-Net convention)")
    num_classes = max(label_set) + 1
    main = _rank() == 0

    # ---- folds
    fold = cfg.data.fold
    if fold == "all":
        train_ids, val_ids = ds.ids, []
    else:
        splits = _load_splits(run, ds.root if data is not None else None, ds.ids, cfg.data.folds)
        if fold >= len(splits):
            raise ConfigError(f"data.fold={fold} but the split has {len(splits)} folds")
        train_ids, val_ids = splits[fold]["train"], splits[fold]["val"]
        if main:
            run.mkdir(parents=True, exist_ok=True)
            if not (run / "splits.json").is_file():
                _atomic_json(run / "splits.json", splits)
    by_id = {c.case_id: c for c in ds.cases}
    train_cases = [by_id[i] for i in train_ids]
    val_cases = [by_id[i] for i in val_ids][: cfg.data.val_max_cases]
    if not train_cases:
        raise DataError("no training cases in this fold")

    # ---- model and its description
    torch.manual_seed(cfg.optim.seed)
    spec_path = run / "model.json"
    if resume and spec_path.is_file():
        spec = read_json_sidecar(spec_path, model_schema())
        model = model_from_spec(spec, source=str(spec_path))
        if model.num_classes != num_classes:
            raise DataError(f"{spec_path}: the run has {model.num_classes} classes, the dataset {num_classes}")
    else:
        model, meta = build_model(cfg, num_classes)
        spacing, window = _resolve_preprocessing(cfg, meta)
        spec = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "medvit_version": _version(),
            "encoder": model.encoder.arch_kwargs,
            "decoder": model.decoder_kwargs(),
            "labels": {str(v): n for v, n in label_set.items()},
            "preprocess": {
                "spacing": spacing,
                "hu_window": list(window),
                "orientation": cfg.data.orientation,
                "crop_foreground": cfg.data.crop_foreground,
            },
            "crop_size": list(cfg.data.crop_size),
            "infer": to_dict(cfg.infer),
            "encoder_weights": str(cfg.model.weights) if cfg.model.weights else None,
            "dataset": str(ds.source or ds.root),
            "fold": fold,
        }
    try:
        model.check_input_size(cfg.data.crop_size)
    except ValueError:
        raise ConfigError(
            f"data.crop_size {tuple(cfg.data.crop_size)} must be a multiple of the patch size {model.patch_size}"
        ) from None
    if main:
        run.mkdir(parents=True, exist_ok=True)
        _atomic_json(spec_path, spec)
    labels_int = {int(v): n for v, n in spec["labels"].items()}

    # ---- data
    pre = spec["preprocess"]
    signature = transform_signature(
        "ct_seg",
        spacing=pre["spacing"],
        hu_window=pre["hu_window"],
        orientation=pre["orientation"],
        crop_foreground=pre["crop_foreground"],
        labels=sorted(labels_int),
    )
    cache = VolumeCache(cfg.data.cache_dir or run / "cache", signature)
    d = cfg.data
    crops = crop_transform(
        d.crop_size,
        d.samples_per_volume,
        num_classes,
        foreground=d.foreground,
        background=d.background,
        flip_prob=d.flip_prob,
        rot90_prob=d.rot90_prob,
        intensity_prob=d.intensity_prob,
    )
    crops.set_random_state(seed=cfg.optim.seed)
    preprocess = preprocess_transform(spec, with_label=True)
    train_set = SegCropDataset(train_cases, labels_int, preprocess, crops, cache)
    val_set = SegCropDataset(val_cases, labels_int, preprocess, None, cache)
    _warm_cache(train_set, val_set, quiet=quiet)

    # ---- fit
    o = cfg.optim
    tcfg = TrainConfig.from_section(
        o,
        drop_last=False,
        eval_every=o.eval_every if val_cases else 0,
        best_metric="val/dice" if val_cases else None,
    )
    sw = {
        "roi": tuple(cfg.data.crop_size),
        "overlap": cfg.infer.overlap,
        "sw_batch_size": cfg.infer.sw_batch_size,
        "blend": cfg.infer.blend,
    }
    hook = _ValidationHook(val_set, labels_int, sw)
    task = SegTask(model)
    result = fit(
        task,
        train_set,
        tcfg,
        run,
        collate_fn=collate_crops,
        resume=resume,
        quiet=quiet,
        hooks=[hook] if val_cases else [],
        resolved_config=to_dict(cfg),
    )

    # ---- export the chosen weights
    weights = run / "model.safetensors"
    if main:
        from medvit.shared.engine.checkpoint import load_checkpoint

        src = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
        ck = load_checkpoint(src)
        sd = {k[len("model.") :]: v.contiguous() for k, v in ck["model"].items() if k.startswith("model.")}
        spec["weights"] = {"from": src.name, "step": int(ck.get("step", result.step))}
        spec["best"] = {"metric": "val/dice", "value": result.best, "step": result.best_step}
        _save_safetensors(weights, sd)
        _atomic_json(spec_path, spec)
        logger.info("wrote %s (from %s)", weights, src.name)
    return TrainResult(run, result.step, result.best, result.best_step, hook.last, weights, fold)


def _version() -> str:
    from medvit import __version__

    return __version__


def _save_safetensors(path: Path, sd: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(save({k: v.detach().cpu().contiguous() for k, v in sd.items()}, metadata={"format": MODEL_FORMAT}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _warm_cache(train_set: SegCropDataset, val_set: SegCropDataset, *, quiet: bool) -> None:
    """Read, check and preprocess every case once (in this process: errors name the case, not a worker)."""
    from medvit.shared.engine import distributed

    rank, world = _rank(), max(distributed.env_world_size(), 1)
    todo = [(train_set, i) for i in range(len(train_set))] + [(val_set, i) for i in range(len(val_set))]
    todo = todo[rank::world]
    t0 = time.perf_counter()
    with _progress(len(todo), "preprocessing", quiet=quiet or rank != 0) as advance:
        for dset, i in todo:
            try:
                dset.preprocessed(i)
            except MedvitError:
                raise
            except Exception as err:  # noqa: BLE001 - MONAI wraps transform errors; name the case
                raise DataError(f"case {dset.cases[i].case_id}: preprocessing failed ({err})") from err
            advance()
    logger.info("preprocessed %d case(s) in %.1f s", len(todo), time.perf_counter() - t0)


@contextlib.contextmanager
def _progress(total: int, description: str, *, quiet: bool) -> Any:
    import sys

    if quiet or total == 0 or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


# ===================================================================================================== inference
def sliding_probs(
    model: nn.Module,
    image: torch.Tensor,
    device: torch.device,
    *,
    roi: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    blend: str = "gaussian",
    tta: bool = False,
) -> torch.Tensor:
    """Softmax probabilities of a preprocessed volume by sliding-window inference.

    Args:
        model: the network (eval mode).
        image: ``[1, X, Y, Z]`` preprocessed volume.
        device: compute device.
        roi: window size.
        overlap: window overlap.
        sw_batch_size: windows per forward pass.
        blend: ``gaussian`` or ``constant``.
        tta: average over the 8 flips of the three axes.

    Returns:
        ``[C, X, Y, Z]`` float32 probabilities on the CPU.
    """
    from monai.inferers import sliding_window_inference

    x = image.as_subclass(torch.Tensor)[None].to(device=device, dtype=torch.float32)
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    acc = None
    with torch.inference_mode():
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            logits = sliding_window_inference(
                xi, tuple(int(r) for r in roi), sw_batch_size, model, overlap=overlap, mode=blend
            )
            p = torch.softmax(logits.as_subclass(torch.Tensor).float(), dim=1)
            p = torch.flip(p, dims) if dims else p
            acc = p if acc is None else acc + p
        assert acc is not None
        acc = acc / len(flips)
    return acc[0].cpu()


class Segmenter:
    """Volume in, label map on the same grid out (the inference core of ``predict``).

    Args:
        model: a :class:`UNETR` (or any module mapping ``[B, 1, *roi]`` to logits), eval mode.
        spec: the ``model.json`` dict (``preprocess``, ``crop_size``, ``labels``).
        device: compute device.
        precision: ``fp32`` or ``bf16`` (autocast; CUDA only).
        overlap, sw_batch_size, blend, tta: sliding-window settings.
        resample: ``probabilities`` (trilinear resampling of the softmax, then argmax on the input grid) or
            ``labels`` (argmax on the network grid, nearest-neighbour resampling).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: Mapping[str, Any],
        *,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        overlap: float = 0.5,
        sw_batch_size: int = 4,
        blend: str = "gaussian",
        tta: bool = False,
        resample: str = "probabilities",
    ) -> None:
        self.model = model
        self.spec = spec
        self.device = torch.device(device)
        self.precision = precision
        self.sw = {
            "roi": tuple(spec["crop_size"]),
            "overlap": overlap,
            "sw_batch_size": sw_batch_size,
            "blend": blend,
            "tta": tta,
        }
        self.resample = resample
        self.labels = {int(v): n for v, n in spec["labels"].items()}
        self.pre = preprocess_transform(spec, with_label=False)
        self.pre_nocrop = None
        if spec["preprocess"].get("crop_foreground", True):
            s2 = {**spec, "preprocess": {**spec["preprocess"], "crop_foreground": False}}
            self.pre_nocrop = preprocess_transform(s2, with_label=False)

    def preprocess(self, array: np.ndarray, meta: ImageMeta) -> Any:
        """``[X, Y, Z]`` volume -> ``[1, X', Y', Z']`` MetaTensor in the network's grid (affine tracked)."""
        from medvit.shared.data.transforms import volume_to_metatensor

        out = self.pre({"image": volume_to_metatensor(array, meta)})["image"]
        if min(out.shape[1:]) == 0 and self.pre_nocrop is not None:  # nothing above the HU window's floor
            out = self.pre_nocrop({"image": volume_to_metatensor(array, meta)})["image"]
        return out

    def probabilities(self, pre: Any) -> torch.Tensor:
        """Softmax ``[C, X', Y', Z']`` in the network grid."""
        ctx: Any = contextlib.nullcontext()
        if self.precision == "bf16" and self.device.type == "cuda":
            ctx = torch.autocast("cuda", dtype=torch.bfloat16)
        with ctx:
            return sliding_probs(self.model, pre.as_tensor(), self.device, **self.sw)

    def to_input_grid(
        self, probs: torch.Tensor, net_affine: torch.Tensor, meta: ImageMeta, shape: Sequence[int], *, keep: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Resample network-grid probabilities onto the input's voxel grid and take the argmax there.

        Returns:
            (label map ``[X, Y, Z]`` uint8/uint16 in the input's voxel order, probabilities ``[C, X, Y, Z]`` float16
            or None). Outside the network grid (the cropped-away air) everything is background.
        """
        from monai.data import MetaTensor
        from monai.transforms import SpatialResample

        dst_np = np.asarray(meta.affine if meta.affine is not None else np.eye(4), dtype=np.float64)
        size = tuple(int(s) for s in shape[:3])
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        dtype = np.uint8 if max(self.labels) < 256 else np.uint16
        # Only the input voxels that the network grid covers can be foreground: resample into that box alone
        # (the cropped-away air around the body is background), then place it in the full volume.
        box = _covered_box(np.asarray(net_affine, dtype=np.float64), probs.shape[1:], dst_np, size)
        labels = np.zeros(size, dtype=dtype)
        full_np = np.zeros((probs.shape[0], *size), dtype=np.float16) if keep else None
        if full_np is not None:
            full_np[0] = 1.0
        if box is None:
            return labels, full_np
        lo, hi = box
        sub = dst_np.copy()
        sub[:3, 3] = dst_np[:3, :3] @ np.asarray(lo, dtype=np.float64) + dst_np[:3, 3]
        sub_t = torch.as_tensor(sub, dtype=torch.float64)
        sub_size = tuple(int(h - lo_) for lo_, h in zip(lo, hi, strict=True))
        region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        if self.resample == "labels" and not keep:
            lab = MetaTensor(probs.argmax(0, keepdim=True).float().to(dev), affine=net_affine)
            out = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)(
                lab, dst_affine=sub_t, spatial_size=sub_size
            )
            labels[region] = out[0].as_tensor().round().cpu().numpy().astype(dtype)
            return labels, None
        mt = MetaTensor(probs[1:].to(dev), affine=net_affine)  # foreground channels: zero padding = background
        fg = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
            mt, dst_affine=sub_t, spatial_size=sub_size
        ).as_tensor()
        bg = (1.0 - fg.sum(0, keepdim=True)).clamp_(min=0.0)
        full = torch.cat([bg, fg], 0)
        labels[region] = full.argmax(0).cpu().numpy().astype(dtype)
        if full_np is not None:
            full_np[(slice(None), *region)] = full.cpu().numpy().astype(np.float16)
        return labels, full_np

    def __call__(
        self, array: np.ndarray, meta: ImageMeta, *, keep_probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment one volume: ``[X, Y, Z]`` -> (label map ``[X, Y, Z]``, optional probabilities ``[C, X, Y, Z]``)."""
        pre = self.preprocess(array, meta)
        probs = self.probabilities(pre)
        return self.to_input_grid(probs, pre.affine, meta, array.shape, keep=keep_probabilities)


def _covered_box(
    src_affine: np.ndarray, src_shape: Sequence[int], dst_affine: np.ndarray, dst_shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Input-voxel bounding box ``(lo, hi)`` (hi exclusive) of a grid's voxel centres, one voxel of margin;
    None when the grids do not overlap."""
    n = [int(s) for s in src_shape]
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)])
    vox = (np.linalg.inv(dst_affine) @ src_affine @ corners.T)[:3].T  # [8, 3] in destination voxel indices
    lo = np.maximum(np.floor(vox.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(vox.max(0)).astype(int) + 2, np.asarray(dst_shape))
    if np.any(hi <= lo):
        return None
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def write_label_map(path: str | Path, labels: np.ndarray, meta: ImageMeta) -> None:
    """Write a label map with the input's affine; a NIfTI input's header (codes, units) is reused.

    Free-text header fields (``descrip``, ``aux_file``) are cleared: they may hold identifiers and say nothing
    about the label map.
    """
    import nibabel as nib

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
    import nibabel as nib

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
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

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


# ===================================================================================================== predict
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


class _PredictJob:
    """Batch job of ``predict`` (see :class:`medvit.shared.engine.batch.BatchJob`)."""

    description = "ct-seg predict"

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
        from medvit.shared.data.io import read_volume

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
            pre_cfg = self.seg.spec["preprocess"]
            save_overlay(
                tmp_outputs[k],
                array,
                labels,
                meta.affine,
                window=pre_cfg["hu_window"],
                names=self.seg.labels,
                title=self.case_ids[item],
            )
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


def _resolve_infer_device(device: str, precision: str) -> tuple[torch.device, str]:
    from medvit.shared.engine.fit import resolve_device

    dev = resolve_device(device)
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and dev.type != "cuda":
        logger.warning("precision=bf16 on CPU is very slow; using fp32")
        precision = "fp32"
    return dev, precision


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
) -> Any:
    """Segment NIfTI files, DICOM series folders or an nnU-Net ``imagesTs`` folder with a trained run.

    Writes ``OUT/<case>.nii.gz`` (uint8/uint16, the input's exact shape and affine), ``OUT/overlays/<case>.png``,
    optionally ``OUT/probabilities/<case>.npz`` (float16 ``[C, X, Y, Z]``), and ``OUT/manifest.csv`` through
    the batch runner (resume: finished cases are skipped; ``overwrite`` redoes them).

    Args:
        run: run directory of :func:`train` (or a ``model.safetensors`` with its ``model.json``).
        inp: a NIfTI file, a folder (searched recursively; nnU-Net ``_0000`` suffixes dropped from names; DICOM
            series folders are one case each), or a ``.txt`` list of paths.
        out: output folder.
        checkpoint: see :func:`load_run_model`.
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
    from medvit.shared.data.scan import find_volumes
    from medvit.shared.engine.batch import LIST_FILE_SUFFIXES, resolve_inputs, run_batch

    model, spec = load_run_model(run, checkpoint)
    inf = dict(spec.get("infer") or {})
    dev, prec = _resolve_infer_device(device or inf.get("device", "auto"), precision or inf.get("precision", "auto"))
    model.to(dev)
    seg = Segmenter(
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
    job = _PredictJob(seg, _case_ids(items, found), probabilities=probabilities, overlay=overlay)
    logger.info("predicting %d input(s) on %s (%s) with %s", len(items), dev, prec, getattr(model, "weights_path", ""))
    return run_batch(job, items, out, overwrite=overwrite, workers=workers, batch_size=1, quiet=quiet)


def _is_series_dir(path: Path) -> bool:
    from medvit.shared.data.scan import _is_dicom_candidate

    try:
        return any(f.is_file() and _is_dicom_candidate(f) for f in path.iterdir())
    except OSError:
        # A folder that cannot be listed becomes one input: its reader reports it in the manifest as an error
        # row, where the folder scan would skip it without a word.
        return True


# ===================================================================================================== evaluate
def _nifti_files(folder: Path, what: str) -> dict[str, Path]:
    from medvit.shared.data.io import list_folder

    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found")
    out: dict[str, Path] = {}
    for f in list_folder(folder):
        if f.is_dir() or not f.name.lower().endswith(NIFTI_SUFFIXES):
            continue  # a FIFO or broken link with a NIfTI name stays: its reader names the problem
        cid = case_id_of(f)
        if cid in out:
            raise DataError(f"{folder}: case {cid} appears twice ({out[cid].name}, {f.name})")
        out[cid] = f
    if not out:
        raise DataError(f"{folder}: no NIfTI label maps (.nii, .nii.gz)")
    return out


def _read_labels(cid: str, path: Path, allowed: Mapping[int, str] | None) -> tuple[np.ndarray, np.ndarray, ImageMeta]:
    from medvit.shared.data.io import affine_problem, read_nifti

    arr, meta = read_nifti(path, check_finite=False)
    problem = affine_problem(meta.affine)
    if problem is not None:  # the affine comparison and HD95's spacing need a usable grid
        raise DataError(f"case {cid}: {path}: {problem}")
    values = check_label_values(cid, path, arr, allowed)
    return arr.round().astype(np.int64), values, meta


def evaluate(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    labels_json: str | Path | None = None,
    out: str | Path | None = None,
    hd95: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Dice and HD95 (MONAI) per case and foreground class; ``metrics.csv``, ``summary.json``, box plots.

    Pairs are matched by case id (``case_001.nii.gz`` in both folders; a ``_0000`` suffix is ignored). The empty
    prediction / empty reference convention is :data:`medvit.shared.metrics.segmentation.CONVENTION`.

    Args:
        pred_dir: predicted label maps.
        gt_dir: reference label maps (e.g. ``labelsTs``).
        labels_json: ``dataset.json`` declaring the classes (default: the values found in the files).
        out: folder for the outputs (default ``pred_dir``).
        hd95: compute HD95 too.
        quiet: no progress bar.

    Returns:
        The summary dict written to ``summary.json``.

    Raises:
        DataError: missing pairs, shape/affine mismatches, non-integer maps or undeclared labels (naming the case).
    """
    from medvit.apps.ct_seg.data import affines_match, labels_from_json
    from medvit.shared.engine.rundir import write_text_atomic
    from medvit.shared.metrics.segmentation import score_case, summarize

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    out_dir = Path(out) if out is not None else pred_dir
    preds = _nifti_files(pred_dir, "prediction")
    refs = _nifti_files(gt_dir, "reference")
    missing = sorted(set(refs) - set(preds))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"case {missing[0]}: no prediction in {pred_dir} for {refs[missing[0]].name}{more}")
    extra = sorted(set(preds) - set(refs))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise DataError(f"case {extra[0]}: prediction {preds[extra[0]].name} has no reference in {gt_dir}{more}")
    declared = labels_from_json(labels_json) if labels_json is not None else None

    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    with _progress(len(refs), "evaluate", quiet=quiet) as advance:
        for cid in sorted(refs):
            ref, ref_vals, ref_meta = _read_labels(cid, refs[cid], declared)
            pred, pred_vals, pred_meta = _read_labels(cid, preds[cid], declared)
            if ref.shape != pred.shape:
                raise DataError(
                    f"case {cid}: prediction {preds[cid].name} has shape {pred.shape}, reference {ref.shape}"
                )
            if not affines_match(np.asarray(ref_meta.affine), np.asarray(pred_meta.affine)):
                raise DataError(f"case {cid}: prediction and reference differ in affine (not the same voxel grid)")
            present = sorted(set(ref_vals.tolist()) | set(pred_vals.tolist()) | set(declared or {}))
            if not ref_meta.spacing and hd95:
                # The reader already warned that the header's spacing is unknown: distances are in voxels.
                logger.warning("case %s: voxel spacing unknown; HD95 is in voxels, not mm", cid)
            spacing = ref_meta.spacing or None
            scores = score_case(pred, ref, [v for v in present if v != 0], spacing, hd95=hd95)
            for s in scores:
                seen.add(s.label)
                rows.append({"case": cid, **s.__dict__})
            advance()
    # A class seen in some cases only is absent from both maps in the others: score those as "both empty".
    by_case: dict[str, set[int]] = {}
    for r in rows:
        by_case.setdefault(r["case"], set()).add(int(r["label"]))
    for cid in sorted(refs):
        for lab in sorted(seen - by_case.get(cid, set())):
            rows.append(
                {
                    "case": cid,
                    "label": lab,
                    "dice": 1.0,
                    "hd95": 0.0 if hd95 else math.nan,
                    "ref_voxels": 0,
                    "pred_voxels": 0,
                    "empty": "both",
                }
            )
    rows.sort(key=lambda r: (r["case"], int(r["label"])))
    names = dict(declared or {})
    for r in rows:
        r["name"] = names.get(int(r["label"]), f"label_{r['label']}")
    metrics = ("dice", "hd95") if hd95 else ("dice",)
    summary = summarize(rows, {int(r["label"]): r["name"] for r in rows}, metrics)
    summary.update({"pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "labels_json": str(labels_json or "")})

    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    cols = ["case", "label", "name", "dice", "hd95", "ref_voxels", "pred_voxels", "empty"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "dice": f"{r['dice']:.6f}", "hd95": f"{r['hd95']:.4f}"})
    write_text_atomic(out_dir / "metrics.csv", buf.getvalue())
    write_text_atomic(out_dir / "summary.json", json.dumps(_finite(summary), indent=2) + "\n")
    for m in metrics:
        _box_plot(out_dir / f"{m}_boxplot.png", rows, m)
    return summary


def _finite(obj: Any) -> Any:
    """NaN -> None so that summary.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _box_plot(path: Path, rows: Sequence[Mapping[str, Any]], metric: str) -> None:
    """One box per class (with the cases as dots), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = sorted({(int(r["label"]), r["name"]) for r in rows})
    data = [[float(r[metric]) for r in rows if int(r["label"]) == v] for v, _ in names]
    fig = Figure(figsize=(max(4.0, 1.1 * len(names) + 1.5), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), [n for _, n in names], rotation=30, ha="right")
    for i, vals in enumerate(data, start=1):
        jitter = np.linspace(-0.12, 0.12, num=len(vals)) if len(vals) > 1 else [0.0]
        ax.scatter(np.asarray(jitter) + i, vals, s=10, alpha=0.6, color="k")
    ax.set_ylabel("Dice" if metric == "dice" else "HD95 (mm)")
    ax.set_title(f"{metric} per class ({len({r['case'] for r in rows})} cases)")
    if metric == "dice":
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
