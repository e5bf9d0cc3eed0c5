"""Training checkpoints: atomic writes, rotation, ``weights_only`` loading, RNG state capture/restore.

A training checkpoint is a plain dict of tensors and primitive containers, so that
``torch.load(path, weights_only=True)`` reads it (no pickled classes, no numpy arrays). Keys:

- ``format`` (``"medvit-train"``), ``format_version``, ``medvit_version``;
- ``model`` (state dict of the unwrapped task), ``optimizer``, ``scheduler`` (``{"step": int}``), ``scaler``;
- ``step``, ``epoch``, ``batch_in_epoch`` (micro-batches of ``epoch`` already consumed), ``last_loss``,
  ``train_seconds``, ``best`` (``{"metric", "value", "step"}``), ``world_size``, ``config``;
- ``rng``: one entry per rank with ``python``, ``numpy``, ``torch`` and ``cuda`` states.

``best.pt`` holds only ``model``, ``step``, ``best`` and the version fields.

References: the atomic-rename pattern is POSIX ``rename(2)``; MAE ``util/misc.py: save_model`` for the contents.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvit.shared.errors import TrainingError
from medvit.shared.files import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "CKPT_FORMAT",
    "capture_rng",
    "load_checkpoint",
    "prune_step_checkpoints",
    "restore_rng",
    "save_atomic",
    "step_checkpoint_name",
    "step_checkpoints",
    "update_last",
]

CKPT_FORMAT = "medvit-train"
_STEP_RE = re.compile(r"^ckpt_step(\d{8})\.pt$")


def step_checkpoint_name(step: int) -> str:
    """File name of the checkpoint taken after ``step`` optimizer steps (``ckpt_step00000020.pt``)."""
    return f"ckpt_step{step:08d}.pt"


def step_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Step checkpoints in ``run_dir`` as ``(step, path)``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _STEP_RE.match(p.name))]
    return sorted(found)


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace`` onto ``path``.

    A crash at any point leaves either the previous file or the new one, never a partial file.

    Args:
        obj: Tensors and primitive containers.
        path: Destination.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return path


def update_last(src: str | os.PathLike[str], last: str | os.PathLike[str]) -> Path:
    """Atomically make ``last`` a copy of ``src`` (a hard link when the filesystem allows, else a byte copy).

    Args:
        src: A complete checkpoint file.
        last: The ``last.pt`` path to replace.

    Returns:
        ``last`` as a ``Path``.
    """
    src, last = Path(src), Path(last)
    with atomic_path(last) as tmp:
        try:
            os.link(src, tmp)  # instant, no second copy on disk; src is never written in place
        except OSError:
            shutil.copyfile(src, tmp)
    return last


def prune_step_checkpoints(run_dir: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints (``last.pt`` and ``best.pt`` are kept).

    Returns:
        The deleted paths.
    """
    found = step_checkpoints(run_dir)
    doomed = [p for _, p in found[: max(len(found) - keep_last, 0)]]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``.

    Args:
        path: A ``last.pt`` / ``ckpt_step*.pt`` / ``best.pt`` file.
        map_location: Where to put the tensors.

    Returns:
        The checkpoint dict.

    Raises:
        TrainingError: Missing, unreadable or not a medvit training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt or foreign file
        raise TrainingError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise TrainingError(f"{path}: not a medvit training checkpoint (no format={CKPT_FORMAT!r} key)")
    return ckpt


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy (legacy global), torch CPU and every CUDA device, as tensors/primitives."""
    version, py_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(py_state), gauss],
        "numpy": [np_kind, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, py_state, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in py_state), gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (np_kind, np.asarray(np_keys, dtype=np.uint32), int(np_pos), int(np_has_gauss), float(np_gauss))
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            logger.warning(
                "checkpoint has %d CUDA RNG states for %d devices; CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )
