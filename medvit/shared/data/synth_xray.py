"""Synthetic chest X-rays (PA view) with four label-carrying findings, for tests, demos and smoke runs of ``medvit
pretrain`` and ``medvit cxr``.

Each image is drawn as an attenuation map, bright = dense as a radiograph displays it: air around the body dark, a
soft-tissue torso, two dark lung fields with an apical dome and sharp lateral costophrenic angles over the
hemidiaphragms (the patient's right, image left, a little higher), a bright mediastinum with the heart shadow
towards the patient's left, spine, posterior ribs, clavicles, and branching lung markings from the hila; then a
sub-pixel blur, an exposure/gamma change and quantum noise. Findings, each drawn independently with probability
``prevalence`` and made plainly visible (a small CNN separates them at 128 px):

* ``Cardiomegaly``: heart width / thoracic width (cardiothoracic ratio, CTR) in 0.56-0.68 instead of 0.36-0.46,
  i.e. above the usual 0.5 threshold (Danzer's ratio on a PA film);
* ``Effusion``: basal opacity on one side with a meniscus rising laterally, blunting the costophrenic angle;
* ``Nodule``: one round opacity of 8-13 % of the lung width inside a lung field, away from the heart;
* ``Pneumothorax``: on one side, an apical/lateral rim without lung markings, a little darker, bounded by the thin
  bright line of the visceral pleura.

The names are ChestX-ray14's (Wang et al., CVPR 2017). Written files (``layout="flat"``)::

    out/images/cxr_00000.png ...    8-bit (or 16-bit, ``bit_depth=16``) grayscale PNG; the first ``n_dicom`` items
                                    as DICOM DX (12-bit, MONOCHROME1 for odd items, a window) in ``out/dicom/``
    out/labels.csv                  path (relative to out), one 0/1 column per finding
    out/findings.csv                path, CTR, nodule centre/radius in pixels, effusion/pneumothorax side

``layout="chestxray14"`` names the images ``images/PPPPPPPP_FFF.png`` and adds ``Data_Entry_2017.csv``
(``Image Index``, ``Finding Labels`` joined by ``|`` or ``No Finding``, ``View Position`` = PA, ...),
``train_val_list.txt`` and ``test_list.txt`` (split by patient), as the NIH release ships them, so that
:func:`medvit.shared.data.folders.find_cxr_images` sees the real layout.

Item ``k`` depends only on ``(seed, k)`` (its own numpy stream); every file is written atomically; DICOM UIDs are
derived from the seed, so a seed reproduces the files byte for byte. No patient data: the DICOM files carry a
synthetic ID only.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.data.synth import ProgressFn, SynthSummary, _check_seed, _csv_text, _rng
from medvit.shared.errors import ConfigError
from medvit.shared.files import write_bytes_atomic

logger = logging.getLogger(__name__)

CXR_FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Nodule", "Pneumothorax")
"""Label columns of ``labels.csv``, in this order (ChestX-ray14 names)."""

CXR_LAYOUTS: tuple[str, ...] = ("flat", "chestxray14")

_LUNG_LAT = 0.76  # lateral lung wall, in half-widths of the frame from the midline (before the per-case scale)
_HEART_CENTRE = (0.09, 0.24)
_HEART_TILT = math.radians(25.0)  # long axis from the upper right border down to the apex at the patient's left
_HEART_MINOR = 0.22


@dataclass(frozen=True)
class _Case:
    """Drawn parameters of one radiograph (normalised coordinates: u right, v down, both in [-1, 1])."""

    findings: dict[str, bool]
    scale: float
    shift: tuple[float, float]
    angle: float
    dome: tuple[float, float]  # top of the hemidiaphragm, image left and right
    ctr: float
    effusion_side: int  # -1 image left, +1 image right, 0 none
    effusion_level: float
    ptx_side: int
    ptx_gap: float
    nodule: tuple[float, float, float] | None  # u, v, radius
    gamma: float
    exposure: float


def _draw_case(rng: np.random.Generator, prevalence: float) -> _Case:
    findings = {name: bool(rng.random() < prevalence) for name in CXR_FINDINGS}
    ctr = rng.uniform(0.56, 0.68) if findings["Cardiomegaly"] else rng.uniform(0.36, 0.46)
    dome_right = rng.uniform(0.36, 0.44)  # the patient's right hemidiaphragm (image left) sits higher
    nodule = None
    if findings["Nodule"]:
        side = rng.choice([-1.0, 1.0])
        t, v = rng.uniform(0.3, 0.62), rng.uniform(-0.45, 0.1)
        nodule = (float(side * t), float(v), float(rng.uniform(0.08, 0.13) * (_LUNG_LAT - 0.1)))
    return _Case(
        findings=findings,
        scale=float(rng.uniform(0.86, 0.98)),
        shift=(float(rng.normal(0, 0.025)), float(rng.normal(0.02, 0.025))),
        angle=float(np.deg2rad(rng.normal(0, 2.0))),
        dome=(float(dome_right), float(dome_right + rng.uniform(0.02, 0.07))),
        ctr=float(ctr),
        effusion_side=int(rng.choice([-1, 1])) if findings["Effusion"] else 0,
        effusion_level=float(rng.uniform(0.02, 0.2)),
        ptx_side=int(rng.choice([-1, 1])) if findings["Pneumothorax"] else 0,
        ptx_gap=float(rng.uniform(0.13, 0.2)),
        nodule=nodule,
        gamma=float(rng.uniform(0.85, 1.2)),
        exposure=float(rng.uniform(-0.05, 0.05)),
    )


def _soft(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """A 0/1 mask with its edge blurred (float32)."""
    import cv2

    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=max(sigma_px, 0.3))


def _coords(size: int, case: _Case) -> tuple[np.ndarray, np.ndarray]:
    """Body coordinates ``(u, v)`` of every pixel ``[S, S]``: frame coordinates moved, rotated and scaled."""
    x = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    xx, yy = np.meshgrid(x, x)
    xx, yy = xx - case.shift[0], yy - case.shift[1]
    c, s = math.cos(case.angle), math.sin(case.angle)
    return (c * xx + s * yy) / case.scale, (-s * xx + c * yy) / case.scale


def _lung_mask(u: np.ndarray, v: np.ndarray, side: int, dome: float, inset: float = 0.0) -> np.ndarray:
    """One lung field: rounded apex, vertical lateral wall, dome-shaped diaphragm; ``inset`` shrinks it."""
    t = u * side  # distance from the midline towards this lung's chest wall
    grow = np.sqrt(np.clip((v + 0.78 - inset) / 0.5, 0.0, 1.0))
    lateral = 0.40 + (0.36 - inset) * grow
    medial = 0.40 - 0.30 * grow
    diaphragm = dome + 0.2 * ((t - 0.3) / 0.46) ** 2
    return (t > medial) & (t < lateral) & (v < diaphragm) & (v > -0.78 + inset)


def _heart_mask(u: np.ndarray, v: np.ndarray, ctr: float) -> np.ndarray:
    """The heart shadow: an ellipse tilted down towards the patient's left, whose horizontal extent is
    ``ctr`` times the thoracic width (lateral lung wall to lateral lung wall, ``2 * _LUNG_LAT``)."""
    phi, minor = _HEART_TILT, _HEART_MINOR
    half_width = ctr * _LUNG_LAT  # horizontal half-extent of the rotated ellipse: sqrt(A^2 cos^2 + B^2 sin^2)
    major = math.sqrt(max(half_width**2 - (minor * math.sin(phi)) ** 2, 1e-6)) / math.cos(phi)
    du, dv = u - _HEART_CENTRE[0], v - _HEART_CENTRE[1]
    along = du * math.cos(phi) + dv * math.sin(phi)
    across = -du * math.sin(phi) + dv * math.cos(phi)
    return (along / major) ** 2 + (across / minor) ** 2 < 1


def _anatomy(u: np.ndarray, v: np.ndarray, case: _Case, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(density without lungs, lung air [0, 1], heart mask)`` of one case."""
    px = size / 2.0 * case.scale  # pixels per body unit
    body = (np.abs(u / 0.93) ** 6 + np.abs((v - 0.25) / 1.15) ** 6 < 1) | ((np.abs(u) < 0.24) & (v < -0.5))
    density = _soft(body, 0.02 * px) * (0.52 + 0.12 * (v + 1) / 2)
    lungs = _lung_mask(u, v, -1, case.dome[0]) | _lung_mask(u, v, 1, case.dome[1])
    heart = _heart_mask(u, v, case.ctr)
    aorta = ((u - 0.09) / 0.1) ** 2 + ((v + 0.3) / 0.075) ** 2 < 1  # aortic knob, attached to the mediastinum
    air = _soft(lungs & ~heart & ~aorta, 0.012 * px) * (0.85 + 0.15 * np.clip(np.abs(u) / _LUNG_LAT, 0, 1))
    spine = _soft(np.abs(u) < 0.07, 0.01 * px) * (0.07 + 0.025 * np.cos(v * 38.0))
    return density + spine * body, air, heart


