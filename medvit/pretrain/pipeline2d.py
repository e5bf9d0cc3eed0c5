"""``medvit pretrain`` on 2D images (MAE, thorax recipe) and on eye data (Uni4Eye: 2D fundus + 3D OCT).

Both pipelines: find the inputs -> decode each once into an :class:`~medvit.shared.data.image_cache.ImageCache`
(every rank its share, in a thread pool; later epochs and later runs read the cache) and list every input with
its verdict in ``inputs.csv`` (an unreadable file is an ``error`` row, logged and skipped, never fatal) -> the
recipe's random augmentation on every access, reseeded per sample (:mod:`medvit.pretrain.data2d`) -> the
shared training loop (:func:`medvit.shared.engine.fit.fit`: AdamW, warmup + half-cosine, DDP under torchrun,
checkpoints, exact resume) -> the encoder(s) with sidecars, previews, ``plots/loss.png``.

**Chest X-rays** (:func:`run_images`; Xiao et al., "Delving into Masked Autoencoders for Multi-Label Thorax
Disease Classification", WACV 2023): radiographs found by :func:`~medvit.shared.data.folders.find_cxr_images`
(ChestX-ray14, CheXpert and MIMIC-CXR-JPG as released, frontal views; ``data.views_csv`` / ``data.split`` narrow
them; any other folder: every image and DICOM file), read by :func:`~medvit.shared.data.xray.read_xray` (8/16-bit
PNG/JPEG, DICOM CR/DX with VOI LUT and MONOCHROME1 inversion) and cached with the shorter side
``data.short_side``. Recipe (``cxr-*`` presets): RandomResizedCrop(224, scale (0.5, 1), bicubic) + horizontal
flip, [0, 1] normalised by mean 0.5056 / std 0.252, grey replicated to 3 channels (``data.in_chans=1`` for one),
mask ratio 0.9, AdamW (0.9, 0.95), weight decay 0.05, lr = 1.5e-4 x effective batch / 256, warmup 5% then
half-cosine. Colour photographs that are no fundus images (``auto`` on such a folder) take the same pipeline with
RGB reading.

**Eye** (:func:`run_eye`; Cai et al., Uni4Eye, MICCAI 2022; recipe from the successor Uni4Eye++ code): colour
fundus photographs and OCT volumes found by :func:`~medvit.shared.data.folders.find_eye_data`; photographs cropped
to their field of view (:func:`~medvit.shared.data.eye.read_fundus`), volumes read by
:func:`~medvit.shared.data.eye.read_oct` and resampled to ``data.volume_size`` (the preset's, 224 x 224 x 112).
Every step is one batch of ONE dimensionality; 2D and 3D steps interleave in proportion to the data (or
``data.ratio_2d``) through :class:`~medvit.pretrain.data2d.MixedBatches`; under DDP all ranks take the same kind at
each step and the model is wrapped with ``find_unused_parameters=True`` (each step leaves the other kind's patch
embedding, position table and heads without a gradient). 2D: RandomResizedCrop(scale 0.2-1) + flip, no
normalisation; 3D: flips, light noise, z-score. ``metrics.jsonl`` logs ``loss_intensity`` and ``loss_edge`` (and
``loss_2d`` / ``loss_3d``, the mean loss of each kind's steps in the logging interval). A numbered folder of colour
images that the folder scan takes for B-scans is read as photographs instead (OCT B-scans are grey).

Run directory::

    out/config.yaml  metrics.jsonl  summary.json  train.log  last.pt  ckpt_step*.pt   (engine)
    out/inputs.csv                          every input: path, dims, status (ok | error), shape, error
    out/encoder.safetensors + .json         2D MAE encoder; Uni4Eye: encoder_2d.* and encoder_3d.*
    out/previews/step_000200.png  latest.png     (Uni4Eye: *_2d.png with the gradient branch, *_3d.png OCT slices)
    out/plots/loss.png
    out/cache/                              decoded images / resampled volumes (data.cache_dir)

In Uni4Eye runs the loop's batch is one pre-collated batch, so ``samples_per_s`` in ``metrics.jsonl`` counts steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvit.pretrain.common import (
    InputStatus,
    MethodChoice,
    OptimPlan,
    check_inputs,
    check_run_dir,
    optim_plan,
    process_group,
    write_inputs_manifest,
)
from medvit.pretrain.config import PretrainConfig
from medvit.pretrain.data2d import ImageAugment, MixedBatches, VolumeAugment, stack_images, unwrap_batch
from medvit.pretrain.presets import ImageAugment as AugmentSpec
from medvit.pretrain.presets import Intensity, Preset, Recipe, build_model, get_preset
from medvit.pretrain.presets import VolumeAugment as VolumeSpec
from medvit.pretrain.preview import SamplePreviewHook
from medvit.shared.backbone.weights import load_pretrained, read_checkpoint, save_backbone
from medvit.shared.config import to_dict
from medvit.shared.data.image_cache import CachedImageDataset, ImageCache
from medvit.shared.engine import distributed as D
from medvit.shared.engine.fit import fit, resolve_device
from medvit.shared.errors import ConfigError, DataError, WeightsError

logger = logging.getLogger(__name__)

__all__ = ["Uni4EyeTask", "run_eye", "run_images"]

_THORAX = get_preset("mae", "cxr-vit-s").recipe  # the data recipe of 2D presets that carry none


# ---------------------------------------------------------------------------------------------------- shared steps
def _size_for(cfg: PretrainConfig, preset: Preset, patch: int) -> tuple[int, int]:
    size = tuple(int(s) for s in (cfg.data.crop_size or preset.crop_size))
    if len(size) != 2:
        raise ConfigError(f"data.crop_size: 2D images need 2 sizes (got {list(size)})")
    if any(s % patch for s in size):
        raise ConfigError(f"data.crop_size {list(size)} must be a multiple of the patch size {patch}")
    return size  # type: ignore[return-value]


def _patch_side(preset: Preset) -> int:
    from medvit.shared.backbone.registry import backbone_kwargs

    patch = preset.backbone_overrides.get("patch_size") or backbone_kwargs(preset.backbone)["patch_size"]
    return int(patch if isinstance(patch, int) else patch[0])


def _short_side(cfg: PretrainConfig, size: Sequence[int]) -> int:
    """The cached shorter side: ``data.short_side`` or the input size x 10/7 (224 -> 320)."""
    return int(cfg.data.short_side or math.ceil(max(size) * 10 / 7))


def _augment(spec: AugmentSpec, size: Sequence[int], in_chans: int, intensity: Intensity, train: bool) -> ImageAugment:
    return ImageAugment(
        size,
        scale=spec.crop_scale,
        ratio=spec.crop_ratio,
        interpolation=spec.interpolation,
        hflip=spec.hflip,
        in_chans=in_chans,
        mean=intensity.mean,
        std=intensity.std,
        train=train,
    )


def _scan(cfg: PretrainConfig, sources: Sequence[tuple[Path, int]], caches: dict[int, ImageCache]) -> list[InputStatus]:
    """Decode every input once into its cache; ``inputs.csv``; the usable ones.

    Raises:
        DataError: nothing found, or nothing usable.
    """
    out, main = Path(cfg.out), D.rank() == 0
    if not sources:
        raise DataError(f"{cfg.data_dir}: no images or volumes found")
    statuses = check_inputs(
        sources,
        lambda path, dims: caches[dims].get(path).shape,
        label="decode + cache",
        progress=main and not cfg.quiet,
    )
    if main:
        write_inputs_manifest(out / "inputs.csv", statuses, Path(cfg.data_dir))
    bad = [s for s in statuses if not s.ok]
    if bad and main:
        logger.warning(
            "%d of %d inputs skipped (listed in %s): %s",
            len(bad),
            len(statuses),
            out / "inputs.csv",
            "; ".join(f"{s.path.name}: {s.error}" for s in bad[:5]),
        )
    usable = [s for s in statuses if s.ok]
    if not usable:
        raise DataError(
            f"{cfg.data_dir}: none of the {len(statuses)} input(s) is usable (first: {bad[0].path.name}: "
            f"{bad[0].error}); see {out / 'inputs.csv'}"
        )
    return usable


def _load_init(model: nn.Module, encoder: nn.Module, path: Path) -> None:
    """``model.init``: a Uni4Eye(++) checkpoint into the whole model, anything else into the encoder."""
    try:
        sd, info = read_checkpoint(path)
        if "patch_embed.proj2.weight" in sd and hasattr(model, "patch_embed3"):
            from medvit.pretrain.uni4eye import load_uni4eye_checkpoint

            report = load_uni4eye_checkpoint(model, sd)  # type: ignore[arg-type]
        else:
            report = load_pretrained(encoder, path if info.get("sidecar") else sd)
    except WeightsError as err:
        raise WeightsError(f"model.init: {err}") from None
    logger.info("initialised from %s (%s)", path, report.summary())


class _OnFitEnd:
    """Engine hook calling ``fn(state)`` at the end of the fit on rank 0 (the exports)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def on_fit_end(self, state: Any) -> None:
        if state.rank == 0:
            self.fn(state)


