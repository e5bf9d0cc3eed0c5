"""Synthetic datasets that look like the field's real ones: CT organ segmentation and aligned face crops.

Seeded (numpy ``Generator`` per item, so case ``k`` is the same whatever ``n``), fast (vectorised numpy,
one coordinate grid per case), and written in the formats the readers and apps expect:

* ``synth_ct``: CT volumes in HU (int16 NIfTI) with uint8 organ label maps in the nnU-Net v2 raw layout
  (MIC-DKFZ/nnUNet ``documentation/dataset_format.md``): ``imagesTr/case_XXX_0000.nii.gz``,
  ``labelsTr/case_XXX.nii.gz``, ``dataset.json`` with the v2 keys plus the Medical Segmentation Decathlon
  ``training``/``test`` lists (Simpson et al. 2019, arXiv:1902.09063) that MONAI's
  ``load_decathlon_datalist`` reads.
* ``synth_faces``: 112x112 RGB face-like crops aligned to the ArcFace five-point template
  (deepinsight/insightface ``python-package/insightface/utils/face_align.py``), in identity folders, with
  per-image degradations of known strength, ground-truth landmarks and an LFW-style ``pairs.txt``
  (Huang et al. 2007, "Labeled Faces in the Wild").

Every file is written atomically (temp file in the same folder + ``os.replace``); NIfTI files are gzipped
with ``mtime=0`` so a seed reproduces them byte for byte.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.errors import ConfigError
from medvit.shared.files import write_bytes_atomic

logger = logging.getLogger(__name__)

_PARALLEL_FACES = 1000  # images from which synth_faces draws identities in a process pool (start-up ~1 s)

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each written item."""

# ----------------------------------------------------------------------------------------------------------
# shared helpers


@dataclass(frozen=True)
class SynthSummary:
    """What a generator wrote.

    Attributes:
        kind: Generator name (``"ct"``, ``"faces"``).
        root: Output folder.
        counts: Items per part, e.g. ``{"imagesTr": 8, "labelsTr": 8}`` or ``{"identities": 8, "images": 48}``.
        params: The generator's arguments (seed, shape, spacing, ...), JSON-serialisable.
        files: Paths written, relative to ``root``, in writing order.
        seconds: Wall time of the call.
    """

    kind: str
    root: Path
    counts: dict[str, int]
    params: dict[str, Any]
    files: tuple[str, ...] = field(repr=False)
    seconds: float


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent stream per (seed, key): item ``k`` does not depend on how many items come before it."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data, fsync=False)  # seeded data: cheaper to regenerate than to fsync every face


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


# ----------------------------------------------------------------------------------------------------------
# CT


CT_LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_left": 3,
    "kidney_right": 4,
    "gallbladder": 5,
}
"""Fixed label set written to every synthetic ``dataset.json`` (nnU-Net v2 ``labels``: name -> value)."""

# Mean HU per organ label. Deliberately spread by >= 40 HU (noise sd 12 HU) so that every class is learnable
# from intensity as well as position; real non-contrast kidneys look alike, here left and right differ on purpose.
CT_ORGAN_HU: dict[int, float] = {1: 60.0, 2: 100.0, 3: 140.0, 4: 180.0, 5: 0.0}

_HU_AIR, _HU_FAT, _HU_SOFT, _HU_LUNG, _HU_BONE, _HU_DISC = -1000.0, -100.0, 30.0, -850.0, 700.0, 80.0
_NOISE_SD_HU = 12.0


@dataclass(frozen=True)
class _Blob:
    """An ellipsoid in normalised body coordinates (u: patient right+, v: anterior+, w: superior+)."""

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]


# Organ templates; a case jitters centre, axes and orientation. The liver is two lobes (right + left).
_ORGAN_BLOBS: dict[int, tuple[_Blob, ...]] = {
    1: (_Blob((0.40, 0.02, 0.05), (0.30, 0.36, 0.42)), _Blob((0.02, 0.22, 0.12), (0.28, 0.14, 0.22))),
    2: (_Blob((-0.52, -0.18, 0.12), (0.16, 0.24, 0.28)),),
    3: (_Blob((-0.34, -0.32, -0.35), (0.15, 0.17, 0.30)),),
    4: (_Blob((0.34, -0.32, -0.42), (0.15, 0.17, 0.30)),),
    5: (_Blob((0.25, 0.30, -0.25), (0.10, 0.11, 0.16)),),
}
_LUNG_BLOBS = (_Blob((0.40, -0.02, 0.85), (0.28, 0.42, 0.60)), _Blob((-0.40, -0.02, 0.85), (0.28, 0.42, 0.60)))


def _rotation(rng: np.random.Generator, sd_deg: float) -> np.ndarray:
    """Random rotation as Rz @ Ry @ Rx with normally distributed angles (degrees sd ``sd_deg``). Returns [3, 3]."""
    ax, ay, az = np.deg2rad(rng.normal(0.0, sd_deg, size=3))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class _Grid:
    """Normalised body coordinates of every voxel of one case, and the map back to voxel indices."""

    u: np.ndarray  # [X, Y, Z] patient right +
    v: np.ndarray  # [X, Y, Z] anterior +
    w: np.ndarray  # [X, Y, Z] superior +
    inv: np.ndarray  # [3, 3] normalised offset -> voxel offset
    centre_voxel: np.ndarray  # [3]
    shape: tuple[int, int, int]

    def box(self, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice]:
        """Voxel bounding box of the sphere ``|n - centre| <= radius`` in normalised coordinates."""
        corners = np.array(list(itertools.product(*[(c - radius, c + radius) for c in centre])))  # [8, 3]
        vox = corners @ self.inv.T + self.centre_voxel
        lo = np.clip(np.floor(vox.min(axis=0)).astype(int), 0, self.shape)
        hi = np.clip(np.ceil(vox.max(axis=0)).astype(int) + 1, 0, self.shape)
        return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _paint_blob(grid: _Grid, blob: _Blob, rng: np.random.Generator, out: np.ndarray) -> None:
    """OR into ``out`` [X, Y, Z] a smooth, slightly bumpy, randomly placed and oriented ellipsoid.

    Only the blob's bounding box is evaluated: a full-grid pass per organ dominated the generator's time.
    """
    centre = np.asarray(blob.centre) + rng.normal(0.0, 0.03, size=3)
    axes = np.asarray(blob.axes) * rng.uniform(0.85, 1.15, size=3)
    rot = _rotation(rng, 8.0)
    freq = rng.uniform(1.5, 3.0, size=3)
    phase = rng.uniform(0.0, 2 * np.pi, size=3)
    bump_amp = 0.12
    box = grid.box(centre, float(axes.max()) * (1.0 + bump_amp))
    du = grid.u[box] - np.float32(centre[0])
    dv = grid.v[box] - np.float32(centre[1])
    dw = grid.w[box] - np.float32(centre[2])
    if du.size == 0:
        return
    # local coordinates q = R^T d, scaled by the semi-axes
    q = [(du * rot[0, i] + dv * rot[1, i] + dw * rot[2, i]) / np.float32(axes[i]) for i in range(3)]
    r2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2]
    # low-frequency surface bumps keep the blob smooth but not a perfect quadric
    bump = np.sin(freq[0] * q[0] + phase[0]) * np.sin(freq[1] * q[1] + phase[1]) * np.cos(freq[2] * q[2] + phase[2])
    out[box] |= r2 <= (1.0 + bump_amp * bump) ** 2


