"""``run_pretrain``: self-supervised pretraining on a folder of raw CT, the typed function behind ``medvit pretrain``.

Pipeline: find volumes (NIfTI, nnU-Net raw ``imagesTr/*_0000.nii.gz``, DICOM series; mixed) -> preprocess each
once (orientation, spacing, HU window, foreground crop; :mod:`medvit.shared.data.transforms`) into a disk cache
(:mod:`medvit.shared.data.cache`), skipping unreadable volumes with a warning -> random crops biased to tissue +
augmentation every step -> the method's model (:mod:`~medvit.pretrain.hi_end_mae` or :mod:`~medvit.pretrain.mae`)
trained by the shared engine (:func:`medvit.shared.engine.fit.fit`: AdamW, cosine LR, AMP, DDP under torchrun,
atomic checkpoints, resume) -> ``encoder.safetensors`` + sidecar, reconstruction previews, ``plots/loss.png``.

Run directory::

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

import csv
import io
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from medvit.pretrain.config import DEFAULT_EPOCHS, PretrainConfig
from medvit.pretrain.presets import Preset, build_model, get_preset
from medvit.shared.errors import ConfigError, DataError, MedvitError, TrainingError, WeightsError

logger = logging.getLogger(__name__)

__all__ = ["VolumeStatus", "resolve_method", "run_pretrain"]


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


def resolve_method(method: str) -> str:
    """``auto`` -> the method for the data: 3D CT volumes -> ``hi-end-mae`` (the only kind the command reads)."""
    return "hi-end-mae" if method == "auto" else method


def _crop_size(cfg: PretrainConfig, preset: Preset) -> tuple[int, int, int]:
    if preset.spatial_dims != 3:
        raise ConfigError(
            f"model.preset: {preset.name!r} is a 2D preset; CT pretraining needs a 3D one "
            "(tiny, small, base, paper for hi-end-mae; tiny, small, base for mae)"
        )
    crop = tuple(int(c) for c in (cfg.data.crop_size or preset.crop_size))
    from medvit.shared.backbone.registry import backbone_kwargs

    patch = preset.backbone_overrides.get("patch_size") or backbone_kwargs(preset.backbone)["patch_size"]
    patch = (patch,) * 3 if isinstance(patch, int) else tuple(patch)
    if any(c % p for c, p in zip(crop, patch, strict=True)):
        raise ConfigError(f"data.crop_size {list(crop)} must be a multiple of the patch size {list(patch)}")
    return crop  # type: ignore[return-value]


def _preprocess(cfg: PretrainConfig) -> tuple[Any, str]:
    from medvit.shared.data.cache import transform_signature
    from medvit.shared.data.transforms import ct_preprocess

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
    return pre, transform_signature("ct_preprocess", **params)


def _reason(err: BaseException) -> str:
    """One line for a failed volume: our reader's message if MONAI wrapped it ("applying transform ..."), else the
    innermost error."""
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, MedvitError):
            return str(e).strip().splitlines()[0]
    inner = chain[-1]
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


def _check_volumes(sources: Sequence[Any], cache: Any, preprocess: Any, progress: bool) -> list[VolumeStatus]:
    """Preprocess every volume once (filling the cache); unreadable or empty ones are marked skipped."""
    from rich.progress import track

    out: list[VolumeStatus] = []
    show = progress and sys.stdout.isatty()
    iterator = track(sources, description="preprocess") if show else sources
    for i, src in enumerate(iterator):
        try:
            data = cache.get_or_compute(src.path, lambda p: preprocess({"image": str(p)}))
            img = data["image"]
            if img.numel() == 0 or float(img.max()) <= 0.0:
                raise DataError("no voxel inside the HU window (empty after windowing)")
            out.append(VolumeStatus(src.case_id, src.path, "ok", tuple(int(s) for s in img.shape[1:])))
        except Exception as err:  # noqa: BLE001 - one bad volume never stops the run; the reason is recorded
            reason = _reason(err)
            logger.warning("skipping %s: %s", src.rel, reason)
            out.append(VolumeStatus(src.case_id, src.path, f"skipped: {reason}"))
        if progress and not show and (i + 1) % 50 == 0:
            logger.info("preprocessed %d/%d volumes", i + 1, len(sources))
    return out


def _gather_statuses(mine: list[VolumeStatus], total: int, world: int) -> list[VolumeStatus]:
    """Statuses of every volume in scan order, from each rank's share ``sources[rank::world]``."""
    if world == 1:
        return mine
    import torch.distributed as dist

    shares: list[Any] = [None] * world
    dist.all_gather_object(shares, mine)
    out: list[VolumeStatus] = []
    for i in range(total):
        out.append(shares[i % world][i // world])
    return out


def _write_manifest(path: Path, rows: Sequence[VolumeStatus]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "path", "status", "shape"])
    for r in rows:
        w.writerow([r.case_id, str(r.path), r.status, "x".join(map(str, r.shape))])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def collate_crops(batch: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, torch.Tensor]:
    """Flatten ``batch_size`` lists of crops into ``{"image": [batch_size * crops, 1, X, Y, Z]}`` (plain tensors)."""
    crops = [c["image"] for item in batch for c in (item if isinstance(item, list) else [item])]
    return {"image": torch.stack([c.as_tensor() if hasattr(c, "as_tensor") else torch.as_tensor(c) for c in crops])}


class _ExportHook:
    """At the end of the fit (rank 0): ``encoder.safetensors`` + sidecar with everything a downstream app needs."""

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path = path
        self.metadata = metadata

    def on_fit_end(self, state: Any) -> None:
        if state.rank != 0:
            return
        from medvit.shared.backbone.weights import save_backbone

        meta = {**self.metadata, "pretrain_steps": int(state.step)}
        save_backbone(state.task.encoder, self.path, metadata=meta, source="medvit pretrain")
        logger.info("encoder written to %s", self.path)


def _load_init(model: torch.nn.Module, path: Path, method: str) -> None:
    from medvit.shared.backbone.weights import load_pretrained, read_checkpoint

    sd, info = read_checkpoint(path)
    has_decoder = any(k.startswith(("decoder.", "encoder_to_decoder.")) for k in sd)
    if method == "hi-end-mae" and has_decoder:
        from medvit.pretrain.hi_end_mae import load_official_hi_end_mae

        report = load_official_hi_end_mae(model, sd)
    else:
        # A medvit file is read again by path so that its sidecar decides the format; foreign ones by key signature.
        report = load_pretrained(model.encoder, path if info.get("sidecar") else sd)
    logger.info("initialised from %s (%s)", path, report.summary())


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


def run_pretrain(
    cfg: PretrainConfig,
    *,
    resume: bool = False,
    hooks: Sequence[Any] = (),
) -> Path:
    """Pretrain an encoder on a folder of CT volumes.

    Works the same in one process and under ``torchrun --nproc_per_node=N`` (each rank calls this function).

    Args:
        cfg: the resolved configuration.
        resume: continue ``cfg.out`` from its last checkpoint (same step count, same data position).
        hooks: extra engine hooks (``on_step_end`` / ``on_fit_end``), e.g. for tests or notebooks.

    Returns:
        The run directory.

    Raises:
        DataError: no volume found or none usable (each skipped one is listed in ``volumes.csv``), or fewer
            volumes than one batch.
        ConfigError: unknown preset, a crop size that is not a multiple of the patch size, bad options.
        TrainingError: checkpoints in ``out`` without ``resume`` (or none with it), non-finite loss.
    """
    from medvit.shared.data.cache import CachedVolumeDataset, VolumeCache
    from medvit.shared.data.scan import find_volumes
    from medvit.shared.engine import distributed as D
    from medvit.shared.engine.fit import TrainConfig, fit, resolve_device
    from medvit.shared.engine.rundir import RunDir

    method = resolve_method(cfg.model.method)
    preset = get_preset(method, cfg.model.preset)
    crop = _crop_size(cfg, preset)
    out = Path(cfg.out)
    t = cfg.train
    if t.steps is None and t.epochs is None:
        t = replace(t, epochs=DEFAULT_EPOCHS)
    lr = t.lr if t.lr is not None else preset.lr
    train_cfg = TrainConfig.from_section(t, lr=lr, betas=tuple(t.betas))
    # Fail before the (possibly long) preprocessing pass if the run directory cannot be used.
    run = RunDir(out)
    if not resume and run.has_checkpoints():
        raise TrainingError(
            f"{out} already holds checkpoints of a previous run; pass --resume to continue it or choose another --out"
        )
    if resume and not run.has_checkpoints():
        raise TrainingError(f"--resume: no checkpoint to resume from in {out} (no last.pt)")

    device = resolve_device(train_cfg.device)
    had_group = D.is_initialized()
    D.init_distributed(str(device))
    owns_group = D.is_initialized() and not had_group
    ok = False
    try:
        main = D.rank() == 0
        preprocess, signature = _preprocess(cfg)
        cache = VolumeCache(cfg.data.cache_dir or out / "cache", signature, dtype=cfg.data.cache_dtype)

        # ---- every volume is read and cached once, each rank taking its share; all ranks get every verdict
        world = D.world_size()
        sources = find_volumes(cfg.data_dir)  # sorted: the same list on every rank
        mine = _check_volumes(sources[D.rank() :: world], cache, preprocess, progress=main and not cfg.quiet)
        statuses = _gather_statuses(mine, len(sources), world)
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
                "; ".join(f"{s.path.name}: {s.status[len('skipped: ') :]}" for s in skipped[:5]),
            )
        if not usable:
            first = skipped[0].status[len("skipped: ") :] if skipped else "nothing found"
            raise DataError(
                f"{cfg.data_dir}: none of the {len(statuses)} volume(s) is usable (first: {skipped[0].path.name}: "
                f"{first}); see {out / 'volumes.csv'}"
            )
        if len(usable) < t.batch_size * world:
            raise DataError(
                f"{cfg.data_dir}: {len(usable)} usable volume(s) are fewer than one batch "
                f"(--batch-size {t.batch_size} x {world} process(es)); lower --batch-size"
            )

        # ---- data: cached preprocessing + random crops/augmentation every access
        from monai.transforms import Compose

        from medvit.shared.data.transforms import ct_augment, ct_random_crops

        a = cfg.data.augment
        random_tf = Compose(
            [
                ct_random_crops(crop, num_samples=cfg.data.crops_per_volume, pos=cfg.data.pos, neg=cfg.data.neg),
                ct_augment(
                    prob_flip=a.prob_flip,
                    prob_rot90=a.prob_rot90,
                    intensity_scale=a.intensity_scale,
                    intensity_shift=a.intensity_shift,
                    prob_intensity=a.prob_intensity,
                ),
            ]
        )
        dataset = CachedVolumeDataset([{"image": str(s.path)} for s in usable], preprocess, cache, random_tf)

        # ---- model
        torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        model = build_model(
            preset,
            mask_ratio=cfg.model.mask_ratio,
            norm_pix_loss=cfg.model.norm_pix_loss,
            img_size=list(crop),
            drop_path_rate=cfg.model.drop_path_rate,
        )
        if cfg.model.init is not None and not resume:
            try:
                _load_init(model, Path(cfg.model.init), method)
            except WeightsError as err:
                raise WeightsError(f"model.init: {err}") from None

        # ---- hooks: previews and the encoder export on rank 0
        all_hooks: list[Any] = list(hooks)
        if main:
            from medvit.pretrain.preview import PreviewHook, crop_center

            first = cache.get_or_compute(usable[0].path, lambda p: preprocess({"image": str(p)}))["image"]
            first = first.as_tensor() if hasattr(first, "as_tensor") else torch.as_tensor(first)
            preview_crop = crop_center(first.float(), crop)[None]
            all_hooks.append(PreviewHook(preview_crop, t.preview_every, seed=t.seed))
            meta = _sidecar_metadata(cfg, method, preset, crop, model)
            meta["pretrain_volumes"] = len(usable)
            all_hooks.append(_ExportHook(out / "encoder.safetensors", meta))

        from medvit.shared.config import to_dict

        resolved = to_dict(cfg)
        resolved["resolved"] = {
            "method": method,
            "crop_size": list(crop),
            "lr": lr,
            "epochs": t.epochs,
            "steps": t.steps,
            "crops_per_step": t.batch_size * cfg.data.crops_per_volume * t.grad_accum * world,
        }
        if main:
            logger.info(
                "%s (%s): %d volume(s), %d crop(s) of %s per step, mask ratio %.2f",
                method,
                preset.name,
                len(usable),
                resolved["resolved"]["crops_per_step"],
                "x".join(map(str, crop)),
                model.mask_ratio,
            )
        fit(
            model,
            dataset,
            train_cfg,
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
        ok = True
        return out
    finally:
        if owns_group:
            if ok:
                D.cleanup()
            else:
                try:
                    D.cleanup(barrier=False)
                except Exception:  # noqa: BLE001 - already failing; keep the original error
                    logger.debug("process group teardown failed", exc_info=True)
