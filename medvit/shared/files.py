"""Writing files so that a kill never leaves a partial one, and a command's log in its output folder.

Every file medvit writes (checkpoints, weights and sidecars, configs, metrics, manifests, CSVs, plots, cached
arrays, synthetic data) goes through :func:`atomic_path`: the content is written to a temp file in the final
folder, flushed to disk, and renamed onto the final name, so a reader sees either the previous file or the new
one. Temp names keep the final extension (writers that pick a format by suffix — ``nibabel``, ``cv2.imwrite``,
``savefig``, ``np.save`` — work on them) and carry the writer's pid and a serial number: ``out/case.nii.gz`` is
written as ``out/.case.tmp-4242-0.nii.gz``. :data:`TEMP_RE` recognises them, so a later run can remove what a
killed one left.

:func:`log_to_file` copies the log records of a command into its output folder (``train.log``,
``predict.log``), so a run directory keeps what was printed.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_RE",
    "atomic_path",
    "log_to_file",
    "split_ext",
    "temp_path",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

DOUBLE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".tar.gz", ".ome.tif", ".ome.tiff")
"""Extensions made of two suffixes: kept whole by :func:`split_ext`."""

TEMP_RE = re.compile(r"^\.(?P<base>.+)\.tmp-\d+(?:-\d+)?(?P<ext>(?:\..*)?)$")
"""Matches a temp file name of :func:`temp_path`; ``base + ext`` is the final name."""

_serial = itertools.count()  # threads of one process writing the same final name get different temps


def split_ext(name: str) -> tuple[str, str]:
    """Split a file name into base and extension, keeping double suffixes such as ``.nii.gz`` whole.

    Args:
        name: A file name (no folder).

    Returns:
        ``(base, ext)`` with ``base + ext == name``; ``ext`` is ``""`` when there is none.
    """
    low = name.lower()
    for double in DOUBLE_SUFFIXES:
        if low.endswith(double) and len(name) > len(double):
            return name[: -len(double)], name[-len(double) :]
    return os.path.splitext(name)


def temp_path(final: str | os.PathLike[str]) -> Path:
    """The temp file beside ``final`` that this process writes before renaming it onto ``final``."""
    final = Path(final)
    base, ext = split_ext(final.name)
    return final.with_name(f".{base}.tmp-{os.getpid()}-{next(_serial)}{ext}")


def _fsync(path: Path) -> None:
    # Data on disk before the rename, or a power cut could leave the new name pointing at an empty file.
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; a no-op where the platform or file system does not support it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``path``, on any error (or a kill signal) it is removed.

    Args:
        path: The final file.
        fsync: Flush the temp file to disk before the rename and the folder after it (skip only for files that
            are cheap to redo or recorded elsewhere: a power cut may then leave an empty file).

    Yields:
        The temp path (same folder and extension as ``path``).
    """
    final = Path(path)
    tmp = temp_path(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} (for {final})")
        if fsync:
            _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(final.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (``fsync``: see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (``fsync``: see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (non-JSON values as ``str``) to ``path`` atomically, with a final newline."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=str) + "\n")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float) or type(value).__name__.startswith("float"):  # numpy floats too: full precision
        return repr(float(value))
    return value


def write_csv_atomic(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    fsync: bool = True,
) -> Path:
    """Write ``rows`` as a CSV with a header to ``path`` atomically.

    Args:
        path: The final file.
        rows: One mapping per row; missing cells are empty, keys outside ``columns`` are ignored.
        columns: Column order; default: the keys in order of first appearance.
        fsync: See :func:`atomic_path`.

    Returns:
        ``path`` as a ``Path``.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _csv_cell(v) for k, v in r.items()} for r in rows)
    return Path(path)


@contextlib.contextmanager
def log_to_file(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Copy every log record that reaches the root logger into ``path`` (appended) while the block runs.

    The records are those the logging configuration lets through (the CLI logs INFO and above). ``None`` does
    nothing (ranks other than the main one).
    """
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)  # no file for a silent run
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
