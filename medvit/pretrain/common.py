"""What every ``medvit pretrain`` pipeline (CT, chest X-ray, eye) shares: the run-directory check, the torchrun
process group, the optimisation plan (epochs, warmup, learning rate from a preset or its recipe), the one-pass
check of the inputs (sharded over ranks, every verdict gathered in scan order) and the manifest of inputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from medvit.pretrain.config import DEFAULT_EPOCHS, TrainCfg
from medvit.pretrain.presets import Preset
from medvit.shared.engine import distributed as D
from medvit.shared.engine.fit import TrainConfig
from medvit.shared.engine.progress import ItemProgress
from medvit.shared.engine.rundir import RunDir
from medvit.shared.errors import MedvitError, TrainingError
from medvit.shared.files import write_csv_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WARMUP_FRACTION",
    "InputStatus",
    "MethodChoice",
    "OptimPlan",
    "check_inputs",
    "check_run_dir",
    "failure_reason",
    "gather_in_order",
    "optim_plan",
    "process_group",
    "write_inputs_manifest",
]

DEFAULT_WARMUP_FRACTION = 0.01
"""Warmup share of a run whose preset has no recipe (Hi-End-MAE's 1%)."""

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------- the method
@dataclass(frozen=True)
class MethodChoice:
    """Which pipeline a folder goes to (:func:`medvit.pretrain.api.choose_method`).

    Attributes:
        method: ``hi-end-mae``, ``mae`` or ``uni4eye``.
        data: the pipeline: ``ct`` (3D volumes, crops), ``2d`` (2D images, MAE) or ``eye`` (Uni4Eye, 2D + 3D).
        preset: the preset name (given, or the method's default for the data).
        reader: how 2D images are read: ``xray`` (grayscale, :func:`~medvit.shared.data.xray.read_xray`) or
            ``image`` (colour photographs); ``ct`` / ``eye`` for the other pipelines.
        reason: one line saying why (logged, and written to ``config.yaml``).
        given: the method came from ``--method`` / the config, not from the data.
    """

    method: str
    data: str
    preset: str
    reader: str
    reason: str
    given: bool = False


# ---------------------------------------------------------------------------------------------------- run directory
def check_run_dir(out: Path, resume: bool) -> None:
    """Fail early when ``out`` cannot be used: a previous run without ``resume``, or nothing to resume.

    Raises:
        TrainingError: checkpoints without ``resume``, or ``resume`` without ``last.pt``.
    """
    run = RunDir(out)
    if not resume and run.has_checkpoints():
        raise TrainingError(
            f"{out} already holds checkpoints of a previous run; pass --resume to continue it or choose another --out"
        )
    if resume and not run.has_checkpoints():
        raise TrainingError(f"--resume: no checkpoint to resume from in {out} (no last.pt)")


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """The torchrun process group for the block (if launched by torchrun and none exists yet), torn down after."""
    had_group = D.is_initialized()
    D.init_distributed(str(device))
    owns_group = D.is_initialized() and not had_group
    try:
        yield
    except BaseException:
        if owns_group:
            try:
                D.cleanup(barrier=False)
            except Exception:  # noqa: BLE001 - already failing; keep the original error
                logger.debug("process group teardown failed", exc_info=True)
        raise
    if owns_group:
        D.cleanup()


# ---------------------------------------------------------------------------------------------------- optimisation
@dataclass(frozen=True)
class OptimPlan:
    """The ``train:`` section with its nulls filled in, the peak learning rate and the loop's config.

    Attributes:
        train: the section (epochs, warmup fraction filled in).
        lr: peak learning rate.
        lr_rule: how ``lr`` was found (for the log and ``config.yaml``).
        loop: the engine's :class:`~medvit.shared.engine.fit.TrainConfig`.
    """

    train: TrainCfg
    lr: float
    lr_rule: str
    loop: TrainConfig


def _recipe_lr(t: TrainCfg, preset: Preset, world: int) -> tuple[float, str] | None:
    """``blr * effective batch / 256`` for a preset that follows its recipe's learning rate, else None.

    A recipe preset whose own ``lr`` is the recipe's at the paper's batch follows the recipe; one whose ``lr``
    differs (the CPU presets ``cxr-tiny`` and ``uni4eye-tiny``, 1e-3) keeps that fixed rate unless ``train.blr``
    is given.
    """
    recipe = preset.recipe
    if recipe is None:
        return None
    follows = abs(preset.lr - recipe.lr(recipe.batch_size)) <= 1e-12 * max(preset.lr, 1.0)
    if t.blr is None and not follows:
        return None
    blr = recipe.blr if t.blr is None else t.blr
    effective = t.batch_size * t.grad_accum * world
    return blr * effective / 256, f"blr {blr:g} x effective batch {effective} / 256"


def optim_plan(t: TrainCfg, preset: Preset, *, world: int, **loop_overrides: Any) -> OptimPlan:
    """Fill in the section's nulls and build the loop's config.

    Epochs: 100 when neither ``steps`` nor ``epochs`` is set. Warmup: the recipe's share of its epochs (thorax
    40/800, Uni4Eye 40/200), else 1%. Learning rate: ``train.lr``; else ``blr * effective batch / 256`` for a
    recipe preset (see :func:`_recipe_lr`); else the preset's.

    Args:
        t: the ``train:`` section.
        preset: the model preset.
        world: processes (the effective batch is ``batch_size * grad_accum * world``).
        **loop_overrides: :class:`TrainConfig` fields the pipeline sets (``batch_size``, ``shuffle``...).

    Returns:
        The :class:`OptimPlan`.
    """
    if t.steps is None and t.epochs is None:
        t = replace(t, epochs=DEFAULT_EPOCHS)
    if t.warmup_fraction is None:
        recipe = preset.recipe
        warm = recipe.warmup_epochs / recipe.epochs if recipe is not None else DEFAULT_WARMUP_FRACTION
        t = replace(t, warmup_fraction=warm)
    scaled = _recipe_lr(t, preset, world)
    if t.lr is not None:
        lr, rule = float(t.lr), "train.lr"
    elif scaled is not None:
        lr, rule = scaled
    else:
        lr, rule = preset.lr, f"preset {preset.name}"
    loop = TrainConfig.from_section(t, lr=lr, betas=tuple(t.betas), **loop_overrides)
    return OptimPlan(train=t, lr=lr, lr_rule=rule, loop=loop)


# ---------------------------------------------------------------------------------------------------- inputs
def failure_reason(err: BaseException) -> str:
    """One line for a failed input: our reader's message if a library wrapped it (MONAI's "applying transform
    ..."), else the innermost error."""
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, MedvitError):
            return str(e).strip().splitlines()[0]
    inner = chain[-1]
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