def _resolved(cfg: PretrainConfig, choice: MethodChoice, opt: OptimPlan, extra: dict[str, Any]) -> dict[str, Any]:
    resolved = to_dict(cfg)
    t = opt.train
    resolved["resolved"] = {
        "method": choice.method,
        "method_reason": choice.reason,
        "preset": choice.preset,
        "lr": opt.lr,
        "lr_rule": opt.lr_rule,
        "warmup_fraction": t.warmup_fraction,
        "epochs": t.epochs,
        "steps": t.steps,
        **extra,
    }
    return resolved


# ---------------------------------------------------------------------------------------------------- 2D MAE
@dataclass(frozen=True)
class _ImagePlan:
    preset: Preset
    recipe: Recipe
    size: tuple[int, int]
    in_chans: int
    short_side: int
    opt: OptimPlan


def _plan_images(cfg: PretrainConfig, choice: MethodChoice) -> _ImagePlan:
    preset = get_preset("mae", choice.preset)
    if preset.spatial_dims != 2:
        raise ConfigError(
            f"model.preset: {preset.name!r} is a 3D preset; 2D images need a 2D one (cxr-vit-s, cxr-vit-b, cxr-tiny)"
        )
    recipe = preset.recipe or _THORAX
    assert recipe is not None and recipe.image is not None
    size = _size_for(cfg, preset, _patch_side(preset))
    default_chans = preset.backbone_overrides.get("in_chans", recipe.image.in_chans)
    in_chans = int(cfg.data.in_chans or default_chans)
    opt = optim_plan(cfg.train, preset, world=D.world_size())
    return _ImagePlan(preset, recipe, size, in_chans, _short_side(cfg, size), opt)