def _ct_affine(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float], oblique: bool
) -> np.ndarray:
    """Voxel-to-world (RAS+ mm) affine [4, 4]: LPS voxel axes as DICOM-derived files have, a table offset, an
    optional tilt of a few degrees."""
    direction = np.diag([-spacing[0], -spacing[1], spacing[2]])
    if oblique:
        angles = rng.uniform(2.0, 6.0, size=3) * rng.choice([-1.0, 1.0], size=3)
        ax, ay, az = np.deg2rad(angles)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        direction = rz @ ry @ rx @ direction
    centre_world = rng.uniform([-40.0, -60.0, -700.0], [40.0, 20.0, -150.0])
    centre_voxel = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = direction
    affine[:3, 3] = centre_world - direction @ centre_voxel
    return affine


def _ct_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    n_organs: tuple[int, int],
    oblique: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """One synthetic abdomen.

    Returns:
        ``(hu, label, affine, present)``: hu int16 [X, Y, Z], label uint8 [X, Y, Z], affine [4, 4], the organ
        labels present in the label map (sorted; bone can hide a drawn organ completely in tiny volumes).
    """
    affine = _ct_affine(rng, shape, spacing, oblique)
    grid, z_mm = _ct_grid(affine[:3, :3], shape, spacing)
    hu = np.full(shape, _HU_AIR, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    q_body, fat, inner = _paint_trunk(grid, rng, hu)
    _paint_organs(grid, rng, n_organs, inner, hu, label)
    _paint_bone(grid, rng, z_mm, q_body, fat, hu, label)
    hu_int = _scanner_blur_and_noise(rng, hu)
    present = tuple(int(x) for x in np.unique(label) if x != 0)
    return hu_int, label, affine, present


def _ct_grid(
    direction: np.ndarray, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[_Grid, np.ndarray]:
    """The case's normalised body coordinates and the superior offset in mm (``z_mm``) of every voxel.

    Anatomy is defined in world space, so an oblique grid tilts it.
    """
    centre_voxel = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    idx = [np.arange(n, dtype=np.float32) - np.float32(c) for n, c in zip(shape, centre_voxel, strict=True)]
    i, j, k = idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]
    # world offsets from the volume centre (mm)
    d = [
        np.float32(direction[r, 0]) * i + np.float32(direction[r, 1]) * j + np.float32(direction[r, 2]) * k
        for r in range(3)
    ]
    half = np.asarray(shape) * np.asarray(spacing) / 2.0
    s_xy = min(half[0], half[1])  # one in-plane scale keeps round things round
    scale = np.array([s_xy, s_xy, half[2]])
    u, v, w = d[0] / np.float32(scale[0]), d[1] / np.float32(scale[1]), d[2] / np.float32(scale[2])
    return _Grid(u, v, w, np.linalg.inv(direction) @ np.diag(scale), centre_voxel, shape), d[2]


def _paint_trunk(grid: _Grid, rng: np.random.Generator, hu: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Body outline, subcutaneous fat ring, soft-tissue interior and the lung bases; returns the body's normalised
    radius ``q_body``, the fat thickness and the interior mask."""
    u, v, w = grid.u, grid.v, grid.w
    body_a, body_b = rng.uniform(0.78, 0.90), rng.uniform(0.55, 0.68)
    taper = 1.0 - 0.04 * w  # slightly wider towards the pelvis
    q_body = np.sqrt((u / (body_a * taper)) ** 2 + (v / (body_b * taper)) ** 2)
    fat = rng.uniform(0.05, 0.10)
    body = q_body <= 1.0
    inner = q_body <= 1.0 - fat
    hu[body] = _HU_FAT
    hu[inner] = _HU_SOFT

    lungs = np.zeros(grid.shape, dtype=bool)
    for blob in _LUNG_BLOBS:
        _paint_blob(grid, blob, rng, lungs)
    hu[lungs & inner] = _HU_LUNG
    return q_body, fat, inner


def _paint_organs(
    grid: _Grid,
    rng: np.random.Generator,
    n_organs: tuple[int, int],
    inner: np.ndarray,
    hu: np.ndarray,
    label: np.ndarray,
) -> None:
    """``n_organs`` organs drawn from the label set, inside the body interior."""
    lo, hi = n_organs
    n_case = int(rng.integers(lo, hi + 1))
    organs = tuple(sorted(int(x) for x in rng.choice(np.arange(1, 6), size=n_case, replace=False)))
    for lab in organs:  # ascending order paints the gallbladder over the liver's underside, as in real anatomy
        mask = np.zeros(grid.shape, dtype=bool)
        for blob in _ORGAN_BLOBS[lab]:
            _paint_blob(grid, blob, rng, mask)
        mask &= inner
        hu[mask] = CT_ORGAN_HU[lab]
        label[mask] = lab


def _paint_bone(
    grid: _Grid,
    rng: np.random.Generator,
    z_mm: np.ndarray,
    q_body: np.ndarray,
    fat: float,
    hu: np.ndarray,
    label: np.ndarray,
) -> None:
    """Spine (vertebral bodies with intervertebral discs every ~30 mm) and ribs, over any organ."""
    u, v, w = grid.u, grid.v, grid.w
    spine_v, spine_r = rng.uniform(-0.50, -0.42), rng.uniform(0.09, 0.12)
    spine = (u**2 + (v - np.float32(spine_v)) ** 2) <= spine_r**2
    period = rng.uniform(26.0, 34.0)
    disc = np.mod(z_mm + np.float32(rng.uniform(0, period)), np.float32(period)) < np.float32(0.2 * period)
    # ribs: thin arcs just inside the fat, periodic and tilted along z, upper part of the volume only
    rib_period = rng.uniform(20.0, 28.0)
    rib_shell = (q_body > 1.0 - fat - 0.07) & (q_body < 1.0 - fat - 0.025) & (v > np.float32(spine_v))
    rib_wave = np.cos(2 * np.pi * (z_mm + 12.0 * v) / np.float32(rib_period) + np.float32(rng.uniform(0, 2 * np.pi)))
    ribs = rib_shell & (rib_wave > 0.55) & (w > -0.35)
    bone = spine | ribs
    hu[bone] = _HU_BONE
    hu[spine & disc] = _HU_DISC
    label[bone] = 0


def _scanner_blur_and_noise(rng: np.random.Generator, hu: np.ndarray) -> np.ndarray:
    """Partial-volume blur of half a voxel, then quantum noise, as a scanner would; int16 HU.

    The anatomy scales with the field of view, so a blur fixed in mm would swallow the small organs of small test
    volumes.
    """
    from scipy.ndimage import gaussian_filter

    hu = gaussian_filter(hu, sigma=0.5, output=np.float32, mode="nearest")
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(_NOISE_SD_HU)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _nifti_gz_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Serialise ``array`` with ``affine`` as a gzipped NIfTI-1 (qform = sform = scanner, mm units)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    # mtime=0 and no file name in the gzip header: same seed -> same bytes
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _check_ct_args(
    n: int, n_test: int, shape: Sequence[int], spacing: Sequence[float], n_organs: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[int, int]]:
    if n < 1 or n_test < 0:
        raise ConfigError(f"synth ct: need n >= 1 and n_test >= 0, got n={n}, n_test={n_test}")
    if len(shape) != 3 or any(int(s) < 16 for s in shape):
        raise ConfigError(f"synth ct: shape must be 3 sizes >= 16, got {tuple(shape)}")
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ConfigError(f"synth ct: spacing must be 3 positive mm values, got {tuple(spacing)}")
    if len(n_organs) != 2 or not 1 <= int(n_organs[0]) <= int(n_organs[1]) <= 5:
        raise ConfigError(f"synth ct: n_organs must be (lo, hi) with 1 <= lo <= hi <= 5, got {tuple(n_organs)}")
    return (
        (int(shape[0]), int(shape[1]), int(shape[2])),
        (float(spacing[0]), float(spacing[1]), float(spacing[2])),
        (int(n_organs[0]), int(n_organs[1])),
    )


def synth_ct(
    out: str | os.PathLike[str],
    n: int = 8,
    seed: int = 0,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    n_organs: Sequence[int] = (3, 5),
    oblique: bool = False,
    n_test: int = 0,
    progress: ProgressFn | None = None,
) -> SynthSummary:
    """Write a synthetic abdominal CT segmentation dataset in nnU-Net v2 raw layout.

    Each case is a body ellipse of soft tissue (30 HU) with subcutaneous fat (-100), two lung bases (-850),
    spine and ribs (700, discs 80) and ``n_organs`` smooth organ blobs drawn from the fixed label set
    :data:`CT_LABELS` (means in :data:`CT_ORGAN_HU`), partial-volume blur and 12 HU Gaussian noise, in air
    (-1000). Images are int16 HU, labels uint8 with identical shape and affine. The affine has LPS voxel axes
    (``diag(-sx, -sy, sz)`` in RAS+ world, as DICOM conversions give), an origin offset, and with ``oblique`` a
    rotation of 2-6 degrees about each axis.

    Written files (cases numbered from 0; test cases continue after the training cases)::

        out/imagesTr/case_000_0000.nii.gz   out/labelsTr/case_000.nii.gz   ...
        out/imagesTs/case_008_0000.nii.gz   out/labelsTs/case_008.nii.gz   (n_test > 0)
        out/dataset.json

    ``dataset.json`` holds the nnU-Net v2 keys (``channel_names``, ``labels``, ``numTraining``,
    ``file_ending``) and the MSD-style ``training`` list of ``{"image", "label"}`` (pointing at the real
    ``_0000`` files, relative to ``out``) and ``test`` list, plus ``numTest``.

    Args:
        out: Output folder (created). Existing files of the same names are replaced.
        n: Number of training cases.
        seed: Seed; case ``k`` depends only on ``(seed, k)``.
        shape: Volume size in voxels ``(X, Y, Z)``.
        spacing: Voxel size in mm ``(sx, sy, sz)``.
        n_organs: ``(lo, hi)`` organs per case, drawn uniformly, 1 <= lo <= hi <= 5.
        oblique: Tilt the grid a few degrees against the patient axes.
        n_test: Number of held-out cases written to ``imagesTs/`` with their labels in ``labelsTs/``.
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        A :class:`SynthSummary` with counts ``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``.

    Raises:
        ConfigError: An argument out of range.
    """
    _check_seed(seed)
    shape_t, spacing_t, organs_t = _check_ct_args(n, n_test, shape, spacing, n_organs)
    root = Path(out)
    start = time.perf_counter()
    files: list[str] = []
    training: list[dict[str, str]] = []
    test: list[str] = []
    total = n + n_test
    for case in range(total):
        hu, label, affine, present = _visible_ct_case(_rng(seed, 0, case), shape_t, spacing_t, organs_t, oblique)
        split = "Tr" if case < n else "Ts"
        image_rel, label_rel = _write_ct_case(root, case, split, hu, label, affine)
        files += [image_rel, label_rel]
        if split == "Tr":
            training.append({"image": f"./{image_rel}", "label": f"./{label_rel}"})
        else:
            test.append(f"./{image_rel}")
        logger.debug("synth ct case_%03d: organs %s", case, present)
        if progress is not None:
            progress(case + 1, total)

    _atomic_write_text(
        root / "dataset.json", json.dumps(_ct_dataset_json(seed, n, n_test, training, test), indent=2) + "\n"
    )
    files.append("dataset.json")
    params = {"seed": int(seed), "shape": list(shape_t), "spacing": list(spacing_t), "n_organs": list(organs_t)}
    params.update({"oblique": bool(oblique), "n": n, "n_test": n_test})
    counts = {"imagesTr": n, "labelsTr": n, "imagesTs": n_test, "labelsTs": n_test}
    seconds = time.perf_counter() - start
    logger.info("synth ct: %d training + %d test cases in %s (%.1f s)", n, n_test, root, seconds)
    return SynthSummary("ct", root, counts, params, tuple(files), seconds)


def _write_ct_case(
    root: Path, case: int, split: str, hu: np.ndarray, label: np.ndarray, affine: np.ndarray
) -> tuple[str, str]:
    """Write case ``case`` of ``split`` (``Tr`` / ``Ts``); returns the image and label paths relative to ``root``."""
    name = f"case_{case:03d}"
    image_rel = f"images{split}/{name}_0000.nii.gz"
    label_rel = f"labels{split}/{name}.nii.gz"
    _atomic_write_bytes(root / image_rel, _nifti_gz_bytes(hu, affine))
    _atomic_write_bytes(root / label_rel, _nifti_gz_bytes(label, affine))
    return image_rel, label_rel


def _visible_ct_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    n_organs: tuple[int, int],
    oblique: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """:func:`_ct_case`, redrawn (same stream, so still deterministic) until at least ``n_organs[0]`` organs show."""
    for _ in range(20):
        hu, label, affine, present = _ct_case(rng, shape, spacing, n_organs, oblique)
        if len(present) >= n_organs[0]:
            return hu, label, affine, present
    raise ConfigError(f"synth ct: shape {shape} is too small to show {n_organs[0]} organs; use a larger one")


def _ct_dataset_json(seed: int, n: int, n_test: int, training: list[dict[str, str]], test: list[str]) -> dict:
    """``dataset.json``: the nnU-Net v2 keys plus the MSD-style ``training`` / ``test`` lists."""
    return {
        "name": "medvit-synthetic-ct",
        "description": "Synthetic abdominal CT (HU) with organ labels, generated by medvit.shared.data.synth",
        "reference": f"medvit synth_ct(seed={seed})",
        "licence": "CC0-1.0 (synthetic, no patient data)",
        "tensorImageSize": "3D",
        "channel_names": {"0": "CT"},
        "labels": dict(CT_LABELS),
        "numTraining": n,
        "numTest": n_test,
        "file_ending": ".nii.gz",
        "training": training,
        "test": test,
    }


# ----------------------------------------------------------------------------------------------------------
# faces

ARCFACE_TEMPLATE_112: np.ndarray = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
"""ArcFace 112x112 landmarks (x, y): left eye, right eye, nose tip, left and right mouth corner (image sides)."""

DEGRADATIONS: tuple[str, ...] = ("blur", "noise", "jpeg", "occlusion", "low_light")
"""Degradation family of :func:`synth_faces`; strength 0 is a clean image (written as ``none``)."""

LANDMARK_COLUMNS: tuple[str, ...] = tuple(
    f"{p}_{c}" for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right") for c in ("x", "y")
)

_SS = 4  # supersampling factor of the face drawing: draw at 448 px, area-downsample to 112 for antialiasing

_SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 56, 30], [255, 205, 178]],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [[20, 17, 15], [59, 36, 22], [106, 78, 66], [167, 133, 106], [220, 190, 120], [145, 60, 30], [180, 180, 180]],
    dtype=np.float64,
)
_EYE_COLOURS = np.array([[70, 45, 25], [100, 70, 40], [60, 110, 160], [80, 120, 80], [120, 110, 90]], np.float64)


@dataclass(frozen=True)
class _FaceLook:
    """Coarse appearance shared by several identities: skin tone, face shape, hair, moustache."""

    skin: np.ndarray  # RGB float [3]
    face_axes: tuple[float, float]
    face_cy: float
    hair: np.ndarray  # RGB float [3]
    hair_style: int  # 0 bald, 1 short, 2 fringe, 3 long, 4 curly
    moustache: bool


@dataclass(frozen=True)
class _FaceIdentity:
    """One identity: a shared coarse look plus fine detail that stays fixed across all its images."""

    look: _FaceLook
    landmarks: np.ndarray  # [5, 2] in 112 px coordinates
    eye: np.ndarray  # RGB float [3]
    brow_thickness: int
    lips: np.ndarray
    marks: np.ndarray  # [N, 4]: x, y, radius (112 px), darkness (fraction of the skin colour)


def _face_look(rng: np.random.Generator) -> _FaceLook:
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.92, 1.05) + rng.normal(0, 6, 3)
    return _FaceLook(
        skin=np.clip(skin, 30, 255),
        face_axes=(float(rng.uniform(33.0, 41.0)), float(rng.uniform(45.0, 53.0))),
        face_cy=float(rng.uniform(61.0, 65.0)),
        hair=np.clip(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0, 8, 3), 0, 255),
        hair_style=int(rng.integers(5)),
        moustache=bool(rng.random() < 0.25),
    )


def _face_identity(rng: np.random.Generator, look: _FaceLook | None = None) -> _FaceIdentity:
    """One identity: a coarse ``look`` (drawn from ``rng`` when None) plus fine, identity-specific detail.

    The fine detail (landmark geometry, iris colour, brow weight, lip tint and a pattern of small skin marks) is
    what tells apart identities that share a look; blur, noise, JPEG, occlusion and low light destroy it, so a
    recognizer's certainty falls with degradation strength as it does on real faces (whose coarse attributes are
    shared by many people).
    """
    if look is None:
        look = _face_look(rng)
    lm = ARCFACE_TEMPLATE_112.copy()
    eye_dist, eye_y = rng.uniform(-3.0, 3.0), rng.uniform(-1.5, 1.5)
    lm[0] += (-eye_dist / 2, eye_y)
    lm[1] += (eye_dist / 2, eye_y)
    lm[2] += rng.uniform(-1.5, 1.5, size=2)
    mouth_w, mouth_y = rng.uniform(-4.0, 4.0), rng.uniform(-1.5, 1.5)
    lm[3] += (-mouth_w / 2, mouth_y)
    lm[4] += (mouth_w / 2, mouth_y)
    # skin marks (moles, freckles) at fixed places on the face: uniform in the inner 80 % of the face ellipse
    ax, ay = look.face_axes
    n_marks = int(rng.integers(10, 17))
    r, phi = 0.8 * np.sqrt(rng.random(n_marks)), rng.uniform(0, 2 * np.pi, n_marks)
    marks = np.stack(
        [
            56.0 + ax * r * np.cos(phi),
            look.face_cy + ay * r * np.sin(phi),
            rng.uniform(0.7, 1.4, n_marks),
            rng.uniform(0.35, 0.65, n_marks),
        ],
        axis=1,
    )
    return _FaceIdentity(
        look=look,
        landmarks=lm,
        eye=_EYE_COLOURS[rng.integers(len(_EYE_COLOURS))],
        brow_thickness=int(rng.integers(1, 4)),
        lips=np.clip(look.skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 5, 3), 0, 255),
        marks=marks,
    )


def _p(xy: Sequence[float] | np.ndarray) -> tuple[int, int]:
    """112-px coordinates -> supersampled integer pixel."""
    return (round(float(xy[0]) * _SS), round(float(xy[1]) * _SS))


def _s(length: float) -> int:
    return max(1, round(length * _SS))


def _c(rgb: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (min(255.0, max(0.0, float(v))) for v in rgb)  # scalar clip: np.clip per call dominated drawing
    return (r, g, b)


def _draw_face(ident: _FaceIdentity, rng: np.random.Generator, size: int) -> np.ndarray:
    """Render one image of ``ident``. Returns uint8 RGB [size, size, 3], landmarks at ``ident.landmarks``."""
    import cv2

    canvas = _face_background(rng)
    skin = ident.look.skin * rng.uniform(0.95, 1.05)
    _draw_head(canvas, ident, skin)
    for x, y, radius, dark in ident.marks:  # skin marks: the fine identity detail degradations destroy
        cv2.circle(canvas, _p((x, y)), _s(radius), _c(skin * dark), -1, cv2.LINE_AA)
    _draw_eyes(canvas, ident, skin, gaze=rng.uniform(-0.7, 0.7, size=2))
    _draw_nose(canvas, ident, skin)
    _draw_mouth(canvas, ident, smile=rng.uniform(0.5, 3.0))
    return _light_and_downsample(canvas, rng, size)


def _face_background(rng: np.random.Generator) -> np.ndarray:
    """The supersampled canvas: a random colour with a linear gradient (changes per image)."""
    big = 112 * _SS
    bg0, bg1 = rng.uniform(40, 220, size=3), rng.uniform(40, 220, size=3)
    t = np.linspace(0.0, 1.0, big, dtype=np.float64)[:, None, None]
    canvas = np.empty((big, big, 3), np.uint8)
    canvas[:] = (bg0 * (1 - t) + bg1 * t).astype(np.uint8)  # [big, 1, 3] broadcast along x
    return canvas


def _draw_head(canvas: np.ndarray, ident: _FaceIdentity, skin: np.ndarray) -> None:
    """Hair behind the face (long style), neck, ears, the face, and the hair on top (by style)."""
    import cv2

    aa = cv2.LINE_AA
    look = ident.look
    ax, ay = look.face_axes
    cx, cy = 56.0, look.face_cy
    le, _, nose, _, _ = ident.landmarks
    hair = look.hair
    if look.hair_style == 3:  # long hair falls behind the face
        cv2.ellipse(canvas, _p((cx, cy + 8)), (_s(ax + 9), _s(ay + 14)), 0, 0, 360, _c(hair), -1, aa)
    # neck and ears
    cv2.rectangle(canvas, _p((cx - ax * 0.45, cy + ay * 0.6)), _p((cx + ax * 0.45, 112)), _c(skin * 0.85), -1, aa)
    ear_y = (le[1] + nose[1]) / 2
    for side in (-1, 1):
        cv2.ellipse(canvas, _p((cx + side * ax * 0.98, ear_y)), (_s(4.5), _s(8.5)), 0, 0, 360, _c(skin * 0.92), -1, aa)
    cv2.ellipse(canvas, _p((cx, cy)), (_s(ax), _s(ay)), 0, 0, 360, _c(skin), -1, aa)
    # hair on top
    hairline = cy - ay * 0.55
    if look.hair_style in (1, 2, 3):
        cv2.ellipse(canvas, _p((cx, hairline)), (_s(ax + 2), _s(ay * 0.52)), 0, 180, 360, _c(hair), -1, aa)
    if look.hair_style == 2:  # fringe
        cv2.ellipse(canvas, _p((cx - 6, hairline)), (_s(ax * 0.8), _s(6)), 8, 0, 180, _c(hair), -1, aa)
    if look.hair_style == 4:  # curls
        for ang in np.linspace(np.pi * 1.05, np.pi * 1.95, 9):
            centre = (cx + (ax + 1) * np.cos(ang), hairline + ay * 0.5 * np.sin(ang))
            cv2.circle(canvas, _p(centre), _s(7), _c(hair), -1, aa)
    if look.hair_style == 0:  # bald: a rim of hair above the ears
        for side in (-1, 1):
            cv2.ellipse(canvas, _p((cx + side * ax * 0.9, ear_y - 10)), (_s(4), _s(9)), 0, 0, 360, _c(hair), -1, aa)


def _draw_eyes(canvas: np.ndarray, ident: _FaceIdentity, skin: np.ndarray, gaze: np.ndarray) -> None:
    """Eyes and brows (identity-specific colours and thickness; ``gaze`` varies per image)."""
    import cv2

    aa = cv2.LINE_AA
    hair = ident.look.hair
    for eye in ident.landmarks[:2]:
        cv2.ellipse(
            canvas,
            _p((eye[0], eye[1] - 7.5)),
            (_s(7), _s(3)),
            0,
            200,
            340,
            _c(hair * 0.8),
            _s(0.6 * ident.brow_thickness),
            aa,
        )
        cv2.ellipse(canvas, _p(eye), (_s(6.5), _s(3.2)), 0, 0, 360, (245, 245, 240), -1, aa)
        cv2.circle(canvas, _p(eye + gaze), _s(2.6), _c(ident.eye), -1, aa)
        cv2.circle(canvas, _p(eye + gaze), _s(1.1), (10, 10, 10), -1, aa)
        cv2.ellipse(canvas, _p(eye), (_s(6.5), _s(3.2)), 0, 180, 360, _c(skin * 0.55), _s(0.5), aa)


def _draw_nose(canvas: np.ndarray, ident: _FaceIdentity, skin: np.ndarray) -> None:
    """Bridge line and nostrils."""
    import cv2

    aa = cv2.LINE_AA
    le, re, nose, _, _ = ident.landmarks
    bridge_top = ((le[0] + re[0]) / 2, (le[1] + re[1]) / 2 + 4)
    cv2.line(canvas, _p(bridge_top), _p((nose[0] - 1.5, nose[1] - 1)), _c(skin * 0.75), _s(0.6), aa)
    for side in (-1, 1):
        cv2.ellipse(
            canvas, _p((nose[0] + side * 3, nose[1] + 1)), (_s(1.6), _s(1.0)), 0, 0, 360, _c(skin * 0.45), -1, aa
        )


def _draw_mouth(canvas: np.ndarray, ident: _FaceIdentity, smile: float) -> None:
    """Lips between the corner landmarks (``smile`` varies per image), and the moustache of the look."""
    import cv2

    aa = cv2.LINE_AA
    _, _, nose, ml, mr = ident.landmarks
    mouth_c = (ml + mr) / 2
    half_w = float(np.linalg.norm(mr - ml) / 2)
    tilt = math.degrees(math.atan2(mr[1] - ml[1], mr[0] - ml[0]))
    cv2.ellipse(canvas, _p(mouth_c), (_s(half_w), _s(2.6)), tilt, 0, 360, _c(ident.lips), -1, aa)
    cv2.ellipse(
        canvas,
        _p((mouth_c[0], mouth_c[1] - smile)),
        (_s(half_w), _s(smile)),
        tilt,
        0,
        180,
        _c(ident.lips * 0.5),
        _s(0.7),
        aa,
    )
    if ident.look.moustache:
        moustache_c = ((nose[0] + mouth_c[0]) / 2, (nose[1] + mouth_c[1]) / 2 + 1)
        cv2.ellipse(canvas, _p(moustache_c), (_s(half_w * 0.9), _s(2.0)), tilt, 0, 360, _c(ident.look.hair), -1, aa)


def _light_and_downsample(canvas: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Area-downsample to ``size`` and light with a mild gradient in a random direction (per image).

    The light is applied after the downsampling: a smooth multiplicative field commutes with it up to rounding, at
    1/16 of the cost.
    """
    import cv2

    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.15)
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    light = 1.0 + 2 * strength * (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
    return np.clip(small * light[..., None], 0, 255).round().astype(np.uint8)


def _degrade(img: np.ndarray, kind: str, s: float, rng: np.random.Generator) -> np.ndarray:
    """Apply degradation ``kind`` of strength ``s`` in [0, 1] to uint8 RGB [H, W, 3]; ``s == 0`` is a no-op.

    Strength 1 of blur, occlusion and low light is meant to leave the identity barely recoverable, so that one
    strength means a comparable loss of recognisability across these kinds (a pooled ranking over kinds is then
    meaningful). With milder maxima (blur sigma 3 px, 20 photons) a trained recognizer's certainty ratio on
    held-out faces ranked blur and low light only at 0.5 and the pooled ranking sat at 0.47-0.54 even for that
    oracle (``benchmarks/fiqa_ranking.py``, BENCHMARKS.md).
    """
    import cv2

    if s <= 0.0 or kind == "none":
        return img
    h, w = img.shape[:2]
    if kind == "blur":
        # sigma 6 px at 112 px and s = 1: severe defocus; the 1-2 px skin marks are gone from s ~ 0.25 on
        return cv2.GaussianBlur(img, (0, 0), sigmaX=6.0 * s * h / 112)
    if kind == "noise":
        noisy = img.astype(np.float32) + rng.normal(0.0, 50.0 * s, size=img.shape).astype(np.float32)
        return np.clip(noisy, 0, 255).round().astype(np.uint8)
    if kind == "jpeg":
        quality = int(round(90 - 85 * s))
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("cv2.imencode failed for the jpeg degradation")
        return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    if kind == "occlusion":
        # an opaque patch over the face centre whose area is 45 % of the image at s = 1
        area = 0.45 * s * h * w
        aspect = rng.uniform(0.6, 1.8)
        ph, pw = min(h, math.sqrt(area / aspect)), min(w, math.sqrt(area * aspect))
        cy0, cx0 = rng.uniform(0.35 * h, 0.75 * h), rng.uniform(0.35 * w, 0.65 * w)
        y0, x0 = int(max(0, cy0 - ph / 2)), int(max(0, cx0 - pw / 2))
        out = img.copy()
        out[y0 : int(min(h, y0 + ph)), x0 : int(min(w, x0 + pw))] = rng.integers(0, 90, size=3, dtype=np.uint8)
        return out
    if kind == "low_light":
        # A photon-limited exposure: the full scale of the clean image collects 4000 photons at s = 0 and 4 at
        # s = 1 (log-spaced between); shot (Poisson) and read noise (2 e-), then back to the display gamma, left
        # dark (no gain). A darker image with the same noise would be a near-invertible contrast change for a
        # network with LayerNorm; it is the falling signal-to-noise ratio that destroys detail in real low light.
        full_scale = 4000.0 * (4.0 / 4000.0) ** s
        linear = (img.astype(np.float32) / 255.0) ** 2.2
        photons = rng.poisson(linear * full_scale).astype(np.float32)
        photons += rng.normal(0.0, 2.0, size=img.shape).astype(np.float32)
        x = np.clip(photons / 4000.0, 0.0, 1.0) ** (1 / 2.2) * 255.0
        return np.clip(x, 0, 255).round().astype(np.uint8)
    raise ConfigError(f"unknown degradation {kind!r}; expected one of {', '.join(DEGRADATIONS)}")


def _jpeg_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def _face_pairs(
    names: Sequence[str], per_identity: int, n_pairs: int | None, rng: np.random.Generator
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, str, int]]]:
    """Balanced genuine and impostor pairs (1-based image numbers, LFW convention)."""
    genuine_all = [(nm, a, b) for nm in names for a, b in itertools.combinations(range(1, per_identity + 1), 2)]
    n_impostor_all = math.comb(len(names), 2) * per_identity * per_identity
    n = min(len(genuine_all), n_impostor_all, n_pairs if n_pairs is not None else len(genuine_all))
    pick = np.sort(rng.choice(len(genuine_all), size=n, replace=False)) if n < len(genuine_all) else range(n)
    genuine = [genuine_all[int(i)] for i in pick]
    impostor: list[tuple[str, int, str, int]] = []
    if n_impostor_all <= 200_000:
        ids = list(itertools.combinations(range(len(names)), 2))
        flat = rng.choice(n_impostor_all, size=n, replace=False)
        for f in np.sort(flat):
            pair, rest = divmod(int(f), per_identity * per_identity)
            a, b = divmod(rest, per_identity)
            impostor.append((names[ids[pair][0]], a + 1, names[ids[pair][1]], b + 1))
    else:  # too many to enumerate: rejection sampling of distinct pairs
        seen: set[tuple[int, int, int, int]] = set()
        while len(impostor) < n:
            i, j = sorted(int(x) for x in rng.choice(len(names), size=2, replace=False))
            a, b = (int(x) for x in rng.integers(1, per_identity + 1, size=2))
            if (i, a, j, b) not in seen:
                seen.add((i, a, j, b))
                impostor.append((names[i], a, names[j], b))
    return genuine, impostor


