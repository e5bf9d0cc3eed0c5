"""CT segmentation data: nnU-Net raw / MSD datasets, pair checks, folds, preprocessing and crop sampling.

Layouts (Isensee et al., nnU-Net, ``documentation/dataset_format.md``; Antonelli et al., "The Medical Segmentation
Decathlon", 2022):

* ``DATA/dataset.json`` + ``imagesTr/CASE_0000.nii.gz`` + ``labelsTr/CASE.nii.gz`` (nnU-Net v2 raw; ``labels``
  maps name -> value, ``file_ending`` gives the extension), or an MSD-style ``training`` list of
  ``{"image", "label"}`` paths (``labels`` maps value -> name); CT is single-channel, so ``channel_names`` must
  hold one channel;
* ``--images DIR --labels DIR``: pairs by case id (file name without extension and ``_0000`` suffix); the label
  set comes from a ``dataset.json`` beside them if given, else from the values found.

Every pair is checked before training: same shape and affine (tolerance 1e-3 mm / 1e-4 in the direction cosines,
nnU-Net's ``verify_dataset_integrity`` idea), integer label values that ``dataset.json`` declares. Errors name the
case.

Preprocessing is the shared CT recipe (:func:`medvit.shared.data.transforms.ct_preprocess`: RAS, resample,
HU window, foreground crop), cached on disk once per case (:class:`medvit.shared.data.cache.VolumeCache`);
sampling draws label-balanced crops (``RandCropByLabelClassesd``: each class present in the case is a crop
centre equally often, background with its own weight), then flips / rot90 / intensity augmentation
(:func:`~medvit.shared.data.transforms.ct_augment`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose, RandCropByLabelClassesd, SpatialPadd

from medvit.shared.data.augment import reseed
from medvit.shared.data.io import (
    NIFTI_SUFFIXES,
    ReadError,
    affine_problem,
    list_folder,
    read_json_object,
    read_nifti,
    read_volume,
)
from medvit.shared.data.transforms import ct_augment, volume_to_metatensor
from medvit.shared.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "CTCase",
    "CTDataset",
    "SegCropDataset",
    "case_id_of",
    "check_label_values",
    "check_pair_header",
    "collate_crops",
    "labels_from_json",
    "load_dataset",
    "make_splits",
    "read_case",
]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
# Affine tolerance: translation/zoom in mm (absolute) and direction cosines; a looser check would let a flipped
# or shifted label map through, a stricter one refuses files that differ only by float32 header rounding.
AFFINE_ATOL_MM = 1e-3


@dataclass(frozen=True)
class CTCase:
    """One training/validation case.

    Attributes:
        case_id: the nnU-Net case identifier (``case_000``).
        image: the CT file (``_0000`` channel).
        label: its label map.
    """

    case_id: str
    image: Path
    label: Path


@dataclass
class CTDataset:
    """Cases and label set of a dataset.

    Attributes:
        cases: sorted by case id.
        labels: class value -> name, background (0) included.
        root: the dataset folder (or the images folder).
        source: ``dataset.json`` that declared the labels, or None when they were found in the data.
    """

    cases: list[CTCase]
    labels: dict[int, str]
    root: Path
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    @property
    def ids(self) -> list[str]:
        return [c.case_id for c in self.cases]


def _strip_ext(name: str) -> str:
    low = name.lower()
    for s in NIFTI_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return name


def case_id_of(path: str | Path) -> str:
    """Case id of an image or label file: the name without ``.nii(.gz)`` and without a ``_0000`` channel suffix."""
    stem = _strip_ext(Path(path).name)
    m = _CHANNEL.match(stem)
    return m.group("case") if m and m.group("ch") == "0000" else stem


def labels_from_json(path: str | Path) -> dict[int, str]:
    """Label set of a ``dataset.json``: nnU-Net v2 (name -> value) or MSD (``"1": "liver"``) style.

    Returns:
        value -> name, background 0 included.

    Raises:
        DataError: unreadable file, not JSON or not a JSON object, no ``labels``, region-based (list) labels, or
            values that are not integers.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise DataError(f"{p}: dataset.json not found")
    raw = read_json_object(p).get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{p}: no 'labels' mapping")
    out: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2: name -> value
            value, name = v, str(k)
        elif isinstance(v, str) and re.fullmatch(r"\d+", str(k)):  # MSD: "value" -> name
            value, name = int(k), v
        elif isinstance(v, list):
            raise DataError(f"{p}: label {k!r} is region-based ({v}); ct-seg needs one integer per class")
        else:
            raise DataError(f"{p}: label {k!r}: {v!r} is neither name -> int nor 'int' -> name")
        if value < 0 or value in out:
            raise DataError(f"{p}: label value {value} is negative or used twice")
        out[value] = name
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


