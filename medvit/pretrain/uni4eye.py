"""Uni4Eye: one ViT pretrained on 2D fundus images and 3D OCT volumes, with intensity and gradient decoders.

Written the way the paper describes the model (Cai et al., MICCAI 2022) and the way MAE's ``models_mae.py`` reads:

* **Unified patch embedding** (UPE): a ``Conv2d`` with 16x16 kernel and stride for images ``[B, C, H, W]``
  (``encoder.patch_embed``) and a ``Conv3d`` with 16^3 kernel and stride for volumes ``[B, C, H, W, D]``
  (``patch_embed3``); the input's number of axes picks one. Each dimensionality has its own fixed sin-cos
  position table with a zero cls slot: ``encoder.pos_embed`` (2D, MAE layout) and ``pos_embed3`` (3D,
  Hi-End-MAE layout, :mod:`medvit.shared.backbone.pos_embed`).
* **Shared transformer**: the cls token, the blocks and the final norm of one medvit
  :class:`~medvit.shared.backbone.vit.VisionTransformer` (``encoder``) encode the visible tokens of either kind,
  so the same weights serve both modalities; :func:`export_encoders` writes them as a 2D and a 3D backbone.
* **Masking**: MAE's per-sample random masking (argsort of uniform noise; ``mask_strategy="random"``, the
  default) or, as an option, Uni4Eye++'s entropy-guided masking (``"entropy"``, :func:`patch_entropy`).
* **Dual-branch decoder**: two complete MAE decoders (:class:`Uni4EyeDecoder`: own ``embed``, ``mask_token``,
  ``blocks``, ``norm``), each with one prediction head per dimensionality. ``decoder_intensity`` predicts the
  pixels (``16^2 * C`` / ``16^3 * C`` values per token), ``decoder_gradient`` the gradient map
  (``16^2`` / ``16^3``; :mod:`medvit.pretrain.gradient`). The fixed sin-cos decoder position tables
  ``decoder_pos_embed2`` / ``decoder_pos_embed3`` serve both decoders.
* **Loss**: ``lambda1 * L_intensity + lambda2 * L_edge`` (``loss_weights``, default (1, 1)), each the MSE over
  the removed patches only (:func:`~medvit.pretrain.mae.masked_mse`).

A batch holds one dimensionality (the data decides: a 4-D tensor is a batch of images, a 5-D one of volumes);
mixing both in one run is the data pipeline's job, whose step order :func:`interleave_schedule` gives. Each step
therefore leaves one patch embedding, one position table and one head per decoder without a gradient: under DDP
train with ``find_unused_parameters=True`` (:class:`~medvit.shared.engine.fit.TrainConfig`).

Shapes for ``uni4eye-vit-l`` (ViT-L/16, D = 1024, decoders 512 wide): an image ``[B, 3, 224, 224]`` gives 196
tokens, 49 visible at ratio 0.75; a volume ``[B, 1, 224, 224, 112]`` gives 14 x 14 x 7 = 1372 tokens, 343 visible;
``pred`` is ``[B, 196, 768]`` / ``[B, 1372, 4096]`` and ``pred_gradient`` ``[B, 196, 256]`` / ``[B, 1372, 4096]``.

The original Uni4Eye code is not public; what is known of it comes from the paper's abstract and from the
successor repository Davidczy/Uni4Eye_pp (Uni4Eye++, IEEE TMI 2024), whose dual-decoder class
``MaskedAutoencoderViT23D_2decoder`` matches the paper's description. Deviations from that code, on purpose:

* ``pos_embed3`` / ``decoder_pos_embed3`` are a 3D sin-cos table here. The successor creates them as frozen
  ``[1, 1 + L3, D]`` parameters but never fills them (the init call is commented out), so its volumes get no
  position information at all. :func:`load_uni4eye_checkpoint` keeps our tables when a checkpoint's are all zero.
* The gradient-map target is defined by us (the paper does not define it; the successor computes a 2D OpenCV
  Sobel on uint8-saturated images and has no 3D version): see :mod:`medvit.pretrain.gradient`.
* The 3D patch embedding has its own channel count (``in_chans_3d``, default 1 for OCT); the successor's
  ``Conv3d`` takes the 2D channel count (3) although its 3D targets have one channel. Imported 3-channel 3D
  weights are summed over channels (a grey volume seen as R = G = B gives the same tokens).
* Each decoder has its own final norm (the successor shares one ``decoder_norm``; imports copy it into both)
  and the successor's unused ``decoder_pos_embed21`` / ``decoder_pos_embed31`` do not exist here.
* Mask ratio 0.75 by default, as the successor's ``--mask_ratio``; its training loop hard-codes 0.5 instead.
* Visible count ``floor(L (1 - r) + 1e-6)`` (see :mod:`medvit.pretrain.mae`); CPU-capable (no ``.cuda()``).
* Entropy-guided masking (Uni4Eye++, not Uni4Eye) bins each patch's channel-mean values into 256 bins spanning
  the image's own min..max (inputs here are normalised floats, not uint8); an image whose patches all have the
  same entropy is masked at random.
* Both decoders are fed every step (as the successor); the successor alternates whole epochs of 2D and 3D data,
  :func:`interleave_schedule` mixes them step by step in proportion to the data.

References:
    Cai, Lin, He, Tang, "Uni4Eye: Unified 2D and 3D Self-supervised Pre-training via Masked Image Modeling
    Transformer for Ophthalmic Image Classification", MICCAI 2022, arXiv 2203.04614.
    Cai et al., "Uni4Eye++", IEEE TMI 43(12), 2024 (https://github.com/Davidczy/Uni4Eye_pp).
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvit.pretrain.gradient import gradient_target
from medvit.pretrain.mae import (
    batch_images,
    denormalize_patches,
    masked_mse,
    normalize_patches,
    num_visible,
    patchify,
    random_masking,
    unpatchify,
)
from medvit.shared.backbone.layers import Block, PatchEmbed, init_mae_weights
from medvit.shared.backbone.pos_embed import sincos_pos_embed
from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.backbone.weights import (
    LoadReport,
    adapt_input_conv,
    is_uni4eye_plus,
    load_pretrained,
    load_strict,
    read_checkpoint,
    save_backbone,
    strip_prefixes,
)
from medvit.shared.errors import WeightsError

logger = logging.getLogger(__name__)

__all__ = [
    "MASK_STRATEGIES",
    "Uni4Eye",
    "Uni4EyeDecoder",
    "entropy_weights",
    "export_encoders",
    "guided_masking",
    "interleave_schedule",
    "load_uni4eye_checkpoint",
    "patch_entropy",
]

MASK_STRATEGIES = ("random", "entropy")


# ============================================================================= masking
@torch.no_grad()
def patch_entropy(x: torch.Tensor, patch_size: Sequence[int], bins: int = 256) -> torch.Tensor:
    """Shannon entropy (bits) of each patch's intensity histogram (Uni4Eye++'s masking guide).

    The channel mean of each image is quantised into ``bins`` equal bins spanning that image's min..max; each
    patch's histogram of those bins gives ``-sum p log2 p``.

    Args:
        x: ``[B, C, *spatial]``.
        patch_size: ``(p1, p2)`` or ``(p1, p2, p3)``.
        bins: histogram bins (256 as the successor's 8-bit histograms).

    Returns:
        ``[B, L]`` float32 entropies in ``[0, log2(min(bins, prod(p)))]``.
    """
    patches = patchify(x.float().mean(dim=1, keepdim=True), patch_size)  # [B, L, V]
    b, n, v = patches.shape
    lo = patches.amin(dim=(1, 2), keepdim=True)
    hi = patches.amax(dim=(1, 2), keepdim=True)
    idx = ((patches - lo) / (hi - lo).clamp_min(1e-12) * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(b, n, bins, device=x.device).scatter_add_(2, idx, torch.ones_like(patches))
    p = counts / v
    return -(p * torch.log2(p.clamp_min(1e-12))).sum(dim=-1)


def entropy_weights(entropy: torch.Tensor) -> torch.Tensor:
    """Min-max normalise entropies per image to ``[0, 1]``; an image of equal entropies gets ones (random masking).

    Args:
        entropy: ``[B, L]``.

    Returns:
        ``[B, L]``.
    """
    lo = entropy.amin(dim=1, keepdim=True)
    span = entropy.amax(dim=1, keepdim=True) - lo
    flat = span <= 1e-12
    return torch.where(flat, torch.ones_like(entropy), (entropy - lo) / span.clamp_min(1e-12))


def guided_masking(
    weights: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample masking by argsort of ``U(0, 1) * weights``: tokens with large weights are removed more often.

    With all weights 1 this is MAE's random masking (same noise draw); Uni4Eye++ passes normalised patch entropies.

    Args:
        weights: ``[B, L]`` non-negative.
        mask_ratio: fraction of tokens removed.
        generator: optional RNG (on ``weights.device``).

    Returns:
        ``ids_keep [B, L_vis]``, ``mask [B, L]`` (1 = removed, original order), ``ids_restore [B, L]``.
    """
    b, n = weights.shape
    keep = num_visible(n, mask_ratio)
    noise = torch.rand(b, n, device=weights.device, generator=generator) * weights
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, n, device=weights.device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], torch.gather(mask, 1, ids_restore), ids_restore


