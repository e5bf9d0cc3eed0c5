"""The model file of a ``deepfake train`` run: ``model.safetensors`` + ``model.json`` (its sidecar).

``model.json`` holds what ``deepfake predict`` needs: the network (``model``: the JSON-able spec of
:func:`~medvit.apps.deepfake.model.build_model`), the crop geometry the frames were prepared with (``crop``:
size and margin), the compression levels of the quality block, what it was trained on (``train``: method and
levels, read by ``deepfake evaluate`` for the cross-compression table) and the normalisation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from medvit import __version__
from medvit.apps.deepfake.config import LEVELS
from medvit.apps.deepfake.model import GGViTStyle, build_model
from medvit.shared.backbone.weights import save_model_file
from medvit.shared.engine.checkpoint import load_checkpoint
from medvit.shared.errors import ConfigError, WeightsError
from medvit.shared.schema import read_json_sidecar

logger = logging.getLogger(__name__)

__all__ = ["MODEL_FORMAT", "checkpoint_model_state", "load_run_model", "model_from_spec", "save_run_model"]

MODEL_FORMAT = "medvit-deepfake-model"
MODEL_FORMAT_VERSION = 1
NORMALIZE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
_MODEL_KEYS = ("backbone", "global_size", "region_size", "regions")


def new_model_spec(model: dict[str, Any], *, crop_size: int, margin: float, train: dict[str, Any]) -> dict[str, Any]:
    """The ``model.json`` of a new run."""
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "medvit_version": __version__,
        "model": model,
        "levels": list(LEVELS),
        "crop": {"size": int(crop_size), "margin": float(margin)},
        "normalize": NORMALIZE,
        "train": train,
    }


def model_from_spec(spec: Mapping[str, Any], *, source: str = "model.json") -> GGViTStyle:
    """Rebuild the (randomly initialised) network a ``model.json`` describes.

    Raises:
        WeightsError: not a deepfake model description, or one whose network cannot be built (naming ``source``).
    """
    if spec.get("format") != MODEL_FORMAT:
        raise WeightsError(f"{source}: not a deepfake model description (format {spec.get('format')!r})")
    if int(spec.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise WeightsError(f"{source}: format version {spec.get('format_version')} is newer than this medvit's")
    m = spec.get("model")
    if not isinstance(m, dict) or any(k not in m for k in _MODEL_KEYS):
        raise WeightsError(f"{source}: 'model' must hold {', '.join(_MODEL_KEYS)}")
    try:
        return build_model(m)
    except (ConfigError, ValueError, TypeError, KeyError) as err:
        raise WeightsError(f"{source}: cannot build the network ({err})") from None


def save_run_model(path: str | Path, state_dict: Mapping[str, torch.Tensor], spec: Mapping[str, Any]) -> Path:
    """Write ``model.safetensors`` and its ``model.json`` with the shared model-file writer."""
    return save_model_file(path, state_dict, spec, format=MODEL_FORMAT, format_version=MODEL_FORMAT_VERSION)


def checkpoint_model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state dict inside a training checkpoint (the task's ``model.`` prefix removed)."""
    return {k[len("model.") :]: v for k, v in checkpoint["model"].items() if k.startswith("model.")}


def read_spec(run: Path) -> tuple[dict[str, Any], Path]:
    """The ``model.json`` of a run directory or the sidecar of a ``.safetensors`` file, and its path."""
    spec_path = run.with_suffix(".json") if run.suffix == ".safetensors" else run / "model.json"
    if not spec_path.is_file():
        raise WeightsError(f"{run}: no model.json (not a deepfake run; train one with `medvit deepfake train`)")
    return read_json_sidecar(spec_path), spec_path


def load_run_model(run: str | Path, checkpoint: str = "auto") -> tuple[GGViTStyle, dict[str, Any]]:
    """The trained network of a run directory (or of a ``model.safetensors`` + sidecar pair).

    Args:
        run: run directory, or a ``.safetensors`` file with its sidecar.
        checkpoint: ``auto`` (``model.safetensors``, else ``best.pt``, else ``last.pt``), ``best`` or ``last``.

    Returns:
        (model in eval mode on the CPU, the ``model.json`` dict).

    Raises:
        WeightsError: no model description or weights, or weights that do not fit it.
    """
    run = Path(run).expanduser()
    spec, spec_path = read_spec(run)
    model = model_from_spec(spec, source=str(spec_path))
    folder = spec_path.parent
    if run.suffix == ".safetensors":
        candidates = [run]
    elif checkpoint == "auto":
        candidates = [folder / "model.safetensors", folder / "best.pt", folder / "last.pt"]
    else:
        candidates = [folder / f"{checkpoint}.pt"]
    src = next((p for p in candidates if p.is_file()), None)
    if src is None:
        raise WeightsError(f"{run}: no weights ({', '.join(p.name for p in candidates)} missing)")
    sd = load_file(str(src)) if src.suffix == ".safetensors" else checkpoint_model_state(load_checkpoint(src))
    try:
        model.load_state_dict(sd)
    except RuntimeError as err:
        raise WeightsError(f"{src}: weights do not match {spec_path.name} ({str(err).splitlines()[0]})") from None
    model.eval()
    logger.info("loaded %s", src)
    return model, spec
