"""Starting weights of ``cell train``: whichever file a pathology user has.

* the ``model.safetensors`` of an earlier ``cell train`` run (the whole network; heads whose class count differs
  are left at their initialisation and reported);
* a CellVTA training checkpoint (``model_state_dict`` in CellVTA's key layout: adapter, decoder and heads);
* a backbone: a timm / DINOv2-style ViT checkpoint (UNI's ``pytorch_model.bin`` is timm's layout), an MAE
  checkpoint or a medvit backbone export, loaded into the ViT with the shared importers (position tables
  resampled, the classifier dropped).

Every load returns the shared :class:`~medvit.shared.backbone.weights.LoadReport`, which the caller logs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file

from medvit.apps.cell_seg.formats import is_cellvta_state_dict, load_cellvta_state_dict
from medvit.apps.cell_seg.model import CellVTA
from medvit.apps.cell_seg.model_file import MODEL_FORMAT
from medvit.shared.backbone.weights import LoadReport, load_pretrained, read_checkpoint
from medvit.shared.errors import WeightsError
from medvit.shared.schema import read_json_sidecar

logger = logging.getLogger(__name__)

__all__ = ["load_start_weights"]


def _is_cell_model_file(path: Path) -> bool:
    side = path.with_suffix(".json")
    return path.suffix == ".safetensors" and side.is_file() and read_json_sidecar(side).get("format") == MODEL_FORMAT


def _load_cell_model_file(model: CellVTA, path: Path) -> LoadReport:
    """An earlier run's whole network; tensors whose shape differs (other classes) keep their initialisation."""
    sd = load_file(str(path))
    target = model.state_dict()
    unexpected = sorted(k for k in sd if k not in target)
    missing = sorted(k for k in target if k not in sd)
    if unexpected or missing:
        raise WeightsError(
            f"{path}: not this network's layout (missing {missing[:4]}, unexpected {unexpected[:4]}); "
            "was it trained with other adapter settings?"
        )
    resized = [k for k, v in sd.items() if tuple(v.shape) != tuple(target[k].shape)]
    model.load_state_dict({k: v for k, v in sd.items() if k not in resized}, strict=False)
    report = LoadReport(source_format=MODEL_FORMAT, dropped=sorted(resized))
    return report


def load_start_weights(model: CellVTA, path: str | Path) -> LoadReport:
    """Load the starting weights of a new run into ``model`` (see the module docstring for what is accepted).

    Raises:
        WeightsError: an unreadable file or one that does not fit the network (naming keys and shapes).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if _is_cell_model_file(path):
        return _load_cell_model_file(model, path)
    sd, _info = read_checkpoint(path)
    if is_cellvta_state_dict(sd.keys()):
        return load_cellvta_state_dict(model, sd)
    # A backbone checkpoint: only the ViT is filled; its classifier and anything after the blocks is not ours.
    return load_pretrained(
        model,
        sd,
        prefix="encoder.backbone",
        expected_missing=("head.*",),
        allow_unexpected=("head.*", "fc_norm.*", "mask_token", "decoder*"),
    )
