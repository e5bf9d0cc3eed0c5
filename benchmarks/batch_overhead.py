"""Throughput overhead of the batch-job runner vs a plain for-loop doing the same work.

Work per item (deliberately tiny, so the runner's own cost is what shows): read a small PNG with opencv,
standardise it with numpy, save it as ``.npy``. The plain loop writes outputs directly (no temp + rename, no
manifest, no skip check); the runner adds atomic writes, the manifest (journal + snapshots), progress
accounting and, with workers > 0, the prefetch threads. Also timed: a rerun where every item is skipped
(the cost of resuming). Runs alternate and the best of ``--repeats`` is kept, because the machine is shared.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/batch_overhead.py --n 500``
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medvit.shared.engine.batch import BatchJob, common_root, output_relpath, resolve_inputs, run_batch


def work(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32)
    return (x - x.mean()) / (x.std() + 1e-6)


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot decode {path}")
    return img


class NpyJob(BatchJob):
    description = "png -> npy"

    def __init__(self, root: Path) -> None:
        self.root = root

    def outputs_for(self, item: Path) -> list[Path]:
        return [output_relpath(item, self.root, ".npy")]

    def load(self, item: Path) -> np.ndarray:
        return read(item)

    def process(self, item: Path, loaded: np.ndarray, tmp_outputs: list[Path]) -> Mapping[str, Any]:
        np.save(tmp_outputs[0], work(loaded))
        return {}


def plain_loop(files: list[Path], root: Path, out: Path) -> None:
    for f in files:
        dst = out / output_relpath(f, root, ".npy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        np.save(dst, work(read(f)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="number of PNGs")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "png"
        rng = np.random.default_rng(0)
        for i in range(args.n):
            sub = src / f"d{i % 10}"
            sub.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(sub / f"img{i:05d}.png"), rng.integers(0, 256, (args.size, args.size), dtype=np.uint8))
        files = resolve_inputs(src, [".png"])
        root = common_root(files)

        variants = {
            "plain loop": lambda out: plain_loop(files, root, out),
            "run_batch workers=0": lambda out: run_batch(NpyJob(root), files, out, workers=0, quiet=True),
            "run_batch workers=2": lambda out: run_batch(NpyJob(root), files, out, workers=2, quiet=True),
        }
        best = {name: float("inf") for name in [*variants, "rerun, all skipped"]}
        for rep in range(args.repeats):
            for name, fn in variants.items():
                out = Path(tmp) / f"out{rep}_{name.replace(' ', '_')}"
                t0 = time.perf_counter()
                fn(out)
                best[name] = min(best[name], time.perf_counter() - t0)
                if name == "run_batch workers=2":
                    t0 = time.perf_counter()
                    s = run_batch(NpyJob(root), files, out, quiet=True)
                    best["rerun, all skipped"] = min(best["rerun, all skipped"], time.perf_counter() - t0)
                    assert s.skipped == args.n, s
                shutil.rmtree(out)

    cpu = platform.processor() or platform.machine()
    print(f"{args.n} PNGs {args.size}x{args.size}, best of {args.repeats}, {cpu}")
    base = args.n / best["plain loop"]
    for name, seconds in best.items():
        rate = args.n / seconds
        print(f"{name:22s} {rate:9.0f} items/s  {seconds * 1e3:8.1f} ms  ratio vs plain {rate / base:5.2f}")


if __name__ == "__main__":
    main()