@dataclass(frozen=True)
class InputStatus:
    """One input of a 2D or eye run and whether it can be used (a row of ``inputs.csv``).

    Attributes:
        path: file, or folder of B-scans.
        dims: 2 (image) or 3 (volume).
        status: ``ok`` or ``error``.
        shape: the cached array's shape (ok only).
        error: why it cannot be used (error only).
    """

    path: Path
    dims: int
    status: str
    shape: tuple[int, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def gather_in_order(mine: list[T], total: int, world: int) -> list[T]:
    """Every rank's share ``items[rank::world]`` back in the original order, on every rank."""
    if world == 1:
        return mine
    import torch.distributed as dist

    shares: list[Any] = [None] * world
    dist.all_gather_object(shares, mine)
    return [shares[i % world][i // world] for i in range(total)]


def check_inputs(
    sources: Sequence[tuple[Path, int]],
    check: Callable[[Path, int], tuple[int, ...]],
    *,
    label: str,
    progress: bool,
    threads: int | None = None,
) -> list[InputStatus]:
    """Run ``check`` (decode and cache) once on every input; every rank takes its share, all get every verdict.

    Decoding runs in a thread pool (OpenCV and zlib release the GIL); one input that fails is recorded with its
    reason and logged (no patient data: readers never put header fields into messages), never fatal.

    Args:
        sources: ``(path, dims)`` in scan order (the same on every rank).
        check: returns the cached array's shape or raises.
        label: progress-bar label.
        progress: show a progress bar (rank 0).
        threads: decoding threads per rank (default: up to 8, the CPUs available).

    Returns:
        One :class:`InputStatus` per source, in order.
    """
    world, rank = D.world_size(), D.rank()
    share = list(sources[rank::world])
    n_threads = threads or max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))

    def one(src: tuple[Path, int]) -> InputStatus:
        path, dims = src
        try:
            return InputStatus(path, dims, "ok", tuple(int(s) for s in check(path, dims)))
        except Exception as err:  # noqa: BLE001 - one bad input never stops the run; the reason is recorded
            reason = failure_reason(err)
            logger.warning("skipping %s: %s", path, reason)
            return InputStatus(path, dims, "error", error=reason)

    out: list[InputStatus] = []
    with ItemProgress(len(share), label, enabled=progress) as bar, ThreadPoolExecutor(n_threads) as pool:
        for status in pool.map(one, share):
            out.append(status)
            bar.advance()
    return gather_in_order(out, len(sources), world)


def write_inputs_manifest(path: Path, rows: Sequence[InputStatus], root: Path | None = None) -> None:
    """``inputs.csv``: ``path, dims, status, shape, error`` per input (paths relative to ``root`` where possible)."""

    def shown(p: Path) -> str:
        if root is not None:
            with contextlib.suppress(ValueError):
                return p.relative_to(root).as_posix()
        return str(p)

    table = [
        {"path": shown(r.path), "dims": r.dims, "status": r.status, "shape": "x".join(map(str, r.shape))}
        | {"error": r.error}
        for r in rows
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(path, table, ["path", "dims", "status", "shape", "error"])
