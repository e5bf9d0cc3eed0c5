"""Training data of the 2D pipelines: recipe augmentations of cached images and volumes, and Uni4Eye's mixed batches.

Everything random here draws from a generator the training loop reseeds per sample (``reseed(seed)``, see
:class:`medvit.shared.engine.fit.SeededSamples`), so a resumed run sees the very crops an uninterrupted run saw.

* :class:`ImageAugment` - the 2D recipe: torchvision's ``RandomResizedCrop`` (area ``scale``, aspect ``ratio``, ten
  tries then a centre crop of the allowed aspect) resampled with antialiased bicubic/bilinear interpolation (PIL's
  filters, as torchvision on PIL images; values clipped to [0, 1] as PIL's 8-bit output is), a horizontal flip,
  grayscale replicated to the model's channels, ``(x - mean) / std``. Thorax recipe (Xiao et al., WACV 2023):
  scale (0.5, 1.0), bicubic, mean 0.5056 / std 0.252; Uni4Eye (successor code): scale (0.2, 1.0), no normalisation.
  ``train=False`` gives the deterministic view (centre square, resized) used for previews.
* :class:`VolumeAugment` - Uni4Eye's 3D recipe (successor ``volumentations`` pipeline): a flip per axis with
  probability 0.5, Gaussian noise with probability 0.2 and a variance drawn from (0, 5) in 8-bit grey levels, then a
  z-score over the non-zero voxels with zero voxels replaced by N(0, 1) noise (MedicalNet's normalisation).
* :class:`MixedBatches` - Uni4Eye's training set: item ``k`` is a whole batch of ONE dimensionality, chosen by
  :func:`~medvit.pretrain.uni4eye.interleave_schedule` for the epoch, with the batch's members taken from a
  per-epoch permutation of that kind. See the class for why this design keeps resume exact and ranks in step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medvit.shared.errors import ConfigError, DataError

__all__ = [
    "ImageAugment",
    "MixedBatches",
    "VolumeAugment",
    "random_resized_crop_box",
    "stack_images",
    "unwrap_batch",
]

_INTERPOLATION = {"bicubic": "bicubic", "bilinear": "bilinear"}


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
) -> tuple[int, int, int, int]:
    """The box of a random resized crop: ``(top, left, h, w)`` (torchvision's ``RandomResizedCrop.get_params``).

    Up to ten tries draw an area fraction from ``scale`` and a log-uniform aspect ratio (w / h) from ``ratio``;
    the first box that fits is placed uniformly. If none fits, the centre crop of the image clamped to the ratio
    range is returned.

    Args:
        rng: the sample's generator.
        height: image rows.
        width: image columns.
        scale: ``(min, max)`` area fraction.
        ratio: ``(min, max)`` aspect ratio.

    Returns:
        ``(top, left, h, w)`` in pixels.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_unit_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8/uint16/float ``[H, W]`` or ``[H, W, C]`` -> float32 ``[C, H, W]`` in [0, 1]."""
    full = 255.0 if arr.dtype == np.uint8 else 65535.0 if arr.dtype == np.uint16 else 1.0
    t = torch.from_numpy(np.ascontiguousarray(arr)).float()
    if full != 1.0:
        t = t / full
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


class ImageAugment:
    """Random resized crop + horizontal flip + channels + normalisation of a cached 2D image (see the module).

    Args:
        size: output ``(H, W)``.
        scale: crop area fraction range.
        ratio: crop aspect ratio range (w / h).
        interpolation: ``bicubic`` or ``bilinear`` (antialiased, as PIL).
        hflip: probability of a horizontal flip.
        in_chans: output channels (a grey image is replicated; a colour one averaged for 1 channel).
        mean: subtracted from every channel (after scaling to [0, 1]).
        std: divides every channel.
        train: False: no randomness, the centre square resized (previews).
    """

    def __init__(
        self,
        size: Sequence[int],
        *,
        scale: Sequence[float] = (0.5, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        interpolation: str = "bicubic",
        hflip: float = 0.5,
        in_chans: int = 3,
        mean: float = 0.0,
        std: float = 1.0,
        train: bool = True,
    ) -> None:
        if interpolation not in _INTERPOLATION:
            raise ConfigError(f"interpolation: must be one of {', '.join(_INTERPOLATION)} (got {interpolation!r})")
        if in_chans not in (1, 3):
            raise ConfigError(f"in_chans: must be 1 or 3 (got {in_chans})")
        self.size = (int(size[0]), int(size[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.mode = _INTERPOLATION[interpolation]
        self.hflip = float(hflip)
        self.in_chans = in_chans
        self.mean = float(mean)
        self.std = float(std)
        self.train = train
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (called by the training loop per sample)."""
        self.rng = np.random.default_rng(seed)

    def _box(self, h: int, w: int) -> tuple[int, int, int, int]:
        if self.train:
            return random_resized_crop_box(self.rng, h, w, self.scale, self.ratio)
        side = min(h, w)
        return (h - side) // 2, (w - side) // 2, side, side

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """``[H, W]`` or ``[H, W, 3]`` (uint8, uint16 or float in [0, 1]) -> float32 ``[in_chans, *size]``."""
        top, left, h, w = self._box(image.shape[0], image.shape[1])
        crop = _to_unit_tensor(image[top : top + h, left : left + w])
        out = F.interpolate(crop[None], size=self.size, mode=self.mode, align_corners=False, antialias=True)[0]
        out = out.clamp_(0.0, 1.0)
        if self.train and self.hflip > 0 and self.rng.random() < self.hflip:
            out = out.flip(-1)
        if out.shape[0] != self.in_chans:
            # grey -> replicated (the released thorax weights take R = G = B); colour -> mean for one channel
            out = out.expand(self.in_chans, -1, -1) if out.shape[0] == 1 else out.mean(0, keepdim=True)
        return ((out - self.mean) / self.std).contiguous()


class VolumeAugment:
    """Uni4Eye's 3D augmentation and z-score of a cached ``[rows, columns, slices]`` volume (see the module).

    Args:
        flip: probability of a flip, per axis.
        noise_prob: probability of additive Gaussian noise.
        noise_var: range of the noise variance, in 8-bit grey levels.
        train: False: no flips or noise (previews); the zero voxels still get the seeded N(0, 1) fill.
    """

    def __init__(
        self,
        *,
        flip: float = 0.5,
        noise_prob: float = 0.2,
        noise_var: Sequence[float] = (0.0, 5.0),
        train: bool = True,
    ) -> None:
        self.flip = float(flip)
        self.noise_prob = float(noise_prob)
        self.noise_var = (float(noise_var[0]), float(noise_var[1]))
        self.train = train
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (called by the training loop per sample)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, volume: np.ndarray) -> torch.Tensor:
        """uint8/uint16 ``[R, C, S]`` -> float32 ``[1, R, C, S]``, z-scored over the non-zero voxels."""
        full = 255.0 if volume.dtype == np.uint8 else 65535.0 if volume.dtype == np.uint16 else 1.0
        vol = volume.astype(np.float32) * np.float32(255.0 / full)  # 8-bit grey levels, as the successor's NIfTIs
        if self.train:
            for axis in range(3):
                if self.rng.random() < self.flip:
                    vol = np.flip(vol, axis)
        inside = vol > 0
        if self.train and self.rng.random() < self.noise_prob:
            sd = math.sqrt(self.rng.uniform(*self.noise_var))
            vol = vol + self.rng.normal(0.0, sd, vol.shape).astype(np.float32)
        values = vol[inside]
        mean = float(values.mean()) if values.size else 0.0
        std = float(values.std()) if values.size else 1.0
        out = (vol - np.float32(mean)) / np.float32(std if std > 1e-6 else 1.0)
        fill = ~inside
        out[fill] = self.rng.standard_normal(int(fill.sum())).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))[None]


