"""``medvit deepfake``: GGViT-style face-manipulation detection (prepare, train, predict, evaluate).

Thin layer over :mod:`medvit.apps.deepfake.api`: each command parses its options (``train`` resolves them into a
``DeepfakeConfig``) and calls the API; torch and OpenCV are imported inside the commands so that ``medvit --help``
stays fast. Mounted by the root CLI as ``deepfake``.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="GGViT-style deepfake detection (global-guided multi-stream ViT; our design where the paper is silent): "
    "prepare FaceForensics++, train, predict videos, evaluate across compression levels.",
)

_DETECTOR_HELP = (
    "auto (a video's .faces.json sidecar if present, else SCRFD/MTCNN/dlib) | sidecar | scrfd | mtcnn | dlib."
)


@app.command()
def prepare(
    root: Path = typer.Argument(
        ...,
        metavar="FFPP_ROOT",
        help="FF++ root (original_sequences/, manipulated_sequences/) "
        "or a folder with real/ and fake/ (optionally under train/ val/ test/).",
    ),
    out: Path = typer.Argument(..., help="Output folder: dataset.json, crops/, manifest.csv."),
    frames: int = typer.Option(32, "--frames", min=0, help="Evenly spaced frames per video (0: all)."),
    size: int = typer.Option(256, "--size", min=32, help="Crop side in pixels."),
    margin: float = typer.Option(1.3, "--margin", help="Margin around the aligned face (DeepfakeBench: 1.3)."),
    splits: Path | None = typer.Option(
        None, "--splits", help="Folder with FF++ train/val/test.json (default: ROOT/splits or ROOT)."
    ),
    detector: str = typer.Option("auto", "--detector", help=_DETECTOR_HELP),
    models: Path | None = typer.Option(None, "--models", help="insightface model folder with an SCRFD detector."),
    min_face_score: float | None = typer.Option(
        None,
        "--min-face-score",
        help="Detector confidence threshold (default per detector: scrfd 0.5, mtcnn 0.9, dlib 0.3).",
    ),
    workers: int = typer.Option(2, "--workers", min=0, help="Threads decoding and detecting ahead."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo videos already prepared."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Crop the largest (then nearest) face of evenly spaced frames; resumable; faceless frames skipped and counted."""
    from medvit.apps.deepfake.api import prepare as prepare_api

    res = prepare_api(
        root,
        out,
        frames=frames,
        size=size,
        margin=margin,
        splits=splits,
        detector=detector,
        models=models,
        min_face_score=min_face_score,
        workers=workers,
        overwrite=overwrite,
        quiet=quiet,
    )
    typer.echo(res.line)
    raise typer.Exit(res.exit_code)


