"""Finding inputs in folders: CT volumes (NIfTI, nnU-Net raw layout, DICOM series) and generic file lists.

Layouts understood by :func:`find_volumes`:
    * NIfTI files (``.nii``, ``.nii.gz``) anywhere below the root.
    * nnU-Net raw layout (Isensee et al., nnU-Net, Nat. Methods 2021; ``nnunetv2`` dataset format docs):
      ``imagesTr/CASE_0000.nii.gz`` / ``imagesTs/``; only channel ``0000`` is taken (CT is single-channel) and the
      suffix is dropped from the case id; ``labelsTr/`` and ``labelsTs/`` are skipped.
    * DICOM series folders: a folder holding ``.dcm``/``.dicom``/``.ima`` files, or extension-less files with the
      DICOM Part 10 magic ``b"DICM"`` at byte 128, is one series (see :func:`medvit.shared.data.io.read_dicom_series`).

Hidden files and folders (leading ``.``) are ignored and symlinked folders are not followed. Results are sorted by
path so that every rank of a distributed job sees the same order. A folder that cannot be listed (permission denied)
is never skipped in silence: :func:`find_volumes` returns it as an ``"unreadable"`` source, so that its reader names
the problem in the caller's report, and :func:`find_files` raises.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medvit.shared.data.io import DICOM_SUFFIXES, NIFTI_SUFFIXES, is_dicom_file, list_folder
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

NNUNET_IMAGE_DIRS = ("imagesTr", "imagesTs", "imagesVal")
NNUNET_LABEL_DIRS = ("labelsTr", "labelsTs", "labelsVal")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})\.nii(\.gz)?$", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class VolumeSource:
    """One CT input found by :func:`find_volumes`.

    Attributes:
        path: The NIfTI file, the DICOM file, or the folder holding one DICOM series.
        kind: ``"nifti"``, ``"dicom_series"``, ``"dicom"`` (a single DICOM file given as the root) or
            ``"unreadable"`` (a folder that cannot be listed; reading it raises a ``ReadError`` naming it).
        case_id: Unique, filesystem-safe name for outputs (nnU-Net channel suffix removed).
        rel: ``path`` relative to the searched root, POSIX style (``"."`` when the root folder is itself a series,
            the file name when the root is a file).
    """

    path: Path
    kind: str
    case_id: str
    rel: str


def _nifti_stem(name: str) -> str:
    low = name.lower()
    for s in NIFTI_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return name


def _is_dicom_candidate(f: Path) -> bool:
    name = f.name
    if name.upper() == "DICOMDIR":  # a media index, not an image
        return False
    if name.lower().endswith(DICOM_SUFFIXES):
        return True
    return f.suffix == "" and is_dicom_file(f)


def find_volumes(root: PathLike) -> list[VolumeSource]:
    """Find CT volumes under ``root`` (see the module docstring for the layouts).

    Args:
        root: A folder to search recursively, or a single NIfTI/DICOM file.

    Returns:
        Sources sorted by path; ``case_id`` values are unique (clashing names get their relative folder
        prefixed, e.g. ``siteA__case1``).

    Raises:
        DataError: ``root`` does not exist or holds no volumes.
    """
    r = Path(root)
    if not r.exists():
        raise DataError(f"{r}: not found")
    found = _single_file(r) if r.is_file() else _walk_volumes(r)
    if not found:
        raise DataError(f"no volumes found in {r} (looked for .nii, .nii.gz and DICOM series folders)")
    found.sort(key=lambda t: t[0].as_posix())
    rels = [_rel_of(r, p) for p, _, _ in found]
    out = [
        VolumeSource(path=p, kind=kind, case_id=cid, rel=rel)
        for (p, kind, _), cid, rel in zip(found, _unique_case_ids(found, rels), rels, strict=True)
    ]
    logger.debug("found %d volumes in %s", len(out), r)
    return out


def _single_file(r: Path) -> list[tuple[Path, str, str]]:
    """``root`` given as one file: ``[(path, kind, stem)]``."""
    if r.name.lower().endswith(NIFTI_SUFFIXES):
        return [(r, "nifti", _nifti_stem(r.name))]
    if _is_dicom_candidate(r):
        return [(r, "dicom", r.stem)]
    raise DataError(f"{r}: unsupported format (expected .nii, .nii.gz, .dcm or a folder)")


def _walk_volumes(r: Path) -> list[tuple[Path, str, str]]:
    """``(path, kind, stem)`` of every volume under the folder ``r``: NIfTI files (channel 0 of nnU-Net image folders),
    DICOM series folders, and folders that cannot be listed (reported as unreadable inputs)."""
    found: list[tuple[Path, str, str]] = []
    unlisted: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(r, onerror=unlisted.append):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n not in NNUNET_LABEL_DIRS)
        files = [d / n for n in sorted(filenames) if not n.startswith(".")]
        found += _nifti_files(files, nnunet=d.name in NNUNET_IMAGE_DIRS)
        if any(not f.name.lower().endswith(NIFTI_SUFFIXES) and _is_dicom_candidate(f) for f in files):
            found.append((d, "dicom_series", d.name if d != r else (r.resolve().name or "series")))
    for err in unlisted:
        d = Path(err.filename) if err.filename else r
        logger.warning("%s: cannot list the folder (%s); reported as an unreadable input", d, err.strerror or err)
        found.append((d, "unreadable", d.name if d != r else (r.resolve().name or "unreadable")))
    return found


def _nifti_files(files: Sequence[Path], *, nnunet: bool) -> list[tuple[Path, str, str]]:
    """The NIfTI volumes among one folder's files; in an nnU-Net image folder only channel ``_0000`` of a case."""
    found: list[tuple[Path, str, str]] = []
    for f in files:
        if not f.name.lower().endswith(NIFTI_SUFFIXES):
            continue
        m = _CHANNEL.match(f.name) if nnunet else None
        if m is None:
            found.append((f, "nifti", _nifti_stem(f.name)))
        elif m.group("ch") == "0000":
            found.append((f, "nifti", m.group("case")))
    return found


