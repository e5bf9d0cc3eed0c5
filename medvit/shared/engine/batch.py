"""Batch-job runner behind every ``predict`` / ``score`` command.

An app describes one item of work as a :class:`BatchJob` (which files an input produces, how to load it,
how to process it); :func:`run_batch` does everything a user of a batch command is owed (ARCHITECTURE.md,
"What every command owes its user"):

- inputs from a file, a folder (recursive, by extension) or a list file (:func:`resolve_inputs`);
- every output written to a temp file in its final folder and renamed only after the item succeeded, so
  a kill never leaves a partial output; stale temps of a killed run are removed at the next start;
- an input whose outputs all exist is skipped unless ``overwrite``: rerunning after a crash resumes;
- one bad input is recorded as ``error`` in the manifest and never stops the batch or touches another
  item's outputs; :attr:`BatchSummary.exit_code` is 1 when any item failed;
- a manifest CSV (input, outputs, status, message, seconds, plus the columns ``process`` returns) that is a
  valid file at every instant (atomic snapshots) and loses no finished row to a kill (an append-only journal
  between snapshots, merged by the next run; skipped items keep their earlier extra columns);
- one writer per output folder (:class:`~medvit.shared.engine.lock.FolderLock`): a second job into a folder
  in use stops with an error naming the owner, and a later job over other inputs adds its rows to the
  manifest (earlier rows are kept, never replaced);
- loading of the next inputs in a thread pool overlaps the current item's compute;
- under ``torchrun`` the input list is sharded by rank, each rank writes ``manifest.rank{r}.csv`` and rank 0
  merges them into the manifest after a barrier. With ``RANK``/``WORLD_SIZE`` set but no process group, the
  last rank to finish merges (a part is finished once its journal is gone); start such ranks together.

CLIs end with ``raise typer.Exit(summary.exit_code)``; this module stays free of typer.

Upstream references: the skip-existing / ``--overwrite`` and output-folder conventions of nnU-Net's
``nnUNetv2_predict`` (MIC-DKFZ/nnUNet ``nnunetv2/inference/predict_from_raw_data.py``) and the sharded,
per-rank-output inference of MONAI bundles; progress bars by rich.
"""

from __future__ import annotations

import abc
import csv
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from medvit.shared.engine import distributed
from medvit.shared.engine.lock import FolderLock
from medvit.shared.engine.progress import ItemProgress
from medvit.shared.errors import DataError, MedvitError
from medvit.shared.files import TEMP_RE, log_to_file, split_ext, temp_path, write_csv_atomic

logger = logging.getLogger(__name__)

LIST_FILE_SUFFIXES: tuple[str, ...] = (".txt", ".lst")
"""A file input with one of these suffixes (and not one of the job's extensions) is a list of paths."""

BASE_COLUMNS: tuple[str, ...] = ("input", "outputs", "status", "message", "seconds")

_MERGE_LOCK_STALE_S = 60.0


# ----------------------------------------------------------------------------------------------- inputs


def _norm_exts(exts: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(exts, str):
        exts = (exts,)
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts if e)


def _matches(name: str, exts: tuple[str, ...]) -> bool:
    return not exts or name.lower().endswith(exts)


def _abspath(path: str | os.PathLike[str]) -> Path:
    # abspath, not resolve(): keeps the user's symlinked folder names in the manifest.
    return Path(os.path.abspath(os.path.expanduser(path)))


def _scan_folder(root: Path, exts: tuple[str, ...], dirs_as_items: Callable[[Path], bool] | None) -> list[Path]:
    if dirs_as_items is not None and dirs_as_items(root):
        return [_abspath(root)]
    items: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        keep: list[str] = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if dirs_as_items is not None and dirs_as_items(Path(dirpath) / d):
                items.append(Path(dirpath) / d)
            else:
                keep.append(d)
        dirnames[:] = keep
        items.extend(Path(dirpath) / f for f in filenames if not f.startswith(".") and _matches(f, exts))
    return sorted(_abspath(p) for p in items)


def _read_list_file(path: Path, exts: tuple[str, ...], dirs_as_items: Callable[[Path], bool] | None) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read list file {path}: {exc}") from exc
    items: list[Path] = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(os.path.expanduser(entry))
        if not p.is_absolute():
            p = path.parent / p
        if p.is_dir():
            found = _scan_folder(p, exts, dirs_as_items)
            if not found:
                logger.warning("list file %s: no inputs with extensions %s in %s", path, ", ".join(exts), p)
            items.extend(found)
        else:
            # A listed file that is missing stays an item: it gets an `error` row instead of stopping the batch.
            items.append(_abspath(p))
    if not items:
        raise DataError(f"list file {path} names no inputs")
    return list(dict.fromkeys(items))  # first occurrence wins, order of the list kept


def resolve_inputs(
    inp: str | os.PathLike[str],
    exts: Sequence[str] | str,
    *,
    dirs_as_items: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """Turn a command's input argument into the list of items to process.

    - a folder: searched recursively for files whose name ends with one of ``exts`` (case-insensitive,
      ``.nii.gz`` works), hidden files and folders skipped, sorted; a sub-folder for which ``dirs_as_items``
      is true (e.g. a DICOM series folder) is one item and is not searched further;
    - a list file (``.txt`` / ``.lst`` that is not itself one of ``exts``): one path per line, ``#`` comment
      lines and blank lines ignored, relative paths taken relative to the list file's folder, folders
      expanded as above; a listed file that does not exist is kept and reported as an error item;
    - any other file: that one file.

    Args:
        inp: File, folder or list file named by the user.
        exts: Accepted extensions, with or without the leading dot; empty means every file.
        dirs_as_items: Optional predicate making a folder a single item.

    Returns:
        Absolute paths, without duplicates.

    Raises:
        DataError: ``inp`` does not exist, or names no inputs.
    """
    path = Path(os.path.expanduser(inp))
    norm = _norm_exts(exts)
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if path.is_dir():
        items = _scan_folder(path, norm, dirs_as_items)
        if not items:
            what = f"with extensions {', '.join(norm)} " if norm else ""
            raise DataError(f"no inputs {what}found in {path}")
        return items
    if path.suffix.lower() in LIST_FILE_SUFFIXES and not _matches(path.name, norm):
        return _read_list_file(path, norm, dirs_as_items)
    return [_abspath(path)]


def common_root(items: Iterable[Path]) -> Path:
    """Deepest folder containing every item: the base for mirroring input sub-folders in the output.

    Args:
        items: Input paths (absolute).

    Returns:
        The common parent folder; the item's own folder for a single item.
    """
    parents = [str(_abspath(p).parent) for p in items]
    if not parents:
        raise ValueError("common_root() needs at least one item")
    return Path(os.path.commonpath(parents))


def output_relpath(item: Path, root: Path, suffix: str) -> Path:
    """Output path relative to the output folder, mirroring ``item``'s place under ``root``.

    ``root/a/case1.nii.gz`` with suffix ``.npy`` gives ``a/case1.npy``, so inputs with equal names in
    different sub-folders never collide. A folder item (a DICOM series) keeps its whole name, since series
    folders are often UIDs full of dots.

    Args:
        item: An input path.
        root: Usually :func:`common_root` of all inputs; an item outside it maps to its bare name.
        suffix: Replaces the item's extension (double suffixes such as ``.nii.gz`` included).

    Returns:
        A relative path.
    """
    # String operations rather than pathlib: this runs once per item while planning (~10x cheaper).
    item_s, root_s = os.path.abspath(item), os.path.abspath(root)
    prefix = root_s.rstrip(os.sep) + os.sep
    rel = item_s[len(prefix) :] if item_s.startswith(prefix) else os.path.basename(item_s)
    head, name = os.path.split(rel)
    base = name if os.path.isdir(item_s) else split_ext(name)[0]
    return Path(head, base + suffix)


# ------------------------------------------------------------------------------------------------ job


class BatchJob(abc.ABC):
    """One app's work on one input; :func:`run_batch` calls these methods.

    Implement :meth:`outputs_for`, plus :meth:`process` and/or :meth:`process_batch`; override :meth:`load`
    to move file reading and decoding into the prefetch threads (it then overlaps the previous item's
    compute). The job never writes final outputs itself: it writes the temp paths it is given.
    """

    description: str = "batch"
    """Label of the progress bar."""

    log_name: str = "predict.log"
    """File in the output folder that keeps the run's log records (``predict.rank{r}.log`` per rank)."""

    @abc.abstractmethod
    def outputs_for(self, item: Path) -> list[Path]:
        """Every file ``item`` produces: relative paths (taken inside the output folder) or absolute ones
        inside it. An empty list means the item's result lives only in the manifest columns."""

    def load(self, item: Path) -> Any:
        """Read and decode ``item``. Runs in a worker thread; must not touch shared mutable state.

        Raises:
            MedvitError: (DataError) for a bad input; its message lands in the manifest.
        """
        return item

    def process(self, item: Path, loaded: Any, tmp_outputs: list[Path]) -> Mapping[str, Any] | None:
        """Compute and write the outputs to ``tmp_outputs`` (same order as :meth:`outputs_for`).

        Returns:
            Extra manifest columns for this item, e.g. ``{"quality": 0.93}``, or None.
        """
        return self.process_batch([item], [loaded], [tmp_outputs])[0]

    def process_batch(
        self, items: list[Path], loaded: list[Any], tmp_outputs: list[list[Path]]
    ) -> list[Mapping[str, Any] | None]:
        """Process several items at once (e.g. one model forward pass on a stacked batch).

        If this raises, the runner retries every item of the batch alone through :meth:`process`, so one bad
        input fails only itself; hence it must not modify ``loaded`` in place.

        Returns:
            One extra-columns mapping (or None) per item.
        """
        return [self.process(i, x, t) for i, x, t in zip(items, loaded, tmp_outputs, strict=True)]


def _check_job(job: BatchJob) -> None:
    cls = type(job)
    if cls.process is BatchJob.process and cls.process_batch is BatchJob.process_batch:
        raise TypeError(f"{cls.__name__} must implement process() or process_batch()")


# ------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class BatchSummary:
    """Counts of one :func:`run_batch` call (over all ranks when the manifest was merged)."""

    ok: int
    skipped: int
    error: int
    manifest_path: Path
    seconds: float
    final: bool = True
    """Whether ``manifest_path`` is the folder's whole manifest and this process reports on it (one process;
    rank 0 after a merge; the rank that merged without a process group). Folder-level outputs built from the
    manifest (``fiqa score``'s ``scores.csv``) are written where this is true, by exactly one process."""

    @property
    def exit_code(self) -> int:
        """1 if any item failed, else 0: what the CLI passes to ``typer.Exit``."""
        return 1 if self.error else 0

    @property
    def line(self) -> str:
        """One-line summary, e.g. ``312 ok, 2 skipped, 1 error — see out/manifest.csv``."""
        errors = f"{self.error} error" + ("s" if self.error != 1 else "")
        return f"{self.ok} ok, {self.skipped} skipped, {errors} — see {self.manifest_path}"

    def __str__(self) -> str:
        return self.line


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) or type(value).__name__.startswith("float"):  # numpy floats too
        return repr(float(value))
    return str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, MedvitError):
        return _one_line(str(exc))
    return _one_line(f"{type(exc).__name__}: {exc}")


