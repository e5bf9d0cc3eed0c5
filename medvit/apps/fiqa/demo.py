"""The fiqa part of ``medvit demo``: a tiny ViT-FIQA trained on synthetic faces, a held-out folder scored.

:func:`degradation_ranking` is the number the demo, the CLI loop test and ``benchmarks/fiqa_ranking.py`` read: how
well the qualities of a :func:`~medvit.shared.data.synth.synth_faces` folder rank its graded degradations.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from medvit.apps.fiqa.config import load_fiqa_config
from medvit.apps.fiqa.score import score
from medvit.apps.fiqa.train import train
from medvit.shared.data.synth import synth_faces

__all__ = ["degradation_ranking", "run_demo"]


def degradation_ranking(scores_csv: str | os.PathLike[str], folder: str | os.PathLike[str]) -> dict[str, float]:
    """How well qualities rank the degradations of a :func:`~medvit.shared.data.synth.synth_faces` folder.

    Args:
        scores_csv: ``scores.csv`` of :func:`~medvit.apps.fiqa.score.score` over ``folder`` (absolute paths, as
            score writes them).
        folder: The scored folder; its ``degradations.csv`` gives each face's kind and strength.

    Returns:
        ``{"rho": Spearman(quality, -strength) over every ok row, "rho_<kind>": the same over the faces of one
        degradation kind together with the clean faces}``.
    """
    root = Path(folder)
    with open(root / "degradations.csv", newline="", encoding="utf-8") as fh:
        deg = {os.path.abspath(root / r["path"]): (r["degradation"], float(r["strength"])) for r in csv.DictReader(fh)}
    with open(scores_csv, newline="", encoding="utf-8") as fh:
        ok = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    q = np.array([float(r["quality"]) for r in ok])
    kind = np.array([deg[r["path"]][0] for r in ok])
    strength = np.array([deg[r["path"]][1] for r in ok])
    out = {"rho": float(spearmanr(q, -strength).statistic)}
    for k in sorted(set(kind) - {"none"}):
        m = (kind == k) | (kind == "none")
        out[f"rho_{k}"] = float(spearmanr(q[m], -strength[m]).statistic)
    return out


def run_demo(out: str | os.PathLike[str], *, quiet: bool = False, steps: int = 600) -> dict[str, Any]:
    """Train the tiny preset on synthetic identities with graded degradations, score a held-out folder.

    40 identities x 100 faces with blur, occlusion and low light of graded strength; the tiny preset with the
    CR-FIQA head (``model.head=crfiqa``: at 2 blocks x 64 wide the quality token learns the ranking less reliably,
    BENCHMARKS.md); 400 faces of 20 unseen identities scored (the Spearman of fewer faces is too noisy to read).

    Returns:
        ``{"spearman": rho(quality, -degradation strength), "contact_sheet": path, "scores": path, "run": path}``.
    """
    root = Path(out) / "fiqa"
    kinds = ("blur", "occlusion", "low_light")
    synth_faces(root / "train", identities=40, images_per_identity=100, seed=0, degradations=kinds)
    synth_faces(root / "heldout", identities=20, images_per_identity=20, seed=0, held_out=True, degradations=kinds)
    run = root / "run"
    cfg = load_fiqa_config("tiny", overrides=["model.head=crfiqa"], **{"optim.steps": steps})
    train(cfg, root / "train", run, resume=(run / "last.pt").is_file(), quiet=quiet)
    res = score(root / "heldout", root / "scores", weights=run, aligned=True, workers=1, quiet=quiet, overwrite=True)
    rho = degradation_ranking(res.scores_csv, root / "heldout")["rho"]
    return {"spearman": rho, "contact_sheet": res.contact_sheet, "scores": res.scores_csv, "run": run}
