"""``medvit pretrain`` end to end on raw CT volumes vs the MONAI-tutorial pipeline feeding the same model: crops/s.

Data: ``--volumes`` synthetic CT scans (``synth_ct``) of ``--shape`` voxels at 0.75 x 0.75 x 2.5 mm, int16
``.nii.gz``: the raw files a user points ``medvit pretrain`` at. Both sides train the same Hi-End-MAE model
(``--preset``, seeded init, fused AdamW as the engine builds it, fp32) on 96^3 crops, ``--batch`` volumes per step
with ``--crops`` crops each, for ``--epochs`` epochs, with ``--workers`` data-loader processes.

* **medvit**: :func:`medvit.pretrain.api.run_pretrain` as ``medvit pretrain DIR --preset P`` runs it: one pass
  decodes and preprocesses every volume into the run's float16 cache (RAS, 1.5 mm, HU window, foreground crop),
  then the engine trains from the cache (random crops biased to tissue, flips, rot90, intensity).
* **MONAI**: what a Hi-End-MAE user writes from the tutorials: ``LoadImaged -> EnsureChannelFirstd ->
  Orientationd(RAS) -> Spacingd(1.5, bilinear) -> ScaleIntensityRanged(-175..250 -> 0..1, clip) ->
  CropForegroundd -> RandCropByPosNegLabeld(96^3, label_key="image", pos 6, neg 2) -> RandFlipd x3 ->
  RandRotate90d -> RandScaleIntensityd -> RandShiftIntensityd``, in a ``monai.data.Dataset`` (``--monai dataset``:
  every epoch decodes again) or a ``CacheDataset`` (``--monai cache``: the deterministic part held in RAM as
  float32), a ``DataLoader`` with the same workers, and the same model step.

Crops/s per epoch: epoch 1 counts from the start (medvit: its preprocessing pass; MONAI: ``CacheDataset``'s
caching), later epochs from the end of the previous one; the last epoch includes each side's final checkpoint
(medvit's engine writes one; the MONAI side ``torch.save``s model and optimizer). Each side runs in its own
subprocess (peak RSS). The first epoch's rate depends on decoding; the later ones are what a long pretraining run
sees. ``--keep DIR`` keeps the work folder and reuses its volumes on the next run.

Usage (2 cores: one thread for the model, one loader process)::

    OMP_NUM_THREADS=1 python benchmarks/pretrain_ct_pipeline.py --volumes 4 --shape 512,512,160 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import peak_rss_mib


def _epoch_rates(t0: float, step_ends: list[float], steps_per_epoch: int, crops_per_step: int) -> list[float]:
    """Crops/s of each whole epoch from step end times (epoch 1 from ``t0``)."""
    rates, start = [], t0
    for e in range(len(step_ends) // steps_per_epoch):
        end = step_ends[(e + 1) * steps_per_epoch - 1]
        rates.append(steps_per_epoch * crops_per_step / (end - start))
        start = end
    return rates


# ------------------------------------------------------------------------------------------------ medvit
class _StepClock:
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, state: Any) -> None:
        self.ends.append(time.perf_counter())


def run_medvit(args: argparse.Namespace) -> dict[str, Any]:
    from medvit.pretrain.api import run_pretrain
    from medvit.pretrain.config import PretrainConfig
    from medvit.shared.config import load_config

    steps_per_epoch = args.volumes // args.batch
    overrides = [
        "train.log_every=1000000",
        "train.preview_every=0",
        f"train.workers={args.workers}",
        f"train.ckpt_every={steps_per_epoch * args.epochs}",
        f"data.crops_per_volume={args.crops}",
    ]
    options = {"data_dir": Path(args.data), "out": Path(args.out), "model.method": "hi-end-mae"}
    options |= {"model.preset": args.preset, "quiet": True, "train.device": "cpu", "train.precision": "fp32"}
    options |= {"train.steps": steps_per_epoch * args.epochs, "train.batch_size": args.batch}
    cfg = load_config(PretrainConfig, None, overrides, **options)
    clock = _StepClock()
    t0 = time.perf_counter()
    run_pretrain(cfg, hooks=[clock])
    rates = _epoch_rates(t0, clock.ends, steps_per_epoch, args.batch * args.crops)
    return {"epoch_crops_per_s": rates, "peak_rss_mib": peak_rss_mib()}


# ------------------------------------------------------------------------------------------------ MONAI
def run_monai(args: argparse.Namespace) -> dict[str, Any]:
    from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        ScaleIntensityRanged,
        Spacingd,
        ToTensord,
    )

    from medvit.pretrain.presets import build_model, get_preset

    t0 = time.perf_counter()
    k = "image"
    deterministic = [
        LoadImaged(k),
        EnsureChannelFirstd(k),
        Orientationd(k, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(k, pixdim=(1.5, 1.5, 1.5), mode="bilinear"),
        ScaleIntensityRanged(k, a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(k, source_key=k, allow_smaller=True),
    ]
    random = [
        RandCropByPosNegLabeld(k, label_key=k, spatial_size=(96, 96, 96), pos=6, neg=2, num_samples=args.crops),
        RandFlipd(k, prob=0.5, spatial_axis=0),
        RandFlipd(k, prob=0.5, spatial_axis=1),
        RandFlipd(k, prob=0.5, spatial_axis=2),
        RandRotate90d(k, prob=0.3, max_k=3),
        RandScaleIntensityd(k, factors=0.1, prob=0.1),
        RandShiftIntensityd(k, offsets=0.1, prob=0.1),
        ToTensord(k),
    ]
    files = [{k: str(p)} for p in sorted(Path(args.data).glob("*.nii.gz"))]
    if args.monai == "cache":
        ds: Any = CacheDataset(files, Compose(deterministic + random), cache_rate=1.0, num_workers=max(args.workers, 1))
    else:
        ds = Dataset(files, Compose(deterministic + random))
    loader = DataLoader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        collate_fn=list_data_collate,
        persistent_workers=args.workers > 0,
    )
    torch.manual_seed(0)
    model = build_model(get_preset("hi-end-mae", args.preset)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    ends = []
    for _ in range(args.epochs):
        for batch in loader:
            loss = model({"image": batch[k].as_tensor() if hasattr(batch[k], "as_tensor") else batch[k]})["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            ends.append(time.perf_counter())
    # medvit's run ends with its checkpoint (model + optimizer, written atomically); a tutorial run saves too
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, Path(args.out) / "last.pt")
    ends[-1] = time.perf_counter()
    rates = _epoch_rates(t0, ends, len(files) // args.batch, args.batch * args.crops)
    return {"epoch_crops_per_s": rates, "peak_rss_mib": peak_rss_mib()}


# ------------------------------------------------------------------------------------------------ driver
def _make_data(args: argparse.Namespace, work: Path) -> Path:
    from medvit.shared.data.synth import synth_ct

    raw = work / "raw"  # the unlabeled archive: images only
    if raw.is_dir() and len(list(raw.glob("*.nii.gz"))) == args.volumes:
        return raw
    shape = tuple(int(s) for s in args.shape.split(","))
    synth_ct(work / "synth", n=args.volumes, seed=3, shape=shape, spacing=(0.75, 0.75, 2.5), n_organs=(3, 5))
    raw.mkdir()
    for f in sorted((work / "synth" / "imagesTr").glob("*.nii.gz")):
        os.symlink(f, raw / f.name)
    return raw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=4)
    p.add_argument("--shape", default="512,512,160", help="X,Y,Z voxels at 0.75 x 0.75 x 2.5 mm")
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=1, help="volumes per step")
    p.add_argument("--crops", type=int, default=4, help="crops per volume")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--monai", choices=["dataset", "cache", "both"], default="both")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    p.add_argument("--side", choices=["medvit", "monai"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        result = run_medvit(args) if args.side == "medvit" else run_monai(args)
        print(json.dumps(result))
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="pretrain_ct_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    data = _make_data(args, work)
    sides = [("medvit", None)] + [
        ("monai", m) for m in (["dataset", "cache"] if args.monai == "both" else [args.monai])
    ]
    results = {}
    for side, variant in sides:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--data", str(data)]
        cmd += ["--out", str(work / f"run_{side}_{variant}")]
        if variant:
            cmd += ["--monai", variant]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[f"{side}" + (f" ({variant})" if variant else "")] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"medvit pretrain vs MONAI-tutorial pipeline: {args.volumes} volumes {args.shape} at 0.75x0.75x2.5 mm, "
        f"preset {args.preset}, {args.batch} volume(s) x {args.crops} crops per step, {args.epochs} epochs, "
        f"workers {args.workers}, threads {torch.get_num_threads()}, {platform.processor()}"
    )
    print("| pipeline | " + " | ".join(f"epoch {i + 1} crops/s" for i in range(args.epochs)) + " | peak RSS MiB |")
    print("|---|" + "---|" * args.epochs + "---|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in r["epoch_crops_per_s"]) + f" | {r['peak_rss_mib']:.0f} |")
    ours = results["medvit"]["epoch_crops_per_s"]
    for name, r in results.items():
        if name != "medvit":
            later = [o / m for o, m in zip(ours[1:], r["epoch_crops_per_s"][1:], strict=True)]
            print(
                f"medvit / {name}: epoch 1 {ours[0] / r['epoch_crops_per_s'][0]:.2f}, later epochs "
                + ", ".join(f"{v:.2f}" for v in later)
            )
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