def synth_faces(
    out: str | os.PathLike[str],
    identities: int = 8,
    images_per_identity: int = 6,
    seed: int = 0,
    size: int = 112,
    held_out: bool = False,
    degradations: Sequence[str] = DEGRADATIONS,
    n_pairs: int | None = None,
    looks: int | None = None,
    progress: ProgressFn | None = None,
) -> SynthSummary:
    """Write aligned synthetic face crops in identity folders, with graded degradations and pair lists.

    Identities share coarse *looks* (skin tone, face shape, hair colour and style, moustache; ``looks`` of them,
    identity ``k`` has look ``k % looks``) and differ in fine detail: landmark jitter around the ArcFace template
    (eye distance, mouth width), iris colour, brow weight, lip tint and a fixed pattern of 10-16 small skin marks.
    As on real faces, where coarse attributes are shared by many people, telling identities apart takes the fine
    detail that blur, noise, JPEG, occlusion and low light (a photon-limited exposure) destroy, so a
    recognizer's certainty falls with degradation strength. Each image varies background, lighting, gaze and
    smile, then gets one degradation from ``degradations`` of strength ``s``. Per identity the strengths are
    ``linspace(0, 1, M)`` in a random order, so every identity has one clean image (``degradation = none``,
    ``strength = 0``) and the degradation kinds cycle from a random start.

    Written files (``P`` = ``person`` or ``heldout``; image numbers are 1-based as in LFW)::

        out/P_000/P_000_0001.jpg ...     JPEG quality 95, RGB, size x size
        out/degradations.csv             path,identity,degradation,strength      (path relative to out)
        out/landmarks.csv                path,identity,left_eye_x,left_eye_y,...,mouth_right_y
        out/pairs.txt                    LFW format with one fold: first line "1<TAB>N", then N genuine lines
                                         "name<TAB>i<TAB>j", then N impostor lines "name1<TAB>i<TAB>name2<TAB>j"

    Landmarks are in pixels of the written image (template scaled by ``size / 112``); the degradations do not
    move them. With ``held_out`` the identities come from a separate random stream and are named ``heldout_XXX``,
    so a held-out set never shares identities with a training set made with the same seed.

    Args:
        out: Output folder (created).
        identities: Number of identities K (>= 2).
        images_per_identity: Images per identity M (>= 1; pairs need M >= 2).
        seed: Seed.
        size: Output side in pixels (112 is the ArcFace crop).
        held_out: Draw a disjoint set of identities (see above).
        degradations: Subset of :data:`DEGRADATIONS` to use.
        n_pairs: Genuine pairs to write (the same number of impostor pairs); ``None`` = every within-identity
            pair, capped by the number of distinct impostor pairs.
        looks: Number of coarse looks the identities share (``None``: one per 8 identities, rounded up).
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        A :class:`SynthSummary` with counts ``identities``, ``images``, ``genuine_pairs``, ``impostor_pairs``.

    Raises:
        ConfigError: An argument out of range or an unknown degradation.
    """
    _check_seed(seed)
    n_looks = _check_faces_args(identities, images_per_identity, size, degradations, looks)
    root = Path(out)
    start = time.perf_counter()
    stream = 1 if held_out else 0
    face_looks = [_face_look(_rng(seed, 3, stream, j)) for j in range(n_looks)]
    prefix = "heldout" if held_out else "person"
    names = [f"{prefix}_{k:03d}" for k in range(identities)]
    total = identities * images_per_identity
    files, deg_rows, lm_rows = _write_faces(
        root, names, face_looks, (seed, stream), images_per_identity, degradations, size, progress
    )
    pair_rng = _rng(seed, 2, stream)
    genuine, impostor = _write_face_lists(root, deg_rows, lm_rows, names, images_per_identity, n_pairs, pair_rng)
    files += ["degradations.csv", "landmarks.csv", "pairs.txt"]
    params = {"seed": int(seed), "identities": identities, "images_per_identity": images_per_identity, "size": size}
    params.update({"held_out": bool(held_out), "degradations": list(degradations), "looks": n_looks})
    counts = {"identities": identities, "images": total}
    counts.update({"genuine_pairs": len(genuine), "impostor_pairs": len(impostor)})
    seconds = time.perf_counter() - start
    logger.info("synth faces: %d identities x %d images in %s (%.1f s)", identities, images_per_identity, root, seconds)
    return SynthSummary("faces", root, counts, params, tuple(files), seconds)