def _bones(u: np.ndarray, v: np.ndarray, px: float, rng: np.random.Generator) -> np.ndarray:
    """Posterior ribs (arcs falling as they run outwards, fainter below the diaphragm) and clavicles."""
    t = np.abs(u)
    reach = np.clip(t - 0.06, 0.0, None)
    inside = (t > 0.06) & (t < 0.84)
    start, step = -0.74 + rng.normal(0, 0.02), 0.118 + rng.normal(0, 0.004)
    # rib k runs along v = start + k * step + 0.55 * reach^1.5: one pass finds each pixel's nearest rib
    q = (v - 0.55 * reach**1.5 - np.float32(start)) / np.float32(step)
    k = np.rint(q)
    on_rib = inside & (k >= 0) & (k <= 8) & (np.abs(q - k) * step < 0.016 + 0.003 * k)
    bones = on_rib * (0.075 - 0.004 * k).astype(np.float32)
    clav_centre = -0.63 - 0.12 * (t - 0.1) + 0.2 * (t - 0.35) ** 2
    bones += (np.abs(v - clav_centre) < 0.038) * ((t > 0.05) & (t < 0.6)) * 0.1
    return _soft(bones > 0, 0.008 * px) * bones


def _markings(rng: np.random.Generator, size: int, case: _Case) -> np.ndarray:
    """Branching vessel shadows from both hila, in frame pixels ``[S, S]`` in [0, 1]."""
    import cv2

    canvas = np.zeros((size, size), np.uint8)
    c, s = math.cos(case.angle), math.sin(case.angle)

    def to_px(uu: float, vv: float) -> tuple[int, int]:
        x = (c * uu - s * vv) * case.scale + case.shift[0]
        y = (s * uu + c * vv) * case.scale + case.shift[1]
        return int(round((x + 1) / 2 * size * 16)), int(round((y + 1) / 2 * size * 16))  # 4 fractional bits

    for side in (-1, 1):
        for _ in range(14):
            theta = rng.uniform(-1.3, 1.6)  # from up-and-out to down-and-out
            _branch(canvas, to_px, (side * 0.2, 0.0), side, theta, rng.uniform(0.3, 0.55), 2, rng, size)
    return cv2.GaussianBlur(canvas, (0, 0), sigmaX=max(0.4, size / 400)).astype(np.float32) / 255.0


