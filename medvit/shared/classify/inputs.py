"""From a file to a model input: the :class:`InputSpec` an encoder expects, reading by modality, preprocessing.

**InputSpec** - what the network takes: dimensionality (2D image or 3D volume), channels, size, intensity
normalisation and modality. It comes from the encoder's sidecar when the starting weights have one (``input_size``,
``in_chans``, ``intensity``, ``modality`` as ``medvit pretrain`` and ``medvit weights convert`` write them), else
from the modality's preset (:func:`preset_spec`), and the config's ``data.*`` values override either. It is stored
in the run's ``model.json`` so prediction preprocesses exactly as training did.

**Reading** (:func:`read_source`) goes through the project's readers: ``cxr`` -
:func:`medvit.shared.data.xray.read_xray` (PNG/JPEG 8/16-bit, DICOM with VOI LUT and MONOCHROME1 inversion; grey);
``fundus`` - :func:`medvit.shared.data.eye.read_fundus` cropped to the circular field of view (RGB); ``oct`` -
:func:`medvit.shared.data.eye.read_oct` (NIfTI, ``.npy``, B-scan folders, vendor files) as ``[rows, columns,
slices]``; ``image`` - any photograph through :func:`medvit.shared.data.io.read_image` (RGB). Values come back in
[0, 1] float32.

**Preprocessing**, 2D: evaluation = resize the shorter side to ``size / crop_pct`` then a centre crop (timm's eval
transform; ``crop_pct`` 0.875 in the recipe, 1.0 resizes straight to the size), antialiased bicubic, clipped to
[0, 1]; training = ``RandomResizedCrop`` (timm's sampling: ten tries of area and log-aspect, then a centre crop of
the allowed aspect) + horizontal flip + RandAugment (:mod:`medvit.shared.classify.randaugment`) on the image's own
channels; then channels (grey replicated to 3; colour averaged to 1) and ``(x - mean) / std``. 3D: the volume is
resampled to the size (:func:`medvit.shared.data.eye.resample_volume`, antialiased trilinear); training adds a flip
of the lateral and slice axes (probability ``hflip`` each; the axial axis keeps its orientation) and Uni4Eye's
Gaussian noise (probability 0.2, variance 0-5 grey levels); then the sidecar's intensity rule: ``mean_std``, or
``zscore_nonzero`` (Uni4Eye: mean/std of the non-zero voxels, zero voxels filled with N(0, 1) noise; the
evaluation fill is drawn from a fixed seed, so the same volume always gives the same input).

Arrays: 2D ``[C, H, W]``; 3D ``[1, R, C, S]`` (rows = axial depth, columns, slices = B-scans), the axis order of
:func:`~medvit.shared.data.eye.read_oct` and of the Uni4Eye 3D encoder's ``input_size`` (224, 224, 112).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medvit.shared.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "MODALITIES",
    "EvalTransform",
    "InputSpec",
    "TrainTransform",
    "load_input",
    "preset_spec",
    "read_source",
    "spec_from_sidecar",
]

Modality = Literal["cxr", "fundus", "oct", "image"]
MODALITIES: tuple[str, ...] = ("cxr", "fundus", "oct", "image")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CXR_MEAN, CXR_STD = 0.5056, 0.252  # ChestX-ray14 statistics the thorax paper fine-tunes with
_EVAL_FILL_SEED = 0


@dataclass(frozen=True)
class InputSpec:
    """What the network takes.

    Attributes:
        dims: 2 (image) or 3 (volume).
        channels: 1 or 3 (3D: 1).
        size: ``(H, W)`` or ``(R, C, S)``.
        mean: per-channel mean subtracted from [0, 1] intensities (``mean_std``).
        std: per-channel std.
        modality: ``cxr``, ``fundus``, ``oct`` or ``image``.
        intensity: ``mean_std`` or ``zscore_nonzero`` (per-volume z-score of the non-zero voxels).
    """

    dims: int
    channels: int
    size: tuple[int, ...]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    modality: str = "image"
    intensity: str = "mean_std"

    def __post_init__(self) -> None:
        if self.dims not in (2, 3) or len(self.size) != self.dims:
            raise ConfigError(f"input: size {list(self.size)} does not describe a {self.dims}D input")
        if self.channels not in (1, 3) or (self.dims == 3 and self.channels != 1):
            raise ConfigError(f"input: {self.channels} channels for a {self.dims}D input (2D: 1 or 3; 3D: 1)")
        if self.intensity not in ("mean_std", "zscore_nonzero"):
            raise ConfigError(f"input: intensity {self.intensity!r} is not mean_std or zscore_nonzero")
        if self.modality not in MODALITIES:
            raise ConfigError(f"input: modality {self.modality!r} is not one of {', '.join(MODALITIES)}")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) == 1:
                values = values * self.channels
            if len(values) != self.channels or not all(math.isfinite(v) for v in values):
                raise ConfigError(f"input: {name} {list(values)} does not give one finite value per channel")
            object.__setattr__(self, name, values)
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"input: std must be positive, got {list(self.std)}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``model.json``)."""
        return {
            "dims": self.dims,
            "channels": self.channels,
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "modality": self.modality,
            "intensity": self.intensity,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                dims=int(d["dims"]),
                channels=int(d["channels"]),
                size=tuple(d["size"]),
                mean=tuple(d["mean"]),
                std=tuple(d["std"]),
                modality=str(d["modality"]),
                intensity=str(d.get("intensity", "mean_std")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"input spec: cannot read {dict(d)} ({e})") from None


def preset_spec(modality: str, size: Sequence[int] | None = None) -> InputSpec:
    """The default input of a modality when the starting weights carry no sidecar.

    ``cxr``: 224 px, grey replicated to 3 channels (what the released thorax weights take), mean 0.5056 / std 0.252;
    ``fundus`` and ``image``: 224 px RGB with ImageNet statistics (timm ImageNet and RETFound weights);
    ``oct``: 224 x 224 x 112 (Uni4Eye's volume), one channel, z-score of the non-zero voxels.

    Raises:
        ConfigError: Unknown modality.
    """
    if modality == "cxr":
        return InputSpec(2, 3, tuple(size or (224, 224)), (CXR_MEAN,), (CXR_STD,), "cxr")
    if modality in ("fundus", "image"):
        return InputSpec(2, 3, tuple(size or (224, 224)), IMAGENET_MEAN, IMAGENET_STD, modality)
    if modality == "oct":
        return InputSpec(3, 1, tuple(size or (224, 224, 112)), (0.0,), (1.0,), "oct", "zscore_nonzero")
    raise ConfigError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")


def spec_from_sidecar(sidecar: Mapping[str, Any] | None, modality: str) -> InputSpec:
    """The input an encoder export expects (its ``input_size``, ``in_chans``, ``intensity``), else the preset.

    Args:
        sidecar: The weight file's sidecar (or None).
        modality: The app's modality (the sidecar's own ``modality`` is informative: ``CXR``, ``fundus``, ``OCT``).

    Returns:
        The spec; fields the sidecar lacks come from :func:`preset_spec`.
    """
    base = preset_spec(modality)
    if not sidecar:
        return base
    size = sidecar.get("input_size") or sidecar.get("kwargs", {}).get("img_size")
    dims = len(sidecar.get("patch_size") or sidecar.get("kwargs", {}).get("patch_size") or [0] * base.dims)
    if dims != base.dims:
        raise ConfigError(f"the encoder is {dims}D but modality {modality!r} takes {base.dims}D inputs")
    if isinstance(size, int):
        size = [size] * dims
    channels = int(sidecar.get("in_chans") or base.channels)
    mean, std = base.mean, base.std
    if channels != base.channels:  # per-channel statistics of another channel count: their average
        mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
    spec = replace(base, size=tuple(size) if size else base.size, channels=channels, mean=mean, std=std)
    intensity = sidecar.get("intensity") or {}
    kind = intensity.get("kind")
    if kind == "mean_std" and intensity.get("mean") and intensity.get("std"):
        spec = replace(spec, mean=tuple(intensity["mean"]), std=tuple(intensity["std"]), intensity="mean_std")
    elif kind == "zscore_nonzero":
        spec = replace(spec, intensity="zscore_nonzero", mean=(0.0,), std=(1.0,))
    elif kind is not None:
        logger.warning("encoder intensity rule %r does not apply to %s inputs: using the preset's", kind, modality)
    return spec


# ----------------------------------------------------------------------------------------------------- reading
def read_source(source: str | Path, modality: str) -> np.ndarray:
    """Decode one input into float32 in [0, 1]: 2D ``[H, W]`` (grey) or ``[H, W, 3]``; OCT ``[R, C, S]``.

    Raises:
        DataError: Unreadable or unsupported file (the readers' ``ReadError``, naming the file).
        ConfigError: Unknown modality.
    """
    if modality == "cxr":
        from medvit.shared.data.xray import read_xray

        img, _ = read_xray(source, dtype="float32")
        return img
    if modality == "fundus":
        from medvit.shared.data.eye import read_fundus

        img, _ = read_fundus(source)
        return _unit(img)
    if modality == "oct":
        from medvit.shared.data.eye import read_oct

        vol, _ = read_oct(source, dtype="float32")
        return vol
    if modality == "image":
        from medvit.shared.data.io import read_image

        img, _ = read_image(source, mode="rgb")
        return _unit(img)
    raise ConfigError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")


def _unit(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535)
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def _check_decoded(arr: np.ndarray, spec: InputSpec, source: str | Path) -> None:
    want = 3 if spec.dims == 3 else (2, 3)
    if arr.ndim not in ((want,) if isinstance(want, int) else want):
        raise DataError(f"{source}: decoded to shape {arr.shape}, expected a {spec.dims}D {spec.modality} input")
    if not np.isfinite(arr).all():
        raise DataError(f"{source}: contains NaN or infinite values")


# ----------------------------------------------------------------------------------------------- 2D transforms
def _to_chw(img: np.ndarray) -> Any:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _resize(t: Any, size: Sequence[int], mode: str) -> Any:
    import torch.nn.functional as F

    if tuple(t.shape[-2:]) == tuple(size):
        return t
    out = F.interpolate(t[None], size=tuple(size), mode=mode, align_corners=False, antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def _finish_2d(t: Any, spec: InputSpec) -> Any:
    """Channels (grey -> replicated, colour -> mean) and ``(x - mean) / std``."""
    import torch

    if t.shape[0] != spec.channels:
        t = t.expand(spec.channels, -1, -1) if t.shape[0] == 1 else t.mean(0, keepdim=True)
    mean = torch.tensor(spec.mean, dtype=t.dtype)[:, None, None]
    std = torch.tensor(spec.std, dtype=t.dtype)[:, None, None]
    return ((t - mean) / std).contiguous()


def random_resized_crop_box(
    rng: np.random.Generator, h: int, w: int, scale: Sequence[float], ratio: Sequence[float]
) -> tuple[int, int, int, int]:
    """torchvision/timm ``RandomResizedCrop.get_params``: ``(top, left, height, width)`` drawn from ``rng``."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


# ----------------------------------------------------------------------------------------------- 3D helpers
def _resample(vol: np.ndarray, size: Sequence[int]) -> np.ndarray:
    from medvit.shared.data.eye import resample_volume

    if tuple(vol.shape) == tuple(size):
        return vol.astype(np.float32, copy=False)
    return resample_volume(vol, target_shape=tuple(size))[0]


def _normalise_volume(vol: np.ndarray, spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.intensity == "mean_std":
        return (vol - np.float32(spec.mean[0])) / np.float32(spec.std[0])
    inside = vol > 0
    values = vol[inside]
    mean = float(values.mean()) if values.size else 0.0
    std = float(values.std()) if values.size else 1.0
    out = (vol - np.float32(mean)) / np.float32(std if std > 1e-6 else 1.0)
    fill = ~inside
    out[fill] = rng.standard_normal(int(fill.sum())).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------- transforms
class EvalTransform:
    """Deterministic preprocessing of a decoded input (see the module docstring).

    Args:
        spec: The input spec.
        crop_pct: 2D: shorter side resized to ``size / crop_pct``, then a centre crop.
        interpolation: ``bicubic`` or ``bilinear`` (2D).
    """

    def __init__(self, spec: InputSpec, crop_pct: float = 0.875, interpolation: str = "bicubic") -> None:
        self.spec = spec
        self.crop_pct = float(crop_pct)
        self.mode = interpolation

    def __call__(self, arr: np.ndarray) -> Any:
        """Decoded array -> float32 tensor ``[C, H, W]`` or ``[1, R, C, S]``."""
        import torch

        spec = self.spec
        if spec.dims == 3:
            vol = _resample(arr, spec.size)
            out = _normalise_volume(vol, spec, np.random.default_rng(_EVAL_FILL_SEED))
            return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))[None]
        t = _to_chw(arr)
        h, w = spec.size
        if self.crop_pct < 1.0:
            scale = (math.floor(h / self.crop_pct), math.floor(w / self.crop_pct))
            if h == w:  # square: shorter side to size / crop_pct, aspect kept (timm's eval Resize(int))
                short = min(t.shape[1:])
                scale = (round(t.shape[1] * scale[0] / short), round(t.shape[2] * scale[0] / short))
            t = _resize(t, scale, self.mode)
            top, left = (t.shape[1] - h) // 2, (t.shape[2] - w) // 2
            t = t[:, top : top + h, left : left + w]
        t = _resize(t, (h, w), self.mode)
        return _finish_2d(t, spec)


class TrainTransform:
    """Random training preprocessing, reseedable per sample (``reseed``; see the module docstring).

    Args:
        spec: The input spec.
        augment: The config's ``augment`` section (``crop_scale``, ``crop_ratio``, ``hflip``, ``randaugment``,
            ``interpolation``).
    """

    def __init__(self, spec: InputSpec, augment: Any) -> None:
        from medvit.shared.classify.randaugment import RandAugment

        self.spec = spec
        self.augment = augment
        fill = [min(max(m, 0.0), 1.0) for m in spec.mean]  # timm fills geometric operations with the data mean
        self.randaugment = RandAugment(augment.randaugment, fill=fill) if augment.randaugment else None
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (the training loop calls this per sample)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, arr: np.ndarray) -> Any:
        """Decoded array -> augmented float32 tensor ``[C, H, W]`` or ``[1, R, C, S]``."""
        import torch

        spec, aug, rng = self.spec, self.augment, self.rng
        if spec.dims == 3:
            vol = _resample(arr, spec.size)
            for axis in (1, 2):
                if rng.random() < aug.hflip:
                    vol = np.flip(vol, axis)
            if rng.random() < 0.2:
                sd = math.sqrt(rng.uniform(0.0, 5.0)) / 255.0
                inside = vol > 0
                vol = np.where(inside, vol + rng.normal(0.0, sd, vol.shape).astype(np.float32), vol)
            out = _normalise_volume(np.ascontiguousarray(vol, dtype=np.float32), spec, rng)
            return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))[None]
        top, left, ch, cw = random_resized_crop_box(rng, arr.shape[0], arr.shape[1], aug.crop_scale, aug.crop_ratio)
        t = _resize(_to_chw(arr[top : top + ch, left : left + cw]), spec.size, aug.interpolation)
        if rng.random() < aug.hflip:
            t = t.flip(-1)
        if self.randaugment is not None:
            t = self.randaugment(t, rng)
        return _finish_2d(t, spec)


def load_input(
    source: str | Path, spec: InputSpec, modality: str | None = None, *, crop_pct: float = 0.875
) -> np.ndarray:
    """Read and preprocess one input deterministically (the test-time path).

    Args:
        source: Image file, DICOM, NIfTI / ``.npy`` volume or B-scan folder.
        spec: The model's input spec.
        modality: ``cxr``, ``fundus``, ``oct`` or ``image`` (default: ``spec.modality``).
        crop_pct: 2D evaluation crop (see :class:`EvalTransform`).

    Returns:
        float32 ``[C, H, W]`` or ``[1, R, C, S]``.

    Raises:
        DataError: Unreadable input, or one that does not match the spec's dimensionality.
    """
    arr = read_source(source, modality or spec.modality)
    _check_decoded(arr, spec, source)
    return EvalTransform(spec, crop_pct).__call__(arr).numpy()
