"""Per-modality transform pipelines built from MONAI dictionary transforms and albumentations.

The builders return plain ``monai.transforms.Compose`` / ``albumentations.Compose`` objects, so they can be
extended, printed and seeded like any MONAI/albumentations pipeline. Nothing here reimplements a transform the
libraries already have; the few small transforms defined here adapt our readers' output to MONAI
(:class:`LoadVolumed`, ``_ChannelFirst2Dd``) or avoid a measured defect (``_Resize2Dd``).

CT recipe as in UNETR (Hatamizadeh et al., WACV 2022; MONAI research-contributions ``UNETR/BTCV``) and
Hi-End-MAE (Tang et al., 2025; github.com/FengheTan9/Hi-End-MAE, ``dataloader/``, ``downstream/utils/data_utils.py``):
``EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd(1.5 mm; bilinear image, nearest label) ->
ScaleIntensityRanged(HU -175..250 -> 0..1, clip) -> CropForegroundd`` (deterministic, cacheable: see
:mod:`medvit.shared.data.cache`), then ``SpatialPadd(roi) -> RandCropByPosNegLabeld(roi)`` and the augmentations
``RandFlipd x3 -> RandRotate90d -> RandScaleIntensityd -> RandShiftIntensityd`` (random, every epoch).

MONAI features used (written and tested against MONAI 1.6.1): ``MetaTensor`` carrying the affine;
``Orientationd(labels=...)`` passed explicitly, because MONAI 1.6 warns that the default is changing to the
meta-tensor's ``space``; ``CropForegroundd(allow_smaller=True, start_coord_key=None, end_coord_key=None)``
(``None`` keeps coordinate arrays out of the output dict, and so out of the cache); ``EnsureTyped``;
``RandCropByPosNegLabeld`` with ``image_key``/``image_threshold``; ``Compose.set_random_state``.

Random transforms keep their own ``numpy.random.RandomState``; the training loop reseeds them per sample through
the dataset's ``reseed`` (:func:`medvit.shared.data.augment.reseed`), so crops replay exactly after a resume and
DataLoader workers never draw the same crops.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from medvit.shared.data.io import MAX_VOXELS, ImageMeta, ReadError, affine_problem, read_volume

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# nibabel's RAS+ axis labels; our readers' affines follow this convention (io.py).
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def volume_to_metatensor(array: np.ndarray, meta: ImageMeta) -> MetaTensor:
    """Wrap a reader's volume as a MONAI ``MetaTensor``, as ``monai.transforms.LoadImage`` would return it.

    The channel axis is not added here; ``EnsureChannelFirstd`` (first step of :func:`ct_preprocess`) adds it from
    the ``original_channel_dim`` metadata.

    Args:
        array: ``[X, Y, Z]`` or ``[X, Y, Z, C]`` volume from :func:`medvit.shared.data.io.read_volume`.
        meta: Its metadata; ``meta.affine`` (identity if ``None``) becomes the tensor's affine.

    Returns:
        float32 MetaTensor of the same shape with ``affine``, ``filename_or_obj``, ``original_channel_dim``
        (``"no_channel"`` or ``-1``), ``spatial_shape`` and ``original_affine`` set.

    Raises:
        ReadError: An affine that cannot be oriented or resampled (NaN/Inf, a zero voxel spacing, singular).
    """
    if array.ndim not in (3, 4):
        raise ValueError(f"{meta.path}: expected a [X, Y, Z] or [X, Y, Z, C] volume, got shape {tuple(array.shape)}")
    affine = np.asarray(meta.affine if meta.affine is not None else np.eye(4), dtype=np.float64)
    problem = affine_problem(affine)
    if problem is not None:  # MONAI's Orientation/Spacing would fail later without naming the file or the cause
        raise ReadError(f"{meta.path}: {problem}")
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    md = {
        "filename_or_obj": meta.path,
        "original_channel_dim": "no_channel" if array.ndim == 3 else -1,
        "spatial_shape": np.asarray(array.shape[:3]),
        "original_affine": affine.copy(),
        "space": "RAS",
    }
    return MetaTensor(data, affine=torch.from_numpy(affine.copy()), meta=md)


class LoadVolumed(MapTransform):
    """Read the paths under ``keys`` with :func:`read_volume` into MetaTensors (values that are not paths pass).

    Our reader instead of ``monai.transforms.LoadImaged`` because it reads DICOM series without ITK and raises
    :class:`~medvit.shared.data.io.ReadError` with the file name for every kind of bad input.
    """

    def __init__(
        self,
        keys: KeysCollection,
        *,
        ndim: int | None = 3,
        max_voxels: int = MAX_VOXELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ndim = ndim
        self.max_voxels = max_voxels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], str | bytes) or hasattr(d[key], "__fspath__"):
                arr, meta = read_volume(d[key], ndim=self.ndim, max_voxels=self.max_voxels)
                d[key] = volume_to_metatensor(arr, meta)
        return d


def _keys(keys: Sequence[str] | str) -> tuple[str, ...]:
    return (keys,) if isinstance(keys, str) else tuple(keys)


def ct_preprocess(
    spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
    hu_window: tuple[float, float] | None = (-175.0, 250.0),
    orientation: str | None = "RAS",
    crop_foreground: bool = True,
    keys: Sequence[str] | str = ("image",),
    label_key: str | None = None,
    *,
    load: bool = False,
    margin: int = 0,
) -> Compose:
    """Deterministic CT preprocessing: channel first, reorient, resample, HU window to [0, 1], foreground crop.

    Input: a dict whose ``keys`` (and ``label_key``) hold MetaTensors from :func:`volume_to_metatensor` (or paths,
    with ``load=True``). Output: the same dict with ``[1, X', Y', Z']`` float32 MetaTensors whose affines reflect
    the new orientation and spacing.

    Args:
        spacing: Target voxel size in mm (``Spacingd``: bilinear for images, nearest for the label); ``None`` keeps
            the native grid.
        hu_window: ``(a_min, a_max)`` HU window mapped linearly to [0, 1] and clipped; ``None`` leaves values.
        orientation: Target axis codes for ``Orientationd``; ``None`` keeps the stored orientation.
        crop_foreground: Crop every key to the bounding box of ``image > 0`` (after windowing: tissue above
            ``a_min``), which removes the air around the body.
        keys: Image keys (intensity transforms apply to these only).
        label_key: Optional label-map key (spatial transforms only, nearest-neighbour resampling).
        load: Prepend :class:`LoadVolumed` so the dict may hold file paths.
        margin: Voxels kept around the foreground box.

    Returns:
        A ``monai.transforms.Compose``.
    """
    img_keys = _keys(keys)
    all_keys = img_keys + ((label_key,) if label_key else ())
    steps: list[Any] = []
    if load:
        steps.append(LoadVolumed(all_keys))
    steps.append(EnsureChannelFirstd(all_keys))
    if orientation:
        steps.append(Orientationd(all_keys, axcodes=orientation, labels=_RAS_LABELS))
    if spacing is not None:
        modes = ["bilinear"] * len(img_keys) + (["nearest"] if label_key else [])
        steps.append(Spacingd(all_keys, pixdim=tuple(float(s) for s in spacing), mode=modes))
    if hu_window is not None:
        lo, hi = (float(v) for v in hu_window)
        steps.append(ScaleIntensityRanged(img_keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    if crop_foreground:
        steps.append(
            CropForegroundd(
                all_keys,
                source_key=img_keys[0],
                margin=margin,
                allow_smaller=True,
                start_coord_key=None,
                end_coord_key=None,
            )
        )
    steps.append(EnsureTyped(all_keys, dtype=torch.float32))
    return Compose(steps)


def ct_random_crops(
    roi: Sequence[int] = (96, 96, 96),
    num_samples: int = 4,
    pos: float = 1.0,
    neg: float = 1.0,
    label_key: str | None = None,
    keys: Sequence[str] | str = ("image",),
    *,
    image_threshold: float = 0.0,
) -> Compose:
    """Pad to ``roi`` then draw ``num_samples`` crops of exactly ``roi`` centred on foreground/background voxels.

    With a label map, ``pos``:``neg`` balances crops centred on label > 0 and label == 0 voxels inside the body
    (``image > image_threshold``), as in UNETR/Hi-End-MAE fine-tuning. Without one, the image is its own label
    (Hi-End-MAE pre-training, ``label_key="image"``): "foreground" is every voxel > 0, so with windowed CT the
    ``pos`` crops centre on tissue and the ``neg`` crops on air or padding.

    Args:
        roi: Crop size ``(X, Y, Z)``; volumes smaller than it are zero-padded first (``SpatialPadd``).
        num_samples: Crops per volume; the transform returns a list of ``num_samples`` dicts.
        pos: Relative weight of foreground-centred crops.
        neg: Relative weight of background-centred crops.
        label_key: Label-map key, or ``None`` to use the first image key as the label.
        keys: Image keys cropped together with the label.
        image_threshold: With a label, voxels at or below this image value are not crop centres.

    Returns:
        A ``monai.transforms.Compose`` that maps a dict to a list of dicts with ``[C, *roi]`` tensors.
    """
    img_keys = _keys(keys)
    roi = tuple(int(r) for r in roi)
    all_keys = img_keys + ((label_key,) if label_key else ())
    crop = RandCropByPosNegLabeld(
        all_keys,
        label_key=label_key or img_keys[0],
        spatial_size=roi,
        pos=pos,
        neg=neg,
        num_samples=num_samples,
        # Without a label, image_key must stay None: MONAI counts background only where image > threshold,
        # which with label == image leaves no background at all (and warns on every call).
        image_key=img_keys[0] if label_key else None,
        image_threshold=image_threshold,
    )
    return Compose([SpatialPadd(all_keys, spatial_size=roi, mode="constant"), crop])


def ct_augment(
    prob_flip: float = 0.2,
    prob_rot90: float = 0.2,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
    prob_intensity: float = 0.1,
    keys: Sequence[str] | str = ("image",),
    label_key: str | None = None,
) -> Compose:
    """Random flips on each axis, 90° rotations in the axial plane, intensity scale and shift (UNETR recipe).

    Args:
        prob_flip: Probability of a flip, drawn independently for each of the 3 axes.
        prob_rot90: Probability of a rotation by k x 90° (k in 1..3) in the (X, Y) plane.
        intensity_scale: ``RandScaleIntensityd`` factor range ``x * (1 + U(-s, s))``.
        intensity_shift: ``RandShiftIntensityd`` offset range ``x + U(-o, o)``.
        prob_intensity: Probability of each intensity transform.
        keys: Image keys (spatial and intensity transforms).
        label_key: Label key (spatial transforms only).

    Returns:
        A ``monai.transforms.Compose``; apply it to each crop (MONAI maps it over a list of dicts).
    """
    img_keys = _keys(keys)
    all_keys = img_keys + ((label_key,) if label_key else ())
    steps: list[Any] = [RandFlipd(all_keys, prob=prob_flip, spatial_axis=axis) for axis in range(3)]
    steps.append(RandRotate90d(all_keys, prob=prob_rot90, max_k=3))
    if intensity_scale > 0:
        steps.append(RandScaleIntensityd(img_keys, factors=intensity_scale, prob=prob_intensity))
    if intensity_shift > 0:
        steps.append(RandShiftIntensityd(img_keys, offsets=intensity_shift, prob=prob_intensity))
    return Compose(steps)


class _ChannelFirst2Dd(MapTransform):
    """``[H, W]`` -> ``[1, H, W]`` and ``[H, W, C]`` -> ``[C, H, W]``.

    ``EnsureChannelFirstd`` takes one fixed ``channel_dim`` for all inputs; :func:`read_image` returns 2D arrays
    for gray and 3D arrays for colour images, so the rule depends on each array's rank.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(np.ascontiguousarray(d[key]) if isinstance(d[key], np.ndarray) else d[key])
            if x.ndim == 2:
                x = x[None]
            elif x.ndim == 3:
                x = x.permute(2, 0, 1).contiguous()
            else:
                raise ValueError(f"key {key!r}: expected an [H, W] or [H, W, C] image, got shape {tuple(x.shape)}")
            d[key] = x
        return d


class _Resize2Dd(MapTransform):
    """Bilinear resize of ``[C, H, W]`` tensors with torch's antialiasing (``F.interpolate(antialias=True)``).

    Not ``monai.transforms.Resized(anti_aliasing=True)``: its Gaussian pre-filter zero-pads, which darkens the
    border (measured with MONAI 1.6.1: a constant 128 image resized 30x40 -> 16x16 gets 109 in the corner).
    """

    def __init__(self, keys: KeysCollection, size: tuple[int, int]) -> None:
        super().__init__(keys)
        self.size = size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).float()[None]
            if tuple(x.shape[-2:]) != self.size:
                x = torch.nn.functional.interpolate(
                    x, size=self.size, mode="bilinear", align_corners=False, antialias=True
                )
            d[key] = x[0]
        return d


