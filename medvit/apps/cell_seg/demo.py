"""The cell part of ``medvit demo``: synthetic H&E tiles -> ``cell prepare`` -> train tiny -> predict -> evaluate.

The tiles are written in the PanNuke release format (:func:`~medvit.shared.data.synth_cells.synth_cells`) so that
``cell prepare pannuke`` runs as a user would run it on the real release; prediction covers held-out tiles and a
larger image cut into overlapping tiles (tiling and the de-duplication of nuclei cut by tile borders run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from medvit.apps.cell_seg.config import load_cell_config
from medvit.apps.cell_seg.evaluate import evaluate
from medvit.apps.cell_seg.predict import predict
from medvit.apps.cell_seg.prepare import prepare
from medvit.apps.cell_seg.train import train
from medvit.shared.data.synth_cells import synth_cells

__all__ = ["DEMO_TILES", "run_demo"]

DEMO_TILES = 120
"""Synthetic 64 px tiles over 3 folds: 80 train (folds 1-2), 40 held out (fold 3)."""


def run_demo(out: str | os.PathLike[str], *, quiet: bool = False, steps: int = 200) -> dict[str, Any]:
    """Train the tiny preset on synthetic tiles and score held-out ones (see the module docstring).

    Returns:
        ``{"bpq", "mpq": image-averaged on the held-out fold, "overlay": the stitched image's overlay PNG,
        "geojson": its QuPath detections, "run": the run directory, "cells": cells found in the stitched image}``.
    """
    root = Path(out) / "cell"
    synth_cells(root / "release", n=DEMO_TILES, size=64, seed=0, large=1)
    prepare("pannuke", root / "release", root / "prepared")
    cfg = load_cell_config(
        "tiny", overrides=["data.train_folds=[fold1,fold2]", "data.val_folds=[]"], **{"optim.steps": steps}
    )
    run = root / "run"
    train(cfg, root / "prepared", out=run, resume=(run / "last.pt").is_file(), quiet=quiet)
    inputs = root / "inputs"
    inputs.mkdir(exist_ok=True)
    for png in sorted((root / "prepared" / "fold3" / "images").glob("*.png")):
        shutil.copyfile(png, inputs / png.name)
    shutil.copyfile(root / "release" / "large" / "large_000.png", inputs / "stitched.png")
    pred = root / "predictions"
    summary = predict(run, inputs, pred, workers=1, quiet=quiet, overwrite=True)
    metrics = evaluate(pred, root / "prepared", fold="fold3", out=root / "evaluation", quiet=True)
    avg = metrics["image_average"]
    cells = next((r.get("cells") for r in _manifest_rows(summary.manifest_path) if "stitched" in r["input"]), None)
    return {
        "bpq": avg["bPQ"],
        "mpq": avg["mPQ"],
        "overlay": pred / "stitched.overlay.png",
        "geojson": pred / "stitched.cells.geojson",
        "run": run,
        "cells": cells,
    }


def _manifest_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
