"""Data cards: one YAML file of metadata per dataset family, and a checker of folders against a card.

A card says what a dataset is (source, citation, licence, access, intended use, PHI notes), what layout its
files follow on disk, and which methods and apps use it; ``data_cards/README.md`` documents the schema.
:func:`validate_dir` checks a folder against the card's layout, naming the case or file of every problem:

* ``nnunet-raw``: the nnU-Net v2 raw dataset format (MIC-DKFZ/nnUNet ``documentation/dataset_format.md``):
  ``dataset.json`` keys, ``imagesTr/CASE_XXXX.nii.gz`` channels paired with ``labelsTr/CASE.nii.gz``,
  label values declared in ``dataset.json``, image/label geometry equal, ``numTraining``.
* ``identity-folders``: ``ROOT/<identity>/<image>`` (ImageFolder-style, as insightface's and CR-FIQA's
  tools read it) with an optional LFW-style ``pairs.txt``.
* ``pannuke``: a prepared nucleus dataset (:mod:`medvit.shared.data.cell_format`): ``dataset.json``, per fold
  ``images/*.png`` paired with ``labels/*.npz`` of equal size, type values within the declared classes, one type
  per instance, tissues of ``types.csv`` declared, ``cell_count.csv`` equal to the labels. A raw PanNuke or
  CoNIC release gets one problem saying to run ``medvit cell prepare``.

Files are read with the readers of :mod:`medvit.shared.data.io` that training uses, voxels and pixels included, so
that a folder found OK will train; ``quick=True`` reads headers only (faster, but blind to truncated data, NaN
voxels, corrupt JPEG data and label values).

Where the cards live: ``data_cards/`` at the repository root, found relative to the installed package
(``Path(medvit.__file__).parents[1] / "data_cards"``). This works for the source checkout and the editable
install the project uses; a wheel install does not carry them, so pass a card file path instead of an id
(``load_card("path/to/card.yaml")``), which always works.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medvit.shared.data.io import IMAGE_SUFFIXES, ReadError, affine_problem, list_folder
from medvit.shared.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = (
    "nnunet-raw",
    "identity-folders",
    "catalog",
    "image-folder",
    "csv-labels",
    "pannuke",
    "insightface-recordio",
    "faceforensics",
)
"""Layouts a card may declare. ``catalog`` cards list datasets (``datasets``) instead of describing a folder;
:func:`validate_dir` checks ``nnunet-raw``, ``identity-folders`` and ``pannuke`` folders (other layouts: later
issues). ``pannuke`` is the prepared nucleus-segmentation layout that ``medvit cell prepare`` writes for PanNuke
and CoNIC alike (:mod:`medvit.shared.data.cell_format`)."""

MIN_FACE_SIZE: int = 32
"""Smallest side, in pixels, of an image that can hold a usable face: aligned crops are 112x112, and below 32 px
(the smallest ``medvit data synth faces --size``) a crop would be upsampled more than 3.5 times. Smaller images are
problems in ``identity-folders`` and ``error`` rows in ``medvit fiqa score --aligned``."""

NNUNET_REQUIRED_KEYS: tuple[str, ...] = ("channel_names", "labels", "numTraining", "file_ending")
"""Keys nnU-Net v2 requires in ``dataset.json``."""


def cards_dir() -> Path:
    """The folder holding the shipped cards: ``data_cards/`` next to the ``medvit`` package (see module doc)."""
    import medvit

    return Path(medvit.__file__).resolve().parents[1] / "data_cards"


# ----------------------------------------------------------------------------------------------------------
# schema


@dataclass(frozen=True)
class Spacing:
    """Voxel/pixel spacing convention of a dataset.

    Attributes:
        unit: Unit of ``target`` (``"mm"``).
        target: Spacing the methods resample to, one value per axis, or ``None`` when not resampled.
        note: Free text (source spacings, how anisotropy is handled).
    """

    unit: str = "mm"
    target: tuple[float, ...] | None = None
    note: str = ""


@dataclass(frozen=True)
class Intensity:
    """Intensity convention of a dataset.

    Attributes:
        unit: ``"HU"`` for CT, ``"uint8 RGB"`` for photos, ...
        window: ``(low, high)`` clipping window mapped to [0, 1] by the methods, or ``None``.
        note: Free text (normalisation, colour order).
    """

    unit: str
    window: tuple[float, float] | None = None
    note: str = ""


@dataclass(frozen=True)
class CatalogEntry:
    """One dataset listed by a ``catalog`` card.

    Attributes:
        name: Short name (``"BTCV"``).
        modality: ``"CT"``, ``"CT, MRI"``, ...
        access: How to obtain it (``"public download"``, ``"registration"``, ``"request form"``).
        license: Licence as far as known; cards say "verify before use" where unsure.
        citation: Paper to cite.
        url: Home page.
        cases: Number of cases, only where reliably known.
        tasks: Tasks it is used for.
        notes: Free text (splits, label set, caveats).
    """

    name: str
    modality: str
    access: str
    license: str
    citation: str
    url: str = ""
    cases: int | None = None
    tasks: tuple[str, ...] = ()
    notes: str = ""


@dataclass(frozen=True)
class DataCard:
    """Metadata of one dataset family (never the data). See ``data_cards/README.md`` for every field.

    Attributes:
        id: Card id, equal to the YAML file's stem.
        name: Human-readable name.
        version: Card version (bump when the card's meaning changes).
        modality: ``"CT"``, ``"face photo"``, ...
        tasks: Tasks the data serves (``"segmentation"``, ``"pretraining"``, ``"face quality"``, ...).
        source: Where the data comes from.
        citation: What to cite.
        license: Licence of the data.
        access: How it is obtained.
        layout: One of :data:`LAYOUTS`.
        intended_use: Allowed and intended use (research, not diagnosis).
        phi: Notes on personal / protected health information.
        file_ending: File suffix of images (``".nii.gz"``) where the layout fixes one.
        channel_names: nnU-Net ``channel_names`` the dataset must declare (``{"0": "CT"}``).
        labels: Label name -> value pairs the dataset must declare (it may declare more).
        spacing: Spacing convention.
        intensity: Intensity convention.
        known_issues: Known problems of such data.
        used_by: Methods and apps that read it (``"pretrain hi-end-mae"``, ``"ct-seg"``).
        datasets: The listed datasets of a ``catalog`` card.
        path: The YAML file the card was loaded from.
    """

    id: str
    name: str
    version: str
    modality: str
    tasks: tuple[str, ...]
    source: str
    citation: str
    license: str
    access: str
    layout: str
    intended_use: str
    phi: str
    file_ending: str | None = None
    channel_names: dict[str, str] | None = None
    labels: dict[str, int] | None = None
    spacing: Spacing | None = None
    intensity: Intensity | None = None
    known_issues: tuple[str, ...] = ()
    used_by: tuple[str, ...] = ()
    datasets: tuple[CatalogEntry, ...] = ()
    path: Path | None = field(default=None, compare=False)


_REQUIRED = ("id", "name", "version", "modality", "tasks", "source", "citation", "license", "access", "layout")
_REQUIRED += ("intended_use", "phi")


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def _str(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"'{key}' must be a non-empty string, got {value!r}")
    return value.strip()


def _opt_str(value: Any, where: str, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(where, f"'{key}' must be a string, got {type(value).__name__}")
    return value.strip()


def _str_list(value: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
        raise _fail(where, f"'{key}' must be a list of strings, got {value!r}")
    return tuple(x.strip() for x in value)


def _numbers(value: Any, where: str, key: str, n: int | None = None) -> tuple[float, ...]:
    ok = isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    if not ok or (n is not None and len(value) != n) or not value:
        want = f"{n} numbers" if n else "a list of numbers"
        raise _fail(where, f"'{key}' must be {want}, got {value!r}")
    return tuple(float(x) for x in value)


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")


def _mapping(value: Any, where: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"'{key}' must be a mapping, got {type(value).__name__}")
    return value


def _parse_spacing(value: Any, where: str) -> Spacing:
    data = _mapping(value, where, "spacing")
    _check_keys(data, tuple(f.name for f in fields(Spacing)), f"{where}: spacing")
    target = data.get("target")
    return Spacing(
        unit=_str(data.get("unit", "mm"), where, "spacing.unit"),
        target=None if target is None else _numbers(target, where, "spacing.target"),
        note=_opt_str(data.get("note"), where, "spacing.note"),
    )


def _parse_intensity(value: Any, where: str) -> Intensity:
    data = _mapping(value, where, "intensity")
    _check_keys(data, tuple(f.name for f in fields(Intensity)), f"{where}: intensity")
    window = data.get("window")
    win = None
    if window is not None:
        lo, hi = _numbers(window, where, "intensity.window", n=2)
        if lo >= hi:
            raise _fail(where, f"'intensity.window' must be [low, high] with low < high, got {window!r}")
        win = (lo, hi)
    return Intensity(
        unit=_str(data.get("unit"), where, "intensity.unit"),
        window=win,
        note=_opt_str(data.get("note"), where, "intensity.note"),
    )


def _parse_entry(value: Any, where: str, i: int) -> CatalogEntry:
    at = f"{where}: datasets[{i}]"
    data = _mapping(value, where, f"datasets[{i}]")
    allowed = tuple(f.name for f in fields(CatalogEntry))
    _check_keys(data, allowed, at)
    for key in ("name", "modality", "access", "license", "citation"):
        if key not in data:
            raise _fail(at, f"missing required key '{key}'")
    cases = data.get("cases")
    if cases is not None and (not isinstance(cases, int) or isinstance(cases, bool) or cases < 1):
        raise _fail(at, f"'cases' must be a positive integer, got {cases!r}")
    return CatalogEntry(
        name=_str(data["name"], at, "name"),
        modality=_str(data["modality"], at, "modality"),
        access=_str(data["access"], at, "access"),
        license=_str(data["license"], at, "license"),
        citation=_str(data["citation"], at, "citation"),
        url=_opt_str(data.get("url"), at, "url"),
        cases=cases,
        tasks=_str_list(data.get("tasks", []), at, "tasks"),
        notes=_opt_str(data.get("notes"), at, "notes"),
    )


def _parse_id(value: Any, where: str, path: Path | None) -> str:
    card_id = _str(value, where, "id")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", card_id):
        raise _fail(where, f"'id' must be lowercase letters, digits and '-', got {card_id!r}")
    if path is not None and path.stem != card_id:
        raise _fail(where, f"'id' is {card_id!r} but the file is named {path.name}; they must match")
    return card_id


def _parse_channel_names(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    cn = _mapping(value, where, "channel_names")
    if not all(isinstance(v, str) for v in cn.values()):
        raise _fail(where, f"'channel_names' values must be strings, got {value!r}")
    return {str(k): v for k, v in cn.items()}


def _parse_labels(value: Any, where: str) -> dict[str, int] | None:
    if value is None:
        return None
    lb = _mapping(value, where, "labels")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in lb.values()):
        raise _fail(where, f"'labels' must map names to non-negative integers, got {value!r}")
    return {str(k): int(v) for k, v in lb.items()}


def _check_datasets(datasets: Any, where: str, layout: str) -> list[Any]:
    """The ``datasets`` list: required (non-empty) on ``catalog`` cards, refused on any other."""
    if not isinstance(datasets, list):
        raise _fail(where, f"'datasets' must be a list, got {type(datasets).__name__}")
    if layout == "catalog" and not datasets:
        raise _fail(where, "a 'catalog' card needs a non-empty 'datasets' list")
    if layout != "catalog" and datasets:
        raise _fail(where, f"'datasets' is only allowed on 'catalog' cards (layout is {layout!r})")
    return datasets


def _parse_file_ending(value: Any, where: str) -> str | None:
    if value is None:
        return None
    file_ending = _str(value, where, "file_ending")
    if not file_ending.startswith("."):
        raise _fail(where, f"'file_ending' must start with '.', got {file_ending!r}")
    return file_ending


def parse_card(data: Any, where: str = "<card>", path: Path | None = None) -> DataCard:
    """Build a :class:`DataCard` from a parsed YAML mapping, strictly.

    Args:
        data: The YAML document (a mapping).
        where: Name used in error messages (the file).
        path: Source file, stored on the card.

    Returns:
        The card.

    Raises:
        ConfigError: Unknown or missing keys, wrong types, unknown layout, a catalog card without datasets.
    """
    if not isinstance(data, dict):
        raise _fail(where, f"a data card must be a YAML mapping, got {type(data).__name__}")
    allowed = tuple(f.name for f in fields(DataCard) if f.name != "path")
    _check_keys(data, allowed, where)
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _fail(where, f"missing required key(s) {', '.join(missing)}")
    card_id = _parse_id(data["id"], where, path)
    layout = _str(data["layout"], where, "layout")
    if layout not in LAYOUTS:
        raise _fail(where, f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    version = data["version"]
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)
    channel_names = _parse_channel_names(data.get("channel_names"), where)
    labels = _parse_labels(data.get("labels"), where)
    datasets = _check_datasets(data.get("datasets") or [], where, layout)
    file_ending = _parse_file_ending(data.get("file_ending"), where)
    return DataCard(
        id=card_id,
        name=_str(data["name"], where, "name"),
        version=_str(version, where, "version"),
        modality=_str(data["modality"], where, "modality"),
        tasks=_str_list(data["tasks"], where, "tasks"),
        source=_str(data["source"], where, "source"),
        citation=_str(data["citation"], where, "citation"),
        license=_str(data["license"], where, "license"),
        access=_str(data["access"], where, "access"),
        layout=layout,
        intended_use=_str(data["intended_use"], where, "intended_use"),
        phi=_str(data["phi"], where, "phi"),
        file_ending=file_ending,
        channel_names=channel_names,
        labels=labels,
        spacing=None if data.get("spacing") is None else _parse_spacing(data["spacing"], where),
        intensity=None if data.get("intensity") is None else _parse_intensity(data["intensity"], where),
        known_issues=_str_list(data.get("known_issues", []), where, "known_issues"),
        used_by=_str_list(data.get("used_by", []), where, "used_by"),
        datasets=tuple(_parse_entry(d, where, i) for i, d in enumerate(datasets)),
        path=path,
    )


def list_cards() -> list[str]:
    """Ids of the shipped cards (sorted); empty when ``data_cards/`` is absent."""
    root = cards_dir()
    return sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []


def load_card(id_or_path: str | Path) -> DataCard:
    """Load a card by id (``"ct-nnunet-raw"`` -> ``data_cards/ct-nnunet-raw.yaml``) or from a YAML path.

    Args:
        id_or_path: A card id, or a path to a ``.yaml``/``.yml`` file.

    Returns:
        The strictly parsed card.

    Raises:
        ConfigError: Unknown id (the message lists the known ones), unreadable or invalid YAML, schema errors.
    """
    import yaml

    text = str(id_or_path)
    candidate = Path(text).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        path = candidate
        if not path.is_file():
            raise ConfigError(f"{path}: data card file not found")
    else:
        root = cards_dir()
        path = root / f"{text}.yaml"
        if not path.is_file():
            known = list_cards()
            where = f"known cards: {', '.join(known)}" if known else f"no data_cards/ folder at {root}"
            raise ConfigError(f"unknown data card {text!r} ({where}); or pass a path to a card .yaml file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read data card: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from err
    return parse_card(data, where=str(path), path=path)


# ----------------------------------------------------------------------------------------------------------
# validation


@dataclass(frozen=True)
class ValidationReport:
    """Result of :func:`validate_dir`.

    Attributes:
        card_id: The card checked against.
        root: The folder checked.
        problems: One line per problem, each starting with the case or file it concerns.
        counts: What was found (e.g. ``cases``, ``test_images``, ``identities``, ``images``, ``genuine_pairs``).
    """

    card_id: str
    root: Path
    problems: tuple[str, ...]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        """True when there are no problems."""
        return not self.problems

    def summary(self) -> str:
        """One line: ``OK`` or the number of problems, plus the counts."""
        found = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        if self.ok:
            return f"{self.root}: OK against {self.card_id} ({found})"
        n = len(self.problems)
        return f"{self.root}: {n} problem{'s' if n != 1 else ''} against {self.card_id} ({found})"


def validate_dir(
    card: DataCard | str | Path,
    root: str | Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    quick: bool = False,
) -> ValidationReport:
    """Check a dataset folder against a card's layout.

    Args:
        card: A card, or a card id / path for :func:`load_card`.
        root: The dataset folder.
        progress: Optional ``progress(done, total)`` callback, called after each case (nnunet-raw: per split).
        quick: Read file headers only. The default decodes every file with the readers the training commands use
            (truncation, corrupt data, NaN voxels and label values are only found that way).

    Returns:
        The report; problems are collected, not raised, so one run lists them all.

    Raises:
        DataError: ``root`` is missing, not a folder or cannot be listed.
        ConfigError: The card's layout has no validator (``catalog`` and layouts of later issues).
    """
    if not isinstance(card, DataCard):
        card = load_card(card)
    root_path = Path(root)
    if not root_path.is_dir():
        raise DataError(f"{root_path}: dataset folder not found")
    validators = {
        "nnunet-raw": _validate_nnunet_raw,
        "identity-folders": _validate_identity_folders,
        "pannuke": _validate_cells,
    }
    validator = validators.get(card.layout)
    if validator is None:
        if card.layout == "catalog":
            raise ConfigError(f"card {card.id!r} is a catalog of datasets; validate against a layout card instead")
        raise ConfigError(f"card {card.id!r}: no validator for layout {card.layout!r} yet")
    problems, counts = validator(card, root_path, progress, quick)
    report = ValidationReport(card.id, root_path, tuple(problems), counts)
    logger.debug("validate %s against %s: %d problems", root_path, card.id, len(problems))
    return report


_NIFTI_ENDINGS = (".nii.gz", ".nii")


def _split_channel(name: str, ending: str) -> tuple[str, int] | None:
    """``case_001_0000.nii.gz`` -> ``("case_001", 0)``; None if the name has no ``_XXXX`` channel suffix."""
    if not name.endswith(ending):
        return None
    m = re.fullmatch(r"(.+)_(\d{4})", name[: -len(ending)])
    return (m.group(1), int(m.group(2))) if m else None


def _label_values(labels: Mapping[str, Any]) -> set[int] | None:
    """Allowed voxel values of a ``dataset.json`` ``labels`` mapping (ints, or lists for region-based training)."""
    values: set[int] = set()
    for v in labels.values():
        items = v if isinstance(v, list) else [v]
        for x in items:
            if not isinstance(x, int) or isinstance(x, bool):
                return None
            values.add(x)
    return values


def _problem(err: ReadError, path: Path) -> str:
    """A reader's message without the leading path: the validator's lines start with the case or file instead."""
    text = str(err)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


@dataclass
class _Volume:
    """What the validator learnt about one NIfTI file: its 3-D shape, affine and (full mode) voxels."""

    shape: tuple[int, ...]
    affine: Any
    data: Any = None


def _read_volume(path: Path, *, quick: bool, label: bool) -> _Volume:
    """Read a NIfTI file as ``ct-seg train`` does (images: NaN/Inf refused; labels: any values), or its header.

    Raises:
        ReadError: From :func:`medvit.shared.data.io.read_nifti`, or (quick) from the header checks.
    """
    import nibabel as nib
    import numpy as np

    from medvit.shared.data.io import check_file, nifti_header_problem, read_nifti

    if not quick:
        arr, meta = read_nifti(path, ndim=3, check_finite=not label)
        return _Volume(tuple(arr.shape), meta.affine, arr)
    check_file(path)
    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - any nibabel failure on a header is a bad file
        raise ReadError(f"{path}: not a readable NIfTI header ({type(err).__name__}: {err})") from None
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses it
        raise ReadError(f"{path}: not a NIfTI image ({type(img).__name__})")
    problem = nifti_header_problem(img)
    if problem is not None:
        raise ReadError(f"{path}: {problem}")
    shape = tuple(int(x) for x in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ReadError(f"{path}: expected a 3D volume, got shape {tuple(img.shape)}")
    return _Volume(shape, np.asarray(img.affine, dtype=np.float64))


def _listing(root: Path, folder: str, problems: list[str]) -> list[Path]:
    """Entries of ``root/folder`` ([] when absent); a folder that cannot be listed is a problem, not a crash."""
    path = root / folder
    if not path.is_dir():
        return []
    try:
        return list_folder(path)
    except ReadError as err:
        problems.append(f"{folder}: {_problem(err, path)}")
        return []


@dataclass(frozen=True)
class _Split:
    """One ``imagesXx``/``labelsXx`` pair of folders of an nnU-Net raw dataset and how to check it."""

    root: Path
    images_dir: str
    labels_dir: str
    ending: str
    n_channels: int
    allowed: set[int] | None
    quick: bool


def _check_split(
    root: Path,
    images_dir: str,
    labels_dir: str,
    ending: str,
    n_channels: int,
    allowed: set[int] | None,
    problems: list[str],
    label_hist: dict[int, int],
    progress: Callable[[int, int], None] | None = None,
    quick: bool = False,
) -> int:
    """Check one ``imagesXx``/``labelsXx`` pair of folders; returns the number of complete cases."""
    split = _Split(root, images_dir, labels_dir, ending, n_channels, allowed, quick)
    channels = _image_channels(split, problems)
    labels = _label_files(split, problems)
    has_labels = (root / labels_dir).is_dir()
    cases = sorted(set(channels) | set(labels))
    complete = 0
    for done, case in enumerate(cases):
        if progress is not None and done:
            progress(done, len(cases))
        complete += _check_case(split, case, channels, labels if has_labels else None, problems, label_hist)
    if progress is not None and cases:
        progress(len(cases), len(cases))
    return complete


def _image_channels(split: _Split, problems: list[str]) -> dict[str, set[int]]:
    """Channel numbers per case found in the images folder (misnamed files are problems)."""
    channels: dict[str, set[int]] = {}
    for p in _listing(split.root, split.images_dir, problems):
        parsed = _split_channel(p.name, split.ending)
        if parsed is None:
            problems.append(f"{split.images_dir}/{p.name}: not named CASE_XXXX{split.ending} (nnU-Net channel suffix)")
            continue
        channels.setdefault(parsed[0], set()).add(parsed[1])  # not a regular file: the reader says so below
    return channels


def _label_files(split: _Split, problems: list[str]) -> dict[str, Path]:
    """Label file per case found in the labels folder (files of another ending are problems)."""
    labels: dict[str, Path] = {}
    for p in _listing(split.root, split.labels_dir, problems):
        if not p.name.endswith(split.ending):
            problems.append(f"{split.labels_dir}/{p.name}: not a {split.ending} label file")
            continue
        labels[p.name[: -len(split.ending)]] = p
    return labels


def _check_case(
    split: _Split,
    case: str,
    channels: Mapping[str, set[int]],
    labels: Mapping[str, Path] | None,
    problems: list[str],
    label_hist: dict[int, int],
) -> bool:
    """Check one case (its channels, readers, geometry, label values); True when it is complete and usable.

    ``labels`` is None when the split has no labels folder.
    """
    images_dir, labels_dir, ending = split.images_dir, split.labels_dir, split.ending
    chans = channels.get(case, set())
    expected = set(range(split.n_channels))
    if case not in channels:
        problems.append(f"{case}: {labels_dir}/{case}{ending} has no image {images_dir}/{case}_0000{ending}")
        return False
    if chans != expected:
        detail = []
        if expected - chans:
            detail.append("missing " + ", ".join(f"{case}_{c:04d}{ending}" for c in sorted(expected - chans)))
        if chans - expected:
            detail.append("unexpected " + ", ".join(f"{case}_{c:04d}{ending}" for c in sorted(chans - expected)))
        problems.append(f"{case}: channels in {images_dir} do not match channel_names ({'; '.join(detail)})")
    if labels is not None and case not in labels:
        problems.append(f"{case}: image {images_dir}/{case}_0000{ending} has no label {labels_dir}/{case}{ending}")
        return False
    lab: _Volume | None = None
    lab_rel = f"{labels_dir}/{case}{ending}"
    if labels is not None:
        try:
            lab = _read_volume(labels[case], quick=split.quick, label=True)
        except ReadError as err:  # a bad label is a problem of this case, not a crash of the check
            problems.append(f"{case}: label {lab_rel}: {_problem(err, labels[case])}")
            return False
    images_ok = _check_case_images(split, case, sorted(chans & expected), lab, problems)
    case_ok = chans == expected and images_ok
    if lab is None or lab.data is None:  # quick mode reads no label values
        return case_ok
    return _check_label_values(split, case, lab_rel, lab.data, problems, label_hist) and case_ok


def _check_case_images(split: _Split, case: str, chans: list[int], lab: _Volume | None, problems: list[str]) -> bool:
    """Read every channel image of a case; its geometry must be usable and match the label's. True if all do."""
    import numpy as np

    ok = True
    for c in chans:
        rel = f"{split.images_dir}/{case}_{c:04d}{split.ending}"
        path = split.root / split.images_dir / f"{case}_{c:04d}{split.ending}"
        try:
            img = _read_volume(path, quick=split.quick, label=False)
        except ReadError as err:
            problems.append(f"{case}: image {rel}: {_problem(err, path)}")
            ok = False
            continue
        geometry = affine_problem(img.affine)
        if geometry is not None:  # training resamples every image: a zero spacing stops it
            problems.append(f"{case}: image {rel}: {geometry}")
            ok = False
        elif lab is not None and img.shape != lab.shape:
            problems.append(f"{case}: image {rel} shape {img.shape} != label shape {lab.shape}")
            ok = False
        elif lab is not None and not np.allclose(img.affine, lab.affine, atol=1e-4):
            problems.append(f"{case}: image {rel} and its label have different affines (atol 1e-4)")
            ok = False
    return ok


def _check_label_values(
    split: _Split, case: str, lab_rel: str, values_arr: Any, problems: list[str], label_hist: dict[int, int]
) -> bool:
    """Label values must be integers declared in ``dataset.json``; counts the cases per value in ``label_hist``."""
    import numpy as np

    if not np.all(np.isfinite(values_arr)) or not np.array_equal(values_arr, np.round(values_arr)):
        problems.append(f"{case}: label {lab_rel} has non-integer values")
        return False
    values = [int(x) for x in np.unique(values_arr)]
    for x in values:
        label_hist[x] = label_hist.get(x, 0) + 1
    if split.allowed is not None:
        bad = [x for x in values if x not in split.allowed]
        if bad:
            problems.append(
                f"{case}: label {lab_rel} has value(s) {bad} not in dataset.json labels {sorted(split.allowed)}"
            )
            return False
    return True


def _validate_nnunet_raw(
    card: DataCard, root: Path, progress: Callable[[int, int], None] | None, quick: bool = False
) -> tuple[list[str], dict[str, int]]:
    problems: list[str] = []
    counts: dict[str, int] = {}
    dataset = _read_dataset_json(root, problems)
    ending = _file_ending(card, dataset, problems)
    if ending not in _NIFTI_ENDINGS:
        problems.append(f"dataset.json: file_ending {ending!r} cannot be checked (NIfTI .nii.gz/.nii only)")
        return problems, counts
    channel_names = _channel_names(card, dataset, problems)
    labels, allowed = _dataset_labels(card, dataset, problems)

    if not (root / "imagesTr").is_dir():
        problems.append("imagesTr: folder missing")
    if not (root / "labelsTr").is_dir():
        problems.append("labelsTr: folder missing")
    label_hist: dict[int, int] = {}
    n_channels = len(channel_names)
    n_train = _check_split(
        root, "imagesTr", "labelsTr", ending, n_channels, allowed, problems, label_hist, progress, quick
    )
    counts["cases"] = n_train
    num_training = dataset.get("numTraining")
    n_found = len(list((root / "labelsTr").glob(f"[!.]*{ending}"))) if (root / "labelsTr").is_dir() else 0
    if isinstance(num_training, int) and num_training != n_found:
        problems.append(f"dataset.json: numTraining is {num_training} but labelsTr holds {n_found} label files")
    elif num_training is not None and not isinstance(num_training, int):
        problems.append(f"dataset.json: numTraining must be an integer, got {num_training!r}")
    if (root / "imagesTs").is_dir():
        n_test = _check_split(
            root, "imagesTs", "labelsTs", ending, n_channels, allowed, problems, label_hist, progress, quick
        )
        counts["test_cases"] = n_test
    if isinstance(labels, dict) and allowed is not None:
        for name, value in labels.items():
            if isinstance(value, int) and value != 0:
                counts[f"cases_with_{name}"] = label_hist.get(value, 0)
    return problems, counts


def _read_dataset_json(root: Path, problems: list[str]) -> dict[str, Any]:
    """``dataset.json`` (``{}`` when missing or unreadable, which are problems), with nnU-Net's required keys."""
    from medvit.shared.data.io import read_json_object

    ds_path = root / "dataset.json"
    dataset: dict[str, Any] = {}
    if not ds_path.exists() and not ds_path.is_symlink():
        problems.append("dataset.json: missing")
    else:
        try:
            dataset = read_json_object(ds_path)
        except ReadError as err:
            problems.append(f"dataset.json: {_problem(err, ds_path)}")
    if dataset:
        missing = [k for k in NNUNET_REQUIRED_KEYS if k not in dataset]
        if missing:
            problems.append(f"dataset.json: missing required key(s) {', '.join(missing)}")
    return dataset


def _file_ending(card: DataCard, dataset: Mapping[str, Any], problems: list[str]) -> Any:
    """The dataset's file ending (``dataset.json``, else the card's, else ``.nii.gz``), checked against the card."""
    ending = dataset.get("file_ending", card.file_ending or ".nii.gz")
    if not isinstance(ending, str):
        problems.append(f"dataset.json: file_ending must be a string, got {ending!r}")
        ending = card.file_ending or ".nii.gz"
    if card.file_ending and ending != card.file_ending:
        problems.append(f"dataset.json: file_ending {ending!r} differs from the card's {card.file_ending!r}")
    return ending


def _channel_names(card: DataCard, dataset: Mapping[str, Any], problems: list[str]) -> Mapping[Any, Any]:
    """``channel_names`` of ``dataset.json`` (else the card's), checked against the card and numbered from 0."""
    channel_names = dataset.get("channel_names", card.channel_names or {"0": "?"})
    if not isinstance(channel_names, dict) or not channel_names:
        problems.append(f"dataset.json: channel_names must be a non-empty object, got {channel_names!r}")
        channel_names = {"0": "?"}
    elif card.channel_names is not None and "channel_names" in dataset:
        got = {str(k): v for k, v in channel_names.items()}
        if got != card.channel_names:
            problems.append(f"dataset.json: channel_names {got} differ from the card's {card.channel_names}")
    if sorted(str(k) for k in channel_names) != [str(i) for i in range(len(channel_names))]:
        problems.append(f"dataset.json: channel_names keys must be '0'..'{len(channel_names) - 1}'")
    return channel_names


def _dataset_labels(card: DataCard, dataset: Mapping[str, Any], problems: list[str]) -> tuple[Any, set[int] | None]:
    """``labels`` of ``dataset.json`` and the label values they allow (None: not known), checked against the card."""
    allowed: set[int] | None = None
    labels = dataset.get("labels")
    if isinstance(labels, dict) and labels:
        allowed = _label_values(labels)
        if allowed is None:
            problems.append("dataset.json: labels must map names to integers (or lists of integers)")
        elif labels.get("background") != 0:
            problems.append('dataset.json: labels must contain "background": 0')
        for name, value in (card.labels or {}).items():
            if labels.get(name) != value:
                problems.append(f"dataset.json: the card requires label {name!r} = {value}, found {labels.get(name)!r}")
    elif "labels" in dataset:
        problems.append("dataset.json: labels must be a non-empty object")
    return labels, allowed


def _listed(path: Path) -> bool:
    """The file is there, even if broken: whether it reads is the identity-folder check's line, not a pair's."""
    return os.path.lexists(path) and not path.is_dir()


def _pair_files(root: Path, name: str, number: int) -> bool:
    stem = root / name / f"{name}_{number:04d}"
    return any(_listed(stem.with_name(stem.name + ext)) for ext in IMAGE_SUFFIXES)


def _validate_pairs(root: Path, problems: list[str], counts: dict[str, int]) -> None:
    """LFW ``pairs.txt`` (optional ``folds<TAB>n`` header; ``name i j`` and ``name1 i name2 j`` lines) or the
    ``path_a path_b is_same`` variant with paths relative to ``root``."""
    path = root / "pairs.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        problems.append(f"pairs.txt: unreadable: {err}")
        return
    genuine = impostor = 0
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if n == 1 and len(parts) <= 2 and all(p.isdigit() for p in parts):
            continue  # header: "N" or "folds N"
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            name, a, b = parts[0], int(parts[1]), int(parts[2])
            missing = [f"{name}_{i:04d}" for i in (a, b) if not _pair_files(root, name, i)]
            genuine += 1
        elif len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
            sides = ((parts[0], int(parts[1])), (parts[2], int(parts[3])))
            missing = [f"{nm}_{i:04d}" for nm, i in sides if not _pair_files(root, nm, i)]
            impostor += 1
        elif len(parts) == 3 and parts[2] in ("0", "1"):
            missing = [p for p in parts[:2] if not _listed(root / p)]
            if parts[2] == "1":
                genuine += 1
            else:
                impostor += 1
        else:
            problems.append(f"pairs.txt line {n}: expected 'name i j', 'name1 i name2 j' or 'path_a path_b is_same'")
            continue
        if missing:
            problems.append(f"pairs.txt line {n}: image(s) not found: {', '.join(missing)}")
    counts["genuine_pairs"] = genuine
    counts["impostor_pairs"] = impostor


def _face_image_problem(path: Path, quick: bool) -> str | None:
    """Why an identity-folder image will not train, or ``None``.

    Full mode decodes it with :func:`medvit.shared.data.io.read_image`, the reader behind ``fiqa train``, so
    truncated and corrupt files are found; quick mode reads the header only. Either way an image smaller than
    :data:`MIN_FACE_SIZE` is a problem: no face detector or aligner can use it.
    """
    from medvit.shared.data.io import read_image, read_image_header

    try:
        if quick:
            size = read_image_header(path)
        else:
            img, _ = read_image(path, mode="rgb")
            size = (int(img.shape[1]), int(img.shape[0]))
    except ReadError as err:
        return _problem(err, path)
    if size is not None and min(size) < MIN_FACE_SIZE:
        return f"{size[0]}x{size[1]} px, below the minimum face size of {MIN_FACE_SIZE} px"
    return None


def _validate_identity_folders(
    card: DataCard, root: Path, progress: Callable[[int, int], None] | None, quick: bool = False
) -> tuple[list[str], dict[str, int]]:
    problems: list[str] = []
    entries = list_folder(root)  # the root itself unreadable: a DataError for the whole command
    for p in entries:
        if p.is_symlink() and not p.exists():
            problems.append(f"{p.name}: broken symbolic link (its target does not exist)")
    identities = [p for p in entries if p.is_dir()]
    n_images = 0
    for done, ident in enumerate(identities):
        count = 0
        try:
            files = list_folder(ident)
        except ReadError as err:
            problems.append(f"{ident.name}: {_problem(err, ident)}")
            files = None
        for p in files or []:
            rel = f"{ident.name}/{p.name}"
            if p.is_dir():
                problems.append(f"{rel}: nested folder inside an identity folder")
            elif not p.name.lower().endswith(IMAGE_SUFFIXES):
                problems.append(f"{rel}: not an image extension ({', '.join(IMAGE_SUFFIXES)})")
            else:
                problem = _face_image_problem(p, quick)
                if problem is None:
                    count += 1
                else:
                    problems.append(f"{rel}: {problem}")
        if count == 0 and files is not None:
            problems.append(f"{ident.name}: identity folder has no readable image")
        n_images += count
        if progress is not None:
            progress(done + 1, len(identities))
    if len(identities) < 2:
        problems.append(f"{root.name}: {len(identities)} identity folder(s); need at least 2")
    counts = {"identities": len(identities), "images": n_images}
    if (root / "pairs.txt").is_file():
        _validate_pairs(root, problems, counts)
    return problems, counts


# ----------------------------------------------------------------------------------------------------------
# pannuke: the prepared nucleus-segmentation layout (medvit.shared.data.cell_format)


@dataclass
class _CellCheck:
    """State of one ``pannuke``-layout check: the dataset's declarations and what was found so far."""

    root: Path
    num_classes: int
    class_names: tuple[str, ...]
    tissues: tuple[str, ...]
    quick: bool
    problems: list[str] = field(default_factory=list)
    images: int = 0
    nuclei: int = 0


def _validate_cells(
    card: DataCard, root: Path, progress: Callable[[int, int], None] | None, quick: bool = False
) -> tuple[list[str], dict[str, int]]:
    """A prepared nucleus dataset: ``dataset.json``, per fold ``images/*.png`` paired with ``labels/*.npz``,
    ``types.csv`` and ``cell_count.csv`` (see :mod:`medvit.shared.data.cell_format`). A raw PanNuke or CoNIC
    release is one problem that says to run ``medvit cell prepare``."""
    from medvit.shared.data.cell_format import parse_dataset_json, raw_release_hint
    from medvit.shared.data.io import read_json_object

    problems: list[str] = []
    ds_path = root / "dataset.json"
    if not ds_path.exists():
        hint = raw_release_hint(root)
        problems.append(f"dataset.json: missing; {hint}" if hint else "dataset.json: missing (not a prepared dataset)")
        return problems, {}
    try:
        info = parse_dataset_json(read_json_object(ds_path), root)
    except DataError as err:
        return [f"dataset.json: {_problem(ReadError(str(err)), ds_path)}"], {}
    for name, value in (card.labels or {}).items():
        found = info.nuclei_types[value] if value < len(info.nuclei_types) else None
        if found != name:
            problems.append(f"dataset.json: the card requires nuclei type {name!r} = {value}, found {found!r}")
    check = _CellCheck(root, info.num_nuclei_classes, info.nuclei_types[1:], info.tissue_types, quick, problems)
    pairs = {fold: _cell_pairs(check, fold) for fold in info.folds}
    total = sum(len(p) for p in pairs.values())
    done = 0
    for fold, fold_pairs in pairs.items():
        tissues = _cell_table(check, fold, "types.csv", ("img", "tissue"))
        counts = _cell_table(check, fold, "cell_count.csv", ("img", *check.class_names))
        for stem in fold_pairs:
            _check_cell_pair(check, fold, stem, tissues, counts)
            done += 1
            if progress is not None:
                progress(done, total)
        for table, rows in (("types.csv", tissues), ("cell_count.csv", counts)):
            extra = sorted(set(rows or {}) - set(fold_pairs))
            if extra:
                problems.append(f"{fold}/{table}: rows for missing image(s) {', '.join(extra[:5])}")
        declared = info.images.get(fold)
        if declared is not None and declared != len(fold_pairs):
            problems.append(f"dataset.json: images[{fold!r}] is {declared} but {fold}/ holds {len(fold_pairs)}")
    counts_out = {"folds": len(info.folds), "images": check.images}
    if not quick:
        counts_out["nuclei"] = check.nuclei
    return problems, counts_out


def _cell_pairs(check: _CellCheck, fold: str) -> list[str]:
    """Stems of ``fold/images/*.png`` that have ``fold/labels/*.npz``; unpaired and stray files are problems."""
    if not (check.root / fold).is_dir():
        check.problems.append(f"{fold}: fold folder missing (listed in dataset.json)")
        return []
    images = {p.stem: p for p in _listing(check.root, f"{fold}/images", check.problems)}
    labels = {p.stem: p for p in _listing(check.root, f"{fold}/labels", check.problems)}
    for kind, found, suffix in (("images", images, ".png"), ("labels", labels, ".npz")):
        if not (check.root / fold / kind).is_dir():
            check.problems.append(f"{fold}/{kind}: folder missing")
        for p in found.values():
            if p.suffix != suffix or p.is_dir():
                check.problems.append(f"{fold}/{kind}/{p.name}: not a {suffix} file")
    stems = sorted(s for s in images if images[s].suffix == ".png")
    for stem in stems:
        if stem not in labels:
            check.problems.append(f"{fold}/images/{stem}.png: has no labels {fold}/labels/{stem}.npz")
    for stem, p in labels.items():
        if p.suffix == ".npz" and stem not in images:
            check.problems.append(f"{fold}/labels/{p.name}: has no image {fold}/images/{stem}.png")
    return [s for s in stems if s in labels and labels[s].suffix == ".npz"]


def _cell_table(check: _CellCheck, fold: str, name: str, columns: tuple[str, ...]) -> dict[str, dict[str, str]] | None:
    """Rows of ``fold/name`` keyed by image stem, or None (a problem) when missing or malformed."""
    import csv

    path = check.root / fold / name
    if not path.is_file():
        check.problems.append(f"{fold}/{name}: missing")
        return None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        check.problems.append(f"{fold}/{name}: unreadable: {err}")
        return None
    if rows and not set(columns) <= set(header):
        check.problems.append(f"{fold}/{name}: expected columns {','.join(columns)}, got {','.join(header)}")
        return None
    return {(r["img"] or "").removesuffix(".png"): r for r in rows}


def _check_cell_pair(
    check: _CellCheck, fold: str, stem: str, tissues: dict[str, Any] | None, counts: dict[str, Any] | None
) -> None:
    """One image and its labels, read as ``medvit cell train`` reads them (headers only with ``quick``)."""
    from medvit.shared.data.cell_format import label_problem, read_labels
    from medvit.shared.data.io import read_image, read_image_header

    png, npz = check.root / fold / "images" / f"{stem}.png", check.root / fold / "labels" / f"{stem}.npz"
    rel = f"{fold}/images/{stem}.png"
    if tissues is not None:
        row = tissues.get(stem)
        if row is None:
            check.problems.append(f"{rel}: no row in {fold}/types.csv")
        elif row["tissue"] not in check.tissues:
            check.problems.append(f"{rel}: tissue {row['tissue']!r} in {fold}/types.csv is not in dataset.json")
    try:
        if check.quick:
            read_image_header(png)
            check.images += 1
            return
        image, meta = read_image(png, mode="rgb")
    except ReadError as err:
        check.problems.append(f"{rel}: {_problem(err, png)}")
        return
    if image.dtype.name != "uint8":
        check.problems.append(f"{rel}: expected 8-bit RGB, got {meta.dtype}")
        return
    try:
        inst, types = read_labels(npz)
    except ReadError as err:
        check.problems.append(f"{fold}/labels/{stem}.npz: {_problem(err, npz)}")
        return
    problem = label_problem(inst, types, check.num_classes)
    if inst.shape != image.shape[:2]:
        problem = f"label size {inst.shape} != image size {image.shape[:2]}"
    if problem is not None:
        check.problems.append(f"{fold}/labels/{stem}.npz: {problem}")
        return
    check.images += 1
    _check_cell_counts(check, f"{fold}/cell_count.csv", stem, inst, types, counts)


def _check_cell_counts(
    check: _CellCheck, table: str, stem: str, inst: Any, types: Any, counts: dict[str, Any] | None
) -> None:
    """The image's ``cell_count.csv`` row must equal its instances per class (the sampler's weights use it)."""
    import numpy as np

    first = np.unique(inst.ravel(), return_index=True)[1]
    per_class = np.bincount(types.ravel()[first], minlength=check.num_classes + 1)[1:]
    check.nuclei += int(per_class.sum())
    if counts is None:
        return
    row = counts.get(stem)
    if row is None:
        check.problems.append(f"{table}: no row for {stem}.png")
        return
    try:
        listed = [int(row[c]) for c in check.class_names]
    except (TypeError, ValueError):
        check.problems.append(f"{table}: row {stem}.png has non-integer counts")
        return
    if listed != per_class.tolist():
        check.problems.append(
            f"{table}: row {stem}.png lists {listed} nuclei per class, labels hold {per_class.tolist()}"
        )
