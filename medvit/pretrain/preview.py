"""Reconstruction previews: what the masked autoencoder sees and rebuilds, as a PNG a person can look at.

For one fixed crop the figure shows, for each of the three orthogonal mid-slices (rows), the original, the masked
input (removed patches blank), the reconstruction (visible patches from the input, removed ones predicted) and the
absolute error (columns). Drawn on a matplotlib Agg canvas (no pyplot state, safe in workers and headless runs) and
written atomically (:func:`medvit.shared.files.atomic_path`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvit.pretrain.mae import patchify, unpatchify
from medvit.shared.files import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["PreviewHook", "crop_center", "mid_slices", "preview_volumes", "save_preview"]

COLUMNS = ("original", "masked input", "reconstruction", "|error|")


def mid_slices(volume: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The three orthogonal mid-slices of a ``[X, Y, Z]`` volume (RAS: sagittal, coronal, axial).

    Returns:
        ``[(name, 2D array), ...]`` oriented for display (second axis horizontal, first vertical, flipped so that
        superior/anterior is up).
    """
    x, y, z = (s // 2 for s in volume.shape)
    return [
        ("axial (z mid)", np.rot90(volume[:, :, z])),
        ("coronal (y mid)", np.rot90(volume[:, y, :])),
        ("sagittal (x mid)", np.rot90(volume[x, :, :])),
    ]


@torch.no_grad()
def preview_volumes(
    model: torch.nn.Module, crop: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, np.ndarray]:
    """Run a masked-autoencoder on one crop and return the four volumes of the preview.

    Args:
        model: a :class:`~medvit.pretrain.mae.MAE` or :class:`~medvit.pretrain.hi_end_mae.HiEndMAE` (``forward``,
            ``reconstruct``, ``patch_size``).
        crop: ``[1, C, X, Y, Z]`` (channel 0 is shown).
        generator: RNG for the mask (fixed for comparable previews across steps).

    Returns:
        ``{"original", "masked", "reconstruction", "error"}`` as float32 ``[X, Y, Z]`` arrays, plus ``"loss"``.
    """
    out = model(crop, generator=generator)
    pred, mask = out["pred"].float(), out["mask"].float()
    recon = model.reconstruct(crop.float(), pred)
    grid = tuple(s // p for s, p in zip(crop.shape[2:], model.patch_size, strict=True))
    keep = (1.0 - mask).unsqueeze(-1)
    patches = patchify(crop.float(), model.patch_size)
    masked = unpatchify(patches * keep, model.patch_size, grid, crop.shape[1])
    pasted = unpatchify(
        patches * keep + patchify(recon, model.patch_size) * (1.0 - keep), model.patch_size, grid, crop.shape[1]
    )
    orig = crop.float()
    return {
        "original": orig[0, 0].cpu().numpy(),
        "masked": masked[0, 0].cpu().numpy(),
        "reconstruction": pasted[0, 0].cpu().numpy(),
        "error": (pasted - orig).abs()[0, 0].cpu().numpy(),
        "loss": np.float32(out["loss"].item()),
    }


def save_preview(path: str | os.PathLike[str], volumes: dict[str, Any], title: str = "") -> Path:
    """Draw the 3 x 4 grid (mid-slices x original / masked / reconstruction / error) to a PNG, atomically.

    Args:
        path: target ``.png``.
        volumes: output of :func:`preview_volumes` (``[X, Y, Z]`` arrays).
        title: figure title (e.g. ``"step 200 - masked MSE 0.41"``).

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = ("original", "masked", "reconstruction", "error")
    rows = [mid_slices(np.asarray(volumes[k], dtype=np.float32)) for k in keys]  # [col][row]
    lo = float(np.min(volumes["original"]))
    hi = float(np.max(volumes["original"]))
    hi = hi if hi > lo else lo + 1.0
    fig = Figure(figsize=(10, 7.8), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 4)
    for r in range(3):
        for c, key in enumerate(keys):
            ax = axes[r][c]
            name, img = rows[c][r]
            if key == "error":
                ax.imshow(img, cmap="magma", vmin=0.0, vmax=max(hi - lo, 1e-6) * 0.5)
            else:
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


class PreviewHook:
    """Engine hook: a reconstruction preview of a fixed crop every ``every`` steps and at the end (rank 0).

    Files: ``<run>/previews/step_000200.png`` and ``<run>/previews/latest.png``.

    Args:
        crop: ``[1, C, *crop_size]`` fixed validation crop (CPU tensor).
        every: steps between previews (0: only at the end).
        seed: seed of the preview mask (the same mask at every step).
    """

    def __init__(self, crop: torch.Tensor, every: int, seed: int = 0) -> None:
        self.crop = crop
        self.every = every
        self.seed = seed
        self.written: list[Path] = []

    def _draw(self, state: Any) -> None:
        if state.rank != 0:
            return
        model = state.task
        was_training = model.training
        model.eval()
        try:
            gen = torch.Generator(device=state.device).manual_seed(self.seed)
            with state.autocast():
                vols = preview_volumes(model, self.crop.to(state.device), gen)
        finally:
            model.train(was_training)
        folder = Path(state.run_dir) / "previews"
        title = f"step {state.step} - masked-patch loss {float(vols['loss']):.4f}"
        path = save_preview(folder / f"step_{state.step:06d}.png", vols, title)
        save_preview(folder / "latest.png", vols, title)
        self.written.append(path)
        logger.debug("preview %s", path)

    def on_step_end(self, state: Any) -> None:
        if self.every and state.step % self.every == 0 and state.step < state.total_steps:
            self._draw(state)

    def on_fit_end(self, state: Any) -> None:
        self._draw(state)


def crop_center(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Centre crop (zero-padded where the volume is smaller) of a ``[C, X, Y, Z]`` tensor to ``[C, *size]``."""
    out = volume.new_zeros((volume.shape[0], *size))
    src, dst = [], []
    for s, t in zip(volume.shape[1:], size, strict=True):
        if s >= t:
            a = (s - t) // 2
            src.append(slice(a, a + t))
            dst.append(slice(0, t))
        else:
            a = (t - s) // 2
            src.append(slice(0, s))
            dst.append(slice(a, a + s))
    out[(slice(None), *dst)] = volume[(slice(None), *src)]
    return out
