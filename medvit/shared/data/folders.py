"""Recognising the public chest X-ray and eye datasets' folder layouts as they ship, and telling what a folder holds.

Chest X-ray layouts (:func:`find_cxr_images`), found without a manifest:
    * ChestX-ray14 (NIH; Wang et al., CVPR 2017): PNGs in ``images/`` or in the twelve archive folders
      ``images_001/images/`` ... ``images_012/images/``, ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``;
      ``Image Index``, ``View Position`` PA/AP), ``train_val_list.txt`` / ``test_list.txt`` (image names).
    * CheXpert (Irvin et al., AAAI 2019; also the downsampled ``CheXpert-v1.0-small``):
      ``train/patientNNNNN/studyN/viewN_frontal.jpg``, ``train.csv`` / ``valid.csv`` whose ``Path`` column starts with
      the release folder's name (``CheXpert-v1.0-small/train/...``) and whose ``Frontal/Lateral`` column gives the view.
    * MIMIC-CXR-JPG (Johnson et al., 2019): ``files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`` with
      ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (``dicom_id``, ``ViewPosition``) and ``mimic-cxr-2.0.0-split.csv(.gz)``.
    * anything else: every X-ray file below the root (PNG, JPEG, TIFF, DICOM...).
Frontal views only by default: CheXpert's ``Frontal/Lateral``, MIMIC's ``ViewPosition`` in {AP, PA} (the views
medical_mae pretrains on; lateral and other views are dropped), ChestX-ray14 is frontal throughout. A CSV given with
``views_csv=`` narrows any layout the same way: rows matched by relative path or file stem, views read from a
``Frontal/Lateral``, ``ViewPosition`` or ``View Position`` column.

Eye folders (:func:`find_eye_data`): colour fundus photographs and OCT volumes side by side: NIfTI, ``.npy``, vendor
files (``.vol``, ``.e2e``, ``.fds``, ``.img``) and B-scan folders. A folder is one B-scan volume when it holds at least
``min_slices`` images whose names differ only by a number (``1.png .. 128.png``, ``bscan_001.bmp``...; a word such as
``slice``, ``bscan``, ``scan``, ``frame`` or ``oct`` may precede it) and whose headers give one size. Folders of
2D OCT B-scans of different eyes (OCT2017's ``CNV-1016042-1.jpeg``; OCTID's ``NORMAL12.jpg``) are not volumes. The
rule reads names, not pixels: a folder of unrelated same-size images named ``1.png .. N.png`` also counts as one
volume (rename them, or name the method explicitly).

:func:`classify_folder` is what ``medvit pretrain DIR`` uses to pick a method: it looks at file types, samples a few
2D images for colour and a dark circular surround (fundus), and reads volume headers for hints of CT (HU values
below -500, DICOM Modality CT) or OCT (micrometre voxels, 8-bit voxels, vendor formats, B-scan folders).

Hidden files and folders are skipped; results are sorted by path (every rank sees the same order); nnU-Net label
folders are not inputs.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np

from medvit.shared.data.eye import VENDOR_FORMATS, bscan_number
from medvit.shared.data.io import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    ReadError,
    is_dicom_file,
    read_image_header,
)
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

CXR_LAYOUTS: tuple[str, ...] = ("chestxray14", "chexpert", "mimic-cxr-jpg", "plain")
FRONTAL_VIEWS = frozenset({"PA", "AP", "FRONTAL"})
MIN_SLICES = 8
"""Fewest numbered images a folder needs to be taken as one B-scan volume."""

_LABEL_DIRS = {"labelsTr", "labelsTs", "labelsVal"}
_SLICE_TEMPLATE = re.compile(r"^(?:.*?[_\-\s.])?(?:slice|bscan|b-scan|b_scan|scan|frame|oct)?[_\-\s.]*$", re.I)
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class CxrImage:
    """One radiograph found by :func:`find_cxr_images`.

    Attributes:
        path: The file.
        rel: ``path`` relative to the root, POSIX style.
        view: ``"PA"``, ``"AP"``, ``"FRONTAL"``, ``"LATERAL"``, ``"LL"``... upper case; ``None`` when unknown.
        split: The release's split (``"train"``, ``"valid"``, ``"validate"``, ``"test"``), ``None`` when unknown.
    """

    path: Path
    rel: str
    view: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class CxrListing:
    """What :func:`find_cxr_images` found.

    Attributes:
        layout: One of :data:`CXR_LAYOUTS`.
        root: The dataset folder (for CheXpert, the release folder holding ``train.csv``).
        images: The radiographs kept, sorted by path.
        excluded: How many were dropped (lateral or unknown views with ``frontal_only``, other splits).
        note: One line on how they were found (which tables were used).
        views_complete: A table gave the view of every image it lists, so ``frontal_only`` drops images without one.
    """

    layout: str
    root: Path
    images: list[CxrImage]
    excluded: int = 0
    note: str = ""
    views_complete: bool = False


# --------------------------------------------------------------------------------------------------------------
# small helpers


def _walk(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``root`` whose lower-case name ends with one of ``suffixes``; hidden entries skipped, sorted."""
    out: list[Path] = []

    def unlisted(err: OSError) -> None:
        raise DataError(f"{err.filename or root}: cannot list the folder ({err.strerror or err})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n not in _LABEL_DIRS)
        d = Path(dirpath)
        out.extend(d / n for n in filenames if not n.startswith(".") and n.lower().endswith(suffixes))
    out.sort(key=lambda p: p.as_posix())
    return out


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - returned to a with-statement


def read_csv_rows(path: PathLike) -> list[dict[str, str]]:
    """Rows of a CSV (or ``.csv.gz``) file as dicts keyed by the header.

    Raises:
        DataError: Missing, unreadable, not UTF-8, or without a header.
    """
    p = Path(path)
    try:
        with _open_text(p) as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            if not reader.fieldnames:
                raise DataError(f"{p}: empty CSV (no header row)")
    except FileNotFoundError:
        raise DataError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise DataError(f"{p}: cannot read the CSV ({type(exc).__name__})") from None
    return rows


def _first_existing(root: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


def _rel(root: Path, p: Path) -> str:
    return p.relative_to(root).as_posix()


# --------------------------------------------------------------------------------------------------------------
# chest X-ray layouts

_NIH_TABLES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
_MIMIC_META = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
_MIMIC_SPLIT = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
_XRAY_SUFFIXES = (*IMAGE_SUFFIXES, *DICOM_SUFFIXES)


def _chexpert_root(root: Path) -> Path | None:
    """The CheXpert release folder: ``root`` or its one ``CheXpert-v1.0*`` subfolder, recognised by ``train.csv`` or by
    ``train/patientNNNNN/`` folders."""

    def is_release(d: Path) -> bool:
        return (d / "train.csv").is_file() or ((d / "train").is_dir() and any((d / "train").glob("patient[0-9]*")))

    if is_release(root):
        return root
    for sub in sorted(root.glob("CheXpert-v1.0*")):
        if sub.is_dir() and is_release(sub):
            return sub
    return None


def detect_cxr_layout(root: PathLike) -> str:
    """Which public layout ``root`` follows: ``"chestxray14"``, ``"chexpert"``, ``"mimic-cxr-jpg"`` or ``"plain"``."""
    r = Path(root)
    if _first_existing(r, _NIH_TABLES) is not None or any(r.glob("images_0[0-9][0-9]")):
        return "chestxray14"
    if _chexpert_root(r) is not None:
        return "chexpert"
    if (r / "files").is_dir() and (_first_existing(r, _MIMIC_META) is not None or any((r / "files").glob("p1[0-9]"))):
        return "mimic-cxr-jpg"
    return "plain"


def find_cxr_images(
    root: PathLike,
    *,
    frontal_only: bool = True,
    views_csv: PathLike | None = None,
    split: str | None = None,
    layout: str | None = None,
) -> CxrListing:
    """Find the radiographs of a public chest X-ray release (or of any folder), frontal views by default.

    Args:
        root: The dataset folder as unpacked.
        frontal_only: Keep PA/AP/frontal views only (where the layout or ``views_csv`` tells the view).
        views_csv: A CSV giving views, used instead of the release's own table.
        split: Keep one split of the release (ChestX-ray14: ``"train"`` = train_val_list, ``"test"``; CheXpert:
            ``"train"``, ``"valid"``; MIMIC: ``"train"``, ``"validate"``, ``"test"``).
        layout: Force a layout instead of :func:`detect_cxr_layout`.

    Returns:
        The listing.

    Raises:
        DataError: ``root`` missing, an unreadable table, or no radiograph left.
    """
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: not found or not a folder")
    kind = layout or detect_cxr_layout(r)
    if kind not in CXR_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(CXR_LAYOUTS)}, got {kind!r}")
    finder = {"chestxray14": _nih, "chexpert": _chexpert, "mimic-cxr-jpg": _mimic, "plain": _plain}[kind]
    listing = finder(r, split)
    if views_csv is not None:
        listing = _apply_views_csv(listing, Path(views_csv))
    if frontal_only:
        kept = [im for im in listing.images if im.view is None or im.view in FRONTAL_VIEWS]
        if listing.views_complete:
            kept = [im for im in kept if im.view is not None]  # not in the table: not a frontal view we know of
        excluded = listing.excluded + len(listing.images) - len(kept)
        listing = CxrListing(kind, listing.root, kept, excluded, listing.note, listing.views_complete)
    if not listing.images:
        raise DataError(f"{r}: no chest X-ray images found ({kind} layout; {listing.note or 'nothing matched'})")
    logger.debug("%s: %d radiographs (%s layout, %d excluded)", r, len(listing.images), kind, listing.excluded)
    return listing


def _nih(root: Path, split: str | None) -> CxrListing:
    files = [f for f in _walk(root, (".png",)) if f.parent.name == "images"]
    table = _first_existing(root, _NIH_TABLES)
    views = {}
    if table is not None:
        views = {row.get("Image Index", ""): (row.get("View Position") or "").strip().upper() or None
                 for row in read_csv_rows(table)}  # fmt: skip
    wanted = None
    if split is not None:
        list_file = {"train": "train_val_list.txt", "test": "test_list.txt"}.get(split)
        if list_file is None or not (root / list_file).is_file():
            raise DataError(
                f"{root}: no split {split!r} in this ChestX-ray14 folder (train_val_list.txt, test_list.txt)"
            )
        wanted = set((root / list_file).read_text(encoding="utf-8").split())
    images = [CxrImage(f, _rel(root, f), views.get(f.name), split) for f in files if wanted is None or f.name in wanted]
    note = f"{table.name if table else 'no Data_Entry table'}; {len(files)} PNGs in images folders"
    return CxrListing("chestxray14", root, images, len(files) - len(images), note)


def _chexpert_path(release: Path, listed: str) -> Path:
    """A CSV ``Path`` (``CheXpert-v1.0-small/train/...``) as a file under the release folder."""
    parts = Path(listed).parts
    if parts and parts[0].lower().startswith("chexpert"):
        return release.joinpath(*parts[1:])
    return release / listed


def _chexpert(root: Path, split: str | None) -> CxrListing:
    release = _chexpert_root(root) or root
    tables = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}
    if split is not None and split not in tables:
        raise DataError(f"{release}: CheXpert splits are train, valid, test; got {split!r}")
    images, listed, missing = [], 0, 0
    for name, table in tables.items():
        if (split is not None and name != split) or not (release / table).is_file():
            continue
        for row in read_csv_rows(release / table):
            listed += 1
            path = _chexpert_path(release, row.get("Path", ""))
            if not path.is_file():
                missing += 1
                continue
            view = (row.get("Frontal/Lateral") or "").strip().upper() or None
            images.append(CxrImage(path, _rel(release, path), view, name))
    if listed == 0:  # no table: fall back to the file names (viewN_frontal.jpg / viewN_lateral.jpg)
        for f in _walk(release, (".jpg", ".jpeg", ".png")):
            view = "FRONTAL" if "frontal" in f.stem.lower() else "LATERAL" if "lateral" in f.stem.lower() else None
            images.append(CxrImage(f, _rel(release, f), view, f.relative_to(release).parts[0]))
    note = f"{listed} rows in the CSVs, {missing} listed files missing" if listed else "no CSV; views from file names"
    images.sort(key=lambda im: im.path.as_posix())
    return CxrListing("chexpert", release, images, missing, note, views_complete=listed > 0)


