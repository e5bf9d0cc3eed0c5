"""The run's model file: ``model.json`` (the network and its preprocessing) beside ``model.safetensors``.

``model.json`` holds everything :func:`~medvit.apps.ct_seg.predict.predict` needs to rebuild the network and
reproduce the preprocessing: the encoder architecture, the decoder kwargs, the labels, spacing, HU window, crop
and the inference defaults (:func:`model_schema`). :func:`~medvit.apps.ct_seg.train.train` writes it at the
start of a run (``--resume`` rebuilds the network from it) and, with the chosen weights, at the end through the
shared model-file writer (:func:`medvit.shared.backbone.weights.save_model_file`).

This module also builds the network of a config (:func:`build_model`: a registry backbone or weights in any
supported format) and loads the trained network of a run (:func:`load_run_model`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from medvit import __version__
from medvit.apps.ct_seg.config import DEFAULT_HU_WINDOW, DEFAULT_SPACING, CTSegConfig, InferCfg, ModelCfg
from medvit.apps.ct_seg.model import UNETR, build_encoder_from_checkpoint, official_downstream_encoder
from medvit.shared.backbone.weights import build_vit, detect_format, read_checkpoint, read_sidecar, save_model_file
from medvit.shared.config import from_dict, to_dict
from medvit.shared.data.transforms import ct_preprocess
from medvit.shared.engine.checkpoint import load_checkpoint
from medvit.shared.errors import ConfigError, WeightsError
from medvit.shared.files import write_json_atomic
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
    "MODEL_FORMAT_VERSION",
    "build_model",
    "checkpoint_model_state",
    "load_run_model",
    "model_from_spec",
    "model_schema",
    "new_model_spec",
    "preprocess_transform",
    "read_model_spec",
    "resolve_preprocessing",
    "save_run_model",
    "write_model_spec",
]

MODEL_FORMAT = "medvit-ct-seg"
MODEL_FORMAT_VERSION = 1


# ============================================================================================ network of a config
def build_model(cfg: CTSegConfig, num_classes: int) -> tuple[UNETR, dict[str, Any]]:
    """The network of a config: weights from ``model.weights`` (any supported format) or a registry backbone.

    Returns:
        (model, the encoder's sidecar or ``{}``); ``model.load_report`` is set when weights were loaded.

    Raises:
        WeightsError: unreadable or mismatching weights.
        ConfigError: a 2D encoder.
    """
    m = cfg.model
    dec = {"taps": m.taps, "feature_size": m.feature_size, "res_block": m.res_block}
    meta: dict[str, Any] = {}
    if m.weights is None:
        over = {**m.backbone_overrides, "drop_path_rate": m.drop_path}
        model = UNETR.from_registry(m.backbone, num_classes, backbone_overrides=over, **dec)
    else:
        model, meta = _model_from_weights(m, Path(m.weights).expanduser(), num_classes, dec)
    if model.spatial_dims != 3:
        raise ConfigError(f"model: ct-seg needs a 3D encoder, got a {model.spatial_dims}D one")
    if m.official_downstream:
        try:
            model.encoder = official_downstream_encoder(model.encoder)
        except ValueError as err:
            raise ConfigError(f"model.{err}") from None
        logger.info("encoder built as Hi-End-MAE's official downstream network (no cls token, eps 1e-5, learned PE)")
    return model, meta


def _model_from_weights(
    m: ModelCfg, path: Path, num_classes: int, dec: Mapping[str, Any]
) -> tuple[UNETR, dict[str, Any]]:
    """The network started from ``model.weights``: a medvit export, an earlier ct-seg run, or a foreign checkpoint."""
    side = read_sidecar(path) if path.suffix == ".safetensors" else None
    meta: dict[str, Any] = {}
    if side is not None and side.get("format") == "medvit":
        # The export fixes the architecture; only regularisation is ours to set.
        model = UNETR.from_export(path, num_classes, backbone_overrides={"drop_path_rate": m.drop_path}, **dec)
        meta = dict(side)
    elif side is not None and side.get("format") == MODEL_FORMAT:
        model, meta = _from_ct_seg_weights(path, side, num_classes)
    else:
        model = _from_foreign_checkpoint(m, path, num_classes, dec)
    report = getattr(model, "load_report", None)
    if report is not None:
        logger.info("weights %s: %s", path.name, report.summary())
    return model, meta


def _from_foreign_checkpoint(m: ModelCfg, path: Path, num_classes: int, dec: Mapping[str, Any]) -> UNETR:
    """A Hi-End-MAE, MONAI UNETR/ViT or timm/MAE checkpoint (no sidecar: the architecture is inferred)."""
    sd, info = read_checkpoint(path)
    fmt = detect_format(sd, info)
    foreign: dict[str, Any] = {"drop_path_rate": m.drop_path}
    if m.checkpoint_img_size is not None:
        foreign["img_size"] = list(m.checkpoint_img_size)
    kw = {"num_heads": m.num_heads, "backbone_overrides": foreign}
    if fmt == "hi-end-mae":
        return UNETR.from_hi_end_mae(sd, num_classes, **kw, **dec)
    if fmt == "monai":
        # feature size and taps follow the checkpoint's decoder unless taps are set explicitly
        return UNETR.from_monai_unetr(sd, num_classes, **kw, taps=m.taps, res_block=m.res_block)
    enc, report = build_encoder_from_checkpoint(sd, source_format=fmt, num_heads=m.num_heads, overrides=foreign)
    model = UNETR(enc, num_classes, **dec)
    model.load_report = report  # type: ignore[attr-defined]
    return model


def _from_ct_seg_weights(path: Path, side: Mapping[str, Any], num_classes: int) -> tuple[UNETR, dict[str, Any]]:
    """A whole network from an earlier ct-seg run (its output layer is dropped if the classes differ)."""
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


# ================================================================================================ preprocessing
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


def resolve_preprocessing(cfg: CTSegConfig, meta: Mapping[str, Any]) -> tuple[Any, tuple[float, float]]:
    """``(spacing, hu_window)`` of a new run: the config's, else the encoder sidecar's, else the defaults.

    Raises:
        ConfigError: a spacing that is not 3 positive mm values.
    """
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


# ======================================================================================================= schema
def _spacing_check(value: Any) -> str | None:
    if value == "native":
        return None
    ok = isinstance(value, list) and len(value) == 3
    if ok and all(real_in(0.0, 1000.0, lo_open=True)(v) is None for v in value):
        return None
    return f"must be 'native' or 3 positive mm values, got {value!r}"[:120]


def _infer_check(value: Any) -> str | None:
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


# ============================================================================================= model.json itself
def new_model_spec(
    cfg: CTSegConfig,
    model: UNETR,
    encoder_meta: Mapping[str, Any],
    labels: Mapping[int, str],
    *,
    dataset: str,
    fold: int | str,
) -> dict[str, Any]:
    """The ``model.json`` of a new run: the network, its preprocessing and inference defaults, provenance.

    Raises:
        ConfigError: a bad ``data.spacing`` (see :func:`resolve_preprocessing`).
    """
    spacing, window = resolve_preprocessing(cfg, encoder_meta)
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "medvit_version": __version__,
        "encoder": model.encoder.arch_kwargs,
        "decoder": model.decoder_kwargs(),
        "labels": {str(v): n for v, n in labels.items()},
        "preprocess": {
            "spacing": spacing,
            "hu_window": list(window),
            "orientation": cfg.data.orientation,
            "crop_foreground": cfg.data.crop_foreground,
        },
        "crop_size": list(cfg.data.crop_size),
        "infer": to_dict(cfg.infer),
        "encoder_weights": str(cfg.model.weights) if cfg.model.weights else None,
        "dataset": dataset,
        "fold": fold,
    }


def read_model_spec(path: str | Path) -> dict[str, Any]:
    """A ``model.json``, read and validated against :func:`model_schema`.

    Raises:
        WeightsError: unreadable, corrupt or against the schema (naming the file and the problem).
    """
    return read_json_sidecar(path, model_schema())


def write_model_spec(path: str | Path, spec: Mapping[str, Any]) -> None:
    """Write a ``model.json`` without weights yet (the start of a run), atomically."""
    write_json_atomic(path, spec)


def save_run_model(path: str | Path, state_dict: Mapping[str, torch.Tensor], spec: Mapping[str, Any]) -> Path:
    """Write ``model.safetensors`` and its ``model.json`` (the spec) with the shared model-file writer.

    The spec's own ``format``, ``format_version`` and ``medvit_version`` are kept: a resumed run's ``model.json``
    keeps the version that started it.
    """
    return save_model_file(path, state_dict, spec, format=MODEL_FORMAT, format_version=MODEL_FORMAT_VERSION)


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


# ============================================================================================ a run's trained model
def checkpoint_model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state dict inside a training checkpoint (the task's ``model.`` prefix removed)."""
    return {k[len("model.") :]: v for k, v in checkpoint["model"].items() if k.startswith("model.")}


def _weight_candidates(run: Path, folder: Path, checkpoint: str) -> list[Path]:
    if run.suffix == ".safetensors":
        return [run]
    if checkpoint == "auto":
        return [folder / "model.safetensors", folder / "best.pt", folder / "last.pt"]
    if checkpoint in ("best", "last"):
        return [folder / f"{checkpoint}.pt"]
    return [Path(checkpoint)]


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
    run = Path(run)
    spec_path = run.with_suffix(".json") if run.suffix == ".safetensors" else run / "model.json"
    if not spec_path.is_file():
        raise WeightsError(f"{run}: no model.json (not a ct-seg run directory; train one with `medvit ct-seg train`)")
    spec = read_model_spec(spec_path)
    model = model_from_spec(spec, source=str(spec_path))
    candidates = _weight_candidates(run, spec_path.parent, checkpoint)
    src = next((p for p in candidates if p.is_file()), None)
    if src is None:
        raise WeightsError(f"{run}: no weights ({', '.join(p.name for p in candidates)} missing)")
    sd = load_file(str(src)) if src.suffix == ".safetensors" else checkpoint_model_state(load_checkpoint(src))
    try:
        model.load_state_dict(sd)
    except RuntimeError as err:
        raise WeightsError(f"{src}: weights do not match {spec_path.name} ({str(err).splitlines()[0]})") from None
    model.eval()
    model.weights_path = str(src)  # type: ignore[assignment]
    logger.info("loaded %s", src)
    return model, spec
