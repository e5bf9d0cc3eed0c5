"""Label spaces, samples and group-wise splits: the types every classification app hands to the core.

A :class:`LabelSpace` says what the model predicts (multi-label findings, one of C classes, ordered grades, or a
single positive/negative decision); a :class:`Sample` is one input file with its target in the encoding the core
trains on; :func:`group_split` holds out whole patients (or eyes), so that no patient's images sit on both sides
of a validation split.

Target encodings (``Sample.target``, float32):

- ``multilabel``: ``[C]`` of 0/1, ``NaN`` = ignore this finding for this image (e.g. CheXpert's uncertain labels
  under the "ignore" policy): the loss and the metrics skip it;
- ``multiclass`` / ``graded``: ``[1]`` holding the class index (grades are ordered ``"0".."4"``);
- ``binary``: ``[1]`` holding 0 or 1 (classes ``("negative", "positive")``);
- ``None``: unlabelled (prediction only).

This module is torch-free (config and CLI modules may import it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from medvit.shared.errors import ConfigError, DataError

__all__ = ["TASK_KINDS", "LabelSpace", "Sample", "TaskKind", "group_split"]

TaskKind = Literal["multilabel", "multiclass", "binary", "graded"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
BINARY_CLASSES: tuple[str, str] = ("negative", "positive")


@dataclass(frozen=True)
class LabelSpace:
    """What a classifier predicts.

    Attributes:
        kind: ``multilabel`` (independent findings, sigmoid per class), ``multiclass`` (one of C, softmax),
            ``graded`` (one of C ordered grades, softmax; evaluated with quadratic-weighted kappa) or ``binary``
            (one sigmoid output).
        classes: Multilabel: one name per finding; multiclass/graded: class names in index order (graded:
            ordered, e.g. ``("0", "1", "2", "3", "4")``); binary: ``("negative", "positive")``.
    """

    kind: TaskKind
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"label space: kind {self.kind!r} is not one of {', '.join(TASK_KINDS)}")
        classes = tuple(str(c) for c in self.classes)
        object.__setattr__(self, "classes", classes)
        if len(set(classes)) != len(classes):
            raise ConfigError(f"label space: class names repeat: {list(classes)}")
        if any(not c for c in classes):
            raise ConfigError("label space: empty class name")
        if self.kind == "binary" and len(classes) != 2:
            raise ConfigError(f"label space: a binary task has 2 classes (negative, positive), got {list(classes)}")
        minimum = 1 if self.kind == "multilabel" else 2
        if len(classes) < minimum:
            raise ConfigError(f"label space: a {self.kind} task needs at least {minimum} classes, got {len(classes)}")

    @classmethod
    def binary(cls, negative: str = "negative", positive: str = "positive") -> LabelSpace:
        """A binary label space (one sigmoid output; index 1 is the positive class)."""
        return cls("binary", (negative, positive))

    def num_outputs(self) -> int:
        """Width of the classification head: C for multilabel/multiclass/graded, 1 for binary."""
        return 1 if self.kind == "binary" else len(self.classes)

    @property
    def uses_sigmoid(self) -> bool:
        """True for multilabel and binary (independent sigmoid outputs), False for softmax tasks."""
        return self.kind in ("multilabel", "binary")

    @property
    def target_width(self) -> int:
        """Length of ``Sample.target``: C for multilabel, else 1."""
        return len(self.classes) if self.kind == "multilabel" else 1

    @property
    def prob_columns(self) -> tuple[str, ...]:
        """Probability columns of ``predictions.csv``: ``prob_<class>`` per output (binary: the positive class)."""
        names = self.classes[1:] if self.kind == "binary" else self.classes
        return tuple(f"prob_{c}" for c in names)

    def index(self, name: str) -> int:
        """Index of a class name.

        Raises:
            DataError: Unknown name.
        """
        try:
            return self.classes.index(str(name))
        except ValueError:
            raise DataError(f"label {name!r} is not one of the classes {list(self.classes)}") from None

    def check_target(self, target: np.ndarray | None, where: str = "sample") -> np.ndarray | None:
        """Validate (and return as float32) a target in this space's encoding.

        Args:
            target: The target, or None (unlabelled).
            where: Names the sample in the error message.

        Returns:
            The target as a float32 array of length :attr:`target_width`, or None.

        Raises:
            DataError: Wrong length, non-0/1 multilabel value, class index out of range.
        """
        if target is None:
            return None
        t = np.asarray(target, dtype=np.float32).reshape(-1)
        if t.shape[0] != self.target_width:
            raise DataError(f"{where}: target has {t.shape[0]} values, a {self.kind} task expects {self.target_width}")
        if self.kind == "multilabel":
            known = t[~np.isnan(t)]
            if np.any((known != 0) & (known != 1)):
                raise DataError(f"{where}: multilabel targets must be 0, 1 or NaN (ignore), got {t.tolist()}")
            return t
        v = float(t[0])
        if math.isnan(v) or v != int(v) or not 0 <= v < len(self.classes):
            raise DataError(f"{where}: class index {v} is not in 0..{len(self.classes) - 1} ({self.kind})")
        return t

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in ``model.json``)."""
        return {"kind": self.kind, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "label space") -> LabelSpace:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: Missing keys or invalid values (the message names ``where``).
        """
        try:
            return cls(kind=d["kind"], classes=tuple(d["classes"]))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{where}: needs 'kind' and 'classes' ({e})") from None


@dataclass(frozen=True)
class Sample:
    """One input with its target.

    Attributes:
        source: Image file, DICOM, NIfTI/``.npy`` volume or a B-scan folder.
        target: Float32 target in the label space's encoding (see the module docstring), None = unlabelled.
        group: Patient / eye identifier for group-wise splits (None: the sample is its own group).
        key: Stable identifier written to ``predictions.csv`` (e.g. the path relative to the data root); empty
            means ``str(source)``.
    """

    source: Path
    target: np.ndarray | None = field(default=None, compare=False)
    group: str | None = None
    key: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Path(self.source))
        if self.target is not None:
            object.__setattr__(self, "target", np.asarray(self.target, dtype=np.float32).reshape(-1))
        if not self.key:
            object.__setattr__(self, "key", str(self.source))

    @property
    def group_id(self) -> str:
        """The group used for splitting: ``group`` if set, else the key (the sample alone)."""
        return self.group if self.group is not None else f"\0{self.key}"


def group_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split samples into train and validation by group (all images of a patient land on the same side).

    Groups are shuffled with ``numpy.random.default_rng(seed)`` (sorted first, so the result does not depend on the
    order of ``samples``) and moved to validation until it holds at least ``val_fraction`` of the samples. Each
    side keeps the input order. With at least two groups and ``0 < val_fraction < 1``, both sides are non-empty.

    Args:
        samples: The samples to split.
        val_fraction: Wanted share of samples in validation, in ``[0, 1)``; 0 gives an empty validation list.
        seed: Seed of the group shuffle.

    Returns:
        ``(train, val)``.

    Raises:
        ConfigError: ``val_fraction`` outside ``[0, 1)``.
        DataError: A non-zero fraction was asked for but there is only one group.
    """
    if not 0.0 <= val_fraction < 1.0 or math.isnan(val_fraction):
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0 or not samples:
        return list(samples), []
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.group_id] = counts.get(s.group_id, 0) + 1
    groups = sorted(counts)
    if len(groups) < 2:
        raise DataError(f"cannot hold out {val_fraction:.0%} for validation: all {len(samples)} samples in one group")
    order = np.random.default_rng(seed).permutation(len(groups))
    want = val_fraction * len(samples)
    val_groups: set[str] = set()
    n_val = 0
    for i in order[:-1]:  # never move the last group: train keeps at least one
        if n_val >= want:
            break
        val_groups.add(groups[i])
        n_val += counts[groups[i]]
    train = [s for s in samples if s.group_id not in val_groups]
    val = [s for s in samples if s.group_id in val_groups]
    return train, val
