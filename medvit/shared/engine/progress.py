"""Progress of every command: a rich bar on stderr when it is a terminal, plain ``logging`` lines otherwise.

:class:`TrainProgress` follows optimizer steps (loss, rate, ETA); :class:`ItemProgress` follows items of a batch
or a preprocessing pass (rate, ETA). Bars are off with ``quiet``, on non-main ranks, and when stderr is not a
terminal (CI logs, ``nohup``, ``2> file``), where a redrawn bar would be noise; then INFO lines are logged.
Progress and logs go to stderr; results go to stdout.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ItemProgress", "TrainProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``3725.0 -> "1:02:05"``."""
    seconds = max(int(round(seconds)), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _rich_bar(description: str, *fields: str, eta_label: bool = False) -> Any:
    """A rich ``Progress`` on stderr: description, bar, n/total, the given text fields, elapsed time, ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(description), BarColumn(), MofNCompleteColumn(), *(TextColumn(f) for f in fields)]
    columns += [TimeElapsedColumn(), *([TextColumn("eta")] if eta_label else []), TimeRemainingColumn()]
    return Progress(*columns, console=Console(stderr=True))  # progress on stderr, results on stdout


class TrainProgress:
    """Progress of a fit over optimizer steps.

    Args:
        total: Total optimizer steps.
        initial: Steps already done (resume).
        quiet: Never draw the bar.
        main: Whether this is the main rank (others stay silent).
        description: Label of the bar / log lines.
    """

    def __init__(
        self, total: int, initial: int = 0, *, quiet: bool = False, main: bool = True, description: str = "train"
    ) -> None:
        self.total = total
        self.initial = initial
        self.main = main
        self.description = description
        self.use_bar = main and not quiet and sys.stderr.isatty()
        self._bar = None
        self._task_id = None
        self._t0 = time.perf_counter()

    def __enter__(self) -> TrainProgress:
        if self.use_bar:
            self._bar = _rich_bar(
                "[bold]{task.description}", "loss {task.fields[loss]}", "{task.fields[rate]}", eta_label=True
            )
            self._bar.start()
            self._task_id = self._bar.add_task(
                self.description, total=self.total, completed=self.initial, loss="-", rate=""
            )
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def update(
        self,
        step: int,
        loss: float,
        samples_per_s: float | None = None,
        *,
        log: bool = False,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        """Advance to ``step``; on log steps refresh the loss (bar) or log a line (no bar).

        Args:
            step: Completed optimizer steps.
            loss: Loss to show.
            samples_per_s: Throughput to show.
            log: Whether this is a logging step.
            extra: Other values for the plain log line (e.g. ``lr``, ``epoch``).
        """
        if not self.main:
            return
        if self._bar is not None:
            fields = {}
            if log:
                fields["loss"] = f"{loss:.4g}"
                if samples_per_s is not None:
                    fields["rate"] = f"{samples_per_s:.1f} samples/s"
            self._bar.update(self._task_id, completed=step, **fields)
            return
        if not log:
            return
        done = step - self.initial
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        parts = [f"{self.description} step {step}/{self.total}", f"loss {loss:.4g}"]
        for k, v in (extra or {}).items():
            parts.append(f"{k} {v:.4g}")
        if samples_per_s is not None:
            parts.append(f"{samples_per_s:.1f} samples/s")
        if eta == eta:  # not NaN
            parts.append(f"eta {format_duration(eta)}")
        logger.info(" | ".join(parts))


class ItemProgress:
    """Progress over items (files, cases, volumes): a rich bar with rate and ETA on stderr when it is a terminal,
    INFO log lines otherwise (every tenth of the work or 30 s), nothing when disabled.

    Use as a context manager (or call :meth:`close`); call :meth:`advance` once per finished item.

    Args:
        total: Number of items.
        description: Label of the bar and the log lines.
        enabled: False for ``--quiet`` and non-main ranks.
    """

    def __init__(self, total: int, description: str, *, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.description = description
        self._enabled = enabled and total > 0
        self._bar: Any = None
        self._t0 = time.perf_counter()
        self._next_log = self._t0 + 30.0
        self._log_every = max(1, total // 10)
        if self._enabled and sys.stderr.isatty():
            self._bar = _rich_bar("{task.description}", "{task.fields[rate]}")
            self._task = self._bar.add_task(description, total=total, rate="")
            self._bar.start()

    def advance(self) -> None:
        self.done += 1
        if not self._enabled:
            return
        elapsed = time.perf_counter() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.update(self._task, advance=1, rate=f"{rate:.2f} it/s")
        elif self.done % self._log_every == 0 or self.done == self.total or time.perf_counter() > self._next_log:
            self._next_log = time.perf_counter() + 30.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            logger.info("%s: %d/%d (%.2f it/s, ETA %.0f s)", self.description, self.done, self.total, rate, eta)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ItemProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
