"""RandAugment on float tensors of any channel count (grey X-rays, RGB fundus), drawing from a reseedable generator.

Parameterisation of timm's ``rand_augment_transform`` (Cubuk et al., "RandAugment", CVPR Workshops 2020; timm
``auto_augment.py``), written here on ``[C, H, W]`` float tensors in ``[0, 1]`` instead of PIL images, so that
one-channel images and 16-bit sources need no round trip through 8-bit RGB. The config string is timm's:
``rand-m6-mstd0.5-inc1`` = 2 operations per image (``n``), magnitude 6 of 10 (``m``) perturbed per operation by
N(0, 0.5) (``mstd``) and clipped to [0, 10], the "increasing" operation set (``inc1``: every operation gets
stronger with the magnitude), each chosen operation applied with probability 0.5 (``p``). Operations are drawn with
replacement. The set and its ranges at magnitude ``m`` (``f = m / 10``):

==================  =========================================================================================
AutoContrast        per-channel min-max stretch
Equalize            per-channel histogram equalisation over 256 levels
Invert              ``1 - x``
Rotate              ``+-30 f`` degrees about the centre
Posterize           keep ``4 - int(4 f)`` bits, at least 1 (timm allows 0 bits, a black image)
Solarize            invert values above ``1 - f``
SolarizeAdd         add ``110 f / 255`` to values below 128/255
Color               saturation factor ``1 +- 0.9 f`` (identity on one channel)
Contrast            contrast factor ``1 +- 0.9 f`` (blend with the mean grey level)
Brightness          brightness factor ``1 +- 0.9 f`` (blend with black)
Sharpness           sharpness factor ``1 +- 0.9 f`` (blend with PIL's 3x3 smoothing kernel, borders kept)
ShearX / ShearY     shear ``+-0.3 f`` (origin at the top-left corner, as PIL's affine transform)
TranslateX / Y      ``+-0.45 f`` of the width / height
==================  =========================================================================================

Signs are random (50 %). Geometric operations sample bilinearly and fill uncovered pixels with ``fill`` (timm fills
with the dataset mean). All randomness comes from the ``numpy.random.Generator`` passed in, which the training
dataset reseeds per sample (ARCHITECTURE.md, "Reproducible randomness"). This module imports torch only inside the
operations, so configs can validate the string without it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["OPS", "RandAugment", "RandAugmentSpec", "parse_randaugment"]

OPS: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)


@dataclass(frozen=True)
class RandAugmentSpec:
    """Parsed ``rand-...`` string: ``n`` operations, magnitude ``m`` (0-10), its noise ``mstd``, probability ``p``."""

    n: int = 2
    m: float = 9.0
    mstd: float = 0.0
    p: float = 0.5
    increasing: bool = False


def parse_randaugment(text: str) -> RandAugmentSpec:
    """Parse timm's RandAugment string (``rand-m6-mstd0.5-inc1``; keys ``m``, ``n``, ``mstd``, ``p``, ``inc``).

    Only the increasing set is implemented (``inc1``), the one the recipe uses.

    Raises:
        ValueError: Not of the form ``rand-...``, an unknown key, a bad value or ``inc0``.
    """
    parts = text.split("-")
    if parts[0] != "rand":
        raise ValueError(f"augment.randaugment must start with 'rand-', got {text!r}")
    values: dict[str, Any] = {}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|inc|m|n|p)([0-9.]+)", part)
        if match is None:
            raise ValueError(f"augment.randaugment: cannot read {part!r} in {text!r} (keys m, n, mstd, p, inc)")
        key, raw = match.groups()
        try:
            values[key] = float(raw)
        except ValueError:
            raise ValueError(f"augment.randaugment: {part!r} is not a number") from None
    spec = RandAugmentSpec(
        n=int(values.get("n", 2)),
        m=values.get("m", 9.0),
        mstd=values.get("mstd", 0.0),
        p=values.get("p", 0.5),
        increasing=bool(values.get("inc", 0)),
    )
    if not spec.increasing:
        raise ValueError(f"augment.randaugment: only the increasing set (inc1) is implemented, got {text!r}")
    if not (1 <= spec.n <= 10 and 0 <= spec.m <= 10 and spec.mstd <= 10 and 0 <= spec.p <= 1):
        raise ValueError(f"augment.randaugment: values out of range in {text!r}")
    return spec


# --------------------------------------------------------------------------------------------------- operations
def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma ``[1, H, W]`` of an RGB image (PIL's ``convert('L')``), or the single channel."""
    if x.shape[0] == 3:
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    return x.mean(0, keepdim=True)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    return (degenerate + factor * (x - degenerate)).clamp(0.0, 1.0)