def interleave_schedule(n2d: int, n3d: int, *, ratio: float | None = None, seed: int = 0) -> list[int]:
    """The dimensionality (2 or 3) of each step of one epoch that mixes 2D and 3D batches.

    Stratified and deterministic: step ``i`` of kind ``k`` (of ``n_k``) is placed at ``(i + u) / n_k`` with
    ``u ~ U(0, 1)`` from ``seed``, then all steps are sorted by position. So every prefix of the schedule holds
    each kind in (nearly) its share, and the same arguments give the same schedule (vary ``seed`` per epoch).

    Args:
        n2d: 2D batches in the epoch (the data's share).
        n3d: 3D batches in the epoch.
        ratio: fraction of the ``n2d + n3d`` steps that are 2D, instead of the data's share; at least one step
            of each kind is kept when both kinds have data.
        seed: seed of the placement.

    Returns:
        ``n2d + n3d`` entries, each 2 or 3.

    Raises:
        ValueError: negative counts, no step at all, a ratio outside ``[0, 1]`` or one that asks for a kind
            without data.
    """
    if n2d < 0 or n3d < 0 or n2d + n3d == 0:
        raise ValueError(f"need a non-negative number of 2D and 3D batches, not both 0 (got {n2d}, {n3d})")
    total = n2d + n3d
    if ratio is not None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        k2 = round(ratio * total)
        if n2d and n3d:
            k2 = min(max(k2, 1), total - 1)
        if (k2 and not n2d) or (total - k2 and not n3d):
            raise ValueError(f"ratio {ratio} asks for a kind without data ({n2d} 2D, {n3d} 3D batches)")
        n2d, n3d = k2, total - k2
    rng = random.Random(seed)
    keyed = [((i + rng.random()) / n2d, 2) for i in range(n2d)]
    keyed += [((i + rng.random()) / n3d, 3) for i in range(n3d)]
    keyed.sort()
    return [kind for _, kind in keyed]


