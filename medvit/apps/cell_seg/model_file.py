"""The model file of a ``cell train`` run: ``model.safetensors`` + ``model.json`` (its sidecar).

``model.json`` holds everything ``cell predict`` needs to rebuild the network and reproduce the preprocessing:

* ``encoder``: the ViT's constructor arguments (validated against the backbone bounds before anything is built);
* ``model``: the classes and the adapter/decoder settings of :class:`~medvit.apps.cell_seg.model.CellVTA`;
* ``nuclei_types`` / ``tissue_types``: class names, index = class id (0 = background);
* ``magnification`` and ``mpp`` of the training tiles, ``normalize`` (mean/std on [0, 1] RGB), ``infer`` defaults;
* provenance: the starting weights and the dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from medvit import __version__
from medvit.apps.cell_seg.model import CellVTA
from medvit.shared.backbone import create_backbone
from medvit.shared.backbone.weights import build_vit, save_model_file
from medvit.shared.engine.checkpoint import load_checkpoint
from medvit.shared.errors import WeightsError
from medvit.shared.schema import (
    SidecarSchema,
    int_in,
    list_of,
    mapping_of,
    one_of,
    read_json_sidecar,
    real_in,
    validate_sidecar,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "checkpoint_model_state",
    "load_run_model",
    "model_from_spec",
    "model_schema",
    "new_model_spec",
    "save_run_model",
]

MODEL_FORMAT = "medvit-cell-model"
MODEL_FORMAT_VERSION = 1
NORMALIZE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
"""CellViT/CellVTA's ``Normalize(mean=0.5, std=0.5)`` on [0, 1] RGB (not the ImageNet statistics)."""


def _names_check(value: Any) -> str | None:
    if isinstance(value, list) and 1 <= len(value) <= 1000 and all(isinstance(n, str) and len(n) < 200 for n in value):
        return None
    return "must be a list of class names"


def model_schema() -> SidecarSchema:
    """What a cell ``model.json`` must hold (checked before any layer is built)."""
    adapter = mapping_of(
        {
            "conv_inplane": int_in(1, 1024),
            "n_points": int_in(1, 64),
            "deform_num_heads": int_in(1, 64),
            "deform_ratio": real_in(0.0, 4.0, lo_open=True),
            "cffn_ratio": real_in(0.0, 16.0, lo_open=True),
            "init_values": real_in(0.0, 10.0),
            "n_segments": int_in(1, 64),
            "extra_extractors": one_of(True, False),
            "drop_path_rate": real_in(0.0, 1.0, hi_open=True),
            "decoder_width": real_in(0.0, 4.0, lo_open=True),
            "tissue_head": one_of("pooled", "cls", "official"),
        }
    )
    model = mapping_of(
        {"num_nuclei_classes": int_in(1, 1000), "num_tissue_classes": int_in(1, 1000), "adapter": adapter},
        required=("num_nuclei_classes", "num_tissue_classes", "adapter"),
    )
    return SidecarSchema(
        format=MODEL_FORMAT,
        max_version=MODEL_FORMAT_VERSION,
        arch_key="encoder",
        fields={"model": model, "nuclei_types": _names_check, "tissue_types": _names_check},
        optional_fields={
            "magnification": one_of(20, 40),
            "mpp": real_in(0.01, 100.0),
            "normalize": mapping_of(
                {"mean": list_of(real_in(-10, 10), max_len=3), "std": list_of(real_in(0, 10, lo_open=True), max_len=3)}
            ),
            "infer": mapping_of({}, extra=True),
            "weights": mapping_of({}, extra=True),
            "best": mapping_of({}, extra=True),
        },
    )


def new_model_spec(
    model: CellVTA,
    *,
    adapter: Mapping[str, Any],
    nuclei_types: list[str],
    tissue_types: list[str],
    magnification: int,
    mpp: float | None,
    infer: Mapping[str, Any],
    start_weights: str | None,
    dataset: str,
) -> dict[str, Any]:
    """The ``model.json`` of a new run."""
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "medvit_version": __version__,
        "encoder": model.backbone.arch_kwargs,
        "model": {
            "num_nuclei_classes": len(nuclei_types) - 1,
            "num_tissue_classes": len(tissue_types),
            "adapter": dict(adapter),
        },
        "nuclei_types": list(nuclei_types),
        "tissue_types": list(tissue_types),
        "magnification": int(magnification),
        "mpp": mpp,
        "normalize": NORMALIZE,
        "infer": dict(infer),
        "start_weights": start_weights,
        "dataset": dataset,
    }


def model_from_spec(spec: Mapping[str, Any], *, source: str = "model.json") -> CellVTA:
    """Rebuild the (randomly initialised) network described by a cell ``model.json``.

    Raises:
        WeightsError: not a cell model description, or a spec outside :func:`model_schema` (naming ``source``).
    """
    if spec.get("format") != MODEL_FORMAT:
        raise WeightsError(f"{source}: not a cell model description (format {spec.get('format')!r})")
    validate_sidecar(spec, source, model_schema())
    backbone = build_vit(spec["encoder"], source=source)
    m = spec["model"]
    if len(spec["nuclei_types"]) != m["num_nuclei_classes"] + 1:
        raise WeightsError(
            f"{source}: {len(spec['nuclei_types'])} nuclei type names for {m['num_nuclei_classes']} classes"
        )
    return CellVTA(backbone, int(m["num_nuclei_classes"]), int(m["num_tissue_classes"]), **m["adapter"])


def build_new_model(
    backbone: str, overrides: Mapping[str, Any], adapter: Mapping[str, Any], n_types: int, n_tissues: int
) -> CellVTA:
    """A fresh network on a registered backbone (random init; weights are loaded by the caller)."""
    vit = create_backbone(backbone, **dict(overrides))
    return CellVTA(vit, n_types, n_tissues, **dict(adapter))


def save_run_model(path: str | Path, state_dict: Mapping[str, torch.Tensor], spec: Mapping[str, Any]) -> Path:
    """Write ``model.safetensors`` and its ``model.json`` (the spec) with the shared model-file writer."""
    return save_model_file(path, state_dict, spec, format=MODEL_FORMAT, format_version=MODEL_FORMAT_VERSION)


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


def read_spec(run: Path) -> tuple[dict[str, Any], Path]:
    """The ``model.json`` of a run directory or the sidecar of a ``.safetensors`` file, and its path.

    Raises:
        WeightsError: missing, corrupt, or not within the common sidecar bounds.
    """
    spec_path = run.with_suffix(".json") if run.suffix == ".safetensors" else run / "model.json"
    if not spec_path.is_file():
        raise WeightsError(f"{run}: no model.json (not a cell run directory; train one with `medvit cell train`)")
    return read_json_sidecar(spec_path), spec_path


def load_run_model(run: str | Path, checkpoint: str = "auto") -> tuple[CellVTA, dict[str, Any]]:
    """The trained network of a run directory (or of a ``model.safetensors`` + sidecar pair).

    Args:
        run: run directory, or a ``.safetensors`` file with its sidecar.
        checkpoint: ``auto`` (``model.safetensors``, else ``best.pt``, else ``last.pt``), ``best``, ``last``, or a
            checkpoint path.

    Returns:
        (model in eval mode on the CPU, the ``model.json`` dict).

    Raises:
        WeightsError: no model description or weights, or weights that do not match the description.
    """
    run = Path(run)
    spec, spec_path = read_spec(run)
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
    logger.info("loaded %s", src)
    return model, spec
