"""What ``medvit eye predict`` runs on.

:func:`list_inputs` turns INPUT into unlabelled samples: a folder (every photograph, 2D scan, OCT volume file and,
for a 3D model, B-scan folder below it, :func:`medvit.apps.eye.labels.list_items`; keys are paths relative to the
folder), a CSV (its path column, resolved against the CSV's folder) or a ``.txt`` list (one path per line; ``#``
comments and blank lines skipped). Listed files that do not exist stay in the list: the batch job gives them
``error`` rows, and the other inputs still run. The CSV and list readers are shared with the other classification
app (:mod:`medvit.shared.classify.listing`).
"""

from __future__ import annotations

from pathlib import Path

from medvit.apps.eye.labels import list_items
from medvit.shared.classify.labels import Sample
from medvit.shared.classify.listing import csv_inputs, read_list_file
from medvit.shared.errors import DataError

__all__ = ["list_inputs", "model_dims"]


def model_dims(run: str | Path) -> int | None:
    """Input dimensionality (2 or 3) of a trained run, from its ``model.json`` (None when unreadable)."""
    import json

    p = Path(run)
    spec = p / "model.json" if p.is_dir() else p.with_suffix(".json")
    try:
        dims = json.loads(spec.read_text(encoding="utf-8"))["input"]["dims"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(dims) if dims in (2, 3) else None


def list_inputs(inp: str | Path, dims: int | None = None) -> list[Sample]:
    """Unlabelled samples of INPUT: one image or volume, a folder, a CSV or a ``.txt`` list (module docstring).

    Args:
        inp: INPUT.
        dims: The model's input dimensionality: 3 reads a folder of numbered same-size images (INPUT itself or
            below it) as one B-scan volume, 2 reads every image separately (None: volumes only below INPUT).

    Raises:
        DataError: INPUT missing, an unreadable list, or a folder without images or volumes.
    """
    p = Path(inp)
    if not p.exists():
        raise DataError(f"{p}: not found")
    if p.is_dir():
        items = list_items(p, dims if dims is not None else 2)
        if not items:
            raise DataError(f"{p}: no images or OCT volumes found")
        return [Sample(f, None, key=f.relative_to(p).as_posix() if f != p else p.name) for f in items]
    suffix = p.name.lower()
    if suffix.endswith((".csv", ".csv.gz")):
        return csv_inputs(p)
    if suffix.endswith(".txt"):
        return read_list_file(p)
    return [Sample(p, None, key=p.name)]
