"""Reconstruction previews: what the masked autoencoder sees and rebuilds, as a PNG a person can look at.

For one fixed 3D crop the figure shows, for each of the three orthogonal mid-slices (rows), the original, the masked
input (removed patches blank), the reconstruction (visible patches from the input, removed ones predicted) and the
absolute error (columns). A 2D image gets one row of the same four panels (colour when it has three channels that
differ, else grey); a Uni4Eye model adds its second branch: the gradient-map target and its reconstruction. Drawn
on a matplotlib Agg canvas (no pyplot state, safe in workers and headless runs) and written atomically
(:func:`medvit.shared.files.atomic_path`).
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

__all__ = [
    "PreviewHook",
    "SamplePreviewHook",
    "crop_center",
    "mid_slices",
    "oct_slices",
    "preview_image",
    "preview_volumes",
    "save_image_preview",
    "save_preview",
]

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
    views, out = _masked_views(model, crop, generator)
    return {
        "original": views["original"][0, 0].cpu().numpy(),
        "masked": views["masked"][0, 0].cpu().numpy(),
        "reconstruction": views["reconstruction"][0, 0].cpu().numpy(),
        "error": views["error"][0, 0].cpu().numpy(),
        "loss": np.float32(out["loss"].item()),
    }


def _patch_of(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """The patch of ``x``'s dimensionality: Uni4Eye's ``patch_size_2d`` / ``patch_size_3d``, else ``patch_size``."""
    if hasattr(model, "patch_size_2d"):
        return tuple(model.patch_size_2d if x.ndim == 4 else model.patch_size_3d)
    return tuple(model.patch_size)


def _paste(
    x: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor, patch: Sequence[int], fill: float = 0.0
) -> dict[str, torch.Tensor]:
    """Masked input (removed patches ``fill``) and the reconstruction pasted into the removed patches,
    ``[B, C, *sp]``."""
    grid = tuple(s // p for s, p in zip(x.shape[2:], patch, strict=True))
    keep = (1.0 - mask).unsqueeze(-1)
    patches = patchify(x, patch)
    masked = unpatchify(patches * keep + fill * (1.0 - keep), patch, grid, x.shape[1])
    pasted = unpatchify(patches * keep + patchify(recon, patch) * (1.0 - keep), patch, grid, x.shape[1])
    return {"original": x, "masked": masked, "reconstruction": pasted, "error": (pasted - x).abs()}


def _masked_views(
    model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator | None, fill: float | None = 0.0
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Run the model on ``x [1, C, *sp]``; the four views (and, for Uni4Eye, the gradient-map target and its
    reconstruction ``[1, 1, *sp]``) plus the model's output. Removed patches of the masked view hold ``fill``
    (None: the input's minimum, black on screen)."""
    out = model(x, generator=generator)
    x = x.float()
    patch = _patch_of(model, x)
    mask = out["mask"].float()
    blank = float(x.min()) if fill is None else fill
    views = _paste(x, model.reconstruct(x, out["pred"].float()), mask, patch, blank)
    if "pred_gradient" in out:
        from medvit.pretrain.gradient import gradient_target

        grid = tuple(s // p for s, p in zip(x.shape[2:], patch, strict=True))
        target = unpatchify(gradient_target(x, patch), patch, grid, 1)
        pred = unpatchify(out["pred_gradient"].float(), patch, grid, 1)
        views["gradient"] = target
        views["gradient_reconstruction"] = _paste(target, pred, mask, patch)["reconstruction"]
    return views, out


@torch.no_grad()
def preview_image(
    model: torch.nn.Module, image: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, np.ndarray]:
    """Run a 2D masked autoencoder (MAE or Uni4Eye) on one image and return the panels of the preview.

    Args:
        model: :class:`~medvit.pretrain.mae.MAE` or :class:`~medvit.pretrain.uni4eye.Uni4Eye`.
        image: ``[1, C, H, W]``.
        generator: RNG for the mask (fixed for comparable previews across steps).

    Returns:
        ``{"original", "masked", "reconstruction"}`` as float32 ``[C, H, W]``, ``"error"`` ``[H, W]`` (mean over
        channels), with Uni4Eye also ``"gradient"`` and ``"gradient_reconstruction"`` ``[H, W]``; plus ``"loss"``.
    """
    views, out = _masked_views(model, image, generator, fill=None)
    panels = {k: v[0].cpu().numpy() for k, v in views.items()}
    panels["error"] = panels["error"].mean(axis=0)
    for key in ("gradient", "gradient_reconstruction"):
        if key in panels:
            panels[key] = panels[key][0]
    panels["loss"] = np.float32(out["loss"].item())
    return panels


def oct_slices(volume: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Three orthogonal mid-planes of an OCT volume ``[rows (depth), columns, slices]``, depth pointing down.

    Returns:
        ``[(name, 2D array), ...]``: the middle B-scan ``[rows, columns]``, the cut across the B-scans at the middle
        column ``[rows, slices]`` and the en-face plane at mid depth ``[slices, columns]``.
    """
    r, c, s = (n // 2 for n in volume.shape)
    return [
        ("B-scan (mid slice)", volume[:, :, s]),
        ("across B-scans (mid column)", volume[:, c, :]),
        ("en face (mid depth)", volume[r, :, :].T),
    ]


def save_preview(
    path: str | os.PathLike[str], volumes: dict[str, Any], title: str = "", slices: Any = mid_slices
) -> Path:
    """Draw the 3 x 4 grid (mid-slices x original / masked / reconstruction / error) to a PNG, atomically.

    Args:
        path: target ``.png``.
        volumes: output of :func:`preview_volumes` (``[X, Y, Z]`` arrays).
        title: figure title (e.g. ``"step 200 - masked MSE 0.41"``).
        slices: the three named planes of a volume: :func:`mid_slices` (CT, RAS) or :func:`oct_slices`.

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = ("original", "masked", "reconstruction", "error")
    rows = [slices(np.asarray(volumes[k], dtype=np.float32)) for k in keys]  # [col][row]
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


_IMAGE_PANELS = (
    ("original", "original"),
    ("masked", "masked input"),
    ("reconstruction", "reconstruction"),
    ("error", "|error|"),
    ("gradient", "gradient map"),
    ("gradient_reconstruction", "gradient reconstruction"),
)


def _is_colour(img: np.ndarray) -> bool:
    """A ``[3, H, W]`` image whose channels differ (a grey X-ray replicated to 3 channels is not colour)."""
    return img.ndim == 3 and img.shape[0] == 3 and not (np.allclose(img[0], img[1]) and np.allclose(img[1], img[2]))


def _displayable(img: np.ndarray, lo: float, hi: float, colour: bool) -> np.ndarray:
    """``[C, H, W]`` -> an ``[H, W, 3]`` picture in [0, 1] (colour) or ``[H, W]`` (the channel mean)."""
    if img.ndim == 2:
        return img
    if colour:
        return np.clip((np.moveaxis(img, 0, -1) - lo) / (hi - lo), 0.0, 1.0)
    return img.mean(axis=0)


def save_image_preview(path: str | os.PathLike[str], panels: dict[str, Any], title: str = "") -> Path:
    """Draw one row of 2D panels (original / masked / reconstruction / error [/ gradient map / its
    reconstruction]) to a PNG, atomically.

    Args:
        path: target ``.png``.
        panels: output of :func:`preview_image`.
        title: figure title.

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [(k, name) for k, name in _IMAGE_PANELS if k in panels]
    lo, hi = float(np.min(panels["original"])), float(np.max(panels["original"]))
    hi = hi if hi > lo else lo + 1.0
    colour = _is_colour(np.asarray(panels["original"]))
    fig = Figure(figsize=(2.6 * len(shown), 3.0), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(shown))
    for ax, (key, name) in zip(axes, shown, strict=True):
        img = np.asarray(panels[key], dtype=np.float32)
        if key == "error":
            ax.imshow(img, cmap="magma", vmin=0.0, vmax=max(hi - lo, 1e-6) * 0.5)
        elif key.startswith("gradient"):
            g = np.asarray(panels["gradient"], dtype=np.float32)
            ax.imshow(img, cmap="gray", vmin=float(g.min()), vmax=max(float(g.max()), float(g.min()) + 1e-6))
        else:
            picture = _displayable(img, lo, hi, colour)
            ax.imshow(picture, **({} if colour else {"cmap": "gray", "vmin": lo, "vmax": hi}))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


class SamplePreviewHook:
    """Engine hook: previews of fixed 2D images and/or 3D volumes every ``every`` steps and at the end (rank 0).

    A 2D sample is drawn by :func:`save_image_preview`, a 3D one as three orthogonal planes (:func:`save_preview`).
    Files: ``<run>/previews/step_000200[_NAME].png`` and ``<run>/previews/latest[_NAME].png`` for each sample
    ``NAME`` (no suffix for the name ``""``).

    Args:
        samples: ``{name: [1, C, *size]}`` CPU tensors in the model's input units.
        every: steps between previews (0: only at the end).
        seed: seed of the preview masks (the same masks at every step).
        model_of: picks the masked autoencoder out of the training task (default: the task itself).
        slices: the planes of a 3D sample (:func:`oct_slices` for OCT, :func:`mid_slices` for CT).
    """

    def __init__(
        self,
        samples: dict[str, torch.Tensor],
        every: int,
        seed: int = 0,
        model_of: Any = None,
        slices: Any = oct_slices,
    ) -> None:
        self.samples = samples
        self.every = every
        self.seed = seed
        self.model_of = model_of or (lambda task: task)
        self.slices = slices
        self.written: list[Path] = []

    def _draw_one(self, state: Any, model: torch.nn.Module, name: str, sample: torch.Tensor) -> None:
        gen = torch.Generator(device=state.device).manual_seed(self.seed)
        x = sample.to(state.device)
        with torch.no_grad(), state.autocast():
            vols = preview_image(model, x, gen) if x.ndim == 4 else preview_volumes(model, x, gen)
        suffix = f"_{name}" if name else ""
        folder = Path(state.run_dir) / "previews"
        title = f"step {state.step}{' ' + name if name else ''} - masked-patch loss {float(vols['loss']):.4f}"
        if x.ndim == 4:
            path = save_image_preview(folder / f"step_{state.step:06d}{suffix}.png", vols, title)
            save_image_preview(folder / f"latest{suffix}.png", vols, title)
        else:
            path = save_preview(folder / f"step_{state.step:06d}{suffix}.png", vols, title, self.slices)
            save_preview(folder / f"latest{suffix}.png", vols, title, self.slices)
        self.written.append(path)

    def _draw(self, state: Any) -> None:
        if state.rank != 0:
            return
        model = self.model_of(state.task)
        was_training = model.training
        model.eval()
        try:
            for name, sample in self.samples.items():
                self._draw_one(state, model, name, sample)
        finally:
            model.train(was_training)

    def on_step_end(self, state: Any) -> None:
        if self.every and state.step % self.every == 0 and state.step < state.total_steps:
            self._draw(state)

    def on_fit_end(self, state: Any) -> None:
        self._draw(state)


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