def _mimic(root: Path, split: str | None) -> CxrListing:
    files = _walk(root / "files", (".jpg", ".jpeg"))
    meta_file, split_file = _first_existing(root, _MIMIC_META), _first_existing(root, _MIMIC_SPLIT)
    views: dict[str, str | None] = {}
    if meta_file is not None:
        views = {row["dicom_id"]: (row.get("ViewPosition") or "").strip().upper() or None
                 for row in read_csv_rows(meta_file) if "dicom_id" in row}  # fmt: skip
    splits: dict[str, str] = {}
    if split_file is not None:
        splits = {row["dicom_id"]: row.get("split", "") for row in read_csv_rows(split_file) if "dicom_id" in row}
    if split is not None and split_file is None:
        raise DataError(f"{root}: split {split!r} asked but no mimic-cxr-2.0.0-split.csv(.gz) found")
    images = []
    for f in files:
        dicom_id = f.stem
        item_split = splits.get(dicom_id)
        if split is not None and item_split != split:
            continue
        # without the metadata table views are unknown: lateral views then stay in (the note says so)
        view = views.get(dicom_id) if meta_file is not None else None
        images.append(CxrImage(f, _rel(root, f), view, item_split))
    if meta_file is None:
        note = f"{len(files)} JPEGs; no metadata CSV, so views are unknown and lateral views are included"
    else:
        note = f"{len(files)} JPEGs, views from {meta_file.name}"
    return CxrListing(
        "mimic-cxr-jpg", root, images, len(files) - len(images), note, views_complete=meta_file is not None
    )


