"""Training and validation datasets over :class:`~medvit.shared.classify.labels.Sample` lists, and class balance.

:class:`SampleDataset` decodes a sample on every access (:func:`~medvit.shared.classify.inputs.read_source`) and
applies a transform; with the random :class:`~medvit.shared.classify.inputs.TrainTransform` it forwards the training
loop's per-sample seed (``reseed``), so a resumed run sees the very crops and RandAugment operations of the
uninterrupted one. :class:`WeightedDraws` is the balanced sampler as a dataset (each slot draws its sample from its
own seed, so it resumes exactly too).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medvit.shared.classify.inputs import InputSpec, read_source
from medvit.shared.classify.labels import LabelSpace, Sample
from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["SampleDataset", "WeightedDraws", "balanced_weights", "class_weights", "targets_array"]


def targets_array(samples: Sequence[Sample], labels: LabelSpace) -> np.ndarray:
    """``[N, target_width]`` float32 targets (validated).

    Raises:
        DataError: An unlabelled sample or a target outside the label space (naming its key).
    """
    rows = []
    for s in samples:
        t = labels.check_target(s.target, s.key)
        if t is None:
            raise DataError(f"{s.key}: a training or validation sample has no target")
        rows.append(t)
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, labels.target_width), np.float32)


class SampleDataset(Dataset):
    """``{"image": tensor, "target": float32 [T]}`` per sample (``target`` NaN-filled for unlabelled samples).

    An unreadable input raises its ``DataError`` unless ``substitute`` is on (training): then a warning names it and
    the next readable sample takes its place (the same one every time, so a resumed run stays exact), so one corrupt
    file among thousands does not stop a long run.

    Args:
        samples: The samples.
        labels: Their label space.
        spec: The model's input spec (modality, dimensionality).
        transform: :class:`~medvit.shared.classify.inputs.EvalTransform` or ``TrainTransform``.
        substitute: Replace an unreadable input by the next readable one (at most ``max_substitutes`` tries).
    """

    max_substitutes = 10

    def __init__(
        self, samples: Sequence[Sample], labels: LabelSpace, spec: InputSpec, transform: Any, substitute: bool = False
    ) -> None:
        self.samples = list(samples)
        self.labels = labels
        self.spec = spec
        self.transform = transform
        self.substitute = substitute

    def __len__(self) -> int:
        return len(self.samples)

    def reseed(self, seed: int) -> None:
        """Reseed the random transform (called by the training loop before each fetch)."""
        reseed = getattr(self.transform, "reseed", None)
        if reseed is not None:
            reseed(seed)

    def _read(self, s: Sample) -> np.ndarray:
        arr = read_source(s.source, self.spec.modality)
        want = (3,) if self.spec.dims == 3 else (2, 3)
        if arr.ndim not in want:
            raise DataError(f"{s.source}: decoded to shape {arr.shape}, not a {self.spec.dims}D input")
        if not np.isfinite(arr).all():
            raise DataError(f"{s.source}: contains NaN or infinite values")
        return arr

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        try:
            arr = self._read(s)
        except DataError as err:
            if not self.substitute:
                raise
            s, arr = self._substitute(index, err)
        target = s.target if s.target is not None else np.full(self.labels.target_width, np.nan, np.float32)
        return {"image": self.transform(arr), "target": torch.from_numpy(np.asarray(target, np.float32).copy())}

    def _substitute(self, index: int, err: DataError) -> tuple[Sample, np.ndarray]:
        """The next readable sample after an unreadable one (deterministic, so resume stays exact)."""
        n = len(self.samples)
        for step in range(1, min(self.max_substitutes, n - 1) + 1):
            other = self.samples[(index + step) % n]
            try:
                arr = self._read(other)
            except DataError:
                continue
            logger.warning("skipping an unreadable training input (%s); using %s in its place", err, other.key)
            return other, arr
        raise DataError(f"{err} (and the {self.max_substitutes} inputs after it are unreadable too)") from None


class WeightedDraws(Dataset):
    """Weighted sampling with replacement that resumes exactly: slot ``i`` draws its sample from the fetch's seed.

    The training loop calls :meth:`reseed` with ``sample_seed(run seed, epoch, i)`` before fetching slot ``i``; the
    draw is the inverse CDF of the weights at one uniform number from ``numpy.random.default_rng(seed)``, and the
    wrapped dataset is reseeded with the same seed. A fetch without a preceding ``reseed`` uses the slot index.

    Args:
        dataset: A map-style dataset (optionally with ``reseed``).
        weights: One non-negative weight per sample (not all zero).
    """

    def __init__(self, dataset: Dataset, weights: np.ndarray) -> None:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.size != len(dataset) or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:  # type: ignore[arg-type]
            raise ValueError("weights: one finite non-negative weight per sample, not all zero")
        self.dataset = dataset
        self._cdf = np.cumsum(w) / w.sum()
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def reseed(self, seed: int) -> None:
        self._seed = int(seed)
        inner = getattr(self.dataset, "reseed", None)
        if inner is not None:
            inner(seed)

    def draw(self, seed: int) -> int:
        """The sample index a seed selects."""
        u = np.random.default_rng(seed).random()
        return int(min(np.searchsorted(self._cdf, u, side="right"), len(self._cdf) - 1))

    def __getitem__(self, index: int) -> Any:
        seed, self._seed = (self._seed if self._seed is not None else index), None
        return self.dataset[self.draw(seed)]


def balanced_weights(targets: np.ndarray, labels: LabelSpace) -> np.ndarray:
    """Per-sample draw weights that balance the classes.

    Single-label tasks: ``1 / count(class)``. Multi-label: the inverse frequency of the sample's rarest positive
    finding, or of "no finding" for samples without a positive (unknown findings do not count).

    Returns:
        ``[N]`` float64 weights.
    """
    if labels.kind == "multilabel":
        pos = np.nan_to_num(targets, nan=0.0) > 0.5
        counts = pos.sum(0).astype(np.float64)
        none = ~pos.any(1)
        inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        w = np.where(pos, inv[None, :], 0.0).max(1)
        w[none] = 1.0 / max(int(none.sum()), 1)
        return w
    idx = targets[:, 0].astype(np.int64)
    counts = np.bincount(idx, minlength=len(labels.classes)).astype(np.float64)
    return 1.0 / counts[idx]


def class_weights(targets: np.ndarray, labels: LabelSpace) -> torch.Tensor:
    """Loss weights from the training labels.

    Sigmoid tasks: BCE ``pos_weight = negatives / positives`` per output (1 where a finding has no positive);
    softmax tasks: ``n / (C * count_c)`` (0 for an absent class).
    """
    if labels.uses_sigmoid:
        t = targets if labels.kind == "multilabel" else targets[:, :1]
        pos = np.nansum(t, axis=0)
        known = (~np.isnan(t)).sum(0)
        neg = known - pos
        w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
        return torch.tensor(w, dtype=torch.float32)
    idx = targets[:, 0].astype(np.int64)
    c = len(labels.classes)
    counts = np.bincount(idx, minlength=c).astype(np.float64)
    w = np.where(counts > 0, idx.size / (c * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)
