"""Helpers shared by the benchmark scripts (a sibling module: the scripts run as ``python benchmarks/X.py``)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB.

    Reads ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` carries the parent's peak across fork + exec, so a
    worker subprocess started by a benchmark that built models first would report the parent's peak. Elsewhere
    than Linux, ``ru_maxrss``.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
