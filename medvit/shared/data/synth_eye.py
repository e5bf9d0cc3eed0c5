"""Synthetic ophthalmic data with labels: colour fundus photographs graded for diabetic retinopathy, and OCT volumes
classed normal / fluid / drusen. For tests, demos and smoke runs of ``medvit pretrain`` (Uni4Eye: 2D + 3D) and
``medvit eye``.

``synth_fundus``: an RGB photograph with a dark surround and a circular field of view (a quarter of them larger than
the frame, cut at all four edges, as some cameras crop it), orange-red fundus with vignetting and choroidal
texture, an optic disc with its cup on the nasal side (the image's right for a right eye, OD), a darker macula
about 2.5 disc diameters temporal to it, and a vessel tree of four arcades (veins darker and wider than arteries)
that branch twice. Lesions follow a severity grade 0-4 shaped on the International Clinical Diabetic Retinopathy
scale (Wilkinson et al., Ophthalmology 2003), with counts that grow with the grade so that the grade is learnable:

    0  none;  1  microaneurysms only (3-8 tiny dark red dots);
    2  + dot/blot haemorrhages (2-6) and hard exudates (3-10 small yellow spots);
    3  + more of both (8-16, 10-24) and 1-3 cotton-wool spots (pale, fuzzy);
    4  + neovascularisation at the disc (a tuft of fine tortuous vessels) and a preretinal haemorrhage.

Files: ``out/fundus/fundus_00000.png`` (or ``.jpg``), ``labels.csv`` (path, grade), ``lesions.csv`` (path, grade,
eye, field of view centre and radius, disc centre, lesion counts).

``synth_oct``: volumes ``[rows, cols, slices]`` (rows = depth, row 0 vitreous) of a macular cube: retinal layers
(RNFL, GCL, IPL, INL, OPL, ONL, ELM, ellipsoid zone, outer segments, RPE, choroid) on a curved, tilted surface with
a foveal pit where the inner layers thin out, multiplicative speckle (gamma-distributed, as fully developed speckle
intensity) and additive noise. Class ``fluid``: 1-3 hyporeflective intraretinal cysts in the INL/ONL near the fovea
and, in half of them, a subretinal fluid dome under the lifted photoreceptors. Class ``drusen``: 3-8 dome-shaped
RPE elevations over medium-reflective material. Files: ``out/volumes/oct_000.nii.gz`` (uint8, affine =
diag(spacing) for a 2 x 6 x 6 mm cube), optionally ``out/bscans/oct_000/1.png ... S.png`` (one PNG per B-scan,
numbered from 1, no zero padding), ``labels.csv`` (path, label name, label_id; ``bscans`` folder when written).

Item ``k`` depends only on ``(seed, k)``; files are written atomically; NIfTI is gzipped with ``mtime=0`` so a seed
reproduces the files byte for byte.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.data.synth import ProgressFn, SynthSummary, _check_seed, _csv_text, _rng
from medvit.shared.data.synth_xray import remove_owned
from medvit.shared.errors import ConfigError
from medvit.shared.files import write_bytes_atomic

logger = logging.getLogger(__name__)

DR_GRADES: tuple[str, ...] = ("none", "mild", "moderate", "severe", "proliferative")
"""Names of the fundus grades 0-4."""

OCT_CLASSES: tuple[str, ...] = ("normal", "fluid", "drusen")
"""OCT labels; ``label_id`` is the index here."""

OCT_EXTENT_MM: tuple[float, float, float] = (2.0, 6.0, 6.0)
"""Physical size of a synthetic OCT cube (depth, width, B-scan span), whatever its shape in voxels."""

FUNDUS_OWNED: tuple[str, ...] = ("fundus", "labels.csv", "lesions.csv")
OCT_OWNED: tuple[str, ...] = ("volumes", "bscans", "labels.csv")


def _write(root: Path, rel: str, data: bytes) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(root / rel, data, fsync=False)  # seeded data: cheaper to regenerate than to fsync


# ----------------------------------------------------------------------------------------------------------
# fundus


@dataclass(frozen=True)
class _Eye:
    """Geometry of one photograph, in pixels of the S x S frame."""

    size: int
    fov: tuple[float, float, float]  # cx, cy, r
    right_eye: bool
    disc: tuple[float, float, float]  # cx, cy, r
    macula: tuple[float, float]


def _draw_eye(rng: np.random.Generator, size: int, clip_fraction: float) -> _Eye:
    clipped = rng.random() < clip_fraction
    r = size * (rng.uniform(0.53, 0.56) if clipped else rng.uniform(0.43, 0.47))
    cx, cy = size / 2 + rng.normal(0, 0.01 * size), size / 2 + rng.normal(0, 0.01 * size)
    right = bool(rng.random() < 0.5)
    side = 1.0 if right else -1.0  # the disc is nasal: image right for a right eye
    disc_r = 0.085 * r * rng.uniform(0.9, 1.1)
    disc = (cx + side * 0.42 * r, cy + rng.normal(0, 0.03 * r), disc_r)
    macula = (disc[0] - side * 5.0 * disc_r, disc[1] + rng.normal(0.04, 0.02) * r)
    return _Eye(size, (cx, cy, r), right, disc, macula)


def _fundus_background(rng: np.random.Generator, eye: _Eye) -> np.ndarray:
    """Orange-red fundus with vignetting, choroidal texture, disc and macula; float32 RGB [S, S, 3] in 0..255."""
    import cv2

    s = eye.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cx, cy, r = eye.fov
    d = np.hypot(xx - cx, yy - cy) / r
    base = np.array([rng.uniform(185, 225), rng.uniform(75, 110), rng.uniform(25, 50)], np.float32)
    shade = np.clip(1.05 - 0.45 * d**2, 0.35, 1.0)[..., None]
    texture = cv2.GaussianBlur(rng.standard_normal((s, s)).astype(np.float32), (0, 0), 0.02 * s)
    img = base * shade * (1 + 0.6 * texture[..., None] * np.array([0.15, 0.3, 0.3], np.float32))
    mx, my = eye.macula
    mac = np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * (0.11 * r) ** 2))[..., None]
    img = img * (1 - 0.35 * mac)
    dx, dy, dr = eye.disc
    dd = np.hypot(xx - dx, yy - dy) / dr
    disc = (1 / (1 + np.exp(np.clip((dd - 1) * 12, -30, 30))))[..., None]
    cup = np.exp(-(dd**2) / (2 * 0.35**2))[..., None]
    disc_colour = np.array([250, 205, 130], np.float32) * (0.9 + 0.1 * cup)
    return img * (1 - disc) + disc_colour * disc


def _vessel(
    canvas: np.ndarray, rng: np.random.Generator, start: tuple[float, float], angle: float, turn: float, eye: _Eye,
    width: float, steps: int, depth: int,
) -> None:  # fmt: skip
    """Draw one vessel, a curving polyline, into ``canvas`` (intensity = darkness), with ``depth`` branch levels."""
    import cv2

    r = eye.fov[2]
    step = 0.045 * r
    pts = [start]
    x, y = start
    for i in range(steps):
        angle += turn + rng.normal(0, 0.06)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        pts.append((x, y))
        if depth > 0 and i % 4 == 3:
            child_turn = -np.sign(turn or 1) * rng.uniform(0.0, 0.08)
            _vessel(canvas, rng, (x, y), angle + rng.choice([-0.8, 0.8]), child_turn, eye, width * 0.6, steps // 2,
                    depth - 1)  # fmt: skip
    poly = np.array([(round(px * 16), round(py * 16)) for px, py in pts], np.int32)
    cv2.polylines(canvas, [poly], False, 1.0, max(1, round(width)), cv2.LINE_AA, shift=4)


def _vessels(rng: np.random.Generator, eye: _Eye) -> tuple[np.ndarray, np.ndarray]:
    """Vein and artery masks ``[S, S]`` (0..1): superior and inferior temporal arcades leaving the disc steeply and
    bending back towards the horizontal around the macula, nasal branches, and a vessel-free fovea."""
    s, r = eye.size, eye.fov[2]
    veins, arteries = np.zeros((s, s), np.float32), np.zeros((s, s), np.float32)
    tx = -1.0 if eye.right_eye else 1.0  # temporal direction: towards the macula
    dx, dy, _ = eye.disc
    base_w = max(1.5, 0.022 * r)
    for canvas, width, spread in ((veins, base_w, 0.0), (arteries, 0.75 * base_w, 0.15)):
        for vertical in (-1.0, 1.0):  # superior (up in the image) and inferior
            a0 = math.atan2(vertical * (0.78 + spread), tx * 0.62)
            _vessel(canvas, rng, (dx, dy), a0, -vertical * tx * rng.uniform(0.05, 0.07), eye, width, 16, 2)
            nasal = math.atan2(vertical * (0.6 + spread), -tx * 0.8)
            _vessel(canvas, rng, (dx, dy), nasal, vertical * tx * 0.02, eye, 0.7 * width, 8, 1)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    mx, my = eye.macula
    avascular = 1 - np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * (0.13 * r) ** 2))
    return np.clip(veins, 0, 1) * avascular, np.clip(arteries, 0, 1) * avascular


_LESION_COUNTS: dict[int, dict[str, tuple[int, int]]] = {
    0: {},
    1: {"microaneurysms": (3, 8)},
    2: {"microaneurysms": (5, 12), "haemorrhages": (2, 6), "exudates": (3, 10)},
    3: {"microaneurysms": (10, 20), "haemorrhages": (8, 16), "exudates": (10, 24), "cotton_wool": (1, 3)},
    4: {"microaneurysms": (10, 20), "haemorrhages": (8, 16), "exudates": (10, 24), "cotton_wool": (1, 3)},
}


def _lesion_points(rng: np.random.Generator, eye: _Eye, k: int, clustered: bool = False) -> np.ndarray:
    """``k`` points ``[k, 2]`` inside 85 % of the field (and inside the frame), away from the disc."""
    cx, cy, r = eye.fov
    out: list[tuple[float, float]] = []
    centre = (eye.macula[0] + rng.normal(0, 0.15 * r), eye.macula[1] + rng.normal(0, 0.15 * r))
    for _ in range(50 * max(k, 1)):
        if len(out) == k:
            break
        if clustered:  # hard exudates gather in rings around leaking areas
            x, y = centre[0] + rng.normal(0, 0.12 * r), centre[1] + rng.normal(0, 0.12 * r)
        else:
            rad, ang = 0.85 * r * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            x, y = cx + rad * math.cos(ang), cy + rad * math.sin(ang)
        inside = math.hypot(x - cx, y - cy) < 0.85 * r and 2 <= x < eye.size - 2 and 2 <= y < eye.size - 2
        if inside and math.hypot(x - eye.disc[0], y - eye.disc[1]) > 2.0 * eye.disc[2]:
            out.append((x, y))
    return np.array(out, np.float32).reshape(-1, 2)


def _paint_lesions(rng: np.random.Generator, img: np.ndarray, eye: _Eye, grade: int) -> dict[str, int]:
    """Draw the lesions of ``grade`` onto ``img`` (float RGB, in place); returns the counts."""
    import cv2

    s, r = eye.size, eye.fov[2]
    counts = {name: int(rng.integers(lo, hi + 1)) for name, (lo, hi) in _LESION_COUNTS[grade].items()}
    dark = np.zeros((s, s), np.float32)
    bright = np.zeros((s, s), np.float32)
    pale = np.zeros((s, s), np.float32)
    unit = max(1.0, r / 120)  # lesion sizes scale with the field
    for x, y in _lesion_points(rng, eye, counts.get("microaneurysms", 0)):
        cv2.circle(dark, (round(x * 16), round(y * 16)), round(16 * 1.3 * unit), 1.0, -1, cv2.LINE_AA, shift=4)
    for x, y in _lesion_points(rng, eye, counts.get("haemorrhages", 0)):
        rad = rng.uniform(1.8, 3.5) * unit
        cv2.circle(dark, (round(x * 16), round(y * 16)), round(16 * rad), 0.9, -1, cv2.LINE_AA, shift=4)
    for x, y in _lesion_points(rng, eye, counts.get("exudates", 0), clustered=True):
        rad = rng.uniform(0.8, 1.8) * unit
        cv2.circle(bright, (round(x * 16), round(y * 16)), round(16 * rad), 1.0, -1, cv2.LINE_AA, shift=4)
    for x, y in _lesion_points(rng, eye, counts.get("cotton_wool", 0)):
        cv2.ellipse(pale, (round(x), round(y)), (round(5 * unit), round(3 * unit)), rng.uniform(0, 180), 0, 360,
                    1.0, -1, cv2.LINE_AA)  # fmt: skip
    pale = cv2.GaussianBlur(pale, (0, 0), 1.5 * unit)
    if grade == 4:
        counts["neovascularisation"] = 1
        _neovascular_tuft(rng, dark, eye)
        x, y = _lesion_points(rng, eye, 1)[0]
        cv2.ellipse(dark, (round(x), round(y)), (round(9 * unit), round(6 * unit)), 0, 0, 180, 0.85, -1, cv2.LINE_AA)
    dark, bright = cv2.GaussianBlur(dark, (0, 0), 0.5), cv2.GaussianBlur(bright, (0, 0), 0.5)
    img *= 1 - 0.75 * dark[..., None] * np.array([0.55, 1.0, 1.0], np.float32)  # dark red: red kept most
    img += bright[..., None] * (np.array([250, 235, 120], np.float32) - img) * 0.9
    img += pale[..., None] * (np.array([240, 225, 205], np.float32) - img) * 0.7
    return counts


def _neovascular_tuft(rng: np.random.Generator, canvas: np.ndarray, eye: _Eye) -> None:
    import cv2

    dx, dy, dr = eye.disc
    for _ in range(10):
        pts, ang = [], rng.uniform(0, 2 * math.pi)
        x, y = dx + dr * 0.8 * math.cos(ang), dy + dr * 0.8 * math.sin(ang)
        for _ in range(10):
            ang += rng.normal(0, 0.9)  # tortuous
            x, y = x + 0.35 * dr * math.cos(ang), y + 0.35 * dr * math.sin(ang)
            pts.append((round(x * 16), round(y * 16)))
        cv2.polylines(canvas, [np.array(pts, np.int32)], False, 0.8, 1, cv2.LINE_AA, shift=4)


def render_fundus(
    rng: np.random.Generator, size: int, grade: int, clip_fraction: float = 0.25
) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw one fundus photograph of DR grade ``grade``.

    Returns:
        ``(image uint8 RGB [S, S, 3], details)``: ``details`` holds ``eye`` (``"OD"``/``"OS"``), ``fov`` and
        ``disc`` ``(cx, cy, r)`` in pixels, and the lesion ``counts``.
    """
    import cv2

    eye = _draw_eye(rng, size, clip_fraction)
    img = _fundus_background(rng, eye)
    veins, arteries = _vessels(rng, eye)
    img *= 1 - 0.5 * veins[..., None] * np.array([0.45, 0.75, 0.7], np.float32)
    img *= 1 - 0.35 * arteries[..., None] * np.array([0.3, 0.7, 0.7], np.float32)
    counts = _paint_lesions(rng, img, eye, grade)
    img *= rng.uniform(0.8, 1.1)
    cx, cy, r = eye.fov
    yy, xx = np.mgrid[0:size, 0:size]
    field = (1 / (1 + np.exp(np.clip((np.hypot(xx - cx, yy - cy) - r) * 1.5, -30, 30)))).astype(np.float32)
    img = cv2.GaussianBlur(img * field[..., None], (0, 0), 0.6)
    img += rng.normal(0, 2.0, img.shape).astype(np.float32) + 3.0 * (1 - field[..., None])
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out, {"eye": "OD" if eye.right_eye else "OS", "fov": eye.fov, "disc": eye.disc, "counts": counts}


