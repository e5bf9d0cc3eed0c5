"""Inference core of ct-seg: sliding-window softmax, and :class:`Segmenter` (volume in, label map on its grid out).

:class:`Segmenter` runs the training preprocessing recorded in ``model.json`` (RAS, spacing, HU window,
foreground crop), MONAI ``sliding_window_inference`` with Gaussian blending (optional flip test-time
augmentation), softmax, then resamples the probabilities (trilinear) from the network grid straight onto the
input's own voxel grid (its affine and shape) and takes the argmax there: by three 1D passes
(:mod:`medvit.shared.data.resample`) when the grids are axis-aligned, else with MONAI ``SpatialResample``. The label map
therefore has exactly the input's shape and affine, whatever its orientation, obliquity or spacing.
Validation during training uses :func:`sliding_probs` in the preprocessed grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import SpatialResample
from torch import nn

from medvit.apps.ct_seg.model_file import preprocess_transform
from medvit.shared.data.io import ImageMeta
from medvit.shared.data.resample import axis_aligned_map, resample_axis_aligned
from medvit.shared.data.transforms import volume_to_metatensor

__all__ = ["Segmenter", "sliding_probs"]


def sliding_probs(
    model: nn.Module,
    image: torch.Tensor,
    device: torch.device,
    *,
    roi: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    blend: str = "gaussian",
    tta: bool = False,
) -> torch.Tensor:
    """Softmax probabilities of a preprocessed volume by sliding-window inference.

    Args:
        model: the network (eval mode).
        image: ``[1, X, Y, Z]`` preprocessed volume.
        device: compute device.
        roi: window size.
        overlap: window overlap.
        sw_batch_size: windows per forward pass.
        blend: ``gaussian`` or ``constant``.
        tta: average over the 8 flips of the three axes.

    Returns:
        ``[C, X, Y, Z]`` float32 probabilities on the CPU.
    """
    x = image.as_subclass(torch.Tensor)[None].to(device=device, dtype=torch.float32)
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    acc = None
    with torch.inference_mode():
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            logits = sliding_window_inference(
                xi, tuple(int(r) for r in roi), sw_batch_size, model, overlap=overlap, mode=blend
            )
            p = torch.softmax(logits.as_subclass(torch.Tensor).float(), dim=1)
            p = torch.flip(p, dims) if dims else p
            acc = p if acc is None else acc + p
        assert acc is not None
        acc = acc / len(flips)
    return acc[0].cpu()


class Segmenter:
    """Volume in, label map on the same grid out (the inference core of ``predict``).

    Args:
        model: a :class:`UNETR` (or any module mapping ``[B, 1, *roi]`` to logits), eval mode.
        spec: the ``model.json`` dict (``preprocess``, ``crop_size``, ``labels``).
        device: compute device.
        precision: ``fp32`` or ``bf16`` (autocast; CUDA only).
        overlap, sw_batch_size, blend, tta: sliding-window settings.
        resample: ``probabilities`` (trilinear resampling of the softmax, then argmax on the input grid) or
            ``labels`` (argmax on the network grid, nearest-neighbour resampling).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: Mapping[str, Any],
        *,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        overlap: float = 0.5,
        sw_batch_size: int = 4,
        blend: str = "gaussian",
        tta: bool = False,
        resample: str = "probabilities",
    ) -> None:
        self.model = model
        self.spec = spec
        self.device = torch.device(device)
        self.precision = precision
        self.sw = {
            "roi": tuple(spec["crop_size"]),
            "overlap": overlap,
            "sw_batch_size": sw_batch_size,
            "blend": blend,
            "tta": tta,
        }
        self.resample = resample
        self.labels = {int(v): n for v, n in spec["labels"].items()}
        self.pre = preprocess_transform(spec, with_label=False)
        self.pre_nocrop = None
        if spec["preprocess"].get("crop_foreground", True):
            s2 = {**spec, "preprocess": {**spec["preprocess"], "crop_foreground": False}}
            self.pre_nocrop = preprocess_transform(s2, with_label=False)

    def preprocess(self, array: np.ndarray, meta: ImageMeta) -> Any:
        """``[X, Y, Z]`` volume -> ``[1, X', Y', Z']`` MetaTensor in the network's grid (affine tracked)."""
        out = self.pre({"image": volume_to_metatensor(array, meta)})["image"]
        if min(out.shape[1:]) == 0 and self.pre_nocrop is not None:  # nothing above the HU window's floor
            out = self.pre_nocrop({"image": volume_to_metatensor(array, meta)})["image"]
        return out

    def probabilities(self, pre: Any) -> torch.Tensor:
        """Softmax ``[C, X', Y', Z']`` in the network grid."""
        ctx: Any = contextlib.nullcontext()
        if self.precision == "bf16" and self.device.type == "cuda":
            ctx = torch.autocast("cuda", dtype=torch.bfloat16)
        with ctx:
            return sliding_probs(self.model, pre.as_tensor(), self.device, **self.sw)

    def to_input_grid(
        self, probs: torch.Tensor, net_affine: torch.Tensor, meta: ImageMeta, shape: Sequence[int], *, keep: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Resample network-grid probabilities onto the input's voxel grid and take the argmax there.

        Returns:
            (label map ``[X, Y, Z]`` uint8/uint16 in the input's voxel order, probabilities ``[C, X, Y, Z]`` float16
            or None). Outside the network grid (the cropped-away air) everything is background.
        """
        dst_np = np.asarray(meta.affine if meta.affine is not None else np.eye(4), dtype=np.float64)
        size = tuple(int(s) for s in shape[:3])
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        dtype = np.uint8 if max(self.labels) < 256 else np.uint16
        # Only the input voxels that the network grid covers can be foreground: resample into that box alone
        # (the cropped-away air around the body is background), then place it in the full volume.
        box = _covered_box(np.asarray(net_affine, dtype=np.float64), probs.shape[1:], dst_np, size)
        labels = np.zeros(size, dtype=dtype)
        full_np = np.zeros((probs.shape[0], *size), dtype=np.float16) if keep else None
        if full_np is not None:
            full_np[0] = 1.0
        if box is None:
            return labels, full_np
        lo, hi = box
        sub = dst_np.copy()
        sub[:3, 3] = dst_np[:3, :3] @ np.asarray(lo, dtype=np.float64) + dst_np[:3, 3]
        sub_t = torch.as_tensor(sub, dtype=torch.float64)
        sub_size = tuple(int(h - lo_) for lo_, h in zip(lo, hi, strict=True))
        region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        if self.resample == "labels" and not keep:
            lab = MetaTensor(probs.argmax(0, keepdim=True).float().to(dev), affine=net_affine)
            out = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)(
                lab, dst_affine=sub_t, spatial_size=sub_size
            )
            labels[region] = out[0].as_tensor().round().cpu().numpy().astype(dtype)
            return labels, None
        src_np = np.asarray(net_affine, dtype=np.float64)
        aligned = axis_aligned_map(np.linalg.inv(src_np) @ sub)
        if aligned is not None:  # the usual case (no obliquity): three 1D passes, same values as grid_sample
            fg = resample_axis_aligned(probs[1:].to(dev), *aligned, sub_size)
        else:  # foreground channels: zero padding = background
            mt = MetaTensor(probs[1:].to(dev), affine=net_affine)
            fg = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
                mt, dst_affine=sub_t, spatial_size=sub_size
            ).as_tensor()
        bg = (1.0 - fg.sum(0)).clamp_(min=0.0)
        # argmax over [background, foreground...] without building that stack; ties go to the lower label, as
        # with argmax (background first, then max's first maximal index).
        fg_max, fg_arg = fg.max(0)
        lab = torch.where(fg_max > bg, fg_arg + 1, 0)
        labels[region] = lab.cpu().numpy().astype(dtype)
        if full_np is not None:
            full_np[(0, *region)] = bg.cpu().numpy().astype(np.float16)
            full_np[(slice(1, None), *region)] = fg.cpu().numpy().astype(np.float16)
        return labels, full_np

    def __call__(
        self, array: np.ndarray, meta: ImageMeta, *, keep_probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment one volume: ``[X, Y, Z]`` -> (label map ``[X, Y, Z]``, optional probabilities ``[C, X, Y, Z]``)."""
        pre = self.preprocess(array, meta)
        probs = self.probabilities(pre)
        return self.to_input_grid(probs, pre.affine, meta, array.shape, keep=keep_probabilities)


def _covered_box(
    src_affine: np.ndarray, src_shape: Sequence[int], dst_affine: np.ndarray, dst_shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Input-voxel bounding box ``(lo, hi)`` (hi exclusive) of a grid's voxel centres, one voxel of margin;
    None when the grids do not overlap."""
    n = [int(s) for s in src_shape]
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)])
    vox = (np.linalg.inv(dst_affine) @ src_affine @ corners.T)[:3].T  # [8, 3] in destination voxel indices
    lo = np.maximum(np.floor(vox.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(vox.max(0)).astype(int) + 2, np.asarray(dst_shape))
    if np.any(hi <= lo):
        return None
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)