def _check_faces_args(
    identities: int, images_per_identity: int, size: int, degradations: Sequence[str], looks: int | None
) -> int:
    """Refuse out-of-range arguments of :func:`synth_faces`; returns the number of looks."""
    if identities < 2 or images_per_identity < 1:
        raise ConfigError(
            f"synth faces: need identities >= 2 and images_per_identity >= 1, got {identities}, {images_per_identity}"
        )
    if size < 32:
        raise ConfigError(f"synth faces: size must be >= 32 px, got {size}")
    unknown = [d for d in degradations if d not in DEGRADATIONS]
    if unknown or not degradations:
        raise ConfigError(f"synth faces: unknown degradations {unknown}; choose from {', '.join(DEGRADATIONS)}")
    n_looks = max(1, math.ceil(identities / 8)) if looks is None else int(looks)
    if not 1 <= n_looks <= identities:
        raise ConfigError(f"synth faces: looks must be in [1, identities={identities}], got {looks}")
    return n_looks


def _write_faces(
    root: Path,
    names: Sequence[str],
    face_looks: Sequence[_FaceLook],
    key: tuple[int, int],
    images_per_identity: int,
    degradations: Sequence[str],
    size: int,
    progress: ProgressFn | None,
) -> tuple[list[str], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every identity's images (identity ``k`` has look ``k % len(face_looks)``, its own stream under ``key`` =
    ``(seed, stream)``); returns the paths written, the degradations rows and the landmarks rows."""
    seed, stream = key
    total = len(names) * images_per_identity
    files: list[str] = []
    deg_rows: list[tuple[Any, ...]] = []
    lm_rows: list[tuple[Any, ...]] = []
    jobs = [
        (root, name, face_looks[k % len(face_looks)], (seed, stream, k), images_per_identity, tuple(degradations), size)
        for k, name in enumerate(names)
    ]
    # Identities are independent (each draws from its own stream), so large sets are drawn by one process per core:
    # the same bytes in the same order as one process writes them, in half the time on 2 cores.
    workers = min(os.cpu_count() or 1, 4) if total >= _PARALLEL_FACES else 1
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            results: Iterable[list[tuple[str, Any, Any]]] = pool.map(_identity_images, jobs)
        else:
            results = map(_identity_images, jobs)
        for images in results:
            for rel, deg_row, lm_row in images:
                files.append(rel)
                deg_rows.append(deg_row)
                lm_rows.append(lm_row)
            if progress is not None:
                progress(len(files), total)
    return files, deg_rows, lm_rows


def _identity_images(job: tuple[Any, ...]) -> list[tuple[str, Any, Any]]:
    """One identity's images, written (a top-level function so that a process pool can run it)."""
    root, name, look, (seed, stream, k), images_per_identity, degradations, size = job
    id_rng = _rng(seed, 1, stream, k)
    ident = _face_identity(id_rng, look)
    return list(_write_identity(root, name, ident, id_rng, (seed, stream, k), images_per_identity, degradations, size))