def _channels(doc: Mapping[str, Any], path: Path) -> None:
    ch = doc.get("channel_names") or doc.get("modality")
    if isinstance(ch, dict) and len(ch) > 1:
        raise DataError(
            f"{path}: {len(ch)} input channels ({', '.join(map(str, ch.values()))}); ct-seg is single-channel CT"
        )


def _pair_folder(images: Path, labels: Path, ending: str | None = None) -> list[CTCase]:
    def scan(folder: Path, what: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder not found")
        out: dict[str, Path] = {}
        for f in list_folder(folder):
            low = f.name.lower()
            if f.is_dir() or not low.endswith(ending or NIFTI_SUFFIXES):
                continue  # a FIFO or broken link with a NIfTI name stays: its reader names the problem
            stem = _strip_ext(f.name)
            m = _CHANNEL.match(stem) if what == "images" else None
            if m is not None and m.group("ch") != "0000":
                raise DataError(f"{f}: channel {m.group('ch')} found; ct-seg is single-channel CT (only _0000)")
            cid = case_id_of(f) if what == "images" else stem
            if cid in out:
                raise DataError(f"{folder}: case {cid} appears twice ({out[cid].name}, {f.name})")
            out[cid] = f
        if not out:
            raise DataError(f"{folder}: no NIfTI files (.nii, .nii.gz)")
        return out

    imgs, labs = scan(images, "images"), scan(labels, "labels")
    no_label = sorted(set(imgs) - set(labs))
    no_image = sorted(set(labs) - set(imgs))
    if no_label:
        more = f" (and {len(no_label) - 1} more)" if len(no_label) > 1 else ""
        raise DataError(f"case {no_label[0]}: image {imgs[no_label[0]]} has no label map in {labels}{more}")
    if no_image:
        more = f" (and {len(no_image) - 1} more)" if len(no_image) > 1 else ""
        raise DataError(f"case {no_image[0]}: label map {labs[no_image[0]]} has no image in {images}{more}")
    return [CTCase(cid, imgs[cid], labs[cid]) for cid in sorted(imgs)]


def load_dataset(
    root: str | Path | None = None,
    *,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    dataset_json: str | Path | None = None,
) -> CTDataset:
    """Find the training cases of an nnU-Net raw / MSD dataset, or of an images + labels folder pair.

    Args:
        root: dataset folder holding ``dataset.json`` (with ``imagesTr``/``labelsTr`` or a ``training`` list).
        images: images folder (instead of ``root``).
        labels: label-map folder, with ``images``.
        dataset_json: label set for the folder pair (default: ``dataset.json`` beside them, else the values found).

    Returns:
        The :class:`CTDataset`.

    Raises:
        DataError: missing folders/files, missing pairs (naming the case), multi-channel data.
        ConfigError: both or neither of ``root`` and ``images``/``labels``.
    """
    if root is not None and (images is not None or labels is not None):
        raise ConfigError("give DATA or --images/--labels, not both")
    if root is None:
        if images is None or labels is None:
            raise ConfigError("give a dataset folder DATA, or both --images DIR and --labels DIR")
        images, labels = Path(images), Path(labels)
        cases = _pair_folder(images, labels)
        src = Path(dataset_json) if dataset_json else None
        if src is None:
            for cand in (images.parent / "dataset.json", labels.parent / "dataset.json"):
                if cand.is_file():
                    src = cand
                    break
        lab = labels_from_json(src) if src is not None else {}
        return CTDataset(cases, lab, images, src)

    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: dataset folder not found")
    js = Path(dataset_json) if dataset_json else r / "dataset.json"
    if not js.exists() and not js.is_symlink():
        raise DataError(f"{r}: no dataset.json (nnU-Net raw / MSD layout); or pass --images DIR --labels DIR")
    doc = read_json_object(js)
    _channels(doc, js)
    lab = labels_from_json(js)
    ending = doc.get("file_ending")
    training = doc.get("training")
    if (r / "imagesTr").is_dir() and (r / "labelsTr").is_dir():
        cases = _pair_folder(r / "imagesTr", r / "labelsTr", ending)
    elif isinstance(training, list) and training:
        cases = []
        for entry in training:
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
                raise DataError(f"{js}: 'training' entries need 'image' and 'label' paths (got {entry!r})")
            img, seg = (r / entry["image"]).resolve(), (r / entry["label"]).resolve()
            cid = case_id_of(seg)
            for p, what in ((img, "image"), (seg, "label map")):
                if not p.is_file():
                    raise DataError(f"case {cid}: {what} {p} listed in {js.name} not found")
            cases.append(CTCase(cid, img, seg))
        cases.sort(key=lambda c: c.case_id)
    else:
        raise DataError(f"{r}: neither imagesTr/ + labelsTr/ nor a 'training' list in {js.name}")
    n_declared = doc.get("numTraining")
    if isinstance(n_declared, int) and n_declared != len(cases):
        logger.warning("%s: numTraining is %d but %d pairs were found", js, n_declared, len(cases))
    return CTDataset(cases, lab, r, js, {"name": doc.get("name")})


# --------------------------------------------------------------------------------------------------- checks
def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - any nibabel failure is a bad file
        raise ReadError(f"{path}: not a readable NIfTI header ({type(err).__name__})") from None
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape, np.asarray(img.affine, dtype=np.float64)


def affines_match(a: np.ndarray, b: np.ndarray) -> bool:
    """Same grid in world space: direction cosines within 1e-4, zooms and origin within 1e-3 mm."""
    za, zb = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    return bool(
        np.allclose(za, zb, atol=AFFINE_ATOL_MM)
        and np.allclose(a[:3, :3] / za, b[:3, :3] / zb, atol=1e-4)
        and np.allclose(a[:3, 3], b[:3, 3], atol=AFFINE_ATOL_MM)
    )


def check_pair_header(case_id: str, image: Path, label: Path, *, what: str = "image and label map") -> None:
    """Shape and affine of two NIfTI files must agree (headers only, no voxel data read).

    Raises:
        DataError: naming the case, both files and the difference.
    """
    s1, a1 = _header(image)
    s2, a2 = _header(label)
    for path, affine in ((image, a1), (label, a2)):
        problem = affine_problem(affine)
        if problem is not None:
            raise DataError(f"case {case_id}: {path}: {problem}")
    if s1 != s2:
        raise DataError(f"case {case_id}: {what} differ in shape: {image.name} {s1} vs {label.name} {s2}")
    if not affines_match(a1, a2):
        diff = float(np.abs(a1 - a2).max())
        raise DataError(
            f"case {case_id}: {what} differ in affine (max difference {diff:.4g}): {image.name} vs {label.name}; "
            "they must lie on the same voxel grid"
        )


def check_label_values(case_id: str, path: Path, arr: np.ndarray, allowed: Mapping[int, str] | None) -> np.ndarray:
    """An integer label map with declared values only.

    Args:
        case_id: for messages.
        path: for messages.
        arr: label voxels (any dtype).
        allowed: declared values (None: anything non-negative).

    Returns:
        The sorted unique values.

    Raises:
        DataError: non-integer or negative values, or values outside ``allowed`` (naming case and values).
    """
    if arr.dtype.kind == "f" and (not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr))):
        bad = arr[np.isfinite(arr) & (arr != np.round(arr))]
        example = f" e.g. {float(bad.flat[0]):g}" if bad.size else " (NaN/Inf)"
        raise DataError(f"case {case_id}: {path.name} is not an integer label map (value{example})")
    values = np.unique(arr).astype(np.int64)
    if values.size and values[0] < 0:
        raise DataError(f"case {case_id}: {path.name} has negative label {int(values[0])}")
    if allowed is not None:
        extra = sorted(set(values.tolist()) - set(allowed))
        if extra:
            raise DataError(
                f"case {case_id}: {path.name} has label value(s) {extra} not declared in dataset.json "
                f"(declared: {sorted(allowed)})"
            )
    return values