def _journal_path(csv_path: Path) -> Path:
    return csv_path.with_name(f".{csv_path.name}.journal")


def _part_path(main: Path, rank: int) -> Path:
    base, ext = split_ext(main.name)
    return main.with_name(f"{base}.rank{rank}{ext}")


def _columns(rows: Iterable[Mapping[str, str]]) -> list[str]:
    cols = list(BASE_COLUMNS)
    seen = set(cols)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                cols.append(key)
    return cols


def _write_csv_atomic(path: Path, rows: list[Mapping[str, str]]) -> None:
    # No fsync: the journal (flushed per item) is what survives a power cut; snapshots are only its compaction.
    write_csv_atomic(path, rows, _columns(rows), fsync=False)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = []
        for row in csv.DictReader(f):
            clean = {k: (v or "") for k, v in row.items() if k is not None}
            if clean.get("input"):
                rows.append(clean)
        return rows


def _read_journal(path: Path) -> list[dict[str, str]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short
                continue
            if isinstance(row, dict) and row.get("input"):
                rows.append({str(k): _cell(v) for k, v in row.items()})
    return rows


def _previous_rows(main: Path) -> dict[str, dict[str, str]]:
    """Rows of earlier runs into this folder: manifest, then parts, then journals (newest last, wins)."""
    base, ext = split_ext(main.name)
    csvs = [main, *sorted(main.parent.glob(f"{_glob_escape(base)}.rank*{_glob_escape(ext)}"))]
    journals = sorted(main.parent.glob(f".{_glob_escape(base)}*{_glob_escape(ext)}.journal"))
    rows: dict[str, dict[str, str]] = {}
    for path in csvs:
        if path.is_file():
            try:
                rows.update((r["input"], r) for r in _read_csv(path))
            except (OSError, csv.Error, UnicodeDecodeError) as exc:
                logger.warning("ignoring unreadable manifest %s: %s", path, exc)
    for path in journals:
        try:
            rows.update((r["input"], r) for r in _read_journal(path))
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("ignoring unreadable manifest journal %s: %s", path, exc)
    return rows


def _glob_escape(text: str) -> str:
    """Escape ``*?[`` so that a file name is matched literally by :meth:`Path.glob`."""
    return re.sub(r"([*?\[])", r"[\1]", text)


class _Manifest:
    """This rank's rows: atomic CSV snapshots, plus a journal line per finished item in between.

    Rewriting the whole CSV after every item is quadratic in the item count (100k face crops), so a snapshot
    waits until 50x the last snapshot's duration has passed: its cost stays under ~2% of the run, small
    manifests are rewritten after nearly every item, large ones every few seconds. The journal keeps every
    finished row (with its extra columns) recoverable by the next run, whenever a kill lands.
    """

    def __init__(self, path: Path, order: list[str]) -> None:
        self.path = path
        self.journal_path = _journal_path(path)
        self.order = order
        self.rows: dict[str, dict[str, str]] = {}
        self._journal: TextIO | None = None
        self._last = 0.0
        self._interval = 0.0

    def start(self) -> None:
        # Append, never truncate: an interrupted run's lines stay until a run finishes, and the journal exists
        # before the part is rewritten, so a merging rank never takes this part for a finished one.
        self._journal = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.snapshot()

    def record(self, row: dict[str, str]) -> None:
        self.rows[row["input"]] = row
        if self._journal is not None:
            self._journal.write(json.dumps(row) + "\n")
            self._journal.flush()

    def ordered_rows(self) -> list[dict[str, str]]:
        return [self.rows[k] for k in self.order if k in self.rows]

    def snapshot(self) -> None:
        t0 = time.perf_counter()
        _write_csv_atomic(self.path, self.ordered_rows())
        t1 = time.perf_counter()
        self._last = t1
        self._interval = 50.0 * (t1 - t0)

    def maybe_snapshot(self) -> None:
        if time.perf_counter() - self._last >= self._interval:
            self.snapshot()

    def close(self, *, finished: bool) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.snapshot()
        if finished:  # a kept journal marks this part as unfinished for the merge
            self.journal_path.unlink(missing_ok=True)


def merge_manifest_parts(out_dir: str | os.PathLike[str], world_size: int, manifest_name: str = "manifest.csv") -> Path:
    """Merge ``manifest.rank{r}.csv`` for r < ``world_size`` into ``manifest.csv``, sorted by input.

    The parts (and their journals) are removed after the merged manifest has been written.

    Args:
        out_dir: The batch's output folder.
        world_size: Number of ranks whose parts must all be present.
        manifest_name: Name of the merged manifest.

    Returns:
        Path of the merged manifest.

    Raises:
        DataError: A part is missing or unreadable.
    """
    main = Path(out_dir) / manifest_name
    parts = [_part_path(main, r) for r in range(world_size)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise DataError(f"cannot merge manifests in {main.parent}: missing {', '.join(missing)}")
    rows: dict[str, dict[str, str]] = {}
    if main.is_file():  # rows of earlier runs over other inputs stay; this run's parts replace the rest
        try:
            rows.update((r["input"], r) for r in _read_csv(main))
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            logger.warning("ignoring unreadable manifest %s: %s", main, exc)
    for part in parts:
        try:
            rows.update((r["input"], r) for r in _read_csv(part))
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read manifest part {part}: {exc}") from exc
    _write_csv_atomic(main, sorted(rows.values(), key=lambda r: Path(r["input"])))
    for part in parts:
        part.unlink(missing_ok=True)
        _journal_path(part).unlink(missing_ok=True)
    return main


def _try_merge_without_group(main: Path, world: int) -> bool:
    """Merge when every rank has finished its part (no process group: the last rank to finish merges)."""
    parts = [_part_path(main, r) for r in range(world)]
    if not all(p.is_file() and not _journal_path(p).exists() for p in parts):
        return False
    lock = main.with_name(f".{main.name}.merge-lock")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime < _MERGE_LOCK_STALE_S:
                    return False  # another rank is merging right now
                lock.unlink()  # left by a merge that was killed
            except FileNotFoundError:
                pass
    else:
        return False
    try:
        if not all(p.is_file() for p in parts):  # merged by another rank meanwhile
            return False
        merge_manifest_parts(main.parent, world, main.name)
        return True
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- progress


# --------------------------------------------------------------------------------------------- runner


def _process_group_initialized() -> bool:
    # Without torch imported no process group can exist; checking this way keeps torch out of jobs
    # that never need it (and out of the runner's start-up time).
    return "torch" in sys.modules and distributed.is_initialized()


def _rank_world() -> tuple[int, int]:
    if _process_group_initialized():
        return distributed.rank(), distributed.world_size()
    r, w = distributed.env_rank(), distributed.env_world_size()
    if w < 1 or not 0 <= r < w:
        raise DataError(f"invalid torchrun environment: RANK={r}, WORLD_SIZE={w}")
    return r, w


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies strictly inside ``folder`` (both absolute and normalised)."""
    return path.startswith(folder.rstrip(os.sep) + os.sep) and path != folder


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        except OSError as exc:
            logger.debug("could not remove temp %s: %s", p, exc)


def _remove_stale_temps(targets: Iterable[Path]) -> int:
    """Delete temps (:data:`medvit.shared.files.TEMP_RE`) of the given final paths, left by a killed run."""
    by_dir: dict[Path, set[str]] = {}
    for p in targets:
        by_dir.setdefault(p.parent, set()).add(p.name)
    removed = 0
    for folder, names in by_dir.items():
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            m = TEMP_RE.match(entry.name)
            if m and m["base"] + m["ext"] in names:
                _remove([Path(entry.path)])
                removed += 1
    return removed


class _Runner:
    def __init__(
        self,
        job: BatchJob,
        plan: dict[Path, list[Path] | BaseException],
        out_dir: Path,
        manifest: _Manifest,
        progress: ItemProgress,
    ) -> None:
        self.job = job
        self.plan = plan
        self.out_dir = out_dir
        self.manifest = manifest
        self.progress = progress
        self.live_tmps: set[Path] = set()
        self._made_dirs: set[Path] = set()
        self._prefix = str(out_dir).rstrip(os.sep) + os.sep

    def _rel(self, path: Path) -> str:
        text = str(path)
        rel = text[len(self._prefix) :] if text.startswith(self._prefix) else os.path.relpath(text, self.out_dir)
        return rel.replace(os.sep, "/")

    def row(self, item: Path, status: str, message: str, seconds: float, extras: Mapping[str, str]) -> dict[str, str]:
        outs = self.plan.get(item)
        rel = [self._rel(p) for p in outs] if isinstance(outs, list) else []
        return {
            **extras,
            "input": str(item),
            "outputs": ";".join(rel),
            "status": status,
            "message": message,
            "seconds": f"{seconds:.3f}",
        }

    def fail(self, item: Path, exc: BaseException, tmps: list[Path], seconds: float) -> None:
        _remove(tmps)
        self.live_tmps.difference_update(tmps)
        message = _error_message(exc)
        # Reader errors already name the file; prefix the input only when the message does not.
        logger.warning("%s", message if item.name in message else f"{item}: {message}")
        if not isinstance(exc, MedvitError):
            logger.debug("traceback for %s", item, exc_info=exc)
        self.manifest.record(self.row(item, "error", message, seconds, {}))
        self.manifest.maybe_snapshot()
        self.progress.advance()

    def finish(self, item: Path, tmps: list[Path], extras: Any, seconds: float) -> None:
        finals = self.plan[item]
        assert isinstance(finals, list)
        try:
            if extras is None:
                extras = {}
            if not isinstance(extras, Mapping):
                raise TypeError(f"process() must return a mapping of extra columns or None, got {type(extras)}")
            reserved = sorted(set(extras) & set(BASE_COLUMNS))
            if reserved:
                raise ValueError(f"process() returned reserved manifest column(s) {reserved}")
            missing = [p.name for p in tmps if not p.exists()]
            if missing:
                raise RuntimeError(f"process() did not write the temp output(s) {missing}")
            # The row is journaled before the renames: a kill in between leaves an `ok` row without all
            # outputs, which the next run redoes; the reverse order could lose the extra columns.
            self.manifest.record(self.row(item, "ok", "", seconds, {str(k): _cell(v) for k, v in extras.items()}))
            for tmp, final in zip(tmps, finals, strict=True):
                os.replace(tmp, final)
        except Exception as exc:
            self.fail(item, exc, tmps, seconds)
            return
        self.live_tmps.difference_update(tmps)
        self.manifest.maybe_snapshot()
        self.progress.advance()

    def process_group(self, group: list[tuple[Path, Any, float]]) -> None:
        tmps: list[list[Path]] = []
        for item, _, _ in group:
            finals = self.plan[item]
            assert isinstance(finals, list)
            t = [temp_path(p) for p in finals]
            for p in t:
                if p.parent not in self._made_dirs:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    self._made_dirs.add(p.parent)
            self.live_tmps.update(t)
            tmps.append(t)
        t0 = time.perf_counter()
        if len(group) == 1:
            item, loaded, t_load = group[0]
            try:
                extras_list = [self.job.process(item, loaded, tmps[0])]
            except Exception as exc:
                self.fail(item, exc, tmps[0], t_load + time.perf_counter() - t0)
                return
        else:
            try:
                extras_list = list(self.job.process_batch([g[0] for g in group], [g[1] for g in group], tmps))
                if len(extras_list) != len(group):
                    raise RuntimeError(f"process_batch() returned {len(extras_list)} results for {len(group)} items")
            except Exception as exc:
                logger.debug("batch of %d failed (%s); retrying its items one at a time", len(group), exc, exc_info=exc)
                for t in tmps:
                    _remove(t)
                    self.live_tmps.difference_update(t)
                for g in group:
                    self.process_group([g])
                return
        share = (time.perf_counter() - t0) / len(group)
        for (item, _, t_load), t, extras in zip(group, tmps, extras_list, strict=True):
            self.finish(item, t, extras, t_load + share)

    def run(self, todo: list[Path], workers: int, batch_size: int) -> None:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="medvit-load") if workers > 0 else None
        # Look-ahead bounded so that memory holds at most ~2 loads per worker beyond the batch being filled.
        lookahead = 2 * workers + batch_size if pool else batch_size
        queue: deque[tuple[Path, Future[tuple[Any, float]] | None]] = deque()
        pending = iter(todo)

        def submit_next() -> None:
            item = next(pending, None)
            if item is not None:
                queue.append((item, pool.submit(_timed_load, self.job, item) if pool else None))

        clean_exit = False
        try:
            for _ in range(lookahead):
                submit_next()
            group: list[tuple[Path, Any, float]] = []
            while queue:
                item, fut = queue.popleft()
                submit_next()
                try:
                    loaded, t_load = fut.result() if fut is not None else _timed_load(self.job, item)
                except Exception as exc:
                    self.fail(item, exc, [], 0.0)
                else:
                    group.append((item, loaded, t_load))
                if group and (len(group) >= batch_size or not queue):
                    batch, group = group, []
                    self.process_group(batch)
            clean_exit = True
        finally:
            if pool is not None:
                pool.shutdown(wait=clean_exit, cancel_futures=True)
            _remove(self.live_tmps)  # an interrupt (Ctrl-C) mid-item leaves no temp behind
            self.live_tmps.clear()


def _timed_load(job: BatchJob, item: Path) -> tuple[Any, float]:
    t0 = time.perf_counter()
    if not item.exists():
        raise DataError(f"input not found: {item}")
    loaded = job.load(item)
    return loaded, time.perf_counter() - t0


def _plan_outputs(
    job: BatchJob, items: list[Path], out_dir: Path, reserved: set[str]
) -> dict[Path, list[Path] | BaseException]:
    """Every item's absolute output paths (or the error outputs_for raised), checked before anything runs."""
    out_real = os.path.realpath(out_dir)
    out_abs = str(out_dir)
    real_parents: dict[str, str] = {}  # realpath() costs a stat per path component: once per folder
    plan: dict[Path, list[Path] | BaseException] = {}
    owner: dict[str, Path] = {}
    for item in items:
        try:
            outs = job.outputs_for(item)
        except Exception as exc:
            plan[item] = exc
            continue
        finals = []
        for p in outs:
            final = os.path.abspath(os.path.join(out_abs, p))  # an absolute p replaces out_abs
            parent, name = os.path.split(final)
            if parent not in real_parents:
                real_parents[parent] = os.path.realpath(parent)
            # The final name itself is not resolved: os.replace swaps a symlink, it never writes through it.
            real = os.path.join(real_parents[parent], name)
            if not _inside(real, out_real):
                raise DataError(
                    f"output {p} for {item} lies outside the output folder {out_dir}; refusing to write there"
                )
            if real in reserved:
                raise DataError(f"output {p} for {item} would overwrite the manifest {name}")
            if real in owner:
                raise DataError(f"inputs {owner[real]} and {item} would both write {final}")
            owner[real] = item
            finals.append(Path(final))
        plan[item] = finals
    return plan


def _counts(rows: Iterable[Mapping[str, str]], keys: set[str]) -> tuple[int, int, int]:
    """``(ok, skipped, error)`` over the rows of this run's inputs (a manifest also keeps earlier runs' rows)."""
    statuses = [r["status"] for r in rows if r["input"] in keys]
    return statuses.count("ok"), statuses.count("skipped"), statuses.count("error")


def _plan_todo(
    mine: list[Path],
    plan: dict[Path, list[Path] | BaseException],
    previous: dict[str, dict[str, str]],
    runner: _Runner,
    overwrite: bool,
) -> list[Path]:
    """Record planning errors and skipped items; return the items left to process."""
    todo: list[Path] = []
    for item in mine:
        outs = plan[item]
        if isinstance(outs, BaseException):
            runner.fail(item, outs, [], 0.0)
            continue
        prev = previous.get(str(item))
        done = all(p.exists() for p in outs) if outs else prev is not None and prev["status"] in ("ok", "skipped")
        if done and not overwrite:
            extras = {k: v for k, v in (prev or {}).items() if k not in BASE_COLUMNS}
            runner.manifest.record(runner.row(item, "skipped", "", 0.0, extras))
        else:
            todo.append(item)
    return todo


def _merge_ranks(
    out: Path, main_manifest: Path, my_manifest: Path, rank: int, world: int, keys: set[str]
) -> tuple[tuple[int, int, int], Path] | None:
    """Merge the rank manifests when this rank is the one to do it; None when it is not (or not yet)."""
    if _process_group_initialized():
        distributed.barrier()
        result: tuple[int, int, int] | str
        if rank == 0:
            try:
                merged = merge_manifest_parts(out, world, main_manifest.name)
                result = _counts(_read_csv(merged), keys)
            except MedvitError as exc:
                result = str(exc)
        else:
            result = ""
        result = distributed.broadcast_object(result, src=0)
        if isinstance(result, str):
            raise DataError(result)
        return result, main_manifest
    if _try_merge_without_group(main_manifest, world):
        return _counts(_read_csv(main_manifest), keys), main_manifest
    return None


def _run_in_folder(
    job: BatchJob,
    items: list[Path],
    out: Path,
    rank: int,
    world: int,
    *,
    overwrite: bool,
    workers: int,
    batch_size: int,
    quiet: bool,
    manifest_name: str,
) -> tuple[tuple[int, int, int], Path, bool]:
    """The part of :func:`run_batch` that runs while this process owns ``out``: counts, manifest, final."""
    main_manifest = out / manifest_name
    parts = {_part_path(main_manifest, r) for r in range(world)} if world > 1 else set()
    reserved = {os.path.realpath(p) for p in {main_manifest, *parts}}
    plan = _plan_outputs(job, items, out, reserved)
    mine = items[rank::world]
    my_manifest = main_manifest if world == 1 else _part_path(main_manifest, rank)

    finals = [p for i in mine if isinstance(plan[i], list) for p in plan[i]]  # type: ignore[union-attr]
    stale = _remove_stale_temps([*finals, my_manifest, *([main_manifest] if rank == 0 else [])])
    if stale:
        logger.info("removed %d temp file(s) left by an interrupted run in %s", stale, out)

    previous = _previous_rows(main_manifest)
    mine_keys = [str(i) for i in mine]
    # A single process owns the whole manifest: rows of earlier runs over other inputs stay in it (first, in
    # their order), so a second run into the same folder adds to the results instead of replacing them. Rank
    # parts hold only the rank's items; the merge keeps the earlier rows.
    kept = [k for k in previous if k not in set(mine_keys)] if world == 1 else []
    manifest = _Manifest(my_manifest, [*kept, *mine_keys])
    manifest.rows = {k: previous[k] for k in manifest.order if k in previous}
    manifest.start()

    runner = _Runner(job, plan, out, manifest, ItemProgress(0, job.description, enabled=False))
    todo = _plan_todo(mine, plan, previous, runner, overwrite)
    n_skipped = len(mine) - len(todo)
    label = job.description + (f" ({n_skipped} skipped)" if n_skipped else "")
    runner.progress = ItemProgress(len(todo), label, enabled=not quiet and rank == 0)

    finished = False
    try:
        runner.run(todo, workers, batch_size)
        finished = True
    finally:
        runner.progress.close()
        manifest.close(finished=finished)

    keys = {str(i) for i in items}
    counts = _counts((manifest.rows[k] for k in mine_keys), keys)
    if world == 1:
        # Leftovers of an earlier distributed run were read into `previous`; the manifest now supersedes them.
        base, ext = split_ext(manifest_name)
        for p in out.glob(f"{_glob_escape(base)}.rank*{_glob_escape(ext)}"):
            p.unlink(missing_ok=True)
        for p in out.glob(f".{_glob_escape(base)}.rank*{_glob_escape(ext)}.journal"):
            p.unlink(missing_ok=True)
        return counts, my_manifest, True
    merged = _merge_ranks(out, main_manifest, my_manifest, rank, world, keys)
    if merged is not None:
        return merged[0], merged[1], rank == 0 or not _process_group_initialized()
    if not my_manifest.exists() and main_manifest.exists():
        return counts, main_manifest, False  # merged by another rank meanwhile
    return counts, my_manifest, False


def _inputs_outside(inputs: Sequence[str | os.PathLike[str]], out: Path) -> list[Path]:
    """The inputs (absolute, first occurrence only) that do not lie inside the output folder ``out``.

    Raises:
        DataError: none is left.
    """
    out_real = os.path.realpath(out)
    items: list[Path] = []
    inside = 0
    real_parents: dict[Path, str] = {}
    for p in dict.fromkeys(_abspath(i) for i in inputs):
        if p.parent not in real_parents:
            real_parents[p.parent] = os.path.realpath(p.parent)
        if _inside(os.path.join(real_parents[p.parent], p.name), out_real):
            inside += 1
        else:
            items.append(p)
    if inside:
        logger.warning("ignoring %d input(s) inside the output folder %s", inside, out)
    if not items:
        raise DataError(f"no inputs to process for output folder {out}")
    return items


def run_batch(
    job: BatchJob,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    workers: int = 2,
    batch_size: int = 1,
    quiet: bool = False,
    manifest_name: str = "manifest.csv",
) -> BatchSummary:
    """Run ``job`` over ``inputs`` into ``out_dir`` (see the module docstring for the guarantees).

    Args:
        job: The app's :class:`BatchJob`.
        inputs: Items, usually from :func:`resolve_inputs`. Items inside ``out_dir`` are ignored (they would
            be earlier outputs when the output folder sits inside the input folder).
        out_dir: Output folder, created if needed; nothing is written outside it.
        overwrite: Redo items whose outputs already exist.
        workers: Threads running ``job.load`` ahead of compute; 0 loads in the main thread.
        batch_size: Items per ``job.process_batch`` call.
        quiet: No progress bar or progress log lines.
        manifest_name: File name of the manifest inside ``out_dir``.

    Returns:
        The summary; CLIs end with ``raise typer.Exit(summary.exit_code)``.

    Raises:
        DataError: ``out_dir`` is a file, another run holds it, no input is left, an output lies outside
            ``out_dir`` or two inputs map to the same output.
    """
    t_start = time.perf_counter()
    _check_job(job)
    if workers < 0 or batch_size < 1:
        raise ValueError(f"need workers >= 0 and batch_size >= 1, got workers={workers}, batch_size={batch_size}")
    if not manifest_name or Path(manifest_name).name != manifest_name:
        raise ValueError(f"manifest_name must be a plain file name, got {manifest_name!r}")
    out = _abspath(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output folder {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    items = _inputs_outside(inputs, out)

    rank, world = _rank_world()
    log_name = getattr(job, "log_name", BatchJob.log_name)  # duck-typed jobs too
    log_base, log_ext = split_ext(log_name)
    log_path = out / (log_name if world == 1 else f"{log_base}.rank{rank}{log_ext}")
    with FolderLock(out, job.description, rank=rank, world=world), log_to_file(log_path):
        counts, manifest_path, final = _run_in_folder(
            job,
            items,
            out,
            rank,
            world,
            overwrite=overwrite,
            workers=workers,
            batch_size=batch_size,
            quiet=quiet,
            manifest_name=manifest_name,
        )
        summary = BatchSummary(*counts, manifest_path=manifest_path, seconds=time.perf_counter() - t_start, final=final)
        if rank == 0 or not _process_group_initialized():
            logger.info("%s", summary.line)
    return summary
