"""Thorax MAE pretraining speed: the training step against MONAI, and ``medvit pretrain`` end to end on X-ray files.

Part ``step``: one training step (forward + masked MSE on the removed patches + backward + AdamW) of the thorax
Medical MAE model (preset ``cxr-vit-s``: ViT-S/16 at 224^2, 3 channels, decoder 512 wide x 2 blocks, mask ratio
0.9) against the same model built from MONAI's ``monai.networks.nets.MaskedAutoEncoderViT`` (2D; same encoder and
decoder widths, depths, heads, MLP ratio 4, qkv bias, sin-cos tables, same mask ratio, same fused AdamW). Both
models live in one process and their timed steps alternate (after ``--warmup`` untimed steps each), so load from
other jobs hits both alike; the median of ``--steps`` steps is reported as images/s.

Part ``e2e``: ``medvit pretrain`` (:func:`medvit.pretrain.api.run_pretrain`, method ``mae``) on a folder of
``--images`` synthetic 1024^2 8-bit PNG chest X-rays (``synth_cxr``): a first run with an empty image cache (every
file decoded and resized once before training: "cold") and a second run on the filled cache ("warm"), each for
``--steps`` steps at ``--batch`` images, ``train.log_every=1``; images/s is the median over the steps after the
first of ``metrics.jsonl``'s ``samples_per_s`` (data loading, augmentation, step, logging; the final checkpoint
and previews are outside it). The reference is the same training loop on tensors already in memory (the same
images, cropped once, no reading or augmentation per step): the loader keeps the step fed when warm / preloaded
is >= 0.8. The time to fill the cache (decode + resize of every file) and the loader's own time per batch (cache
read + RandomResizedCrop + flip + normalisation, main process) are printed too.

Usage (on a CPU shared with other jobs, one thread per process: two OpenMP threads on two busy cores wait for each
other at every operator, which made a small model 60x slower in our runs)::

    OMP_NUM_THREADS=1 python benchmarks/pretrain_2d.py --batch 16 --steps 6 --images 40
    python benchmarks/pretrain_2d.py --part step --preset cxr-vit-b --batch 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- part step
def _monai_twin(ours: torch.nn.Module, preset: Any, mask_ratio: float) -> torch.nn.Module:
    from monai.networks.nets import MaskedAutoEncoderViT

    enc = ours.encoder
    return MaskedAutoEncoderViT(
        in_channels=enc.patch_embed.proj.in_channels,
        img_size=preset.crop_size,
        patch_size=enc.patch_embed.patch_size,
        hidden_size=enc.embed_dim,
        mlp_dim=4 * enc.embed_dim,
        num_layers=len(enc.blocks),
        num_heads=enc.num_heads,
        masking_ratio=mask_ratio,
        decoder_hidden_size=preset.decoder_embed_dim,
        decoder_mlp_dim=4 * preset.decoder_embed_dim,
        decoder_num_layers=preset.decoder_depth,
        decoder_num_heads=preset.decoder_num_heads,
        proj_type="conv",
        pos_embed_type="sincos",
        decoder_pos_embed_type="sincos",
        qkv_bias=True,
        spatial_dims=2,
    )


class _Side:
    """One model with its optimizer and input batch, ready to take timed training steps."""

    def __init__(self, side: str, args: argparse.Namespace, device: torch.device) -> None:
        from medvit.pretrain.presets import build_model, get_preset

        torch.manual_seed(0)
        self.side, self.device = side, device
        self.preset = get_preset("mae", args.preset)
        ours = build_model(self.preset, mask_ratio=args.mask_ratio)
        self.model = ours if side == "medvit" else _monai_twin(ours, self.preset, args.mask_ratio)
        self.model.to(device).train()
        self.params_m = sum(p.numel() for p in self.model.parameters()) / 1e6
        params = [p for p in self.model.parameters() if p.requires_grad]
        fused = device.type in ("cpu", "cuda")
        self.opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=fused)
        self.x = torch.randn(args.batch, 3, *self.preset.crop_size, device=device)
        self.bf16 = args.precision == "bf16"

    def loss(self) -> torch.Tensor:
        from medvit.pretrain.mae import masked_mse, patchify

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.side == "medvit":
                return self.model(self.x)["loss"]
            pred, mask = self.model(self.x)
            return masked_mse(pred.float(), patchify(self.x, self.model.patch_size), mask.float())

    def step(self) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        self.loss().float().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - t0


def part_step(args: argparse.Namespace) -> dict[str, Any]:
    """medvit MAE vs MONAI MaskedAutoEncoderViT, steps interleaved; median step time and images/s per side."""
    device = torch.device(args.device)
    sides = {name: _Side(name, args, device) for name in ("medvit", "monai")}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for side in sides.values():
        for _ in range(args.warmup):
            side.step()
    for i in range(args.steps):
        for name in ("medvit", "monai") if i % 2 == 0 else ("monai", "medvit"):
            times[name].append(sides[name].step())
    out = {}
    for name, side in sides.items():
        step_s = statistics.median(times[name])
        out[name] = {"params_m": side.params_m, "step_s": step_s, "images_per_s": args.batch / step_s}
        out[name]["step_s_all"] = [round(t, 3) for t in times[name]]
    return out


# ---------------------------------------------------------------------------------------------------- part e2e
def _config(data: Path, out: Path, cache: Path, args: argparse.Namespace) -> Any:
    from medvit.pretrain.config import PretrainConfig
    from medvit.shared.config import load_config

    overrides = ["train.log_every=1", "train.preview_every=0", f"data.cache_dir={cache}"]
    overrides.append(f"train.workers={args.workers}")
    options = {"data_dir": data, "out": out, "model.method": "mae", "model.preset": args.preset, "quiet": True}
    options |= {"train.steps": args.steps, "train.batch_size": args.batch, "train.device": args.device}
    options |= {"train.precision": args.precision}
    return load_config(PretrainConfig, None, overrides, **options)


def _step_rate(run: Path) -> float:
    """Median ``samples_per_s`` of the logged steps after the first (which includes the loader's start)."""
    rates = [json.loads(line)["samples_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[1:] or rates)


def _timed_run(cfg: Any) -> dict[str, Any]:
    from medvit.pretrain.api import run_pretrain

    t0 = time.perf_counter()
    run = run_pretrain(cfg)
    total = time.perf_counter() - t0
    fit_wall = json.loads((run / "summary.json").read_text())["wall_time_s"]
    return {"images_per_s": _step_rate(run), "command_s": total, "before_fit_s": total - fit_wall}


class _Preloaded:
    """The same images, cropped once and held as tensors: the loop's input with no reading or augmentation."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.tensors[i]}


def _loader_and_preloaded(cfg: Any, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The loader's own time per batch (main process) and the loop's images/s on preloaded tensors."""
    from medvit.pretrain.common import optim_plan
    from medvit.pretrain.data2d import ImageAugment, stack_images
    from medvit.pretrain.presets import build_model, get_preset
    from medvit.shared.data.folders import find_cxr_images
    from medvit.shared.data.image_cache import CachedImageDataset, ImageCache
    from medvit.shared.engine.fit import SeededSamples, fit, sample_seed

    preset = get_preset("mae", args.preset)
    spec = preset.recipe.image
    paths = [im.path for im in find_cxr_images(cfg.data_dir).images]
    cache = ImageCache(cfg.data.cache_dir, "xray", short_side=int(-(-preset.crop_size[0] * 10 // 7)))
    aug = ImageAugment(
        preset.crop_size, scale=spec.augment.crop_scale, mean=spec.intensity.mean, std=spec.intensity.std
    )
    data = SeededSamples(CachedImageDataset(paths, cache, aug))
    n = min(len(paths), args.batch * 3)
    t0 = time.perf_counter()
    items = [data[(i % len(paths), sample_seed(0, 0, i))] for i in range(n)]
    stack_images(items)
    per_batch = (time.perf_counter() - t0) / n * args.batch
    tensors = [data[(i, sample_seed(0, 0, i))]["image"] for i in range(len(paths))]
    torch.manual_seed(0)
    model = build_model(preset, mask_ratio=args.mask_ratio)
    loop = optim_plan(cfg.train, preset, world=1).loop
    fit(model, _Preloaded(tensors), loop, out, collate_fn=stack_images, quiet=True)
    return {"loader_s_per_batch": per_batch, "preloaded_images_per_s": _step_rate(out)}


def part_e2e(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from medvit.shared.data.synth_xray import synth_cxr

    data, cache = work / "cxr", work / "cache"
    t0 = time.perf_counter()
    synth_cxr(data, n=args.images, size=args.size, seed=0)
    made = time.perf_counter() - t0
    cold = _timed_run(_config(data, work / "cold", cache, args))
    warm = _timed_run(_config(data, work / "warm", cache, args))
    ref = _loader_and_preloaded(_config(data, work / "pre", cache, args), work / "pre", args)
    return {"synth_s": made, "cold": cold, "warm": warm, **ref}


# ---------------------------------------------------------------------------------------------------- report
def _report(args: argparse.Namespace, step: dict[str, Any] | None, e2e: dict[str, Any] | None) -> None:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"machine: {name}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"preset {args.preset}, batch {args.batch}, mask ratio {args.mask_ratio}, {args.precision}")
    if step:
        import monai

        print(f"training step, median of {args.steps} interleaved steps (MONAI {monai.__version__}):")
        print(f"  {'model':<30}{'params M':>9}{'step s':>9}{'images/s':>10}")
        for label, key in (("medvit MAE", "medvit"), ("MONAI MaskedAutoEncoderViT", "monai")):
            r = step[key]
            print(f"  {label:<30}{r['params_m']:>9.1f}{r['step_s']:>9.3f}{r['images_per_s']:>10.2f}")
        print(f"  images/s medvit / MONAI: {step['medvit']['images_per_s'] / step['monai']['images_per_s']:.2f}")
    if e2e:
        pre = e2e["preloaded_images_per_s"]
        n, side = args.images, args.size
        print(f"medvit pretrain, {n} PNG X-rays of {side}^2, {args.steps} steps, workers {args.workers}:")
        for key in ("cold", "warm"):
            r = e2e[key]
            print(
                f"  cache {key}: {r['images_per_s']:.2f} images/s in the loop ({r['images_per_s'] / pre:.2f}x "
                f"preloaded); {r['before_fit_s']:.1f} s before the first step (scan, decode/cache, model)"
            )
        print(f"  preloaded tensors: {pre:.2f} images/s; loader alone {e2e['loader_s_per_batch'] * 1e3:.0f} ms/batch")
        print(f"  warm / preloaded: {e2e['warm']['images_per_s'] / pre:.2f} (target >= 0.8)")
    print(json.dumps({"step": step, "e2e": e2e}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("step", "e2e", "both"), default="both")
    ap.add_argument("--preset", default="cxr-vit-s", help="cxr-vit-s | cxr-vit-b | cxr-tiny")
    ap.add_argument("--batch", type=int, default=16, help="images per step")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (part step) / training steps (part e2e)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (part step)")
    ap.add_argument("--mask-ratio", type=float, default=0.9)
    ap.add_argument("--images", type=int, default=40, help="X-ray files (part e2e)")
    ap.add_argument("--size", type=int, default=1024, help="side of the X-ray files in pixels (part e2e)")
    ap.add_argument("--workers", type=int, default=0, help="data loader processes (part e2e)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    step = part_step(args) if args.part in ("step", "both") else None
    e2e = None
    if args.part in ("e2e", "both"):
        work = args.keep or Path(tempfile.mkdtemp(prefix="pretrain2d_"))
        try:
            e2e = part_e2e(args, work)
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
    _report(args, step, e2e)


if __name__ == "__main__":
    main()
