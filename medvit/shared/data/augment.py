"""Random augmentation that a training run can replay: per-sample reseeding of transforms' own generators.

The training loop (:class:`medvit.shared.engine.fit.SeededSamples`) fetches every sample under a seed made
from ``(run seed, epoch, index)`` and calls the dataset's ``reseed(seed)`` first. Datasets forward that call to
their random transforms with :func:`reseed`, which knows the two kinds the project uses:

- MONAI transforms and ``Compose`` (``Randomizable.set_random_state(seed=...)``: one ``RandomState`` each);
- albumentations pipelines wrapped in :class:`SeededAlbumentations`.

Why a wrapper for albumentations: ``A.Compose.set_random_seed`` builds a new numpy and python generator for
every transform in the pipeline (about 280 us for the 16 transforms of the face recipe, more than the
augmentation itself), and gives them all the same seed, so that transforms draw correlated numbers. The wrapper
hands the whole pipeline one shared pair once and reseeds that pair in place per sample (about 30 us).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

__all__ = ["SeededAlbumentations", "reseed"]


class SeededAlbumentations:
    """An albumentations pipeline drawing from one numpy and one python generator, reseedable in place.

    Args:
        pipeline: An ``albumentations.Compose``.
    """

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self._np = np.random.default_rng(0)
        self._py = random.Random(0)
        pipeline.set_random_state(self._np, self._py)  # every transform shares this pair

    def reseed(self, seed: int) -> None:
        """Restart the pipeline's random streams from ``seed`` (any non-negative int)."""
        self._py.seed(seed)
        self._np.bit_generator.state = np.random.PCG64(seed).state

    def __call__(self, image: np.ndarray, **targets: Any) -> Any:
        """Augment ``image`` (``[H, W, C]`` uint8); with extra targets (``mask=...``) return albumentations' dict.

        Returns:
            The augmented image, or the dict of every target when targets were given.
        """
        out = self.pipeline(image=image, **targets)
        return out if targets else out["image"]


def reseed(transform: Any, seed: int) -> None:
    """Reseed a random transform's own generators for one sample (no-op for None).

    Args:
        transform: A :class:`SeededAlbumentations`, a MONAI transform/``Compose``, anything with
            ``reseed(seed)``, or None.
        seed: Non-negative int, e.g. :func:`medvit.shared.engine.fit.sample_seed`.

    Raises:
        TypeError: ``transform`` has no way to be reseeded (its randomness would not be replayable).
    """
    if transform is None:
        return
    if hasattr(transform, "reseed"):
        transform.reseed(seed)
    elif hasattr(transform, "set_random_state"):  # MONAI Randomizable / Compose
        transform.set_random_state(seed=seed % 2**32)
    else:
        raise TypeError(f"cannot reseed {type(transform).__name__}: give it reseed(seed) or set_random_state(seed=)")
