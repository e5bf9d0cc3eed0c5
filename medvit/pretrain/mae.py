"""Masked autoencoder (MAE) on the shared ViT, for 2D images and 3D volumes.

Written the way facebookresearch/mae ``models_mae.py`` reads: ``patchify`` / ``unpatchify``, per-sample
``random_masking``, an encoder that sees only the visible tokens, a light decoder (``decoder_embed``,
``mask_token``, fixed sin-cos ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``)
and ``forward_loss`` = MSE on the removed patches only. The encoder is a medvit
:class:`~medvit.shared.backbone.vit.VisionTransformer`; 2D vs 3D follows its ``patch_size``.

Conventions (shared with :mod:`medvit.pretrain.hi_end_mae`):

* Token order: row-major over the patch grid, last axis fastest, i.e. ``(h, w)`` or ``(h, w, d)``. This is
  the order of ``conv(x).flatten(2)``, so patch tokens, position embeddings and targets line up.
* Channel order inside one token vector: ``(p1, p2, c)`` in 2D (MAE's ``nchpwq->nhwpqc``) and
  ``(p1, p2, p3, c)`` in 3D (Hi-End-MAE ``patchify_image``; MONAI's perceptron order). A decoder head is
  only reusable with the matching order.
* Masking: ``ids_shuffle = argsort(U(0, 1))`` per sample; the first ``floor(L * (1 - r))`` are kept;
  ``mask`` is 1 for removed tokens, in the original order.

Deviation from the reference code, on purpose: the visible count is ``floor(L * (1 - r) + 1e-6)`` rather than
``int(L * (1 - r))``, because floating point turns e.g. ``10 * (1 - 0.9)`` into ``0.99999...`` and the plain
``int`` would keep no token at all.

References:
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022
    (https://github.com/facebookresearch/mae, ``models_mae.py``).
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medvit.shared.backbone.layers import Block, init_mae_weights
from medvit.shared.backbone.pos_embed import sincos_pos_embed
from medvit.shared.backbone.vit import VisionTransformer

logger = logging.getLogger(__name__)

__all__ = [
    "MAE",
    "MaskedAutoencoderBase",
    "batch_images",
    "denormalize_patches",
    "normalize_patches",
    "num_visible",
    "patchify",
    "random_masking",
    "unpatchify",
]


# ============================================================================= patches
def _check_divisible(spatial: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    if len(spatial) != len(patch_size):
        raise ValueError(
            f"input has {len(spatial)} spatial axes {tuple(spatial)} but patch_size {tuple(patch_size)} "
            f"has {len(patch_size)}"
        )
    if any(s % p for s, p in zip(spatial, patch_size, strict=True)):
        raise ValueError(f"input size {tuple(spatial)} is not divisible by the patch size {tuple(patch_size)}")
    return tuple(s // p for s, p in zip(spatial, patch_size, strict=True))


def patchify(imgs: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Cut images or volumes into flattened patches.

    Args:
        imgs: ``[B, C, H, W]`` or ``[B, C, H, W, D]``; every spatial size divisible by its patch size.
        patch_size: ``(p1, p2)`` or ``(p1, p2, p3)``.

    Returns:
        ``[B, L, prod(p) * C]`` with tokens row-major over the grid (last axis fastest) and each token's
        values ordered ``(p1, p2[, p3], c)``.
    """
    patch_size = tuple(int(p) for p in patch_size)
    b, c = imgs.shape[:2]
    grid = _check_divisible(imgs.shape[2:], patch_size)
    nd = len(patch_size)
    shape = [b, c]
    for g, p in zip(grid, patch_size, strict=True):
        shape += [g, p]
    x = imgs.reshape(shape)  # [B, C, g1, p1, g2, p2(, g3, p3)]
    grid_axes = [2 + 2 * i for i in range(nd)]
    patch_axes = [3 + 2 * i for i in range(nd)]
    x = x.permute(0, *grid_axes, *patch_axes, 1)  # [B, g1, g2(, g3), p1, p2(, p3), C]
    return x.reshape(b, math.prod(grid), math.prod(patch_size) * c)


