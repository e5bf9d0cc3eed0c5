"""Synthetic H&E nucleus tiles in the PanNuke release format (Gamper et al., "PanNuke: an open pan-cancer
histology dataset for nuclei instance segmentation and classification", ECDP 2019; "PanNuke dataset extension,
insights and baselines", arXiv:2003.10778).

Tiles look like 40x H&E fields (0.25 um/px): a pink eosin background with collagen fibres, uneven density and
pale gaps, and purple hematoxylin nuclei of the five PanNuke classes, each with its own size, shape, colour and
chromatin (neoplastic: large, irregular, pale vesicular chromatin with a dark rim and nucleoli; inflammatory:
small, round, dense; connective: spindles aligned with the fibres; dead: small, dark, lobulated, with an
eosinophilic halo; epithelial: medium ovals lining gland-like rings around a pale lumen). Nuclei touch and
overlap: a later nucleus occludes an earlier one in the instance map (the image shows both, darker where they
overlap), and a nucleus is only placed if every nucleus it covers keeps at least half of its area. Colour is
formed in optical density (Beer-Lambert, Ruifrok & Johnston 2001) from two stain vectors (Macenko et al. 2009
reference values) jittered per tile, then blurred and given sensor noise. Each tile has a tissue label; the
tissues differ in nucleus density and class mix.

Written files (``F`` folds; tile ``k`` goes to fold ``k % F + 1`` at index ``k // F``, so tile ``k`` is the same
whatever ``n``)::

    out/Fold 1/images/fold1/images.npy   float64 [N, S, S, 3], integral values 0..255 (RGB)
    out/Fold 1/images/fold1/types.npy    unicode [N] tissue names (PanNuke spelling)
    out/Fold 1/masks/fold1/masks.npy     float64 [N, S, S, 6]: channels 0-4 instance ids of the classes
                                         Neoplastic, Inflammatory, Connective, Dead, Epithelial; 5 background (1/0)
    out/large/large_000.png + .npz       with ``large=K``: RGB images of 640x768 px and their labels
                                         (inst_map int32, type_map uint8), for tiling tests and demos

The release's arrays are float64 (which is why CellViT's converter casts the images to uint8); the generator
writes the same dtypes, so ``medvit cell prepare pannuke`` meets real-release arrays. Instance ids are unique per
tile across the five channels (they are the drawing order, not contiguous per channel).

Arrays are written into memory-mapped ``.npy`` files under temporary names and renamed when complete, so a fold
never holds more than one tile in memory and a reader never sees half a file.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvit.shared.data.cell_format import PANNUKE_NUCLEI_TYPES
from medvit.shared.data.synth import SynthSummary, _check_seed, _rng
from medvit.shared.errors import ConfigError
from medvit.shared.files import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["LARGE_SHAPE", "TISSUE_PROFILES", "clear_cells_outputs", "draw_cells_image", "synth_cells"]

ProgressFn = Callable[[int, int], None]

LARGE_SHAPE: tuple[int, int] = (640, 768)
"""(height, width) of the ``large`` images."""

_STAIN_H = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)  # hematoxylin OD per unit concentration (RGB)
_STAIN_E = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)  # eosin


@dataclass(frozen=True)
class TissueProfile:
    """How a tissue's tiles differ: nuclei per 256x256 px and the class mix (Neoplastic ... Epithelial).

    Attributes:
        name: PanNuke tissue name.
        weight: Relative frequency among the synthetic tiles.
        density: Mean nuclei per 256x256 px.
        mix: Probabilities of the 5 classes.
        glands: Mean number of gland-like epithelial rings per 256x256 px.
    """

    name: str
    weight: float
    density: float
    mix: tuple[float, float, float, float, float]
    glands: float


TISSUE_PROFILES: tuple[TissueProfile, ...] = (
    TissueProfile("Breast", 0.35, 46.0, (0.62, 0.12, 0.20, 0.06, 0.00), 0.0),
    TissueProfile("Colon", 0.25, 44.0, (0.05, 0.30, 0.17, 0.03, 0.45), 1.6),
    TissueProfile("Skin", 0.15, 34.0, (0.00, 0.20, 0.35, 0.02, 0.43), 0.6),
    TissueProfile("Uterus", 0.15, 28.0, (0.00, 0.12, 0.73, 0.00, 0.15), 0.4),
    TissueProfile("Lung", 0.10, 30.0, (0.33, 0.34, 0.15, 0.18, 0.00), 0.0),
)
"""Synthetic tissues (a subset of PanNuke's 19 names). Unequal weights, densities and mixes exercise the tissue and
class balancing of the sampler; the numbers are plausible, not measured."""


@dataclass(frozen=True)
class _Kind:
    """Appearance of one nucleus class. Lengths in pixels at 0.25 um/px."""

    major: tuple[float, float]  # semi-major axis range
    aspect: tuple[float, float]  # minor / major
    irregular: float  # amplitude of the boundary's low harmonics (relative radius)
    hema: tuple[float, float]  # hematoxylin concentration
    texture: float  # chromatin clumping (relative)
    rim: float  # darker nuclear membrane (relative)
    nucleolus: float  # probability of a dark nucleolus


_KINDS: dict[int, _Kind] = {
    1: _Kind((9.0, 14.0), (0.70, 0.95), 0.10, (0.42, 0.62), 0.45, 0.45, 0.7),  # neoplastic
    2: _Kind((4.5, 6.5), (0.85, 1.00), 0.03, (1.10, 1.40), 0.08, 0.00, 0.0),  # inflammatory
    3: _Kind((11.0, 18.0), (0.22, 0.35), 0.04, (0.70, 0.95), 0.12, 0.05, 0.0),  # connective
    4: _Kind((3.5, 5.5), (0.60, 0.95), 0.22, (1.45, 1.85), 0.05, 0.00, 0.0),  # dead
    5: _Kind((7.0, 9.5), (0.55, 0.75), 0.04, (0.62, 0.85), 0.18, 0.12, 0.1),  # epithelial
}


# ----------------------------------------------------------------------------------------------------------
# drawing


class _Canvas:
    """Stain concentrations and labels of one image while nuclei are drawn into it."""

    def __init__(self, shape: tuple[int, int], rng: np.random.Generator) -> None:
        import cv2

        self.shape = shape
        self.hema = np.full(shape, 0.04, dtype=np.float32)
        self.eosin = np.zeros(shape, dtype=np.float32)
        self.inst = np.zeros(shape, dtype=np.int32)
        self.types: list[int] = [0]  # type of id k at index k
        self.areas: list[int] = [0]  # drawn area of id k
        self.visible: list[int] = [0]  # area of id k not covered by later nuclei
        noise = rng.standard_normal(shape, dtype=np.float32)
        tex = cv2.GaussianBlur(noise, (0, 0), 1.1)
        self.texture = tex / max(float(tex.std()), 1e-6)  # fine chromatin noise, unit variance

    def crop(self, cy: float, cx: float, half: int) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Slices of the box of half-size ``half`` around (cy, cx), and the pixel offsets from the centre."""
        h, w = self.shape
        r0, r1 = max(0, int(cy) - half), min(h, int(cy) + half + 1)
        c0, c1 = max(0, int(cx) - half), min(w, int(cx) + half + 1)
        dy = (np.arange(r0, r1, dtype=np.float32) - np.float32(cy))[:, None]
        dx = (np.arange(c0, c1, dtype=np.float32) - np.float32(cx))[None, :]
        return slice(r0, r1), slice(c0, c1), dy, dx


def _background(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Eosin concentration of the stroma: uneven density, fibres along one direction, pale gaps.

    Returns:
        ``(eosin [H, W] float32, fibre angle in radians)``.
    """
    import cv2

    h, w = shape
    angle = float(rng.uniform(0, math.pi))
    low = cv2.resize(rng.standard_normal((max(2, h // 32), max(2, w // 32))).astype(np.float32), (w, h))
    base = float(rng.uniform(0.22, 0.38)) * (1.0 + 0.22 * low)
    fib = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), sigmaX=7.0, sigmaY=1.2)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), math.degrees(angle), 1.0)
    fib = cv2.warpAffine(fib, rot, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    fib = np.maximum(fib / max(float(fib.std()), 1e-6), 0.0)
    coarse = rng.standard_normal((max(2, h // 40), max(2, w // 40)), dtype=np.float32)
    gaps = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    gaps = cv2.GaussianBlur(gaps, (0, 0), 6.0)
    pale = np.clip((gaps - 0.9) * 3.0, 0.0, 0.85)  # a few white spaces (fat, tears)
    eosin = (base + float(rng.uniform(0.06, 0.12)) * fib) * (1.0 - pale)
    return eosin.astype(np.float32), angle


def _shape_of(kind: _Kind, rng: np.random.Generator) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Semi-axes and the boundary's harmonic amplitudes/phases (orders 2, 3, 4, 5)."""
    a = float(rng.uniform(*kind.major))
    b = a * float(rng.uniform(*kind.aspect))
    amps = kind.irregular * rng.uniform(0.3, 1.0, size=4) / np.array([1.0, 1.3, 1.7, 2.2])
    phases = rng.uniform(0, 2 * math.pi, size=4)
    return a, b, amps.astype(np.float32), phases.astype(np.float32)


def _place(canvas: _Canvas, t: int, cy: float, cx: float, angle: float, rng: np.random.Generator) -> bool:
    """Draw one nucleus of type ``t`` centred at (cy, cx) with its major axis at ``angle``; False if refused.

    Refused when it would leave a nucleus it covers with less than half of its drawn area, or when it would be
    smaller than 6 px in the image.
    """
    kind = _KINDS[t]
    a, b, amps, phases = _shape_of(kind, rng)
    rows, cols, dy, dx = canvas.crop(cy, cx, int(math.ceil(a * (1.0 + 2 * float(amps.sum())))) + 3)
    ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = (dx * ca + dy * sa) / np.float32(a)
    v = (-dx * sa + dy * ca) / np.float32(b)
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    edge = np.ones_like(phi)
    for order, (amp, ph) in enumerate(zip(amps, phases, strict=True), start=2):
        edge += amp * np.cos(order * phi + ph)
    d = rho / edge  # < 1 inside
    inside = d < 1.0
    area = int(np.count_nonzero(inside))
    if area < 6:
        return False
    covered = canvas.inst[rows, cols][inside]
    covered = covered[covered > 0]
    ids, lost = np.unique(covered, return_counts=True)
    if ids.size:
        visible = np.asarray(canvas.visible)[ids] - lost
        if np.any(visible < 0.5 * np.asarray(canvas.areas)[ids]):
            return False
    _paint_nucleus(canvas, kind, t, rows, cols, d, min(a, b), rng)
    new_id = len(canvas.types)
    canvas.inst[rows, cols][inside] = new_id
    canvas.types.append(t)
    canvas.areas.append(area)
    canvas.visible.append(area)
    for i, n_lost in zip(ids.tolist(), lost.tolist(), strict=True):
        canvas.visible[i] -= n_lost
    return True


def _paint_nucleus(
    canvas: _Canvas,
    kind: _Kind,
    t: int,
    rows: slice,
    cols: slice,
    d: np.ndarray,
    minor: float,
    rng: np.random.Generator,
) -> None:
    """Blend the nucleus' hematoxylin (chromatin texture, rim, nucleolus) and eosin changes into the canvas."""
    alpha = np.clip((1.0 - d) * np.float32(minor) + 0.5, 0.0, 1.0)  # about one pixel of soft edge
    h0 = float(rng.uniform(*kind.hema))
    tex = canvas.texture[rows, cols]
    nuc = h0 * (1.0 + kind.texture * np.clip(tex, -2.0, 2.5))
    if kind.rim:
        nuc = nuc + kind.rim * h0 * np.clip((d - 0.72) / 0.28, 0.0, 1.0)
    if rng.random() < kind.nucleolus:
        # an eccentric dark dot about 1/5 of the nucleus wide, where d is small
        spot = np.clip(1.0 - np.abs(d - float(rng.uniform(0.1, 0.4))) * 6.0, 0.0, 1.0)
        nuc = nuc + 0.9 * spot * (tex > 0.3)
    h_old = canvas.hema[rows, cols]
    # 35 % of whatever lies below stays: overlapping nuclei look darker, their border stays visible
    canvas.hema[rows, cols] = h_old * (1.0 - 0.65 * alpha) + alpha * nuc
    e_old = canvas.eosin[rows, cols]
    if t == 4:  # apoptotic body: eosinophilic halo around a pyknotic nucleus
        halo = np.clip((1.9 - d) / 0.9, 0.0, 1.0) * (d >= 1.0)
        e_old = e_old + 0.35 * halo
    canvas.eosin[rows, cols] = e_old * (1.0 - 0.5 * alpha)


def _gland(canvas: _Canvas, rng: np.random.Generator) -> None:
    """A ring of touching epithelial nuclei, radially oriented, around a pale lumen with denser cytoplasm."""
    h, w = canvas.shape
    radius = float(rng.uniform(22.0, 40.0))
    cy, cx = float(rng.uniform(0, h)), float(rng.uniform(0, w))
    rows, cols, dy, dx = canvas.crop(cy, cx, int(radius + 20))
    dist = np.sqrt(dy * dy + dx * dx)
    lumen = np.clip((radius - 9.0 - dist) / 4.0, 0.0, 1.0)
    cyto = np.clip(1.0 - np.abs(dist - radius + 2.0) / 12.0, 0.0, 1.0)
    canvas.eosin[rows, cols] = canvas.eosin[rows, cols] * (1.0 - 0.85 * lumen) + 0.22 * cyto
    minor = float(np.mean(_KINDS[5].major) * np.mean(_KINDS[5].aspect))
    n = max(5, int(2 * math.pi * radius / (1.85 * minor)))  # spacing just under two minor axes: touching
    start = float(rng.uniform(0, 2 * math.pi))
    for j in range(n):
        phi = start + 2 * math.pi * j / n + float(rng.normal(0, 0.04))
        r = radius + float(rng.normal(0, 1.5))
        _place(canvas, 5, cy + r * math.sin(phi), cx + r * math.cos(phi), phi + float(rng.normal(0, 0.15)), rng)


def _scatter(canvas: _Canvas, t: int, count: int, fibre: float, rng: np.random.Generator) -> None:
    """Place ``count`` nuclei of type ``t``: neoplastic in dense sheets, inflammatory partly in aggregates,
    connective along the fibres, the rest uniformly."""
    h, w = canvas.shape
    centres = rng.uniform((0, 0), (h, w), size=(max(1, count // 12 + 1), 2))
    for _ in range(count):
        for _attempt in range(6):
            if t == 1 or (t == 2 and rng.random() < 0.5) or (t == 4 and rng.random() < 0.3):
                c = centres[int(rng.integers(len(centres)))]
                spread = 34.0 if t == 1 else 16.0
                cy, cx = rng.normal(c[0], spread), rng.normal(c[1], spread)
            else:
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            angle = fibre + float(rng.normal(0, 0.25)) if t == 3 else float(rng.uniform(0, math.pi))
            if _place(canvas, t, float(np.clip(cy, 0, h - 1)), float(np.clip(cx, 0, w - 1)), angle, rng):
                break


def _render(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Stain concentrations -> RGB uint8 through Beer-Lambert, with per-image stain jitter, blur and noise."""
    import cv2

    vh = _STAIN_H * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    ve = _STAIN_E * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    sh, se = float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15))
    od = (sh * canvas.hema)[..., None] * vh + (se * canvas.eosin)[..., None] * ve
    rgb = 245.0 * np.exp(np.float32(-math.log(10.0)) * od)  # 245: a slightly grey light source, as scanned
    rgb = cv2.GaussianBlur(rgb, (0, 0), float(rng.uniform(0.5, 0.9)))
    rgb += np.float32(rng.uniform(1.5, 3.5)) * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _pick_profile(rng: np.random.Generator) -> TissueProfile:
    weights = np.array([p.weight for p in TISSUE_PROFILES])
    return TISSUE_PROFILES[int(rng.choice(len(TISSUE_PROFILES), p=weights / weights.sum()))]


def draw_cells_image(
    rng: np.random.Generator, shape: tuple[int, int], profile: TissueProfile | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Draw one synthetic H&E image.

    Args:
        rng: The image's random stream.
        shape: ``(height, width)``.
        profile: Tissue to draw; drawn from :data:`TISSUE_PROFILES` by weight when None.

    Returns:
        ``(rgb uint8 [H, W, 3], inst_map int32 [H, W] with ids in drawing order (occluded ones may be missing),
        type_map uint8 [H, W] (0 background, 1..5 PanNuke classes), tissue name)``.
    """
    if profile is None:
        profile = _pick_profile(rng)
    canvas = _Canvas(shape, rng)
    canvas.eosin, fibre = _background(shape, rng)
    scale = shape[0] * shape[1] / 256.0**2
    for _ in range(int(rng.poisson(profile.glands * scale))):
        _gland(canvas, rng)
    counts = rng.multinomial(int(rng.poisson(profile.density * scale)), profile.mix)
    order = [3, 2, 1, 4, 5]  # stroma first, then cells that lie on it
    for t in order:
        _scatter(canvas, t, int(counts[t - 1]), fibre, rng)
    rgb = _render(canvas, rng)
    types = np.asarray(canvas.types, dtype=np.uint8)[canvas.inst]
    return rgb, canvas.inst, types, profile.name


def _release_masks(inst: np.ndarray, types: np.ndarray) -> np.ndarray:
    """PanNuke release mask [H, W, 6] float64: per-class instance ids in channels 0-4, background flag in 5."""
    out = np.zeros((*inst.shape, 6), dtype=np.float64)
    for c in range(5):
        sel = types == c + 1
        out[..., c][sel] = inst[sel]
    out[..., 5] = inst == 0
    return out


# ----------------------------------------------------------------------------------------------------------
# writing


def _check_args(n: int, size: int, folds: int, large: int) -> None:
    if folds < 1 or n < folds:
        raise ConfigError(f"synth cells: need folds >= 1 and n >= folds (one tile per fold), got n={n}, folds={folds}")
    if size < 64 or size % 16:
        raise ConfigError(f"synth cells: size must be a multiple of 16 and >= 64 px (ViT patches), got {size}")
    if large < 0:
        raise ConfigError(f"synth cells: large must be >= 0, got {large}")


def _fold_paths(root: Path, fold: int) -> tuple[Path, Path, Path]:
    base = root / f"Fold {fold}"
    img_dir = base / "images" / f"fold{fold}"
    mask_dir = base / "masks" / f"fold{fold}"
    return img_dir / "images.npy", img_dir / "types.npy", mask_dir / "masks.npy"


def _write_fold(
    root: Path, fold: int, tiles: list[int], seed: int, size: int, step: Callable[[], None]
) -> tuple[list[str], dict[str, int]]:
    """Draw the tiles of one fold straight into memory-mapped ``.npy`` files; returns paths and class counts."""
    from numpy.lib.format import open_memmap

    img_path, types_path, mask_path = _fold_paths(root, fold)
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    tissues: list[str] = []
    counts = dict.fromkeys(PANNUKE_NUCLEI_TYPES[1:], 0)
    with atomic_path(img_path, fsync=False) as img_tmp, atomic_path(mask_path, fsync=False) as mask_tmp:
        images = open_memmap(img_tmp, mode="w+", dtype=np.float64, shape=(len(tiles), size, size, 3))
        masks = open_memmap(mask_tmp, mode="w+", dtype=np.float64, shape=(len(tiles), size, size, 6))
        for i, k in enumerate(tiles):
            rgb, inst, types, tissue = draw_cells_image(_rng(seed, 10, k), (size, size))
            images[i] = rgb
            masks[i] = _release_masks(inst, types)
            tissues.append(tissue)
            for c, name in enumerate(PANNUKE_NUCLEI_TYPES[1:], start=1):
                counts[name] += int(np.unique(inst[types == c]).size)
            step()
        images.flush()
        masks.flush()
        del images, masks  # close the maps before the rename
    with atomic_path(types_path, fsync=False) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(tissues, dtype=f"<U{max(13, *map(len, tissues))}"))
    rel = [p.relative_to(root).as_posix() for p in (img_path, types_path, mask_path)]
    return rel, counts


def _write_large(root: Path, k: int, seed: int) -> list[str]:
    import cv2

    from medvit.shared.files import write_bytes_atomic

    rgb, inst, types, tissue = draw_cells_image(_rng(seed, 11, k), LARGE_SHAPE)
    name = f"large_{k:03d}"
    folder = root / "large"
    folder.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - opencv fails only on invalid arrays
        raise RuntimeError("cv2.imencode failed")
    write_bytes_atomic(folder / f"{name}.png", png.tobytes(), fsync=False)
    with atomic_path(folder / f"{name}.npz", fsync=False) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, inst_map=inst, type_map=types)
    logger.debug("synth cells %s: %s, %d nuclei", name, tissue, int(np.unique(inst).size) - 1)
    return [f"large/{name}.png", f"large/{name}.npz"]


def synth_cells(
    out: str | os.PathLike[str],
    *,
    n: int = 64,
    seed: int = 0,
    size: int = 256,
    folds: int = 3,
    large: int = 0,
    progress: ProgressFn | None = None,
) -> SynthSummary:
    """Write synthetic H&E nucleus tiles in the PanNuke release layout (see the module docstring).

    Args:
        out: Output folder (created). Existing files of the same names are replaced.
        n: Number of tiles over all folds (>= ``folds``).
        seed: Seed; tile ``k`` depends only on ``(seed, k)`` and large image ``k`` on ``(seed, k)``.
        size: Tile side in pixels (multiple of 16, >= 64; PanNuke's is 256).
        folds: Number of folds (PanNuke has 3).
        large: Number of extra 640x768 images written to ``out/large/``.
        progress: Optional ``progress(done, total)`` callback, after each tile and large image.

    Returns:
        A :class:`~medvit.shared.data.synth.SynthSummary` (kind ``"cells"``) with counts ``tiles``, ``fold1``..,
        ``large`` and the nuclei per class.

    Raises:
        ConfigError: An argument out of range.
    """
    _check_seed(seed)
    _check_args(n, size, folds, large)
    root = Path(out)
    start = time.perf_counter()
    total = n + large
    done = [0]

    def step() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    files: list[str] = []
    counts: dict[str, int] = {"tiles": n}
    per_class = dict.fromkeys(PANNUKE_NUCLEI_TYPES[1:], 0)
    for f in range(1, folds + 1):
        tiles = list(range(f - 1, n, folds))
        rel, fold_counts = _write_fold(root, f, tiles, seed, size, step)
        files += rel
        counts[f"fold{f}"] = len(tiles)
        for name, c in fold_counts.items():
            per_class[name] += c
    for k in range(large):
        files += _write_large(root, k, seed)
        step()
    counts["large"] = large
    counts.update({name.lower(): c for name, c in per_class.items()})
    params = {"seed": int(seed), "n": n, "size": size, "folds": folds, "large": large}
    seconds = time.perf_counter() - start
    logger.info(
        "synth cells: %d tiles of %d px in %d folds (+%d large) in %s (%.1f s)", n, size, folds, large, root, seconds
    )
    return SynthSummary("cells", root, counts, params, tuple(files), seconds)


_OWNED_DIR = re.compile(r"^Fold \d+$")


def clear_cells_outputs(out: str | os.PathLike[str]) -> list[str]:
    """Remove what :func:`synth_cells` may have written to ``out`` (``Fold N/`` folders and ``large/``).

    Returns:
        Names removed (relative to ``out``).
    """
    root = Path(out)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.iterdir()):
        if (path.name == "large" or _OWNED_DIR.match(path.name)) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(path.name)
    return removed
