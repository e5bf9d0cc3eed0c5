"""CellVTA and CellViT checkpoints: key mapping, loaders, and the whole-model formats registered at import.

Importing this module is torch-free (it only registers the formats); the functions import torch when they run.

**CellVTA** (``JieZheng-ShanghaiTech/CellVTA``): the trainer saves ``{"arch", "epoch", "model_state_dict",
"optimizer_state_dict", ..., "config"}`` (``config`` flattened with "." separators). Its ``model_state_dict`` maps
onto :class:`~medvit.apps.cell_seg.model.CellVTA` by one rename, the identity elsewhere:

* ``encoder.{patch_embed,cls_token,pos_embed,blocks,norm}.*`` (and any ``encoder.*_token``, ``encoder.fc_norm``)
  -> ``encoder.backbone.*``;
* ``encoder.head.*`` -> ``tissue_head.*``;
* ``encoder.{spm,level_embed,interactions,up,norm1..norm4}.*``, ``decoder0..3.*`` and
  ``{nuclei_binary_map,hv_map,nuclei_type_maps}_decoder.*`` -> the same names.

So stripping ``encoder.`` from a CellVTA backbone key gives the backbone's own (timm) key. The mapping is idempotent
(our own keys map to themselves). Released CellVTA files are imported with ``tissue_head="official"``: their patch
features were computed with the class token outside attention, and that head is the one they trained.

**CellViT** (``TIO-IKIM/CellViT``): same wrapper; CellViT-256's ``encoder.*`` is a timm-style ViT-S/16 (HIPT),
which is the only part that transfers to CellVTA (its decoder takes 1/16 ViT features through deconvolution
stacks, CellVTA's takes adapter features). :func:`load_cellvit_encoder` loads that encoder into a CellVTA's backbone
and names what it did not load; ``medvit weights convert`` writes it as a backbone file. CellViT-SAM encoders (SAM
image encoders) are not registry ViTs and are refused.

The wrapper key ``model_state_dict`` is unwrapped by :func:`read_cell_checkpoint` (the shared
:func:`~medvit.shared.backbone.weights.read_checkpoint` does not know it).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvit.shared.backbone.formats import WholeModelFormat, WholeModelImport, register_format
from medvit.shared.errors import WeightsError

if TYPE_CHECKING:
    import torch

    from medvit.apps.cell_seg.model import CellVTA
    from medvit.shared.backbone.weights import LoadReport

logger = logging.getLogger(__name__)

__all__ = [
    "CELLVIT",
    "CELLVTA",
    "CELL_MODEL_FORMAT",
    "CELL_MODEL_FORMAT_VERSION",
    "cellvta_key_to_medvit",
    "cellvta_spec_from_state_dict",
    "export_cellvta_state_dict",
    "import_cellvit_encoder",
    "import_cellvta",
    "is_cellvit_state_dict",
    "is_cellvta_state_dict",
    "load_cellvit_encoder",
    "load_cellvta_state_dict",
    "medvit_key_to_cellvta",
    "read_cell_checkpoint",
]

#: The sidecar ``format`` of a whole medvit cell model file (safetensors + JSON).
CELL_MODEL_FORMAT = "medvit-cell-model"
CELL_MODEL_FORMAT_VERSION = 1
PANNUKE_TYPES = ("Background", "Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")
"""PanNuke's nuclei types by id (CellViT's ``dataset_config.yaml``), the names of an imported 6-output model."""

_BACKBONE_NAMES = frozenset({"patch_embed", "cls_token", "pos_embed", "reg_token", "blocks", "norm", "fc_norm"})
_OURS_BACKBONE = "encoder.backbone."
_STRIP = ("module.", "_orig_mod.")


# ============================================================================= key mapping
def _is_backbone_name(first: str) -> bool:
    return first in _BACKBONE_NAMES or first.endswith("_token")


def cellvta_key_to_medvit(key: str) -> str:
    """A CellVTA ``model_state_dict`` key -> our :class:`CellVTA` key (identity for keys already ours)."""
    if not key.startswith("encoder."):
        return key
    rest = key[len("encoder.") :]
    first = rest.split(".", 1)[0]
    if first == "head":
        return "tissue_head." + rest[len("head.") :]
    if _is_backbone_name(first):
        return _OURS_BACKBONE + rest
    return key


def medvit_key_to_cellvta(key: str) -> str:
    """Our :class:`CellVTA` key -> the CellVTA ``model_state_dict`` key (inverse of :func:`cellvta_key_to_medvit`)."""
    if key.startswith(_OURS_BACKBONE):
        return "encoder." + key[len(_OURS_BACKBONE) :]
    if key.startswith("tissue_head."):
        return "encoder.head." + key[len("tissue_head.") :]
    return key


def is_cellvta_state_dict(keys: Collection[str]) -> bool:
    """CellVTA key signature: the spatial prior module and the level embedding under ``encoder.``."""
    return "encoder.spm.stem.0.weight" in keys and "encoder.level_embed" in keys


def is_cellvit_state_dict(keys: Collection[str]) -> bool:
    """CellViT key signature: a ViT/SAM ``encoder.`` with CellViT's decoder, and no CellVTA adapter."""
    return (
        not is_cellvta_state_dict(keys)
        and "encoder.patch_embed.proj.weight" in keys
        and "decoder0.0.block.0.weight" in keys
        and "nuclei_binary_map_decoder.decoder0_header.2.weight" in keys
    )


