"""The classifier network and its model file (``model.safetensors`` + ``model.json``).

The network is the shared :class:`~medvit.shared.backbone.vit.VisionTransformer` itself, 2D or 3D by its patch size,
with ``num_classes`` outputs: global average pooling of the patch tokens + ``fc_norm`` (or the class token) and a
linear head, so its state dict keeps timm's key names and any backbone importer fills it. Starting weights
(:func:`build_classifier`) may be:

* a medvit encoder export (``medvit pretrain``: thorax MAE, Uni4Eye 2D/3D, Hi-End-MAE; ``medvit weights convert``):
  the architecture and the :class:`~medvit.shared.classify.inputs.InputSpec` come from its sidecar;
* a foreign checkpoint the importers of :mod:`medvit.shared.backbone.weights` read (Medical MAE / RETFound / MAE
  ``{'model': ...}``, Uni4Eye(++), timm ImageNet ``.pth`` or ``.safetensors`` files, Hi-End-MAE, MONAI): the
  architecture is ``model.backbone``'s or, when that is null, inferred from the keys and shapes;
* the ``model.safetensors`` of an earlier classification run (warm start: everything whose shape fits, the head
  too when the classes match).

The pretrained final ``norm`` is not used with average pooling (MAE's fine-tuning replaces it by a fresh
``fc_norm``); a pretrained head for other classes is dropped. A new head gets MAE's initialisation: weights from a
truncated normal with std 2e-5 (``model.head_init_std``), bias 0.

``model.json`` (format ``medvit-classifier``) holds the encoder's constructor arguments (checked against the
backbone bounds before anything is built), the :class:`~medvit.shared.classify.labels.LabelSpace`, the
``InputSpec``, the evaluation preprocessing, the thresholds, the modality and provenance.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from medvit import __version__
from medvit.shared.backbone.registry import backbone_kwargs
from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.backbone.weights import (
    build_vit,
    convert_state_dict,
    detect_format,
    infer_architecture,
    load_pretrained,
    read_checkpoint,
    save_model_file,
)
from medvit.shared.classify.inputs import InputSpec, spec_from_sidecar
from medvit.shared.classify.labels import LabelSpace
from medvit.shared.errors import ConfigError, WeightsError
from medvit.shared.schema import SidecarSchema, mapping_of, read_json_sidecar, validate_sidecar

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "build_classifier",
    "init_head",
    "load_classifier",
    "model_from_spec",
    "new_model_spec",
    "read_model_spec",
    "save_classifier",
]

MODEL_FORMAT = "medvit-classifier"
MODEL_FORMAT_VERSION = 1
# Keys of a pretrained backbone that a classifier does not take over (decoders, the MAE mask token, a final norm
# replaced by fc_norm, a head for other classes).
_IGNORED = ("head.*", "fc_norm.*", "norm.*", "mask_token", "decoder*")


def model_schema() -> SidecarSchema:
    """What a classifier ``model.json`` must hold (checked before any layer is built)."""
    any_map = mapping_of({}, extra=True)
    return SidecarSchema(
        format=MODEL_FORMAT,
        max_version=MODEL_FORMAT_VERSION,
        arch_key="encoder",
        fields={"labels": any_map, "input": any_map, "modality": lambda v: None if isinstance(v, str) else "string"},
        optional_fields={
            "thresholds": lambda v: None if v is None or isinstance(v, list) else "must be a list or null",
            "eval": any_map,
        },
    )


def init_head(model: VisionTransformer, std: float) -> None:
    """MAE's head initialisation: ``trunc_normal_(head.weight, std)`` (cut at +-2 std), bias 0."""
    if isinstance(model.head, nn.Linear):
        nn.init.trunc_normal_(model.head.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(model.head.bias)


def _is_classifier_file(path: Path) -> bool:
    side = path.with_suffix(".json")
    return path.suffix == ".safetensors" and side.is_file() and read_json_sidecar(side).get("format") == MODEL_FORMAT


def _foreign_kwargs(model_cfg: Any, sd: dict[str, torch.Tensor], fmt: str, modality: str) -> dict[str, Any]:
    """Architecture of a foreign checkpoint: the named backbone's, else inferred from keys and shapes."""
    if model_cfg.backbone:
        return backbone_kwargs(model_cfg.backbone)
    hints: dict[str, Any] = {}
    if fmt == "uni4eye":  # one file holds both embeddings: the modality picks the 2D or the 3D one
        hints = {"patch_size": (16, 16, 16) if modality == "oct" else (16, 16)}
    converted, _ = convert_state_dict(sd, fmt, hints)
    return infer_architecture(converted, fmt, img_size=model_cfg.backbone_overrides.get("img_size"))


def _start_point(model_cfg: Any, modality: str) -> dict[str, Any]:
    """Architecture, sidecar and state dict of the starting weights (or of the named backbone alone)."""
    path = model_cfg.weights
    if path is None:
        return {"kwargs": backbone_kwargs(model_cfg.backbone), "sidecar": None, "sd": None, "fmt": None}
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found (model.weights)")
    if _is_classifier_file(path):
        spec = read_model_spec(path)[0]
        return {"kwargs": spec["encoder"], "sidecar": spec, "sd": load_file(str(path)), "fmt": MODEL_FORMAT}
    sd, info = read_checkpoint(path)
    fmt = detect_format(sd, info)
    sidecar = info.get("sidecar") if fmt == "medvit" else None
    kwargs = dict(sidecar["kwargs"]) if sidecar else _foreign_kwargs(model_cfg, sd, fmt, modality)
    return {"kwargs": kwargs, "sidecar": sidecar, "sd": sd, "fmt": fmt}


def _input_spec(start: Mapping[str, Any], data_cfg: Any, modality: str) -> InputSpec:
    """The sidecar's (or the warm-start run's) input spec with the config's ``data.*`` overrides."""
    side = start["sidecar"]
    if start["fmt"] == MODEL_FORMAT:
        spec = InputSpec.from_dict(side["input"])
    else:
        kwargs = start["kwargs"]
        spec = spec_from_sidecar(side, modality)
        if side is None:  # a registry backbone or foreign file: its own input size, the modality's statistics
            size = kwargs.get("img_size", spec.size)
            size = [size] * spec.dims if isinstance(size, int) else list(size)
            if len(size) == spec.dims:
                spec = replace(spec, size=tuple(size))
    if data_cfg.size is not None:
        size = tuple(data_cfg.size) * (spec.dims if len(data_cfg.size) == 1 else 1)
        spec = replace(spec, size=size)
    if data_cfg.in_chans is not None and data_cfg.in_chans != spec.channels:
        m, s = sum(spec.mean) / len(spec.mean), sum(spec.std) / len(spec.std)
        spec = replace(spec, channels=data_cfg.in_chans, mean=(m,), std=(s,))
    if data_cfg.mean is not None:
        spec = replace(spec, mean=tuple(data_cfg.mean))
    if data_cfg.std is not None:
        spec = replace(spec, std=tuple(data_cfg.std))
    return InputSpec(**{**spec.__dict__})  # re-validated


#: Backbone settings that define the weights' shapes: starting weights bring their own, which win over a preset's.
_SHAPE_KEYS = frozenset(
    ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "qkv_bias", "class_token", "reg_tokens",
     "extra_tokens", "init_values", "patch_bias", "pos_embed", "pos_embed_prefix", "act", "norm_eps")
)  # fmt: skip


