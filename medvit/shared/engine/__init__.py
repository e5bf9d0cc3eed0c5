"""Training engine (fit loop, optimizer, checkpoints, distributed) and the batch-job runner.

Re-exports are lazy so that importing ``medvit.shared.engine.batch`` does not import torch.
"""

from __future__ import annotations

from medvit.shared.lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = list(_LAZY)
