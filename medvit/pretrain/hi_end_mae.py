"""Hi-End-MAE: hierarchical encoder-driven masked autoencoder for 3D CT.

An MAE whose decoder, after self-attention on ``[projected final encoder output + mask tokens]``, runs
cross-attention blocks whose keys/values are linearly projected *intermediate* encoder outputs, visited
from deep to shallow ("encoder-driven reconstruction", "hierarchical dense decoding"). Shapes for the
paper's configuration (encoder 1536 wide, 12 blocks, 12^3 patches on 96^3 crops -> L = 512 tokens, mask
ratio 0.75 -> 128 visible, decoder 528 wide):

1. encoder on ``[cls + 128 visible]`` -> final normed ``z [B, 129, 1536]`` and the *raw* (not normed) outputs
   of blocks 4, 7, 10 (1-based; 0-based taps 3, 6, 9), each ``[B, 129, 1536]`` with the cls token;
2. ``encoder_to_decoder[i]`` Linear(1536 -> 528) projects tap ``i`` (shallow -> deep) and
   ``encoder_to_decoder[-1]`` the final output; ``x = cat(P_last(z), mask_token x 384)`` ``[B, 513, 528]`` stays
   in the shuffled order and gets the fixed 3D sin-cos ``decoder_pos_embed`` gathered in that order (the
   cls position gets none); the projected taps get no decoder position embedding;
3. ``decoder.blocks`` (2 self-attention blocks), then ``decoder.cross_attention_blocks`` (3 x: self-attention,
   cross-attention with ``q`` from the normed decoder tokens and ``kv`` from the un-normalised projected tap,
   MLP) consuming taps 9, 6, 3 in that order, ``decoder.norm``, ``decoder.head`` Linear(528 -> 1728);
4. loss = MSE on the 384 masked positions against per-patch LayerNorm-without-affine targets (biased
   variance, eps 1e-6).

State-dict keys match the official checkpoint (``hi_end_mae.py`` + ``networks/vit.py``) without ``module.``,
except that our backbone keeps its fixed position embedding inside as ``encoder.pos_embed`` where the
official model has ``encoder_pos_embed``; :func:`load_official_hi_end_mae` maps it.

Taps scale with depth: :func:`hiend_taps` gives ``round(k * depth / (n + 1))`` for ``k = 1..n`` as 0-based
indices, i.e. (3, 6, 9) for 12 blocks (the official, hard-coded choice and UNETR's skips), (6, 12, 18) for 24,
(1, 2, 3) for 4. Any other sorted set can be given.

Deviations from the official code (FengheTan9/Hi-End-MAE at b0df9c6), on purpose:

* Weight decay: the official param groups carry a ``weight_decay_scale`` key that AdamW ignores, so decay hits
  every parameter. Here the engine decays only weights with >= 2 dims that are not tokens or position tables
  (biases, norms, ``cls_token``, ``mask_token`` are excluded), as MAE intends.
* The number of taps, the decoder depth and the tap positions are arguments rather than literals
  ``[3, 6, 9, 12]`` (hard-coded taps would change meaning with depth).
* CPU-capable: no ``.cuda()`` / ``.to(rank)`` inside the model; masks may come from a given generator.
* Visible count ``floor(L (1 - r) + 1e-6)`` (see :mod:`medvit.pretrain.mae`).
* Inputs whose grid differs from the configured one get a regenerated sin-cos decoder position embedding
  instead of failing.
* ``forward`` returns the predictions un-shuffled to the original token order (with ``mask``), so the loss is
  written as a masked mean; it equals the official ``MSELoss`` over the mask-token positions (tested).
* Previews de-normalise predictions with the exact inverse of the target normalisation (biased variance, eps inside
  the square root); the official ``return_image`` path uses the unbiased std plus 1e-6, which does not invert it.

Kept as in the official code: the projections' biases keep PyTorch's default init (only their weights are
xavier-initialised); the decoder's Linear layers are xavier with zero bias; ``mask_token`` ~ N(0, 0.02); the
cross-attention ``q``/``kv`` have biases (``qkv_bias=True``); SDPA with scale ``1/sqrt(head_dim)``.

References:
    Tang et al., "Hi-End-MAE: Hierarchical encoder-driven masked autoencoders are stronger vision learners
    for medical image segmentation", Medical Image Analysis 2025, arXiv 2502.08347
    (https://github.com/FengheTan9/Hi-End-MAE).
    He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvit.pretrain.mae import MaskedAutoencoderBase, random_masking
from medvit.shared.backbone.layers import Attention, Block, Mlp, MultiHeadAttention, init_mae_weights
from medvit.shared.backbone.pos_embed import resample_pos_embed
from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.backbone.weights import LoadReport, load_pretrained, load_strict, read_checkpoint, strip_prefixes
from medvit.shared.errors import WeightsError

logger = logging.getLogger(__name__)

__all__ = [
    "CrossAttention",
    "CrossAttentionBlock",
    "HiEndDecoder",
    "HiEndMAE",
    "hiend_taps",
    "load_official_hi_end_mae",
    "official_key_shapes",
]


def hiend_taps(depth: int, n: int = 3) -> tuple[int, ...]:
    """0-based encoder blocks whose raw outputs the decoder cross-attends to (ascending).

    ``round(k * depth / (n + 1))`` for ``k = 1..n``: (3, 6, 9) for 12 blocks = the outputs of blocks 4, 7, 10
    (1-based) used by Hi-End-MAE and as UNETR skips.

    Args:
        depth: encoder blocks.
        n: number of taps (= cross-attention blocks).

    Returns:
        Sorted unique 0-based indices.
    """
    if not 0 < n < depth + 1:
        raise ValueError(f"cannot take {n} taps from a {depth}-block encoder")
    taps = tuple(sorted({min(depth - 1, max(0, round(k * depth / (n + 1)))) for k in range(1, n + 1)}))
    if len(taps) != n:
        raise ValueError(f"{n} distinct taps do not fit a {depth}-block encoder; pass taps explicitly")
    return taps


class CrossAttention(MultiHeadAttention):
    """Multi-head attention: queries from the decoder tokens, keys/values from encoder tokens.

    Args:
        dim: decoder width (also the width of the projected encoder tokens).
        num_heads: heads.
        qkv_bias: bias on ``q`` and ``kv``.
        attn_drop: attention dropout.
        proj_drop: output dropout.
    """

    def _init_inputs(self, dim: int, qkv_bias: bool) -> None:
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x [B, N, D]`` attends to ``context [B, M, D]``; returns ``[B, N, D]``."""
        q = self._split_heads(self.q(x), 1)[0]  # [B, H, N, hd]
        k, v = self._split_heads(self.kv(context), 2).unbind(0)  # each [B, H, M, hd]
        return self._attend(q, k, v)


class CrossAttentionBlock(nn.Module):
    """``x += SelfAttn(norm0(x))``; ``x += CrossAttn(norm1(x), context)``; ``x += Mlp(norm2(x))``.

    The context (projected encoder tokens) is used as it is, without a norm, as in the official code.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x [B, N, D]``, ``context [B, M, D]`` -> ``[B, N, D]``."""
        x = x + self.self_attn(self.norm0(x))
        x = x + self.cross_attn(self.norm1(x), context)
        return x + self.mlp(self.norm2(x))


class HiEndDecoder(nn.Module):
    """Self-attention blocks, then one cross-attention block per encoder tap, norm and prediction head.

    Args:
        dim: decoder width (paper 528).
        num_heads: heads (paper 16, head dim 33).
        out_dim: values per patch, ``prod(patch) * C`` (paper 1728).
        self_depth: self-attention blocks (paper 2).
        cross_depth: cross-attention blocks = number of taps (paper 3).
        mlp_ratio: MLP ratio (4).
        qkv_bias: attention biases (True).
        norm_eps: LayerNorm epsilon (1e-6).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        out_dim: int,
        self_depth: int = 2,
        cross_depth: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.embed_dim = dim
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_eps=norm_eps) for _ in range(self_depth)
        )
        self.cross_attention_blocks = nn.ModuleList(
            CrossAttentionBlock(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_eps=norm_eps)
            for _ in range(cross_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, out_dim)
        init_mae_weights(self)

    def forward(self, x: torch.Tensor, contexts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode.

        Args:
            x: ``[B, N, D]`` decoder tokens (prefix + visible + mask tokens, shuffled order).
            contexts: one ``[B, M, D]`` per cross-attention block, in the order the blocks consume them
                (deep -> shallow).

        Returns:
            ``[B, N, out_dim]``.
        """
        if len(contexts) != len(self.cross_attention_blocks):
            raise ValueError(f"{len(contexts)} contexts for {len(self.cross_attention_blocks)} cross-attention blocks")
        for blk in self.blocks:
            x = blk(x)
        for blk, ctx in zip(self.cross_attention_blocks, contexts, strict=True):
            x = blk(x, ctx)
        return self.head(self.norm(x))


class HiEndMAE(MaskedAutoencoderBase):
    """Hi-End-MAE pretraining model around a 3D (or 2D) medvit ViT encoder.

    Targets are always normalised per patch, by a LayerNorm without affine (biased variance, eps 1e-6); the loss is
    the MSE on the removed patches (equal to the official ``MSELoss(pred[masked], patch_norm(target[masked]))``
    because every sample has the same number of masked patches).

    Args:
        encoder: the backbone (paper: ``vit_hiend_large_patch12_3d``); not re-initialised.
        decoder_embed_dim: decoder width (paper 528).
        decoder_num_heads: decoder heads (paper 16).
        decoder_depth: self-attention blocks before the cross-attention blocks (paper 2).
        taps: 0-based encoder blocks whose raw outputs are cross-attended (any order; stored ascending);
            default :func:`hiend_taps` ``(depth, 3)``.
        mlp_ratio: decoder MLP ratio (4).
        mask_ratio: default fraction of removed tokens (code default 0.75).
        norm_eps: decoder LayerNorm epsilon (1e-6).
    """

    unbiased_norm = False  # targets: LayerNorm without affine (biased variance, eps 1e-6)
    decoder_pos_prefix = False  # decoder_pos_embed [1, L, Dd]: the cls position gets none

    def __init__(
        self,
        encoder: VisionTransformer,
        *,
        decoder_embed_dim: int = 528,
        decoder_num_heads: int = 16,
        decoder_depth: int = 2,
        taps: Sequence[int] | None = None,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_eps: float = 1e-6,
    ) -> None:
        depth = len(encoder.blocks)
        taps = hiend_taps(depth) if taps is None else tuple(sorted(int(t) for t in taps))
        if not taps or len(set(taps)) != len(taps) or not all(0 <= t < depth for t in taps):
            raise ValueError(f"taps {taps} must be distinct 0-based block indices of a {depth}-block encoder")
        # mask_token and the fixed sin-cos decoder_pos_embed [1, L, Dd] (no prefix slot) come from the base.
        super().__init__(encoder, decoder_embed_dim=decoder_embed_dim, mask_ratio=mask_ratio, norm_pix_loss=True)
        self.taps = taps

        # encoder_to_decoder[i] projects taps[i] (shallow -> deep); the last one the final normed output.
        self.encoder_to_decoder = nn.ModuleList(
            nn.Linear(encoder.embed_dim, decoder_embed_dim, bias=True) for _ in range(len(taps) + 1)
        )
        self.decoder = HiEndDecoder(
            decoder_embed_dim,
            decoder_num_heads,
            math.prod(self.patch_size) * self.in_chans,
            self_depth=decoder_depth,
            cross_depth=len(taps),
            mlp_ratio=mlp_ratio,
            norm_eps=norm_eps,
        )
        nn.init.normal_(self.mask_token, std=0.02)
        for proj in self.encoder_to_decoder:
            nn.init.xavier_uniform_(proj.weight)  # bias: PyTorch default, as the official code

    # ------------------------------------------------------------------ forward
    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder on [prefix + visible] tokens.

        Args:
            imgs: ``[B, C, *spatial]``.
            ids_keep: ``[B, L_vis]``.

        Returns:
            final normed tokens ``[B, P + L_vis, D]`` and the raw outputs of ``taps`` (ascending), each
            ``[B, P + L_vis, D]`` with the prefix tokens first.
        """
        final, inter = self.encoder.forward_intermediates(imgs, self.taps, keep=ids_keep, return_prefix_tokens=True)
        feats = [torch.cat([prefix, patches], dim=1) for patches, prefix in inter]
        return final, feats

    def forward_decoder(
        self, final: torch.Tensor, feats: Sequence[torch.Tensor], ids_restore: torch.Tensor, grid: tuple[int, ...]
    ) -> torch.Tensor:
        """Project, add mask tokens and decoder position embeddings, decode, unshuffle.

        Args:
            final: ``[B, P + L_vis, D]``.
            feats: raw tap outputs (ascending), each ``[B, P + L_vis, D]``.
            ids_restore: ``[B, L]``.
            grid: token grid.

        Returns:
            ``[B, L, V]`` predictions in the original token order.
        """
        p = self.num_prefix_tokens
        b, length = ids_restore.shape
        ids_shuffle = torch.argsort(ids_restore, dim=1)
        contexts = [proj(f) for proj, f in zip(self.encoder_to_decoder[:-1], feats, strict=True)]
        x = self.encoder_to_decoder[-1](final)
        dd = x.shape[-1]
        n_mask = length + p - x.shape[1]
        x = torch.cat([x, self.mask_token.expand(b, n_mask, -1).to(x.dtype)], dim=1)  # shuffled order
        pos = self.decoder_pos_for(grid).expand(b, -1, -1)
        pos = torch.gather(pos, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, dd)).to(x.dtype)
        x = torch.cat([x[:, :p], x[:, p:] + pos], dim=1)
        out = self.decoder(x, contexts[::-1])  # deep -> shallow
        out = out[:, p:]
        return torch.gather(out, 1, ids_restore.unsqueeze(-1).expand(-1, -1, out.shape[-1]))

    def forward_masked(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random masking, encoder on the visible tokens (final output + taps), hierarchical decoder.

        Returns:
            ``pred [B, L, V]`` (original order), ``mask [B, L]`` (1 = removed).
        """
        grid = self.grid_of(imgs)
        ids_keep, mask, ids_restore = random_masking(imgs.shape[0], math.prod(grid), mask_ratio, imgs.device, generator)
        final, feats = self.forward_encoder(imgs, ids_keep)
        return self.forward_decoder(final, feats, ids_restore, grid), mask