@app.command()
def train(
    data: Path = typer.Argument(..., help="Folder written by `medvit deepfake prepare`."),
    out: Path | None = typer.Option(None, "--out", help="Run directory. Default: $MEDVIT_RUNS/deepfake."),
    preset: str = typer.Option("paper-like", "--preset", help="paper-like (ViT-B/16) | small (ViT-S/16) | tiny (CPU)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config applied over the preset."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set model.guide=pooled."),
    method: str | None = typer.Option(None, "--method", help="Fake method: Face2Face (default), a list a,b, or all."),
    levels: str | None = typer.Option(
        None, "--levels", help="Compression levels to train on, e.g. c23 or raw,c23,c40."
    ),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (instead of epochs)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Frames per step and rank."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        help="Starting ViT weights (timm/ImageNet, medvit export, "
        "FIQA face ViT) or an earlier deepfake model.safetensors.",
    ),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader workers."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/last.pt."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train real vs fake, compression-aware; best checkpoint by validation AUC. Torchrun-ready."""
    from medvit.apps.deepfake.api import train as train_api
    from medvit.apps.deepfake.config import default_run_dir, load_deepfake_config

    cfg = load_deepfake_config(
        preset,
        config,
        set_,
        **{
            "data.method": method,
            "data.levels": [v.strip() for v in levels.split(",")] if levels else None,
            "optim.steps": steps,
            "optim.epochs": epochs,
            "optim.batch_size": batch_size,
            "optim.lr": lr,
            "optim.device": device,
            "optim.workers": workers,
            "model.weights": str(weights) if weights else None,
        },
    )
    res = train_api(cfg, data, out=out or default_run_dir(), resume=resume, quiet=quiet)
    best = f", best validation AUC {res.best_auc:.4f} at step {res.best_step}" if res.best_auc is not None else ""
    typer.echo(f"trained {res.steps} steps on {res.frames} frames{best}")
    typer.echo(f"model: {res.weights}  (score with: medvit deepfake predict {res.run_dir} INPUT --out DIR)")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory (or model.safetensors with its .json)."),
    inp: Path = typer.Argument(..., metavar="INPUT", help="Video, image, folder (recursive) or .txt list."),
    out: Path = typer.Option(..., "--out", help="Output folder: videos.csv, frames.csv, strips/, manifest.csv."),
    frames: int = typer.Option(32, "--frames", min=0, help="Evenly spaced frames per video (0: all)."),
    threshold: float = typer.Option(0.5, "--threshold", help="A video is fake when its mean probability is above."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Score every face track, not only the largest face's."),
    detector: str = typer.Option("auto", "--detector", help=_DETECTOR_HELP),
    models: Path | None = typer.Option(None, "--models", help="insightface model folder with an SCRFD detector."),
    min_face_score: float | None = typer.Option(None, "--min-face-score", help="Detector confidence threshold."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Crops per forward pass."),
    workers: int = typer.Option(2, "--workers", min=0, help="Threads decoding/detecting ahead."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rescore inputs already in OUT."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Fake probability per frame and per video; a video without a face is `no_face`, never scored."""
    from medvit.apps.deepfake.api import predict as predict_api

    res = predict_api(
        run,
        inp,
        out,
        frames=frames,
        threshold=threshold,
        all_faces=all_faces,
        detector=detector,
        models=models,
        min_face_score=min_face_score,
        batch_size=batch_size,
        workers=workers,
        device=device,
        overwrite=overwrite,
        quiet=quiet,
    )
    typer.echo(res.line)
    raise typer.Exit(res.exit_code)


@app.command()
def evaluate(
    pred: Path = typer.Argument(..., help="Output folder of `medvit deepfake predict`."),
    gt: Path = typer.Argument(
        ..., help="Ground truth: FF++ root, real/fake folder, prepared folder or CSV (path,label[,method,level])."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.csv, grid.csv, summary.json, roc.png."),
    also: list[Path] = typer.Option(
        [], "--also", help="More predict folders (other training levels) for the cross-compression grid (repeatable)."
    ),
    threshold: float = typer.Option(0.5, "--threshold", help="Accuracy threshold on probabilities."),
) -> None:
    """Frame AUC, video AUC (mean frame probability), ACC, EER, AP; per level, per method; train X / test Y grid."""
    from rich.console import Console
    from rich.table import Table

    from medvit.apps.deepfake.api import evaluate as evaluate_api

    res = evaluate_api([pred, *also], gt, out, threshold=threshold)
    table = Table(title="video AUC: trained on (rows) / tested on (columns)")
    levels = sorted({lv for g in res.grid.values() for lv in g})
    table.add_column("train")
    for lv in levels:
        table.add_column(lv, justify="right")
    for t, g in res.grid.items():
        table.add_row(t, *(f"{g[lv]:.4f}" if lv in g else "" for lv in levels))
    Console().print(table)
    o = res.overall
    typer.echo(
        f"all: frame AUC {o['frame_auc']:.4f}, video AUC {o['video_auc']:.4f}, ACC {o['frame_acc']:.4f}, "
        f"EER {o['frame_eer']:.4f}, AP {o['frame_ap']:.4f} ({o['videos']} videos, {o['no_face']} no_face)"
    )
    typer.echo(f"wrote {res.metrics_csv}, {res.grid_csv}, {res.summary_json}, {res.roc_png}")