def read_case(case: CTCase, allowed: Mapping[int, str] | None) -> dict[str, Any]:
    """Read and check one pair into MetaTensors (``{"image", "label", "case_id"}``) for the preprocessing."""
    img, img_meta = read_volume(case.image)
    lab, lab_meta = read_nifti(case.label, check_finite=False)
    for path, meta in ((case.image, img_meta), (case.label, lab_meta)):
        problem = None if meta.affine is None else affine_problem(meta.affine)
        if problem is not None:  # before the comparison below, which a zero spacing turns into NaN
            raise DataError(f"case {case.case_id}: {path}: {problem}")
    if img.shape != lab.shape:
        raise DataError(f"case {case.case_id}: image and label map differ in shape: {img.shape} vs {lab.shape}")
    if (
        img_meta.affine is not None
        and lab_meta.affine is not None
        and not affines_match(img_meta.affine, lab_meta.affine)
    ):
        raise DataError(f"case {case.case_id}: image and label map differ in affine; they must share one voxel grid")
    check_label_values(case.case_id, case.label, lab, allowed)
    lab_meta.affine = img_meta.affine  # equal within tolerance: one grid for both
    return {
        "image": volume_to_metatensor(img, img_meta),
        "label": volume_to_metatensor(lab, lab_meta),
        "case_id": case.case_id,
    }