def _image_sources(cfg: PretrainConfig, reader: str) -> list[tuple[Path, int]]:
    """The radiographs (public layouts recognised, frontal views) or, for colour photographs, every image file."""
    from medvit.shared.data.folders import find_cxr_images
    from medvit.shared.data.io import IMAGE_SUFFIXES

    d = cfg.data
    if reader == "image":
        listing = find_cxr_images(cfg.data_dir, layout="plain", frontal_only=False)
        paths = [im.path for im in listing.images if im.path.name.lower().endswith(IMAGE_SUFFIXES)]
    else:
        listing = find_cxr_images(cfg.data_dir, frontal_only=d.frontal_only, views_csv=d.views_csv, split=d.split)
        paths = [im.path for im in listing.images]
    if D.rank() == 0:
        logger.info(
            "%d image(s), %s layout (%s; %d excluded)", len(paths), listing.layout, listing.note, listing.excluded
        )
    return [(p, 2) for p in paths]


def _mae_sidecar(plan: _ImagePlan, model: Any, reader: str, n_images: int) -> dict[str, Any]:
    spec = plan.recipe.image
    assert spec is not None
    meta = plan.preset.sidecar_metadata(2, plan.in_chans)
    meta.update(
        method="mae",
        modality=spec.modality if reader == "xray" else "photograph",
        in_chans=plan.in_chans,
        input_size=list(plan.size),
        intensity=spec.intensity.sidecar(plan.in_chans),
        mask_ratio=float(model.mask_ratio),
        norm_pix_loss=bool(model.norm_pix_loss),
        recipe=plan.recipe.to_dict(),
        pretrain_images=n_images,
    )
    if reader == "xray" and plan.in_chans == 3:
        meta["grayscale"] = "replicated to 3 channels"
    return meta


def run_images(cfg: PretrainConfig, choice: MethodChoice, *, resume: bool = False, hooks: Sequence[Any] = ()) -> Path:
    """2D MAE pretraining with the thorax recipe on a folder of chest X-rays (or photographs); see the module.

    Args:
        cfg: the resolved configuration.
        choice: from :func:`medvit.pretrain.api.choose_method` (method ``mae``, data ``2d``).
        resume: continue ``cfg.out`` from its last checkpoint.
        hooks: extra engine hooks.

    Returns:
        The run directory.

    Raises:
        DataError: no image found, none usable, or fewer than one batch.
        ConfigError: a 3D preset, sizes that are not multiples of the patch, bad options.
        TrainingError: checkpoints in ``out`` without ``resume`` (or none with it), non-finite loss.
    """
    plan = _plan_images(cfg, choice)
    out = Path(cfg.out)
    check_run_dir(out, resume)
    spec = plan.recipe.image
    assert spec is not None and isinstance(spec.augment, AugmentSpec)
    with process_group(resolve_device(plan.opt.loop.device)):
        main = D.rank() == 0
        kind = "xray" if choice.reader == "xray" else "image"
        cache = ImageCache(
            cfg.data.cache_dir or out / "cache", kind, short_side=plan.short_side, dtype=cfg.data.image_dtype
        )
        usable = _scan(cfg, _image_sources(cfg, choice.reader), {2: cache})
        _need_batch(cfg, len(usable), plan.opt.train.batch_size)
        augment = _augment(spec.augment, plan.size, plan.in_chans, spec.intensity, train=True)
        dataset = CachedImageDataset([s.path for s in usable], cache, augment)
        model = _mae_model(cfg, plan)
        if cfg.model.init is not None and not resume:
            _load_init(model, model.encoder, Path(cfg.model.init))
        all_hooks: list[Any] = list(hooks)
        if main:
            view = _augment(spec.augment, plan.size, plan.in_chans, spec.intensity, train=False)
            sample = view(cache.get(usable[0].path))[None]
            meta = _mae_sidecar(plan, model, choice.reader, len(usable))
            all_hooks += [
                SamplePreviewHook({"": sample}, plan.opt.train.preview_every, seed=plan.opt.train.seed),
                _OnFitEnd(lambda st: _export_mae(st, out / "encoder.safetensors", meta)),
            ]
            _log_images_start(plan, len(usable), model)
        extra = {"input_size": list(plan.size), "in_chans": plan.in_chans, "short_side": plan.short_side}
        extra["images"] = len(usable)
        fit(
            model,
            dataset,
            plan.opt.loop,
            out,
            collate_fn=stack_images,
            resume=resume,
            quiet=cfg.quiet,
            hooks=all_hooks,
            resolved_config=_resolved(cfg, choice, plan.opt, extra),
        )
    return out


def _need_batch(cfg: PretrainConfig, n: int, batch_size: int) -> None:
    world = D.world_size()
    if n < batch_size * world:
        raise DataError(
            f"{cfg.data_dir}: {n} usable image(s) are fewer than one batch "
            f"(--batch-size {batch_size} x {world} process(es)); lower --batch-size"
        )


