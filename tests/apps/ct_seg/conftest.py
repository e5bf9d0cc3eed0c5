"""Fixtures of the ct-seg tests: a CLI root with the sub-app mounted, volume writers, and hand-made runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import typer


@pytest.fixture(scope="session")
def cli() -> typer.Typer:
    """A root app like ``medvit`` (errors -> one line, exit 2) with ``ct-seg`` mounted."""
    from medvit.apps.ct_seg.cli import app as ct_app
    from medvit.cli import _MedvitGroup

    root = typer.Typer(cls=_MedvitGroup, add_completion=False)

    @root.callback()
    def _root() -> None:
        pass

    root.add_typer(ct_app, name="ct-seg")
    return root


def oblique_affine(spacing: tuple[float, float, float], degrees: tuple[float, float, float]) -> np.ndarray:
    """LPS-like voxel axes, tilted about x, y and z, with an origin offset: a [4, 4] voxel-to-RAS affine."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ ry @ rx @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    aff[:3, 3] = [31.5, -12.25, -402.0]
    return aff


WriteNifti = Callable[..., Path]


@pytest.fixture
def write_nifti() -> WriteNifti:
    """``write_nifti(path, array, affine)``: a NIfTI-1 file with qform = sform = scanner."""
    import nibabel as nib

    def write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        aff = np.eye(4) if affine is None else affine
        img = nib.Nifti1Image(array, aff)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        nib.save(img, str(path))
        return path

    return write


def blobs_volume(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Air with three off-centre ellipsoids of 400 HU (asymmetric: any flip or shift of the grid shows)."""
    idx = np.indices(shape).astype(np.float32)
    s = np.asarray(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    for centre, radii in (
        ((0.28, 0.30, 0.35), (0.14, 0.12, 0.22)),
        ((0.70, 0.35, 0.60), (0.12, 0.18, 0.20)),
        ((0.45, 0.72, 0.30), (0.16, 0.10, 0.25)),
    ):
        c, r = np.asarray(centre) * s, np.asarray(radii) * s
        mask |= (((idx - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) <= 1.0
    hu = np.where(mask, 400.0, -1000.0).astype(np.int16)
    return hu, mask


def write_run(run: Path, model: torch.nn.Module, spec: dict) -> Path:
    """A run folder as `ct-seg train` leaves it: model.json + model.safetensors."""
    from safetensors.torch import save_file

    run.mkdir(parents=True, exist_ok=True)
    (run / "model.json").write_text(json.dumps(spec))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    return run


def tiny_spec(model, labels: dict[int, str], spacing=(1.5, 1.5, 1.5), crop=(32, 32, 32)) -> dict:
    from medvit.apps.ct_seg.api import MODEL_FORMAT

    return {
        "format": MODEL_FORMAT,
        "format_version": 1,
        "encoder": model.encoder.arch_kwargs,
        "decoder": model.decoder_kwargs(),
        "labels": {str(k): v for k, v in labels.items()},
        "preprocess": {
            "spacing": list(spacing),
            "hu_window": [-175.0, 250.0],
            "orientation": "RAS",
            "crop_foreground": True,
        },
        "crop_size": list(crop),
        "infer": {"overlap": 0.25, "sw_batch_size": 2, "device": "cpu", "precision": "fp32"},
    }