# --------------------------------------------------------------------------------------------------- folds
def make_splits(case_ids: Sequence[str], folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """Cross-validation folds as nnU-Net writes them to ``splits_final.json``.

    nnU-Net (``generate_crossval_split``): sklearn ``KFold(n_splits, shuffle=True, random_state=12345)`` over the
    sorted case ids. Reproduced with numpy's ``RandomState(seed).shuffle`` (what sklearn calls), so the folds are
    identical to nnU-Net's for the same cases.

    Args:
        case_ids: case identifiers.
        folds: number of folds (at most the number of cases).
        seed: shuffle seed.

    Returns:
        ``[{"train": [...], "val": [...]}, ...]``, one entry per fold.

    Raises:
        DataError: fewer cases than folds.
    """
    keys = sorted(case_ids)
    n = len(keys)
    if n < folds:
        raise DataError(f"{n} case(s) cannot be split into {folds} folds; set data.folds <= {n} or --fold all")
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    sizes = np.full(folds, n // folds, dtype=int)
    sizes[: n % folds] += 1
    out, start = [], 0
    for size in sizes:
        val_idx = idx[start : start + size]
        mask = np.ones(n, dtype=bool)
        mask[val_idx] = False
        out.append({"train": [keys[i] for i in np.flatnonzero(mask)], "val": [keys[i] for i in np.flatnonzero(~mask)]})
        start += size
    return out


# --------------------------------------------------------------------------------------------------- sampling
def crop_transform(
    crop_size: Sequence[int],
    num_samples: int,
    num_classes: int,
    *,
    foreground: float = 1.0,
    background: float = 1.0,
    flip_prob: float = 0.2,
    rot90_prob: float = 0.2,
    intensity_prob: float = 0.1,
) -> Any:
    """Pad to the crop, draw label-balanced crops, augment. Maps a preprocessed dict to a list of crop dicts."""
    roi = tuple(int(c) for c in crop_size)
    fg = foreground / max(num_classes - 1, 1)
    ratios = [background] + [fg] * (num_classes - 1)
    steps: list[Any] = [
        SpatialPadd(("image", "label"), spatial_size=roi, mode="constant"),
        RandCropByLabelClassesd(
            ("image", "label"),
            label_key="label",
            spatial_size=roi,
            ratios=ratios,
            num_classes=num_classes,
            num_samples=num_samples,
            image_key="image",
            image_threshold=0.0,
            warn=False,  # classes absent from a case simply get no crops there
        ),
    ]
    steps.append(
        ct_augment(
            prob_flip=flip_prob,
            prob_rot90=rot90_prob,
            prob_intensity=intensity_prob,
            keys=("image",),
            label_key="label",
        )
    )
    return Compose(steps)


class SegCropDataset:
    """Map-style dataset of crops: cached preprocessing per case, fresh crops and augmentation per access.

    Each item is a list of ``num_samples`` dicts ``{"image": [1, *crop], "label": [1, *crop]}``; batch with
    :func:`collate_crops`. The training loop reseeds the random transforms per sample (:meth:`reseed`), so crops
    and augmentation replay exactly after a resume, with any number of DataLoader workers.

    Args:
        cases: the cases.
        labels: declared label set (checked on first read).
        preprocess: deterministic transform on :func:`read_case` output.
        random_transform: :func:`crop_transform`.
        cache: optional :class:`~medvit.shared.data.cache.VolumeCache`.
    """

    def __init__(
        self,
        cases: Sequence[CTCase],
        labels: Mapping[int, str] | None,
        preprocess: Any,
        random_transform: Any = None,
        cache: Any = None,
    ) -> None:
        self.cases = list(cases)
        self.labels = dict(labels) if labels is not None else None
        self.preprocess = preprocess
        self.random_transform = random_transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cases)

    def preprocessed(self, index: int) -> dict[str, Any]:
        """The cached, preprocessed ``{"image", "label"}`` of case ``index`` (``[1, X, Y, Z]`` MetaTensors)."""
        case = self.cases[index]

        def compute(_src: Any) -> dict[str, Any]:
            out = self.preprocess(read_case(case, self.labels))
            return {"image": out["image"], "label": out["label"]}

        if self.cache is None:
            return compute(None)
        return self.cache.get_or_compute([case.image, case.label], compute)

    def reseed(self, seed: int) -> None:
        """Reseed the random transforms for the next item (called by the training loop per sample)."""
        reseed(self.random_transform, seed)

    def __getitem__(self, index: int) -> Any:
        data = self.preprocessed(index)
        if self.random_transform is None:
            return data
        return self.random_transform(data)


def collate_crops(items: Sequence[Any]) -> dict[str, Any]:
    """Flatten lists of crops into one batch of plain tensors ``{"image": [N, 1, *crop], "label": [N, 1, *crop]}``."""
    flat: list[Mapping[str, Any]] = []
    for it in items:
        flat.extend(it if isinstance(it, list) else [it])
    image = torch.stack([torch.as_tensor(d["image"]).as_subclass(torch.Tensor) for d in flat])
    label = torch.stack([torch.as_tensor(d["label"]).as_subclass(torch.Tensor) for d in flat])
    return {"image": image.float(), "label": label.long()}
