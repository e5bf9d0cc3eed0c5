"""Building blocks of the shared ViT: N-d patch embedding, attention, MLP, transformer block.

Parameter names follow timm (``patch_embed.proj``, ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``,
``norm1``, ``norm2``, ``ls1.gamma``) so timm / MAE / Hi-End-MAE weights load with small converters.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu6": nn.ReLU6,  # ViT-FIQA / insightface arcface_torch ViT
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def init_mae_weights(module: nn.Module) -> None:
    """MAE ``_init_weights`` over every submodule: xavier-uniform Linear with zero bias, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def make_activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens; Conv2d or Conv3d chosen by ``len(patch_size)``.

    Like a strided convolution, a border that does not fill a whole patch is dropped (ViT-FIQA's 112 px
    input with patch 9 gives a 12x12 grid).

    Args:
        img_size: default input size per spatial axis.
        patch_size: patch size per spatial axis (2 entries: 2D, 3 entries: 3D).
        in_chans: input channels C.
        embed_dim: D.
        bias: conv bias.
    """

    def __init__(
        self, img_size: Sequence[int], patch_size: Sequence[int], in_chans: int, embed_dim: int, bias: bool = True
    ) -> None:
        super().__init__()
        if len(img_size) != len(patch_size) or len(patch_size) not in (2, 3):
            raise ValueError(f"img_size {tuple(img_size)} and patch_size {tuple(patch_size)} must both be 2D or 3D")
        self.img_size = tuple(int(s) for s in img_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size, strict=True))
        if min(self.grid_size) < 1:
            raise ValueError(f"img_size {self.img_size} is smaller than one patch {self.patch_size}")
        self.num_patches = math.prod(self.grid_size)
        conv = nn.Conv2d if len(patch_size) == 2 else nn.Conv3d
        self.proj = conv(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    def grid_for(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Token grid for an input of the given spatial shape (floor division, like the conv)."""
        grid = tuple(int(s) // p for s, p in zip(spatial_shape, self.patch_size, strict=True))
        if min(grid) < 1:
            raise ValueError(f"input of spatial shape {tuple(spatial_shape)} is smaller than a patch {self.patch_size}")
        return grid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Args: x ``[B, C, *spatial]``. Returns tokens ``[B, L, D]`` and the grid."""
        if x.ndim != 2 + self.spatial_dims:
            raise ValueError(
                f"expected a {self.spatial_dims}D input [B, C, {', '.join('S' * self.spatial_dims)}], "
                f"got shape {tuple(x.shape)}"
            )
        x = self.proj(x)
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid


class MultiHeadAttention(nn.Module, metaclass=abc.ABCMeta):
    """What self- and cross-attention share: the head split, ``F.scaled_dot_product_attention`` and the output
    projection ``proj``.

    Subclasses create their input projections in :meth:`_init_inputs` (called before ``proj``, so the parameter
    order is inputs first, as in timm) and call :meth:`_attend` from ``forward``.

    Args:
        dim: token width D (a multiple of ``num_heads``).
        num_heads: heads H.
        qkv_bias: bias on the input projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self._init_inputs(dim, qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @abc.abstractmethod
    def _init_inputs(self, dim: int, qkv_bias: bool) -> None:
        """Create the input projections (``qkv`` for self-attention, ``q`` + ``kv`` for cross-attention)."""

    def _split_heads(self, x: torch.Tensor, parts: int) -> torch.Tensor:
        """``[B, N, parts * D] -> [parts, B, H, N, hd]``."""
        b, n, _ = x.shape
        return x.reshape(b, n, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q [B, H, N, hd]``, ``k, v [B, H, M, hd]`` -> ``[B, N, D]`` (heads merged, projected)."""
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        b, h, n, hd = x.shape
        x = x.transpose(1, 2).reshape(b, n, h * hd)
        return self.proj_drop(self.proj(x))


class Attention(MultiHeadAttention):
    """Multi-head self-attention: one ``qkv`` projection (timm's key names).

    Besides ``forward``, two variants serve token-level bookkeeping without a second pass over the block:
    :meth:`forward_carry` mixes per-token values (TL-Align token labels) with the head-averaged attention inside the
    same fused attention call, and :meth:`forward_with_weights` returns the head-averaged attention matrix
    (attention rollout).
    """

    def _init_inputs(self, dim: int, qkv_bias: bool) -> None:
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, D] -> [B, N, D]``."""
        q, k, v = self._split_heads(self.qkv(x), 3).unbind(0)  # each [B, H, N, hd]
        return self._attend(q, k, v)

    def forward_carry(self, x: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention output plus ``A_mean @ carry``, with ``A_mean`` the attention weights averaged over heads.

        The carried values ride along as extra value channels of every head in the one
        ``scaled_dot_product_attention`` call (``softmax(q k^T / sqrt(hd)) @ [v, carry]``), so the attention matrix
        is never materialised and the output equals :meth:`forward`'s. The extra channels are zero-padded to a
        multiple of 8, and ``q`` and ``k`` are zero-padded to the same width (the same logits with the explicit
        scale ``hd ** -0.5``), so that the fused kernels that need equal head widths stay eligible (flash attention
        on CPU and CUDA; on CPU a wider ``v`` alone falls back to a slower path). Attention dropout, when on, drops
        the same weights for both.

        Args:
            x: tokens ``[B, N, D]``.
            carry: per-token values ``[B, N, K]`` (e.g. token labels); no gradient flows through them.

        Returns:
            ``(out [B, N, D], mixed [B, N, K])`` with ``mixed[b] = mean_h(A[b, h]) @ carry[b]`` (float32).
        """
        q, k, v = self._split_heads(self.qkv(x), 3).unbind(0)
        b, h, n, hd = v.shape
        kc = carry.shape[-1]
        width = hd + kc + (-(hd + kc)) % 8
        extra = carry.detach().to(v.dtype)[:, None].expand(b, h, n, kc)
        v = torch.cat([v, extra, v.new_zeros(b, h, n, width - hd - kc)], dim=-1)
        q, k = F.pad(q, (0, width - hd)), F.pad(k, (0, width - hd))
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=hd**-0.5)
        mixed = o[..., hd : hd + kc].detach().float().mean(1)
        o = o[..., :hd].transpose(1, 2).reshape(b, n, h * hd)
        return self.proj_drop(self.proj(o)), mixed

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention computed explicitly (no fused kernel), returning the head-averaged weights.

        Args:
            x: tokens ``[B, N, D]``.

        Returns:
            ``(out [B, N, D], weights [B, N, N])``: rows of ``weights`` sum to 1 (before dropout).
        """
        q, k, v = self._split_heads(self.qkv(x), 3).unbind(0)
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        attn = attn.float().softmax(dim=-1).to(v.dtype)
        weights = attn.mean(1)
        if self.training and self.attn_drop > 0:
            attn = F.dropout(attn, p=self.attn_drop)
        b, h, n, hd = v.shape
        out = (attn @ v).transpose(1, 2).reshape(b, n, h * hd)
        return self.proj_drop(self.proj(out)), weights


class Mlp(nn.Module):
    """``fc1 -> act -> drop -> fc2 -> drop`` (timm key names)."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = make_activation(act)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """Per-channel residual scaling (CaiT / DINOv2); key ``gamma`` as in timm."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        act: str = "gelu",
        norm_eps: float = 1e-6,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        init_values: float | None = None,
        mlp_layer: type[nn.Module] = Mlp,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio), act=act, drop=drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward_carry(self, x: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block, and per-token values propagated TL-Align style (Xiao et al., ICCV 2023).

        The values follow the attention's residual path: ``carry + A_mean @ carry`` (``A_mean`` = this block's
        attention weights averaged over heads, taken from the same attention call, see
        :meth:`Attention.forward_carry`), renormalised so that each token's values sum to 1; the MLP leaves them
        unchanged. Drop path and LayerScale act on features only.

        Args:
            x: tokens ``[B, N, D]``.
            carry: ``[B, N, K]`` non-negative values summing to 1 over ``K`` (token labels).

        Returns:
            ``(x [B, N, D], carry [B, N, K] float32)``.
        """
        a, mixed = self.attn.forward_carry(self.norm1(x), carry)
        x = x + self.drop_path1(self.ls1(a))
        carry = carry.float() + mixed
        carry = carry / carry.sum(-1, keepdim=True).clamp_min(1e-12)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), carry

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block, also returning its head-averaged attention weights ``[B, N, N]`` (explicit attention)."""
        a, weights = self.attn.forward_with_weights(self.norm1(x))
        x = x + self.drop_path1(self.ls1(a))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), weights