def _write_identity(
    root: Path,
    name: str,
    ident: _FaceIdentity,
    id_rng: np.random.Generator,
    key: tuple[int, int, int],
    images_per_identity: int,
    degradations: Sequence[str],
    size: int,
) -> Iterator[tuple[str, tuple[Any, ...], tuple[Any, ...]]]:
    """Draw, degrade and write the images of one identity; yields ``(path, degradations row, landmarks row)`` after
    each written image.

    ``key`` is ``(seed, stream, identity index)``: image ``m`` draws from its own stream under it. The strengths
    are ``linspace(0, 1, M)`` in a random order and the degradation kinds cycle from a random start.
    """
    seed, stream, k = key
    strengths = id_rng.permutation(np.linspace(0.0, 1.0, images_per_identity)) if images_per_identity > 1 else [0.0]
    kind_offset = int(id_rng.integers(len(degradations)))
    landmarks = ident.landmarks * (size / 112.0)
    n_degraded = 0
    for m in range(images_per_identity):
        img_rng = _rng(seed, 1, stream, k, m + 1)
        img = _draw_face(ident, img_rng, size)
        s = float(strengths[m])
        if s > 0:
            kind = degradations[(kind_offset + n_degraded) % len(degradations)]
            n_degraded += 1
        else:
            kind = "none"
        img = _degrade(img, kind, s, img_rng)
        rel = f"{name}/{name}_{m + 1:04d}.jpg"
        _atomic_write_bytes(root / rel, _jpeg_bytes(img))
        yield rel, (rel, name, kind, f"{s:.4f}"), (rel, name, *(f"{x:.3f}" for x in landmarks.reshape(-1)))