def _branch(canvas: np.ndarray, to_px: Any, start: tuple[float, float], side: int, theta: float, length: float,
            depth: int, rng: np.random.Generator, size: int) -> None:  # fmt: skip
    """Draw a vessel from ``start`` and, ``depth`` times, two thinner children from its end."""
    import cv2

    end = (start[0] + side * length * math.cos(theta), start[1] + length * math.sin(theta))
    width = max(1, round(size / 256 * (0.6 + 0.8 * depth)))
    cv2.line(canvas, to_px(*start), to_px(*end), 200 - 40 * (2 - depth), width, cv2.LINE_AA, shift=4)
    if depth > 0:
        for d_theta in (-0.35, 0.35):
            _branch(canvas, to_px, end, side, theta + d_theta + rng.normal(0, 0.1), 0.55 * length, depth - 1, rng, size)


def render_cxr(rng: np.random.Generator, size: int, prevalence: float = 0.25) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw one synthetic PA chest radiograph.

    Args:
        rng: The case's generator.
        size: Image side in pixels.
        prevalence: Probability of each finding.

    Returns:
        ``(image float32 [S, S] in [0, 1], details)``; ``details`` has the ``findings`` dict (name -> bool),
        ``ctr``, ``nodule`` ``(x, y, r)`` in pixels or ``None``, ``effusion_side`` and ``pneumothorax_side``
        (``"left"`` / ``"right"`` of the image, or ``""``).
    """
    case = _draw_case(rng, prevalence)
    u, v = _coords(size, case)
    px = size / 2.0 * case.scale
    density, air, heart = _anatomy(u, v, case, size)
    density = density + _bones(u, v, px, rng)
    marks = _markings(rng, size, case) * (1 - np.clip(np.hypot(np.abs(u) - 0.2, v) / 0.8, 0, 1))
    if case.effusion_side:
        dome = case.dome[0 if case.effusion_side < 0 else 1]
        t = u * case.effusion_side
        fluid = _lung_mask(u, v, case.effusion_side, dome) & (v > case.effusion_level - 0.3 * ((t - 0.1) / 0.66) ** 2)
        fluid_soft = _soft(fluid, 0.025 * px)
        air = air * (1 - fluid_soft)
        density = density + 0.06 * fluid_soft
    if case.ptx_side:
        dome = case.dome[0 if case.ptx_side < 0 else 1]
        lung = _lung_mask(u, v, case.ptx_side, dome)
        collapsed_bin = _lung_mask(u, v, case.ptx_side, dome, inset=case.ptx_gap)
        collapsed = _soft(collapsed_bin, 0.006 * px)
        taper = np.clip((0.15 - v) / 0.3, 0.0, 1.0)  # apical and lateral, fading towards the base
        rim = _soft(lung, 0.02 * px) * (1 - collapsed) * taper  # air between the chest wall and the collapsed lung
        near_rim = _soft(lung & ~collapsed_bin, 0.012 * px) * taper
        marks = marks * (1 - rim)
        density = density - 0.12 * rim + 0.6 * near_rim * collapsed * (1 - collapsed)  # the visceral pleural line
    density = density - 0.34 * air + 0.14 * marks * air
    if case.nodule is not None:
        nu, nv, nr = case.nodule
        d = np.hypot(u - nu, v - nv)
        density = density + 0.22 / (1 + np.exp(np.clip((d - nr) / (0.12 * nr), -30, 30)))
    img = _expose(rng, density, case, size)
    return img, _details(case, size)


def _expose(rng: np.random.Generator, density: np.ndarray, case: _Case, size: int) -> np.ndarray:
    """Detector blur, exposure and gamma, quantum noise; float32 in [0, 1]."""
    import cv2

    img = cv2.GaussianBlur(density.astype(np.float32), (0, 0), sigmaX=max(0.5, size / 320))
    img = np.clip(img + case.exposure, 0, 1) ** case.gamma
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.012)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _details(case: _Case, size: int) -> dict[str, Any]:
    nodule = None
    if case.nodule is not None:
        nu, nv, nr = case.nodule
        c, s = math.cos(case.angle), math.sin(case.angle)
        x = (c * nu - s * nv) * case.scale + case.shift[0]
        y = (s * nu + c * nv) * case.scale + case.shift[1]
        px = size / 2.0
        nodule = ((x + 1) * px - 0.5, (y + 1) * px - 0.5, nr * case.scale * px)
    side = {-1: "left", 0: "", 1: "right"}
    return {
        "findings": dict(case.findings),
        "ctr": case.ctr,
        "nodule": nodule,
        "effusion_side": side[case.effusion_side],
        "pneumothorax_side": side[case.ptx_side],
    }


# ----------------------------------------------------------------------------------------------------------
# files


def _png_bytes(img: np.ndarray, bit_depth: int) -> bytes:
    import cv2

    full = 255.0 if bit_depth == 8 else 65535.0
    arr = np.rint(img * full).astype(np.uint8 if bit_depth == 8 else np.uint16)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - opencv encodes any 2D uint8/uint16 array
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def cxr_dicom_bytes(img: np.ndarray, *, seed: int, index: int, monochrome1: bool) -> bytes:
    """A DICOM DX file (Explicit VR Little Endian, 12 bits stored, a window) holding ``img`` in [0, 1].

    Stored values are ``round(img * 4095)`` (MONOCHROME2) or ``4095 -`` that (MONOCHROME1); Window Center/Width
    2048/4096 make the display linear. UIDs derive from ``(seed, index)``; the only patient attribute is a synthetic
    ID. Pixel spacing 0.143 mm, view position PA.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    stored = np.rint(np.clip(img, 0, 1) * 4095).astype(np.uint16)
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    uid = generate_uid(entropy_srcs=[f"medvit-synth-cxr-{seed}-{index}"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"medvit-synth-cxr-study-{seed}-{index}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"medvit-synth-cxr-series-{seed}-{index}"])
    ds.PatientID = f"SYNTH{index:05d}"
    ds.Modality, ds.ViewPosition, ds.PixelSpacing = "DX", "PA", [0.143, 0.143]
    ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _check_cxr_args(n: int, size: int, prevalence: float, bit_depth: int, layout: str, n_dicom: int) -> None:
    if n < 1:
        raise ConfigError(f"synth cxr: need n >= 1, got {n}")
    if size < 64:
        raise ConfigError(f"synth cxr: size must be >= 64 pixels, got {size}")
    if not 0.0 <= prevalence <= 1.0:
        raise ConfigError(f"synth cxr: prevalence must be in [0, 1], got {prevalence}")
    if bit_depth not in (8, 16):
        raise ConfigError(f"synth cxr: bit_depth must be 8 or 16, got {bit_depth}")
    if layout not in CXR_LAYOUTS:
        raise ConfigError(f"synth cxr: layout must be one of {', '.join(CXR_LAYOUTS)}, got {layout!r}")
    if not 0 <= n_dicom <= n:
        raise ConfigError(f"synth cxr: n_dicom must be in 0..n ({n}), got {n_dicom}")


def _image_name(k: int, layout: str) -> str:
    # ChestX-ray14 names are <patient>_<follow-up>.png; here two follow-ups per synthetic patient
    return f"{k // 2 + 1:08d}_{k % 2:03d}" if layout == "chestxray14" else f"cxr_{k:05d}"


def synth_cxr(
    out: str | os.PathLike[str],
    *,
    n: int = 64,
    seed: int = 0,
    size: int = 256,
    prevalence: float = 0.25,
    bit_depth: int = 8,
    layout: str = "flat",
    n_dicom: int = 0,
    progress: ProgressFn | None = None,
) -> SynthSummary:
    """Write ``n`` synthetic chest X-rays with finding labels (see the module docstring for what and where).

    Args:
        out: Output folder (created). Existing files of the same names are replaced.
        n: Number of images.
        seed: Seed; image ``k`` depends only on ``(seed, k)``.
        size: Image side in pixels.
        prevalence: Probability of each finding (independent).
        bit_depth: 8 or 16 (PNG sample depth; values scaled to the full range).
        layout: ``"flat"`` or ``"chestxray14"``.
        n_dicom: The first ``n_dicom`` images are written as DICOM (``dicom/*.dcm``) instead of PNG.
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        A :class:`~medvit.shared.data.synth.SynthSummary` with counts ``images``, ``dicom`` and one per finding.

    Raises:
        ConfigError: An argument out of range.
    """
    _check_seed(seed)
    _check_cxr_args(n, size, prevalence, bit_depth, layout, n_dicom)
    root = Path(out)
    start = time.perf_counter()
    files: list[str] = []
    label_rows: list[list[Any]] = []
    detail_rows: list[list[Any]] = []
    for k in range(n):
        img, det = render_cxr(_rng(seed, 0, k), size, prevalence)
        name = _image_name(k, layout)
        if k < n_dicom:
            rel = f"dicom/{name}.dcm"
            data = cxr_dicom_bytes(img, seed=seed, index=k, monochrome1=k % 2 == 1)
        else:
            rel, data = f"images/{name}.png", _png_bytes(img, bit_depth)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(root / rel, data, fsync=False)  # seeded data: cheaper to regenerate than to fsync
        files.append(rel)
        label_rows.append([rel, *(int(det["findings"][f]) for f in CXR_FINDINGS)])
        nod = det["nodule"] or ("", "", "")
        detail_rows.append([rel, f"{det['ctr']:.4f}", *(f"{v:.2f}" if v != "" else "" for v in nod),
                            det["effusion_side"], det["pneumothorax_side"]])  # fmt: skip
        if progress is not None:
            progress(k + 1, n)
    files += _write_cxr_tables(root, layout, label_rows, detail_rows, size, seed)
    counts = {"images": n - n_dicom, "dicom": n_dicom}
    counts.update({f: sum(r[1 + i] for r in label_rows) for i, f in enumerate(CXR_FINDINGS)})
    params = {"seed": int(seed), "n": n, "size": size, "prevalence": prevalence, "bit_depth": bit_depth}
    params.update({"layout": layout, "n_dicom": n_dicom})
    seconds = time.perf_counter() - start
    logger.info("synth cxr: %d images in %s (%.1f s)", n, root, seconds)
    return SynthSummary("cxr", root, counts, params, tuple(files), seconds)


def _write_cxr_tables(
    root: Path, layout: str, label_rows: list[list[Any]], detail_rows: list[list[Any]], size: int, seed: int
) -> list[str]:
    """``labels.csv``, ``findings.csv`` and, for the ChestX-ray14 layout, its CSV and split lists."""
    tables = {
        "labels.csv": _csv_text(["path", *CXR_FINDINGS], label_rows),
        "findings.csv": _csv_text(
            ["path", "ctr", "nodule_x", "nodule_y", "nodule_r", "effusion_side", "pneumothorax_side"], detail_rows
        ),
    }
    if layout == "chestxray14":
        entries, train, test = [], [], []
        for k, row in enumerate(label_rows):
            name = Path(row[0]).name
            found = [f for i, f in enumerate(CXR_FINDINGS) if row[1 + i]]
            patient = k // 2 + 1
            rng = _rng(seed, 1, patient)  # synthetic age and sex, the same for both images of a patient
            age, sex = int(rng.integers(18, 90)), "MF"[int(rng.integers(0, 2))]
            entries.append([name, "|".join(found) or "No Finding", k % 2, patient, age, sex, "PA", size, size,
                            0.143, 0.143])  # fmt: skip
            (test if patient % 5 == 0 else train).append(name)
        header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender"]
        header += ["View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
        tables["Data_Entry_2017.csv"] = _csv_text(header, entries)
        tables["train_val_list.txt"] = "".join(f"{name}\n" for name in train)
        tables["test_list.txt"] = "".join(f"{name}\n" for name in test)
    for name, text in tables.items():
        write_bytes_atomic(root / name, text.encode("utf-8"), fsync=False)
    return list(tables)


CXR_OWNED: tuple[str, ...] = (
    "images",
    "dicom",
    "labels.csv",
    "findings.csv",
    "Data_Entry_2017.csv",
    "train_val_list.txt",
    "test_list.txt",
)


def clear_cxr_outputs(out: str | os.PathLike[str]) -> list[str]:
    """Remove what a previous :func:`synth_cxr` may have written to ``out`` (:data:`CXR_OWNED`), and nothing else.

    Returns:
        Names removed (relative to ``out``).
    """
    return remove_owned(Path(out), CXR_OWNED)


def remove_owned(root: Path, names: tuple[str, ...]) -> list[str]:
    """Remove the files and folders ``names`` directly under ``root`` (symbolic links unlinked, not followed).

    Returns:
        The names that existed and were removed.
    """
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for name in names:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed
