"""The shared Vision Transformer, 2D or 3D by ``len(patch_size)``.

One class serves every method and app: MAE-family pretraining encodes only visible tokens through
``forward_intermediates(..., keep=ids_keep)``, UNETR-style decoders read spatial taps, adapters iterate
the public ``blocks``, and classification heads use ``forward_head``. Names and state-dict keys are timm's
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm``, ``fc_norm``, ``head``).

Token layout: ``[prefix tokens..., patch tokens...]`` where the prefix is ``cls_token`` (optional), then
named extra tokens in the given order (e.g. ViT-FIQA's ``quality_token``), then ``reg_token`` (register
tokens). With ``pos_embed_prefix=True`` (timm's default) the position embedding has one slot per prefix
token; with ``False`` it covers patch tokens only (Hi-End-MAE, MONAI; equivalent to a zero prefix slot).

References:
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
    timm ``vision_transformer.py`` (API and key vocabulary; no code is shared).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.utils.checkpoint
from torch import nn

from medvit.shared.backbone.features import take_indices, tokens_to_spatial
from medvit.shared.backbone.layers import Block, Mlp, PatchEmbed, init_mae_weights
from medvit.shared.backbone.pos_embed import resample_pos_embed, sincos_pos_embed
from medvit.shared.schema import check_arch_kwargs

logger = logging.getLogger(__name__)

PosEmbedType = Literal["learn", "sincos", "none"]
PoolType = Literal["token", "avg", "none"]


def _to_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} {value} must have {n} entries to match patch_size")
    return value


def _check_options(patch: tuple[int, ...], global_pool: str, pos_embed: str, has_prefix_token: bool) -> None:
    if len(patch) not in (2, 3):
        raise ValueError(f"patch_size must have 2 (2D) or 3 (3D) entries, got {patch}")
    if global_pool not in ("token", "avg", "none"):
        raise ValueError(f"global_pool must be token|avg|none, got {global_pool!r}")
    if pos_embed not in ("learn", "sincos", "none"):
        raise ValueError(f"pos_embed must be learn|sincos|none, got {pos_embed!r}")
    if global_pool == "token" and not has_prefix_token:
        raise ValueError("global_pool='token' needs a prefix token (class_token, extra_tokens or reg_tokens)")


class VisionTransformer(nn.Module):
    """ViT for 2D images or 3D volumes.

    Args:
        img_size: input size; an int (square/cubic) or one value per spatial axis.
        patch_size: an int for 2D, or a tuple of 2 (2D) or 3 (3D) values: this decides the dimension.
        in_chans: input channels.
        num_classes: head outputs; 0 for no head (``head`` is Identity).
        global_pool: ``token`` (first prefix token), ``avg`` (mean of patch tokens) or ``none``.
        embed_dim: D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: bias on the qkv projection.
        act: MLP activation (``gelu``, ``relu6``, ...).
        norm_eps: LayerNorm epsilon (1e-6 timm/MAE, 1e-5 MONAI).
        class_token: prepend a class token.
        extra_tokens: names of further learnable prefix tokens, e.g. ``("quality",)`` -> ``quality_token``.
        reg_tokens: number of register tokens (``reg_token`` [1, R, D]).
        pos_embed: ``learn`` (trainable), ``sincos`` (fixed, MAE 2D / Hi-End-MAE 3D layout) or ``none``.
        pos_embed_prefix: whether the position embedding has slots for prefix tokens.
        fc_norm: LayerNorm after pooling instead of before (``None``: True for ``avg`` pooling, as timm).
        init_values: LayerScale init (None: off).
        drop_rate: dropout after position embedding and in blocks / head.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        patch_bias: bias of the patch-embedding conv.
        block_fn: block class (hook for adapters / LoRA).
        mlp_layer: MLP class used by blocks.
        dynamic_img_size: accept inputs whose grid differs from ``img_size`` (sin-cos embeddings are
            regenerated, learned ones resampled on the fly).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: PoolType = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        act: str = "gelu",
        norm_eps: float = 1e-6,
        class_token: bool = True,
        extra_tokens: Sequence[str] = (),
        reg_tokens: int = 0,
        pos_embed: PosEmbedType = "learn",
        pos_embed_prefix: bool = True,
        fc_norm: bool | None = None,
        init_values: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_bias: bool = True,
        block_fn: type[nn.Module] = Block,
        mlp_layer: type[nn.Module] = Mlp,
        dynamic_img_size: bool = True,
    ) -> None:
        args = dict(locals())  # before any other local exists
        super().__init__()
        # JSON-able constructor arguments, written into weight sidecars so `load_backbone` can rebuild.
        self.arch_kwargs: dict[str, Any] = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in args.items()
            if k not in ("self", "block_fn", "mlp_layer", "__class__")
        }
        patch = (patch_size,) * 2 if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
        nd = len(patch)
        _check_options(patch, global_pool, pos_embed, class_token or bool(extra_tokens) or bool(reg_tokens))
        # Last guard for every path that builds a backbone from a file or an option: absurd sizes are refused
        # here, from the kwargs alone, before anything is allocated (readers check first to name the file).
        check_arch_kwargs(self.arch_kwargs)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.spatial_dims = nd
        self.pos_embed_type = pos_embed
        self.pos_embed_prefix = pos_embed_prefix
        self.dynamic_img_size = dynamic_img_size
        self.extra_token_names = tuple(extra_tokens)
        self.num_reg_tokens = reg_tokens
        self.has_class_token = class_token
        self.num_prefix_tokens = int(class_token) + len(self.extra_token_names) + reg_tokens
        self.grad_checkpointing = False

        self._build_embeddings(_to_tuple(img_size, nd, "img_size"), patch, in_chans, patch_bias, drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear stochastic depth
        self.blocks = nn.ModuleList(
            block_fn(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                act=act,
                norm_eps=norm_eps,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                init_values=init_values,
                mlp_layer=mlp_layer,
            )
            for i in range(depth)
        )
        self._build_head(global_pool == "avg" if fc_norm is None else fc_norm, norm_eps, drop_rate, depth)
        self._sincos_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.init_weights()

    def _build_embeddings(
        self, img_size: tuple[int, ...], patch: tuple[int, ...], in_chans: int, patch_bias: bool, drop_rate: float
    ) -> None:
        """Patch embedding, prefix tokens (cls, extra, registers) and the position embedding."""
        embed_dim = self.embed_dim
        self.patch_embed = PatchEmbed(img_size, patch, in_chans, embed_dim, patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.has_class_token else None
        for name in self.extra_token_names:
            if not name.isidentifier():
                raise ValueError(f"extra token name {name!r} is not an identifier")
            self.register_parameter(f"{name}_token", nn.Parameter(torch.zeros(1, 1, embed_dim)))
        reg_tokens = self.num_reg_tokens
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None

        n_pos = self.patch_embed.num_patches + (self.num_prefix_tokens if self.pos_embed_prefix else 0)
        if self.pos_embed_type == "none":
            self.pos_embed = None
        else:
            # Fixed sin-cos is still a Parameter (requires_grad=False) so it appears in the state dict
            # under `pos_embed`, as in MAE; converters copy it verbatim.
            learn = self.pos_embed_type == "learn"
            self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, embed_dim), requires_grad=learn)
        self.pos_drop = nn.Dropout(drop_rate)

    def _build_head(self, use_fc_norm: bool, norm_eps: float, drop_rate: float, depth: int) -> None:
        """Final norm (before pooling, or ``fc_norm`` after it), head dropout, classifier and the feature taps."""
        embed_dim = self.embed_dim
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if not use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.feature_info = [
            {"index": i, "module": f"blocks.{i}", "num_chs": embed_dim, "reduction": self.patch_embed.patch_size}
            for i in range(depth)
        ]

    # ------------------------------------------------------------------ init and bookkeeping
    def init_weights(self) -> None:
        """MAE initialisation: xavier-uniform Linear and patch conv (as a Linear), N(0, .02) tokens."""
        if self.pos_embed is not None:
            if self.pos_embed_type == "sincos":
                self.pos_embed.data.copy_(self._sincos_full(self.patch_embed.grid_size))
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for p in self.prefix_parameters():
            nn.init.normal_(p, std=0.02)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        init_mae_weights(self)

    def prefix_parameters(self) -> list[nn.Parameter]:
        """Prefix-token parameters in token order: cls, extra tokens, registers."""
        out = [self.cls_token] if self.cls_token is not None else []
        out += [getattr(self, f"{n}_token") for n in self.extra_token_names]
        if self.reg_token is not None:
            out.append(self.reg_token)
        return out

    def prefix_token_names(self) -> list[str]:
        """One name per prefix token position, e.g. ``["cls", "quality", "reg0"]``."""
        names = ["cls"] if self.cls_token is not None else []
        names += list(self.extra_token_names)
        names += [f"reg{i}" for i in range(self.num_reg_tokens)]
        return names

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that must not be weight-decayed (position embedding and prefix tokens)."""
        names = {"pos_embed", "cls_token", "reg_token"}
        names |= {f"{n}_token" for n in self.extra_token_names}
        return names

    def layer_id(self, name: str) -> int:
        """Layer index for layer-wise LR decay (MAE ``util/lr_decay.py`` convention).

        0 for the patch embedding, position embedding and prefix tokens; ``i + 1`` for ``blocks.i.*``;
        ``depth + 1`` for everything after the blocks (norm, fc_norm, head).
        """
        if name.startswith("module."):
            name = name[len("module.") :]
        if name.startswith(("patch_embed", "pos_embed", "cls_token", "reg_token")) or name.split(".")[0] in {
            f"{n}_token" for n in self.extra_token_names
        }:
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory (training only)."""
        self.grad_checkpointing = enable

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False) -> list[int]:
        """Drop blocks after the last needed tap (backbone-only use); returns the kept indices."""
        taken, max_index = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
            self.fc_norm = nn.Identity()
            self.head = nn.Identity()
            self.num_classes = 0
        return taken

    def reset_classifier(self, num_classes: int, global_pool: PoolType | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def grid_size(self) -> tuple[int, ...]:
        return self.patch_embed.grid_size

    @property
    def patch_size(self) -> tuple[int, ...]:
        return self.patch_embed.patch_size

    # ------------------------------------------------------------------ embedding
    def _sincos_full(self, grid: tuple[int, ...]) -> torch.Tensor:
        emb = sincos_pos_embed(self.embed_dim, grid)[None]
        if self.pos_embed_prefix and self.num_prefix_tokens:
            emb = torch.cat([torch.zeros(1, self.num_prefix_tokens, self.embed_dim), emb], dim=1)
        return emb

    def _pos_embed_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        assert self.pos_embed is not None
        if grid == self.patch_embed.grid_size:
            return self.pos_embed
        if not self.dynamic_img_size:
            raise ValueError(
                f"input token grid {grid} differs from the model's {self.patch_embed.grid_size} "
                "and dynamic_img_size is off"
            )
        n_prefix = self.num_prefix_tokens if self.pos_embed_prefix else 0
        if self.pos_embed_type == "sincos":
            # Regenerate exactly rather than interpolate; only valid for our own sin-cos layout, so
            # prefix slots and dtype/device are taken from the stored tensor.
            key = grid
            if key not in self._sincos_cache:
                self._sincos_cache[key] = sincos_pos_embed(self.embed_dim, grid)[None]
            emb = self._sincos_cache[key].to(self.pos_embed)
            return torch.cat([self.pos_embed[:, :n_prefix], emb], dim=1)
        return resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size, n_prefix)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Patch embedding + position embedding + prefix tokens.

        Args:
            x: images ``[B, C, H, W]`` or volumes ``[B, C, H, W, D]``.

        Returns:
            tokens ``[B, P + L, D]`` (P prefix tokens, L patch tokens) and the token grid.
        """
        tokens, grid = self.patch_embed(x)
        b = tokens.shape[0]
        prefix = [p.expand(b, -1, -1) for p in self.prefix_parameters()]
        if self.pos_embed is None:
            tokens = torch.cat([*prefix, tokens], dim=1)
        elif self.pos_embed_prefix:
            tokens = torch.cat([*prefix, tokens], dim=1) + self._pos_embed_for(grid)
        else:
            tokens = torch.cat([*prefix, tokens + self._pos_embed_for(grid)], dim=1)
        return self.pos_drop(tokens), grid

    @staticmethod
    def keep_tokens(tokens: torch.Tensor, ids_keep: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        """Gather visible patch tokens, keeping every prefix token.

        Args:
            tokens: ``[B, P + L, D]``.
            ids_keep: ``[B, L_vis]`` indices into the L patch tokens.
            num_prefix_tokens: P.

        Returns:
            ``[B, P + L_vis, D]``.
        """
        prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
        idx = ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        return torch.cat([prefix, torch.gather(patches, 1, idx)], dim=1)

    # ------------------------------------------------------------------ forward
    def _run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        keep: torch.Tensor | None = None,
        norm: bool = False,
        output_fmt: Literal["NLC", "spatial"] = "NLC",
        return_prefix_tokens: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> Any:
        """Run the blocks and collect the outputs of selected blocks (timm index semantics).

        Args:
            x: images/volumes ``[B, C, *spatial]``, or already embedded tokens ``[B, P + L, D]``.
            indices: ``None`` = all blocks, int n = last n, sequence = 0-based (negative from the end).
            keep: ``ids_keep [B, L_vis]``: encode only these patch tokens (MAE masking); prefix tokens are
                always kept. Not allowed with ``output_fmt="spatial"``.
            norm: apply the final norm to the intermediates.
            output_fmt: ``NLC`` patch tokens ``[B, L, D]`` or ``spatial`` maps ``[B, D, *grid]``.
            return_prefix_tokens: return ``(patch_part, prefix [B, P, D])`` tuples as intermediates.
            stop_early: stop after the last requested block (then ``final`` is that block's output normed).
            intermediates_only: return only the list.

        Returns:
            ``(final [B, P + L(_vis), D] normed, [intermediate, ...])``, or the list alone.
        """
        if output_fmt not in ("NLC", "spatial"):
            raise ValueError(f"output_fmt must be 'NLC' or 'spatial', got {output_fmt!r}")
        if keep is not None and output_fmt == "spatial":
            raise ValueError("output_fmt='spatial' needs every patch token; it cannot be combined with keep=")
        taken, max_index = take_indices(len(self.blocks), indices)
        if x.ndim == 3:
            tokens, grid = x, self.patch_embed.grid_size
        else:
            tokens, grid = self.embed(x)
        if keep is not None:
            tokens = self.keep_tokens(tokens, keep, self.num_prefix_tokens)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        p = self.num_prefix_tokens
        intermediates: list[Any] = []
        for i, blk in enumerate(blocks):
            tokens = self._run_block(blk, tokens)
            if i in taken:
                out = self.norm(tokens) if norm else tokens
                patches, prefix = out[:, p:], out[:, :p]
                if output_fmt == "spatial":
                    patches = tokens_to_spatial(patches, grid)
                intermediates.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self.norm(tokens), intermediates

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """All blocks + final norm. ``[B, C, *spatial] -> [B, P + L, D]`` (``L_vis`` with ``keep``)."""
        tokens, _ = self.embed(x)
        if keep is not None:
            tokens = self.keep_tokens(tokens, keep, self.num_prefix_tokens)
        for blk in self.blocks:
            tokens = self._run_block(blk, tokens)
        return self.norm(tokens)

    def forward_features_carry(
        self, x: torch.Tensor, carry_patches: torch.Tensor, carry_prefix: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_features` that also propagates per-token values through every block (TL-Align).

        Each block mixes the values with its own head-averaged attention inside the same attention call
        (``Block.forward_carry``); 2D and 3D token grids alike.

        Args:
            x: images/volumes ``[B, C, *spatial]``.
            carry_patches: initial values of the patch tokens ``[B, L, K]`` (row-major over the grid, like the
                tokens).
            carry_prefix: initial value of every prefix token ``[B, K]``.

        Returns:
            ``(tokens [B, P + L, D] after the final norm, carry [B, P + L, K] float32)``.

        Raises:
            TypeError: A block without ``forward_carry`` (a custom ``block_fn``).
        """
        tokens, _ = self.embed(x)
        p = self.num_prefix_tokens
        if carry_patches.shape[1] != tokens.shape[1] - p:
            raise ValueError(f"carry has {carry_patches.shape[1]} patch tokens, the input gives {tokens.shape[1] - p}")
        carry = torch.cat([carry_prefix[:, None].expand(-1, p, -1), carry_patches], dim=1).float()
        for blk in self.blocks:
            fn = getattr(blk, "forward_carry", None)
            if fn is None:
                raise TypeError(f"{type(blk).__name__} has no forward_carry(): token labels cannot be propagated")
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens, carry = torch.utils.checkpoint.checkpoint(fn, tokens, carry, use_reentrant=False)
            else:
                tokens, carry = fn(tokens, carry)
        return self.norm(tokens), carry

    def forward_features_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward_features` with explicit attention, returning each block's head-averaged weights.

        Args:
            x: images/volumes ``[B, C, *spatial]``.

        Returns:
            ``(tokens [B, P + L, D] after the final norm, [weights [B, P + L, P + L] per block])``.
        """
        tokens, _ = self.embed(x)
        maps = []
        for blk in self.blocks:
            tokens, w = blk.forward_with_attention(tokens)
            maps.append(w)
        return self.norm(tokens), maps

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, P + L, D] -> [B, D]`` (token / avg) or unchanged (none)."""
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        if self.global_pool == "token":
            return x[:, 0]
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling, fc_norm, dropout and head. ``[B, P + L, D] -> [B, num_classes]`` (or features)."""
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ description
    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, grid={self.patch_embed.grid_size}, "
            f"prefix={self.prefix_token_names()}, pos_embed={self.pos_embed_type}"
        )


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