def image2d_preprocess(
    size: int | Sequence[int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    keys: Sequence[str] | str = ("image",),
    crop_pct: float | None = None,
    max_value: float = 255.0,
) -> Compose:
    """Resize (optionally resize-then-centre-crop), scale to [0, 1] and normalise per channel.

    Input: a dict with ``[H, W]`` or ``[H, W, C]`` arrays as :func:`medvit.shared.data.io.read_image` returns them
    (after any :func:`image2d_augment`). Output: float32 ``[C, size, size]`` tensors.

    Args:
        size: Output ``(H, W)`` or one int for a square.
        mean: Per-channel mean after scaling to [0, 1] (one value per channel: use ``(0.5,)`` for gray images).
        std: Per-channel standard deviation.
        keys: Image keys.
        crop_pct: If set, resize to ``size / crop_pct`` then centre-crop ``size`` (timm's eval convention).
        max_value: Value mapped to 1.0 (255 for 8-bit, 65535 for 16-bit images).

    Returns:
        A ``monai.transforms.Compose``.
    """
    img_keys = _keys(keys)
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    steps: list[Any] = [_ChannelFirst2Dd(img_keys)]
    if crop_pct is not None:
        big = (int(round(hw[0] / crop_pct)), int(round(hw[1] / crop_pct)))
        steps += [_Resize2Dd(img_keys, big), CenterSpatialCropd(img_keys, roi_size=hw)]
    else:
        steps += [_Resize2Dd(img_keys, hw)]
    steps += [
        ScaleIntensityRanged(img_keys, a_min=0.0, a_max=float(max_value), b_min=0.0, b_max=1.0, clip=True),
        NormalizeIntensityd(
            img_keys,
            subtrahend=np.asarray(mean, dtype=np.float32),
            divisor=np.asarray(std, dtype=np.float32),
            channel_wise=True,
        ),
        EnsureTyped(img_keys, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]
    return Compose(steps)


def image2d_augment(
    size: int | Sequence[int] = 224,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    vflip: float = 0.0,
    rotate: float = 0.0,
    color_jitter: float = 0.0,
    blur_prob: float = 0.0,
    noise_prob: float = 0.0,
    jpeg_prob: float = 0.0,
    dropout_prob: float = 0.0,
) -> Any:
    """An albumentations pipeline for 2D training images (numpy ``[H, W(, C)]`` uint8 or float32 in, same out).

    Apply it before :func:`image2d_preprocess`. Colour jitter needs 3-channel images; leave it at 0 for gray
    images such as chest X-rays.

    Args:
        size: Output ``(H, W)`` of ``RandomResizedCrop``, or one int for a square.
        scale: Area fraction range of the random crop (MAE/DeiT: ``(0.08, 1)``, fine-tuning CXR: e.g. ``(0.7, 1)``).
        ratio: Aspect-ratio range of the random crop.
        hflip: Horizontal flip probability.
        vflip: Vertical flip probability.
        rotate: Maximum rotation in degrees (``Affine``, applied with probability 0.5 when > 0).
        color_jitter: Brightness/contrast/saturation strength (hue = strength / 4); 0 disables it.
        blur_prob: Probability of a Gaussian blur (sigma 0.5..3 px).
        noise_prob: Probability of Gaussian noise.
        jpeg_prob: Probability of JPEG recompression at quality 30..95.
        dropout_prob: Probability of cutting out 1..4 rectangles (CoarseDropout).

    Returns:
        An ``albumentations.Compose``; call it as ``out = aug(image=img)["image"]``.
    """
    import albumentations as A

    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    steps: list[Any] = [A.RandomResizedCrop(size=hw, scale=scale, ratio=ratio, p=1.0)]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if vflip > 0:
        steps.append(A.VerticalFlip(p=vflip))
    if rotate > 0:
        steps.append(A.Affine(rotate=(-rotate, rotate), p=0.5))
    if color_jitter > 0:
        c = color_jitter
        steps.append(A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 4, 0.5), p=0.8))
    if blur_prob > 0:
        steps.append(A.GaussianBlur(sigma_limit=(0.5, 3.0), p=blur_prob))
    if noise_prob > 0:
        steps.append(A.GaussNoise(std_range=(0.02, 0.1), p=noise_prob))
    if jpeg_prob > 0:
        steps.append(A.ImageCompression(quality_range=(30, 95), p=jpeg_prob))
    if dropout_prob > 0:
        steps.append(
            A.CoarseDropout(
                num_holes_range=(1, 4), hole_height_range=(0.05, 0.2), hole_width_range=(0.05, 0.2), p=dropout_prob
            )
        )
    return A.Compose(steps)