def _autocontrast(x: torch.Tensor, _: float) -> torch.Tensor:
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    scale = (hi - lo).clamp_min(1e-6)
    return ((x - lo) / scale).where(hi > lo, x)


def _equalize(x: torch.Tensor, _: float) -> torch.Tensor:
    import torch

    levels = (x * 255).round().long().clamp(0, 255)
    out = torch.empty_like(x)
    for c in range(x.shape[0]):
        hist = torch.bincount(levels[c].flatten(), minlength=256).double()
        cdf = hist.cumsum(0)
        first = cdf[hist > 0][0]
        denom = cdf[-1] - first
        lut = ((cdf - first) / denom).clamp(0, 1) if denom > 0 else torch.arange(256, dtype=torch.float64) / 255
        out[c] = lut.to(x.dtype)[levels[c]]
    return out


def _affine(x: torch.Tensor, matrix: Sequence[float], fill: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at ``input = M @ output + t`` (pixel coordinates about the image centre), bilinear, ``fill``."""
    import torch
    import torch.nn.functional as F

    _, h, w = x.shape
    a, b, tx, c, d, ty = matrix
    # normalised (align_corners=False) coordinates: x_n = X * 2 / W for X measured from the centre
    theta = torch.tensor(
        [[a, b * h / w, tx * 2 / w], [c * w / h, d, ty * 2 / h]], dtype=torch.float32, device=x.device
    )[None]
    grid = F.affine_grid(theta, [1, x.shape[0], h, w], align_corners=False)
    shifted = (x - fill)[None].float()
    out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return (out.to(x.dtype) + fill).clamp(0.0, 1.0)


def _rotate(x: torch.Tensor, f: float, fill: torch.Tensor) -> torch.Tensor:
    t = math.radians(30.0 * f)
    # PIL rotates counter-clockwise for positive angles: output (X, Y) samples the input rotated back
    return _affine(x, (math.cos(t), -math.sin(t), 0.0, math.sin(t), math.cos(t), 0.0), fill)


def _shear_x(x: torch.Tensor, f: float, fill: torch.Tensor) -> torch.Tensor:
    s = 0.3 * f
    return _affine(x, (1.0, s, s * x.shape[1] / 2, 0.0, 1.0, 0.0), fill)  # origin at the top-left corner


def _shear_y(x: torch.Tensor, f: float, fill: torch.Tensor) -> torch.Tensor:
    s = 0.3 * f
    return _affine(x, (1.0, 0.0, 0.0, s, 1.0, s * x.shape[2] / 2), fill)


def _translate_x(x: torch.Tensor, f: float, fill: torch.Tensor) -> torch.Tensor:
    return _affine(x, (1.0, 0.0, 0.45 * f * x.shape[2], 0.0, 1.0, 0.0), fill)


def _translate_y(x: torch.Tensor, f: float, fill: torch.Tensor) -> torch.Tensor:
    return _affine(x, (1.0, 0.0, 0.0, 0.0, 1.0, 0.45 * f * x.shape[1]), fill)


def _posterize(x: torch.Tensor, f: float) -> torch.Tensor:
    bits = max(4 - int(4 * abs(f)), 1)
    step = 2 ** (8 - bits)
    return _keep_bits(x, step)


def _keep_bits(x: torch.Tensor, step: int) -> torch.Tensor:
    """Keep the top bits of 8-bit levels: ``floor(255 x / step) * step / 255``."""
    return ((x * 255).round() // step) * step / 255


def _solarize(x: torch.Tensor, f: float) -> torch.Tensor:
    threshold = 1.0 - abs(f)
    return (1.0 - x).where(x >= threshold, x)


def _solarize_add(x: torch.Tensor, f: float) -> torch.Tensor:
    return (x + 110.0 * abs(f) / 255.0).clamp(0, 1).where(x < 128 / 255, x)


def _color(x: torch.Tensor, f: float) -> torch.Tensor:
    if x.shape[0] == 1:
        return x
    return _blend(_gray(x).expand_as(x), x, 1.0 + 0.9 * f)


def _contrast(x: torch.Tensor, f: float) -> torch.Tensor:
    mean = _gray(x).mean()
    return _blend(mean.expand_as(x), x, 1.0 + 0.9 * f)


def _brightness(x: torch.Tensor, f: float) -> torch.Tensor:
    return _blend(x.new_zeros(()).expand_as(x), x, 1.0 + 0.9 * f)


def _sharpness(x: torch.Tensor, f: float) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(x.shape[0], 1, 3, 3)
    smooth = x.clone()
    if x.shape[1] > 2 and x.shape[2] > 2:  # PIL keeps the one-pixel border
        smooth[:, 1:-1, 1:-1] = F.conv2d(x[None], kernel, groups=x.shape[0])[0]
    return _blend(smooth, x, 1.0 + 0.9 * f)


_SIGNED = {"Rotate", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY"}
_GEOMETRIC: dict[str, Callable[..., Any]] = {
    "Rotate": _rotate,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
}
_PIXEL: dict[str, Callable[..., Any]] = {
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": lambda x, _: 1.0 - x,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _color,
    "Contrast": _contrast,
    "Brightness": _brightness,
    "Sharpness": _sharpness,
}


def apply_op(name: str, x: torch.Tensor, f: float, fill: torch.Tensor) -> torch.Tensor:
    """One operation at signed strength ``f`` in [-1, 1] (magnitude / 10, sign already drawn).

    Args:
        name: One of :data:`OPS`.
        x: ``[C, H, W]`` float in [0, 1].
        f: Signed strength.
        fill: Per-channel fill of geometric operations, broadcastable to ``[C, 1, 1]``.

    Returns:
        ``[C, H, W]`` in [0, 1].
    """
    if name in _GEOMETRIC:
        return _GEOMETRIC[name](x, f, fill)
    return _PIXEL[name](x, f)


class RandAugment:
    """RandAugment of ``[C, H, W]`` float images in [0, 1] (see the module docstring).

    Args:
        spec: A parsed spec or timm's string.
        fill: Per-channel fill value of geometric operations (in [0, 1]).
    """

    def __init__(self, spec: RandAugmentSpec | str, fill: Sequence[float] = (0.5,)) -> None:
        self.spec = parse_randaugment(spec) if isinstance(spec, str) else spec
        self.fill = tuple(float(v) for v in fill)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Apply ``n`` random operations, drawing every choice from ``rng``."""
        import torch

        fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device)
        fill = (fill if fill.numel() == x.shape[0] else fill.mean().expand(x.shape[0]))[:, None, None]
        s = self.spec
        for k in rng.integers(0, len(OPS), size=s.n):
            name = OPS[int(k)]
            if rng.random() >= s.p:
                continue
            m = s.m if s.mstd <= 0 else float(rng.normal(s.m, s.mstd))
            f = min(max(m, 0.0), 10.0) / 10.0
            if name in _SIGNED and rng.random() < 0.5:
                f = -f
            x = apply_op(name, x, f, fill)
        return x