def _applicable_overrides(model_cfg: Any, start: Mapping[str, Any]) -> dict[str, Any]:
    """``model.backbone_overrides`` without the shape-defining keys when starting weights define the architecture.

    A preset sized for training from scratch (e.g. ``tiny``) names a width and a depth; an encoder export (its
    sidecar) or a classifier run has its own, and building the preset's network would leave the weights
    unloadable. Those keys are dropped (logged); the others (drop path, ...) still apply. A foreign checkpoint read
    into a named ``model.backbone`` keeps every override (the user described its architecture).
    """
    overrides = dict(model_cfg.backbone_overrides)
    named = start["sidecar"] is None and start["fmt"] != MODEL_FORMAT and model_cfg.backbone
    if start["sd"] is None or named:  # no weights, or a foreign file read into the named backbone + overrides
        return overrides
    dropped = sorted(k for k in overrides if k in _SHAPE_KEYS and overrides[k] != start["kwargs"].get(k))
    if dropped:
        logger.info(
            "starting weights %s define the architecture: model.backbone_overrides %s not applied",
            model_cfg.weights,
            ", ".join(f"{k}={overrides[k]}" for k in dropped),
        )
    return {k: v for k, v in overrides.items() if k not in _SHAPE_KEYS}


def build_classifier(
    model_cfg: Any, data_cfg: Any, labels: LabelSpace, modality: str
) -> tuple[VisionTransformer, InputSpec, dict[str, Any]]:
    """A new classifier with its starting weights (see the module docstring).

    Args:
        model_cfg: ``ClassifyConfig.model``.
        data_cfg: ``ClassifyConfig.data`` (input overrides).
        labels: The label space (head width).
        modality: ``cxr``, ``fundus``, ``oct`` or ``image``.

    Returns:
        ``(model, input spec, provenance dict for model.json)``.

    Raises:
        WeightsError: Unreadable weights or weights that do not fit (naming keys and shapes).
        ConfigError: An input spec that does not fit the backbone (a 3D encoder for 2D images, ...).
    """
    start = _start_point(model_cfg, modality)
    spec = _input_spec(start, data_cfg, modality)
    patch = start["kwargs"].get("patch_size", 16)
    patch_dims = 2 if isinstance(patch, int) else len(patch)
    if patch_dims != spec.dims:
        raise ConfigError(f"a {patch_dims}D backbone cannot take {spec.dims}D {modality} inputs")
    overrides = {
        **_applicable_overrides(model_cfg, start),
        "num_classes": labels.num_outputs(),
        "global_pool": model_cfg.global_pool,
        "fc_norm": model_cfg.global_pool == "avg",
        "drop_path_rate": float(model_cfg.drop_path),
        "img_size": list(spec.size),
        "in_chans": spec.channels,
    }
    source = str(model_cfg.weights or model_cfg.backbone)
    model = build_vit(start["kwargs"], source=source, overrides=overrides)
    provenance: dict[str, Any] = {"start": source, "start_format": start["fmt"]}
    head_loaded = False
    if start["fmt"] == MODEL_FORMAT:
        head_loaded = _load_warm_start(model, start["sd"], Path(model_cfg.weights))
    elif start["sd"] is not None:
        report = load_pretrained(
            model, start["sd"], source_format=start["fmt"], expected_missing=_IGNORED, allow_unexpected=_IGNORED
        )
        logger.info("start weights %s: %s", model_cfg.weights, report.summary())
        provenance["load_report"] = report.summary()
    if not head_loaded:
        init_head(model, model_cfg.head_init_std)
    return model, spec, provenance