def _write_face_lists(
    root: Path,
    deg_rows: Sequence[tuple[Any, ...]],
    lm_rows: Sequence[tuple[Any, ...]],
    names: Sequence[str],
    images_per_identity: int,
    n_pairs: int | None,
    rng: np.random.Generator,
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, str, int]]]:
    """``degradations.csv``, ``landmarks.csv`` and ``pairs.txt``; returns the genuine and impostor pairs."""
    _atomic_write_text(root / "degradations.csv", _csv_text(("path", "identity", "degradation", "strength"), deg_rows))
    _atomic_write_text(root / "landmarks.csv", _csv_text(("path", "identity", *LANDMARK_COLUMNS), lm_rows))
    genuine, impostor = _face_pairs(names, images_per_identity, n_pairs, rng)
    _atomic_write_text(root / "pairs.txt", _pairs_text(genuine, impostor))
    if not genuine:
        logger.warning(
            "synth faces: images_per_identity=%d gives no genuine pairs; pairs.txt is empty", images_per_identity
        )
    return genuine, impostor


def _pairs_text(genuine: Sequence[tuple[str, int, int]], impostor: Sequence[tuple[str, int, str, int]]) -> str:
    """``pairs.txt`` in the LFW format with one fold."""
    lines = [f"1\t{len(genuine)}"]
    lines += [f"{nm}\t{a}\t{b}" for nm, a, b in genuine]
    lines += [f"{n1}\t{a}\t{n2}\t{b}" for n1, a, n2, b in impostor]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# overwrite support

