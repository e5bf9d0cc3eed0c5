"""The training loop every pretraining method and app trains through.

:func:`fit` knows nothing about any method: a task (:mod:`medvit.shared.engine.task`) turns a batch into
``{"loss", "logs"}``; the loop owns devices, AMP, DDP, gradient accumulation and clipping, the AdamW param
groups and per-iteration LR (:mod:`~medvit.shared.engine.optim`), checkpoints and resume
(:mod:`~medvit.shared.engine.checkpoint`), the run directory (:mod:`~medvit.shared.engine.rundir`) and
progress. One code path serves a single process and ``torchrun`` (DDP; gloo on CPU, nccl on CUDA).

References:
    - MAE ``engine_pretrain.py: train_one_epoch`` (per-iteration LR, AMP, accumulation, ``isfinite`` abort)
      and ``util/misc.py`` (checkpoint contents, ``NativeScalerWithGradNormCount``):
      https://github.com/facebookresearch/mae
    - PyTorch DDP notes (``no_sync`` for accumulation, ``DistributedSampler.set_epoch``) and AMP recipes
      (``GradScaler.unscale_`` before clipping).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import os
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import medvit
from medvit.shared.engine import distributed as D
from medvit.shared.engine.checkpoint import (
    CKPT_FORMAT,
    capture_rng,
    load_checkpoint,
    prune_step_checkpoints,
    restore_rng,
    save_atomic,
    step_checkpoint_name,
    step_checkpoints,
    update_last,
)
from medvit.shared.engine.lock import FolderLock
from medvit.shared.engine.optim import build_param_groups, lr_at
from medvit.shared.engine.progress import TrainProgress
from medvit.shared.engine.rundir import RunDir
from medvit.shared.engine.section import OptimSection
from medvit.shared.engine.task import check_output
from medvit.shared.errors import ConfigError, DataError, TrainingError
from medvit.shared.files import log_to_file

logger = logging.getLogger(__name__)

__all__ = [
    "FitResult",
    "FitState",
    "ResumableDistributedSampler",
    "SeededSamples",
    "TrainConfig",
    "fit",
    "move_to_device",
    "resolve_device",
    "resolve_precision",
    "sample_seed",
    "seed_everything",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything the training loop needs; apps map their own config onto it.

    Attributes:
        steps: Total optimizer steps. Set this or ``epochs``.
        epochs: Epochs, converted to ``epochs * len(loader) // grad_accum`` steps.
        batch_size: Samples per micro-batch per rank (effective batch = batch_size * grad_accum * world size).
        workers: DataLoader worker processes.
        lr: Peak learning rate (after warmup).
        min_lr: Learning rate at the end of the schedule.
        weight_decay: AdamW decay (not applied to biases, norms, tokens, position embeddings).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: Linear warmup length in steps.
        warmup_fraction: Warmup as a fraction of ``steps`` (instead of ``warmup_steps``).
        schedule: Decay after warmup: ``"cosine"`` (half cycle), ``"linear"``, ``"constant"`` or
            ``"exponential"`` (``lr * lr_gamma ** (steps after warmup // decay_every)``).
        lr_gamma: Factor of the ``exponential`` schedule.
        decay_every: Steps between two ``exponential`` decays; None = one epoch (batches per epoch / grad_accum).
        layer_decay: Layer-wise LR decay factor (MAE/BEiT), None = off.
        grad_accum: Micro-batches per optimizer step.
        grad_clip: Max global gradient norm, None = off.
        precision: ``"auto"`` (fp32 on CPU; bf16 autocast on CUDA when supported, else fp16 + GradScaler),
            ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under torchrun, CUDA uses ``LOCAL_RANK``).
        seed: Seeds python/numpy/torch (plus rank) and the data order.
        shuffle: Shuffle the training set each epoch (seeded by ``seed`` and the epoch).
        drop_last: Drop the last incomplete batch of each epoch.
        log_every: Steps between ``metrics.jsonl`` lines (the last step is always logged).
        ckpt_every: Steps between checkpoints (0 = only at the end).
        keep_last: Step checkpoints kept besides ``last.pt`` / ``best.pt``.
        eval_every: Steps between ``on_eval`` hook calls (0 = only at the end).
        best_metric: Metric of ``on_eval`` (e.g. ``"val/dice"``) that selects ``best.pt``; None = no best.pt.
        best_mode: ``"max"`` or ``"min"``.
        compile: Wrap the model in ``torch.compile`` (opt-in: about 18 s compile on CPU for ~3% gain).
        find_unused_parameters: Passed to DDP (needed when some parameters get no gradient on a step).
    """

    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    workers: int = 0
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_fraction: float | None = None
    schedule: Literal["cosine", "linear", "constant", "exponential"] = "cosine"
    lr_gamma: float = 0.95
    decay_every: int | None = None
    layer_decay: float | None = None
    grad_accum: int = 1
    grad_clip: float | None = None
    precision: Precision = "auto"
    device: str = "auto"
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2
    eval_every: int = 0
    best_metric: str | None = None
    best_mode: Literal["max", "min"] = "max"
    compile: bool = False
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_numbers()
        self._check_ranges()
        self._check_choices()

    def _bad(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"train.{key}: {why} (got {getattr(self, key)!r})")

    def _check_counts(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError(
                f"train: set exactly one of steps or epochs (got steps={self.steps}, epochs={self.epochs})"
            )
        for key in ("steps", "epochs"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise self._bad(key, "must be >= 1")
        for key in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, key) < 1:
                raise self._bad(key, "must be >= 1")

    def _check_numbers(self) -> None:
        for key in ("lr", "min_lr", "weight_decay", "eps", "warmup_fraction", "layer_decay", "grad_clip", "lr_gamma"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise self._bad(key, "must be a finite number")
        if not all(math.isfinite(b) for b in self.betas):
            raise self._bad("betas", "must be finite numbers")
        for key in ("workers", "warmup_steps", "ckpt_every", "keep_last", "eval_every", "lr", "min_lr", "weight_decay"):
            if getattr(self, key) < 0:
                raise self._bad(key, "must be >= 0")
        if self.eps <= 0:
            raise self._bad("eps", "must be > 0")

    def _check_ranges(self) -> None:
        if self.warmup_fraction is not None:
            if not 0.0 <= self.warmup_fraction < 1.0:
                raise self._bad("warmup_fraction", "must be in [0, 1)")
            if self.warmup_steps:
                raise self._bad("warmup_fraction", "set warmup_steps or warmup_fraction, not both")
        if self.steps is not None and self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise self._bad("warmup_steps", f"must be < steps={self.steps}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise self._bad("betas", "must be two numbers in [0, 1)")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise self._bad("layer_decay", "must be in (0, 1] or null")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise self._bad("grad_clip", "must be > 0 or null")

    def _check_choices(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise self._bad("precision", "must be one of auto, fp32, bf16, fp16")
        if not _DEVICE_RE.match(self.device):
            raise self._bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.schedule not in ("cosine", "linear", "constant", "exponential"):
            raise self._bad("schedule", "must be one of cosine, linear, constant, exponential")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise self._bad("lr_gamma", "must be in (0, 1]")
        if self.decay_every is not None and self.decay_every < 1:
            raise self._bad("decay_every", "must be >= 1 or null")
        if self.best_mode not in ("max", "min"):
            raise self._bad("best_mode", "must be max or min")

    @classmethod
    def from_section(cls, section: OptimSection, **overrides: Any) -> TrainConfig:
        """Map an app's optimisation section onto the loop's config.

        Every field of :class:`~medvit.shared.engine.section.OptimSection` is copied under its name (``steps``
        wins over ``epochs``); a field the section adds must be declared in its ``APP_FIELDS`` (the app's own,
        e.g. ``preview_every``), so that a misspelt or unmapped setting is an error instead of being dropped.
        ``overrides`` then set or replace fields the app derives (``best_metric``, ``drop_last``, an ``lr`` taken
        from a preset, ...).

        Args:
            section: the app's section, an ``OptimSection`` (subclass) instance, e.g. ``cfg.optim``.
            **overrides: TrainConfig fields that win over the section's.

        Returns:
            The validated :class:`TrainConfig`.

        Raises:
            ConfigError: a value the loop refuses (see ``__post_init__``), or no learning rate at all.
            TypeError: ``section`` is no ``OptimSection``, declares fields the loop does not know, or an override
                is not a TrainConfig field.
        """
        if not isinstance(section, OptimSection):
            raise TypeError(f"from_section needs an OptimSection, got {type(section).__name__}")
        shared = [f.name for f in dataclasses.fields(OptimSection)]
        extra = [f.name for f in dataclasses.fields(section) if f.name not in shared]
        undeclared = sorted(set(extra) - set(section.APP_FIELDS))
        if undeclared:
            raise TypeError(
                f"{type(section).__name__} adds {undeclared} to the optimisation section without declaring them in "
                "APP_FIELDS: the training loop would ignore them"
            )
        values = {name: getattr(section, name) for name in shared}
        if values["steps"] is not None:
            values["epochs"] = None
        values = {**values, **overrides}
        if values["lr"] is None:
            raise ConfigError("optim.lr: no learning rate given and none taken from a preset")
        if isinstance(values["betas"], list):
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for YAML/JSON and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class FitState:
    """What hooks see.

    Attributes:
        step: Completed optimizer steps.
        epoch: Current epoch (0-based).
        task: The unwrapped task (no DDP / compile wrapper).
        run_dir: The run directory.
        device: The training device.
        logs: The latest values: ``loss`` and ``lr`` every step, the full metrics record on logging steps.
        total_steps: Steps of the whole run.
        rank: Global rank.
        world_size: Number of processes.
        precision: Resolved precision (``"fp32"``, ``"bf16"`` or ``"fp16"``).
    """

    step: int
    epoch: int
    task: nn.Module
    run_dir: Path
    device: torch.device
    logs: dict[str, float] = field(default_factory=dict)
    total_steps: int = 0
    rank: int = 0
    world_size: int = 1
    precision: str = "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The training autocast context, for hooks that want eval to run in the training precision."""
        return _autocast(self.device, self.precision)


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns (identical on every rank).

    Attributes:
        step: Completed optimizer steps.
        final_loss: Loss of the last step (mean over ranks), NaN if no step ran in this call.
        run_dir: The run directory.
        best: Best value of ``best_metric`` (None without one).
        best_step: Step of ``best``.
    """

    step: int
    final_loss: float
    run_dir: Path
    best: float | None = None
    best_step: int | None = None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The random seed of training sample ``index`` in ``epoch`` of a run seeded ``seed`` (64 bits).

    Drawn through numpy's ``SeedSequence``, so that neighbouring ``(seed, epoch, index)`` give unrelated streams.
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` whose next iteration can start part-way through the epoch.

    The order depends only on ``(seed, epoch)``, so skipping the first ``n`` indices of epoch ``e``
    reproduces exactly the rest of the interrupted epoch without loading the skipped samples. With
    ``num_replicas=1, rank=0`` it is the single-process sampler too (one code path). It yields
    ``(index, sample_seed(seed, epoch, index))`` pairs for :class:`SeededSamples`.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self._skip = 0

    def skip_next(self, n_indices: int) -> None:
        """Make the next ``__iter__`` start after its first ``n_indices`` indices."""
        self._skip = n_indices

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices[skip:]])

    def __len__(self) -> int:
        return self.num_samples - self._skip


class SeededSamples(Dataset):
    """The training set as the loop reads it: every sample fetched under its own random seed.

    Random augmentation draws from python's, numpy's and torch's global generators and from generators that
    transforms keep for themselves (MONAI's ``Randomizable.R``, albumentations' ``random_generator``). A
    checkpoint can hold the first kind but not the second, and in ``DataLoader`` workers neither survives an
    epoch. So the augmentation of sample ``i`` in epoch ``e`` is made a function of ``(seed, e, i)`` alone:
    the three global generators are seeded with :func:`sample_seed` around the fetch (and restored after it,
    so the model's own randomness in the main process does not depend on the data), and a dataset that keeps
    generators of its own reseeds them in ``reseed(seed: int)``, which is called before each fetch. A run
    resumed mid-epoch then sees the very samples an uninterrupted run saw, with any number of workers.

    Args:
        dataset: A map-style dataset; optional ``reseed(seed: int) -> None``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._reseed = getattr(dataset, "reseed", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators belong to the model
            if self._reseed is not None:
                self._reseed(seed)
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def seed_everything(seed: int) -> None:
    """Seed python, numpy's legacy global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a device; under torchrun CUDA means ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: CUDA requested but not available, or ``N`` out of range.
    """
    if not _DEVICE_RE.match(spec):
        raise ConfigError(f"train.device: must be auto, cpu, cuda or cuda:N (got {spec!r})")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device: {spec!r} requested but torch.cuda.is_available() is False; use device=cpu")
    if D.env_world_size() > 1:
        if spec != "cuda":
            logger.warning("device=%s ignored under torchrun: each rank uses cuda:LOCAL_RANK", spec)
        return torch.device("cuda", D.local_rank())
    index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {spec!r} but only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> fp32 on CPU (bf16/fp16 matmuls are ~100x slower there), bf16 on CUDA if supported, else fp16."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision != "fp32" and device.type == "cpu":
        logger.warning("precision=%s on CPU: reduced-precision matmuls are very slow on most CPUs", precision)
    return precision


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[precision])


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move tensors inside nested dicts / lists / tuples (namedtuples kept) to ``device``; other leaves unchanged.

    Args:
        batch: A collated batch.
        device: Target device.
        non_blocking: Asynchronous copy (effective from pinned memory to CUDA).

    Returns:
        The same structure with tensors on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        moved = {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
        if type(batch) is dict:
            return moved
        try:
            return type(batch)(moved)
        except TypeError:
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


def _hooks_with(hooks: Sequence[Any], name: str) -> list[Any]:
    return [h for h in hooks if callable(getattr(h, name, None))]


class _Interval:
    """Sums over one logging interval: rank-mean step losses, grad norms, rank-0 task logs, wall time."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self._reset()

    def _reset(self) -> None:
        self.t0 = time.perf_counter()
        self.steps = 0
        self.loss = 0.0
        self.grad_norm: torch.Tensor | None = None
        self.logs: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add_logs(self, logs: Mapping[str, float | torch.Tensor]) -> None:
        for k, v in logs.items():
            # tensors stay on the device until flush: no host sync per micro-batch
            v = v.detach().float().mean() if isinstance(v, torch.Tensor) else float(v)
            self.logs[k] = self.logs.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def add_step(self, loss: float, grad_norm: torch.Tensor | None) -> None:
        self.steps += 1
        self.loss += loss
        if grad_norm is not None:
            self.grad_norm = grad_norm if self.grad_norm is None else self.grad_norm + grad_norm

    def flush(self, lr: float) -> dict[str, float]:
        """Interval means as a metrics record (``loss``, ``lr``, ``samples_per_s``, ``grad_norm``, task logs)."""
        elapsed = time.perf_counter() - self.t0
        out = {
            "loss": self.loss / self.steps,
            "lr": lr,
            "samples_per_s": self.samples_per_step * self.steps / elapsed if elapsed > 0 else float("nan"),
        }
        if self.grad_norm is not None:
            out["grad_norm"] = float(self.grad_norm.item()) / self.steps
        for k, v in self.logs.items():
            out[k] = float(v.item() if isinstance(v, torch.Tensor) else v) / self.counts[k]
        self._reset()
        return out


class _Trainer:
    """State of one :func:`fit` call; attributes (not locals) hold DDP/optimizer so teardown can drop them."""

    def __init__(
        self,
        task: nn.Module,
        train_set: Dataset,
        cfg: TrainConfig,
        run_dir: str | os.PathLike[str],
        *,
        device: torch.device,
        collate_fn: Any,
        resume: bool,
        quiet: bool,
        hooks: Sequence[Any],
        resolved_config: Mapping[str, Any] | None,
    ) -> None:
        self.raw = task
        self.train_set = train_set
        self.cfg = cfg
        self.device = device
        self.collate_fn = collate_fn
        self.resume = resume
        self.quiet = quiet
        self.hooks = list(hooks)
        self.resolved_config = resolved_config
        self.rank = D.rank()
        self.world = D.world_size()
        self.main = self.rank == 0
        self.rundir = RunDir(run_dir, main=self.main)
        self.precision = resolve_precision(cfg.precision, device)
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.forward_module: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.loader: DataLoader | None = None
        self.lockstep_error = False  # an error every rank raised together (safe to barrier in teardown)
        self.folder_lock: FolderLock | None = None
        self._log_file: contextlib.AbstractContextManager[None] | None = None

    # ------------------------------------------------------------------ setup
    def _check_run_dir(self) -> Path | None:
        """Rank 0 decides resume/overwrite; every rank gets the same answer (or the same error)."""
        answer: tuple[str | None, str | None] = (None, None)
        if self.main:
            # One writer per run directory: a second training (or a --resume started twice) into it stops here
            # instead of interleaving checkpoints and metrics with the first.
            self.folder_lock = FolderLock(self.rundir.path, "train")
            try:
                self.folder_lock.acquire()
            except DataError as exc:
                self.folder_lock = None
                answer = (None, str(exc))
        if self.main and answer[1] is None:
            ckpt = self.rundir.last_ckpt if self.rundir.last_ckpt.is_file() else None
            if ckpt is None and step_checkpoints(self.rundir.path):
                ckpt = step_checkpoints(self.rundir.path)[-1][1]  # killed between a step file and last.pt
            if self.resume and ckpt is None:
                answer = (None, f"--resume: no checkpoint to resume from in {self.rundir.path} (no last.pt)")
            elif not self.resume and self.rundir.has_checkpoints():
                answer = (
                    None,
                    f"{self.rundir.path} already holds checkpoints of a previous run; "
                    "pass --resume to continue it or choose another --out",
                )
            else:
                answer = (str(ckpt) if ckpt else None, None)
        path, error = D.broadcast_object(answer)
        if error:
            self.lockstep_error = True
            raise TrainingError(error)
        return Path(path) if path else None

    def _build_loader(self) -> None:
        cfg = self.cfg
        if not hasattr(self.train_set, "__len__") or not hasattr(self.train_set, "__getitem__"):
            raise TypeError("fit() needs a map-style dataset (with __len__ and __getitem__)")
        self.sampler = ResumableDistributedSampler(
            self.train_set, num_replicas=self.world, rank=self.rank, shuffle=cfg.shuffle, seed=cfg.seed
        )
        # A dedicated generator seeds the workers per epoch; without it, the DataLoader draws worker seeds
        # from the global torch RNG, which would make resumed runs diverge from uninterrupted ones.
        self.loader_gen = torch.Generator()
        kwargs: dict[str, Any] = {}
        if self.collate_fn is not None:
            kwargs["collate_fn"] = self.collate_fn
        self.loader = DataLoader(
            SeededSamples(self.train_set),
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=cfg.drop_last,
            generator=self.loader_gen,
            persistent_workers=False,  # fresh workers per epoch, seeded by (seed, epoch): reproducible on resume
            **kwargs,
        )
        self.batches_per_epoch = len(self.loader)
        if self.batches_per_epoch == 0:
            raise DataError(
                f"training set has {len(self.train_set)} samples: fewer than one batch per rank "
                f"(batch_size={cfg.batch_size}, world size {self.world}, drop_last={cfg.drop_last})"
            )

    def _resolve_steps(self) -> None:
        cfg = self.cfg
        if cfg.steps is None:
            steps = cfg.epochs * self.batches_per_epoch // cfg.grad_accum
            if steps < 1:
                raise ConfigError(
                    f"train.epochs={cfg.epochs} gives 0 optimizer steps "
                    f"({self.batches_per_epoch} batches/epoch, grad_accum={cfg.grad_accum})"
                )
            self.cfg = dataclasses.replace(cfg, steps=steps, epochs=None)
        if self.cfg.decay_every is None:
            self.cfg = dataclasses.replace(self.cfg, decay_every=max(self.batches_per_epoch // cfg.grad_accum, 1))
        self.total = int(self.cfg.steps)

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        groups = build_param_groups(self.raw, cfg.weight_decay, cfg.layer_decay)
        if not groups:
            raise TrainingError(f"{type(self.raw).__name__} has no trainable parameters (all requires_grad=False)")
        self.params = [p for g in groups for p in g["params"]]
        # The fused kernel (CPU and CUDA) avoids the per-parameter Python loop, which took ~38% of a ViT-S MAE
        # step on CPU; fall back where it is not available (e.g. mixed devices, MPS on old torch).
        try:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)
        except (RuntimeError, ValueError):
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _load(self, path: Path) -> dict[str, Any]:
        ckpt = load_checkpoint(path)
        try:
            self.raw.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise TrainingError(f"{path}: model state does not match the task ({str(e).splitlines()[0]})") from e
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise TrainingError(
                f"{path}: optimizer state does not match the parameter groups (did the model, layer_decay or "
                f"frozen parameters change?): {e}"
            ) from e
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        saved = ckpt.get("config") or {}
        for key in ("batch_size", "grad_accum"):
            if key in saved and saved[key] != getattr(self.cfg, key):
                logger.warning(
                    "resume: %s changed from %s to %s; the data position is approximate",
                    key,
                    saved[key],
                    getattr(self.cfg, key),
                )
        if ckpt.get("world_size", 1) != self.world:
            logger.warning(
                "resume: world size changed from %s to %s; data order and RNG streams differ",
                ckpt.get("world_size"),
                self.world,
            )
        return ckpt

    def _wrap(self) -> None:
        module: nn.Module = self.raw
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.raw,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.find_unused_parameters,
            )
            module = self.ddp
        if self.cfg.compile:
            module = torch.compile(module)
        self.forward_module = module

    # ------------------------------------------------------------- checkpoints
    def _gather_rng(self) -> list[dict[str, Any]]:
        local = capture_rng()
        if self.world == 1 or not D.is_initialized():
            return [local]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, local)
        return out

    def _payload(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": CKPT_FORMAT,
            "format_version": 1,
            "medvit_version": medvit.__version__,
            "model": self.raw.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step},
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "last_loss": self.last_loss,
            "train_seconds": self.train_seconds(),
            "best": {"metric": self.cfg.best_metric, "value": self.best, "step": self.best_step},
            "world_size": self.world,
            "config": self.cfg.to_dict(),
            "rng": rng,
        }

    def _save_checkpoint(self) -> None:
        rng = self._gather_rng()  # collective: every rank takes part
        self.last_ckpt_step = self.step  # on every rank, so that _finish agrees everywhere
        if not self.main:
            return
        path = save_atomic(self._payload(rng), self.rundir.path / step_checkpoint_name(self.step))
        update_last(path, self.rundir.last_ckpt)
        prune_step_checkpoints(self.rundir.path, self.cfg.keep_last)
        logger.debug("checkpoint %s", path)

    def _save_best(self) -> None:
        payload = {
            "format": CKPT_FORMAT,
            "format_version": 1,
            "medvit_version": medvit.__version__,
            "model": self.raw.state_dict(),
            "step": self.step,
            "best": {"metric": self.cfg.best_metric, "value": self.best, "step": self.best_step},
        }
        save_atomic(payload, self.rundir.best_ckpt)

    # --------------------------------------------------------------- the loop
    def train_seconds(self) -> float:
        return self.prior_seconds + (time.perf_counter() - self.t_start)

    def _evaluate(self) -> dict[str, float]:
        """Rank 0 runs the ``on_eval`` hooks on the unwrapped task in eval mode without grad."""
        evals = _hooks_with(self.hooks, "on_eval")
        if not evals or not self.main:
            return {}
        metrics: dict[str, float] = {}
        was_training = self.raw.training
        self.raw.eval()
        try:
            with torch.no_grad():
                for hook in evals:
                    for k, v in (hook.on_eval(self.state) or {}).items():
                        metrics[k if k.startswith("val/") else f"val/{k}"] = float(v)
        finally:
            self.raw.train(was_training)
        name = self.cfg.best_metric
        if name is not None and not name.startswith("val/"):
            name = f"val/{name}"
        if name is not None and name in metrics and math.isfinite(metrics[name]):
            v = metrics[name]
            improved = self.best is None or (v > self.best if self.cfg.best_mode == "max" else v < self.best)
            if improved:
                self.best, self.best_step = v, self.step
                self._save_best()
        return metrics

    def _reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t = t / self.world
        return t

    def _micro_batches(self) -> Iterator[tuple[int, int, Any]]:
        """Yield ``(epoch, index_in_epoch_after_this, batch)`` forever, from the resumed position."""
        cfg = self.cfg
        epoch, skip = self.epoch, self.batch_in_epoch
        on_epoch_start = getattr(self.raw, "on_epoch_start", None)
        while True:
            if callable(on_epoch_start):  # e.g. unfreezing a backbone at an epoch; also on a resumed epoch
                on_epoch_start(epoch)
            self.sampler.set_epoch(epoch)
            self.sampler.skip_next(skip * cfg.batch_size)
            self.loader_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
            index = skip
            skip = 0
            for batch in self.loader:
                index += 1
                yield epoch, index, batch
            epoch += 1

    def run(self) -> FitResult:
        resume_path = self._check_run_dir()
        self._open_run_dir()
        D.barrier()
        seed_everything(self.cfg.seed + self.rank)
        self._build_loader()
        self._resolve_steps()
        self.raw.to(self.device)
        self.raw.train()
        self._build_optimizer()
        ckpt = self._restore_position(resume_path)
        self.start_step = self.step
        self._wrap()
        cfg = self.cfg
        self.rundir.write_config(self.resolved_config if self.resolved_config is not None else {"train": cfg.to_dict()})
        self.state = FitState(
            step=self.step,
            epoch=self.epoch,
            task=self.raw,
            run_dir=self.rundir.path,
            device=self.device,
            total_steps=self.total,
            rank=self.rank,
            world_size=self.world,
            precision=self.precision,
        )
        if ckpt is not None:  # last: nothing above may consume random numbers after the restore
            self._restore_rng(ckpt)
            del ckpt
        if self.main:
            self._log_start()

        self.t_start = time.perf_counter()
        if self.step < self.total:
            self._loop()
        elif self.main:
            logger.info("%s is already at step %d of %d: nothing to train", self.rundir.path, self.step, self.total)
        self._finish()
        return FitResult(
            step=self.step,
            final_loss=self.last_loss,
            run_dir=self.rundir.path,
            best=self.best,
            best_step=self.best_step,
        )

    def _open_run_dir(self) -> None:
        """Create the run directory; rank 0 copies the log into ``train.log`` and removes killed writes' temps."""
        self.rundir.prepare()
        if self.main:  # the run directory keeps what was logged (appended across resumes)
            self._log_file = log_to_file(self.rundir.path / "train.log")
            self._log_file.__enter__()
        if self.main:
            for stale in self.rundir.path.glob(".*.tmp*"):  # temp files of a write that was killed
                stale.unlink(missing_ok=True)

    def _restore_position(self, resume_path: Path | None) -> dict[str, Any] | None:
        """Step, epoch, data position, best value and clock: from the checkpoint, or a fresh start (None)."""
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.last_loss = float("nan")
        self.prior_seconds = 0.0
        self.last_ckpt_step: int | None = None
        if resume_path is None:
            # No checkpoint: lines left by an earlier attempt that died before its first checkpoint are void.
            self.rundir.truncate_metrics(0)
            return None
        ckpt = self._load(resume_path)
        self.step, self.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        best = ckpt.get("best") or {}
        self.best, self.best_step = best.get("value"), best.get("step")
        self.last_loss = float(ckpt.get("last_loss", float("nan")))
        self.prior_seconds = float(ckpt.get("train_seconds", 0.0))
        self.last_ckpt_step = self.step
        dropped = self.rundir.truncate_metrics(self.step)
        if self.main:
            logger.info(
                "resuming from %s at step %d (epoch %d, batch %d); %d metrics lines after it dropped",
                resume_path,
                self.step,
                self.epoch,
                self.batch_in_epoch,
                dropped,
            )
        return ckpt

    def _restore_rng(self, ckpt: Mapping[str, Any]) -> None:
        rngs = ckpt.get("rng") or []
        if len(rngs) == self.world:
            restore_rng(rngs[self.rank])
        else:
            seed_everything(self.cfg.seed + self.rank + 7919 * self.step)

    def _log_start(self) -> None:
        cfg = self.cfg
        logger.info(
            "training %s: %d steps, %d batches/epoch x %d rank(s), batch %d x accum %d, %s on %s",
            type(self.raw).__name__,
            self.total,
            self.batches_per_epoch,
            self.world,
            cfg.batch_size,
            cfg.grad_accum,
            self.precision,
            self.device,
        )

    def _optimizer_step(self, step_loss: torch.Tensor, epoch: int) -> tuple[float, float, torch.Tensor | None]:
        """Check the loss, set the LR, unscale/clip and step; returns ``(rank-mean loss, base lr, grad norm)``."""
        cfg, opt, scaler = self.cfg, self.optimizer, self.scaler
        # One host sync per step: the rank-mean loss decides (on every rank alike) whether to go on.
        mean_loss = float(self._reduce_mean(step_loss / cfg.grad_accum).item())
        if not math.isfinite(mean_loss):
            self.lockstep_error = True
            raise TrainingError(
                f"non-finite loss ({mean_loss}) at step {self.step + 1} (epoch {epoch}); stopped without "
                f"updating the weights. Last good checkpoint: {self._last_good()}. Lower train.lr, set "
                "train.grad_clip or check the inputs for NaN/Inf"
            )
        lr = lr_at(self.step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        grad_norm = None
        if cfg.grad_clip is not None:
            scaler.unscale_(opt)  # clip the true gradients, not the fp16-scaled ones
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip).detach()
        scaler.step(opt)  # skips the update when fp16 gradients overflowed
        scaler.update()
        opt.zero_grad(set_to_none=True)
        # A finite loss can still come with an update that leaves NaN/Inf weights (an extreme lr, an overflow in
        # the optimizer state): stop before they reach a checkpoint. One norm over all weights, one host sync.
        with torch.no_grad():
            weights_norm = torch.nn.utils.get_total_norm([p.detach() for p in self.params])
        if not math.isfinite(float(weights_norm)):
            self.lockstep_error = True  # the weights are the same on every rank: all ranks stop here together
            raise TrainingError(
                f"non-finite weights after the update of step {self.step + 1} (epoch {epoch}, lr {lr:g}); stopped "
                f"before saving them. Last good checkpoint: {self._last_good()}. Lower train.lr or set "
                "train.grad_clip"
            )
        return mean_loss, lr, grad_norm

    def _last_good(self) -> str:
        if self.last_ckpt_step is None:
            return "none"
        return f"{self.rundir.last_ckpt} (step {self.last_ckpt_step})"

    def _loop(self) -> None:
        cfg = self.cfg
        interval = _Interval(cfg.batch_size * cfg.grad_accum * self.world)
        micro = 0
        step_loss = torch.zeros((), device=self.device)
        self.optimizer.zero_grad(set_to_none=True)

        with TrainProgress(self.total, self.step, quiet=self.quiet, main=self.main) as progress:
            for epoch, index, batch in self._micro_batches():
                micro += 1
                final_micro = micro == cfg.grad_accum
                self._forward_backward(batch, final_micro, step_loss, interval)
                del batch
                if not final_micro:
                    continue
                micro = 0
                mean_loss, lr, grad_norm = self._optimizer_step(step_loss, epoch)
                step_loss.zero_()
                if self._end_step(epoch, index, mean_loss, lr, grad_norm, interval, progress):
                    break

    def _forward_backward(self, batch: Any, final_micro: bool, step_loss: torch.Tensor, interval: _Interval) -> None:
        """One micro-batch: forward under autocast, scaled backward; adds its loss to ``step_loss`` in place."""
        batch = move_to_device(batch, self.device, self.device.type == "cuda")
        # Accumulating micro-batches skip DDP's gradient all-reduce; the last one syncs the sum.
        sync = contextlib.nullcontext() if (self.ddp is None or final_micro) else self.ddp.no_sync()
        with sync:
            with _autocast(self.device, self.precision):
                out = check_output(self.forward_module(batch), type(self.raw).__name__)
            loss = out["loss"].float().reshape(())
            self.scaler.scale(loss / self.cfg.grad_accum).backward()
        step_loss += loss.detach()
        if self.main and out.get("logs"):
            interval.add_logs(out["logs"])

    def _end_step(
        self,
        epoch: int,
        index: int,
        mean_loss: float,
        lr: float,
        grad_norm: torch.Tensor | None,
        interval: _Interval,
        progress: TrainProgress,
    ) -> bool:
        """After an optimizer step: position, metrics, progress, checkpoint, ``on_step_end``; True at the end."""
        cfg = self.cfg
        self.step += 1
        self.epoch, self.batch_in_epoch = (epoch + 1, 0) if index == self.batches_per_epoch else (epoch, index)
        self.last_loss = mean_loss
        interval.add_step(mean_loss, grad_norm)
        self.state.step, self.state.epoch = self.step, self.epoch
        self.state.logs = {"loss": mean_loss, "lr": lr}
        done = self.step >= self.total
        position = {"step": self.step, "epoch": round(epoch + index / self.batches_per_epoch, 4)}
        self._record_step(position, lr, done, mean_loss, interval, progress)
        if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or done:
            self._save_checkpoint()
        for hook in _hooks_with(self.hooks, "on_step_end"):
            hook.on_step_end(self.state)
        return done

    def _record_step(
        self,
        position: dict[str, Any],
        lr: float,
        done: bool,
        mean_loss: float,
        interval: _Interval,
        progress: TrainProgress,
    ) -> None:
        """Metrics line (logging and eval steps) and the progress bar / log line."""
        cfg = self.cfg
        record: dict[str, Any] = {}
        is_log = self.step % cfg.log_every == 0 or done
        if is_log:
            record = {**position, **interval.flush(lr)}
        if (cfg.eval_every and self.step % cfg.eval_every == 0) or done:
            val = self._evaluate()
            if val:
                record = {**position, **record, **val}
        if record:
            record["time"] = round(self.train_seconds(), 3)
            self.rundir.append_metrics(record)
            self.state.logs.update({k: v for k, v in record.items() if isinstance(v, float)})
        if is_log:
            progress.update(
                self.step,
                record["loss"],
                record["samples_per_s"],
                log=True,
                extra={"lr": lr, "epoch": record["epoch"]},
            )
        else:
            progress.update(self.step, mean_loss)

    def _finish(self) -> None:
        cfg = self.cfg
        if self.last_ckpt_step != self.step:
            self._save_checkpoint()
        self.best = D.broadcast_object(self.best)
        self.best_step = D.broadcast_object(self.best_step)
        wall = time.perf_counter() - self.t_start
        steps_run = self.step - self.start_step
        if self.main and cfg.best_metric is not None and self.best is None:
            logger.warning("best_metric %r was never returned by an on_eval hook: no best.pt", cfg.best_metric)
        if self.main:
            self.rundir.write_summary(
                {
                    "steps": self.step,
                    "steps_this_run": steps_run,
                    "resumed_from_step": self.start_step if self.resume else None,
                    "final_loss": self.last_loss,
                    "wall_time_s": round(wall, 3),
                    "train_time_s": round(self.train_seconds(), 3),
                    "samples_per_s": (cfg.batch_size * cfg.grad_accum * self.world * steps_run / wall)
                    if wall
                    else None,
                    "best_metric": cfg.best_metric,
                    "best_value": self.best,
                    "best_step": self.best_step,
                    "device": str(self.device),
                    "precision": self.precision,
                    "world_size": self.world,
                    "medvit_version": medvit.__version__,
                }
            )
            try:
                self.rundir.plot_loss()
            except Exception as e:  # noqa: BLE001 - a plotting failure must not lose a finished run
                logger.warning("could not draw %s: %s", self.rundir.plots / "loss.png", e)
        for hook in _hooks_with(self.hooks, "on_fit_end"):
            hook.on_fit_end(self.state)

    def release(self) -> None:
        """Drop every reference to the DDP wrapper, compiled module, optimizer and loader (teardown hazard)."""
        self.forward_module = None
        self.ddp = None
        self.optimizer = None
        self.scaler = None
        self.loader = None
        self.state = None
        gc.collect()
        if self._log_file is not None:
            self._log_file.__exit__(None, None, None)
            self._log_file = None
        if self.folder_lock is not None:
            self.folder_lock.release()
            self.folder_lock = None


def fit(
    task: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig,
    run_dir: str | os.PathLike[str],
    *,
    collate_fn: Any = None,
    resume: bool = False,
    quiet: bool = False,
    hooks: Sequence[Any] | None = None,
    resolved_config: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``task`` on ``train_set`` for ``cfg.steps`` optimizer steps, in one process or under torchrun.

    The task's parameters are updated in place (it is moved to the training device). Under torchrun every
    rank calls ``fit`` with the same arguments; rank 0 alone writes the run directory.

    Args:
        task: An ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": scalar, "logs": {...}}``.
        train_set: A map-style dataset; batches are collated by ``collate_fn`` (default collate if None).
        cfg: Loop settings.
        run_dir: Run directory (created). It must not hold checkpoints unless ``resume``.
        collate_fn: Optional DataLoader collate function.
        resume: Continue from ``run_dir/last.pt`` on the same step and data position.
        quiet: No progress bar (plain log lines instead).
        hooks: Objects with any of ``on_step_end(state)``, ``on_eval(state) -> dict[str, float]`` (rank 0,
            task in eval mode, no grad, every ``cfg.eval_every`` steps and at the end; logged as ``val/<name>``),
            ``on_fit_end(state)``. ``state`` is a :class:`FitState`.
        resolved_config: Mapping written to ``config.yaml`` (default: this ``TrainConfig``).

    Returns:
        A :class:`FitResult`.

    Raises:
        TrainingError: Non-finite loss (naming the step), ``resume`` without a checkpoint, or checkpoints in
            ``run_dir`` without ``resume``.
        ConfigError: An unusable device or config value.
        DataError: A training set smaller than one batch.
    """
    device = resolve_device(cfg.device)
    had_group = D.is_initialized()
    D.init_distributed(str(device))
    owns_group = D.is_initialized() and not had_group
    trainer = _Trainer(
        task,
        train_set,
        cfg,
        run_dir,
        device=device,
        collate_fn=collate_fn,
        resume=resume,
        quiet=quiet,
        hooks=hooks or [],
        resolved_config=resolved_config,
    )
    ok = False
    try:
        result = trainer.run()
        ok = True
        return result
    finally:
        lockstep = trainer.lockstep_error
        trainer.release()
        del trainer
        if owns_group:
            if ok or lockstep:
                D.cleanup()
            else:
                # An error on this rank alone: the others may be blocked in a collective, so a barrier could
                # hang; drop the group without one and let torchrun stop the other ranks.
                with contextlib.suppress(Exception):
                    D.cleanup(barrier=False)