def _strip(sd: Mapping[str, Any]) -> dict[str, Any]:
    from medvit.shared.backbone.weights import strip_prefixes

    return {strip_prefixes(str(k), _STRIP): v for k, v in sd.items()}


# ============================================================================= reading
def read_cell_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a CellViT/CellVTA training checkpoint (``model_state_dict`` wrapper) or any file the shared reader knows.

    Returns:
        (state dict without ``module.`` prefixes, info with ``path``, ``wrapper``, ``sidecar``, ``config`` (the
        stored config dict, flattened keys as saved) and ``arch`` (the class name the trainer stored, or None)).

    Raises:
        WeightsError: unreadable file or no tensors (naming the file).
    """
    import torch

    from medvit.shared.backbone.weights import read_checkpoint, safe_torch_load

    path = Path(path)
    if path.suffix != ".safetensors" and path.is_file() and path.stat().st_size > 0:
        obj = safe_torch_load(path)
        if isinstance(obj, Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
            sd = {k: v for k, v in _strip(obj["model_state_dict"]).items() if isinstance(v, torch.Tensor)}
            if not sd:
                raise WeightsError(f"{path}: model_state_dict holds no tensors")
            cfg = obj.get("config")
            arch = obj.get("arch")
            info = {
                "path": str(path),
                "wrapper": "model_state_dict",
                "sidecar": None,
                "config": dict(cfg) if isinstance(cfg, Mapping) else None,
                "arch": arch if isinstance(arch, str) else None,
            }
            return sd, info
    sd, info = read_checkpoint(path)
    return sd, {**info, "arch": None}


# ============================================================================= CellVTA
def export_cellvta_state_dict(model: CellVTA) -> dict[str, torch.Tensor]:
    """Our model's state dict in CellVTA's key names (what the CellVTA code's ``load_state_dict`` expects)."""
    return {medvit_key_to_cellvta(k): v for k, v in model.state_dict().items()}


def _fit_pos_embed(v: torch.Tensor, model: CellVTA, report: LoadReport) -> torch.Tensor:
    """Resample a learned position embedding of another square grid (same prefix slots) to the model's grid."""
    from medvit.shared.backbone.pos_embed import resample_pos_embed

    bb = model.backbone
    target = bb.pos_embed
    if target is None or tuple(v.shape) == tuple(target.shape) or v.ndim != 3 or v.shape[-1] != target.shape[-1]:
        return v  # equal, or a mismatch that load_strict reports with both shapes
    n_prefix = bb.num_prefix_tokens if bb.pos_embed_prefix else 0
    side = round((v.shape[1] - n_prefix) ** 0.5)
    if side * side != v.shape[1] - n_prefix:
        return v
    new = resample_pos_embed(v, bb.patch_embed.grid_size, (side, side), n_prefix)
    report.resized.append((_OURS_BACKBONE + "pos_embed", tuple(v.shape), tuple(new.shape)))
    return new


def load_cellvta_state_dict(model: CellVTA, sd: Mapping[str, torch.Tensor]) -> LoadReport:
    """Load a CellVTA ``model_state_dict`` (or one in our key names) into ``model``, strictly.

    Every model key must be provided and every checkpoint key used; a position embedding of another square grid
    is resampled (reported in ``resized``).

    Args:
        model: the target (its spec must match the checkpoint's architecture).
        sd: the state dict (``module.`` / ``_orig_mod.`` prefixes allowed).

    Returns:
        The :class:`~medvit.shared.backbone.weights.LoadReport` (``source_format="cellvta"``).

    Raises:
        WeightsError: missing or unexpected keys (named, in our key names) or a shape mismatch.
    """
    from medvit.shared.backbone.weights import LoadReport, load_strict

    ours = {cellvta_key_to_medvit(k): v for k, v in _strip(sd).items()}
    report = LoadReport(source_format="cellvta")
    key = _OURS_BACKBONE + "pos_embed"
    if key in ours:
        ours[key] = _fit_pos_embed(ours[key], model, report)
    report.missing, report.unexpected = load_strict(model, ours, what="CellVTA checkpoint")
    logger.info("loaded a CellVTA state dict (%s)", report.summary())
    return report


def _choose_backbone(kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A registry name of the nearest width and the overrides that turn it into ``kwargs`` (only what differs)."""
    from medvit.shared.backbone.registry import backbone_kwargs
    from medvit.shared.backbone.vit import VisionTransformer

    by_width = {192: "tiny", 384: "small", 768: "base", 1024: "large"}
    width = min(by_width, key=lambda w: abs(w - int(kwargs["embed_dim"])))
    name = f"vit_{by_width[width]}_patch16_224"
    defaults = {k: p.default for k, p in inspect.signature(VisionTransformer.__init__).parameters.items()}
    base = {**defaults, **backbone_kwargs(name)}

    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, (list, tuple)) else v

    overrides = {}
    for k, v in kwargs.items():
        b = base.get(k)
        same = norm(v) == norm(b) or (isinstance(b, int) and norm(v) == [b, b])  # 16 == [16, 16]
        if not same:
            overrides[k] = v
    return name, overrides


def _infer_heads_points(product: int, adapter: Mapping[str, Any]) -> tuple[int, int]:
    """Deformable heads and points from ``heads * points`` (weights hold only the product)."""
    heads, points = adapter.get("deform_num_heads"), adapter.get("n_points")
    if heads is None and points is None and product == 32:
        return 8, 4  # CellVTA's published setting
    if heads is not None and points is None and product % heads == 0:
        return int(heads), product // int(heads)
    if points is not None and heads is None and product % points == 0:
        return product // int(points), int(points)
    if heads is not None and points is not None and heads * points == product:
        return int(heads), int(points)
    raise WeightsError(
        f"CellVTA checkpoint: the deformable attention has heads x points = {product}; give deform_num_heads and "
        "n_points (the weights record only their product)"
    )


def _infer_decoder_width(ours: Mapping[str, torch.Tensor], dim: int) -> float:
    """The ``decoder_width`` that reproduces every decoder channel count (1.0 for the paper's decoder)."""
    from medvit.apps.cell_seg.model import decoder_channels

    seen = {  # finest power-of-two base first: a width like 1/16 comes out exact
        "256": ours["decoder2.0.block.0.weight"].shape[0],
        "128": ours["decoder1.0.block.0.weight"].shape[0],
        "64": ours["decoder0.1.block.0.weight"].shape[0],
        "32": ours["decoder0.0.block.0.weight"].shape[0],
        "bottleneck": ours["decoder3.0.block.0.weight"].shape[0],
    }
    base = decoder_channels(dim, 1.0)
    candidates = [seen[k] / base[k] for k in seen]
    for width in candidates:
        if all(decoder_channels(dim, width)[k] == c for k, c in seen.items()):
            return width
    return candidates[0]  # no exact fit: loading then names the layer that differs


def cellvta_spec_from_state_dict(
    sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The model spec (:func:`~medvit.apps.cell_seg.model.build_cell_model`) of a CellVTA state dict.

    Shapes give everything but the backbone's head count (the usual count for the width, see
    :func:`~medvit.shared.backbone.weights.infer_architecture`) and the deformable heads x points split (8 x 4
    when the product is 32). ``tissue_head`` defaults to ``"official"``, the published behaviour.

    Args:
        sd: CellVTA (or our) key names.
        overrides: adapter keywords (``deform_num_heads``, ``n_points``, ``tissue_head``, ...) and backbone
            architecture keys (``num_heads``, ...), which win over what is inferred.

    Raises:
        WeightsError: not a CellVTA state dict, or an architecture the shapes cannot tell.
    """
    from medvit.apps.cell_seg.model import ADAPTER_DEFAULTS
    from medvit.shared.backbone.weights import infer_architecture

    ours = {cellvta_key_to_medvit(k): v for k, v in _strip(sd).items()}
    if not is_cellvta_state_dict({medvit_key_to_cellvta(k) for k in ours}):
        raise WeightsError("not a CellVTA state dict (no encoder.spm.stem.0.weight / encoder.level_embed)")
    overrides = dict(overrides or {})
    adapter_over = {k: v for k, v in overrides.items() if k in ADAPTER_DEFAULTS}
    arch_over = {k: v for k, v in overrides.items() if k not in ADAPTER_DEFAULTS}
    bb = {k[len(_OURS_BACKBONE) :]: v for k, v in ours.items() if k.startswith(_OURS_BACKBONE)}
    kwargs = infer_architecture(bb, "timm")
    if "blocks.0.ls1.gamma" in bb:
        kwargs["init_values"] = 1e-5  # LayerScale on; the value is replaced by the loaded gammas
    name, bb_over = _choose_backbone({**kwargs, **arch_over})
    try:
        dim = int(kwargs["embed_dim"])
        inj = "encoder.interactions.0.injector.attn."
        heads, points = _infer_heads_points(ours[inj + "attention_weights.weight"].shape[0] // 3, adapter_over)
        n_seg = 1 + max(int(k.split(".")[2]) for k in ours if k.startswith("encoder.interactions."))
        adapter = {
            "conv_inplane": int(ours["encoder.spm.stem.0.weight"].shape[0]),
            "n_points": points,
            "deform_num_heads": heads,
            "deform_ratio": ours[inj + "value_proj.weight"].shape[0] / dim,
            "cffn_ratio": ours["encoder.interactions.0.extractor.ffn.fc1.weight"].shape[0] / dim,
            "n_segments": n_seg,
            "extra_extractors": any(".extra_extractors." in k for k in ours),
            "decoder_width": _infer_decoder_width(ours, dim),
            "tissue_head": "official",
        }
        num_nuclei = int(ours["nuclei_type_maps_decoder.decoder0_header.2.weight"].shape[0]) - 1
        num_tissue = int(ours["tissue_head.weight"].shape[0])
    except KeyError as err:
        raise WeightsError(f"CellVTA checkpoint lacks {medvit_key_to_cellvta(str(err.args[0]))}") from None
    return {
        "backbone": name,
        "backbone_overrides": bb_over,
        "num_nuclei_classes": num_nuclei,
        "num_tissue_classes": num_tissue,
        "adapter": {**ADAPTER_DEFAULTS, **adapter, **adapter_over},
    }


def _class_names(config: Mapping[str, Any] | None, key: str) -> list[str] | None:
    """Class names by id from a trainer config (``{name: id}``, nested or flattened with '.'), or None."""
    if not config:
        return None
    found = config.get(key)
    mapping = (
        dict(found)
        if isinstance(found, Mapping)
        else {k[len(key) + 1 :]: v for k, v in config.items() if str(k).startswith(key + ".")}
    )
    if not mapping or not all(isinstance(v, int) for v in mapping.values()):
        return None
    if sorted(mapping.values()) != list(range(len(mapping))):
        return None
    return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix != ".safetensors":
        raise WeightsError(f"{out}: the output must end in .safetensors")
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} exists; pass --overwrite to replace it")


def import_cellvta(
    src: str | Path,
    out: str | Path,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    info: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Import a CellVTA checkpoint as a medvit cell model file (``out`` safetensors + JSON sidecar).

    Args:
        src: the checkpoint (read unless ``state_dict`` is given).
        out: the ``.safetensors`` file to write.
        state_dict: ``src`` already read.
        info: the reader's info (``config`` gives class names when present).
        overrides: see :func:`cellvta_spec_from_state_dict`.
        overwrite: replace an existing ``out``.

    Returns:
        The sidecar written: the fields of a ``cell train`` ``model.json`` (``encoder``, ``model``, class names from
        the checkpoint's config when it has them, else PanNuke's / generic ones, 40x, the 0.5/0.5 normalisation),
        plus ``source``, ``converted_from`` and ``load_report``.
    """
    from medvit.apps.cell_seg.model import build_cell_model
    from medvit.shared.backbone.weights import report_to_dict, save_model_file

    out = Path(out)
    _check_out(out, overwrite)
    if state_dict is None:
        state_dict, info = read_cell_checkpoint(src)
    spec = cellvta_spec_from_state_dict(state_dict, overrides)
    model = build_cell_model(spec)
    report = load_cellvta_state_dict(model, state_dict)
    config = (info or {}).get("config")
    nuclei = _class_names(config, "dataset_config.nuclei_types")
    tissues = _class_names(config, "dataset_config.tissue_types")
    n_types, n_tissues = model.spec["num_nuclei_classes"], model.spec["num_tissue_classes"]
    if nuclei is None or len(nuclei) != n_types + 1:
        nuclei = (
            list(PANNUKE_TYPES)
            if n_types == len(PANNUKE_TYPES) - 1
            else ["Background"] + [f"type_{i}" for i in range(1, n_types + 1)]
        )
    if tissues is None or len(tissues) != n_tissues:
        tissues = [f"tissue_{i}" for i in range(n_tissues)]
    side: dict[str, Any] = {
        # the fields of a `cell train` model.json (medvit.apps.cell_seg.model_file), so `cell predict` runs it
        "encoder": model.backbone.arch_kwargs,
        "model": {"num_nuclei_classes": n_types, "num_tissue_classes": n_tissues, "adapter": model.spec["adapter"]},
        "nuclei_types": nuclei,
        "tissue_types": tissues,
        "magnification": 40,
        "mpp": 0.25,
        "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "source": "cellvta",
        "converted_from": Path(src).name,
        "load_report": report_to_dict(report),
    }
    save_model_file(out, model.state_dict(), side, format=CELL_MODEL_FORMAT, format_version=CELL_MODEL_FORMAT_VERSION)
    return side


# ============================================================================= CellViT
def _cellvit_encoder(sd: Mapping[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """CellViT's timm-style ViT encoder (``encoder.*`` without the tissue head) and the keys left out."""
    sd = _strip(sd)
    if any(k.startswith("encoder.neck.") or ".attn.rel_pos_h" in k for k in sd):
        raise WeightsError(
            f"{where}: a CellViT-SAM model; its SAM image encoder (windowed attention, relative positions) is not a "
            "registry ViT, so nothing of it transfers to CellVTA (only CellViT-256's ViT encoder does)"
        )
    enc = {
        k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.") and not k.startswith("encoder.head.")
    }
    if "patch_embed.proj.weight" not in enc:
        raise WeightsError(f"{where}: no encoder.patch_embed.proj.weight; not a CellViT checkpoint")
    left = sorted(k for k in sd if not k.startswith("encoder.") or k.startswith("encoder.head."))
    return enc, left


def _groups(keys: Collection[str]) -> list[str]:
    """Top-level parts of ``keys`` (``encoder.head`` kept as one), sorted."""
    return sorted({"encoder.head" if k.startswith("encoder.head.") else k.split(".", 1)[0] for k in keys})


def load_cellvit_encoder(model: CellVTA, sd: Mapping[str, torch.Tensor]) -> LoadReport:
    """Load the ViT encoder of a CellViT(-256) checkpoint into a CellVTA's backbone; report what was not loaded.

    The decoder, the tissue head (``encoder.head``) and everything else of CellViT do not fit CellVTA and stay
    as initialised; their keys are listed in the report's ``dropped`` and logged. The position embedding is
    resampled to the backbone's grid when needed.

    Raises:
        WeightsError: a CellViT-SAM checkpoint, or an encoder that does not match the backbone (keys named).
    """
    from medvit.shared.backbone.weights import load_pretrained

    enc, left = _cellvit_encoder(sd, "CellViT checkpoint")
    report = load_pretrained(model, enc, source_format="timm", prefix="encoder.backbone")
    report.source_format = "cellvit"
    report.dropped = sorted(set(report.dropped) | set(left))
    logger.warning(
        "CellViT checkpoint: loaded only the ViT encoder into the backbone; not loaded (no counterpart in CellVTA): "
        "%s (%d tensors); the adapter, decoder and tissue head keep their initialisation",
        ", ".join(_groups(left)),
        len(left),
    )
    return report


def import_cellvit_encoder(
    src: str | Path,
    out: str | Path,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> tuple[LoadReport, list[str]]:
    """Write the ViT encoder of a CellViT checkpoint as a medvit backbone file (the part CellVTA can use).

    Returns:
        (the load report, the CellViT keys not written: decoder, tissue head, ...).
    """
    from medvit.shared.backbone.weights import build_vit, infer_architecture, load_pretrained, save_backbone

    out = Path(out)
    _check_out(out, overwrite)
    if state_dict is None:
        state_dict, _ = read_cell_checkpoint(src)
    enc, left = _cellvit_encoder(state_dict, str(src))
    model = build_vit(infer_architecture(enc, "timm"), source=str(src), overrides=overrides)
    report = load_pretrained(model, enc, source_format="timm")
    report.source_format = "cellvit"
    meta = {"converted_from": Path(src).name, "not_loaded": _groups(left)}
    save_backbone(model, out, metadata=meta, source="cellvit")
    return report, left


# ============================================================================= registration
def _import_cellvta_job(job: WholeModelImport) -> str:
    side = import_cellvta(
        job.src, job.out, state_dict=job.state_dict, info=job.info, overrides=job.overrides, overwrite=job.overwrite
    )
    spec, enc = side["model"], side["encoder"]
    return (
        f"wrote {job.out} (CellVTA on a ViT {enc['embed_dim']} wide x {enc['depth']} blocks, "
        f"{spec['num_nuclei_classes']} nucleus and {spec['num_tissue_classes']} tissue classes, tissue head "
        f"{spec['adapter']['tissue_head']!r}); run it with `medvit cell predict {job.out} IMAGES --out DIR`"
    )


def _import_cellvit_job(job: WholeModelImport) -> str:
    report, left = import_cellvit_encoder(
        job.src, job.out, state_dict=job.state_dict, overrides=job.overrides, overwrite=job.overwrite
    )
    return (
        f"wrote {job.out} (the ViT encoder of a CellViT model, {report.summary()}); not written, because CellVTA has "
        f"no counterpart: {', '.join(_groups(left))} ({len(left)} tensors); use it as the backbone weights of a "
        "CellVTA model"
    )


CELLVTA = register_format(
    WholeModelFormat(
        name="cellvta",
        description="a CellVTA model (ViT, adapter, decoder)",
        recognises=is_cellvta_state_dict,
        importer=_import_cellvta_job,
    )
)

CELLVIT = register_format(
    WholeModelFormat(
        name="cellvit",
        description="a CellViT model (ViT encoder and decoder; only the encoder transfers to CellVTA)",
        recognises=is_cellvit_state_dict,
        importer=_import_cellvit_job,
    )
)