# ============================================================================= official checkpoints
def official_key_shapes(model: HiEndMAE) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the official Hi-End-MAE state dict (without ``module.``) for ``model``'s sizes.

    The official model stores its fixed encoder position embedding as ``encoder_pos_embed [1, L, D]`` beside
    the encoder; everything else has our names.
    """
    out: dict[str, tuple[int, ...]] = {}
    for k, v in model.state_dict().items():
        if k == "encoder.pos_embed":
            out["encoder_pos_embed"] = tuple(v.shape)
        else:
            out[k] = tuple(v.shape)
    return out


def load_official_hi_end_mae(
    model: HiEndMAE,
    source: str | Path | Mapping[str, Any],
    *,
    allow_missing: Sequence[str] = (),
) -> LoadReport:
    """Load an official Hi-End-MAE checkpoint (encoder, projections, mask token, decoder) into ``model``.

    Accepts the file the official trainer writes (``{'epoch', 'state_dict', 'optimizer', 'scaler'}`` with
    ``module.`` prefixes; read with ``weights_only=True``) or an already loaded mapping. Mapping:
    ``encoder.*`` -> ``encoder.*``; ``encoder_pos_embed [1, L, D]`` -> ``encoder.pos_embed`` (copied, never
    regenerated; resampled only if the grid differs); ``decoder_pos_embed``, ``encoder_to_decoder.*``,
    ``mask_token``, ``decoder.*`` -> same names. Our encoder's position embedding stays fixed (not trained) even
    when the checkpoint was trained with the official ``--pos_embed_type perceptron`` (learned values are copied).

    Args:
        model: the target (its sizes must match the checkpoint's).
        source: path or state dict (optionally wrapped in ``state_dict``/``model``).
        allow_missing: glob patterns of model keys the checkpoint may lack.

    Returns:
        A :class:`LoadReport` (keys relative to ``model``).

    Raises:
        WeightsError: missing or unexpected keys, or shape mismatches (naming the key and both shapes).
    """
    if isinstance(source, (str, Path)):
        sd, _ = read_checkpoint(source)
    else:
        obj: Any = source
        for wrapper in ("state_dict", "model"):
            if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
        sd = {strip_prefixes(str(k), ("module.", "_orig_mod.")): v for k, v in obj.items() if torch.is_tensor(v)}
    enc_sd = {k: v for k, v in sd.items() if k.startswith("encoder.") or k == "encoder_pos_embed"}
    rest = {k: v for k, v in sd.items() if k not in enc_sd}
    if not enc_sd:
        raise WeightsError("not a Hi-End-MAE checkpoint: no encoder.* keys (after removing 'module.')")

    enc_allow = [p[len("encoder.") :] for p in allow_missing if p.startswith("encoder.")]
    enc_report = load_pretrained(model.encoder, enc_sd, source_format="hi-end-mae", expected_missing=enc_allow)
    report = LoadReport(
        source_format="hi-end-mae",
        missing=[f"encoder.{k}" for k in enc_report.missing],
        unexpected=[f"encoder.{k}" for k in enc_report.unexpected],
        resized=[(f"encoder.{k}", a, b) for k, a, b in enc_report.resized],
        adapted=[(f"encoder.{k}", how) for k, how in enc_report.adapted],
    )

    target = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    if "decoder_pos_embed" in rest and "decoder_pos_embed" in target:
        v = rest["decoder_pos_embed"]
        t = target["decoder_pos_embed"]
        if v.ndim == 3 and v.shape[-1] == t.shape[-1] and v.shape[1] != t.shape[1]:
            nd = len(model.patch_size)
            side = round(v.shape[1] ** (1 / nd))
            if side**nd != v.shape[1]:
                raise WeightsError(f"decoder_pos_embed: {tuple(v.shape)} does not fit a {nd}D grid")
            rest["decoder_pos_embed"] = resample_pos_embed(v, model.encoder.patch_embed.grid_size, (side,) * nd)
            report.resized.append(("decoder_pos_embed", tuple(v.shape), tuple(t.shape)))
    missing, _ = load_strict(model, rest, what="Hi-End-MAE checkpoint", target=target, expected_missing=allow_missing)
    report.missing += missing
    logger.info("loaded Hi-End-MAE checkpoint (%s)", report.summary())
    return report