# ============================================================================= decoder
class Uni4EyeDecoder(nn.Module):
    """One MAE decoder with a prediction head per dimensionality (one branch of the dual decoder).

    Args:
        embed_dim: encoder width D.
        decoder_embed_dim: decoder width Dd (512).
        depth: decoder blocks (8).
        num_heads: decoder heads (16).
        out_2d: values per 2D token (intensity ``16^2 * C``, gradient ``16^2``).
        out_3d: values per 3D token (intensity ``16^3 * C``, gradient ``16^3``).
        mlp_ratio: MLP ratio (4).
        norm_eps: LayerNorm epsilon (1e-6 as MAE).
    """

    def __init__(
        self,
        embed_dim: int,
        decoder_embed_dim: int,
        depth: int,
        num_heads: int,
        out_2d: int,
        out_3d: int,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.blocks = nn.ModuleList(
            Block(decoder_embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_eps=norm_eps)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.pred2 = nn.Linear(decoder_embed_dim, out_2d, bias=True)
        self.pred3 = nn.Linear(decoder_embed_dim, out_3d, bias=True)
        init_mae_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, pos: torch.Tensor, spatial_dims: int, num_prefix: int
    ) -> torch.Tensor:
        """Embed, insert mask tokens, unshuffle, add positions, decode, predict (MAE ``forward_decoder``).

        Args:
            latent: ``[B, P + L_vis, D]`` encoder output.
            ids_restore: ``[B, L]``.
            pos: ``[1, P + L, Dd]`` decoder position table of this grid.
            spatial_dims: 2 or 3 (picks the head).
            num_prefix: P.

        Returns:
            ``[B, L, out]`` in the original token order (prefix positions dropped).
        """
        x = self.embed(latent)
        b, n_tok, dd = x.shape
        n_mask = ids_restore.shape[1] + num_prefix - n_tok
        x_ = torch.cat([x[:, num_prefix:], self.mask_token.expand(b, n_mask, -1).to(x.dtype)], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dd))  # unshuffle
        x = torch.cat([x[:, :num_prefix], x_], dim=1) + pos.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        x = self.pred2(x) if spatial_dims == 2 else self.pred3(x)
        return x[:, num_prefix:]