def unpatchify(x: torch.Tensor, patch_size: Sequence[int], grid: Sequence[int], in_chans: int) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Args:
        x: ``[B, L, prod(p) * C]`` in :func:`patchify` order.
        patch_size: ``(p1, p2)`` or ``(p1, p2, p3)``.
        grid: token grid, ``prod(grid) == L``.
        in_chans: C.

    Returns:
        ``[B, C, g1 * p1, g2 * p2(, g3 * p3)]``.
    """
    patch_size = tuple(int(p) for p in patch_size)
    grid = tuple(int(g) for g in grid)
    b, n, v = x.shape
    if n != math.prod(grid) or v != math.prod(patch_size) * in_chans:
        raise ValueError(f"tokens {tuple(x.shape)} do not fit grid {grid} x patch {patch_size} x {in_chans} channel(s)")
    nd = len(patch_size)
    x = x.reshape(b, *grid, *patch_size, in_chans)  # [B, g..., p..., C]
    order = [0, 2 * nd + 1]
    for i in range(nd):
        order += [1 + i, 1 + nd + i]
    x = x.permute(order)  # [B, C, g1, p1, g2, p2(, g3, p3)]
    return x.reshape(b, in_chans, *(g * p for g, p in zip(grid, patch_size, strict=True)))


def normalize_patches(target: torch.Tensor, *, unbiased: bool, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised targets (``norm_pix_loss``).

    MAE uses the unbiased variance, ``(x - mean) / sqrt(var_unbiased + eps)``; Hi-End-MAE a LayerNorm
    without affine parameters, i.e. the biased variance with ``eps`` inside the square root.

    Args:
        target: ``[B, L, V]`` patch vectors.
        unbiased: variance estimator (True: MAE, False: Hi-End-MAE / LayerNorm).
        eps: added to the variance.

    Returns:
        ``[B, L, V]`` with zero mean and (about) unit variance per patch.
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=unbiased)
    return (target - mean) / (var + eps) ** 0.5


def denormalize_patches(pred: torch.Tensor, target: torch.Tensor, *, unbiased: bool, eps: float = 1e-6) -> torch.Tensor:
    """Map predictions of normalised patches back to intensities with the true patches' statistics.

    Exact inverse of :func:`normalize_patches` (used for reconstruction previews).

    Args:
        pred: ``[B, L, V]`` predictions in normalised units.
        target: ``[B, L, V]`` the original patches.
        unbiased: as in :func:`normalize_patches`.
        eps: as in :func:`normalize_patches`.

    Returns:
        ``[B, L, V]``.
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=unbiased)
    return pred * (var + eps) ** 0.5 + mean


# ============================================================================= masking
def num_visible(num_tokens: int, mask_ratio: float) -> int:
    """``floor(L * (1 - r))``, robust to floating point (see the module docstring).

    Raises:
        ValueError: ``mask_ratio`` outside ``[0, 1)`` or no token left visible.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(math.floor(num_tokens * (1.0 - mask_ratio) + 1e-6))
    if keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible token out of {num_tokens}")
    return keep


def random_masking(
    batch: int,
    num_tokens: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (MAE ``random_masking``).

    Args:
        batch: B.
        num_tokens: L.
        mask_ratio: fraction r of tokens to remove.
        device: where the indices live.
        generator: optional RNG (on ``device``) for reproducible masks.

    Returns:
        ``ids_keep [B, L_vis]`` (indices of visible tokens, in shuffled order, ``L_vis = floor(L (1 - r))``),
        ``mask [B, L]`` (float, 1 = removed, original order) and ``ids_restore [B, L]`` (the inverse
        permutation: position of each original token in the shuffled order).
    """
    keep = num_visible(num_tokens, mask_ratio)
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, num_tokens, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def batch_images(batch: torch.Tensor | Mapping[str, Any]) -> torch.Tensor:
    """The image tensor of a batch: the tensor itself or ``batch["image"]``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping) and isinstance(batch.get("image"), torch.Tensor):
        return batch["image"]
    raise TypeError(f"expected an image tensor or a dict with an 'image' tensor, got {type(batch).__name__}")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked tokens of the per-token MSE.

    Args:
        pred: ``[B, L, V]``.
        target: ``[B, L, V]``.
        mask: ``[B, L]``, 1 = count this token.

    Returns:
        scalar.
    """
    loss = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, L]
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


