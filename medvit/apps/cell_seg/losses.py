"""Training loss of the CellVTA / CellViT three-branch (NP, HV, NT) nucleus model, plus the tissue head.

The published objective (CellViT, Hörst et al. 2024; reused unchanged by CellVTA) is a weighted sum of eight terms
over the model outputs ``nuclei_binary_map`` (NP logits ``[B, 2, H, W]``), ``hv_map`` (``[B, 2, H, W]``, ch0 the
horizontal x-map, ch1 the vertical y-map), ``nuclei_type_map`` (NT logits ``[B, C+1, H, W]``) and
``tissue_types`` (``[B, T]`` logits):

==============  ======  =======================================================================================
term            weight  definition (``p`` = softmax of the logits, ``t`` = one-hot target, sums over batch+pixels)
==============  ======  =======================================================================================
``np_ft``       1.0     focal Tversky over *all* NP channels flattened together: ``T = (TP + s) / (TP + 0.7 FN +
                        0.3 FP + s)``, ``s = 1e-6``, loss ``(1 - T) ** (4/3)``
``np_dice``     1.0     ``sum_c 1 - (2 sum p_c t_c + 1e-3) / (sum p_c + sum t_c + 1e-3)`` over both NP channels
``hv_mse``      2.5     mean of ``(hv_pred - hv_true) ** 2`` over every pixel and both channels
``hv_msge``     8.0     ``sum focus (grad hv_pred - grad hv_true) ** 2 / (sum focus + 1e-8)``: the gradient of ch0
                        along x and of ch1 along y with 5x5 kernels ``dx / (dx^2 + dy^2)``, ``dy / (dx^2 + dy^2)``
                        (zero padding), ``focus`` = the true nucleus mask, counted once per channel
``nt_ce``       0.5     cross-entropy of the NT logits, mean over pixels
``nt_dice``     0.2     the Dice above over the ``C + 1`` NT channels (background included), summed
``nt_ft``       0.5     focal Tversky per NT channel (background included; alpha 0.7 on FN, beta 0.3 on FP,
                        gamma 4/3), summed over channels with unit class weights
``tissue_ce``   0.1     cross-entropy of the tissue logits (left out with ``tissue=False``, e.g. for CoNIC)
==============  ======  =======================================================================================

A property of the published NP term worth knowing: because it flattens both channels of a per-pixel softmax,
``FP == FN == N - TP`` (``N`` pixels), so ``T = (TP + s) / (N + s)`` whenever ``alpha + beta = 1``; the NP focal
Tversky is ``(1 - mean p_true) ** (4/3)`` and its alpha/beta have no effect. It is kept as published (tested).

Deviations from the official code (TIO-IKIM/CellViT ``base_ml/base_loss.py`` and the CellViT trainer, which
CellVTA reuses), on purpose:

* One softmax. The official trainer softmaxes the NP and NT logits and the focal Tversky losses softmax those
  probabilities again, so they see ``softmax(softmax(z))`` (squashed towards uniform: a two-class pixel can never
  exceed ``p = e / (1 + e) = 0.73``). Here every probability term uses ``softmax(z)`` once.
* MSGE orientation. The official PyTorch kernel is built with ``meshgrid(..., indexing="ij")``, so the x-map
  (ch0) is differentiated along y and the y-map along x: the transposed of HoVer-Net's original TensorFlow code
  (Graham et al. 2019) and of the post-processing, which uses ``cv2.Sobel`` with ch0 along x. The default
  ``msge_orientation="hovernet"`` differentiates ch0 along x; ``"cellvit"`` reproduces the transposed kernel for
  parity with released checkpoints' training.
* Cross-entropy from ``log_softmax`` of the logits (``F.cross_entropy``), numerically stable. The official
  ``XentropyLoss`` renormalises softmax probabilities, clamps them to ``[1e-7, 1 - 1e-7]`` and takes ``log``; the
  two agree wherever the true-class probability is in ``[1e-7, 1 - 1e-7]``, i.e. to within the clamp (the clamp
  caps a pixel's loss at ``-log 1e-7 = 16.1`` and zeroes its gradient beyond that; ours keeps the gradient).
* fp32 always: every term is computed in float32 with autocast disabled, whatever precision the model ran in
  (sums over ``B x H x W`` pixels and ``x ** (4/3)`` near 0 are fragile in half precision).
* ``(1 - T)`` is clamped at 0 before the fractional power (rounding can never make it negative in exact
  arithmetic, but a NaN from ``(-0.0...) ** (4/3)`` would stop training).

References:
    Hörst et al., "CellViT: Vision Transformers for precise cell segmentation and classification", Medical Image
    Analysis 2024 (https://github.com/TIO-IKIM/CellViT).
    Graham et al., "HoVer-Net: Simultaneous segmentation and classification of nuclei in multi-tissue histology
    images", Medical Image Analysis 2019 (https://github.com/vqdang/hover_net).
    Abraham and Khan, "A novel focal Tversky loss function with improved attention U-Net for lesion
    segmentation", ISBI 2019.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medvit.shared.errors import ConfigError

__all__ = [
    "DEFAULT_WEIGHTS",
    "MSGE_ORIENTATIONS",
    "CellLoss",
    "dice_loss",
    "focal_tversky_loss",
    "hv_gradients",
    "msge_loss",
    "sobel_kernels",
]

#: The published weight of every term (CellViT / CellVTA PanNuke configs).
DEFAULT_WEIGHTS: dict[str, float] = {
    "np_ft": 1.0,
    "np_dice": 1.0,
    "hv_mse": 2.5,
    "hv_msge": 8.0,
    "nt_ce": 0.5,
    "nt_dice": 0.2,
    "nt_ft": 0.5,
    "tissue_ce": 0.1,
}

MSGE_ORIENTATIONS = ("hovernet", "cellvit")


def focal_tversky_loss(
    prob: Tensor,
    onehot: Tensor,
    *,
    per_class: bool,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 4 / 3,
    smooth: float = 1e-6,
) -> Tensor:
    """Focal Tversky loss ``(1 - T) ** gamma`` with ``T = (TP + s) / (TP + alpha FN + beta FP + s)``.

    Args:
        prob: probabilities ``[B, K, H, W]`` (a softmax over ``K``).
        onehot: one-hot target ``[B, K, H, W]`` (float).
        per_class: False: one Tversky index over every channel and pixel flattened together (the NP term);
            True: one index per channel over batch and pixels, losses summed over channels (the NT term).
        alpha: weight of the false negatives.
        beta: weight of the false positives.
        gamma: focal exponent.
        smooth: added to numerator and denominator.

    Returns:
        Scalar loss.
    """
    dims = (0, 2, 3) if per_class else (0, 1, 2, 3)
    tp = (prob * onehot).sum(dims)
    fp = (prob * (1 - onehot)).sum(dims)
    fn = ((1 - prob) * onehot).sum(dims)
    tversky = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    return ((1 - tversky).clamp_min(0) ** gamma).sum()


def dice_loss(prob: Tensor, onehot: Tensor, smooth: float = 1e-3) -> Tensor:
    """Soft Dice loss per channel over batch and pixels, summed over channels (background included).

    Args:
        prob: probabilities ``[B, K, H, W]``.
        onehot: one-hot target ``[B, K, H, W]``.
        smooth: added to numerator and denominator (keeps an empty channel at loss ~0).

    Returns:
        Scalar ``sum_c 1 - (2 sum p_c t_c + smooth) / (sum p_c + sum t_c + smooth)``.
    """
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).sum()


def sobel_kernels(orientation: str = "hovernet", size: int = 5) -> Tensor:
    """The two MSGE gradient kernels as a depthwise conv weight.

    Args:
        orientation: ``"hovernet"``: channel 0 gets ``dx / (dx^2 + dy^2)`` (derivative along x = columns), channel
            1 ``dy / (dx^2 + dy^2)`` (along y = rows); ``"cellvit"``: the two swapped, as the official PyTorch code
            builds them (see the module docstring).
        size: odd kernel side.

    Returns:
        float32 ``[2, 1, size, size]`` for ``F.conv2d(hv, k, padding=size // 2, groups=2)`` (cross-correlation, so
        a ramp increasing along x gives a positive response to the x kernel).
    """
    if orientation not in MSGE_ORIENTATIONS:
        raise ConfigError(f"loss msge_orientation: {orientation!r} is not one of {', '.join(MSGE_ORIENTATIONS)}")
    if size % 2 != 1:
        raise ValueError(f"sobel_kernels: size must be odd, got {size}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")  # dy varies along rows, dx along columns
    norm = dx * dx + dy * dy
    norm[size // 2, size // 2] = 1.0  # the centre weight is 0 / 1 = 0
    kx, ky = dx / norm, dy / norm
    pair = (kx, ky) if orientation == "hovernet" else (ky, kx)
    return torch.stack(pair)[:, None].to(torch.float32)


def hv_gradients(hv: Tensor, kernels: Tensor) -> Tensor:
    """Directional gradients of an HV map: ``[B, 2, H, W]`` -> ``[B, 2, H, W]`` (zero padding)."""
    return F.conv2d(hv, kernels.to(hv), padding=kernels.shape[-1] // 2, groups=2)


def msge_loss(pred: Tensor, target: Tensor, focus: Tensor, kernels: Tensor) -> Tensor:
    """Mean squared gradient error inside the nuclei.

    Args:
        pred: predicted HV map ``[B, 2, H, W]``.
        target: true HV map ``[B, 2, H, W]``.
        focus: true nucleus mask ``[B, H, W]`` (0/1, any dtype).
        kernels: :func:`sobel_kernels` output.

    Returns:
        Scalar ``sum focus (grad pred - grad target)^2 / (sum focus + 1e-8)`` with the mask counted once per channel.
    """
    diff = hv_gradients(pred, kernels) - hv_gradients(target, kernels)
    mask = focus.to(diff.dtype)[:, None].expand_as(diff)
    return (mask * diff * diff).sum() / (mask.sum() + 1e-8)


class CellLoss(nn.Module):
    """Weighted sum of the CellViT / CellVTA loss terms (see the module docstring for the definitions).

    Args:
        num_nuclei_classes: number of nucleus classes ``C`` (the NT branch has ``C + 1`` channels).
        weights: overrides of :data:`DEFAULT_WEIGHTS` by term name (e.g. ``{"hv_msge": 4.0}``); 0 keeps a term
            in the logs but out of the total.
        msge_orientation: ``"hovernet"`` (x-map differentiated along x) or ``"cellvit"`` (the official transposed
            kernel).
        tissue: include the tissue cross-entropy (False for datasets without tissue labels, e.g. CoNIC; the
            ``tissue_ce`` entry is then absent from the logs).
    """

    def __init__(
        self,
        num_nuclei_classes: int,
        *,
        weights: Mapping[str, float] | None = None,
        msge_orientation: str = "hovernet",
        tissue: bool = True,
    ) -> None:
        super().__init__()
        if num_nuclei_classes < 1:
            raise ConfigError(f"loss num_nuclei_classes: must be >= 1, got {num_nuclei_classes}")
        self.num_nuclei_classes = int(num_nuclei_classes)
        self.tissue = bool(tissue)
        self.msge_orientation = msge_orientation
        self.weights = _resolve_weights(weights)
        # Not persistent: a constant, so checkpoints of a task holding this loss do not carry it.
        self.register_buffer("sobel", sobel_kernels(msge_orientation), persistent=False)

    def forward(self, out: dict[str, Tensor], target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its terms.

        Args:
            out: model outputs ``nuclei_binary_map [B, 2, H, W]``, ``hv_map [B, 2, H, W]``,
                ``nuclei_type_map [B, C+1, H, W]`` (logits, any float dtype) and, with ``tissue=True``,
                ``tissue_types [B, T]``.
            target: ``nuclei_binary_map [B, H, W]`` long 0/1, ``hv_map [B, 2, H, W]`` float,
                ``nuclei_type_map [B, H, W]`` long ``0..C`` and, with ``tissue=True``, ``tissue [B]`` long.

        Returns:
            ``(total, terms)``: the fp32 scalar total (weighted sum) and each term as a detached fp32 scalar,
            keyed ``np_ft, np_dice, hv_mse, hv_msge, nt_ce, nt_dice, nt_ft`` (+ ``tissue_ce``).
        """
        n_types = out["nuclei_type_map"].shape[1]
        if n_types != self.num_nuclei_classes + 1:
            raise ValueError(
                f"CellLoss: nuclei_type_map has {n_types} channels, expected {self.num_nuclei_classes + 1}"
            )
        if self.tissue and ("tissue_types" not in out or "tissue" not in target):
            raise ValueError("CellLoss(tissue=True) needs out['tissue_types'] and target['tissue']")
        device_type = out["hv_map"].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            terms = self._terms(out, target)
            total = sum((self.weights[k] * v for k, v in terms.items()), torch.zeros((), device=out["hv_map"].device))
        return total, {k: v.detach() for k, v in terms.items()}

    def _terms(self, out: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every term in fp32 (called with autocast off)."""
        np_true = target["nuclei_binary_map"].long()
        nt_true = target["nuclei_type_map"].long()
        np_prob = torch.softmax(out["nuclei_binary_map"].float(), dim=1)
        np_onehot = F.one_hot(np_true, 2).permute(0, 3, 1, 2).float()
        hv_pred, hv_true = out["hv_map"].float(), target["hv_map"].float()
        nt_logp = torch.log_softmax(out["nuclei_type_map"].float(), dim=1)
        nt_prob = nt_logp.exp()
        nt_onehot = F.one_hot(nt_true, self.num_nuclei_classes + 1).permute(0, 3, 1, 2).float()
        terms = {
            "np_ft": focal_tversky_loss(np_prob, np_onehot, per_class=False),
            "np_dice": dice_loss(np_prob, np_onehot),
            "hv_mse": F.mse_loss(hv_pred, hv_true),
            "hv_msge": msge_loss(hv_pred, hv_true, np_true, self.sobel),
            "nt_ce": F.nll_loss(nt_logp, nt_true),
            "nt_dice": dice_loss(nt_prob, nt_onehot),
            "nt_ft": focal_tversky_loss(nt_prob, nt_onehot, per_class=True),
        }
        if self.tissue:
            terms["tissue_ce"] = F.cross_entropy(out["tissue_types"].float(), target["tissue"].long())
        return terms

    def extra_repr(self) -> str:
        return f"num_nuclei_classes={self.num_nuclei_classes}, msge_orientation={self.msge_orientation!r}, " + (
            f"tissue={self.tissue}, weights={self.weights}"
        )


def _resolve_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """Defaults overridden by ``weights``; unknown names and negative or non-finite values are ConfigErrors."""
    resolved = dict(DEFAULT_WEIGHTS)
    for key, value in (weights or {}).items():
        if key not in DEFAULT_WEIGHTS:
            raise ConfigError(f"loss weights: unknown term {key!r}; known: {', '.join(DEFAULT_WEIGHTS)}")
        value = float(value)
        if not (value >= 0.0 and value != float("inf")):
            raise ConfigError(f"loss weights.{key}: must be a finite number >= 0, got {value}")
        resolved[key] = value
    return resolved
