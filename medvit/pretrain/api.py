"""``run_pretrain``: self-supervised pretraining on a folder of raw images, the function behind ``medvit pretrain``.

The method follows the data unless ``model.method`` names one (:func:`choose_method`, which logs the choice and
why): 3D CT -> Hi-End-MAE (this module); 2D chest X-rays -> MAE with the thorax recipe and 2D colour fundus
photographs + 3D OCT -> Uni4Eye (:mod:`medvit.pretrain.pipeline2d`). ``--method`` always wins.

CT pipeline: find volumes (NIfTI, nnU-Net raw ``imagesTr/*_0000.nii.gz``, DICOM series; mixed) -> preprocess each
once (orientation, spacing, HU window, foreground crop; :mod:`medvit.shared.data.transforms`) into a disk cache
(:mod:`medvit.shared.data.cache`), skipping unreadable volumes with a warning -> random crops biased to tissue +
augmentation every step -> the method's model (:mod:`~medvit.pretrain.hi_end_mae` or :mod:`~medvit.pretrain.mae`)
trained by the shared engine (:func:`medvit.shared.engine.fit.fit`: AdamW, cosine LR, AMP, DDP under torchrun,
atomic checkpoints, resume) -> ``encoder.safetensors`` + sidecar, reconstruction previews, ``plots/loss.png``.

Run directory (CT)::

    out/config.yaml  metrics.jsonl  summary.json  last.pt  ckpt_step*.pt (engine)
    out/volumes.csv                                                       every input: ok | skipped: reason
    out/encoder.safetensors  out/encoder.json                             the encoder for downstream apps
    out/previews/step_000200.png  out/previews/latest.png                 reconstructions of a fixed crop
    out/plots/loss.png
    out/cache/                                                            preprocessed volumes (data.cache_dir)

The preview crop is the centre crop of the first usable volume after preprocessing, with the same mask at every
preview, so previews over a run are comparable (it is not held out from training: pretraining has no labels to
overfit and small archives cannot spare a volume).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.transforms import Compose

from medvit.pretrain.common import (
    MethodChoice,
    check_run_dir,
    failure_reason,
    gather_in_order,
    optim_plan,
    process_group,
)
from medvit.pretrain.config import PretrainConfig, TrainCfg
from medvit.pretrain.hi_end_mae import load_official_hi_end_mae
from medvit.pretrain.presets import Preset, build_model, get_preset
from medvit.pretrain.preview import PreviewHook, crop_center
from medvit.shared.backbone.registry import backbone_kwargs
from medvit.shared.backbone.weights import load_pretrained, read_checkpoint, save_backbone
from medvit.shared.config import to_dict
from medvit.shared.data.cache import CachedVolumeDataset, VolumeCache, transform_signature
from medvit.shared.data.scan import find_volumes
from medvit.shared.data.transforms import ct_augment, ct_preprocess, ct_random_crops
from medvit.shared.engine import distributed as D
from medvit.shared.engine.fit import TrainConfig, fit, resolve_device
from medvit.shared.engine.progress import ItemProgress
from medvit.shared.errors import ConfigError, DataError, WeightsError
from medvit.shared.files import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PRESETS", "MethodChoice", "VolumeStatus", "choose_method", "run_pretrain"]

DEFAULT_PRESETS: dict[str, str] = {"ct": "base", "2d": "cxr-vit-s", "eye": "uni4eye-vit-b"}
"""The preset of each pipeline when none is given: CT -> ``base`` (Hi-End-MAE or 3D MAE), 2D images -> the thorax
``cxr-vit-s`` (Medical MAE's ViT-S), eye -> ``uni4eye-vit-b`` (ViT-B; ``uni4eye-vit-l`` is the successor's size)."""

_SKIPPED = "skipped: "


@dataclass(frozen=True)
class VolumeStatus:
    """One input volume and whether it can be used.

    Attributes:
        case_id: unique name from the scan.
        path: file or DICOM folder.
        status: ``ok`` or ``skipped: <reason>``.
        shape: preprocessed shape ``[X, Y, Z]`` (ok only).
    """

    case_id: str
    path: Path
    status: str
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Plan:
    """What the config resolves to before any volume is read: method, model size, crop, optimisation."""

    method: str
    preset: Preset
    crop: tuple[int, int, int]
    train: TrainCfg  # the ``train:`` section with the default epochs filled in
    lr: float
    train_cfg: TrainConfig


# ---------------------------------------------------------------------------------------------------- the method
def _given_choice(data_dir: Path, method: str, preset: str | None) -> MethodChoice:
    """``--method`` given: the pipeline follows the method (for ``mae``, the preset's dimensionality or the data)."""
    if method == "hi-end-mae":
        return MethodChoice(method, "ct", preset or DEFAULT_PRESETS["ct"], "ct", "--method hi-end-mae", given=True)
    if method == "uni4eye":
        return MethodChoice(method, "eye", preset or DEFAULT_PRESETS["eye"], "eye", "--method uni4eye", given=True)
    if preset is not None:
        data = "ct" if get_preset("mae", preset).spatial_dims == 3 else "2d"
        why = f"--method mae with the {data.upper()} preset {preset}"
        return MethodChoice(method, data, preset, "ct" if data == "ct" else "xray", why, given=True)
    from medvit.shared.data.folders import classify_folder

    found = classify_folder(data_dir)
    data = "ct" if found["kind"] == "ct" else "2d"
    reader = "ct" if data == "ct" else "image" if found["kind"] == "photo" else "xray"
    why = f"--method mae; {'3D' if data == 'ct' else '2D'} from the data ({found['reason']})"
    return MethodChoice(method, data, DEFAULT_PRESETS[data], reader, why, given=True)


def _preset_choice(preset: str) -> MethodChoice:
    """``auto`` with a preset: the preset names the method (a CT size -> hi-end-mae, ``cxr-*`` and other 2D MAE
    presets -> mae, ``uni4eye-*`` -> uni4eye)."""
    from medvit.pretrain.presets import METHODS, list_presets

    owners = [m for m in METHODS if preset in list_presets(m)]
    if not owners:
        get_preset("mae", preset)  # raises, listing the valid names
    method = "hi-end-mae" if "hi-end-mae" in owners else owners[0]
    p = get_preset(method, preset)
    data = "eye" if method == "uni4eye" else "ct" if p.spatial_dims == 3 else "2d"
    reader = {"ct": "ct", "eye": "eye"}.get(data, "xray")
    return MethodChoice(method, data, preset, reader, f"preset {preset} is a {method} preset ({data} pipeline)")


def choose_method(data_dir: str | Path, method: str = "auto", preset: str | None = None) -> MethodChoice:
    """The method, pipeline and preset for a folder: ``--method`` when given, else what the data are.

    From the data (:func:`medvit.shared.data.folders.classify_folder`): 3D CT volumes -> ``hi-end-mae``; 2D chest
    X-rays (a public release layout, or grayscale images / DICOM CR/DX) -> ``mae`` with the thorax recipe
    (``cxr-vit-s`` unless ``preset``); 2D colour fundus photographs and/or 3D OCT volumes -> ``uni4eye``; other
    colour photographs -> ``mae`` on RGB images. A named method always wins; ``mae`` then still looks at the data
    (or at a given preset's dimensionality) to choose between the CT and the 2D pipeline. Without a method, a
    given preset names it (CT sizes ``paper``/``base``/``small``/``tiny`` -> hi-end-mae, as before this choice
    existed; ``cxr-*`` -> mae; ``uni4eye-*`` -> uni4eye) and the folder is not inspected.

    Args:
        data_dir: the input folder.
        method: ``auto``, ``hi-end-mae``, ``mae`` or ``uni4eye``.
        preset: a preset name, or None for the pipeline's default (:data:`DEFAULT_PRESETS`).

    Returns:
        The :class:`~medvit.pretrain.common.MethodChoice` (with the reason in one line).

    Raises:
        DataError: ``auto`` (or ``mae`` without a preset) on a folder without images or volumes.
        ConfigError: an unknown method or preset.
    """
    data_dir = Path(data_dir)
    if method != "auto":
        choice = _given_choice(data_dir, method, preset)
    elif preset is not None:
        choice = _preset_choice(preset)
    else:
        from medvit.shared.data.folders import classify_folder

        found = classify_folder(data_dir)
        data = {"hi-end-mae": "ct", "uni4eye": "eye"}.get(found["method"], "2d")
        reader = {"ct": "ct", "eye": "eye"}.get(data, "image" if found["kind"] == "photo" else "xray")
        why = f"chosen from the data: {found['reason']}"
        choice = MethodChoice(found["method"], data, DEFAULT_PRESETS[data], reader, why)
    get_preset(choice.method, choice.preset)  # an unknown preset fails here, naming the valid ones
    return choice


def _log_choice(choice: MethodChoice) -> None:
    if D.rank() == 0:
        logger.info("method %s, preset %s (%s)", choice.method, choice.preset, choice.reason)


def run_pretrain(
    cfg: PretrainConfig,
    *,
    resume: bool = False,
    hooks: Sequence[Any] = (),
) -> Path:
    """Pretrain an encoder on a folder of CT volumes.

    Works the same in one process and under ``torchrun --nproc_per_node=N`` (each rank calls this function).
    The pipeline follows :func:`choose_method`: CT volumes here, 2D images and eye data in
    :mod:`medvit.pretrain.pipeline2d` (``run_images``, ``run_eye``; their run directories are described there).

    Args:
        cfg: the resolved configuration.
        resume: continue ``cfg.out`` from its last checkpoint (same step count, same data position).
        hooks: extra engine hooks (``on_step_end`` / ``on_fit_end``), e.g. for tests or notebooks.

    Returns:
        The run directory.

    Raises:
        DataError: no input found or none usable (each one is listed in ``volumes.csv`` / ``inputs.csv``), or fewer
            inputs than one batch.
        ConfigError: unknown preset, a crop size that is not a multiple of the patch size, bad options.
        TrainingError: checkpoints in ``out`` without ``resume`` (or none with it), non-finite loss.
    """
    choice = choose_method(cfg.data_dir, cfg.model.method, cfg.model.preset)
    _log_choice(choice)
    if choice.data != "ct":
        from medvit.pretrain.pipeline2d import run_eye, run_images

        runner = run_images if choice.data == "2d" else run_eye
        return runner(cfg, choice, resume=resume, hooks=hooks)
    return _run_ct(cfg, choice, resume=resume, hooks=hooks)


def _run_ct(cfg: PretrainConfig, choice: MethodChoice, *, resume: bool, hooks: Sequence[Any]) -> Path:
    """The CT pipeline (see the module docstring)."""
    plan = _plan(cfg, choice)
    out = Path(cfg.out)
    check_run_dir(out, resume)  # before the (possibly long) preprocessing pass
    with process_group(resolve_device(plan.train_cfg.device)):
        main = D.rank() == 0
        preprocess, cache = _volume_cache(cfg)
        usable = _scan_and_preprocess(cfg, preprocess, cache, plan.train.batch_size)
        dataset = _training_set(cfg, plan.crop, usable, preprocess, cache)
        model = _model(cfg, plan, resume)
        all_hooks: list[Any] = list(hooks)
        if main:
            all_hooks += _preview_and_export_hooks(cfg, plan, usable, preprocess, cache, model)
        resolved = _resolved_config(cfg, plan, choice)
        if main:
            _log_start(plan, len(usable), resolved["resolved"]["crops_per_step"], model.mask_ratio)
        fit(
            model,
            dataset,
            plan.train_cfg,
            out,
            collate_fn=collate_crops,
            resume=resume,
            quiet=cfg.quiet,
            hooks=all_hooks,
            resolved_config=resolved,
        )
        if main:
            logger.info(
                "done: encoder %s, previews %s, loss plot %s",
                out / "encoder.safetensors",
                out / "previews",
                out / "plots" / "loss.png",
            )
    return out


# ---------------------------------------------------------------------------------------------------- the plan
def _plan(cfg: PretrainConfig, choice: MethodChoice) -> _Plan:
    preset = get_preset(choice.method, choice.preset)
    crop = _crop_size(cfg, preset)
    opt = optim_plan(cfg.train, preset, world=D.world_size())
    return _Plan(method=choice.method, preset=preset, crop=crop, train=opt.train, lr=opt.lr, train_cfg=opt.loop)


def _crop_size(cfg: PretrainConfig, preset: Preset) -> tuple[int, int, int]:
    if preset.spatial_dims != 3:
        raise ConfigError(
            f"model.preset: {preset.name!r} is a 2D preset; CT pretraining needs a 3D one "
            "(tiny, small, base, paper for hi-end-mae; tiny, small, base for mae)"
        )
    crop = tuple(int(c) for c in (cfg.data.crop_size or preset.crop_size))
    if len(crop) != 3:
        raise ConfigError(f"data.crop_size: CT crops need 3 sizes (got {list(crop)})")
    patch = preset.backbone_overrides.get("patch_size") or backbone_kwargs(preset.backbone)["patch_size"]
    patch = (patch,) * 3 if isinstance(patch, int) else tuple(patch)
    if any(c % p for c, p in zip(crop, patch, strict=True)):
        raise ConfigError(f"data.crop_size {list(crop)} must be a multiple of the patch size {list(patch)}")
    return crop  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- scan + preprocess (cached)
def _volume_cache(cfg: PretrainConfig) -> tuple[Any, VolumeCache]:
    """The preprocessing transform and the disk cache of its results (keyed by the transform's parameters)."""
    d = cfg.data
    params = {
        "spacing": list(d.spacing) if d.spacing else None,
        "hu_window": list(d.hu_window),
        "orientation": d.orientation,
        "crop_foreground": d.crop_foreground,
    }
    pre = ct_preprocess(
        spacing=d.spacing,
        hu_window=d.hu_window,
        orientation=d.orientation,
        crop_foreground=d.crop_foreground,
        load=True,
    )
    signature = transform_signature("ct_preprocess", **params)
    return pre, VolumeCache(d.cache_dir or Path(cfg.out) / "cache", signature, dtype=d.cache_dtype)


def _scan_and_preprocess(
    cfg: PretrainConfig, preprocess: Any, cache: VolumeCache, batch_size: int
) -> list[VolumeStatus]:
    """Find the volumes and preprocess each once (every rank its share; all ranks get every verdict); write
    ``volumes.csv`` and return the usable ones.

    Raises:
        DataError: none usable, or fewer than one batch.
    """
    out = Path(cfg.out)
    world, rank = D.world_size(), D.rank()
    main = rank == 0
    sources = find_volumes(cfg.data_dir)  # sorted: the same list on every rank
    mine = _check_volumes(
        sources[rank::world], cache, preprocess, progress=main and not cfg.quiet, workers=cfg.train.workers
    )
    statuses = gather_in_order(mine, len(sources), world)
    if main:
        _write_manifest(out / "volumes.csv", statuses)
    usable = [s for s in statuses if s.status == "ok"]
    skipped = [s for s in statuses if s.status != "ok"]
    if skipped and main:
        logger.warning(
            "%d of %d volumes skipped (listed in %s): %s",
            len(skipped),
            len(statuses),
            out / "volumes.csv",
            "; ".join(f"{s.path.name}: {s.status[len(_SKIPPED) :]}" for s in skipped[:5]),
        )
    if not usable:
        first = skipped[0].status[len(_SKIPPED) :] if skipped else "nothing found"
        raise DataError(
            f"{cfg.data_dir}: none of the {len(statuses)} volume(s) is usable (first: {skipped[0].path.name}: "
            f"{first}); see {out / 'volumes.csv'}"
        )
    if len(usable) < batch_size * world:
        raise DataError(
            f"{cfg.data_dir}: {len(usable)} usable volume(s) are fewer than one batch "
            f"(--batch-size {batch_size} x {world} process(es)); lower --batch-size"
        )
    return usable


def _check_volumes(
    sources: Sequence[Any], cache: Any, preprocess: Any, progress: bool, workers: int = 0
) -> list[VolumeStatus]:
    """Preprocess every volume once (filling the cache); unreadable or empty ones are marked skipped.

    With ``workers`` > 0 the pass runs in ``workers + 1`` processes (the training loader's processes and the main
    one are otherwise idle until it ends): decoding and resampling is most of a first epoch on raw CT.
    """
    out: list[VolumeStatus | None] = [None] * len(sources)
    processes = min(workers + 1, len(sources)) if workers > 0 else 1
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(ItemProgress(len(sources), "preprocess", enabled=progress))
        if processes > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = stack.enter_context(ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context(method)))
            check = functools.partial(_check_one, cache, preprocess)
            futures = {pool.submit(check, src.path): i for i, src in enumerate(sources)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    result = fut.result()
                except Exception as err:  # noqa: BLE001 - the worker process died (e.g. killed for memory)
                    result = (f"{_SKIPPED}preprocessing process failed ({type(err).__name__}: {err})", ())
                out[i] = _status(sources[i], result)
                bar.advance()
        else:
            for i, src in enumerate(sources):
                out[i] = _status(src, _check_one(cache, preprocess, src.path))
                bar.advance()
    return [s for s in out if s is not None]


def _check_one(cache: Any, preprocess: Any, path: Path) -> tuple[str, tuple[int, ...]]:
    """Preprocess one volume into the cache: ``("ok", shape)`` or ``("skipped: <reason>", ())`` (the reason is
    worked out where the error happened: a worker process's exception arrives wrapped)."""
    try:
        data = cache.get_or_compute(path, lambda p: preprocess({"image": str(p)}))
        img = data["image"]
        if img.numel() == 0 or float(img.max()) <= 0.0:
            raise DataError("no voxel inside the HU window (empty after windowing)")
        return "ok", tuple(int(s) for s in img.shape[1:])
    except Exception as err:  # noqa: BLE001 - one bad volume never stops the run; the reason is recorded
        return f"{_SKIPPED}{failure_reason(err)}", ()


def _status(src: Any, result: tuple[str, tuple[int, ...]]) -> VolumeStatus:
    status, shape = result
    if status != "ok":
        logger.warning("skipping %s: %s", src.rel, status[len(_SKIPPED) :])
    return VolumeStatus(src.case_id, src.path, status, shape)


def _write_manifest(path: Path, rows: Sequence[VolumeStatus]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "path", "status", "shape"])
    for r in rows:
        w.writerow([r.case_id, str(r.path), r.status, "x".join(map(str, r.shape))])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------- datasets