def _mae_model(cfg: PretrainConfig, plan: _ImagePlan) -> nn.Module:
    torch.manual_seed(plan.opt.train.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    return build_model(
        plan.preset,
        mask_ratio=cfg.model.mask_ratio,
        norm_pix_loss=cfg.model.norm_pix_loss,
        img_size=list(plan.size),
        in_chans=plan.in_chans,
        drop_path_rate=cfg.model.drop_path_rate,
    )


def _export_mae(state: Any, path: Path, meta: dict[str, Any]) -> None:
    save_backbone(
        state.task.encoder, path, metadata={**meta, "pretrain_steps": int(state.step)}, source="medvit pretrain"
    )
    logger.info("encoder written to %s", path)


def _log_images_start(plan: _ImagePlan, n: int, model: Any) -> None:
    t = plan.opt.train
    logger.info(
        "mae (%s): %d image(s), %d per step of %s x %d channel(s), mask ratio %.2f, lr %.3g (%s)",
        plan.preset.name,
        n,
        t.batch_size * t.grad_accum * D.world_size(),
        "x".join(map(str, plan.size)),
        plan.in_chans,
        model.mask_ratio,
        plan.opt.lr,
        plan.opt.lr_rule,
    )


# ---------------------------------------------------------------------------------------------------- Uni4Eye
class Uni4EyeTask(nn.Module):
    """The Uni4Eye model as the training loop's task: tells :class:`~medvit.pretrain.data2d.MixedBatches` the epoch
    (``on_epoch_start``) and adds the loss of the step's kind (``loss_2d`` / ``loss_3d``) to the logs.

    Args:
        model: a :class:`~medvit.pretrain.uni4eye.Uni4Eye`.
        batches: the training set, or None (no epoch schedule to tell).
    """

    def __init__(self, model: nn.Module, batches: MixedBatches | None = None) -> None:
        super().__init__()
        self.model = model
        self._batches = batches

    def on_epoch_start(self, epoch: int) -> None:
        if self._batches is not None:
            self._batches.set_epoch(epoch)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch["image"]``: ``[B, C, H, W]`` or ``[B, 1, H, W, D]``; returns the model's output."""
        out = self.model(batch["image"])
        out["logs"][f"loss_{out['spatial_dims']}d"] = out["loss"].detach()
        return out


@dataclass(frozen=True)
class _EyePlan:
    preset: Preset
    recipe: Recipe
    size: tuple[int, int]
    volume: tuple[int, int, int]
    short_side: int
    batch_3d: int
    opt: OptimPlan


def _plan_eye(cfg: PretrainConfig, choice: MethodChoice) -> _EyePlan:
    base = get_preset("uni4eye", choice.preset)
    recipe = base.recipe
    if recipe is None or recipe.image is None or recipe.volume is None:
        raise ConfigError(f"model.preset: {base.name!r} has no Uni4Eye recipe")
    volume = tuple(int(v) for v in (cfg.data.volume_size or base.crop_size_3d or ()))
    patch = _patch_side(base)
    if len(volume) != 3 or any(v % patch for v in volume):
        raise ConfigError(f"data.volume_size {list(volume)} must be 3 multiples of the patch size {patch}")
    m = cfg.model
    preset = replace(
        base,
        crop_size_3d=volume,
        loss_weights=tuple(m.loss_weights) if m.loss_weights is not None else base.loss_weights,
        mask_strategy=m.mask_strategy or base.mask_strategy,
    )
    size = _size_for(cfg, preset, patch)
    t = cfg.train
    batch_3d = int(cfg.data.batch_size_3d or max(1, t.batch_size // 8))
    loop = {"batch_size": 1, "shuffle": False, "drop_last": False, "find_unused_parameters": True}
    opt = optim_plan(t, preset, world=D.world_size(), **loop)
    return _EyePlan(preset, recipe, size, volume, _short_side(cfg, size), batch_3d, opt)  # type: ignore[arg-type]


def _is_colour_stack(folder: Path) -> bool:
    """True when a "B-scan folder" holds colour pictures (OCT B-scans are grey): photographs, not a volume."""
    import cv2

    from medvit.shared.data.eye import list_bscans

    try:
        first = list_bscans(folder)[0]
    except Exception:  # noqa: BLE001 - reading the volume later names the problem
        return False
    img = cv2.imread(str(first), cv2.IMREAD_REDUCED_COLOR_4)
    if img is None:
        return False
    b, g, r = (img[..., i].astype("int16") for i in range(3))
    return max(float(abs(r - g).mean()), float(abs(g - b).mean())) > 4.0


def _eye_sources(cfg: PretrainConfig) -> list[tuple[Path, int]]:
    from medvit.shared.data.eye import list_bscans
    from medvit.shared.data.folders import find_eye_data

    listing = find_eye_data(cfg.data_dir)
    images, volumes = list(listing.images), []
    for v in listing.volumes:
        if v.kind == "bscan-folder" and _is_colour_stack(v.path):
            if D.rank() == 0:
                logger.warning("%s: numbered colour images, read as photographs (not OCT B-scans)", v.path)
            images += list_bscans(v.path)
        else:
            volumes.append(v.path)
    images.sort(key=lambda p: p.as_posix())
    if D.rank() == 0:
        logger.info("%d 2D image(s) and %d OCT volume(s) in %s", len(images), len(volumes), cfg.data_dir)
    return [(p, 2) for p in images] + [(p, 3) for p in volumes]


def _eye_caches(cfg: PretrainConfig, plan: _EyePlan) -> dict[int, ImageCache]:
    folder = cfg.data.cache_dir or Path(cfg.out) / "cache"
    return {
        2: ImageCache(folder, "fundus", short_side=plan.short_side, dtype="uint8"),
        3: ImageCache(folder, "oct", oct_shape=plan.volume, dtype="uint8"),
    }


def _eye_datasets(
    plan: _EyePlan, usable: Sequence[InputStatus], caches: dict[int, ImageCache], train: bool
) -> dict[int, CachedImageDataset | None]:
    """The 2D and 3D member datasets (None for a kind without usable inputs), with the recipe's augmentation."""
    img_spec, vol_spec = plan.recipe.image, plan.recipe.volume
    assert img_spec is not None and vol_spec is not None
    assert isinstance(img_spec.augment, AugmentSpec)
    aug = vol_spec.augment
    assert isinstance(aug, VolumeSpec)
    transforms = {
        2: _augment(img_spec.augment, plan.size, img_spec.in_chans, img_spec.intensity, train),
        3: VolumeAugment(flip=aug.flip, noise_prob=aug.noise_prob, noise_var=aug.noise_var, train=train),
    }
    out: dict[int, CachedImageDataset | None] = {}
    for k in (2, 3):
        paths = [s.path for s in usable if s.dims == k]
        out[k] = CachedImageDataset(paths, caches[k], transforms[k]) if paths else None
    return out


def _uni4eye_model(cfg: PretrainConfig, plan: _EyePlan) -> nn.Module:
    torch.manual_seed(plan.opt.train.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    return build_model(
        plan.preset,
        mask_ratio=cfg.model.mask_ratio,
        norm_pix_loss=cfg.model.norm_pix_loss,
        img_size=list(plan.size),
        drop_path_rate=cfg.model.drop_path_rate,
    )


def _eye_samples(plan: _EyePlan, usable: Sequence[InputStatus], caches: dict[int, ImageCache]) -> dict[str, Any]:
    """The preview inputs: the first usable image (centre, resized) and volume (no flips or noise)."""
    views = _eye_datasets(plan, usable, caches, train=False)
    samples: dict[str, Any] = {}
    for k, ds in views.items():
        if ds is not None:
            ds.reseed(plan.opt.train.seed)
            samples[f"{k}d"] = ds[0]["image"][None]
    return samples


def _eye_sidecars(plan: _EyePlan, model: Any, counts: dict[int, int], batches: MixedBatches) -> dict[str, Any]:
    common = {
        "preset": plan.preset.name,
        "mask_strategy": model.mask_strategy,
        "loss_weights": list(model.loss_weights),
        "norm_pix_loss": bool(model.norm_pix_loss),
        "recipe": plan.recipe.to_dict(),
        "pretrain_images": counts[2],
        "pretrain_volumes": counts[3],
        "steps_2d_per_epoch": batches.kinds.count(2),
        "steps_3d_per_epoch": batches.kinds.count(3),
    }
    meta_2d = {**plan.preset.sidecar_metadata(2), "input_size": list(plan.size)}
    meta_3d = {**plan.preset.sidecar_metadata(3), "input_size": list(plan.volume)}
    return {"metadata": common, "metadata_2d": meta_2d, "metadata_3d": meta_3d}


def _export_eye(state: Any, out: Path, sidecars: dict[str, Any]) -> None:
    from medvit.pretrain.uni4eye import export_encoders

    steps = {"pretrain_steps": int(state.step)}
    p2, p3 = export_encoders(
        state.task.model,
        out,
        metadata={**sidecars["metadata"], **steps},
        metadata_2d=sidecars["metadata_2d"],
        metadata_3d=sidecars["metadata_3d"],
    )
    logger.info("encoders written to %s and %s", p2, p3)


def run_eye(cfg: PretrainConfig, choice: MethodChoice, *, resume: bool = False, hooks: Sequence[Any] = ()) -> Path:
    """Uni4Eye pretraining on a folder of colour fundus photographs and/or OCT volumes; see the module.

    Args:
        cfg: the resolved configuration.
        choice: from :func:`medvit.pretrain.api.choose_method` (method ``uni4eye``).
        resume: continue ``cfg.out`` from its last checkpoint.
        hooks: extra engine hooks.

    Returns:
        The run directory.

    Raises:
        DataError: nothing found, none usable, or a kind with fewer inputs than one batch.
        ConfigError: sizes that are not multiples of the patch, a ratio asking for a kind without data, bad options.
        TrainingError: checkpoints in ``out`` without ``resume`` (or none with it), non-finite loss.
    """
    plan = _plan_eye(cfg, choice)
    out = Path(cfg.out)
    check_run_dir(out, resume)
    t = plan.opt.train
    with process_group(resolve_device(plan.opt.loop.device)):
        main = D.rank() == 0
        caches = _eye_caches(cfg, plan)
        usable = _scan(cfg, _eye_sources(cfg), caches)
        sets = _eye_datasets(plan, usable, caches, train=True)
        batches = MixedBatches(sets[2], sets[3], batch_2d=t.batch_size, batch_3d=plan.batch_3d,
                               world=D.world_size(), seed=t.seed, ratio_2d=cfg.data.ratio_2d)  # fmt: skip
        model = _uni4eye_model(cfg, plan)
        if cfg.model.init is not None and not resume:
            _load_init(model, model.encoder, Path(cfg.model.init))
        task = Uni4EyeTask(model, batches)
        counts = {k: sum(1 for s in usable if s.dims == k) for k in (2, 3)}
        all_hooks: list[Any] = list(hooks)
        if main:
            sidecars = _eye_sidecars(plan, model, counts, batches)
            all_hooks += [
                SamplePreviewHook(
                    _eye_samples(plan, usable, caches), t.preview_every, seed=t.seed, model_of=lambda task: task.model
                ),  # fmt: skip
                _OnFitEnd(lambda st: _export_eye(st, out, sidecars)),
            ]
            _log_eye_start(plan, counts, batches, model)
        extra = {"input_size": list(plan.size), "volume_size": list(plan.volume), "batch_size_3d": plan.batch_3d}
        extra |= {"images": counts[2], "volumes": counts[3], "steps_per_epoch": batches.steps_per_epoch}
        fit(task, batches, plan.opt.loop, out, collate_fn=unwrap_batch, resume=resume, quiet=cfg.quiet,
            hooks=all_hooks, resolved_config=_resolved(cfg, choice, plan.opt, extra))  # fmt: skip
    return out


def _log_eye_start(plan: _EyePlan, counts: dict[int, int], batches: MixedBatches, model: Any) -> None:
    t = plan.opt.train
    logger.info(
        "uni4eye (%s): %d image(s) of %s in batches of %d, %d volume(s) of %s in batches of %d; %d 2D + %d 3D "
        "steps per epoch; mask ratio %.2f (%s), loss weights %s, lr %.3g (%s)",
        plan.preset.name,
        counts[2],
        "x".join(map(str, plan.size)),
        t.batch_size,
        counts[3],
        "x".join(map(str, plan.volume)),
        plan.batch_3d,
        batches.kinds.count(2),
        batches.kinds.count(3),
        model.mask_ratio,
        model.mask_strategy,
        list(model.loss_weights),
        plan.opt.lr,
        plan.opt.lr_rule,
    )