def _plain(root: Path, split: str | None) -> CxrListing:
    if split is not None:
        raise DataError(f"{root}: a plain folder has no release splits (asked for {split!r})")
    files = [f for f in _walk(root, ("",)) if f.name.lower().endswith(_XRAY_SUFFIXES) or _extensionless_dicom(f)]
    images = [CxrImage(f, _rel(root, f)) for f in files]
    return CxrListing("plain", root, images, 0, f"{len(files)} image files")


def _extensionless_dicom(f: Path) -> bool:
    return f.suffix == "" and f.name.upper() != "DICOMDIR" and is_dicom_file(f)


def _view_of(row: dict[str, str]) -> str | None:
    for column in ("Frontal/Lateral", "ViewPosition", "View Position", "view"):
        value = (row.get(column) or "").strip().upper()
        if value:
            return value
    return None


def _apply_views_csv(listing: CxrListing, table: Path) -> CxrListing:
    """Views from a user's CSV, matched by relative path, by file name or by file stem (MIMIC ``dicom_id``)."""
    by_key: dict[str, str | None] = {}
    for row in read_csv_rows(table):
        view = _view_of(row)
        for column in ("path", "Path", "Image Index", "filename", "dicom_id"):
            value = (row.get(column) or "").strip()
            if value:
                by_key[value] = view
                by_key[Path(value).name] = view
                by_key[Path(value).stem] = view
    images = []
    for im in listing.images:
        view = by_key.get(im.rel, by_key.get(im.path.name, by_key.get(im.path.stem)))
        images.append(CxrImage(im.path, im.rel, view, im.split))
    note = f"{listing.note}; views from {table.name}"
    return CxrListing(listing.layout, listing.root, images, listing.excluded, note, views_complete=True)