def _rel_of(r: Path, p: Path) -> str:
    if r.is_file():
        return p.name
    return "." if p == r else p.relative_to(r).as_posix()


def _unique_case_ids(found: Sequence[tuple[Path, str, str]], rels: Sequence[str]) -> list[str]:
    """Safe case ids from the stems; clashing ones get their relative folder prefixed, then a ``-2``, ``-3`` ..."""
    ids = [_UNSAFE.sub("_", stem) or "case" for _, _, stem in found]
    clash = {k for k, c in Counter(ids).items() if c > 1}
    for i, (_, _, stem) in enumerate(found):
        if ids[i] in clash:
            parent = Path(rels[i]).parent.as_posix()
            prefix = "" if parent == "." else parent.replace("/", "__") + "__"
            ids[i] = _UNSAFE.sub("_", prefix + stem)
    seen: Counter[str] = Counter()
    out = []
    for cid in ids:
        seen[cid] += 1
        out.append(cid if seen[cid] == 1 else f"{cid}-{seen[cid]}")
    return out


def _norm_exts(exts: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(exts, str):
        exts = [exts]
    out = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts)
    if not out:
        raise ValueError("exts must name at least one extension, e.g. ('.png', '.jpg')")
    return out


def find_files(
    root: PathLike, exts: Iterable[str] | str, recursive: bool = True, *, allow_empty: bool = False
) -> list[Path]:
    """Files under ``root`` whose name ends with one of ``exts`` (case-insensitive; ``".nii.gz"`` works).

    Args:
        root: A folder, or a single file (returned as is when its extension matches).
        exts: Extensions with or without the leading dot.
        recursive: Search subfolders too (hidden folders are skipped, symlinked folders not followed).
        allow_empty: Return ``[]`` instead of raising when nothing matches.

    Returns:
        Matching files sorted by path.

    Raises:
        DataError: ``root`` is missing, a file with another extension, a folder under it cannot be listed, or
            (unless ``allow_empty``) nothing matches.
    """
    r = Path(root)
    suffixes = _norm_exts(exts)
    if not r.exists():
        raise DataError(f"{r}: not found")
    if r.is_file():
        if r.name.lower().endswith(suffixes):
            return [r]
        raise DataError(f"{r}: unsupported format (expected {', '.join(suffixes)})")
    out: list[Path] = []
    if recursive:

        def unlisted(err: OSError) -> None:
            raise DataError(f"{err.filename or r}: cannot list the folder ({err.strerror or err})")

        for dirpath, dirnames, filenames in os.walk(r, onerror=unlisted):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            d = Path(dirpath)
            out.extend(d / n for n in filenames if not n.startswith(".") and n.lower().endswith(suffixes))
    else:
        out = [f for f in list_folder(r) if f.is_file() and f.name.lower().endswith(suffixes)]
    out.sort(key=lambda p: p.as_posix())
    if not out and not allow_empty:
        raise DataError(f"no files with extension {', '.join(suffixes)} found in {r}")
    return out


def read_list_file(path: PathLike) -> list[Path]:
    """Paths listed in a text file, one per line.

    Blank lines and lines starting with ``#`` are skipped; surrounding whitespace is stripped. Relative paths are
    taken relative to the list file's folder (so a list travels with its data). Repeated entries are kept once,
    in first-seen order.

    Args:
        path: The list file.

    Returns:
        The listed paths (not checked for existence: a batch job reports missing ones per item).

    Raises:
        DataError: The list file is missing, unreadable, or lists nothing.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: list file not found")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read list file ({type(exc).__name__}: {exc})") from None
    out: list[Path] = []
    seen: set[Path] = set()
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        q = Path(s).expanduser()
        q = q if q.is_absolute() else p.parent / q
        if q in seen:
            logger.warning("%s: %s listed more than once; using it once", p, s)
            continue
        seen.add(q)
        out.append(q)
    if not out:
        raise DataError(f"{p}: list file has no entries")
    return out
