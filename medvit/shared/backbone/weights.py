"""Backbone weights: our safetensors + JSON sidecar format, and importers for foreign checkpoints.

Foreign formats are recognised by key signature (timm's ``checkpoint_filter_fn`` idiom) and converted by
small rename tables:

* ``timm``       timm ViT state dicts (identity).
* ``mae``        facebookresearch/mae ``{'model': ...}``; decoder keys and ``mask_token`` are dropped.
* ``hi-end-mae`` FengheTan9/Hi-End-MAE ``{'state_dict': ...}`` with ``module.`` prefixes: ``encoder.*`` is
  the ViT, ``encoder_pos_embed`` ([1, N, D], no cls slot) becomes ``pos_embed``; the decoder is dropped.
* ``monai``      MONAI ``ViT`` / ``UNETR`` (``vit.`` prefix): ``patch_embedding.*``, ``attn.out_proj``,
  ``mlp.linear1/2``; perceptron patch weights are reordered from ``(p1 p2 p3 c)`` to Conv order
  ``(c p1 p2 p3)``; MONAI>=1.4's unused ``cross_attn`` / ``norm_cross_attn`` keys are dropped.
* ``medvit``     our own safetensors files (architecture in the sidecar).
* ``uni4eye``    Uni4Eye / Uni4Eye++ (Davidczy/Uni4Eye_pp) ``{'model': ...}`` with a unified 2D/3D patch embedding:
  ``patch_embed.proj2`` + ``pos_embed2`` become a 2D backbone's ``patch_embed.proj`` + ``pos_embed``, or
  ``patch_embed.proj3`` + ``pos_embed3`` a 3D one's (the target's patch size decides); the shared ``cls_token``,
  ``blocks`` and ``norm`` go to either. Decoders (``decoder_*``, ``mask_token*``, the dual decoder's
  ``decoder_embed1`` / ``decoder_blocks1`` / ``decoder_pred21`` / ``decoder_pred31``), the other dimensionality's
  embedding and Uni4Eye++'s ``mlp.*`` / ``controller.*`` are dropped. A position table that is all zero in the
  file (the successor never initialises its 3D tables, nor any table of its dual-decoder class) is not a trained
  table: the target keeps its own.

Other layouts that are these formats: the thorax Medical MAE checkpoints (lambert-x/medical_mae,
``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` with decoder keys) and RETFound's (rmaphoh/RETFound_MAE,
ViT-L/16 under ``'model'``) are ``mae``; a fine-tuned RETFound / MAE model (global pooling: ``fc_norm.*`` and
``head.*``, no ``norm.*``) converts to an average-pooling backbone with ``fc_norm``.
:func:`load_mae_full` loads an MAE training checkpoint *with* its decoder into a pretraining model (to continue
pretraining), where the backbone importers drop the decoder.

Whole task models (a backbone with an app's heads, e.g. ViT-FIQA face models) are formats that apps register
(:mod:`medvit.shared.backbone.formats`): :func:`detect_format` names them by the app's key signature, the
backbone-only loaders refuse them with :class:`WholeModelCheckpointError` naming the command that imports them,
and ``medvit weights convert`` hands them to the app's importer, which keeps the heads.

Position embeddings are copied as tensors, never regenerated: sin-cos channel layouts differ between
codebases. Every load returns a :class:`LoadReport`; keys that are missing and were not declared
expected, unexpected keys, and shape mismatches are errors naming the key and both shapes.

Pickled checkpoints are read only with ``torch.load(weights_only=True)``; the single extra class allowed
is ``argparse.Namespace`` (MAE-style checkpoints store their ``args``), which carries no code. When that loader
refuses a file, its opcodes are listed (``pickletools``, nothing is built) to tell a file that names code or
Python objects apart from a corrupt one. Sidecars and architecture overrides are validated by
:mod:`medvit.shared.schema` before a model is built.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import logging
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvit.shared.backbone import formats
from medvit.shared.backbone.pos_embed import resample_pos_embed
from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.errors import ConfigError, WeightsError
from medvit.shared.files import write_bytes_atomic, write_json_atomic
from medvit.shared.schema import SchemaError, SidecarSchema, check_arch_kwargs, read_json_sidecar, validate_sidecar

logger = logging.getLogger(__name__)

FORMATS = ("timm", "mae", "hi-end-mae", "monai", "medvit", "uni4eye")
SIDECAR_FORMAT_VERSION = 1
# Heads per width for the standard sizes; a state dict cannot tell the head count.
_KNOWN_HEADS = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1280: 16, 1536: 16}
#: What the sidecar of our backbone files must hold (``encoder.json`` of a pretraining export, ``*.json``).
MEDVIT_SIDECAR = SidecarSchema(format="medvit", max_version=SIDECAR_FORMAT_VERSION, arch_key="kwargs")


class WholeModelCheckpointError(WeightsError):
    """The file is a whole task model (backbone + heads) that an app's importer owns, not a backbone.

    Attributes:
        source_format: the name of a registered whole-model format (:mod:`medvit.shared.backbone.formats`).
        state_dict: the state dict already read from the file (None when the caller passed one in), so whoever
            hands the file to the app's importer does not read it a second time.
        info: the reader's info dict of that file (``config``: settings stored beside the weights), or None.
    """

    def __init__(
        self,
        message: str,
        source_format: str,
        state_dict: dict[str, torch.Tensor] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.source_format = source_format
        self.state_dict = state_dict
        self.info = info


@dataclass
class LoadReport:
    """What happened when foreign weights were loaded into a model.

    Attributes:
        source_format: detected or given format.
        missing: model keys the checkpoint did not provide (all declared expected by the caller).
        unexpected: checkpoint keys the model has no place for (all declared allowed by the caller).
        resized: ``(key, old_shape, new_shape)`` of tensors resampled to the model (position embeddings).
        adapted: ``(key, how)`` of tensors changed in meaning-preserving ways (input channels, cls slot).
        dropped: keys the converter removed on purpose (decoders, unused MONAI cross-attention).
    """

    source_format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    adapted: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source_format}: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.resized)} resized, {len(self.adapted)} adapted, {len(self.dropped)} dropped"
        )


# ============================================================================= reading
def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``, allowing only ``argparse.Namespace`` beyond tensors.

    Raises:
        WeightsError: unreadable file, or a pickle that names code or Python objects (possibly malicious; the
            message names them); nothing from the file is executed.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # The weights-only unpickler refused something. Whether it was code or garbage is read from the opcodes
        # (the wording of PyTorch's message changes between releases, and an unsupported opcode can stop it
        # before it reaches the offending global).
        refused = refused_pickle_globals(path)
        if refused:
            raise WeightsError(
                f"{path}: refused to unpickle: the file carries code or Python objects that weights-only loading "
                f"does not build ({', '.join(refused[:4])}{', ...' if len(refused) > 4 else ''}); nothing from it "
                "was executed. Re-save it as a state dict or safetensors in a trusted environment."
            ) from None
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or not a pickle)") from None
    except (TypeError, AttributeError, IndexError, KeyError, OverflowError, struct.error) as err:
        # An allowed class rebuilt with arguments it does not take (``Namespace(1)``), or a malformed stream.
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint: an object in it cannot be rebuilt "
            f"({type(err).__name__}: {first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {first})") from None


# Longest pickle stream inspected after a refusal: state-dict pickles are a few MB (tensors live outside them).
_SCAN_BYTES = 64 << 20
# Globals the weights-only loader builds: what torch.save writes for tensors and containers, and our Namespace.
_SAFE_GLOBALS = frozenset(
    {
        "argparse.Namespace",
        "collections.OrderedDict",
        "builtins.set",
        "builtins.frozenset",
        "builtins.bytearray",
        "builtins.slice",
        "builtins.complex",
        "_codecs.encode",
        "torch.Size",
        "torch.device",
        "torch.serialization._get_layout",
        "torch.nn.parameter.Parameter",
    }
)
_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)


def _is_safe_global(name: str) -> bool:
    if name.startswith("__builtin__."):  # protocol-2 pickles use Python 2's module name
        name = "builtins." + name[len("__builtin__.") :]
    if name in _SAFE_GLOBALS:
        return True
    module, _, attr = name.rpartition(".")
    if not module.startswith("torch"):
        return False
    if attr.startswith("_rebuild") or attr.endswith("Storage"):
        return True
    return module == "torch" and isinstance(getattr(torch, attr, None), torch.dtype)


def pickle_globals(data: bytes) -> list[str]:
    """The classes and callables a pickle names (``GLOBAL``, ``STACK_GLOBAL``, ``INST``), in order, unique.

    The opcodes are only listed with :func:`pickletools.genops`; nothing is imported or called. Several pickles
    back to back (PyTorch's legacy format) are read one after the other; garbage ends the listing.

    Args:
        data: the pickle stream.

    Returns:
        Dotted names such as ``"posix.system"``.
    """
    found: dict[str, None] = {}
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        start = stream.tell()
        strings: list[str] = []  # string pushes, for STACK_GLOBAL (module and name are the last two)
        memo: dict[int, Any] = {}
        last: Any = None
        try:
            for op, arg, _ in pickletools.genops(stream):
                name = op.name
                if name in ("GLOBAL", "INST"):
                    found[str(arg).replace(" ", ".")] = None
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    found[f"{strings[-2]}.{strings[-1]}"] = None
                if name in _STRING_OPS:
                    last = arg.decode("latin1") if isinstance(arg, bytes) else str(arg)
                    strings.append(last)
                elif name == "MEMOIZE":
                    memo[len(memo)] = last
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = last
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    last = memo.get(int(arg))
                    if isinstance(last, str):
                        strings.append(last)
                else:
                    last = None
        except Exception:  # noqa: BLE001 - the listing of hostile bytes ends at the first malformed opcode
            break
        if stream.tell() <= start:
            break
    return list(found)


def refused_pickle_globals(path: str | Path) -> list[str]:
    """Globals of a pickled checkpoint that the weights-only loader does not build (code or Python objects).

    Reads ``data.pkl`` of a zip checkpoint (``torch.save``'s format) or the file itself (a plain or legacy
    pickle), at most 64 MiB of it.

    Args:
        path: the checkpoint.

    Returns:
        Dotted names such as ``["posix.system"]``; empty when it names nothing beyond tensors and containers.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return []
                with zf.open(member) as fh:
                    data = fh.read(_SCAN_BYTES)
        else:
            with open(path, "rb") as fh:
                data = fh.read(_SCAN_BYTES)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []
    return [g for g in pickle_globals(data) if not _is_safe_global(g)]


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The JSON sidecar next to a weight file, validated, or None when there is none.

    Every sidecar passes the common checks of :func:`medvit.shared.schema.read_json_sidecar`; ours
    (``format: medvit``) is also checked against :data:`MEDVIT_SIDECAR` (architecture kwargs within bounds).

    Raises:
        WeightsError: a sidecar that is corrupt or breaks the schema (naming the file and the problem).
    """
    side = _sidecar_path(Path(path))
    if not side.is_file():
        return None
    doc = read_json_sidecar(side)
    if doc.get("format") == MEDVIT_SIDECAR.format:
        validate_sidecar(doc, side, MEDVIT_SIDECAR)
    return doc


def build_vit(
    kwargs: Mapping[str, Any], *, source: str, overrides: Mapping[str, Any] | None = None
) -> VisionTransformer:
    """``VisionTransformer(**kwargs, **overrides)`` after checking both against the architecture schema.

    Args:
        kwargs: the architecture a file describes (sidecar, inferred from a checkpoint).
        source: the file, as errors name it.
        overrides: the caller's or user's changes (``--set``, ``backbone_overrides``).

    Returns:
        The (randomly initialised) backbone.

    Raises:
        ConfigError: an override that is not an architecture key or has a bad value.
        WeightsError: the resulting architecture is invalid or too large (estimated before allocation).
    """
    overrides = dict(overrides or {})
    try:
        check_arch_kwargs(overrides, partial=True)
    except SchemaError as err:
        raise ConfigError(f"architecture override: {err}") from None
    merged = {**dict(kwargs), **overrides}
    try:
        check_arch_kwargs(merged)
    except SchemaError as err:
        with_over = f" with the override(s) {', '.join(sorted(overrides))}" if overrides else ""
        raise WeightsError(f"{source}: {err}{with_over}") from None
    return VisionTransformer(**merged)


# Dicts that hold the state dict; ``state_dict_backbone``: arcface_torch's checkpoint_gpu_<rank>.pt.
_WRAPPERS = ("state_dict", "state_dict_backbone", "model", "module", "model_state", "model_state_dict", "backbone")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read any supported weight file into a flat state dict.

    Args:
        path: ``.safetensors`` (with optional sidecar) or a torch pickle (``.pt``, ``.pth``, ``.bin``, ...).

    Returns:
        (state dict with wrappers and ``module.`` / ``_orig_mod.`` prefixes removed, info dict with
        ``wrapper`` (``model`` / ``state_dict`` / None), ``sidecar``, ``path`` and ``config``: a plain dict or
        ``argparse.Namespace`` stored at the top level as ``config``, ``cfg`` or ``args`` (as a dict), else None).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file")
    info: dict[str, Any] = {"path": str(path), "wrapper": None, "sidecar": None, "config": None}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{path}: corrupt safetensors file ({err})") from None
        info["sidecar"] = read_sidecar(path)
    else:
        obj = safe_torch_load(path)
    if isinstance(obj, Mapping):
        # Architecture settings a trainer saved beside the weights (the head count, which weights do not record).
        cfg = next(
            (obj[k] for k in ("config", "cfg", "args") if isinstance(obj.get(k), (Mapping, argparse.Namespace))), None
        )
        info["config"] = vars(cfg) if isinstance(cfg, argparse.Namespace) else (dict(cfg) if cfg is not None else None)
    # Wrappers may nest ({'model': {'backbone': ...}}); ``info['wrapper']`` is the outermost one.
    while isinstance(obj, Mapping):
        wrapper = next((w for w in _WRAPPERS if isinstance(obj.get(w), Mapping)), None)
        if wrapper is None:
            break
        info["wrapper"] = info["wrapper"] or wrapper
        obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path}: no state dict found (top level is {type(obj).__name__})")
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue  # e.g. an epoch counter stored beside the weights
        sd[strip_prefixes(str(k), ("module.", "_orig_mod."))] = v
    if not sd:
        raise WeightsError(f"{path}: the checkpoint holds no tensors")
    return sd, info


def strip_prefixes(key: str, prefixes: Iterable[str]) -> str:
    """Remove any of ``prefixes`` from the start of ``key``, repeatedly (``module._orig_mod.x`` -> ``x``)."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


# ============================================================================= format detection
def detect_format(sd: Mapping[str, torch.Tensor], info: Mapping[str, Any] | None = None) -> str:
    """Source format from the key signature (and our sidecar)."""
    info = info or {}
    side = info.get("sidecar") or {}
    if side.get("format") == "medvit":
        return "medvit"
    keys = set(sd)
    whole = formats.recognise(keys)  # an app's whole-model layout wins over the backbone signatures it contains
    if whole is not None:
        return whole.name
    if "patch_embed.proj2.weight" in keys or "pos_embed2" in keys:
        return "uni4eye"  # its unified 2D/3D patch embedding has no ``patch_embed.proj``
    if "encoder_pos_embed" in keys or any(k.startswith("encoder.blocks.") for k in keys):
        return "hi-end-mae"
    if any(k.startswith(("patch_embedding.", "vit.patch_embedding.")) for k in keys):
        return "monai"
    if "patch_embed.proj.weight" in keys:
        if any(k.startswith("decoder_") for k in keys) or "mask_token" in keys or info.get("wrapper") == "model":
            return "mae"
        return "timm"
    raise WeightsError(
        "unrecognised checkpoint layout (no timm/MAE/Hi-End-MAE/MONAI/medvit key signature); "
        f"first keys: {sorted(keys)[:5]}"
    )


# ============================================================================= converters
def _convert_timm(sd: Mapping[str, torch.Tensor], _: Mapping[str, Any]) -> tuple[dict, list[str]]:
    return dict(sd), []


def _convert_mae(sd: Mapping[str, torch.Tensor], _: Mapping[str, Any]) -> tuple[dict, list[str]]:
    out, dropped = {}, []
    for k, v in sd.items():
        if k.startswith("decoder_") or k == "mask_token":
            dropped.append(k)
        else:
            out[k] = v
    return out, dropped


def _convert_hi_end_mae(sd: Mapping[str, torch.Tensor], _: Mapping[str, Any]) -> tuple[dict, list[str]]:
    out, dropped = {}, []
    for k, v in sd.items():
        if k.startswith("encoder."):
            out[k[len("encoder.") :]] = v
        elif k == "encoder_pos_embed":
            out["pos_embed"] = v  # [1, N, D], no cls slot; the cls token's PE was zero
        else:
            dropped.append(k)  # decoder, decoder_pos_embed, encoder_to_decoder.*, mask_token
    return out, dropped


_MONAI_SWAPS = (
    (r"^patch_embedding\.position_embeddings$", "pos_embed"),
    (r"^patch_embedding\.patch_embeddings\.weight$", "patch_embed.proj.weight"),  # proj_type="conv"
    (r"^patch_embedding\.patch_embeddings\.bias$", "patch_embed.proj.bias"),
    (r"^patch_embedding\.patch_embeddings\.1\.weight$", "patch_embed.proj.weight"),  # "perceptron"
    (r"^patch_embedding\.patch_embeddings\.1\.bias$", "patch_embed.proj.bias"),
    (r"^blocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^blocks\.(\d+)\.mlp\.linear1\.", r"blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.mlp\.linear2\.", r"blocks.\1.mlp.fc2."),
)
_MONAI_DROP = (r"^blocks\.\d+\.(cross_attn|norm_cross_attn)\.", r"^classification_head\.")


def _perceptron_to_conv(weight: torch.Tensor, patch_size: tuple[int, ...], in_chans: int) -> torch.Tensor:
    """MONAI perceptron patch weight ``[D, prod(p)*C]`` ordered ``(p1 p2 p3 c)`` -> Conv ``[D, C, *p]``."""
    d = weight.shape[0]
    if weight.shape[1] != math.prod(patch_size) * in_chans:
        raise WeightsError(
            f"patch_embedding weight {tuple(weight.shape)} does not fit patch {patch_size} x {in_chans} channels"
        )
    w = weight.reshape(d, *patch_size, in_chans)
    return w.permute(0, len(patch_size) + 1, *range(1, len(patch_size) + 1)).contiguous()


def _convert_monai(sd: Mapping[str, torch.Tensor], target: Mapping[str, Any]) -> tuple[dict, list[str]]:
    out, dropped = {}, []
    vit_keys = {k for k in sd if k.startswith("vit.")}
    for k, v in sd.items():
        if vit_keys and not k.startswith("vit."):
            dropped.append(k)  # UNETR decoder (encoder1..5, decoder2..5, out)
            continue
        key = k[len("vit.") :] if k.startswith("vit.") else k
        if any(re.match(p, key) for p in _MONAI_DROP):
            dropped.append(k)
            continue
        new = key
        for pat, rep in _MONAI_SWAPS:
            new = re.sub(pat, rep, new)
        if re.match(r"^patch_embedding\.patch_embeddings\.1\.weight$", key):
            patch = tuple(target.get("patch_size") or ())
            in_chans = int(target.get("in_chans") or 1)
            if not patch:
                raise WeightsError("MONAI perceptron patch embedding: the target patch size is needed")
            v = _perceptron_to_conv(v, patch, in_chans)
        out[new] = v
    return out, dropped


def _convert_medvit(sd: Mapping[str, torch.Tensor], _: Mapping[str, Any]) -> tuple[dict, list[str]]:
    return dict(sd), []


def is_uni4eye_plus(keys: Iterable[str]) -> bool:
    """A Uni4Eye++ checkpoint: the unified patch embedding plus the dynamic head's ``controller`` / ``mlp``."""
    keys = set(keys)
    return "patch_embed.proj2.weight" in keys and any(k.startswith(("controller.", "mlp.")) for k in keys)


_UNI4EYE_SHARED = ("blocks.", "norm.", "fc_norm.", "head.")  # and cls_token: the shared transformer


def _convert_uni4eye(sd: Mapping[str, torch.Tensor], target: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Uni4Eye(++) -> a 2D backbone, or a 3D one when the target's patch size has 3 entries.

    ``target`` may hold ``patch_size`` (2D by default) and ``pos_embed`` (the target's own table or None, which
    replaces an all-zero one in the file).
    """
    nd = len(target.get("patch_size") or (16, 16))
    if nd not in (2, 3):
        raise WeightsError(f"Uni4Eye checkpoint: a {nd}D target has no patch embedding in it")
    proj, pos = f"patch_embed.proj{nd}.", f"pos_embed{nd}"
    out, dropped = {}, []
    for k, v in sd.items():
        if k.startswith(proj):
            out["patch_embed.proj." + k[len(proj) :]] = v
        elif k == pos and not v.any() and "pos_embed" in target:
            # Never initialised in the successor's code (frozen zeros): not position information to keep. (Without
            # a target table, e.g. when only the architecture is inferred, the zeros still give the grid.)
            dropped.append(k)
            if target["pos_embed"] is not None:
                out["pos_embed"] = target["pos_embed"].detach()
            logger.info("%s is all zero in the Uni4Eye checkpoint; the model keeps its own position table", k)
        elif k == pos:
            out["pos_embed"] = v
        elif k == "cls_token" or k.startswith(_UNI4EYE_SHARED):
            out[k] = v
        else:
            dropped.append(k)  # decoders, mask tokens, the other dimensionality, Uni4Eye++'s mlp / controller
    return out, dropped


_CONVERTERS = {
    "timm": _convert_timm,
    "mae": _convert_mae,
    "hi-end-mae": _convert_hi_end_mae,
    "monai": _convert_monai,
    "medvit": _convert_medvit,
    "uni4eye": _convert_uni4eye,
}


def _whole_model_error(
    where: str,
    source_format: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    info: dict[str, Any] | None = None,
) -> WholeModelCheckpointError:
    fmt = formats.get_format(source_format)
    what = fmt.description if fmt is not None else f"a {source_format} whole model"
    also = f" (or `{fmt.command}`)" if fmt is not None and fmt.command else ""
    return WholeModelCheckpointError(
        f"{where} is {what}, not a bare backbone: import it with `medvit weights convert FILE --out "
        f"F.safetensors`{also}, which keeps the heads",
        source_format,
        state_dict,
        info,
    )


def convert_state_dict(
    sd: Mapping[str, torch.Tensor], source_format: str, target: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a foreign state dict to medvit/timm keys.

    Args:
        sd: foreign state dict (wrappers and ``module.`` already removed).
        source_format: one of ``FORMATS``.
        target: target architecture hints (``patch_size``, ``in_chans``) for layout changes.

    Returns:
        (converted state dict, keys dropped on purpose).
    """
    if formats.get_format(source_format) is not None:
        raise _whole_model_error("the state dict", source_format)
    if source_format not in _CONVERTERS:
        raise WeightsError(f"unknown format {source_format!r}; choose one of {', '.join(_CONVERTERS)}")
    return _CONVERTERS[source_format](sd, target or {})


# ============================================================================= architecture inference
def infer_architecture(
    sd: Mapping[str, torch.Tensor], source_format: str, *, img_size: int | Sequence[int] | None = None
) -> dict[str, Any]:
    """Guess ``VisionTransformer`` kwargs from a converted (medvit-key) state dict.

    The head count cannot be read from weights: standard widths use their usual count, others D/64.

    Args:
        sd: converted state dict (medvit/timm key names).
        source_format: the format it came from (``monai`` sets LayerNorm eps 1e-5).
        img_size: input size the checkpoint was trained on, when the caller knows it (``--set img_size=...``).
            A learned position embedding of a square/cubic grid gives it; one of any other grid (a MONAI UNETR
            trained on 96x96x64) does not, and then this is required.

    Raises:
        WeightsError: no patch embedding or blocks, or a position embedding that fits neither ``img_size`` nor a
            square/cubic grid.
    """
    if "patch_embed.proj.weight" not in sd:
        raise WeightsError("cannot infer the architecture: no patch_embed.proj.weight")
    w = sd["patch_embed.proj.weight"]
    embed_dim, in_chans, patch = w.shape[0], w.shape[1], tuple(int(s) for s in w.shape[2:])
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise WeightsError("cannot infer the architecture: no transformer blocks")
    class_token = "cls_token" in sd
    extra = tuple(sorted(k[: -len("_token")] for k in sd if k.endswith("_token") and k not in ("cls_token",)))
    extra = tuple(e for e in extra if e not in ("reg", "mask"))
    reg = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    n_prefix = int(class_token) + len(extra) + reg
    kwargs: dict[str, Any] = {
        "patch_size": list(patch),
        "in_chans": int(in_chans),
        "embed_dim": int(embed_dim),
        "depth": depth,
        "num_heads": _KNOWN_HEADS.get(int(embed_dim), max(1, int(embed_dim) // 64)),
        "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim if "blocks.0.mlp.fc1.weight" in sd else 4.0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "class_token": class_token,
        "extra_tokens": list(extra),
        "reg_tokens": reg,
        "norm_eps": 1e-5 if source_format == "monai" else 1e-6,
    }
    if source_format == "uni4eye" and img_size is None and len(patch) == 3 and "pos_embed" in sd:
        img_size = _half_depth_volume(int(sd["pos_embed"].shape[1]) - n_prefix, patch)
    kwargs.update(_input_grid(sd, patch, n_prefix, img_size))
    if "head.weight" in sd:
        kwargs["num_classes"] = int(sd["head.weight"].shape[0])
    if not class_token and not extra and not reg:
        kwargs["global_pool"] = "avg"
        kwargs["fc_norm"] = "fc_norm.weight" in sd
    elif "fc_norm.weight" in sd and "norm.weight" not in sd:
        # MAE / RETFound fine-tuning with global pooling: the norm moved after the pooling of the patch tokens.
        kwargs["global_pool"] = "avg"
        kwargs["fc_norm"] = True
    if source_format in ("hi-end-mae", "uni4eye"):
        kwargs["pos_embed"] = "sincos"  # both methods' fixed tables; copied verbatim, not regenerated
    return kwargs


def _half_depth_volume(n: int, patch: tuple[int, ...]) -> list[int] | None:
    """Uni4Eye's volume ``(S, S, S/2)`` whose grid has ``n`` tokens (``14 * 14 * 7`` for 224 x 224 x 112), else None."""
    for g in range(1, 257):
        depth = (g * patch[2] // 2) // patch[2]
        if g * g * depth == n:
            return [g * patch[0], g * patch[1], depth * patch[2]]
    return None


def _input_grid(
    sd: Mapping[str, torch.Tensor], patch: tuple[int, ...], n_prefix: int, img_size: int | Sequence[int] | None
) -> dict[str, Any]:
    """``img_size``, ``pos_embed_prefix`` and ``pos_embed`` from the position embedding (and ``img_size`` if given)."""
    if "pos_embed" not in sd:
        return {"pos_embed": "none", "img_size": [14 * p for p in patch]}
    if img_size is not None:
        n = int(sd["pos_embed"].shape[1])
        size = [int(img_size)] * len(patch) if isinstance(img_size, int) else [int(s) for s in img_size]
        if len(size) != len(patch):
            raise WeightsError(f"img_size {size} has {len(size)} axes; the patch embedding is {len(patch)}D")
        grid = math.prod(s // p for s, p in zip(size, patch, strict=True))
        if n not in (grid, grid + n_prefix):
            raise WeightsError(
                f"pos_embed has {n} tokens; img_size {size} with patch {list(patch)} gives {grid} grid tokens"
                + (f" (+{n_prefix} prefix)" if n_prefix else "")
            )
        return {"img_size": size, "pos_embed_prefix": n_prefix > 0 and n == grid + n_prefix, "pos_embed": "learn"}
    n = sd["pos_embed"].shape[1]
    nd = len(patch)
    for prefix_slots, with_prefix in ((n_prefix, True), (0, False)):
        side = round((n - prefix_slots) ** (1 / nd)) if n > prefix_slots else 0
        if side > 0 and side**nd == n - prefix_slots:
            return {
                "img_size": [side * p for p in patch],
                "pos_embed_prefix": with_prefix and n_prefix > 0,
                "pos_embed": "learn",
            }
    raise WeightsError(
        f"cannot infer a square/cubic grid from pos_embed of {n} tokens; give the input size the checkpoint "
        "was trained on (e.g. --set img_size=[96,96,64])"
    )


# ============================================================================= adaptation
def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """Adapt a patch-embedding weight ``[D, C_src, *k]`` to ``in_chans`` input channels.

    3 -> 1 sums the RGB filters (a grey image seen as R=G=B gives the same response); 1 -> N repeats and
    divides by N; 3 -> N>3 tiles RGB and rescales by 3/N (timm's ``adapt_input_conv`` rule).
    """
    src = weight.shape[1]
    if src == in_chans:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    elif src == 1:
        w = w.repeat(1, in_chans, *([1] * (w.ndim - 2))) / in_chans
    elif src == 3:
        reps = math.ceil(in_chans / 3)
        w = w.repeat(1, reps, *([1] * (w.ndim - 2)))[:, :in_chans] * (3 / in_chans)
    else:
        raise WeightsError(f"cannot adapt a {src}-channel patch embedding to {in_chans} channels")
    return w.to(dtype)


def _fit_pos_embed(
    v: torch.Tensor, model: VisionTransformer, report: LoadReport, key: str = "pos_embed"
) -> torch.Tensor:
    """Match prefix slots and grid of a checkpoint position embedding to the model's."""
    assert model.pos_embed is not None
    target = model.pos_embed
    if tuple(v.shape) == tuple(target.shape):
        return v  # exact match (also for non-cubic grids, whose side cannot be inferred)
    n_prefix_model = model.num_prefix_tokens if model.pos_embed_prefix else 0
    n_grid_model = model.patch_embed.num_patches
    n_src = v.shape[1]
    # Work out how many prefix slots the source has: the model's count, or none.
    src_prefix = None
    for cand in (n_prefix_model, 0, model.num_prefix_tokens, *range(1, 9)):  # cls + registers
        g = n_src - cand
        if g > 0 and round(g ** (1 / model.spatial_dims)) ** model.spatial_dims == g:
            src_prefix = cand
            break
    if src_prefix is None:
        raise WeightsError(
            f"{key}: checkpoint shape {tuple(v.shape)} does not fit a {model.spatial_dims}D grid "
            f"(model {tuple(target.shape)})"
        )
    if v.shape[-1] != target.shape[-1]:
        raise WeightsError(f"{key}: checkpoint width {v.shape[-1]} != model width {target.shape[-1]}")
    if src_prefix != n_prefix_model:
        if src_prefix == 0:
            # Hi-End-MAE / MONAI have no cls slot; their cls token effectively had a zero PE.
            v = torch.cat([torch.zeros(1, n_prefix_model, v.shape[-1], dtype=v.dtype), v], dim=1)
            report.adapted.append((key, f"added {n_prefix_model} zero prefix slot(s)"))
        else:
            dropped = v[:, :src_prefix]
            if dropped.abs().max() > 0:
                logger.info("%s: dropping non-zero prefix position slots (model has none)", key)
            v = v[:, src_prefix:]
            report.adapted.append((key, f"removed {src_prefix} prefix slot(s)"))
    if v.shape[1] - n_prefix_model != n_grid_model:
        old = tuple(v.shape)
        side = round((v.shape[1] - n_prefix_model) ** (1 / model.spatial_dims))
        v = resample_pos_embed(v, model.patch_embed.grid_size, (side,) * model.spatial_dims, n_prefix_model)
        report.resized.append((key, old, tuple(v.shape)))
    return v


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def load_strict(
    module: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    what: str,
    target: Mapping[str, torch.Tensor] | None = None,
    expected_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
) -> tuple[list[str], list[str]]:
    """Check a state dict key by key and shape by shape against ``module``, then load it.

    Args:
        module: receives the tensors (cast to the target dtypes; ``load_state_dict(strict=False)``).
        sd: state dict already in ``module``'s key names.
        what: the source as errors name it (``"timm checkpoint"``).
        target: the part of ``module.state_dict()`` that ``sd`` must fill (default: all of it).
        expected_missing: glob patterns of target keys that ``sd`` may lack.
        allow_unexpected: glob patterns of ``sd`` keys that may be ignored.

    Returns:
        The sorted missing keys and the sorted unexpected keys (the allowed ones included).

    Raises:
        WeightsError: undeclared missing/unexpected keys (up to 8 of each named) or a shape mismatch (naming the
            key and both shapes).
    """
    target = module.state_dict() if target is None else target
    missing = sorted(k for k in target if k not in sd)
    unexpected = sorted(k for k in sd if k not in target)
    bad_missing = [k for k in missing if not _matches(k, expected_missing)]
    bad_unexpected = [k for k in unexpected if not _matches(k, allow_unexpected)]
    if bad_missing or bad_unexpected:
        parts = []
        if bad_missing:
            parts.append(f"missing {len(bad_missing)} key(s): {', '.join(bad_missing[:8])}")
        if bad_unexpected:
            parts.append(f"unexpected {len(bad_unexpected)} key(s): {', '.join(bad_unexpected[:8])}")
        raise WeightsError(f"{what} does not match the model: " + "; ".join(parts))
    for k, v in sd.items():
        if k in target and tuple(v.shape) != tuple(target[k].shape):
            raise WeightsError(f"shape mismatch for {k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}")
    module.load_state_dict({k: v.to(target[k].dtype) for k, v in sd.items() if k in target}, strict=False)
    return missing, unexpected


def load_pretrained(
    model: VisionTransformer,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    source_format: str = "auto",
    expected_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
    prefix: str = "",
) -> LoadReport:
    """Load foreign or medvit weights into ``model`` and report exactly what happened.

    Args:
        model: target backbone (or a module holding it under ``prefix``).
        source: a weight file or an already read state dict.
        source_format: ``auto`` (by key signature) or one of ``FORMATS``.
        expected_missing: glob patterns of model keys the caller expects the checkpoint to lack
            (e.g. ``"head.*"``); any other missing key is an error.
        allow_unexpected: glob patterns of checkpoint keys that may be ignored.
        prefix: prepended to converted keys (to load an encoder inside a larger module).

    Returns:
        The :class:`LoadReport`.

    Raises:
        WeightsError: unexpected/missing keys beyond those declared, or a shape mismatch (naming the key
            and both shapes).
    """
    if isinstance(source, (str, Path)):
        sd, info = read_checkpoint(source)
    else:
        sd, info = {strip_prefixes(k, ("module.", "_orig_mod.")): v for k, v in source.items()}, {}
    fmt = detect_format(sd, info) if source_format == "auto" else source_format
    backbone = model.get_submodule(prefix.rstrip(".")) if prefix else model
    if not isinstance(backbone, VisionTransformer):
        raise WeightsError(f"target {type(backbone).__name__} at {prefix or '<root>'} is not a VisionTransformer")
    hints = {
        "patch_size": backbone.patch_embed.patch_size,
        "in_chans": backbone.patch_embed.proj.in_channels,
        "pos_embed": backbone.pos_embed,  # the model's own table, for formats whose file may hold an unset one
    }
    sd, dropped = convert_state_dict(sd, fmt, hints)
    report = LoadReport(source_format=fmt, dropped=sorted(dropped))

    target_sd = backbone.state_dict()
    # ---- meaning-preserving adaptations
    w = sd.get("patch_embed.proj.weight")
    tw = target_sd["patch_embed.proj.weight"]
    if w is not None and w.shape[1] != tw.shape[1] and w.shape[2:] == tw.shape[2:]:
        sd["patch_embed.proj.weight"] = adapt_input_conv(tw.shape[1], w)
        report.adapted.append(("patch_embed.proj.weight", f"in_chans {w.shape[1]} -> {tw.shape[1]}"))
    if "pos_embed" in sd and backbone.pos_embed is not None:
        sd["pos_embed"] = _fit_pos_embed(sd["pos_embed"], backbone, report)
    if "head.weight" in sd and "head.weight" in target_sd and sd["head.weight"].shape != target_sd["head.weight"].shape:
        # A classifier for other classes is not transferable: drop it, as timm does for num_classes changes.
        for k in ("head.weight", "head.bias"):
            if k in sd:
                report.dropped.append(k)
                sd.pop(k)
    elif "head.weight" in sd and "head.weight" not in target_sd:
        for k in ("head.weight", "head.bias"):
            if k in sd:
                report.dropped.append(k)
                sd.pop(k)

    report.missing, report.unexpected = load_strict(
        backbone,
        sd,
        what=f"{fmt} checkpoint",
        target=target_sd,
        expected_missing=expected_missing,
        allow_unexpected=allow_unexpected,
    )
    logger.info("loaded weights (%s)", report.summary())
    return report


def _is_mae_decoder_key(key: str) -> bool:
    return key.startswith("decoder_") or key == "mask_token"


def _fit_mae_decoder(
    dec: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], encoder: VisionTransformer, report: LoadReport
) -> None:
    """In place: resample ``decoder_pos_embed`` to the model's grid; adapt ``decoder_pred`` rows to its channels."""
    v, t = dec.get("decoder_pos_embed"), target.get("decoder_pos_embed")
    if v is not None and t is not None and v.ndim == 3 and v.shape[-1] == t.shape[-1] and v.shape[1] != t.shape[1]:
        n_prefix = t.shape[1] - encoder.patch_embed.num_patches  # the model's zero cls slot(s), or none
        nd = encoder.spatial_dims
        side = round((v.shape[1] - n_prefix) ** (1 / nd))
        if n_prefix < 0 or side**nd != v.shape[1] - n_prefix:
            raise WeightsError(f"decoder_pos_embed: checkpoint {tuple(v.shape)} does not fit model {tuple(t.shape)}")
        dec["decoder_pos_embed"] = resample_pos_embed(v, encoder.patch_embed.grid_size, (side,) * nd, n_prefix)
        report.resized.append(("decoder_pos_embed", tuple(v.shape), tuple(t.shape)))
    n_vox = math.prod(encoder.patch_embed.patch_size)
    c_model = encoder.patch_embed.proj.in_channels
    for key in ("decoder_pred.weight", "decoder_pred.bias"):
        w, tw = dec.get(key), target.get(key)
        if w is None or tw is None or w.shape == tw.shape or w.shape[0] % n_vox or w.shape[1:] != tw.shape[1:]:
            continue
        c_src = w.shape[0] // n_vox
        rows = w.reshape(n_vox, c_src, *w.shape[1:])  # patch vectors are ordered (p1, p2[, p3], c)
        if c_model == 1:
            rows = rows.float().mean(dim=1, keepdim=True).to(w.dtype)  # a grey patch = the mean of R, G, B
        elif c_src == 1:
            rows = rows.expand(n_vox, c_model, *w.shape[1:])
        else:
            continue  # load_strict names the mismatch
        dec[key] = rows.reshape(n_vox * rows.shape[1], *w.shape[1:]).contiguous()
        report.adapted.append((key, f"in_chans {c_src} -> {c_model}"))


def load_mae_full(
    model: nn.Module, source: str | Path | Mapping[str, Any], *, allow_missing: Iterable[str] = ()
) -> LoadReport:
    """Load an MAE *training* checkpoint, encoder and decoder, into a pretraining model to continue pretraining.

    The target has the layout of ``medvit.pretrain.mae.MAE``: the backbone under ``encoder`` and MAE's decoder
    names at the top level (``mask_token``, ``decoder_pos_embed``, ``decoder_embed``, ``decoder_blocks.N``,
    ``decoder_norm``, ``decoder_pred``), which are the names of facebookresearch/mae, the thorax Medical MAE
    (lambert-x/medical_mae) and RETFound training checkpoints. The encoder part goes through
    :func:`load_pretrained` (format ``mae``: position table resampled, input channels adapted); the decoder must
    match, except that ``decoder_pos_embed`` is resampled to the model's grid and ``decoder_pred`` rows are
    averaged over R, G, B for a 1-channel model (or repeated for a 3-channel one from a 1-channel file).

    Args:
        model: the pretraining model.
        source: a checkpoint file (``{'model': ...}``, ``args`` Namespace allowed) or a state dict.
        allow_missing: glob patterns of model keys (``encoder.`` included) the checkpoint may lack.

    Returns:
        The :class:`LoadReport`, keys relative to ``model``.

    Raises:
        WeightsError: no decoder in the file (released encoder-only weights: load those into the encoder), keys
            missing or unexpected, or a shape mismatch (naming the key and both shapes).
    """
    if isinstance(source, (str, Path)):
        sd, _ = read_checkpoint(source)
        where = str(source)
    else:
        inner = source.get("model") if isinstance(source.get("model"), Mapping) else source
        sd = {strip_prefixes(str(k), ("module.", "_orig_mod.")): v for k, v in inner.items() if torch.is_tensor(v)}
        where = "the state dict"
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, VisionTransformer):
        raise WeightsError(f"target {type(model).__name__} has no VisionTransformer `encoder`")
    dec = {k: v for k, v in sd.items() if _is_mae_decoder_key(k)}
    if not dec:
        raise WeightsError(
            f"{where}: no MAE decoder (decoder_*, mask_token): encoder-only weights continue pretraining as the "
            "encoder only"
        )
    allow = list(allow_missing)
    enc_allow = [p[len("encoder.") :] for p in allow if p.startswith("encoder.")]
    enc = {k: v for k, v in sd.items() if k not in dec}
    enc_report = load_pretrained(encoder, enc, source_format="mae", expected_missing=enc_allow)
    report = LoadReport(
        source_format="mae",
        missing=[f"encoder.{k}" for k in enc_report.missing],
        unexpected=[f"encoder.{k}" for k in enc_report.unexpected],
        resized=[(f"encoder.{k}", a, b) for k, a, b in enc_report.resized],
        adapted=[(f"encoder.{k}", how) for k, how in enc_report.adapted],
        dropped=[f"encoder.{k}" for k in enc_report.dropped],
    )
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    _fit_mae_decoder(dec, target, encoder, report)
    missing, unexpected = load_strict(model, dec, what=f"{where} (MAE decoder)", target=target, expected_missing=allow)
    report.missing += missing
    report.unexpected += unexpected
    logger.info("loaded MAE checkpoint with decoder (%s)", report.summary())
    return report


# ============================================================================= our format
def save_model_file(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    sidecar: Mapping[str, Any],
    *,
    format: str,  # noqa: A002 - the sidecar's own key name
    format_version: int,
) -> Path:
    """Write a medvit model file: ``path`` (safetensors) + ``path.json`` (sidecar), both atomically.

    The one writer of every model file medvit makes (backbone exports, whole app models): the sidecar starts with
    ``format``, ``format_version`` and ``medvit_version``, then ``sidecar``'s fields (which may set those three
    themselves, e.g. a resumed run keeping the version that started it); the safetensors metadata names the format
    too. The weights are written before the sidecar, so a sidecar always describes complete
    weights.

    Args:
        path: target ``.safetensors`` file (folders are created).
        state_dict: tensors to store (moved to the CPU, made contiguous).
        sidecar: the architecture and metadata fields of the format.
        format: the format's name (``medvit`` for a backbone, ``medvit-fiqa``, ``medvit-ct-seg``, ...).
        format_version: the version of that format's sidecar.

    Returns:
        The weight file path.

    Raises:
        WeightsError: ``path`` does not end in ``.safetensors``.
    """
    from safetensors.torch import save

    from medvit import __version__

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: medvit weight files end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    side = {"format": format, "format_version": format_version, "medvit_version": __version__, **dict(sidecar)}
    write_bytes_atomic(path, save(tensors, metadata={"format": format}))
    write_json_atomic(_sidecar_path(path), side)
    return path


def save_backbone(
    model: VisionTransformer,
    path: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    source: str = "medvit",
) -> Path:
    """Write ``model`` as ``path`` (safetensors) + ``path.json`` (sidecar), both atomically.

    Args:
        model: the backbone.
        path: target ``.safetensors`` file.
        metadata: extra sidecar fields (``intensity``, ``spacing``, ``data_card``, ``method``, ...).
        source: provenance (``medvit``, ``converted from mae``, ...).

    Returns:
        The weight file path.
    """
    side = {
        "architecture": "VisionTransformer",
        "kwargs": model.arch_kwargs,
        "spatial_dims": model.spatial_dims,
        "patch_size": list(model.patch_embed.patch_size),
        "input_size": list(model.patch_embed.img_size),
        "in_chans": model.patch_embed.proj.in_channels,
        "source": source,
        **dict(metadata or {}),
    }
    return save_model_file(path, model.state_dict(), side, format="medvit", format_version=SIDECAR_FORMAT_VERSION)


def load_backbone(
    path: str | Path, *, expected_missing: Iterable[str] = (), **overrides: Any
) -> tuple[VisionTransformer, dict[str, Any]]:
    """Rebuild a backbone from a medvit weight file and its sidecar.

    Args:
        path: ``.safetensors`` written by :func:`save_backbone` (or a ``medvit pretrain`` export).
        expected_missing: patterns of keys allowed to be absent (e.g. a new ``head.*``).
        **overrides: architecture kwargs to change (``num_classes``, ``img_size``, ``drop_path_rate``...).

    Returns:
        (model, sidecar dict).
    """
    path = Path(path)
    side = read_sidecar(path)  # validated against MEDVIT_SIDECAR when it says format: medvit
    if side is None or side.get("format") != "medvit":
        raise WeightsError(
            f"{path}: no medvit sidecar ({_sidecar_path(path).name}); convert foreign weights first with "
            "`medvit weights convert`"
        )
    model = build_vit(side["kwargs"], source=str(_sidecar_path(path)), overrides=overrides)
    report = load_pretrained(model, path, source_format="medvit", expected_missing=expected_missing)
    model.load_report = report  # type: ignore[attr-defined]
    return model, side


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    source_format: str = "auto",
    arch_overrides: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[LoadReport, dict[str, Any]]:
    """Import a foreign checkpoint and write it in our format (backbone weights only).

    Returns:
        (the load report, the architecture kwargs written to the sidecar).
    """
    sd, info = read_checkpoint(src)
    fmt = detect_format(sd, info) if source_format == "auto" else source_format
    if formats.get_format(fmt) is not None:
        raise _whole_model_error(str(src), fmt, sd, info)
    if fmt == "medvit" and info.get("sidecar"):
        kwargs = dict(info["sidecar"]["kwargs"])
    else:
        # Infer on converted keys; MONAI perceptron weights need the patch size first, from the 2D/3D grid.
        probe_hints: dict[str, Any] = {}
        if fmt == "monai":
            probe_hints = _monai_hints(sd, arch_overrides or {})
        elif fmt == "uni4eye" and (arch_overrides or {}).get("patch_size") is not None:
            patch = arch_overrides["patch_size"]  # a 3-entry patch size picks the 3D embedding
            probe_hints = {"patch_size": tuple(patch) if not isinstance(patch, int) else (patch,) * 2}
        converted, _ = convert_state_dict(sd, fmt, probe_hints)
        # The input size is an override the inference itself needs (a non-cubic grid does not give its shape).
        kwargs = infer_architecture(converted, fmt, img_size=(arch_overrides or {}).get("img_size"))
    model = build_vit(kwargs, source=str(src), overrides=arch_overrides)
    report = load_pretrained(model, {**sd}, source_format=fmt)
    save_backbone(model, out, metadata={**dict(metadata or {}), "converted_from": Path(src).name}, source=fmt)
    return report, model.arch_kwargs


def _monai_hints(sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Patch size / channels for MONAI perceptron weights (not recoverable from a Linear weight alone)."""
    key = next((k for k in sd if k.endswith("patch_embedding.patch_embeddings.1.weight")), None)
    if key is None:
        return {}
    if "patch_size" not in overrides:
        raise WeightsError(
            "MONAI perceptron patch embedding: pass the patch size (e.g. --set patch_size=[16,16,16]) "
            "because a Linear weight does not record it"
        )
    patch = overrides["patch_size"]
    patch = tuple(patch) if not isinstance(patch, int) else (patch,) * 3
    in_chans = int(overrides.get("in_chans", sd[key].shape[1] // math.prod(patch)))
    return {"patch_size": patch, "in_chans": in_chans}


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """Describe a weight file: format, wrapper, tensor count, parameters, inferred architecture, key groups."""
    sd, info = read_checkpoint(path)
    fmt = detect_format(sd, info)
    groups: Counter[str] = Counter(re.sub(r"\.\d+\.", ".N.", k).split(".N.")[0] for k in sd)
    result: dict[str, Any] = {
        "path": str(path),
        "format": fmt,
        "wrapper": info.get("wrapper"),
        "tensors": len(sd),
        "parameters": int(sum(v.numel() for v in sd.values())),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in sd.values()}),
        "key_groups": dict(sorted(groups.items())),
    }
    if fmt == "medvit" and info.get("sidecar"):
        result["architecture"] = info["sidecar"].get("kwargs")
        result["sidecar"] = {k: v for k, v in info["sidecar"].items() if k != "kwargs"}
    elif (whole := formats.get_format(fmt)) is not None:
        result["architecture"] = f"{whole.description}: `medvit weights convert` imports it, heads kept"
    else:
        try:
            converted, dropped = convert_state_dict(sd, fmt, _safe_monai_hints(sd))
            result["architecture"] = infer_architecture(converted, fmt)
            result["dropped_on_import"] = len(dropped)
        except WeightsError as err:
            result["architecture"] = f"not inferable: {err}"
    return result


def _safe_monai_hints(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    key = next((k for k in sd if k.endswith("patch_embedding.patch_embeddings.1.weight")), None)
    if key is None:
        return {}
    # Best guess for display only: 1 channel, cubic patch.
    side = round(sd[key].shape[1] ** (1 / 3))
    return {"patch_size": (side,) * 3, "in_chans": 1} if side**3 == sd[key].shape[1] else {}


def report_to_dict(report: LoadReport) -> dict[str, Any]:
    return asdict(report)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod  # type: ignore[assignment]
    return model