def stack_images(batch: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Collate of 2D MAE: ``{"image": [B, C, H, W]}`` (paths and indices are left out of the batch)."""
    return {"image": torch.stack([item["image"] for item in batch])}


def unwrap_batch(batch: Sequence[Any]) -> Any:
    """Collate of :class:`MixedBatches` (loader batch size 1): the item is already a whole batch."""
    if len(batch) != 1:
        raise ValueError(f"MixedBatches items are whole batches: the loader's batch_size must be 1, got {len(batch)}")
    return batch[0]


class MixedBatches:
    """Uni4Eye's training set: item ``k`` is a whole batch of 2D images or of 3D volumes, never both.

    Why items are batches: the training loop's sampler yields ``(index, seed)`` per item and resumes by skipping
    items, and DDP needs every rank to run the same dimensionality at the same step (otherwise the 2D and 3D
    parameters would be reduced on some ranks only). So the loop runs with batch size 1 and no shuffling
    (:func:`unwrap_batch` collates), and this dataset owns the order: for epoch ``e``,

    * the step kinds are :func:`~medvit.pretrain.uni4eye.interleave_schedule` of the 2D and 3D batch counts (or of
      ``ratio_2d``), seeded by ``(seed, e)``: 2D and 3D steps interleave in proportion throughout the epoch;
    * each kind's members come from a permutation of its inputs seeded by ``(seed, e, kind)`` (more permutations
      are appended when a ratio asks for more steps of a kind than one pass gives);
    * item ``k`` is step ``s = k // world`` for rank ``r = k % world`` (the sampler gives rank ``r`` the items
      ``r, r + world, ...`` without shuffling), and takes the ``r``-th block of ``batch`` members of that step.

    So an item is a function of ``(seed, epoch, k)`` and its per-sample seed alone: a resumed run rebuilds the same
    batches. The loop tells the epoch through the task's ``on_epoch_start`` (:meth:`set_epoch`), before it starts
    the epoch's loader workers.

    Args:
        images: 2D dataset (items ``{"image": [C, H, W]}``, with ``reseed``) or None.
        volumes: 3D dataset (items ``{"image": [1, R, C, S]}``, with ``reseed``) or None.
        batch_2d: images per 2D step and rank.
        batch_3d: volumes per 3D step and rank.
        world: processes.
        seed: run seed.
        ratio_2d: share of 2D steps instead of the data's share.

    Raises:
        DataError: neither kind fills one batch on every rank.
        ConfigError: ``ratio_2d`` asks for a kind without data.
    """

    def __init__(
        self,
        images: Any,
        volumes: Any,
        *,
        batch_2d: int,
        batch_3d: int,
        world: int = 1,
        seed: int = 0,
        ratio_2d: float | None = None,
    ) -> None:
        self.sets = {2: images, 3: volumes}
        self.batch = {2: int(batch_2d), 3: int(batch_3d)}
        self.world = int(world)
        self.seed = int(seed)
        self.ratio_2d = ratio_2d
        self.sizes = {k: len(ds) if ds is not None else 0 for k, ds in self.sets.items()}
        self.batches = {k: self.sizes[k] // (self.batch[k] * self.world) for k in (2, 3)}
        self._check()
        self.steps_per_epoch = self.batches[2] + self.batches[3]
        self.epoch = -1
        self._item_seed = 0
        self.set_epoch(0)

    def _check(self) -> None:
        for k in (2, 3):
            if self.sizes[k] and not self.batches[k]:
                raise DataError(
                    f"{self.sizes[k]} usable {k}D input(s) are fewer than one {k}D batch ({self.batch[k]} x "
                    f"{self.world} process(es)); lower --batch-size (2D) or data.batch_size_3d (3D)"
                )
        if not self.batches[2] + self.batches[3]:
            raise DataError("no usable 2D image or 3D volume")
        if self.ratio_2d is not None:
            from medvit.pretrain.uni4eye import interleave_schedule

            try:
                interleave_schedule(self.batches[2], self.batches[3], ratio=self.ratio_2d)
            except ValueError as err:
                raise ConfigError(f"data.ratio_2d: {err}") from None

    def set_epoch(self, epoch: int) -> None:
        """Build epoch ``epoch``'s step kinds and member orders (no-op when already built)."""
        from medvit.pretrain.uni4eye import interleave_schedule

        if epoch == self.epoch:
            return
        kinds = interleave_schedule(
            self.batches[2], self.batches[3], ratio=self.ratio_2d, seed=self.seed * 1_000_003 + epoch
        )
        seen = {2: 0, 3: 0}
        slots = []
        for kind in kinds:
            slots.append(seen[kind])
            seen[kind] += 1
        orders: dict[int, np.ndarray] = {}
        for k in (2, 3):
            need = seen[k] * self.batch[k] * self.world
            parts = [np.random.default_rng([self.seed, epoch, k, c]).permutation(self.sizes[k])
                     for c in range(-(-need // self.sizes[k]) if need else 0)]  # fmt: skip
            orders[k] = np.concatenate(parts)[:need] if parts else np.zeros(0, dtype=np.int64)
        self.kinds, self.slots, self.orders, self.epoch = kinds, slots, orders, epoch

    def kind_of(self, index: int) -> int:
        """2 or 3: the dimensionality of item ``index`` in the current epoch."""
        return self.kinds[index // self.world]

    def __len__(self) -> int:
        return self.steps_per_epoch * self.world

    def reseed(self, seed: int) -> None:
        """The item's seed: forwarded to the member datasets' transforms before each member is read."""
        self._item_seed = int(seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        step, rank = divmod(int(index), self.world)
        kind = self.kinds[step]
        b = self.batch[kind]
        start = (self.slots[step] * self.world + rank) * b
        members = self.orders[kind][start : start + b]
        ds = self.sets[kind]
        images = []
        for j, m in enumerate(members):
            ds.reseed(int(np.random.SeedSequence([self._item_seed, j]).generate_state(1, np.uint64)[0]))
            images.append(ds[int(m)]["image"])
        return {"image": torch.stack(images), "dims": kind, "members": torch.as_tensor(members, dtype=torch.long)}
