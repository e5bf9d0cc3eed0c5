"""Speed-up of the preprocessed-volume cache (:mod:`medvit.shared.data.cache`) for CT training epochs.

Writes ``--n`` synthetic CT volumes (int16 HU: air, a body ellipse with noise, lungs, a spine; anisotropic
spacing) as ``.nii.gz`` into a temp folder, then iterates a :class:`CachedVolumeDataset` with the standard CT
recipe (``ct_preprocess``: RAS, 1.5 mm, HU window, foreground crop; then ``ct_random_crops``) for:
    * a plain epoch without cache (decode + preprocess, for reference),
    * epoch 1 with an empty cache (decode + preprocess + write float16 .npy),
    * epoch 2 from the cache (read .npy; the random crops still run).
Epoch 2 reads files just written, so they are likely in the OS page cache, as on a machine with enough RAM for
the dataset; on a cold disk it is bounded by reading about 2 bytes per voxel.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/data_cache.py --n 8``
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medvit.shared.data.cache import CachedVolumeDataset, VolumeCache, transform_signature
from medvit.shared.data.transforms import ct_preprocess, ct_random_crops


def synth_ct(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """int16 HU volume ``[X, Y, Z]``: air, body ellipse (soft tissue + noise), two lungs, a spine."""
    nx, ny, nz = shape
    x = np.linspace(-1, 1, nx)[:, None]
    y = np.linspace(-1, 1, ny)[None, :]
    vol = np.full(shape, -1000.0, np.float32)
    body = (x / 0.85) ** 2 + (y / 0.6) ** 2 <= 1
    lungs = ((x - 0.35) / 0.25) ** 2 + (y / 0.35) ** 2 <= 1
    lungs |= ((x + 0.35) / 0.25) ** 2 + (y / 0.35) ** 2 <= 1
    spine = x**2 + ((y + 0.4) / 0.12) ** 2 <= 0.012
    vol[body] = 40.0
    vol[lungs & body] = -820.0
    vol[spine] = 700.0
    vol += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    return np.clip(vol, -1024, 3071).astype(np.int16)


def run_epoch(ds: CachedVolumeDataset) -> float:
    t0 = time.perf_counter()
    for i in range(len(ds)):
        crops = ds[i]
        assert all(c["image"].shape[1:] == crops[0]["image"].shape[1:] for c in crops)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="number of volumes")
    ap.add_argument("--shape", type=int, nargs=3, default=(256, 256, 120))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.7, 0.7, 2.5))
    ap.add_argument("--roi", type=int, default=96)
    ap.add_argument("--samples", type=int, default=2, help="random crops per volume")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs of the three epochs")
    ap.add_argument("--workdir", type=Path, default=None, help="folder for volumes and cache (default: a temp dir)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medvit-cache-bench-", dir=args.workdir))
    try:
        rng = np.random.default_rng(0)
        affine = np.diag([-args.spacing[0], -args.spacing[1], args.spacing[2], 1.0])  # LPS-like storage
        files = []
        for i in range(args.n):
            p = work / f"case_{i:03d}_0000.nii.gz"
            nib.save(nib.Nifti1Image(synth_ct(tuple(args.shape), rng), affine), p)
            files.append(p)
        nii_mb = sum(f.stat().st_size for f in files) / args.n / 2**20

        params = {"spacing": [1.5] * 3, "hu_window": [-175, 250], "orientation": "RAS", "crop_foreground": True}
        pre = ct_preprocess(spacing=(1.5, 1.5, 1.5), hu_window=(-175, 250), load=True)
        crops = ct_random_crops(roi=(args.roi,) * 3, num_samples=args.samples)
        crops.set_random_state(seed=0)
        signature = transform_signature("ct_preprocess", **params)

        crops(pre({"image": files[0]}))  # warm-up: first-call costs (lazy imports, allocator) stay out of the timings
        t_plain, t1, t2 = [], [], []
        for _ in range(args.repeats):  # best of several: the machine is shared
            shutil.rmtree(work / "cache", ignore_errors=True)
            cache = VolumeCache(work / "cache", signature)
            t_plain.append(run_epoch(CachedVolumeDataset(files, pre, None, crops)))
            ds = CachedVolumeDataset(files, pre, cache, crops)
            t1.append(run_epoch(ds))
            t2.append(run_epoch(ds))
            assert cache.stats["misses"] == args.n and cache.stats["hits"] == args.n, cache.stats
        t_plain, t1, t2 = min(t_plain), min(t1), min(t2)
        npy_mb = sum(f.stat().st_size for f in (work / "cache").glob("*.npy")) / args.n / 2**20
        out_shape = tuple(ds[0][0]["image"].shape)

        n = args.n
        print(
            f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
            f"os.cpu_count()={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
        )
        print(
            f"volumes: {n} x {tuple(args.shape)} int16 at {tuple(args.spacing)} mm, .nii.gz {nii_mb:.1f} MiB each; "
            f"cache .npy (float16) {npy_mb:.1f} MiB each; {args.samples} crops of {args.roi}^3 per volume "
            f"({out_shape})"
        )
        print()
        print(
            "| volumes | no cache s/vol | epoch 1 (decode+preprocess+write) s/vol | epoch 2 (cache) s/vol | speed-up |"
        )
        print("|---|---|---|---|---|")
        print(f"| {n} | {t_plain / n:.3f} | {t1 / n:.3f} | {t2 / n:.3f} | {t1 / t2:.1f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
