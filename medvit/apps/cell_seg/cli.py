"""``medvit cell``: nucleus instance segmentation and classification (CellVTA) for H&E tiles and whole slides.

Thin layer over :mod:`medvit.apps.cell_seg.api`; torch, OpenCV and the slide readers are imported inside the
commands so that ``medvit --help`` stays fast. Mounted by the root CLI as ``cell``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medvit.shared.errors import ConfigError
from medvit.shared.paths import runs_dir

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Pathology cell segmentation: CellVTA adapter on the shared ViT (prepare, train, predict, evaluate).",
)

PREPARE_KINDS = ("pannuke", "conic")


@app.command()
def prepare(
    kind: str = typer.Argument(..., help="pannuke | conic: the released array format to convert."),
    src: Path = typer.Argument(..., help="The release folder (PanNuke 'Fold 1/...' or CoNIC images.npy/labels.npy)."),
    out: Path = typer.Argument(..., help="Output folder: dataset.json, foldN/images, foldN/labels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rewrite tiles that exist (default: resume)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Convert PanNuke / CoNIC arrays to the training layout (PNG tiles + instance/type maps), resumably."""
    from medvit.apps.cell_seg.api import prepare as prepare_api

    if kind not in PREPARE_KINDS:
        raise ConfigError(f"unknown dataset kind {kind!r}; choose from {', '.join(PREPARE_KINDS)}")
    summary = prepare_api(kind, src, out, overwrite=overwrite, quiet=quiet)
    typer.echo(f"prepared {summary.get('tiles', '?')} tiles in {out} (folds: {', '.join(summary.get('folds', []))})")


@app.command()
def train(
    data: Path = typer.Argument(..., help="Prepared dataset folder (`medvit cell prepare` output)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory; default $MEDVIT_RUNS/cell (./runs/cell)."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Start from: UNI/timm ViT checkpoint, medvit export, CellVTA checkpoint, earlier run."
    ),
    preset: str | None = typer.Option(None, "--preset", help="paper | base | small | tiny (default base)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config applied over the preset."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set model.unfreeze_at=25."),
    split: int | None = typer.Option(None, "--split", min=1, max=3, help="PanNuke split 1 | 2 | 3 (default 1)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (instead of epochs)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Tiles per step and rank."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader workers."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/last.pt."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train on one split (best checkpoint by validation bPQ); resumable, torchrun-ready."""
    from medvit.apps.cell_seg.api import train as train_api
    from medvit.apps.cell_seg.config import load_train_config

    run = out if out is not None else runs_dir() / "cell"
    cfg = load_train_config(
        run,
        resume=resume,
        preset=preset,
        config_file=config,
        overrides=set_,
        **{
            "model.weights": str(weights) if weights else None,
            "data.split": split,
            "optim.epochs": epochs,
            "optim.steps": steps,
            "optim.batch_size": batch_size,
            "optim.lr": lr,
            "optim.device": device,
            "optim.workers": workers,
        },
    )
    res = train_api(cfg, data, out=run, resume=resume, quiet=quiet)
    if res.best_bpq is not None:
        typer.echo(f"best validation bPQ {res.best_bpq:.4f} at step {res.best_step}")
    if res.val:
        typer.echo("last validation: " + ", ".join(f"{k} {v:.4f}" for k, v in res.val.items()))
    typer.echo(f"model: {res.weights}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory of `cell train` (or a model.safetensors)."),
    inp: Path = typer.Argument(
        ..., metavar="INPUT", help="Image (PNG/TIFF/JPEG), slide (.svs/.ndpi/.mrxs/.tiff...), folder, or .txt list."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: NAME.cells.geojson/.csv, overlays, manifest.csv."),
    checkpoint: str = typer.Option("auto", "--checkpoint", help="auto | best | last | PATH."),
    mpp: float | None = typer.Option(None, "--mpp", min=0.01, help="Microns per pixel of the inputs (override)."),
    target_mag: int | None = typer.Option(None, "--target-mag", help="40 | 20 (default: the model's)."),
    tile: int | None = typer.Option(None, "--tile", min=32, help="Tile size in pixels."),
    overlap: int | None = typer.Option(None, "--overlap", min=0, help="Pixels shared by neighbouring tiles."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Tiles per forward pass."),
    workers: int = typer.Option(2, "--workers", min=0, help="Post-processing worker processes."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs whose outputs exist."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Segment and classify nuclei; GeoJSON that QuPath imports as detections, a CSV, overlays, a manifest."""
    from medvit.apps.cell_seg.api import predict as predict_api

    if target_mag is not None and target_mag not in (20, 40):
        raise ConfigError(f"--target-mag must be 40 or 20, got {target_mag}")
    summary = predict_api(
        run,
        inp,
        out,
        checkpoint=checkpoint,
        mpp=mpp,
        target_mag=target_mag,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        workers=workers,
        device=device,
        overwrite=overwrite,
        quiet=quiet,
    )
    typer.echo(summary.line)
    raise typer.Exit(summary.exit_code)


@app.command()
def evaluate(
    pred: Path = typer.Argument(..., help="Output folder of `cell predict` (NAME.labels.npz files)."),
    gt: Path = typer.Argument(..., help="Prepared dataset folder (with --fold/--split) or a folder of NAME.npz."),
    fold: str | None = typer.Option(None, "--fold", help="Fold of a prepared dataset, e.g. fold3."),
    split: int | None = typer.Option(None, "--split", min=1, max=3, help="Use the test fold(s) of this split."),
    out: Path | None = typer.Option(None, "--out", help="Folder for metrics.csv, summary.json, plots (PRED)."),
    magnification: int = typer.Option(40, "--magnification", help="40 | 20: detection radius 12 px / 6 px."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """bPQ, mPQ (image and tissue averages), per-class PQ, mPQ+, Dice, AJI, detection F1."""
    from medvit.apps.cell_seg.api import evaluate as evaluate_api
    from medvit.apps.cell_seg.api import print_summary

    s = evaluate_api(
        pred, gt, out=out, fold=fold, split=str(split) if split else None, magnification=magnification, quiet=quiet
    )
    print_summary(s)
    typer.echo(f"wrote {(out or pred) / 'metrics.csv'} and summary.json")