# ============================================================================= the model
class Uni4Eye(nn.Module):
    """Uni4Eye pretraining model: unified 2D/3D patch embedding, shared ViT, intensity + gradient decoders.

    Args:
        encoder: the shared 2D backbone (patch embedding for images, cls token, blocks, norm); not re-initialised.
            Its ``patch_size`` must be square; its position table should be ``sincos`` (the presets' choice).
        volume_size: default volume size ``(H, W, D)`` (successor: ``(S, S, S/2)`` = 224 x 224 x 112).
        in_chans_3d: volume channels (1 for OCT).
        patch_size_3d: 3D patch (default: the 2D patch side on all three axes, 16^3).
        decoder_embed_dim: decoder width (512).
        decoder_depth: blocks per decoder (8).
        decoder_num_heads: decoder heads (16).
        mlp_ratio: decoder MLP ratio.
        mask_ratio: default fraction of removed tokens (0.75).
        norm_pix_loss: per-patch normalised intensity targets (the successor's default: off).
        loss_weights: ``(lambda1, lambda2)`` of the intensity and gradient losses.
        mask_strategy: ``random`` (Uni4Eye, MAE) or ``entropy`` (Uni4Eye++).
        norm_eps: decoder LayerNorm epsilon.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        *,
        volume_size: Sequence[int] = (224, 224, 112),
        in_chans_3d: int = 1,
        patch_size_3d: Sequence[int] | None = None,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        loss_weights: Sequence[float] = (1.0, 1.0),
        mask_strategy: str = "random",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        p2 = tuple(encoder.patch_embed.patch_size)
        if encoder.spatial_dims != 2 or p2[0] != p2[1]:
            raise ValueError(f"Uni4Eye needs a 2D encoder with square patches, got patch_size {p2}")
        if mask_strategy not in MASK_STRATEGIES:
            raise ValueError(f"mask_strategy must be one of {', '.join(MASK_STRATEGIES)}, got {mask_strategy!r}")
        if len(loss_weights) != 2 or min(loss_weights) < 0:
            raise ValueError(f"loss_weights must be two non-negative numbers, got {tuple(loss_weights)}")
        p3 = tuple(int(p) for p in patch_size_3d) if patch_size_3d is not None else (p2[0],) * 3
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.loss_weights = (float(loss_weights[0]), float(loss_weights[1]))
        self.mask_strategy = mask_strategy
        self.num_prefix_tokens = encoder.num_prefix_tokens
        self.in_chans_2d = int(encoder.patch_embed.proj.in_channels)
        self.in_chans_3d = int(in_chans_3d)
        self.decoder_embed_dim = decoder_embed_dim
        num_visible(encoder.patch_embed.num_patches, mask_ratio)  # validate early

        # ---- unified patch embedding, 3D half (the 2D half is encoder.patch_embed) and its position table
        self.patch_embed3 = PatchEmbed(tuple(volume_size), p3, self.in_chans_3d, encoder.embed_dim)
        w = self.patch_embed3.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear, like the 2D one (MAE)
        nn.init.zeros_(self.patch_embed3.proj.bias)
        self.pos_embed3 = self._make_pos3()
        # ---- decoders: fixed sin-cos tables per dimensionality, shared by both branches
        self.decoder_pos_embed2 = nn.Parameter(self._table(decoder_embed_dim, self.grid_2d), requires_grad=False)
        self.decoder_pos_embed3 = nn.Parameter(self._table(decoder_embed_dim, self.grid_3d), requires_grad=False)
        dec = dict(depth=decoder_depth, num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps)
        p2n, p3n = math.prod(p2), math.prod(p3)
        self.decoder_intensity = Uni4EyeDecoder(
            encoder.embed_dim, decoder_embed_dim, out_2d=p2n * self.in_chans_2d, out_3d=p3n * self.in_chans_3d, **dec
        )
        self.decoder_gradient = Uni4EyeDecoder(encoder.embed_dim, decoder_embed_dim, out_2d=p2n, out_3d=p3n, **dec)
        self._pos_cache: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    # ------------------------------------------------------------------ geometry and position tables
    @property
    def patch_size_2d(self) -> tuple[int, ...]:
        return tuple(self.encoder.patch_embed.patch_size)

    @property
    def patch_size_3d(self) -> tuple[int, ...]:
        return tuple(self.patch_embed3.patch_size)

    @property
    def grid_2d(self) -> tuple[int, ...]:
        return tuple(self.encoder.patch_embed.grid_size)

    @property
    def grid_3d(self) -> tuple[int, ...]:
        return tuple(self.patch_embed3.grid_size)

    def _table(self, dim: int, grid: tuple[int, ...]) -> torch.Tensor:
        """Fixed sin-cos table ``[1, P + L, dim]`` with zero prefix slots (MAE's cls slot)."""
        emb = sincos_pos_embed(dim, grid)[None]
        return torch.cat([torch.zeros(1, self.num_prefix_tokens, dim), emb], dim=1)

    def _make_pos3(self) -> nn.Parameter | None:
        """``pos_embed3`` following the encoder's kind: fixed sin-cos, learned (trunc-normal 0.02) or none."""
        kind = self.encoder.pos_embed_type
        if kind == "none":
            return None
        if kind == "sincos":
            return nn.Parameter(self._table(self.encoder.embed_dim, self.grid_3d), requires_grad=False)
        table = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + self.patch_embed3.num_patches, self.encoder.embed_dim)
        )
        nn.init.trunc_normal_(table, std=0.02)
        return table

    def _pos_for(self, which: str, grid: tuple[int, ...]) -> torch.Tensor:
        """A stored table, or a sin-cos one regenerated for another grid (cached): ``[1, P + L, width]``."""
        stored: torch.Tensor = getattr(self, which)
        default = self.grid_2d if which.endswith("2") else self.grid_3d
        if grid == default:
            return stored
        if which == "pos_embed3" and self.encoder.pos_embed_type != "sincos":
            raise ValueError(f"volume grid {grid} differs from {default} and pos_embed3 is not a sin-cos table")
        key = (which, grid)
        if key not in self._pos_cache:
            self._pos_cache[key] = self._table(stored.shape[-1], grid)
        return self._pos_cache[key].to(stored)

    def grid_of(self, imgs: torch.Tensor) -> tuple[int, ...]:
        """Token grid of an image ``[B, C, H, W]`` or a volume ``[B, C, H, W, D]``.

        Raises:
            ValueError: another number of axes, the wrong channel count or sizes not divisible by the patch.
        """
        if imgs.ndim not in (4, 5):
            raise ValueError(f"expected [B, C, H, W] images or [B, C, H, W, D] volumes, got {tuple(imgs.shape)}")
        patch = self.patch_size_2d if imgs.ndim == 4 else self.patch_size_3d
        chans = self.in_chans_2d if imgs.ndim == 4 else self.in_chans_3d
        if imgs.shape[1] != chans:
            raise ValueError(f"{imgs.ndim - 2}D input has {imgs.shape[1]} channel(s); the model takes {chans}")
        spatial = imgs.shape[2:]
        if any(s % p for s, p in zip(spatial, patch, strict=True)):
            raise ValueError(f"input size {tuple(spatial)} is not divisible by the patch size {patch}")
        return tuple(s // p for s, p in zip(spatial, patch, strict=True))

    # ------------------------------------------------------------------ patches and targets
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[B, C, *spatial] -> [B, L, prod(p) * C]`` with the patch of the input's dimensionality."""
        return patchify(imgs, self.patch_size_2d if imgs.ndim == 4 else self.patch_size_3d)

    def unpatchify(self, x: torch.Tensor, grid: Sequence[int], channels: int) -> torch.Tensor:
        """``[B, L, prod(p) * channels] -> [B, channels, *spatial]`` for a 2D or 3D ``grid``."""
        patch = self.patch_size_2d if len(grid) == 2 else self.patch_size_3d
        return unpatchify(x, patch, grid, channels)

    def targets(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Intensity targets ``[B, L, prod(p) * C]`` (per-patch normalised with ``norm_pix_loss``) and gradient-map
        targets ``[B, L, prod(p)]`` (always per-patch normalised, :func:`~medvit.pretrain.gradient.gradient_target`)."""
        patch = self.patch_size_2d if imgs.ndim == 4 else self.patch_size_3d
        target = patchify(imgs, patch)
        if self.norm_pix_loss:
            target = normalize_patches(target, unbiased=True)
        return target, gradient_target(imgs, patch)

    def forward_loss(
        self,
        imgs: torch.Tensor,
        pred: torch.Tensor,
        pred_gradient: torch.Tensor,
        mask: torch.Tensor,
        targets: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``lambda1 * L_intensity + lambda2 * L_edge``, each an MSE over the removed patches only.

        Args:
            imgs: ``[B, C, *spatial]``.
            pred: ``[B, L, prod(p) * C]``.
            pred_gradient: ``[B, L, prod(p)]``.
            mask: ``[B, L]``, 1 = removed.
            targets: :meth:`targets` of ``imgs`` when already computed.

        Returns:
            The scalar loss and ``{"loss_intensity", "loss_edge"}`` (the unweighted terms).
        """
        target, target_gradient = self.targets(imgs) if targets is None else targets
        l_int = masked_mse(pred, target, mask)
        l_edge = masked_mse(pred_gradient, target_gradient, mask)
        loss = self.loss_weights[0] * l_int + self.loss_weights[1] * l_edge
        return loss, {"loss_intensity": l_int, "loss_edge": l_edge}

    # ------------------------------------------------------------------ encoder and decoders
    def embed(self, imgs: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The unified patch embedding: tokens ``[B, P + L, D]`` (prefix + patches, positions added) and the grid."""
        grid = self.grid_of(imgs)
        if imgs.ndim == 4:
            return self.encoder.embed(imgs)
        tokens, grid = self.patch_embed3(imgs)
        prefix = [p.expand(tokens.shape[0], -1, -1) for p in self.encoder.prefix_parameters()]
        tokens = torch.cat([*prefix, tokens], dim=1)
        if self.pos_embed3 is not None:
            tokens = tokens + self._pos_for("pos_embed3", grid)
        return self.encoder.pos_drop(tokens), grid

    def masking(
        self, imgs: torch.Tensor, num_tokens: int, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ids_keep``, ``mask``, ``ids_restore`` by the model's ``mask_strategy``."""
        if self.mask_strategy == "random":
            return random_masking(imgs.shape[0], num_tokens, mask_ratio, imgs.device, generator)
        patch = self.patch_size_2d if imgs.ndim == 4 else self.patch_size_3d
        return guided_masking(entropy_weights(patch_entropy(imgs, patch)), mask_ratio, generator)

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Embed, mask, run the shared blocks and norm on ``[prefix + visible]``.

        Returns:
            ``latent [B, P + L_vis, D]``, ``mask [B, L]``, ``ids_restore [B, L]``, the grid.
        """
        tokens, grid = self.embed(imgs)
        ids_keep, mask, ids_restore = self.masking(imgs, math.prod(grid), mask_ratio, generator)
        tokens = VisionTransformer.keep_tokens(tokens, ids_keep, self.num_prefix_tokens)
        latent, _ = self.encoder.forward_intermediates(tokens, indices=1)  # all blocks + norm on the tokens
        return latent, mask, ids_restore, grid

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both decoders on the same latent: intensity ``[B, L, prod(p) * C]`` and gradient ``[B, L, prod(p)]``."""
        nd = len(grid)
        pos = self._pos_for(f"decoder_pos_embed{nd}", grid)
        p = self.num_prefix_tokens
        pred = self.decoder_intensity(latent, ids_restore, pos, nd, p)
        pred_gradient = self.decoder_gradient(latent, ids_restore, pos, nd, p)
        return pred, pred_gradient

    def forward_masked(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder on the visible tokens, both decoders: ``pred``, ``pred_gradient``, ``mask``."""
        latent, mask, ids_restore, grid = self.forward_encoder(imgs, mask_ratio, generator)
        pred, pred_gradient = self.forward_decoder(latent, ids_restore, grid)
        return pred, pred_gradient, mask

    def forward(
        self,
        batch: torch.Tensor | Mapping[str, Any],
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """One training step on a batch of images or of volumes.

        Args:
            batch: ``[B, C, H, W]``, ``[B, C, H, W, D]`` or a dict with ``"image"`` holding one of them.
            mask_ratio: override of the default ratio.
            generator: optional RNG for the mask.

        Returns:
            ``{"loss": scalar, "pred": [B, L, prod(p) * C], "pred_gradient": [B, L, prod(p)], "mask": [B, L]
            (1 = removed), "spatial_dims": 2 | 3, "logs": {"loss_intensity", "loss_edge", "loss_visible"}}``.
        """
        imgs = batch_images(batch)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        pred, pred_gradient, mask = self.forward_masked(imgs, ratio, generator)
        targets = self.targets(imgs)
        loss, logs = self.forward_loss(imgs, pred, pred_gradient, mask, targets)
        with torch.no_grad():
            logs["loss_visible"] = masked_mse(pred.detach(), targets[0], 1.0 - mask)
        logs = {k: v.detach() for k, v in logs.items()}
        return {
            "loss": loss,
            "pred": pred,
            "pred_gradient": pred_gradient,
            "mask": mask,
            "spatial_dims": imgs.ndim - 2,
            "logs": logs,
        }

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Intensity predictions as an image/volume ``[B, C, *spatial]`` in input units."""
        if self.norm_pix_loss:
            pred = denormalize_patches(pred.float(), self.patchify(imgs).float(), unbiased=True)
        return self.unpatchify(pred, self.grid_of(imgs), imgs.shape[1])

    # ------------------------------------------------------------------ the encoder as backbones
    def encoder_2d(self) -> VisionTransformer:
        """The shared encoder as the 2D backbone (the module itself, not a copy)."""
        return self.encoder

    def encoder_3d(self) -> VisionTransformer:
        """A 3D backbone with the shared cls token, blocks and norm, ``patch_embed3`` and ``pos_embed3`` (copies)."""
        kwargs = {
            **self.encoder.arch_kwargs,
            "img_size": list(self.patch_embed3.img_size),
            "patch_size": list(self.patch_size_3d),
            "in_chans": self.in_chans_3d,
        }
        vit = VisionTransformer(**kwargs)
        sd = {k: v for k, v in self.encoder.state_dict().items() if not k.startswith(("patch_embed.", "pos_embed"))}
        sd.update({f"patch_embed.{k}": v for k, v in self.patch_embed3.state_dict().items()})
        if self.pos_embed3 is not None:
            # our table always has the prefix slots; a backbone without them takes the patch rows only
            sd["pos_embed"] = self.pos_embed3 if vit.pos_embed_prefix else self.pos_embed3[:, self.num_prefix_tokens :]
        ref = next(self.encoder.parameters())
        vit.to(device=ref.device, dtype=ref.dtype)
        vit.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
        return vit


def export_encoders(
    model: Uni4Eye,
    out_dir: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    metadata_2d: Mapping[str, Any] | None = None,
    metadata_3d: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the shared encoder as two medvit backbones, ``encoder_2d.safetensors`` and ``encoder_3d.safetensors``.

    Both hold the same cls token, blocks and norm; the 2D file has the ``Conv2d`` patch embedding and the 2D
    position table, the 3D file the ``Conv3d`` one and the 3D table. Either loads with
    :func:`~medvit.shared.backbone.weights.load_backbone`, so 2D and 3D classification apps can start from them.

    Args:
        model: the trained model.
        out_dir: folder for the four files (weights + JSON sidecars).
        metadata: sidecar fields common to both (``method``, ``preset``, ...).
        metadata_2d: fields of the 2D file (``modality``, ``intensity``, ...).
        metadata_3d: fields of the 3D file.

    Returns:
        The 2D and the 3D weight file.
    """
    out_dir = Path(out_dir)
    common = {"method": "uni4eye", "mask_ratio": float(model.mask_ratio), **dict(metadata or {})}
    p2 = save_backbone(
        model.encoder_2d(),
        out_dir / "encoder_2d.safetensors",
        metadata={**common, "shares_blocks_with": "encoder_3d.safetensors", **dict(metadata_2d or {})},
        source="medvit pretrain",
    )
    p3 = save_backbone(
        model.encoder_3d(),
        out_dir / "encoder_3d.safetensors",
        metadata={**common, "shares_blocks_with": "encoder_2d.safetensors", **dict(metadata_3d or {})},
        source="medvit pretrain",
    )
    return p2, p3


# ============================================================================= successor checkpoints
# Successor (Davidczy/Uni4Eye_pp ``MaskedAutoencoderViT23D_2decoder`` / Uni4Eye++) key -> our key; the first match wins.
_KEY_MAP = (
    (r"^patch_embed\.proj2\.", "encoder.patch_embed.proj."),
    (r"^pos_embed2$", "encoder.pos_embed"),
    (r"^cls_token$", "encoder.cls_token"),
    (r"^blocks\.", "encoder.blocks."),
    (r"^norm\.", "encoder.norm."),
    (r"^patch_embed\.proj3\.", "patch_embed3.proj."),
    (r"^pos_embed3$", "pos_embed3"),
    (r"^decoder_pos_embed([23])$", r"decoder_pos_embed\1"),
    (r"^decoder_embed\.", "decoder_intensity.embed."),
    (r"^mask_token$", "decoder_intensity.mask_token"),
    (r"^decoder_blocks\.", "decoder_intensity.blocks."),
    (r"^decoder_pred([23])\.", r"decoder_intensity.pred\1."),
    (r"^decoder_embed1\.", "decoder_gradient.embed."),
    (r"^mask_token1$", "decoder_gradient.mask_token"),
    (r"^decoder_blocks1\.", "decoder_gradient.blocks."),
    (r"^decoder_pred([23])1\.", r"decoder_gradient.pred\1."),
)
# Unused by the successor's forward (decoder_pos_embed21/31) or Uni4Eye++'s dynamic head (mlp, controller).
_DROP = (r"^decoder_pos_embed[23]1$", r"^mlp\.", r"^controller\.")


def _read_state_dict(source: str | Path | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(source, (str, Path)):
        return read_checkpoint(source)[0]
    obj: Any = source
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    return {strip_prefixes(str(k), ("module.", "_orig_mod.")): v for k, v in obj.items() if torch.is_tensor(v)}


def _map_keys(sd: Mapping[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    """Rename to our keys; record dropped keys; copy the successor's shared ``decoder_norm`` into both decoders."""
    out: dict[str, torch.Tensor] = {}
    plus = is_uni4eye_plus(sd)
    for k, v in sd.items():
        if any(re.match(p, k) for p in _DROP) or (plus and k.startswith("decoder_pred3.")):
            # Uni4Eye++'s decoder_pred3 predicts 16^2 x 3 values: its volumes go through the 2D path.
            report.dropped.append(k)
            continue
        if k.startswith("decoder_norm."):
            out[f"decoder_intensity.norm.{k[len('decoder_norm.') :]}"] = v
            if not any(x.startswith("decoder_norm1.") for x in sd):
                out[f"decoder_gradient.norm.{k[len('decoder_norm.') :]}"] = v
                report.adapted.append((f"decoder_gradient.norm.{k[len('decoder_norm.') :]}", f"copied from {k}"))
            continue
        if k.startswith("decoder_norm1."):
            out[f"decoder_gradient.norm.{k[len('decoder_norm1.') :]}"] = v
            continue
        for pat, rep in _KEY_MAP:
            if re.match(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            out[k] = v  # no place in the model: load_strict names it
    return out


_TABLES = ("encoder.pos_embed", "pos_embed3", "decoder_pos_embed2", "decoder_pos_embed3")


def _fit_embeddings(model: Uni4Eye, sd: dict[str, torch.Tensor], report: LoadReport) -> None:
    """In place: 3-channel 3D patch weights summed to the model's channels; all-zero position tables replaced by ours.

    The successor never fills its 3D tables, and its dual-decoder class fills none (its init call is commented
    out): a table of zeros there is not trained position information.
    """
    w = sd.get("patch_embed3.proj.weight")
    if w is not None and w.shape[1] != model.in_chans_3d and w.shape[2:] == model.patch_embed3.proj.weight.shape[2:]:
        sd["patch_embed3.proj.weight"] = adapt_input_conv(model.in_chans_3d, w)
        report.adapted.append(("patch_embed3.proj.weight", f"in_chans {w.shape[1]} -> {model.in_chans_3d}"))
    params = dict(model.named_parameters())
    for key in _TABLES:
        table = params.get(key)
        if key in sd and table is not None and not sd[key].any():
            sd[key] = table.detach().clone()
            report.adapted.append((key, "all zero in the checkpoint (never initialised there): kept our sin-cos table"))


def load_uni4eye_checkpoint(
    model: Uni4Eye, source: str | Path | Mapping[str, Any], *, allow_missing: Sequence[str] = ()
) -> LoadReport:
    """Load a Uni4Eye(++) checkpoint (successor layout) into ``model`` to continue pretraining.

    Accepts the file the successor's trainer writes (``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``, read
    with ``weights_only=True`` and ``argparse.Namespace`` allowed) or an already loaded mapping. Mapping:
    ``patch_embed.proj2`` / ``pos_embed2`` / ``cls_token`` / ``blocks`` / ``norm`` -> ``encoder.*``;
    ``patch_embed.proj3`` -> ``patch_embed3.proj``; ``pos_embed3``; ``decoder_embed`` / ``mask_token`` /
    ``decoder_blocks`` / ``decoder_pred2`` / ``decoder_pred3`` -> ``decoder_intensity.*``; ``decoder_embed1`` /
    ``mask_token1`` / ``decoder_blocks1`` / ``decoder_pred21`` / ``decoder_pred31`` -> ``decoder_gradient.*``;
    the shared ``decoder_norm`` -> both decoders' ``norm``; ``decoder_pos_embed2/3``. Dropped and reported:
    ``decoder_pos_embed21/31`` (unused there), Uni4Eye++'s ``mlp.*`` / ``controller.*`` and its 2D-shaped
    ``decoder_pred3``. A single-decoder (Uni4Eye++) checkpoint leaves ``decoder_gradient.*`` as initialised
    (listed as missing). The 3D head rows are copied in the stored order, which matches our ``(p1, p2, p3)``
    patch order only where the successor's own 3D ``patchify`` is consistent (cubic volumes).

    Args:
        model: the target; its sizes must match the checkpoint's (2D position tables are resampled).
        source: path or state dict (optionally under ``'model'``).
        allow_missing: glob patterns of further model keys the checkpoint may lack.

    Returns:
        The :class:`~medvit.shared.backbone.weights.LoadReport`, keys relative to ``model``.

    Raises:
        WeightsError: not a Uni4Eye layout, undeclared missing or unknown keys, or a shape mismatch (naming the
            key and both shapes).
    """
    raw = _read_state_dict(source)
    if "patch_embed.proj2.weight" not in raw:
        raise WeightsError("not a Uni4Eye checkpoint: no patch_embed.proj2.weight (after removing 'module.')")
    report = LoadReport(source_format="uni4eye")
    sd = _map_keys(raw, report)
    _fit_embeddings(model, sd, report)
    enc_sd = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    enc_report = load_pretrained(model.encoder, enc_sd, source_format="medvit")  # names are ours already
    report.resized += [(f"encoder.{k}", a, b) for k, a, b in enc_report.resized]
    report.adapted += [(f"encoder.{k}", how) for k, how in enc_report.adapted]

    rest = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    allow = list(allow_missing)
    if not any(k.startswith("decoder_embed1.") for k in raw):
        allow.append("decoder_gradient.*")  # a single-decoder checkpoint
    if any(k.startswith("decoder_pred3.") for k in report.dropped):
        allow.append("decoder_intensity.pred3.*")
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    report.missing, report.unexpected = load_strict(
        model, rest, what="Uni4Eye checkpoint", target=target, expected_missing=allow
    )
    report.dropped.sort()
    logger.info("loaded Uni4Eye checkpoint (%s)", report.summary())
    return report