def _training_set(
    cfg: PretrainConfig, crop: Sequence[int], usable: Sequence[VolumeStatus], preprocess: Any, cache: VolumeCache
) -> CachedVolumeDataset:
    """Cached preprocessing + random crops biased to tissue and augmentation at every access."""
    d, a = cfg.data, cfg.data.augment
    random_tf = Compose(
        [
            ct_random_crops(crop, num_samples=d.crops_per_volume, pos=d.pos, neg=d.neg),
            ct_augment(
                prob_flip=a.prob_flip,
                prob_rot90=a.prob_rot90,
                intensity_scale=a.intensity_scale,
                intensity_shift=a.intensity_shift,
                prob_intensity=a.prob_intensity,
            ),
        ]
    )
    return CachedVolumeDataset([{"image": str(s.path)} for s in usable], preprocess, cache, random_tf)


def collate_crops(batch: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, torch.Tensor]:
    """Flatten ``batch_size`` lists of crops into ``{"image": [batch_size * crops, 1, X, Y, Z]}`` (plain tensors)."""
    crops = [c["image"] for item in batch for c in (item if isinstance(item, list) else [item])]
    return {"image": torch.stack([c.as_tensor() if hasattr(c, "as_tensor") else torch.as_tensor(c) for c in crops])}


# ---------------------------------------------------------------------------------------------------- model
def _model(cfg: PretrainConfig, plan: _Plan, resume: bool) -> torch.nn.Module:
    """The method's model (same initial weights on every rank), optionally initialised from ``model.init``."""
    torch.manual_seed(plan.train.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    model = build_model(
        plan.preset,
        mask_ratio=cfg.model.mask_ratio,
        norm_pix_loss=cfg.model.norm_pix_loss,
        img_size=list(plan.crop),
        drop_path_rate=cfg.model.drop_path_rate,
    )
    if cfg.model.init is not None and not resume:
        try:
            _load_init(model, Path(cfg.model.init), plan.method)
        except WeightsError as err:
            raise WeightsError(f"model.init: {err}") from None
    return model


def _load_init(model: torch.nn.Module, path: Path, method: str) -> None:
    sd, info = read_checkpoint(path)
    has_decoder = any(k.startswith(("decoder.", "encoder_to_decoder.")) for k in sd)
    if method == "hi-end-mae" and has_decoder:
        report = load_official_hi_end_mae(model, sd)
    else:
        # A medvit file is read again by path so that its sidecar decides the format; foreign ones by key signature.
        report = load_pretrained(model.encoder, path if info.get("sidecar") else sd)
    logger.info("initialised from %s (%s)", path, report.summary())


# ---------------------------------------------------------------------------------------------------- fit
def _preview_and_export_hooks(
    cfg: PretrainConfig,
    plan: _Plan,
    usable: Sequence[VolumeStatus],
    preprocess: Any,
    cache: VolumeCache,
    model: Any,
) -> list[Any]:
    """Rank 0's hooks: reconstruction previews of the first usable volume's centre crop, the encoder export."""
    first = cache.get_or_compute(usable[0].path, lambda p: preprocess({"image": str(p)}))["image"]
    first = first.as_tensor() if hasattr(first, "as_tensor") else torch.as_tensor(first)
    preview_crop = crop_center(first.float(), plan.crop)[None]
    meta = _sidecar_metadata(cfg, plan.method, plan.preset, plan.crop, model)
    meta["pretrain_volumes"] = len(usable)
    return [
        PreviewHook(preview_crop, plan.train.preview_every, seed=plan.train.seed),
        _ExportHook(Path(cfg.out) / "encoder.safetensors", meta),
    ]


def _resolved_config(cfg: PretrainConfig, plan: _Plan, choice: MethodChoice) -> dict[str, Any]:
    """``config.yaml`` of the run: the config as given plus what it resolved to."""
    t = plan.train
    resolved = to_dict(cfg)
    resolved["resolved"] = {
        "method": plan.method,
        "method_reason": choice.reason,
        "preset": plan.preset.name,
        "crop_size": list(plan.crop),
        "lr": plan.lr,
        "warmup_fraction": t.warmup_fraction,
        "epochs": t.epochs,
        "steps": t.steps,
        "crops_per_step": t.batch_size * cfg.data.crops_per_volume * t.grad_accum * D.world_size(),
    }
    return resolved


def _log_start(plan: _Plan, volumes: int, crops_per_step: int, mask_ratio: float) -> None:
    logger.info(
        "%s (%s): %d volume(s), %d crop(s) of %s per step, mask ratio %.2f",
        plan.method,
        plan.preset.name,
        volumes,
        crops_per_step,
        "x".join(map(str, plan.crop)),
        mask_ratio,
    )


# ---------------------------------------------------------------------------------------------------- export
class _ExportHook:
    """At the end of the fit (rank 0): ``encoder.safetensors`` + sidecar with everything a downstream app needs."""

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path = path
        self.metadata = metadata

    def on_fit_end(self, state: Any) -> None:
        if state.rank != 0:
            return
        meta = {**self.metadata, "pretrain_steps": int(state.step)}
        save_backbone(state.task.encoder, self.path, metadata=meta, source="medvit pretrain")
        logger.info("encoder written to %s", self.path)


def _sidecar_metadata(cfg: PretrainConfig, method: str, preset: Preset, crop: Sequence[int], model: Any) -> dict:
    d = cfg.data
    meta: dict[str, Any] = {
        "method": method,
        "preset": preset.name,
        "backbone": preset.backbone,
        "modality": "CT",
        "crop_size": list(crop),
        "spacing": list(d.spacing) if d.spacing else None,
        "orientation": d.orientation,
        "intensity": {
            "kind": "ct_hu_window",
            "a_min": float(d.hu_window[0]),
            "a_max": float(d.hu_window[1]),
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        "crop_foreground": d.crop_foreground,
        "mask_ratio": float(model.mask_ratio),
    }
    if method == "hi-end-mae":
        meta["taps"] = list(model.taps)  # 0-based blocks the decoder used (UNETR-style skips)
    return meta
