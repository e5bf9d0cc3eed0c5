"""Throughput of ``medvit fiqa score --aligned`` vs the bare model forward, and the model's share of matmul peak.

Three numbers from one run (the machine is shared, so only ratios within a run are meaningful):

1. **bare forward**: the ViT-FIQA model (default ViT-S: 512 wide, 12 blocks, patch 9 on 112 px) on tensors that
   are already decoded, normalised and in memory, in batches of ``--batch-size``, under ``inference_mode``;
2. **score**: the full command path, :func:`medvit.apps.fiqa.api.score` with ``aligned=True`` on a folder of
   ``--n`` JPEG crops: listing, decoding in ``--workers`` loader threads overlapped with the forward pass, the
   manifest, ``scores.csv``, the histogram and the contact sheet. Its fixed cost (model load, plots) is
   measured on a small folder and reported separately; the steady-state rate excludes it;
3. **FLOP/s**: model FLOPs per image from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per MAC) times
   the bare-forward rate, against a square fp32 ``torch.mm`` peak measured in the same process.

Target: score >= 0.8 x bare forward (IO hidden behind compute).

Usage: ``python benchmarks/fiqa_score.py --n 512 --batch-size 64 --workers 2`` (``--backbone test_vit_fiqa`` for
a quick check; ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def make_crops(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` random-texture 112x112 JPEG crops (content does not matter for speed; JPEG decode cost does)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC)
    for i in range(n):
        img = np.roll(base, (i % 37, i % 53), axis=(0, 1))
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` fp32 GFLOP/s of a square matmul."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = 0.0
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        best = max(best, 2 * size**3 / dt / 1e9)
    return best


def model_flops(model: torch.nn.Module, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, 112, 112, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x)
    return float(fc.get_total_flops())


def bare_forward(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Images/s of the forward pass on preloaded tensors (best of two passes)."""
    best = 0.0
    with torch.inference_mode():
        model(x[:batch_size].to(device))  # warm-up
        for _ in range(2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(0, x.shape[0], batch_size):
                model(x[i : i + batch_size].to(device, non_blocking=True))
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, x.shape[0] / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="crops to score")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="loader threads of the score command")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--backbone", default="vit_fiqa_small_patch9_112")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from medvit.apps.fiqa.api import score
    from medvit.apps.fiqa.data import read_face_file
    from medvit.apps.fiqa.model import build_fiqa_model, preprocess_faces, save_fiqa

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="fiqa_bench_"))
    try:
        model = build_fiqa_model(args.backbone).eval()
        weights = save_fiqa(model, tmp / "model.safetensors")
        model = model.to(device)
        crops = tmp / "crops"
        make_crops(crops, args.n)
        make_crops(tmp / "small", 16)
        files = sorted(crops.glob("*.jpg"))
        x = preprocess_faces(np.stack([read_face_file(f) for f in files]))

        flops = model_flops(model, device)
        peak = matmul_peak(device)
        fwd = bare_forward(model, x, args.batch_size, device)

        def run(folder: Path, out: Path) -> float:
            t0 = time.perf_counter()
            res = score(
                folder, out, weights=weights, aligned=True, batch_size=args.batch_size, workers=args.workers,
                threads=args.threads, device=args.device, quiet=True, overwrite=True,
            )  # fmt: skip
            assert res.faces == len(list(folder.glob("*.jpg"))), res.line
            return time.perf_counter() - t0

        fixed = run(tmp / "small", tmp / "out_small")
        total = run(crops, tmp / "out")
        steady = (args.n - 16) / max(total - fixed, 1e-9)  # the small run scored 16 crops
        end_to_end = args.n / total
        gflops = flops / 1e9
        print(f"# fiqa score benchmark ({platform.node()}, {platform.processor() or platform.machine()})")
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
        print(f"backbone {args.backbone}")
        print(f"n={args.n} batch={args.batch_size} workers={args.workers}")
        print()
        print("| measure | value |")
        print("|---|---|")
        print(f"| model GFLOP / image (2 per MAC) | {gflops:.2f} |")
        print(f"| fp32 matmul peak (GFLOP/s) | {peak:.1f} |")
        print(f"| bare forward on preloaded tensors (img/s) | {fwd:.1f} |")
        print(f"| model FLOP/s as share of matmul peak | {gflops * fwd / peak:.0%} |")
        print(f"| `fiqa score --aligned`, steady state (img/s) | {steady:.1f} |")
        print(f"| `fiqa score --aligned`, end to end incl. {fixed:.1f} s fixed cost (img/s) | {end_to_end:.1f} |")
        print(f"| score / bare forward (steady state; target >= 0.8) | {steady / fwd:.2f} |")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
