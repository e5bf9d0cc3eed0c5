"""Nucleus segmentation data: the prepared dataset, the training tiles with their targets, and weighted sampling.

A prepared dataset (``medvit cell prepare``; layout in :mod:`medvit.shared.data.cell_format`) is read fold by
fold: ``<fold>/images/<name>.png`` with ``<fold>/labels/<name>.npz`` and the tissue of each image from
``<fold>/types.csv``. Images of a fold are taken in the sorted order of their names, and
:func:`sampling_weights` returns one weight per image in the same order.

Augmentation is CellVTA's published recipe (its PanNuke and CoNIC configs, written for albumentations 1.3.0),
in albumentations 2.0.8 names, applied to the image and the masks ``[instance map, type map]`` (geometric
transforms use nearest-neighbour interpolation for masks, so instance ids survive):

==========================================================  ================================================
1.3.0 (CellVTA config)                                      2.0.8 here
==========================================================  ================================================
RandomRotate90 p 0.2; HorizontalFlip p 0.2; VerticalFlip    the same
p 0.2
Blur p 0.2, blur_limit 10 (odd kernels 3..9)                ``Blur(blur_limit=(3, 9))``
GaussNoise p 0.5, var_limit 10 (variance U(0, 10) on the    ``GaussNoise(std_range=(0, sqrt(10) / 255))``: the
0..255 scale)                                               standard deviation is drawn uniformly instead
ColorJitter p 0.2, brightness 0.25, contrast 0.25,          the same arguments
saturation 0.1, hue 0.05
Superpixels p 0.1, p_replace 0.1, n_segments 200,           :class:`SlicSuperpixels` (scikit-image's SLIC as in
max_size 128                                                1.3.0), ``p_replace=(0.1, 0.1)``, ``n_segments=(200, 200)``
ZoomBlur p 0.1, max_factor 1.05                             ``max_factor=(1.0, 1.05)``
RandomSizedCrop p 0.2, min_max_height (128, 256) -> 256     ``min_max_height=(S/2, S)``, ``size=(S, S)``
ElasticTransform p 0.2, sigma 25, alpha 0.5,                ``Sequential([Affine(...), ElasticTransform(alpha=
alpha_affine 15 (a random affine: three points at 1/3 of    0.5, sigma=25)], p=0.2)``; ``alpha_affine`` was
the tile from the centre moved by up to 15 px, then a       removed in 2.x, so a random ``Affine`` of similar
very weak elastic field), border reflect-101                strength (scale 0.9-1.1, rotation and shear up to
                                                            8 and 6 degrees, shift up to 8 px) stands in for it
==========================================================  ================================================

then ``(x / 255 - 0.5) / 0.5`` (the recipe's ``Normalize(0.5, 0.5)``). Reflect-101 borders (1.3.0's default for
the elastic step) mirror nuclei at the border with the same id; after an ``Affine``/``ElasticTransform`` the
instance map is therefore relabelled so that every (8-)connected fragment of an id is its own instance. The HV target
is recomputed from the augmented instance map (:func:`~medvit.apps.cell_seg.targets.hv_map`), as in CellViT's
dataset classes. The pipeline draws from one numpy and one python generator
(:class:`~medvit.shared.data.augment.SeededAlbumentations`) that :meth:`CellTiles.reseed` restarts per sample.

Sampling (CellViT's ``cell+tissue`` strategy, ``cell_segmentation/datasets/pannuke.py``; CellVTA uses gamma
0.85): see :func:`sampling_weights` and :class:`WeightedDraws`.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from medvit.apps.cell_seg.targets import hv_map
from medvit.shared.data.augment import SeededAlbumentations
from medvit.shared.data.cell_format import CellDatasetInfo, load_cell_dataset, read_labels
from medvit.shared.data.io import ReadError, list_folder, read_image
from medvit.shared.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "CellDatasetInfo",
    "CellItem",
    "CellTiles",
    "SlicSuperpixels",
    "WeightedDraws",
    "build_augmentation",
    "list_items",
    "load_cell_dataset",
    "normalise",
    "read_cell_counts",
    "read_labels",
    "read_tissues",
    "sampling_weights",
]

_DRAW_KEY = 0x5EED_D4A7  # mixes the sample seed into WeightedDraws' own stream (independent of the augmentation's)


@dataclass(frozen=True)
class CellItem:
    """One image of a prepared dataset.

    Attributes:
        name: File stem (``"1_0"``).
        fold: Fold folder (``"fold1"``).
        image: The PNG.
        labels: The ``.npz`` labels.
        tissue: Tissue name from ``types.csv``.
    """

    name: str
    fold: str
    image: Path
    labels: Path
    tissue: str


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read ({err})") from None


def _stem(value: str) -> str:
    return value[:-4] if value.lower().endswith(".png") else value


def read_tissues(fold_dir: Path) -> dict[str, str]:
    """``types.csv`` of a fold: image stem -> tissue name.

    Raises:
        DataError: Missing or unreadable file, or without the columns ``img`` and ``tissue``.
    """
    rows = _read_csv(fold_dir / "types.csv")
    if rows and not {"img", "tissue"} <= set(rows[0]):
        raise DataError(f"{fold_dir / 'types.csv'}: expected columns img,tissue, got {','.join(rows[0])}")
    return {_stem(r["img"]): r["tissue"] for r in rows}


def read_cell_counts(fold_dir: Path, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``cell_count.csv`` of a fold: image stem -> instances per class (int64 [C], in ``class_names`` order).

    Raises:
        DataError: Missing or unreadable file, a missing class column, a non-integer count.
    """
    path = fold_dir / "cell_count.csv"
    rows = _read_csv(path)
    if rows and not {"img", *class_names} <= set(rows[0]):
        raise DataError(f"{path}: expected columns img,{','.join(class_names)}, got {','.join(rows[0])}")
    out: dict[str, np.ndarray] = {}
    for n, r in enumerate(rows, start=2):
        try:
            out[_stem(r["img"])] = np.array([int(r[c]) for c in class_names], dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{path} line {n}: counts must be integers") from None
    return out


def list_items(root: str | Path, folds: Sequence[str], info: CellDatasetInfo | None = None) -> list[CellItem]:
    """The images of ``folds`` in order (fold by fold, names sorted), each with its labels and tissue.

    Raises:
        ConfigError: A fold that ``dataset.json`` does not declare.
        DataError: A missing fold folder, an image without labels or without a ``types.csv`` row, a tissue that
            ``dataset.json`` does not declare.
    """
    root = Path(root)
    info = info or load_cell_dataset(root)
    items: list[CellItem] = []
    for fold in folds:
        if fold not in info.folds:
            raise ConfigError(f"fold {fold!r} is not in {root / 'dataset.json'} (folds: {', '.join(info.folds)})")
        fold_dir = root / fold
        tissues = read_tissues(fold_dir)
        try:
            pngs = [p for p in list_folder(fold_dir / "images") if p.suffix.lower() == ".png"]
        except ReadError as err:
            raise DataError(str(err)) from None
        for png in pngs:
            labels = fold_dir / "labels" / f"{png.stem}.npz"
            if not labels.is_file():
                raise DataError(f"{png}: has no labels file {labels}")
            tissue = tissues.get(png.stem)
            if tissue is None:
                raise DataError(f"{fold_dir / 'types.csv'}: no row for {png.name}")
            if tissue not in info.tissue_types:
                raise DataError(f"{fold_dir / 'types.csv'}: tissue {tissue!r} of {png.name} is not in dataset.json")
            items.append(CellItem(png.stem, fold, png, labels, tissue))
    return items


class SlicSuperpixels(A.Superpixels):
    """``albumentations.Superpixels`` with scikit-image's SLIC, as albumentations 1.3.0 used.

    albumentations 2.0.8 segments with a pure-python SLIC that takes about 0.3 s for a 128 px image; scikit-image's
    takes about 20 ms. Parameters and random draws are those of the parent class (segments to replace, drawn
    from the pipeline's generators), and the result is the same idea: each replaced segment takes its mean colour,
    at ``max_size`` resolution, then the image is resized back.
    """

    def apply(self, img: np.ndarray, replace_samples: Sequence[bool], n_segments: int, **kwargs: Any) -> np.ndarray:
        """Replace the selected segments of ``img`` (uint8 ``[H, W, C]``) by their mean colour."""
        import cv2
        from skimage.segmentation import slic

        if not np.any(replace_samples):
            return img
        h, w = img.shape[:2]
        small = img
        if self.max_size is not None and max(h, w) > self.max_size:
            scale = self.max_size / max(h, w)
            small = cv2.resize(img, (int(w * scale), int(h * scale)), interpolation=self.interpolation)
        seg = slic(small, n_segments=n_segments, compactness=10, start_label=0)
        flat = seg.ravel()
        n = int(flat.max()) + 1
        count = np.maximum(np.bincount(flat, minlength=n), 1)
        replace = np.asarray(replace_samples, dtype=bool)[np.arange(n) % len(replace_samples)]
        out = small.reshape(-1, small.shape[-1]).copy()
        pick = replace[flat]
        for c in range(out.shape[1]):
            means = np.rint(np.bincount(flat, weights=out[:, c], minlength=n) / count)
            out[pick, c] = np.clip(means[flat[pick]], 0, 255).astype(out.dtype)
        out = out.reshape(small.shape)
        return out if small is img else cv2.resize(out, (w, h), interpolation=self.interpolation)


def build_augmentation(size: tuple[int, int]) -> SeededAlbumentations:
    """CellVTA's augmentation recipe for tiles of ``size`` = (H, W) in albumentations 2.0.8 (module docstring)."""
    import cv2

    h, w = size
    reflect = cv2.BORDER_REFLECT_101
    pipeline = A.Compose(
        [
            A.RandomRotate90(p=0.2),
            A.HorizontalFlip(p=0.2),
            A.VerticalFlip(p=0.2),
            A.Blur(blur_limit=(3, 9), p=0.2),
            A.GaussNoise(std_range=(0.0, math.sqrt(10.0) / 255.0), p=0.5),
            A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.1, hue=0.05, p=0.2),
            SlicSuperpixels(p_replace=(0.1, 0.1), n_segments=(200, 200), max_size=128, p=0.1),
            A.ZoomBlur(max_factor=(1.0, 1.05), p=0.1),
            A.RandomSizedCrop(min_max_height=(h // 2, h), size=(h, w), w2h_ratio=w / h, p=0.2),
            A.Sequential(
                [
                    A.Affine(
                        scale=(0.9, 1.1), rotate=(-8, 8), shear=(-6, 6), translate_px=(-8, 8), border_mode=reflect, p=1
                    ),
                    A.ElasticTransform(alpha=0.5, sigma=25, border_mode=reflect, p=1),
                ],
                p=0.2,
            ),
        ],
        save_applied_params=True,  # tells __getitem__ whether a reflecting warp ran
    )
    return SeededAlbumentations(pipeline)


def normalise(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` as ``(x / 255 - 0.5) / 0.5`` (values in [-1, 1])."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    return x.div_(127.5).sub_(1.0)


class CellTiles(Dataset):
    """Training/evaluation tiles of a prepared dataset with CellVTA's targets.

    Args:
        root: The prepared dataset folder.
        folds: Fold folders to read (``["fold1"]``).
        augment: Apply the augmentation recipe (module docstring); False gives the normalised image only.
        info: The parsed ``dataset.json`` (read from ``root`` when None).
        limit: Keep at most this many images, evenly spaced over the folds' order (a quick validation subset
            that still covers every fold and tissue); None keeps all.

    Raises:
        ConfigError, DataError: See :func:`list_items`.
    """

    def __init__(
        self,
        root: str | Path,
        folds: Sequence[str],
        *,
        augment: bool,
        info: CellDatasetInfo | None = None,
        limit: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.info = info or load_cell_dataset(self.root)
        self.folds = tuple(folds)
        self.items = list_items(self.root, self.folds, self.info)
        if limit is not None and 0 <= limit < len(self.items):
            keep = np.unique(np.linspace(0, len(self.items) - 1, limit).round().astype(int)) if limit else []
            self.items = [self.items[int(k)] for k in keep]
        self.augment = augment
        self._pipelines: dict[tuple[int, int], SeededAlbumentations] = {}
        self._seed: int | None = None
        self._tissue_ids = {name: i for i, name in enumerate(self.info.tissue_types)}

    def __len__(self) -> int:
        return len(self.items)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation's random streams from ``seed`` for the next fetch (see ``shared/data/augment``)."""
        self._seed = int(seed)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``i`` as read from disk: ``(rgb uint8 [H, W, 3], inst_map int32, type_map uint8)``.

        Raises:
            DataError: An unreadable image or label file, a non-RGB-8-bit image, sizes that differ, type values
                above the dataset's classes.
        """
        item = self.items[i]
        image, meta = read_image(item.image, mode="rgb")
        if image.dtype != np.uint8:
            raise DataError(f"{item.image}: expected an 8-bit RGB image, got {meta.dtype}")
        inst, types = read_labels(item.labels)
        if inst.shape != image.shape[:2]:
            raise DataError(f"{item.labels}: label size {inst.shape} != image size {image.shape[:2]} of {item.image}")
        if types.size and int(types.max()) > self.info.num_nuclei_classes:
            raise DataError(f"{item.labels}: type {int(types.max())} above the {self.info.num_nuclei_classes} classes")
        return image, inst, types

    def _augment(self, image: np.ndarray, inst: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, ...]:
        from skimage.measure import label

        shape = (int(image.shape[0]), int(image.shape[1]))
        if shape not in self._pipelines:
            self._pipelines[shape] = build_augmentation(shape)
        pipeline = self._pipelines[shape]
        if self._seed is not None:
            pipeline.reseed(self._seed)
            self._seed = None
        out = pipeline(image, masks=[inst, types])
        image, inst, types = out["image"], out["masks"][0], out["masks"][1]
        applied = {t[0] if isinstance(t, (tuple, list)) else str(t) for t in out.get("applied_transforms", [])}
        if applied & {"Affine", "ElasticTransform"}:
            inst = label(inst, background=0, connectivity=2).astype(np.int32)
        return image, inst, types

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample ``i``: image ``[3, H, W]`` float32 in [-1, 1]; nuclei_binary_map, nuclei_type_map long ``[H, W]``;
        hv_map float32 ``[2, H, W]``; instance_map int64 ``[H, W]``; tissue long ``[]``; index int."""
        image, inst, types = self.load(i)
        if self.augment:
            image, inst, types = self._augment(image, inst, types)
        inst = np.ascontiguousarray(inst)
        return {
            "image": normalise(image),
            "nuclei_binary_map": torch.from_numpy((inst > 0).astype(np.int64)),
            "hv_map": torch.from_numpy(hv_map(inst)),
            "nuclei_type_map": torch.from_numpy(np.ascontiguousarray(types).astype(np.int64)),
            "tissue": torch.tensor(self._tissue_ids[self.items[i].tissue], dtype=torch.long),
            "instance_map": torch.from_numpy(inst.astype(np.int64)),
            "index": int(i),
        }


def sampling_weights(root: str | Path, folds: Sequence[str], gamma: float = 0.85) -> np.ndarray:
    """CellViT's ``cell+tissue`` sampling weights, one per image in :class:`CellTiles` order.

    With K = number of images and n_t = images of tissue t: ``w_tissue = K / (gamma n_t + (1 - gamma) K)``.
    With b = the classes present in an image (0/1 per class), m_c = images containing class c and K' = sum m:
    ``f_c = K' / (gamma m_c + (1 - gamma) K')``, ``w_cell = (1 - gamma) max_c b_c + gamma sum_c b_c f_c``, and an
    image without nuclei gets the smallest non-zero ``w_cell``. The weight is
    ``w_tissue / max(w_tissue) + w_cell / max(w_cell)``.

    CellViT takes n_t and m from constants counted over all three PanNuke folds (``weight_config.yaml``;
    m = [4191, 4132, 6140, 232, 1528]); here both are counted over ``folds`` themselves (the training folds), so
    that any prepared dataset, CoNIC or synthetic data included, is balanced by its own statistics.

    Args:
        root: Prepared dataset folder.
        folds: The folds sampled from.
        gamma: Balancing strength in [0, 1] (0: uniform; CellVTA: 0.85).

    Returns:
        float64 ``[N]``, all positive.

    Raises:
        ConfigError: ``gamma`` outside [0, 1] or an unknown fold.
        DataError: Missing ``types.csv``/``cell_count.csv`` rows (see :func:`list_items`).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"sampling gamma must lie in [0, 1], got {gamma}")
    info = load_cell_dataset(root)
    items = list_items(root, folds, info)
    if not items:
        raise DataError(f"{root}: folds {list(folds)} hold no images")
    counts: dict[str, dict[str, np.ndarray]] = {}
    for fold in dict.fromkeys(it.fold for it in items):
        counts[fold] = read_cell_counts(Path(root) / fold, info.nuclei_types[1:])
    missing = [it for it in items if it.name not in counts[it.fold]]
    if missing:
        raise DataError(f"{Path(root) / missing[0].fold / 'cell_count.csv'}: no row for {missing[0].name}.png")
    tissue = np.array([it.tissue for it in items])
    present = np.clip(np.stack([counts[it.fold][it.name] for it in items]), 0, 1).astype(np.float64)
    return _cell_tissue_weights(tissue, present, gamma)


def _cell_tissue_weights(tissue: np.ndarray, present: np.ndarray, gamma: float) -> np.ndarray:
    """The weight formula of :func:`sampling_weights` on tissue names [N] and class presence [N, C] (0/1)."""
    k = float(len(tissue))
    _, inverse, n_t = np.unique(tissue, return_inverse=True, return_counts=True)
    w_tissue = (k / (gamma * n_t + (1.0 - gamma) * k))[inverse]
    m = present.sum(axis=0)
    k_cells = float(m.sum())
    if k_cells > 0:
        factors = k_cells / (gamma * m + (1.0 - gamma) * k_cells)
        w_cell = (1.0 - gamma) * present.max(axis=1) + gamma * (present * factors).sum(axis=1)
    else:
        w_cell = np.zeros(len(tissue))
    if np.any(w_cell > 0):
        w_cell[w_cell == 0] = w_cell[w_cell > 0].min()
    else:
        w_cell[:] = 1.0  # no image has nuclei (or gamma = 0 with an empty set): the cell term is uniform
    return w_tissue / w_tissue.max() + w_cell / w_cell.max()


class WeightedDraws(Dataset):
    """Weighted sampling with replacement that resumes exactly: each fetch draws its sample from its own seed.

    ``torch``'s ``WeightedRandomSampler`` draws a whole epoch of indices from a generator whose state a resumed
    run would have to restore. Here slot ``i`` of an epoch is only a position: the training loop
    (:class:`medvit.shared.engine.fit.SeededSamples`) calls :meth:`reseed` with the sample's seed
    ``sample_seed(run seed, epoch, i)`` before each fetch, and the fetch draws the underlying index from that seed
    alone (inverse CDF of the weights with one uniform number from a stream keyed on the seed), then fetches it
    from the wrapped dataset, which is reseeded with the same seed. The same seed always gives the same sample,
    so a run resumed mid-epoch sees exactly what the uninterrupted run saw, with any number of workers. A fetch
    without a preceding :meth:`reseed` uses the slot ``i`` as its seed.

    Args:
        dataset: A map-style dataset (optionally with ``reseed(seed)``).
        weights: One non-negative weight per sample of ``dataset`` (not all zero).
        num_samples: Slots per epoch (default ``len(dataset)``, as CellViT's sampler).

    Raises:
        ValueError: Weights of the wrong length, negative, non-finite or all zero.
    """

    def __init__(self, dataset: Dataset, weights: Sequence[float] | np.ndarray, num_samples: int | None = None) -> None:
        w = np.asarray(weights, dtype=np.float64).ravel()
        n = len(dataset)  # type: ignore[arg-type]
        if w.size != n:
            raise ValueError(f"{w.size} weights for a dataset of {n} samples")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        self.dataset = dataset
        self.weights = w
        self._cdf = np.cumsum(w) / w.sum()
        self._last = int(np.flatnonzero(w > 0)[-1])  # rounding may leave cdf[-1] a hair under 1
        self.num_samples = int(num_samples) if num_samples is not None else n
        self._seed: int | None = None
        self._reseed = getattr(dataset, "reseed", None)

    def __len__(self) -> int:
        return self.num_samples

    def reseed(self, seed: int) -> None:
        """Set the seed of the next fetch (and reseed the wrapped dataset's augmentation with it)."""
        self._seed = int(seed)
        if self._reseed is not None:
            self._reseed(seed)

    def draw(self, seed: int) -> int:
        """The index of ``dataset`` that a fetch under ``seed`` returns."""
        u = np.random.default_rng(np.random.SeedSequence([int(seed), _DRAW_KEY])).random()
        return int(min(np.searchsorted(self._cdf, u, side="right"), self._last))

    def __getitem__(self, i: int) -> Any:
        seed = self._seed if self._seed is not None else int(i)
        self._seed = None
        return self.dataset[self.draw(seed)]
