"""Training progress: a rich bar (loss, rate, ETA) on a terminal, plain ``logging`` lines otherwise.

The bar is off with ``quiet``, on non-main ranks, and when stdout is not a terminal (CI logs, ``nohup``,
``> file``), where a redrawn bar would be noise; then one INFO line is logged every ``log_every`` steps.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from types import TracebackType

logger = logging.getLogger(__name__)

__all__ = ["TrainProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``3725.0 -> "1:02:05"``."""
    seconds = max(int(round(seconds)), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


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
        self.use_bar = main and not quiet and sys.stdout.isatty()
        self._bar = None
        self._task_id = None
        self._t0 = time.perf_counter()

    def __enter__(self) -> TrainProgress:
        if self.use_bar:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
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