def _check_fundus_args(n: int, size: int, fmt: str, grade_probs: Sequence[float] | None) -> np.ndarray:
    if n < 1:
        raise ConfigError(f"synth fundus: need n >= 1, got {n}")
    if size < 64:
        raise ConfigError(f"synth fundus: size must be >= 64 pixels, got {size}")
    if fmt not in ("png", "jpg"):
        raise ConfigError(f"synth fundus: fmt must be 'png' or 'jpg', got {fmt!r}")
    probs = np.full(5, 0.2) if grade_probs is None else np.asarray(grade_probs, dtype=np.float64)
    if probs.shape != (5,) or (probs < 0).any() or probs.sum() <= 0:
        raise ConfigError(f"synth fundus: grade_probs must be 5 non-negative weights, got {grade_probs}")
    return probs / probs.sum()


def synth_fundus(
    out: str | os.PathLike[str],
    *,
    n: int = 64,
    seed: int = 0,
    size: int = 256,
    fmt: str = "png",
    clip_fraction: float = 0.25,
    grade_probs: Sequence[float] | None = None,
    progress: ProgressFn | None = None,
) -> SynthSummary:
    """Write ``n`` synthetic colour fundus photographs with DR grades (see the module docstring).

    Args:
        out: Output folder (created). Existing files of the same names are replaced.
        n: Number of photographs.
        seed: Seed; photograph ``k`` depends only on ``(seed, k)``.
        size: Image side in pixels.
        fmt: ``"png"`` or ``"jpg"`` (quality 95).
        clip_fraction: Share of photographs whose field of view is cut by the frame.
        grade_probs: Weights of grades 0-4 (default uniform).
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        A :class:`~medvit.shared.data.synth.SynthSummary` with counts ``images`` and ``grade_0`` .. ``grade_4``.

    Raises:
        ConfigError: An argument out of range.
    """
    import cv2

    _check_seed(seed)
    probs = _check_fundus_args(n, size, fmt, grade_probs)
    root = Path(out)
    start = time.perf_counter()
    files, labels, lesions = [], [], []
    for k in range(n):
        rng = _rng(seed, 0, k)
        grade = int(rng.choice(5, p=probs))
        img, det = render_fundus(rng, size, grade, clip_fraction)
        rel = f"fundus/fundus_{k:05d}.{fmt}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
        ok, buf = cv2.imencode(f".{fmt}", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
        if not ok:  # pragma: no cover - opencv encodes any uint8 RGB image
            raise RuntimeError("image encoding failed")
        _write(root, rel, buf.tobytes())
        files.append(rel)
        labels.append([rel, grade])
        c = det["counts"]
        lesions.append([rel, grade, det["eye"], *(f"{v:.1f}" for v in (*det["fov"], *det["disc"][:2]))]
                       + [c.get(name, 0) for name in _LESION_NAMES])  # fmt: skip
        if progress is not None:
            progress(k + 1, n)
    _write(root, "labels.csv", _csv_text(["path", "grade"], labels).encode())
    header = ["path", "grade", "eye", "fov_cx", "fov_cy", "fov_r", "disc_x", "disc_y", *_LESION_NAMES]
    _write(root, "lesions.csv", _csv_text(header, lesions).encode())
    files += ["labels.csv", "lesions.csv"]
    counts = {"images": n, **{f"grade_{g}": sum(1 for row in labels if row[1] == g) for g in range(5)}}
    params_out = {"seed": int(seed), "n": n, "size": size, "fmt": fmt, "clip_fraction": clip_fraction}
    seconds = time.perf_counter() - start
    logger.info("synth fundus: %d photographs in %s (%.1f s)", n, root, seconds)
    return SynthSummary("fundus", root, counts, params_out, tuple(files), seconds)


_LESION_NAMES = ("microaneurysms", "haemorrhages", "exudates", "cotton_wool", "neovascularisation")


# ----------------------------------------------------------------------------------------------------------
# OCT

# Reflectivity of the layers from the vitreous down (index = number of boundaries above the voxel).
_LAYER_NAMES = ("vitreous", "RNFL", "GCL", "IPL", "INL", "OPL", "ONL", "ELM", "EZ", "OS", "RPE", "choroid", "sclera")
_REFLECTIVITY = np.array([0.04, 0.78, 0.42, 0.58, 0.22, 0.55, 0.16, 0.45, 0.88, 0.32, 0.95, 0.55, 0.18], np.float32)
# Thickness (fraction of the depth) of the layers between the boundaries, and how much of it the fovea removes.
_THICKNESS = np.array([0.035, 0.05, 0.045, 0.035, 0.025, 0.06, 0.008, 0.015, 0.025, 0.03, 0.14], np.float32)
_FOVEAL_THINNING = np.array([0.95, 0.9, 0.9, 0.8, 0.6, -0.3, 0, 0, 0, 0, 0], np.float32)
_RPE = 9  # boundary index of the RPE's top: boundaries 0..8 lie above it, 10 (RPE bottom) and 11 below


def _oct_surfaces(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Layer boundaries ``[K, W, S]`` as depths in rows (increasing downwards) and the foveal weight ``[W, S]``.

    The RPE is the smooth reference: a bowl (deeper at the centre, as the globe's curvature shows in a macular scan),
    tilted a little. The inner layers stack upwards from it and thin out at the fovea, so the inner surface dips
    into the foveal pit while the outer layers stay smooth.
    """
    h, w, s = shape
    xn = np.linspace(-1, 1, w, dtype=np.float32)[:, None]
    sn = np.linspace(-1, 1, s, dtype=np.float32)[None, :]
    fx, fs = rng.normal(0, 0.08), rng.normal(0, 0.08)
    r2 = (xn - fx) ** 2 + (sn - fs) ** 2
    fovea = np.exp(-r2 / (2 * rng.uniform(0.12, 0.18) ** 2))
    rpe_top = h * (0.62 - rng.uniform(0.04, 0.1) * r2 + rng.normal(0, 0.03) * xn + rng.normal(0, 0.03) * sn)
    thick = _THICKNESS[:, None, None] * h * (1 - _FOVEAL_THINNING[:, None, None] * fovea[None])
    above = np.cumsum(thick[:_RPE][::-1], axis=0)[::-1]  # distance of boundary k (k < RPE) above the RPE's top
    below = np.cumsum(thick[_RPE:], axis=0)  # the bottoms of the RPE and of the choroid
    bounds = np.concatenate([rpe_top[None] - above, rpe_top[None], rpe_top[None] + below], axis=0)
    return bounds.astype(np.float32), fovea.astype(np.float32)


def _ellipsoids(rng: np.random.Generator, shape: tuple[int, int, int], k: int, centre_depth: np.ndarray,
                radii: tuple[float, float, float], spread: float) -> np.ndarray:  # fmt: skip
    """Union of ``k`` ellipsoids near the fovea whose centres sit at ``centre_depth[x, s]`` (rows)."""
    h, w, s = shape
    z = np.arange(h, dtype=np.float32)[:, None, None]
    x = np.arange(w, dtype=np.float32)[None, :, None]
    y = np.arange(s, dtype=np.float32)[None, None, :]
    out = np.zeros(shape, bool)
    for _ in range(k):
        cx = int(np.clip(w / 2 + rng.normal(0, spread * w), 0, w - 1))
        cs = int(np.clip(s / 2 + rng.normal(0, spread * s), 0, s - 1))
        cz = float(centre_depth[cx, cs])
        a = [rad * rng.uniform(0.7, 1.3) for rad in radii]
        out |= ((z - cz) / (a[0] * h)) ** 2 + ((x - cx) / (a[1] * w)) ** 2 + ((y - cs) / (a[2] * s)) ** 2 < 1
    return out


def render_oct(rng: np.random.Generator, shape: tuple[int, int, int], label: int) -> np.ndarray:
    """Draw one OCT volume of class ``label`` (index into :data:`OCT_CLASSES`); uint8 ``[rows, cols, slices]``."""
    h, w, s = shape
    bounds, _ = _oct_surfaces(rng, shape)
    if label == 2:  # drusen: lift the RPE and what lies above it, fill the space with medium material
        xn = np.linspace(-1, 1, w, dtype=np.float32)[:, None]
        sn = np.linspace(-1, 1, s, dtype=np.float32)[None, :]
        lift = np.zeros((w, s), np.float32)
        for _ in range(int(rng.integers(3, 9))):
            cx, cs, rad = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.08, 0.18)
            lift += rng.uniform(0.05, 0.09) * h * np.exp(-((xn - cx) ** 2 + (sn - cs) ** 2) / (2 * rad**2))
        bruch = bounds[10].copy()  # the RPE's lower edge stays: Bruch's membrane
        bounds[:11] -= lift[None]
    z = np.arange(h, dtype=np.float32)[:, None, None]
    layer = (z[None] > bounds[:, None]).sum(axis=0)  # [H, W, S]: boundaries above each voxel
    vol = _REFLECTIVITY[layer]
    if label == 2:
        vol = np.where((z > bounds[10][None]) & (z <= bruch[None]), np.float32(0.35), vol)  # medium reflective
    elif label == 1:  # fluid: cysts in the INL/ONL, sometimes subretinal fluid under the photoreceptors
        cysts = _ellipsoids(rng, shape, int(rng.integers(1, 4)), (bounds[4] + bounds[6]) / 2, (0.04, 0.08, 0.12), 0.12)
        vol = np.where(cysts & (z > bounds[3][None]) & (z < bounds[7][None]), np.float32(0.03), vol)
        if rng.random() < 0.5:
            dome = _ellipsoids(rng, shape, 1, bounds[9], (0.035, 0.18, 0.25), 0.05)
            vol = np.where(dome & (z > bounds[7][None]) & (z < bounds[9][None]), np.float32(0.03), vol)
    speckle = rng.gamma(4.0, 0.25, size=vol.shape).astype(np.float32)  # unit mean, fully developed speckle
    vol = vol * speckle * rng.uniform(0.85, 1.1) + rng.normal(0, 0.03, vol.shape).astype(np.float32)
    return np.clip(np.rint(vol * 200.0), 0, 255).astype(np.uint8)


def _nifti_gz(vol: np.ndarray, spacing: Sequence[float]) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(vol, np.diag([*spacing, 1.0]))
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm", "sec")
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def synth_oct(
    out: str | os.PathLike[str],
    *,
    n: int = 16,
    seed: int = 0,
    shape: Sequence[int] = (64, 64, 32),
    bscan_folders: bool = False,
    progress: ProgressFn | None = None,
) -> SynthSummary:
    """Write ``n`` synthetic OCT volumes classed normal / fluid / drusen (see the module docstring).

    Args:
        out: Output folder (created). Existing files of the same names are replaced.
        n: Number of volumes (classes drawn uniformly).
        seed: Seed; volume ``k`` depends only on ``(seed, k)``.
        shape: ``(rows, cols, slices)``, each at least 16.
        bscan_folders: Also write each volume as a folder of numbered B-scan PNGs.
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        A :class:`~medvit.shared.data.synth.SynthSummary` with counts ``volumes`` and one per class.

    Raises:
        ConfigError: An argument out of range.
    """
    import cv2

    _check_seed(seed)
    if n < 1 or len(shape) != 3 or any(int(v) < 16 for v in shape):
        raise ConfigError(f"synth oct: need n >= 1 and shape of 3 sizes >= 16, got n={n}, shape={tuple(shape)}")
    shp = (int(shape[0]), int(shape[1]), int(shape[2]))
    spacing = tuple(e / v for e, v in zip(OCT_EXTENT_MM, shp, strict=True))
    root = Path(out)
    start = time.perf_counter()
    files, rows = [], []
    for k in range(n):
        rng = _rng(seed, 0, k)
        label = int(rng.integers(0, 3))
        vol = render_oct(rng, shp, label)
        rel = f"volumes/oct_{k:03d}.nii.gz"
        _write(root, rel, _nifti_gz(vol, spacing))
        files.append(rel)
        row = [rel, OCT_CLASSES[label], label]
        if bscan_folders:
            folder = f"bscans/oct_{k:03d}"
            for j in range(shp[2]):
                ok, buf = cv2.imencode(".png", vol[:, :, j], [cv2.IMWRITE_PNG_COMPRESSION, 1])
                _write(root, f"{folder}/{j + 1}.png", buf.tobytes())
            files.append(folder)
            row.append(folder)
        rows.append(row)
        if progress is not None:
            progress(k + 1, n)
    header = ["path", "label", "label_id"] + (["bscans"] if bscan_folders else [])
    _write(root, "labels.csv", _csv_text(header, rows).encode())
    files.append("labels.csv")
    counts = {"volumes": n, **{c: sum(1 for r in rows if r[1] == c) for c in OCT_CLASSES}}
    params = {"seed": int(seed), "n": n, "shape": list(shp), "spacing": [round(v, 6) for v in spacing]}
    params["bscan_folders"] = bscan_folders
    seconds = time.perf_counter() - start
    logger.info("synth oct: %d volumes in %s (%.1f s)", n, root, seconds)
    return SynthSummary("oct", root, counts, params, tuple(files), seconds)


def clear_eye_outputs(kind: str, out: str | os.PathLike[str]) -> list[str]:
    """Remove what a previous ``synth_fundus`` (``kind="fundus"``) or ``synth_oct`` (``"oct"``) may have written.

    Returns:
        Names removed (relative to ``out``).
    """
    owned = {"fundus": FUNDUS_OWNED, "oct": OCT_OWNED}.get(kind)
    if owned is None:
        raise ConfigError(f"unknown synth kind {kind!r}; expected fundus or oct")
    return remove_owned(Path(out), owned)
