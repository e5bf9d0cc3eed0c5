"""Throughput and memory of ``medvit cell predict`` on a large image vs the bare forward pass of its network.

Two numbers from one run (the machine is shared, so only ratios within a run are meaningful):

1. **bare forward**: the network on tiles that are already decoded, normalised and in memory, in batches of
   ``--batch-size``, under ``inference_mode`` (tiles/s);
2. **predict**: the full command path, :func:`medvit.apps.cell_seg.api.predict` on one ``--size`` x ``--size`` PNG
   (a synthetic H&E mosaic): decoding, tiling with overlap, tissue detection, reading tiles in threads, the forward
   passes, post-processing in ``--workers`` processes overlapped with them, the streaming merge of nuclei across
   tile borders, GeoJSON + CSV + labels + overlay, the manifest. Its tiles/s counts the tiles the network ran.

Also the share of the command's time spent in the forward pass (timed inside :class:`CellInference.forward`), the
peak resident memory of the process (``ru_maxrss``) and the number of nuclei written.

Target: predict >= 0.8 x bare forward (post-processing and I/O hidden behind the network).

The network is the run's (``--run``) or, without one, a randomly initialised CellVTA of ``--preset`` (``tiny`` by
default) whose outputs are replaced by a fixed nucleus map (``--oracle``, default on for random weights) so that the
post-processing sees a realistic number of nuclei (random weights would give none or noise).

Usage: ``python benchmarks/cell_predict.py --size 4096 --preset small --batch-size 8 --workers 2``
(``--size 1024 --preset tiny`` for a quick check; ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import logging
import platform
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def make_mosaic(path: Path, size: int, seed: int = 0) -> None:
    """A ``size`` x ``size`` H&E-like PNG made of synthetic 256 px tiles (nuclei everywhere, as dense tissue)."""
    from medvit.shared.data.synth_cells import draw_cells_image

    rng = np.random.default_rng(seed)
    tile = 256
    canvas = np.zeros((size, size, 3), np.uint8)
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            img = draw_cells_image(rng, (tile, tile))[0]
            canvas[y : y + tile, x : x + tile] = np.asarray(img, np.uint8)[: size - y, : size - x]
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def build_run(folder: Path, preset: str) -> Path:
    """A run folder holding a randomly initialised network of ``preset`` (model.json + model.safetensors)."""
    from medvit.apps.cell_seg.config import load_cell_config
    from medvit.apps.cell_seg.model_file import build_new_model, new_model_spec, save_run_model
    from medvit.shared.config import to_dict

    cfg = load_cell_config(preset)
    m = cfg.model
    names = ["Background", "Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"]
    model = build_new_model(m.backbone, m.backbone_overrides, m.adapter_kwargs(), 5, 19)
    spec = new_model_spec(
        model,
        adapter=m.adapter_kwargs(),
        nuclei_types=names,
        tissue_types=[f"t{i}" for i in range(19)],
        magnification=40,
        mpp=0.25,
        infer=to_dict(cfg.infer),
        start_weights=None,
        dataset="benchmark",
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_run_model(folder / "model.safetensors", model.state_dict(), spec)
    return folder


def oracle_forward(inference: object) -> None:
    """Replace the network's maps by blobs of a fixed pattern (the cost of the network is kept: it still runs)."""
    from medvit.apps.cell_seg.targets import hv_map

    original = inference.forward  # type: ignore[attr-defined]

    def forward(tiles: list[np.ndarray]) -> list[tuple]:
        out = original(tiles)
        faked = []
        for rgb, (_, hv, types, mag) in zip(tiles, out, strict=True):
            dark = (cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) < 110).astype(np.uint8)
            _, blobs = cv2.connectedComponents(dark)
            types = np.zeros_like(types)
            types[1] = dark
            types[0] = 1 - dark
            faked.append((dark.astype(np.float32), hv_map(blobs).astype(hv.dtype), types, mag))
        return faked

    inference.forward = forward  # type: ignore[attr-defined]


def bare_forward(run: Path, tiles: int, batch: int, tile: int, device: str) -> float:
    """Tiles/s of the network alone on in-memory normalised tiles."""
    from medvit.apps.cell_seg.model_file import load_run_model

    model, _ = load_run_model(run)
    dev = torch.device(device)
    model.to(dev)
    x = torch.randn(batch, 3, tile, tile, device=dev)
    with torch.inference_mode():
        model(x)  # warm-up
        n, t0 = 0, time.perf_counter()
        while n < tiles:
            model(x)
            n += batch
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def timed_predict(run: Path, image: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """Run ``cell predict`` once; tiles/s, forward share, cells."""
    import csv

    from medvit.apps.cell_seg import predict as predict_mod

    forward_s = [0.0]
    make = predict_mod._inference

    def inference(*a: object, **kw: object) -> object:
        inf = make(*a, **kw)
        if args.oracle:
            oracle_forward(inf)
        inner = inf.forward

        def timed(tiles: list[np.ndarray]) -> list[tuple]:
            t = time.perf_counter()
            res = inner(tiles)
            forward_s[0] += time.perf_counter() - t
            return res

        inf.forward = timed
        return inf

    predict_mod._inference = inference
    t0 = time.perf_counter()
    predict_mod.predict(
        run, image, out, batch_size=args.batch_size, workers=args.workers, device=args.device, quiet=True
    )
    total = time.perf_counter() - t0
    predict_mod._inference = make
    row = next(csv.DictReader((out / "manifest.csv").open()))
    return {
        "tiles": float(row["tiles"]),
        "cells": float(row["cells"]),
        "seconds": total,
        "tiles_per_s": float(row["tiles"]) / total,
        "forward_share": forward_s[0] / total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--run", type=Path, default=None, help="A trained run (default: random weights of --preset).")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        run = args.run or build_run(tmpdir / "run", args.preset)
        args.oracle = args.run is None if args.oracle is None else args.oracle
        image = tmpdir / "mosaic.png"
        make_mosaic(image, args.size)
        res = timed_predict(run, image, tmpdir / "pred", args)
        from medvit.apps.cell_seg.model_file import read_spec

        tile = int(read_spec(run)[0]["infer"]["tile"])
        n_bare = min(max(int(res["tiles"]), 4 * args.batch_size), 16 * args.batch_size)
        bare = bare_forward(run, n_bare, args.batch_size, tile, args.device)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"image {args.size}^2, preset {args.preset}, tile {tile}, batch {args.batch_size}, workers {args.workers}")
    print(f"bare forward : {bare:8.1f} tiles/s")
    print(
        f"cell predict : {res['tiles_per_s']:8.1f} tiles/s  ({res['tiles']:.0f} tiles, {res['cells']:.0f} nuclei, "
        f"{res['seconds']:.1f} s; forward {100 * res['forward_share']:.0f} % of it)"
    )
    print(f"ratio        : {res['tiles_per_s'] / bare:8.2f}  (target >= 0.8)")
    print(f"peak RSS     : {peak_mb:8.0f} MB")


if __name__ == "__main__":
    main()