def _load_warm_start(model: VisionTransformer, sd: Mapping[str, torch.Tensor], path: Path) -> bool:
    """An earlier classification run's weights: every tensor whose shape fits; True when the head was loaded."""
    target = model.state_dict()
    fits = {k: v for k, v in sd.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
    skipped = sorted(k for k in sd if k not in fits)
    missing = sorted(k for k in target if k not in fits)
    model.load_state_dict(fits, strict=False)  # fits: model keys of matching shapes; the rest is reported below
    if skipped:
        logger.info("warm start %s: not used (other shape or name): %s", path, ", ".join(skipped[:8]))
    if missing:
        logger.info("warm start %s: kept the initialisation of %s", path, ", ".join(missing[:8]))
    return "head.weight" in fits


def new_model_spec(
    model: VisionTransformer,
    labels: LabelSpace,
    spec: InputSpec,
    modality: str,
    *,
    eval_cfg: Mapping[str, Any],
    thresholds: list[float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``model.json`` of a classification run."""
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "medvit_version": __version__,
        "encoder": model.arch_kwargs,
        "labels": labels.to_dict(),
        "input": spec.to_dict(),
        "modality": modality,
        "eval": dict(eval_cfg),
        "thresholds": list(thresholds) if thresholds is not None else None,
        **dict(extra or {}),
    }


def model_from_spec(spec: Mapping[str, Any], *, source: str = "model.json") -> VisionTransformer:
    """Rebuild the (randomly initialised) network a ``model.json`` describes.

    Raises:
        WeightsError: Not a classifier description, or values outside the schema (naming ``source``).
    """
    if spec.get("format") != MODEL_FORMAT:
        raise WeightsError(f"{source}: not a classifier description (format {spec.get('format')!r})")
    validate_sidecar(dict(spec), source, model_schema())
    labels = LabelSpace.from_dict(spec["labels"], where=f"{source}: labels")
    model = build_vit(spec["encoder"], source=source)
    if model.num_classes != labels.num_outputs():
        raise WeightsError(f"{source}: head of {model.num_classes} outputs for {labels.num_outputs()} ({labels.kind})")
    return model


def save_classifier(path: str | Path, state_dict: Mapping[str, torch.Tensor], spec: Mapping[str, Any]) -> Path:
    """Write ``model.safetensors`` and its ``model.json`` through the shared model-file writer."""
    side = {k: v for k, v in spec.items() if k not in ("format", "format_version")}
    return save_model_file(path, state_dict, side, format=MODEL_FORMAT, format_version=MODEL_FORMAT_VERSION)


def read_model_spec(run: str | Path) -> tuple[dict[str, Any], Path]:
    """The ``model.json`` of a run directory, or the sidecar of a ``.safetensors`` file, and its path.

    Raises:
        WeightsError: Missing or corrupt.
    """
    run = Path(run)
    path = run.with_suffix(".json") if run.suffix == ".safetensors" else run / "model.json"
    if not path.is_file():
        raise WeightsError(f"{run}: no model.json (not a classification run; train one first)")
    return read_json_sidecar(path), path


def load_classifier(run: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """The trained classifier of a run directory (``model.safetensors``) or of a ``.safetensors`` + sidecar pair.

    Returns:
        ``(model in eval mode on the CPU, the model.json dict)``.

    Raises:
        WeightsError: No description or weights, or weights that do not match the description.
    """
    run = Path(run)
    spec, spec_path = read_model_spec(run)
    model = model_from_spec(spec, source=str(spec_path))
    weights = run if run.suffix == ".safetensors" else run / "model.safetensors"
    if not weights.is_file():
        raise WeightsError(f"{run}: no model.safetensors (the run has not finished; resume it to export the model)")
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError) as err:
        raise WeightsError(f"{weights}: does not match {spec_path.name} ({str(err).splitlines()[0]})") from None
    model.eval()
    return model, spec


def write_spec_json(path: Path, spec: Mapping[str, Any]) -> None:
    """Write a ``model.json`` early in a run (the final one is rewritten with the weights)."""
    from medvit.shared.files import write_json_atomic

    write_json_atomic(path, json.loads(json.dumps(spec)))
