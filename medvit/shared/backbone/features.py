"""Feature-tap helpers shared by the backbone and the apps (timm ``feature_take_indices`` semantics)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def take_indices(num_blocks: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Resolve which block outputs to return.

    ``None`` means all blocks, an int ``n`` the last ``n`` blocks, a sequence those 0-based indices
    (negative counts from the end). Out of range raises ``IndexError``.

    Args:
        num_blocks: depth of the model.
        indices: see above.

    Returns:
        (sorted unique non-negative indices, the largest one).
    """
    if indices is None:
        taken = list(range(num_blocks))
    elif isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise IndexError(f"asked for the last {indices} blocks of a {num_blocks}-block model")
        taken = list(range(num_blocks - indices, num_blocks))
    else:
        taken = []
        for i in indices:
            j = i + num_blocks if i < 0 else i
            if not 0 <= j < num_blocks:
                raise IndexError(f"block index {i} out of range for a {num_blocks}-block model")
            taken.append(j)
        taken = sorted(set(taken))
    if not taken:
        raise IndexError("no block indices selected")
    return taken, max(taken)


def evenly_spaced_taps(depth: int, n: int = 4) -> tuple[int, ...]:
    """0-based indices of ``n`` evenly spaced blocks ending with the last one.

    For 12 blocks and n=4 this is ``(2, 5, 8, 11)``, i.e. the outputs of blocks 3, 6, 9, 12 (1-based),
    the UNETR convention (Project-MONAI/MONAI#4520 discusses the off-by-one; we state ours).
    """
    if not 0 < n <= depth:
        raise ValueError(f"cannot take {n} taps from a {depth}-block model")
    return tuple(round(depth * (k + 1) / n) - 1 for k in range(n))


def tokens_to_spatial(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``[B, L, D]`` patch tokens -> ``[B, D, *grid]`` feature map (row-major token order)."""
    b, n, d = tokens.shape
    if n != math.prod(grid):
        raise ValueError(f"{n} tokens do not fill a grid of {tuple(grid)}")
    return tokens.transpose(1, 2).reshape(b, d, *grid)
