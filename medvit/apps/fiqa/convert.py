"""Weights of ``medvit fiqa``: the model a command scores with, ``fiqa convert`` and ``fiqa extract-bin``.

* :func:`load_scoring_model` finds the FIQA model behind ``--weights``: a run directory, our ``.safetensors``, an
  engine checkpoint (rebuilt with its run's ``config.yaml``), or an official ViT-FIQA / arcface_torch checkpoint
  converted in memory.
* :func:`convert` imports an official ViT-FIQA checkpoint into our format (``medvit weights convert`` hands it
  such checkpoints through the format registered in ``formats.py``).
* :func:`extract_bin` unpacks an insightface ``.bin`` into images and a ``pair_list.txt``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medvit.apps.fiqa.bin_reader import read_bin
from medvit.apps.fiqa.config import FiqaConfig
from medvit.apps.fiqa.model import (
    FIQA_FORMAT,
    ViTFIQA,
    build_fiqa_model,
    checkpoint_config,
    load_fiqa,
    load_state_into,
    model_from_official,
    read_foreign_checkpoint,
    save_fiqa,
)
from medvit.shared.config import from_dict, read_yaml
from medvit.shared.engine.checkpoint import CKPT_FORMAT, load_checkpoint
from medvit.shared.errors import DataError, TrainingError, WeightsError
from medvit.shared.files import write_bytes_atomic, write_text_atomic
from medvit.shared.paths import weights_dir
from medvit.shared.schema import read_json_sidecar

logger = logging.getLogger(__name__)

__all__ = ["NO_WEIGHTS_HINT", "convert", "extract_bin", "load_scoring_model"]

NO_WEIGHTS_HINT = (
    "train a model with `medvit fiqa train DATA --out RUN` and pass --weights RUN, or import the official "
    "ViT-FIQA checkpoint with `medvit fiqa convert model.pt --out vit_fiqa.safetensors` (the ViT-FIQA converter "
    "behind `medvit weights convert`) and pass --weights vit_fiqa.safetensors"
)


def _model_from_training_checkpoint(path: Path) -> tuple[ViTFIQA, dict[str, Any]]:
    """Rebuild the model from an engine checkpoint (``last.pt`` / ``best.pt``) and its run's ``config.yaml``."""
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


def _weights_file(weights: str | os.PathLike[str] | None) -> Path:
    """The file behind ``--weights``: the default file, a run directory's model, or the path itself."""
    if weights is None:
        default = weights_dir() / "vit_fiqa.safetensors"
        if not default.is_file():
            raise WeightsError(f"no FIQA weights given (--weights) and none at {default}: {NO_WEIGHTS_HINT}")
        weights = default
    p = Path(weights).expanduser()
    if p.is_dir():
        for name in ("model.safetensors", "best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise WeightsError(f"{p}: no model.safetensors, best.pt or last.pt in this folder: {NO_WEIGHTS_HINT}")
    if not p.is_file():
        raise WeightsError(f"{p}: weight file not found: {NO_WEIGHTS_HINT}")
    return p


def _is_training_checkpoint(p: Path) -> bool:
    try:
        head = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - read again by the caller with the full error handling
        return False
    return isinstance(head, dict) and head.get("format") == CKPT_FORMAT


def load_scoring_model(weights: str | os.PathLike[str] | None) -> tuple[ViTFIQA, dict[str, Any]]:
    """The FIQA model to score with (eval mode, CPU).

    Args:
        weights: a run directory (``model.safetensors``, else ``best.pt``/``last.pt``), our ``.safetensors``, an
            engine checkpoint, or an official ViT-FIQA / arcface_torch checkpoint (``.pt``/``.pth``, converted in
            memory). None: ``$MEDVIT_WEIGHTS/vit_fiqa.safetensors`` if it exists.

    Raises:
        WeightsError: nothing found or unreadable (the message says how to get weights).
    """
    p = _weights_file(weights)
    side = p.with_suffix(".json")
    if p.suffix == ".safetensors" and side.is_file():
        fmt = read_json_sidecar(side).get("format")  # a hostile sidecar is refused here, before anything is built
        if fmt == FIQA_FORMAT:
            return load_fiqa(p)
    if p.suffix == ".pt" and _is_training_checkpoint(p):
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


def extract_bin(bin_path: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Unpack an insightface ``.bin`` into ``OUT/images/<i>.jpg`` + ``OUT/pair_list.txt`` (CR-FIQA's layout).

    The encoded bytes are written as they are (no re-compression); the extension follows the format.

    Returns:
        The ``pair_list.txt`` path.
    """
    bins, issame = read_bin(bin_path)
    root = Path(out)
    img_dir = root / "images"
    if (root / "pair_list.txt").exists() and not overwrite:
        raise DataError(f"{root / 'pair_list.txt'} exists; pass --overwrite to replace it")
    img_dir.mkdir(parents=True, exist_ok=True)
    for i, blob in enumerate(bins):
        ext = ".png" if blob[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg"
        # No fsync per image: pair_list.txt, written last (with fsync), is what marks a complete extraction.
        write_bytes_atomic(img_dir / f"{i}{ext}", blob, fsync=False)
    lines = [f"{2 * k} {2 * k + 1} {int(s)}" for k, s in enumerate(issame)]
    return write_text_atomic(root / "pair_list.txt", "\n".join(lines) + "\n")