# ============================================================================= what MAE-family models share
class MaskedAutoencoderBase(nn.Module, metaclass=abc.ABCMeta):
    """The parts every masked autoencoder here shares; the decoder is the subclass's own.

    Holds the encoder and its patch geometry, the learned ``mask_token`` and the fixed sin-cos
    ``decoder_pos_embed`` (the names of both papers' code), the per-patch targets, the masked MSE and the
    training step :meth:`forward`. A subclass builds its decoder, then draws ``mask_token ~ N(0, 0.02)`` (so the
    random initialisation keeps the reference order), and writes :meth:`forward_masked` - masking, encoder,
    decoder - the way its paper does.

    Args:
        encoder: the backbone; its ``patch_size`` decides 2D or 3D. Its weights are not re-initialised.
        decoder_embed_dim: decoder width Dd.
        mask_ratio: default fraction of removed tokens.
        norm_pix_loss: per-patch normalised targets.
    """

    #: Variance estimator of the per-patch target normalisation (True: MAE; False: a LayerNorm, Hi-End-MAE).
    unbiased_norm: bool = True
    #: The decoder position table has one zero slot per prefix token (MAE's ``[1, P + L, Dd]``); False: none
    #: (Hi-End-MAE's ``[1, L, Dd]``).
    decoder_pos_prefix: bool = True

    def __init__(
        self, encoder: VisionTransformer, *, decoder_embed_dim: int, mask_ratio: float, norm_pix_loss: bool
    ) -> None:
        super().__init__()
        num_visible(encoder.patch_embed.num_patches, mask_ratio)  # validate early
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = tuple(encoder.patch_embed.patch_size)
        self.in_chans = int(encoder.patch_embed.proj.in_channels)
        self.num_prefix_tokens = encoder.num_prefix_tokens
        self.decoder_embed_dim = decoder_embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            self._decoder_pos(tuple(encoder.patch_embed.grid_size)), requires_grad=False
        )
        self._pos_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def _decoder_pos(self, grid: tuple[int, ...]) -> torch.Tensor:
        emb = sincos_pos_embed(self.decoder_embed_dim, grid)[None]
        if not self.decoder_pos_prefix:
            return emb
        prefix = torch.zeros(1, self.num_prefix_tokens, self.decoder_embed_dim)
        return torch.cat([prefix, emb], dim=1)

    def decoder_pos_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        """Decoder position embedding ``[1, (P +) L, Dd]`` for a token grid (regenerated if not the default)."""
        if grid == tuple(self.encoder.patch_embed.grid_size):
            return self.decoder_pos_embed
        if grid not in self._pos_cache:
            self._pos_cache[grid] = self._decoder_pos(grid)
        return self._pos_cache[grid].to(self.decoder_pos_embed)

    def grid_of(self, imgs: torch.Tensor) -> tuple[int, ...]:
        """Token grid of an input; it must be a whole number of patches per axis."""
        if imgs.ndim != 2 + len(self.patch_size):
            raise ValueError(
                f"expected [B, C, {', '.join('S' * len(self.patch_size))}] input, got shape {tuple(imgs.shape)}"
            )
        return _check_divisible(imgs.shape[2:], self.patch_size)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[B, C, *spatial] -> [B, L, prod(p) * C]`` (see :func:`patchify`)."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """``[B, L, prod(p) * C] -> [B, C, *spatial]`` (see :func:`unpatchify`)."""
        return unpatchify(x, self.patch_size, grid, self.in_chans)

    def targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets ``[B, L, V]``: patches, normalised per patch with ``norm_pix_loss``."""
        target = self.patchify(imgs)
        return normalize_patches(target, unbiased=self.unbiased_norm) if self.norm_pix_loss else target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on removed patches only.

        Args:
            imgs: ``[B, C, *spatial]``.
            pred: ``[B, L, prod(p) * C]`` in the original token order.
            mask: ``[B, L]``, 1 = removed.

        Returns:
            scalar loss.
        """
        return masked_mse(pred, self.targets(imgs), mask)

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predictions as an image ``[B, C, *spatial]`` in input units (de-normalised with norm-pix)."""
        if self.norm_pix_loss:
            pred = denormalize_patches(pred.float(), self.patchify(imgs).float(), unbiased=self.unbiased_norm)
        return self.unpatchify(pred, self.grid_of(imgs))

    @abc.abstractmethod
    def forward_masked(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask, encode the visible tokens, decode.

        Args:
            imgs: ``[B, C, *spatial]``.
            mask_ratio: fraction of tokens removed.
            generator: optional RNG for the mask.

        Returns:
            ``pred [B, L, V]`` in the original token order and ``mask [B, L]`` (1 = removed).
        """

    def forward(
        self,
        batch: torch.Tensor | Mapping[str, Any],
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """One training step: :meth:`forward_masked`, then the loss on the removed patches.

        Args:
            batch: ``[B, C, *spatial]`` or a dict with ``"image"``.
            mask_ratio: override of the default ratio.
            generator: optional RNG for the mask.

        Returns:
            ``{"loss": scalar, "pred": [B, L, V] (original order), "mask": [B, L] (1 = removed),
            "logs": {"loss_visible": ...}}``.
        """
        imgs = batch_images(batch)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        pred, mask = self.forward_masked(imgs, ratio, generator)
        target = self.targets(imgs)
        loss = masked_mse(pred, target, mask)
        with torch.no_grad():
            visible = masked_mse(pred.detach(), target, 1.0 - mask)
        return {"loss": loss, "pred": pred, "mask": mask, "logs": {"loss_visible": visible}}


# ============================================================================= the model
class MAE(MaskedAutoencoderBase):
    """Masked autoencoder with a ViT encoder and a light transformer decoder.

    Args:
        encoder: the backbone; its ``patch_size`` decides 2D or 3D. Its weights are not re-initialised.
        decoder_embed_dim: decoder width (MAE: 512).
        decoder_depth: decoder blocks (MAE: 8).
        decoder_num_heads: decoder heads (MAE: 16).
        mlp_ratio: decoder MLP ratio.
        mask_ratio: default fraction of removed tokens.
        norm_pix_loss: per-patch normalised targets (MAE's recommended setting; unbiased variance).
        norm_eps: decoder LayerNorm epsilon (1e-6 as timm/MAE).
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        *,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        # mask_token and the fixed sin-cos decoder_pos_embed (one zero slot per prefix token, as MAE's
        # [1, 1 + L, 512]) come from the base.
        super().__init__(
            encoder, decoder_embed_dim=decoder_embed_dim, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss
        )
        # ---- decoder (MAE names)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_embed_dim, bias=True)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_eps=norm_eps)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, math.prod(self.patch_size) * self.in_chans, bias=True)

        for part in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_mae_weights(part)
        nn.init.normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ MAE's methods
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible tokens only.

        Args:
            imgs: ``[B, C, *spatial]``.
            mask_ratio: fraction of tokens removed.
            generator: optional RNG for the mask.

        Returns:
            ``latent [B, P + L_vis, D]`` (normed), ``mask [B, L]``, ``ids_restore [B, L]``.
        """
        grid = self.grid_of(imgs)
        ids_keep, mask, ids_restore = random_masking(imgs.shape[0], math.prod(grid), mask_ratio, imgs.device, generator)
        latent = self.encoder.forward_features(imgs, keep=ids_keep)
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Decode visible latents plus mask tokens into patch predictions.

        Args:
            latent: ``[B, P + L_vis, D]``.
            ids_restore: ``[B, L]``.
            grid: token grid.

        Returns:
            ``[B, L, prod(p) * C]`` predictions in the original token order (prefix positions dropped).
        """
        p = self.num_prefix_tokens
        x = self.decoder_embed(latent)
        b, n_tok, dd = x.shape
        n_mask = ids_restore.shape[1] + p - n_tok
        x_ = torch.cat([x[:, p:], self.mask_token.expand(b, n_mask, -1).to(x.dtype)], dim=1)  # shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dd))  # unshuffle
        x = torch.cat([x[:, :p], x_], dim=1) + self.decoder_pos_for(grid)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, p:]

    def forward_masked(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MAE's ``forward`` without the loss: ``forward_encoder``, then ``forward_decoder``.

        Returns:
            ``pred [B, L, V]``, ``mask [B, L]``.
        """
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore, self.grid_of(imgs))
        return pred, mask