_CT_OWNED = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "dataset.json")
_FACES_OWNED_FILES = ("degradations.csv", "landmarks.csv", "pairs.txt")
_FACES_DIR = re.compile(r"^(person|heldout)_\d{3,}$")


def clear_synth_outputs(kind: str, out: str | os.PathLike[str]) -> list[str]:
    """Remove what a previous ``synth_<kind>`` run may have written to ``out``, and nothing else.

    Used by ``medvit data synth --overwrite`` so that a smaller rerun does not leave stale cases behind.
    ``ct``: ``imagesTr/ labelsTr/ imagesTs/ labelsTs/ dataset.json``; ``faces``: ``person_NNN/`` and
    ``heldout_NNN/`` folders, ``degradations.csv``, ``landmarks.csv``, ``pairs.txt``; ``cells``: ``Fold N/``
    folders and ``large/`` (:func:`medvit.shared.data.synth_cells.clear_cells_outputs`); ``deepfake``: the FF++
    folders, ``splits/`` and ``clips.csv`` (:func:`medvit.shared.data.synth_deepfake.clear_deepfake_outputs`).

    Args:
        kind: ``"ct"``, ``"faces"``, ``"cells"``, ``"cxr"``, ``"fundus"``, ``"oct"`` or ``"deepfake"``.
        out: The output folder.

    Returns:
        Names removed (relative to ``out``).
    """
    root = Path(out)
    if not root.is_dir():
        return []
    if kind == "ct":
        owned = [root / name for name in _CT_OWNED]
    elif kind == "faces":
        owned = [p for p in root.iterdir() if p.is_dir() and _FACES_DIR.match(p.name)]
        owned += [root / name for name in _FACES_OWNED_FILES]
    elif kind == "cells":
        from medvit.shared.data.synth_cells import clear_cells_outputs

        return clear_cells_outputs(root)
    elif kind == "cxr":
        from medvit.shared.data.synth_xray import clear_cxr_outputs

        return clear_cxr_outputs(root)
    elif kind == "deepfake":
        from medvit.shared.data.synth_deepfake import clear_deepfake_outputs

        return clear_deepfake_outputs(root)
    elif kind in ("fundus", "oct"):
        from medvit.shared.data.synth_eye import clear_eye_outputs

        return clear_eye_outputs(kind, root)
    else:
        raise ConfigError(f"unknown synth kind {kind!r}; expected ct, faces, cells, cxr, fundus, oct or deepfake")
    removed = []
    for path in owned:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed
