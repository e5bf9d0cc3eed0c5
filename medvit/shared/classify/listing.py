"""Listing what ``predict`` runs on, running it, and pairing predictions with the truth (the classification apps).

:func:`read_list_file` and :func:`csv_inputs` turn a ``.txt`` list (one path per line; ``#`` comments and blank
lines skipped) or a CSV (its path column) into unlabelled samples, paths resolved against the file's folder. Listed
files that do not exist stay in the list: the batch job gives them ``error`` rows, and the other inputs still run.
An app adds only how a folder is listed (radiographs; photographs and OCT volumes) and calls
:func:`predict_samples`, which runs the core's batch job (:func:`medvit.shared.classify.predict.predict`) and
reads its manifest into a :class:`PredictResult`. Torch-free at import, like the apps' CLI modules that use it.

:func:`align_keys` renames ground-truth keys to the keys a ``predictions.csv`` uses when the two were listed from
different roots (``images/x.png`` vs ``x.png``): a key matches when one is a path suffix of the other and the match
is unique.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medvit.shared.classify.labels import Sample
from medvit.shared.data.folders import read_csv_rows
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "PATH_COLUMNS",
    "PredictResult",
    "align_keys",
    "csv_inputs",
    "manifest_counts",
    "predict_samples",
    "prediction_columns",
    "read_list_file",
]

#: Column names taken as the path column of an input CSV, in this order (else the first column).
PATH_COLUMNS = ("path", "Path", "image", "Image", "filename", "file", "Image Index", "id_code", "Image name")


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


def csv_inputs(path: Path) -> list[Sample]:
    """Unlabelled samples of an input CSV: its path column (:data:`PATH_COLUMNS`), relative to the CSV's folder."""
    rows = read_csv_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    col = next((c for c in PATH_COLUMNS if c in rows[0]), None) or next(iter(rows[0]))
    samples = []
    for line, row in enumerate(rows, start=2):
        cell = (row.get(col) or "").strip()
        if not cell:
            raise DataError(f"{path}: line {line}: empty {col!r}")
        p = Path(cell)
        samples.append(Sample(p if p.is_absolute() else path.parent / p, None, key=cell))
    return samples


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


@dataclass(frozen=True)
class PredictResult:
    """What a classification app's ``predict`` returns.

    Attributes:
        out: The output folder.
        predictions: ``predictions.csv``.
        manifest: ``manifest.csv``.
        ok: Inputs predicted (this call or an earlier one).
        error: Inputs that failed.
    """

    out: Path
    predictions: Path
    manifest: Path
    ok: int
    error: int

    @property
    def exit_code(self) -> int:
        """1 when any input failed, else 0."""
        return 1 if self.error else 0

    @property
    def line(self) -> str:
        """One line for the terminal."""
        return f"{self.ok} ok, {self.error} error{'s' if self.error != 1 else ''} - see {self.predictions}"


def manifest_counts(manifest: Path) -> tuple[int, int]:
    """``(ok + skipped, error)`` rows of a batch manifest (0, 0 when it does not exist)."""
    if not manifest.is_file():
        return 0, 0
    with open(manifest, newline="", encoding="utf-8") as fh:
        status = [row.get("status", "") for row in csv.DictReader(fh)]
    return sum(s in ("ok", "skipped") for s in status), sum(s == "error" for s in status)


def predict_samples(
    run: str | Path, samples: Sequence[Sample], out: str | Path, *, batch_size: int | None = None, **options: Any
) -> PredictResult:
    """Run the core's batch prediction on ``samples`` and summarise its manifest.

    Args:
        run: Run directory of ``train`` (or its ``model.safetensors``).
        samples: The inputs (from :func:`read_list_file`, :func:`csv_inputs` or an app's folder listing).
        out: Output folder.
        batch_size: Inputs per forward pass (None: the core's default).
        **options: ``workers``, ``heatmaps``, ``overwrite``, ``quiet``, ``device`` of
            :func:`medvit.shared.classify.predict.predict`.
    """
    from medvit.shared.classify.predict import predict

    if batch_size is not None:
        options["batch_size"] = batch_size
    res = predict(Path(run), samples, Path(out), **options)
    folder = Path(out)
    predictions = Path(res) if res is not None else folder / "predictions.csv"
    ok, error = manifest_counts(folder / "manifest.csv")
    return PredictResult(folder, predictions, folder / "manifest.csv", ok, error)
