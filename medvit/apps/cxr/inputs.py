"""What ``medvit cxr predict`` runs on.

:func:`list_inputs` turns INPUT into unlabelled samples: a folder (every radiograph below it: PNG, JPEG, TIFF, DICOM
with or without suffix; keys are paths relative to the folder), a CSV (its path column, resolved against the CSV's
folder) or a ``.txt`` list (one path per line; ``#`` comments and blank lines skipped). Listed files that do not
exist stay in the list: the batch job gives them ``error`` rows, and the other inputs still run. The CSV and list
readers are shared with the other classification app (:mod:`medvit.shared.classify.listing`).
"""

from __future__ import annotations

from pathlib import Path

from medvit.shared.classify.labels import Sample
from medvit.shared.classify.listing import csv_inputs, read_list_file
from medvit.shared.data.folders import find_cxr_images
from medvit.shared.errors import DataError

__all__ = ["list_inputs"]


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
        return csv_inputs(p)
    if suffix.endswith(".txt"):
        return read_list_file(p)
    return [Sample(p, None, key=p.name)]
