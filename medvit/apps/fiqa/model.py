"""ViT-FIQA on the shared face ViT: embedding head, quality head, token masking, weights in and out.

The network (Atzori, Boutros, Damer, "ViT-FIQA: Assessing Face Image Quality using Vision Transformers",
ICCV 2025 Workshops, arXiv 2508.13957; official code ``backbones/vit_qs.py``) is an insightface
arcface_torch-style ViT on 112x112 aligned faces (patch 9 -> 12x12 = 144 patch tokens) with one learnable
quality token at position 0 that has its own learned position embedding. Two heads read the final tokens:

* embedding head ``feature``: flatten the 144 patch tokens (144 x D) -> Linear(no bias) -> BN1d(eps 2e-5) ->
  Linear(no bias) -> BN1d(eps 2e-5): the D-dimensional (512 for ViT-S) face embedding, trained with a margin
  softmax;
* quality head ``head_qs``: BN1d(eps 2e-5) -> Linear(D -> 1, no bias) on the output quality token: an
  unbounded scalar, higher = better, regressed onto the certainty ratio (see ``losses.py``).

Head modes of the reference: ``token`` (above, the paper's model), ``full`` (embedding head over all 145
tokens, quality head on the embedding) and ``crfiqa`` (no quality token; quality head on the embedding, i.e.
CR-FIQA on a ViT).

Token masking (arcface_torch): in training a random 10 % of the tokens is dropped before the encoder and a
learned ``mask_token`` is put back at the dropped positions after the final norm, so the flattened embedding
head always sees 144 slots. **Deviation (deliberate):** the reference masks the quality token like any other
token, so in about 10 % of the samples the quality head reads ``mask_token`` instead of the quality token;
here only patch tokens are masked and the quality token is always encoded (the shared backbone keeps prefix
tokens when given ``keep=``).

Other deviations, stated: LayerNorm eps 1e-5 (PyTorch's default, as the reference) rather than the shared
backbone's 1e-6; weights initialised by the shared backbone's MAE scheme, not trunc-normal.

Input: RGB (never OpenCV's BGR), 112x112, normalised ``(x / 255 - 0.5) / 0.5`` (reference
``evaluation/QualityModel.py``); :func:`preprocess_faces` does it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.errors import WeightsError
from medvit.shared.schema import SidecarSchema, read_json_sidecar, validate_sidecar

logger = logging.getLogger(__name__)

__all__ = [
    "FIQA_FORMAT",
    "HeadMode",
    "ViTFIQA",
    "build_fiqa_model",
    "checkpoint_config",
    "convert_official_state_dict",
    "load_fiqa",
    "load_state_into",
    "model_from_official",
    "preprocess_faces",
    "read_foreign_checkpoint",
    "read_foreign_state_dict",
    "resolve_num_heads",
    "save_fiqa",
]

HeadMode = Literal["token", "full", "crfiqa"]
FIQA_FORMAT = "medvit-fiqa"
FIQA_FORMAT_VERSION = 1
BN_EPS = 2e-5  # arcface_torch / ViT-FIQA heads
LN_EPS = 1e-5  # nn.LayerNorm default, used by the reference ViT
INPUT_SIZE = 112
# The published face ViTs (patch 9 on 112 px) by (width, depth, patch); every one has 8 attention heads:
# insightface recognition/arcface_torch/backbones/__init__.py (vit_t, vit_s, vit_b, vit_l and their WebFace42M
# variants) and ViT-FIQA's backbones/__init__.py (vit_s_qs, vit_b_qs).
_PUBLISHED_FACE_VITS: dict[tuple[int, int, int], str] = {
    (256, 12, 9): "arcface_torch vit_t",
    (512, 12, 9): "arcface_torch vit_s / ViT-FIQA vit_s_qs",
    (512, 24, 9): "arcface_torch vit_b / ViT-FIQA vit_b_qs",
    (768, 24, 9): "arcface_torch vit_l",
}
_PUBLISHED_HEADS = 8


def preprocess_faces(crops: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """Aligned RGB uint8 crops -> normalised float input.

    Args:
        crops: ``[B, H, W, 3]`` uint8 (numpy or tensor, RGB), a list of ``[H, W, 3]`` arrays, or an already
            channel-first ``[B, 3, H, W]`` uint8 tensor.

    Returns:
        ``[B, 3, H, W]`` float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5``.
    """
    if isinstance(crops, (list, tuple)):
        crops = np.stack([np.asarray(c) for c in crops])
    x = torch.as_tensor(crops)
    if x.ndim != 4:
        raise ValueError(f"expected a batch [B, H, W, 3] or [B, 3, H, W], got shape {tuple(x.shape)}")
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return (x.float() / 255.0 - 0.5) / 0.5


class ViTFIQA(nn.Module):
    """Face ViT + embedding head + quality head (ViT-FIQA).

    Args:
        backbone: the shared ViT with ``global_pool="none"``; for ``token``/``full`` exactly one prefix token
            named ``quality`` (``extra_tokens=("quality",)``), for ``crfiqa`` no prefix token.
        head: ``token``, ``full`` or ``crfiqa`` (see the module docstring).
        mask_ratio: fraction of patch tokens dropped in training (0 disables masking and ``mask_token``).

    Attributes:
        backbone: the encoder (``backbone.quality_token`` is the quality token).
        feature: embedding head.
        head_qs: quality head.
        mask_token: ``[1, 1, D]`` filler for dropped tokens, or None.
    """

    def __init__(self, backbone: VisionTransformer, *, head: HeadMode = "token", mask_ratio: float = 0.1) -> None:
        super().__init__()
        if head not in ("token", "full", "crfiqa"):
            raise ValueError(f"head must be token, full or crfiqa, got {head!r}")
        if backbone.spatial_dims != 2 or backbone.global_pool != "none":
            raise ValueError("ViTFIQA needs a 2D backbone with global_pool='none' (e.g. vit_fiqa_small_patch9_112)")
        names = backbone.prefix_token_names()
        if head == "crfiqa" and names:
            raise ValueError(f"head='crfiqa' needs a backbone without prefix tokens, got {names}")
        if head != "crfiqa" and names != ["quality"]:
            raise ValueError(f"head={head!r} needs exactly one prefix token named 'quality', got {names}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.backbone = backbone
        self.head = head
        self.mask_ratio = float(mask_ratio)
        d = backbone.embed_dim
        self.num_patches = backbone.patch_embed.num_patches
        self.num_prefix = backbone.num_prefix_tokens
        n_in = d * (self.num_patches + (1 if head == "full" else 0))
        self.embed_dim = d
        self.feature = nn.Sequential(
            nn.Linear(n_in, d, bias=False),
            nn.BatchNorm1d(d, eps=BN_EPS),
            nn.Linear(d, d, bias=False),
            nn.BatchNorm1d(d, eps=BN_EPS),
        )
        self.head_qs = nn.Sequential(nn.BatchNorm1d(d, eps=BN_EPS), nn.Linear(d, 1, bias=False))
        if self.mask_ratio > 0:
            self.mask_token: nn.Parameter | None = nn.Parameter(torch.zeros(1, 1, d))
            nn.init.normal_(self.mask_token, std=0.02)
        else:
            self.mask_token = None
        for m in (*self.feature, *self.head_qs):
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)  # reference _init_weights

    @property
    def embedding_dim(self) -> int:
        return self.embed_dim

    def random_keep(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample random subset of patch tokens to encode (MAE ``random_masking`` order trick).

        Returns:
            ``ids_keep [B, L_keep]`` and ``ids_restore [B, L]`` (position of each token in ``[kept, dropped]``).
        """
        n = self.num_patches
        keep = int(n * (1 - self.mask_ratio))
        noise = torch.rand(batch, n, device=device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        return ids_shuffle[:, :keep], ids_restore

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output with every slot filled.

        Args:
            x: normalised faces ``[B, 3, 112, 112]``.

        Returns:
            ``[B, P + 144, D]`` after the final norm (P = 1 quality token, 0 for ``crfiqa``); in training the
            dropped patch positions hold ``mask_token``; the quality token is never dropped.
        """
        if not (self.training and self.mask_token is not None):
            return self.backbone.forward_features(x)
        b = x.shape[0]
        ids_keep, ids_restore = self.random_keep(b, x.device)
        tokens = self.backbone.forward_features(x, keep=ids_keep)  # [B, P + L_keep, D]
        prefix, kept = tokens[:, : self.num_prefix], tokens[:, self.num_prefix :]
        d = kept.shape[-1]
        fill = self.mask_token.to(kept.dtype).expand(b, self.num_patches - kept.shape[1], d)
        patches = torch.gather(torch.cat([kept, fill], dim=1), 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        return torch.cat([prefix, patches], dim=1)

    def forward_heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads on encoder tokens ``[B, P + L, D]`` -> (embedding ``[B, D]``, quality ``[B]``)."""
        b = tokens.shape[0]
        tokens = tokens.float()  # the reference runs the heads in fp32 (``self.norm(x.float())``)
        if self.head == "token":
            emb = self.feature(tokens[:, 1:].reshape(b, -1))
            quality = self.head_qs(tokens[:, 0])
        else:  # full: all 145 tokens; crfiqa: the 144 patch tokens; quality from the embedding in both
            emb = self.feature(tokens.reshape(b, -1))
            quality = self.head_qs(emb)
        return emb, quality.squeeze(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x normalised RGB faces ``[B, 3, 112, 112]``. Returns (embedding ``[B, D]``, quality ``[B]``)."""
        return self.forward_heads(self.forward_tokens(x))

    def describe(self) -> dict[str, Any]:
        """JSON-able description written into weight sidecars."""
        return {
            "head": self.head,
            "mask_ratio": self.mask_ratio,
            "embedding_dim": self.embed_dim,
            "backbone_kwargs": self.backbone.arch_kwargs,
            "input": {"size": INPUT_SIZE, "color": "RGB", "mean": 0.5, "std": 0.5, "scale": 255},
        }


def build_fiqa_model(
    backbone: str = "vit_fiqa_small_patch9_112",
    *,
    head: HeadMode = "token",
    mask_ratio: float = 0.1,
    **overrides: Any,
) -> ViTFIQA:
    """Build ViT-FIQA on a registered backbone.

    Args:
        backbone: registry name (``vit_fiqa_small_patch9_112``: the paper's ViT-S setting,
            ``vit_fiqa_base_patch9_112``: depth 24, ``test_vit_fiqa``: tiny).
        head: ``token``, ``full`` or ``crfiqa``.
        mask_ratio: training token-masking ratio.
        **overrides: backbone kwargs (``drop_path_rate``, ``depth``...).

    Returns:
        The model (train mode).
    """
    from medvit.shared.backbone.registry import create_backbone

    kw: dict[str, Any] = {"norm_eps": LN_EPS, **overrides}
    if head == "crfiqa":
        kw["extra_tokens"] = ()
    return ViTFIQA(create_backbone(backbone, **kw), head=head, mask_ratio=mask_ratio)


def _from_description(desc: Mapping[str, Any], source: str = "the FIQA model description") -> ViTFIQA:
    """The model a sidecar (or a converted checkpoint) describes; the backbone is checked before it is built."""
    from medvit.shared.backbone.weights import build_vit

    vit = build_vit(desc["backbone_kwargs"], source=source)
    return ViTFIQA(vit, head=desc.get("head", "token"), mask_ratio=float(desc.get("mask_ratio", 0.0)))


def fiqa_sidecar_schema() -> SidecarSchema:
    """What a FIQA model's sidecar must hold (the backbone kwargs, within bounds; head and mask ratio)."""
    from medvit.shared.schema import one_of, real_in

    return SidecarSchema(
        format=FIQA_FORMAT,
        max_version=FIQA_FORMAT_VERSION,
        arch_key="backbone_kwargs",
        optional_fields={
            "head": one_of("token", "full", "crfiqa"),
            "mask_ratio": real_in(0.0, 1.0, hi_open=True),
        },
    )


# ============================================================================= our format
def save_fiqa(model: ViTFIQA, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the whole model (encoder + heads + BN statistics) as safetensors + a JSON sidecar, atomically.

    Args:
        model: the model (a DDP/compile wrapper is unwrapped).
        path: ``.safetensors`` target; ``path.json`` (same stem) is the sidecar.
        metadata: extra sidecar fields (training data, steps, source checkpoint...).

    Returns:
        The weight file path.
    """
    from medvit.shared.backbone.weights import save_model_file, unwrap_model

    model = unwrap_model(model)  # type: ignore[assignment]
    side = {"architecture": "ViTFIQA", **model.describe(), **dict(metadata or {})}
    return save_model_file(path, model.state_dict(), side, format=FIQA_FORMAT, format_version=FIQA_FORMAT_VERSION)


def load_fiqa(path: str | os.PathLike[str]) -> tuple[ViTFIQA, dict[str, Any]]:
    """Rebuild a model written by :func:`save_fiqa` (eval mode, CPU).

    Raises:
        WeightsError: missing/corrupt file or sidecar, or weights that do not fit the described model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    side_path = path.with_suffix(".json")
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    if not side_path.is_file():
        raise WeightsError(f"{path}: no sidecar {side_path.name} (needed to rebuild the model)")
    side = read_json_sidecar(side_path)
    if side.get("format") != FIQA_FORMAT:
        raise WeightsError(
            f"{path}: not a FIQA model file (sidecar format {side.get('format')!r}, expected {FIQA_FORMAT!r})"
        )
    validate_sidecar(side, side_path, fiqa_sidecar_schema())
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: corrupt safetensors file ({err})") from None
    model = _from_description(side, source=str(side_path))
    load_state_into(model, sd, source=str(path))
    return model.eval(), side


# ============================================================================= foreign checkpoints
def read_foreign_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a torch pickle or safetensors file into a flat state dict (``module.`` prefixes removed).

    :func:`medvit.shared.backbone.weights.read_checkpoint` does the reading: it understands arcface_torch's
    ``state_dict_backbone`` wrapper and the usual ones, and reads pickles with ``torch.load(weights_only=True)``.
    """
    from medvit.shared.backbone.weights import read_checkpoint

    return read_checkpoint(path)[0]


def checkpoint_config(path: str | os.PathLike[str], info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Architecture settings that travel with a foreign checkpoint (where its head count can be read).

    Two places, the second winning: a ``config`` / ``cfg`` / ``args`` entry saved inside the checkpoint (``info``
    of :func:`~medvit.shared.backbone.weights.read_checkpoint`), and a JSON file beside it with the same stem
    (``model.pt`` -> ``model.json``), e.g. ``{"num_heads": 12}``.

    Raises:
        WeightsError: the JSON file beside the checkpoint is not valid JSON (or not an object).
    """
    config: dict[str, Any] = dict((info or {}).get("config") or {})
    side = Path(path).with_suffix(".json")
    if side.is_file() and Path(path).suffix != ".json":
        try:
            extra = json.loads(side.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise WeightsError(f"{side}: not valid JSON ({err}); it is read as the checkpoint's config") from None
        if not isinstance(extra, dict):
            raise WeightsError(f'{side}: expected a JSON object such as {{"num_heads": 8}}')
        config.update(extra)
    return config


def read_foreign_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`read_foreign_state_dict` plus :func:`checkpoint_config` of the same file, in one read."""
    from medvit.shared.backbone.weights import read_checkpoint

    sd, info = read_checkpoint(path)
    return sd, checkpoint_config(path, info)


def _config_heads(config: Mapping[str, Any]) -> int | None:
    """``num_heads`` at the top of a config or inside its ``backbone_kwargs`` / ``kwargs`` / ``model`` entry."""
    for scope in (config, *(config.get(k) for k in ("backbone_kwargs", "kwargs", "model"))):
        if isinstance(scope, Mapping) and scope.get("num_heads") is not None:
            value = scope["num_heads"]
            if isinstance(value, bool) or not isinstance(value, int):
                raise WeightsError(f"the checkpoint's config has num_heads={value!r}; expected an integer")
            return value
    return None


def resolve_num_heads(
    embed_dim: int,
    depth: int,
    patch: int,
    *,
    num_heads: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> tuple[int, str]:
    """The attention head count of a foreign face ViT, and where it came from.

    A state dict does not record it, and a wrong count loads without any error (the qkv weights fit every split of
    the width) but gives wrong embeddings and quality scores. So, in this order: ``num_heads`` given by the caller;
    ``num_heads`` in the checkpoint's config (:func:`checkpoint_config`); 8 when width, depth and patch are those of
    a published arcface_torch / ViT-FIQA architecture (all of which use 8), logged as an assumption; otherwise the
    checkpoint is refused.

    Args:
        embed_dim: width D.
        depth: blocks.
        patch: patch side.
        num_heads: the caller's value (``--set num_heads=N``, ``medvit fiqa convert --num-heads N``), or None.
        config: settings carried by the checkpoint, or None.

    Returns:
        ``(heads, source)``; ``source`` is ``"given"``, ``"checkpoint config"`` or ``"assumed: ..."``.

    Raises:
        WeightsError: the count cannot be known, or it does not divide the width.
    """
    from_config = _config_heads(config or {})
    if num_heads is not None:
        heads, source = int(num_heads), "given"
        if from_config is not None and from_config != heads:
            logger.warning("num_heads %d given; the checkpoint's config says %d: using %d", heads, from_config, heads)
    elif from_config is not None:
        heads, source = from_config, "checkpoint config"
    elif (embed_dim, depth, patch) in _PUBLISHED_FACE_VITS:
        heads = _PUBLISHED_HEADS
        source = f"assumed: {_PUBLISHED_FACE_VITS[(embed_dim, depth, patch)]} has {heads}"
        logger.warning(
            "the checkpoint does not record its attention head count; width %d, depth %d, patch %d is %s, which has "
            "%d heads: using %d. If it was trained with another count, give it (--set num_heads=N / --num-heads N): "
            "a wrong count gives wrong embeddings and quality scores without any error",
            embed_dim,
            depth,
            patch,
            _PUBLISHED_FACE_VITS[(embed_dim, depth, patch)],
            heads,
            heads,
        )
    else:
        raise WeightsError(
            f"cannot tell the attention head count of this face ViT (width {embed_dim}, depth {depth}, patch "
            f"{patch}): weights do not record it and no published arcface_torch / ViT-FIQA architecture has this "
            "shape. Give it: `medvit weights convert FILE --set num_heads=N`, `medvit fiqa convert FILE --num-heads "
            'N`, or a JSON file beside the checkpoint with the same stem holding {"num_heads": N}'
        )
    if heads < 1 or embed_dim % heads:
        raise WeightsError(f"num_heads {heads} ({source}) does not divide the width {embed_dim}")
    return heads, source


_BACKBONE_PREFIXES = ("patch_embed.", "blocks.", "norm.")


def convert_official_state_dict(
    sd: Mapping[str, torch.Tensor], *, num_heads: int | None = None, config: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rename an official ViT-FIQA (``backbones/vit_qs.py``) or arcface_torch ViT state dict to ours.

    Key map: ``qs_token`` -> ``backbone.quality_token``; ``pos_embed``, ``patch_embed.*``, ``blocks.N.*``
    (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), ``norm.*`` -> ``backbone.*``;
    ``feature.*``, ``head_qs.*``, ``mask_token`` unchanged. The head mode follows from the keys: ``qs_token``
    with ``feature.0`` over 144 x D inputs -> ``token``, over 145 x D -> ``full``; no ``qs_token`` ->
    ``crfiqa`` (an arcface_torch recognition ViT is this layout without ``head_qs``).

    Args:
        sd: the foreign state dict (``module.`` prefixes already removed).
        num_heads: attention heads (weights do not record them; see :func:`resolve_num_heads`).
        config: settings carried by the checkpoint (:func:`checkpoint_config`), searched for ``num_heads``.

    Returns:
        (our state dict, a model description for :func:`build_from_description`-style rebuilding with keys
        ``head``, ``mask_ratio``, ``backbone_kwargs``, ``has_quality_head``, ``num_heads_source``).

    Raises:
        WeightsError: not this layout, the BatchNorm-ViT variant, keys we have no place for, or a head count that
            cannot be known (:func:`resolve_num_heads`).
    """
    keys = set(sd)
    if "patch_embed.proj.weight" not in keys or "feature.0.weight" not in keys:
        raise WeightsError(
            "not a ViT-FIQA / arcface_torch ViT checkpoint (needs patch_embed.proj.weight and feature.0.weight); "
            f"first keys: {sorted(keys)[:6]}"
        )
    if any(re.match(r"blocks\.\d+\.norm1\.bn\.", k) for k in keys):
        raise WeightsError("the BatchNorm ViT variant (norm_layer='bn') is not supported; only norm_layer='ln'")
    out = _renamed_official_keys(sd)
    w = sd["patch_embed.proj.weight"]
    d, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = 1 + max((int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth < 1:
        raise WeightsError("the checkpoint has no transformer blocks")
    has_q = "qs_token" in keys
    head = _official_head_mode(int(sd["feature.0.weight"].shape[1]), d, patch, has_quality_token=has_q)
    heads, heads_source = resolve_num_heads(d, depth, patch, num_heads=num_heads, config=config)
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    backbone_kwargs = {
        "img_size": INPUT_SIZE,
        "patch_size": patch,
        "in_chans": in_chans,
        "embed_dim": d,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": float(fc1.shape[0]) / d if fc1 is not None else 4.0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in keys,
        "act": "relu6",
        "norm_eps": LN_EPS,
        "class_token": False,
        "extra_tokens": ["quality"] if has_q else [],
        "pos_embed": "learn",
        "global_pool": "none",
        "patch_bias": "patch_embed.proj.bias" in keys,
    }
    desc = {
        "head": head,
        "mask_ratio": 0.1 if "mask_token" in keys else 0.0,
        "backbone_kwargs": backbone_kwargs,
        "has_quality_head": "head_qs.1.weight" in keys,
        "num_heads_source": heads_source,
    }
    return out, desc


def _renamed_official_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key map of :func:`convert_official_state_dict`; a key it has no place for is refused."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for k, v in sd.items():
        if k == "qs_token":
            out["backbone.quality_token"] = v
        elif k == "pos_embed" or k.startswith(_BACKBONE_PREFIXES):
            out[f"backbone.{k}"] = v
        elif k.startswith(("feature.", "head_qs.")) or k == "mask_token":
            out[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise WeightsError(f"unexpected key(s) in the ViT-FIQA checkpoint: {', '.join(sorted(unknown)[:8])}")
    return out


def _official_head_mode(n_feat: int, d: int, patch: int, *, has_quality_token: bool) -> HeadMode:
    """The head mode from the inputs of ``feature.0`` (144 x D: token, 145 x D: full; no quality token: crfiqa)."""
    n_patches = (INPUT_SIZE // patch) ** 2
    head: HeadMode = ("full" if n_feat == d * (n_patches + 1) else "token") if has_quality_token else "crfiqa"
    expected_feat = d * (n_patches + (1 if head == "full" else 0))
    if n_feat != expected_feat:
        raise WeightsError(
            f"feature.0.weight takes {n_feat} inputs; a {patch}-px-patch ViT of width {d} on 112 px needs "
            f"{expected_feat}"
        )
    return head


def load_state_into(
    model: ViTFIQA,
    sd: Mapping[str, torch.Tensor],
    *,
    expected_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
    source: str = "checkpoint",
) -> dict[str, list[str]]:
    """Strict load with declared exceptions (MAE ``main_finetune.py`` idiom): anything else is an error.

    Args:
        model: target.
        sd: state dict in our key names.
        expected_missing: glob patterns of model keys the source may lack.
        allow_unexpected: glob patterns of source keys that may be ignored.
        source: name used in error messages.

    Returns:
        ``{"missing": [...], "unexpected": [...]}``.

    Raises:
        WeightsError: undeclared missing/unexpected keys or a shape mismatch (naming the key and both shapes).
    """
    from medvit.shared.backbone.weights import load_strict

    missing, unexpected = load_strict(
        model,
        sd,
        what=f"{source} (FIQA model)",
        expected_missing=expected_missing,
        allow_unexpected=allow_unexpected,
    )
    return {"missing": missing, "unexpected": unexpected}


def model_from_official(
    sd: Mapping[str, torch.Tensor],
    *,
    require_quality_head: bool = True,
    num_heads: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> ViTFIQA:
    """Build our model from an official ViT-FIQA / arcface_torch ViT state dict and load it (eval mode).

    Args:
        sd: foreign state dict.
        require_quality_head: refuse recognition-only checkpoints (no ``head_qs``), which cannot score quality.
        num_heads: attention heads, if known (see :func:`resolve_num_heads`).
        config: settings carried by the checkpoint (:func:`checkpoint_config`).

    Returns:
        The model; ``model.num_heads_source`` says where its head count came from.

    Raises:
        WeightsError: see :func:`convert_official_state_dict`, or no quality head when one is required.
    """
    ours, desc = convert_official_state_dict(sd, num_heads=num_heads, config=config)
    if require_quality_head and not desc["has_quality_head"]:
        raise WeightsError(
            "this is a face-recognition ViT without a quality head (no head_qs.*); it cannot score quality. "
            "Use it as a starting point: medvit fiqa train DATA --set model.init=FILE"
        )
    model = _from_description(desc)
    load_state_into(model, ours, expected_missing=["head_qs.*"], source="ViT-FIQA checkpoint")
    model.num_heads_source = desc["num_heads_source"]  # type: ignore[assignment]
    return model.eval()
