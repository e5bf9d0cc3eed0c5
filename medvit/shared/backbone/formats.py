"""Whole-model checkpoint formats that apps register: how the shared layer learns about an app's model files.

The backbone layer converts *backbone* checkpoints (timm, MAE, Hi-End-MAE, MONAI, ours) by itself. A file that
holds a whole task model (a ViT-FIQA face model with its quality token and heads, a segmentation network with its
decoder) must be imported by the app that owns the heads; the shared layer never imports an app. So an app
registers a :class:`WholeModelFormat` when its package is imported: how to recognise the file by its keys, and
the function that imports it whole. :func:`medvit.shared.backbone.weights.detect_format` then names the format,
the backbone-only loaders refuse such a file with a message naming the right command, and ``medvit weights
convert`` hands it to the app's importer.

This module is torch-free, so registering costs an app nothing at import time (``medvit --help`` stays fast);
the importer itself imports what it needs when it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WholeModelFormat", "WholeModelImport", "get_format", "register_format", "whole_model_formats"]


@dataclass(frozen=True)
class WholeModelImport:
    """What ``medvit weights convert`` hands to an app's importer.

    Attributes:
        src: The checkpoint file.
        out: The ``.safetensors`` file to write (a sidecar beside it).
        state_dict: The tensors already read from ``src`` (wrappers and ``module.`` prefixes removed).
        info: The reader's info about ``src`` (``config``: settings stored beside the weights, if any).
        overrides: Architecture overrides the user gave (``--set KEY=VALUE``), already validated as YAML values.
        overwrite: Whether ``out`` may be replaced.
    """

    src: Path
    out: Path
    state_dict: Mapping[str, Any]
    info: Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    overwrite: bool = False


@dataclass(frozen=True)
class WholeModelFormat:
    """A whole-model checkpoint layout an app imports.

    Attributes:
        name: The format's name (``--format NAME``), e.g. ``"vit-fiqa"``.
        description: What such a file is, for messages, e.g. ``"ViT-FIQA / arcface_torch face model"``.
        recognises: Key signature test on the checkpoint's state-dict keys.
        importer: Writes the whole model in medvit's format and returns the line to print (what was written).
        command: The app command that imports it too, named in messages (e.g. ``"medvit fiqa convert"``).
    """

    name: str
    description: str
    recognises: Callable[[Collection[str]], bool]
    importer: Callable[[WholeModelImport], str]
    command: str = ""


_REGISTRY: dict[str, WholeModelFormat] = {}


def register_format(fmt: WholeModelFormat) -> WholeModelFormat:
    """Register ``fmt`` (idempotent for the same object; another format under a taken name is an error)."""
    known = _REGISTRY.get(fmt.name)
    if known is not None and known is not fmt:
        raise ValueError(f"checkpoint format {fmt.name!r} is registered already ({known.description})")
    _REGISTRY[fmt.name] = fmt
    return fmt


def whole_model_formats() -> list[WholeModelFormat]:
    """The registered formats, in registration order."""
    return list(_REGISTRY.values())


def get_format(name: str) -> WholeModelFormat | None:
    """The registered format called ``name``, or None."""
    return _REGISTRY.get(name)


def recognise(keys: Collection[str]) -> WholeModelFormat | None:
    """The first registered format whose key signature ``keys`` match, or None."""
    keyset = keys if isinstance(keys, (set, frozenset)) else set(keys)
    for fmt in _REGISTRY.values():
        if fmt.recognises(keyset):
            return fmt
    return None
