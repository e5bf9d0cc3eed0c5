"""``medvit demo``: the main jobs end to end on built-in synthetic data, sized for 2 CPU cores.

1. Synthetic CT in nnU-Net raw layout (``medvit data synth ct``).
2. Hi-End-MAE pretraining with the ``tiny`` preset; the encoder is exported (``encoder.safetensors``).
3. ``ct-seg`` fine-tuning from that encoder, prediction of the held-out cases, evaluation (Dice per class).
4. ``cell``: synthetic H&E tiles in the PanNuke release format, ``cell prepare``, the tiny CellVTA preset, prediction
   of held-out tiles and of a larger image cut into overlapping tiles (QuPath GeoJSON, overlays), bPQ / mPQ.
5. ``cxr``: synthetic chest X-rays in the ChestX-ray14 layout, thorax-MAE pretraining (``cxr-tiny``), multi-label
   fine-tuning of the exported encoder on a labelled synthetic set, a held-out folder predicted (with attention
   heat maps) and evaluated (mean AUC).
6. ``eye``: synthetic fundus photographs and OCT volumes, Uni4Eye pretraining with 2D and 3D steps interleaved, DR
   grading fine-tuned from the 2D encoder, a held-out folder predicted and evaluated (quadratic-weighted kappa).
7. ``fiqa``: the tiny ViT-FIQA preset (CR-FIQA head) trained on synthetic identities with graded blur, occlusion
   and low light, a held-out folder scored, and the rank correlation between predicted quality and degradation
   strength.
8. ``deepfake``: synthetic FaceForensics++-style clips (real and reenacted), ``deepfake prepare`` (frames, face
   crops, landmarks), the tiny GGViT-style model trained on Face2Face at c23, held-out videos predicted (frame and
   video scores, frame strips) and evaluated (video AUC).

Everything is written under one folder; a re-run replaces the folder's earlier demo outputs (it never
touches a non-empty folder that was not made by the demo).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from medvit.shared.errors import MedvitError

logger = logging.getLogger(__name__)

_MARKER = ".medvit-demo"

# Sizes chosen so that the whole demo runs in a few minutes on 2 CPU cores (see README, BENCHMARKS.md).
# CT: every synthetic case shows all five organs (so every class is trained on and scored in every held-out case);
# the scans stay at their native spacing (0.8 x 0.8 x 2.5 mm), 48 x 48 x 32 voxels. Once ct-seg has cropped the air
# away the body is 40-42 x 28-34 x 32 voxels, so a 48 x 32 x 32 training crop holds every organ wherever it lands
# (tests/test_demo.py checks this): every step trains every class, and costs two thirds of a 48^3 one.
CT_CASES, CT_TEST_CASES, CT_SHAPE, CT_ORGANS = 8, 4, (48, 48, 32), (5, 5)
PRETRAIN_STEPS = 100
SEG_STEPS = 160
# ct-seg options over the tiny preset. The small organs (gallbladder about 75 voxels, spleen) are picked up one
# after the other and late; a high constant learning rate gets all five within the step budget for every optimizer
# seed we tried (0-4; with the preset's 3e-3 cosine, or with fewer steps, one of them often stays at Dice 0). The
# intensity augmentation (shift by 0.1 of the window, about 40 HU) is off: the organs differ by 40 HU.
SEG_OPTIONS: dict[str, Any] = {
    "data.fold": "all",
    "data.spacing": "native",
    "data.crop_size": (48, 32, 32),
    "data.intensity_prob": 0.0,
    "optim.steps": SEG_STEPS,
    "optim.lr": 2e-2,
    "optim.schedule": "constant",
    "optim.ckpt_every": SEG_STEPS,
}
FIQA_STEPS = 600  # 40 identities x 100 faces, crfiqa head: held-out Spearman 0.52-0.65 (BENCHMARKS.md)
CELL_STEPS = 200  # 80 synthetic 64 px training tiles: held-out bPQ 0.716, mPQ 0.312 (one thread, 2026-12-07)


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / _MARKER).is_file():
            raise MedvitError(f"{out} is not empty and was not made by `medvit demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("made by medvit demo; safe to delete\n")


PARTS: tuple[str, ...] = ("ct-seg", "cell", "cxr", "eye", "fiqa", "deepfake")
"""What ``medvit demo APP`` runs: ``ct-seg`` (synthetic CT, Hi-End-MAE pretraining, fine-tuning, prediction,
evaluation), ``cell`` (synthetic H&E tiles, prepare, train, tiled prediction, evaluation), ``cxr`` (thorax-MAE
pretraining and multi-label fine-tuning on synthetic X-rays), ``eye`` (Uni4Eye pretraining on synthetic fundus + OCT,
DR-grade fine-tuning), ``fiqa`` or ``deepfake``
(synthetic clips, prepare, train, predict, evaluate); no APP runs them all."""


def _ct_part(out: Path, console: Any, timings: dict[str, float], *, quiet: bool) -> dict[str, Any]:
    """Synthetic CT -> Hi-End-MAE pretraining -> ct-seg fine-tuning, prediction and evaluation; prints the table."""
    from rich.table import Table

    from medvit.apps.ct_seg import api as ct_seg
    from medvit.apps.ct_seg.config import load_ct_seg_config
    from medvit.pretrain.api import run_pretrain
    from medvit.pretrain.config import PretrainConfig
    from medvit.shared.config import load_config
    from medvit.shared.data.synth import synth_ct

    console.print("[bold]ct-seg 1/3[/bold] synthetic CT (nnU-Net raw layout)")
    t = time.perf_counter()
    ct = out / "data" / "ct"
    synth_ct(ct, n=CT_CASES, n_test=CT_TEST_CASES, shape=CT_SHAPE, n_organs=CT_ORGANS, seed=0)
    timings["data"] = time.perf_counter() - t

    console.print("[bold]ct-seg 2/3[/bold] Hi-End-MAE pretraining (tiny preset)")
    t = time.perf_counter()
    cfg = load_config(
        PretrainConfig,
        None,
        ("data.spacing=null",),
        **{
            "data_dir": ct / "imagesTr",
            "out": out / "runs" / "pretrain",
            "model.method": "hi-end-mae",
            "model.preset": "tiny",
            "train.steps": PRETRAIN_STEPS,
            "train.device": "cpu",
            "quiet": quiet,
        },
    )
    pre_run = run_pretrain(cfg)
    encoder = pre_run / "encoder.safetensors"
    timings["pretrain"] = time.perf_counter() - t

    console.print("[bold]ct-seg 3/3[/bold] fine-tune from the exported encoder, predict, evaluate")
    t = time.perf_counter()
    seg_run = out / "runs" / "ct-seg"
    seg_cfg = load_ct_seg_config("tiny", **{"model.weights": encoder, **SEG_OPTIONS})
    ct_seg.train(seg_cfg, ct, out=seg_run, quiet=quiet)
    pred = out / "predictions" / "ct-seg"
    ct_seg.predict(seg_run, ct / "imagesTs", pred, quiet=quiet)
    summary = ct_seg.evaluate(pred, ct / "labelsTs", labels_json=ct / "dataset.json", quiet=quiet)
    timings["ct-seg"] = time.perf_counter() - t

    table = Table("class", "Dice (mean ± sd)", "HD95 mm", title="ct-seg on held-out synthetic cases")
    for name, row in summary.get("per_class", {}).items():
        dice, hd = row.get("dice", {}), row.get("hd95", {})
        table.add_row(
            str(name),
            f"{dice.get('mean', float('nan')):.3f} ± {dice.get('sd', float('nan')):.3f}",
            f"{hd.get('mean', float('nan')):.2f}" if hd else "-",
        )
    console.print(table)
    overall = summary.get("overall", {}).get("dice", {}).get("mean")
    console.print(f"mean foreground Dice: [bold]{overall:.3f}[/bold]" if overall is not None else "")
    console.print(f"pretraining previews:   {pre_run / 'previews'}")
    console.print(f"pretraining loss plot:  {pre_run / 'plots' / 'loss.png'}")
    console.print(f"encoder export:         {encoder}")
    console.print(f"segmentation overlays:  {pred / 'overlays'}")
    return {"dice": overall, "summary": summary, "encoder": encoder}


def _cell_part(out: Path, console: Any, timings: dict[str, float], *, quiet: bool) -> dict[str, Any]:
    """Synthetic H&E tiles -> cell prepare -> train tiny CellVTA -> predict tiles and a stitched image -> evaluate."""
    from medvit.apps.cell_seg.demo import run_demo as cell_demo

    console.print("[bold]cell[/bold] prepare synthetic PanNuke-format tiles, train tiny CellVTA, predict, evaluate")
    t = time.perf_counter()
    cell = cell_demo(out, quiet=quiet, steps=CELL_STEPS)
    timings["cell"] = time.perf_counter() - t
    console.print(
        f"cell held-out tiles: bPQ [bold]{cell['bpq']:.3f}[/bold], mPQ {cell['mpq']:.3f} "
        f"({cell['cells']} nuclei in the stitched 640x768 image)"
    )
    console.print(f"cell overlay:           {cell['overlay']}")
    console.print(f"QuPath detections:      {cell['geojson']}")
    return {"cell_bpq": cell["bpq"], "cell_mpq": cell["mpq"], "cell_overlay": cell["overlay"]}


def _cxr_part(out: Path, console: Any, timings: dict[str, float], *, quiet: bool) -> dict[str, Any]:
    """Synthetic chest X-rays -> thorax-MAE pretraining -> ``cxr`` fine-tuning from the export -> predict, evaluate."""
    from medvit.apps.cxr.api import run_cxr_demo
    from medvit.pretrain.demo import run_cxr_pretrain_demo

    console.print("[bold]cxr 1/2[/bold] thorax-MAE pretraining on synthetic chest X-rays (cxr-tiny preset)")
    t = time.perf_counter()
    pre = run_cxr_pretrain_demo(out, quiet=quiet)
    console.print(f"thorax MAE masked-patch loss: {pre['first_loss']:.3f} -> [bold]{pre['final_loss']:.3f}[/bold]")
    console.print("[bold]cxr 2/2[/bold] fine-tune from the exported encoder, predict a held-out folder, evaluate")
    res = run_cxr_demo(out, quiet=quiet, encoder=pre["encoder"])
    timings["cxr"] = time.perf_counter() - t
    per = ", ".join(f"{k} {v:.2f}" for k, v in res["auc"].items())
    console.print(f"cxr held-out mean AUC: [bold]{res['mean_auc']:.3f}[/bold] ({per})")
    console.print(f"cxr reconstructions:    {pre['previews']}")
    console.print(f"cxr heat map:           {res['heatmap']}")
    return {"cxr_mean_auc": res["mean_auc"], "cxr_auc": res["auc"], "cxr_heatmap": res["heatmap"]}


def _eye_part(out: Path, console: Any, timings: dict[str, float], *, quiet: bool) -> dict[str, Any]:
    """Synthetic fundus + OCT -> Uni4Eye pretraining -> ``eye`` fine-tuning (DR grades) from the 2D export."""
    from medvit.apps.eye.api import run_eye_demo
    from medvit.pretrain.demo import run_eye_pretrain_demo

    console.print("[bold]eye 1/2[/bold] Uni4Eye pretraining on synthetic fundus photographs + OCT volumes")
    t = time.perf_counter()
    pre = run_eye_pretrain_demo(out, quiet=quiet)
    console.print(
        f"Uni4Eye loss: 2D steps {pre['first_loss_2d']:.3f} -> [bold]{pre['final_loss_2d']:.3f}[/bold], "
        f"3D steps {pre['first_loss_3d']:.3f} -> [bold]{pre['final_loss_3d']:.3f}[/bold]"
    )
    console.print("[bold]eye 2/2[/bold] fine-tune DR grading from the 2D encoder, predict a held-out folder, evaluate")
    res = run_eye_demo(out, quiet=quiet, encoder=pre["encoder_2d"])
    timings["eye"] = time.perf_counter() - t
    console.print(f"eye held-out quadratic-weighted kappa (DR grade 0-4): [bold]{res['kappa']:.3f}[/bold]")
    console.print(f"eye reconstructions:    {pre['previews']}")
    console.print(f"eye heat map:           {res['heatmap']}")
    return {"eye_kappa": res["kappa"], "eye_heatmap": res["heatmap"], "eye_encoder_3d": pre["encoder_3d"]}


def _fiqa_part(out: Path, console: Any, timings: dict[str, float], *, quiet: bool) -> dict[str, Any]:
    """Tiny ViT-FIQA trained on synthetic identities, a held-out folder scored and ranked; prints the result."""
    from medvit.apps.fiqa.api import run_demo as fiqa_demo

    console.print("[bold]fiqa[/bold] train tiny ViT-FIQA, score a held-out folder")
    t = time.perf_counter()
    fiqa = fiqa_demo(out, quiet=quiet, steps=FIQA_STEPS)
    timings["fiqa"] = time.perf_counter() - t
    console.print(
        f"FIQA Spearman(quality, -degradation strength): [bold]{fiqa['spearman']:.3f}[/bold] "
        "(400 faces of unseen identities; a tiny recognizer trained for minutes on a CPU, see BENCHMARKS.md)"
    )
    console.print(f"FIQA contact sheet:     {fiqa['contact_sheet']}")
    return {"spearman": fiqa["spearman"], "contact_sheet": fiqa["contact_sheet"]}


def _deepfake_part(out: Path, console: Any, timings: dict[str, float], *, quiet: bool) -> dict[str, Any]:
    """Synthetic FF++-style clips -> prepare -> tiny GGViT-style model -> held-out videos scored and evaluated."""
    from medvit.apps.deepfake.api import run_deepfake_demo

    console.print("[bold]deepfake[/bold] synthetic clips, prepare, train tiny GGViT-style model, predict, evaluate")
    t = time.perf_counter()
    res = run_deepfake_demo(out, quiet=quiet)
    timings["deepfake"] = time.perf_counter() - t
    console.print(
        f"deepfake video AUC (Face2Face vs real, c23, held-out): [bold]{res['video_auc']:.3f}[/bold]; "
        f"every held-out video incl. the unseen NeuralTextures: {res['video_auc_all']:.3f}"
    )
    console.print(f"deepfake frame strip:   {res['strip']}")
    return {"deepfake_video_auc": res["video_auc"], "deepfake_strip": res["strip"]}


def run_demo(out: str | Path, *, quiet: bool = False, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Run the demo (every part, or the ``parts`` named) into ``out``; return its headline numbers and paths.

    Raises:
        MedvitError: an unknown part, or ``out`` is a non-empty folder the demo did not make.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise MedvitError(f"unknown demo part {', '.join(unknown) or '(none)'}; choose from {', '.join(PARTS)}")
    t0 = time.perf_counter()
    from rich.console import Console

    console = Console(stderr=True)  # progress and results for a person; nothing machine-readable on stdout
    out = Path(out).resolve()
    _prepare(out)
    timings: dict[str, float] = {"setup": time.perf_counter() - t0}  # mostly importing torch and MONAI
    result: dict[str, Any] = {"timings": timings}
    if "ct-seg" in parts:
        result.update(_ct_part(out, console, timings, quiet=quiet))
    if "cell" in parts:
        result.update(_cell_part(out, console, timings, quiet=quiet))
    if "cxr" in parts:
        result.update(_cxr_part(out, console, timings, quiet=quiet))
    if "eye" in parts:
        result.update(_eye_part(out, console, timings, quiet=quiet))
    if "fiqa" in parts:
        result.update(_fiqa_part(out, console, timings, quiet=quiet))
    if "deepfake" in parts:
        result.update(_deepfake_part(out, console, timings, quiet=quiet))
    total = time.perf_counter() - t0
    console.print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s")
    result["total_s"] = total
    return result
