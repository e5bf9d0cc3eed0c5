"""Training engine (fit loop, optimizer, checkpoints, distributed) and the batch-job runner.

Re-exports are lazy so that importing ``medvit.shared.engine.batch`` does not import torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "fit": "medvit.shared.engine.fit",
    "TrainConfig": "medvit.shared.engine.fit",
    "FitResult": "medvit.shared.engine.fit",
    "FitState": "medvit.shared.engine.fit",
    "Task": "medvit.shared.engine.task",
    "run_batch": "medvit.shared.engine.batch",
    "BatchJob": "medvit.shared.engine.batch",
    "BatchSummary": "medvit.shared.engine.batch",
    "resolve_inputs": "medvit.shared.engine.batch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medvit.shared.engine' has no attribute {name!r}")


__all__ = list(_LAZY)
