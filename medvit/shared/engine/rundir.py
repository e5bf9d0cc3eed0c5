"""The run directory every training command owes its user (ARCHITECTURE.md, "What every command owes its user").

Layout::

    run_dir/
      config.yaml          resolved config (written atomically)
      metrics.jsonl        one JSON line per logging step: step, epoch, loss, lr, samples_per_s, time, logs, val/*
      summary.json         written at the end
      ckpt_step00000500.pt last K step checkpoints
      last.pt              newest checkpoint (what --resume reads)
      best.pt              best model by TrainConfig.best_metric (optional)
      plots/loss.png       loss vs step, lr on a twin axis

Only rank 0 writes; the methods are no-ops elsewhere so callers need no ``if is_main()``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medvit.shared.engine.checkpoint import step_checkpoints
from medvit.shared.files import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["RunDir", "write_text_atomic"]


def _plain(obj: Any) -> Any:
    """Make a mapping YAML/JSON-safe: tuples -> lists, Paths -> str, non-finite floats kept as floats."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


class RunDir:
    """Paths and writers of one run directory.

    Args:
        path: The run directory (created by :meth:`prepare`).
        main: Whether this process writes (rank 0).
    """

    def __init__(self, path: str | os.PathLike[str], *, main: bool = True) -> None:
        self.path = Path(path)
        self.main = main

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def last_ckpt(self) -> Path:
        return self.path / "last.pt"

    @property
    def best_ckpt(self) -> Path:
        return self.path / "best.pt"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def has_checkpoints(self) -> bool:
        """Whether a previous run left a checkpoint here."""
        return self.last_ckpt.is_file() or bool(step_checkpoints(self.path))

    def prepare(self) -> None:
        """Create the folder (rank 0)."""
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write the resolved config as ``config.yaml`` (``yaml.safe_dump``, key order kept)."""
        if not self.main:
            return
        import yaml

        write_text_atomic(self.config_path, yaml.safe_dump(_plain(config), sort_keys=False))

    def read_metrics(self) -> list[dict[str, Any]]:
        """Records of ``metrics.jsonl``; a torn last line (a kill mid-write) is skipped."""
        if not self.metrics_path.is_file():
            return []
        records = []
        with open(self.metrics_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("%s: skipping a malformed line (interrupted write?)", self.metrics_path)
        return records

    def truncate_metrics(self, after_step: int) -> int:
        """Drop records with ``step > after_step`` (written after the checkpoint a run resumes from).

        Returns:
            The number of records dropped.
        """
        if not self.main or not self.metrics_path.is_file():
            return 0
        records = self.read_metrics()
        kept = [r for r in records if int(r.get("step", 0)) <= after_step]
        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return len(records) - len(kept)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line (non-finite floats written as null, so the file stays strict JSON)."""
        if not self.main:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in _plain(record).items()}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json`` atomically."""
        if self.main:
            write_text_atomic(self.summary_path, json.dumps(_plain(summary), indent=2) + "\n")

    def plot_loss(self) -> Path | None:
        """Draw ``plots/loss.png``: loss vs step, lr on a twin axis (matplotlib Agg canvas, no pyplot state).

        Returns:
            The PNG path, or None when nothing was logged or on non-main ranks.
        """
        if not self.main:
            return None
        records = [r for r in self.read_metrics() if r.get("loss") is not None]
        if not records:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        steps = [r["step"] for r in records]
        fig = Figure(figsize=(7, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(steps, [r["loss"] for r in records], color="tab:blue", label="loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss", color="tab:blue")
        if all(r["loss"] > 0 for r in records) and max(r["loss"] for r in records) > 20 * min(
            r["loss"] for r in records
        ):
            ax.set_yscale("log")  # a loss falling by orders of magnitude is unreadable on a linear axis
        if any("lr" in r for r in records):
            ax2 = ax.twinx()
            ax2.plot(steps, [r.get("lr", float("nan")) for r in records], color="tab:orange", alpha=0.7)
            ax2.set_ylabel("lr", color="tab:orange")
        ax.set_title(self.path.name)
        fig.tight_layout()
        self.plots.mkdir(parents=True, exist_ok=True)
        out = self.plots / "loss.png"
        with atomic_path(out) as tmp:
            fig.savefig(tmp)
        return out