# --------------------------------------------------------------------------------------------------------------
# eye folders


@dataclass(frozen=True)
class OctSource:
    """One OCT volume found by :func:`find_eye_data`.

    Attributes:
        path: The file, or the folder of B-scans.
        kind: ``"nifti"``, ``"npy"``, ``"bscan-folder"`` or ``"vendor"``.
        rel: ``path`` relative to the root, POSIX style (``"."`` for the root itself).
    """

    path: Path
    kind: str
    rel: str


@dataclass(frozen=True)
class EyeListing:
    """What :func:`find_eye_data` found: 2D images (fundus photographs, or 2D scans) and OCT volumes.

    Attributes:
        root: The searched folder.
        images: 2D image files not part of a B-scan volume, sorted.
        volumes: OCT volumes, sorted by path.
        skipped: Files of other types (DICOM, text...), counted, not listed.
    """

    root: Path
    images: list[Path]
    volumes: list[OctSource]
    skipped: int = 0


def is_bscan_folder(files: Sequence[Path], *, min_slices: int = MIN_SLICES) -> bool:
    """True when a folder's image files are the numbered B-scans of one volume (see the module docstring).

    Args:
        files: The image files of one folder.
        min_slices: Fewest images for a volume.
    """
    if len(files) < min_slices:
        return False
    templates, numbers = set(), set()
    for f in files:
        k = bscan_number(f)
        if k is None:
            return False
        stem = f.stem
        last = list(_DIGITS.finditer(stem))[-1]
        templates.add((stem[: last.start()], stem[last.end() :], f.suffix.lower()))
        numbers.add(k)
        if len(templates) > 1:
            return False  # names that differ by more than their number (patient IDs, classes): not one volume
    if len(numbers) != len(files):
        return False
    prefix, suffix, _ = next(iter(templates))
    if suffix or not _SLICE_TEMPLATE.match(prefix):
        return False  # "NORMAL12.jpg", "CNV-1016042-1.jpeg": scans of different eyes, not slices of one
    ordered = sorted(files, key=lambda f: bscan_number(f) or 0)
    try:
        sizes = {read_image_header(f) for f in (ordered[0], ordered[len(ordered) // 2], ordered[-1])}
    except ReadError:
        return False
    return len(sizes) == 1


def find_eye_data(root: PathLike, *, min_slices: int = MIN_SLICES) -> EyeListing:
    """Find fundus photographs (any 2D image) and OCT volumes under ``root``.

    Args:
        root: The folder to search (or a single volume file / B-scan folder).
        min_slices: Fewest numbered images for a B-scan folder (see :func:`is_bscan_folder`).

    Returns:
        The listing.

    Raises:
        DataError: ``root`` missing, or a folder under it cannot be listed.
    """
    r = Path(root)
    if not r.exists():
        raise DataError(f"{r}: not found")
    images: list[Path] = []
    volumes: list[OctSource] = []
    skipped = 0
    if r.is_file():
        kind = _volume_kind(r)
        return EyeListing(r, [r] if kind is None and _is_image(r) else [], [OctSource(r, kind, r.name)] if kind else [])

    def unlisted(err: OSError) -> None:
        raise DataError(f"{err.filename or r}: cannot list the folder ({err.strerror or err})")

    for dirpath, dirnames, filenames in os.walk(r, onerror=unlisted):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n not in _LABEL_DIRS)
        d = Path(dirpath)
        files = [d / n for n in sorted(filenames) if not n.startswith(".")]
        pictures = [f for f in files if _is_image(f)]
        if is_bscan_folder(pictures, min_slices=min_slices):
            volumes.append(OctSource(d, "bscan-folder", "." if d == r else _rel(r, d)))
            pictures = []
        images += pictures
        for f in files:
            kind = _volume_kind(f)
            if kind is not None:
                volumes.append(OctSource(f, kind, _rel(r, f)))
            elif not _is_image(f):
                skipped += 1
    volumes.sort(key=lambda v: v.path.as_posix())
    return EyeListing(r, sorted(images, key=lambda p: p.as_posix()), volumes, skipped)


def _is_image(f: Path) -> bool:
    return f.name.lower().endswith(IMAGE_SUFFIXES)


def _volume_kind(f: Path) -> str | None:
    name = f.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".npy"):
        return "npy"
    if f.suffix.lower() in VENDOR_FORMATS:
        return "vendor"
    return None


# --------------------------------------------------------------------------------------------------------------
# classify_folder

FolderClass = TypedDict(
    "FolderClass",
    {"2d": list[Path], "3d": list[Path], "kind": str, "method": str, "layout": str, "reason": str},
)
"""What :func:`classify_folder` returns.

Keys:
    2d: 2D inputs (radiographs, photographs, 2D scans), sorted.
    3d: 3D inputs (volume files, DICOM series folders, B-scan folders), sorted.
    kind: ``"cxr"``, ``"eye"``, ``"ct"``, ``"photo"`` (colour pictures that are not fundus photographs) or ``"mixed"``.
    method: The pretraining method for it: ``"mae"`` (X-rays, with the thorax recipe; photographs), ``"hi-end-mae"``
        (CT), ``"uni4eye"`` (eye: 2D and/or 3D).
    layout: The CXR release layout when one was recognised (``"chestxray14"``...), else ``"files"``.
    reason: One line saying what was found and why this method.
"""


@dataclass
class _Found:
    images: list[Path] = field(default_factory=list)
    volumes: list[tuple[Path, str]] = field(default_factory=list)  # (path, kind)
    dicom_dirs: dict[Path, list[Path]] = field(default_factory=dict)


def _collect(root: Path, min_slices: int) -> _Found:
    found = _Found()
    eye = find_eye_data(root, min_slices=min_slices)
    found.volumes = [(v.path, v.kind) for v in eye.volumes]
    found.images = list(eye.images)
    for f in _walk(root, ("",)) if eye.skipped else []:
        if f.name.lower().endswith(DICOM_SUFFIXES) or _extensionless_dicom(f):
            found.dicom_dirs.setdefault(f.parent, []).append(f)
    return found


def _dicom_modality(files: Sequence[Path]) -> str:
    """The Modality of the first readable DICOM header among ``files`` (upper case), ``""`` if none."""
    import warnings

    import pydicom

    for f in files[:3]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:  # noqa: BLE001 - an unreadable header is only a missing hint here
            continue
        return str(ds.get("Modality", "") or "").strip().upper()
    return ""


def _volume_hint(path: Path, kind: str) -> str:
    """``"ct"``, ``"oct"`` or ``""`` for one volume: vendor files and B-scan folders are OCT; NIfTI/npy by header."""
    if kind in ("vendor", "bscan-folder"):
        return "oct"
    name = path.name.lower()
    if "oct" in name or "retina" in name:
        return "oct"
    try:
        if kind == "npy":
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
            sample = np.asarray(arr[tuple(slice(0, 64) for _ in arr.shape)])
            dtype, spacing = arr.dtype, ()
        else:
            import nibabel as nib

            img = nib.load(path)
            dtype, spacing = img.get_data_dtype(), tuple(float(z) for z in img.header.get_zooms()[:3])
            sample = np.asarray(img.dataobj[..., 0]) if len(img.shape) >= 3 else np.asarray(img.dataobj)
    except Exception:  # noqa: BLE001 - an unreadable volume gives no hint; reading it later names the problem
        return ""
    if spacing and 0 < min(spacing) < 0.05:
        return "oct"  # micrometre voxels: no CT scanner resolves 50 um
    if sample.size and float(np.min(sample)) < -500:
        return "ct"  # air in Hounsfield units
    if dtype == np.uint8:
        return "oct"
    return "ct" if dtype.kind in "if" and dtype.itemsize >= 2 else ""


def _image_hints(images: Sequence[Path], sample: int) -> tuple[int, int, int]:
    """``(colour, fundus, read)`` counts over up to ``sample`` evenly spaced images (read at a quarter size)."""
    import cv2

    from medvit.shared.data.eye import find_fov

    picks = [images[i] for i in np.linspace(0, len(images) - 1, min(sample, len(images))).round().astype(int)]
    colour = fundus = read = 0
    for f in dict.fromkeys(picks):
        img = cv2.imread(str(f), cv2.IMREAD_REDUCED_COLOR_4)
        if img is None:
            continue
        read += 1
        b, g, r = (img[..., i].astype(np.int16) for i in range(3))
        if max(float(np.abs(r - g).mean()), float(np.abs(g - b).mean())) > 4.0:
            colour += 1
            if find_fov(img[..., ::-1]).found:
                fundus += 1
    return colour, fundus, read


def classify_folder(path: PathLike, *, sample: int = 8, min_slices: int = MIN_SLICES) -> FolderClass:
    """Tell what a folder holds and which pretraining method suits it.

    Rules, in order: a recognised chest X-ray release -> ``cxr`` / ``mae``; 3D volumes that look like CT (HU values,
    DICOM Modality CT/MR/PT) with no eye data -> ``ct`` / ``hi-end-mae``; OCT volumes (vendor files, B-scan folders,
    micrometre or 8-bit voxels) and/or colour fundus photographs -> ``eye`` / ``uni4eye``; grayscale 2D images (or
    DICOM CR/DX) -> ``cxr`` / ``mae``; other colour pictures -> ``photo`` / ``mae``. ``sample`` images and a few
    volume headers are read; nothing is decoded in full.

    Args:
        path: The folder.
        sample: How many 2D images (and volumes) to inspect.
        min_slices: Fewest numbered images for a B-scan folder.

    Returns:
        A :data:`FolderClass` dict.

    Raises:
        DataError: Missing folder, or no image or volume in it.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: not found")
    layout = detect_cxr_layout(root) if root.is_dir() else "plain"
    if layout != "plain":
        listing = find_cxr_images(root, layout=layout)
        reason = (
            f"{layout} release layout: {len(listing.images)} frontal radiographs ({listing.note}): MAE, thorax recipe"
        )
        return {"2d": [im.path for im in listing.images], "3d": [], "kind": "cxr", "method": "mae",
                "layout": layout, "reason": reason}  # fmt: skip
    found = _collect(root, min_slices)
    two_d, three_d, hints = list(found.images), [p for p, _ in found.volumes], []
    for folder, files in sorted(found.dicom_dirs.items()):
        modality = _dicom_modality(files)
        if modality in ("CR", "DX", "MG", "OP", "XC"):
            two_d += files
        else:
            three_d.append(folder)
            hints.append("oct" if modality == "OPT" else "ct" if modality in ("CT", "MR", "PT", "") else "")
    for p, kind in found.volumes[:sample]:
        hints.append(_volume_hint(p, kind))
    two_d.sort(key=lambda p: p.as_posix())
    three_d.sort(key=lambda p: p.as_posix())
    if not two_d and not three_d:
        raise DataError(f"no images or volumes found in {root} (looked for image, DICOM, NIfTI, .npy, OCT files)")
    kind, method, why = _decide(two_d, three_d, hints, sample)
    return {"2d": two_d, "3d": three_d, "kind": kind, "method": method, "layout": "files", "reason": why}


def _decide(two_d: list[Path], three_d: list[Path], hints: list[str], sample: int) -> tuple[str, str, str]:
    """``(kind, method, reason)`` from what :func:`classify_folder` found."""
    n_ct, n_oct = hints.count("ct"), hints.count("oct")
    colour = fundus = read = 0
    images = [p for p in two_d if p.name.lower().endswith(IMAGE_SUFFIXES)]
    if images:
        colour, fundus, read = _image_hints(images, sample)
    counts = f"{len(two_d)} 2D images, {len(three_d)} volumes"
    if three_d and n_ct > n_oct and fundus == 0:
        return "ct", "hi-end-mae", f"{counts}; the volumes look like CT ({n_ct} of {len(hints)} sampled): Hi-End-MAE"
    if n_oct or fundus:
        seen = f"{n_oct} of {len(hints)} sampled volumes look like OCT" if three_d else "no volumes"
        photos = f"{fundus} of {read} sampled images are colour fundus photographs" if read else "no 2D images"
        return "eye", "uni4eye", f"{counts}; {seen}; {photos}: Uni4Eye (2D and 3D ophthalmic)"
    if three_d and not two_d:
        return "ct", "hi-end-mae", f"{counts}; 3D volumes with no modality hint, taken as CT: Hi-End-MAE"
    if read and colour * 2 > read:
        return "photo", "mae", f"{counts}; {colour} of {read} sampled images are colour, none fundus-like: MAE"
    if three_d:
        return "mixed", "mae", f"{counts}; grayscale 2D images and volumes of no clear kind: MAE on the 2D images"
    why = f"{counts}; {read - colour} of {read} sampled images are grayscale" if read else f"{counts}; DICOM CR/DX"
    return "cxr", "mae", f"{why}: radiographs, MAE with the thorax recipe"
