"""What ``medvit cxr predict`` runs on, and how ``evaluate`` pairs predictions with the truth.

:func:`list_inputs` turns INPUT into unlabelled samples: a folder (every radiograph below it: PNG, JPEG, TIFF, DICOM
with or without suffix; keys are paths relative to the folder), a CSV (its path column, resolved against the CSV's
folder) or a ``.txt`` list (one path per line; ``#`` comments and blank lines skipped). Listed files that do not
exist stay in the list: the batch job gives them ``error`` rows, and the other inputs still run.

:func:`align_keys` renames ground-truth keys to the keys a ``predictions.csv`` uses when the two were listed from
different roots (``images/x.png`` vs ``x.png``): a key matches when one is a path suffix of the other and the match
is unique.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from medvit.shared.classify.labels import Sample
from medvit.shared.data.folders import find_cxr_images, read_csv_rows
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["align_keys", "list_inputs", "prediction_columns", "read_list_file"]

_PATH_COLUMNS = ("path", "Path", "image", "Image", "filename", "file", "Image Index", "id_code", "Image name")


def read_list_file(path: Path) -> list[Sample]:
    """A ``.txt`` list: one path per line, relative to the list's folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the list ({type(exc).__name__})") from None
    samples = []
    for line in lines:
        item = line.strip()
        if item and not item.startswith("#"):
            p = Path(item)
            samples.append(Sample(p if p.is_absolute() else path.parent / p, None, key=item))
    if not samples:
        raise DataError(f"{path}: the list names no file")
    return samples


def _csv_inputs(path: Path) -> list[Sample]:
    rows = read_csv_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    col = next((c for c in _PATH_COLUMNS if c in rows[0]), None) or next(iter(rows[0]))
    samples = []
    for line, row in enumerate(rows, start=2):
        cell = (row.get(col) or "").strip()
        if not cell:
            raise DataError(f"{path}: line {line}: empty {col!r}")
        p = Path(cell)
        samples.append(Sample(p if p.is_absolute() else path.parent / p, None, key=cell))
    return samples


def list_inputs(inp: str | Path) -> list[Sample]:
    """Unlabelled samples of INPUT: one image file, a folder, a CSV or a ``.txt`` list (see the module docstring).

    Raises:
        DataError: INPUT missing, an unreadable list, or a folder without radiographs.
    """
    p = Path(inp)
    if not p.exists():
        raise DataError(f"{p}: not found")
    if p.is_dir():
        listing = find_cxr_images(p, frontal_only=False, layout="plain")
        return [Sample(im.path, None, key=im.rel) for im in listing.images]
    suffix = p.name.lower()
    if suffix.endswith((".csv", ".csv.gz")):
        return _csv_inputs(p)
    if suffix.endswith(".txt"):
        return read_list_file(p)
    return [Sample(p, None, key=p.name)]


def prediction_columns(predictions_csv: Path) -> tuple[list[str], list[str]]:
    """``(keys, class names)`` of a ``predictions.csv``: its ``key`` column and its ``prob_<class>`` columns.

    Raises:
        DataError: Missing file, no ``key`` column or no probability column.
    """
    rows = read_csv_rows(predictions_csv)
    with open(predictions_csv, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    if "key" not in header:
        raise DataError(f"{predictions_csv}: no 'key' column (is this the predictions.csv of a predict run?)")
    classes = [h[len("prob_") :] for h in header if h.startswith("prob_")]
    if not classes:
        raise DataError(f"{predictions_csv}: no prob_<class> columns")
    return [r["key"] for r in rows], classes


def _suffix_match(key: str, candidates: dict[str, list[str]]) -> str | None:
    hits = candidates.get(Path(key).name, [])
    found = [c for c in hits if c == key or c.endswith("/" + key) or key.endswith("/" + c)]
    return found[0] if len(found) == 1 else None


def align_keys(truth: Sequence[Sample], predicted_keys: Sequence[str]) -> list[Sample]:
    """The truth samples with keys renamed to the prediction keys they match (see the module docstring).

    Samples without a match keep their key (the evaluation counts them as missing predictions).
    """
    keys = set(predicted_keys)
    by_name: dict[str, list[str]] = {}
    for k in keys:
        by_name.setdefault(Path(k).name, []).append(k)
    out, renamed = [], 0
    for s in truth:
        if s.key in keys:
            out.append(s)
            continue
        match = _suffix_match(s.key, by_name)
        if match is not None:
            renamed += 1
            out.append(replace(s, key=match))
        else:
            out.append(s)
    if renamed:
        logger.info("matched %d ground-truth keys to prediction keys by path suffix", renamed)
    return out
