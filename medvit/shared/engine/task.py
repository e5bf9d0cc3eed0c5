"""The contract between a method/app and the training engine.

A *task* is an ``nn.Module`` that turns one batch into a scalar loss. It owns the model (backbone, heads,
decoder) and the loss; it never touches optimizers, AMP, DDP, devices or files: :func:`~medvit.shared.engine.fit.fit`
does (the split of MAE's ``models_mae.py`` vs ``engine_pretrain.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = ["Task", "TaskOutput", "check_output"]


class _TaskOutputRequired(TypedDict):
    loss: torch.Tensor


class TaskOutput(_TaskOutputRequired, total=False):
    """What ``Task.forward`` returns.

    Attributes:
        loss: Scalar tensor (shape ``[]``) to minimise; the mean over the batch.
        logs: Optional extra scalars to log (floats or 0-d/1-element tensors, e.g. accuracy, a loss term);
            averaged over the logging interval and written to ``metrics.jsonl`` under their own names.
    """

    logs: Mapping[str, float | torch.Tensor]


@runtime_checkable
class Task(Protocol):
    """An ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": tensor, "logs": {...}}``.

    The batch is whatever the ``DataLoader`` (with the caller's ``collate_fn``) yields, already moved to the
    training device (tensors inside dicts, lists and tuples included). ``forward`` runs under autocast when
    mixed precision is on. Optional hooks the engine uses when present:

    - ``no_weight_decay() -> set[str]`` on the task or any submodule (names relative to that submodule);
    - ``layer_id(name) -> int`` plus ``blocks`` on the backbone submodule, for layer-wise LR decay;
    - ``on_epoch_start(epoch: int)`` on the task, called before each epoch's first batch (also when a resumed run
      starts mid-epoch), e.g. to unfreeze a backbone (mark its parameters ``unfreezable``, see
      :func:`~medvit.shared.engine.optim.build_param_groups`).
    """

    def forward(self, batch: Any) -> TaskOutput:
        """Compute the loss of one (micro-)batch.

        Args:
            batch: One collated batch on the training device.

        Returns:
            ``{"loss": scalar tensor, "logs": {name: float | tensor}}`` (``logs`` may be omitted).
        """
        ...

    def __call__(self, batch: Any) -> TaskOutput: ...


def check_output(out: Any, task_name: str = "task") -> TaskOutput:
    """Validate a task's return value (clear errors for method authors instead of a KeyError deep in the loop).

    Args:
        out: The value ``task(batch)`` returned.
        task_name: Used in the error message.

    Returns:
        ``out`` unchanged.

    Raises:
        TypeError: Not a mapping with a scalar tensor ``"loss"``.
    """
    import torch

    if not isinstance(out, Mapping) or "loss" not in out:
        raise TypeError(f"{task_name}.forward(batch) must return a dict with a 'loss' key, got {type(out).__name__}")
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"{task_name}.forward(batch)['loss'] must be a scalar tensor, got {shape}")
    logs = out.get("logs")
    if logs is not None and not isinstance(logs, Mapping):
        raise TypeError(f"{task_name}.forward(batch)['logs'] must be a dict, got {type(logs).__name__}")
    return out  # type: ignore[return-value]
