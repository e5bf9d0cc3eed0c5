"""``medvit ct-seg``: fine-tune a UNETR on CT, predict NIfTI masks aligned to the scans, evaluate Dice/HD95.

Thin layer over :mod:`medvit.apps.ct_seg.api`; torch, MONAI and nibabel are imported inside the commands so that
``medvit --help`` stays fast. Mounted by the root CLI as ``ct-seg``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medvit.shared.errors import ConfigError
from medvit.shared.paths import runs_dir

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="CT organ segmentation: UNETR on the shared ViT (train, predict, evaluate).",
)


def _fold(value: str | None) -> int | str | None:
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--fold expects a fold number (0-4) or 'all', got {value!r}") from None


@app.command()
def train(
    data: Path | None = typer.Argument(
        None, help="Dataset folder: nnU-Net raw / MSD layout (dataset.json, imagesTr/, labelsTr/)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Run directory (config, checkpoints, model.safetensors); default $MEDVIT_RUNS/ct-seg (./runs/ct-seg).",
    ),
    images: Path | None = typer.Option(None, "--images", help="Images folder (instead of DATA)."),
    labels: Path | None = typer.Option(None, "--labels", help="Label-map folder, with --images."),
    dataset_json: Path | None = typer.Option(None, "--dataset-json", help="Label set for --images/--labels."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Encoder weights: medvit export, Hi-End-MAE or MONAI UNETR checkpoint, timm/MAE."
    ),
    preset: str | None = typer.Option(None, "--preset", help="paper | base | small | tiny (default base)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config applied over the preset."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set optim.lr=3e-4 (repeatable)."),
    fold: str | None = typer.Option(None, "--fold", help="Fold to train (0-4) or 'all' (default 0)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Volumes per step and rank."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader workers."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Preprocessed-volume cache (RUN/cache)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/last.pt."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Fine-tune on one fold (5-fold split in RUN/splits.json); the best checkpoint by mean foreground Dice."""
    from medvit.apps.ct_seg.api import train as train_api
    from medvit.apps.ct_seg.config import load_train_config

    run = out if out is not None else default_run_dir()
    cfg = load_train_config(
        run,
        resume=resume,
        preset=preset,
        config_file=config,
        overrides=set_,
        **{
            "model.weights": str(weights) if weights else None,
            "data.fold": _fold(fold),
            "data.cache_dir": str(cache_dir) if cache_dir else None,
            "optim.steps": steps,
            "optim.batch_size": batch_size,
            "optim.lr": lr,
            "optim.device": device,
            "optim.workers": workers,
        },
    )
    res = train_api(
        cfg, data, out=run, images=images, labels=labels, dataset_json=dataset_json, resume=resume, quiet=quiet
    )
    _print_train_result(res)


def default_run_dir() -> Path:
    """Run directory of ``ct-seg train`` without ``--out``: ``ct-seg`` in :func:`medvit.shared.paths.runs_dir`."""
    return runs_dir() / "ct-seg"


def _print_train_result(res: Any) -> None:
    """The last validation's Dice per class, the best mean Dice and the model file (stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if res.val_dice:
        table = Table(title=f"validation Dice, fold {res.fold} (step {res.steps})")
        table.add_column("class")
        table.add_column("Dice", justify="right")
        for k, v in res.val_dice.items():
            table.add_row("mean foreground" if k == "dice" else k.removeprefix("dice_"), f"{v:.4f}")
        console.print(table)
    if res.best_dice is not None:
        console.print(f"best mean foreground Dice {res.best_dice:.4f} at step {res.best_step}")
    console.print(f"model: {res.weights}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory of `ct-seg train` (or a model.safetensors)."),
    inp: Path = typer.Argument(
        ..., metavar="INPUT", help="NIfTI file, folder (nnU-Net imagesTs, NIfTI, DICOM series folders) or .txt list."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder for NAME.nii.gz, overlays/ and manifest.csv."),
    checkpoint: str = typer.Option("auto", "--checkpoint", help="auto | best | last | PATH."),
    overlap: float | None = typer.Option(None, "--overlap", min=0.0, max=0.95, help="Sliding-window overlap."),
    sw_batch_size: int | None = typer.Option(None, "--sw-batch-size", min=1, help="Windows per forward pass."),
    tta: bool | None = typer.Option(None, "--tta/--no-tta", help="Average over the 8 axis flips."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write probabilities/NAME.npz."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Write overlays/NAME.png."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    precision: str | None = typer.Option(None, "--precision", help="auto | fp32 | bf16 (CUDA)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases whose outputs exist."),
    workers: int = typer.Option(1, "--workers", min=0, help="Threads reading/preprocessing ahead."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Segment scans; label maps have exactly the input's shape and affine."""
    from medvit.apps.ct_seg.api import predict as predict_api

    if precision is not None and precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    summary = predict_api(
        run,
        inp,
        out,
        checkpoint=checkpoint,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        tta=tta,
        probabilities=probabilities,
        overlay=overlay,
        device=device,
        precision=precision,
        overwrite=overwrite,
        workers=workers,
        quiet=quiet,
    )
    typer.echo(summary.line)
    raise typer.Exit(summary.exit_code)


@app.command()
def evaluate(
    pred_dir: Path = typer.Argument(..., help="Predicted label maps (NAME.nii.gz)."),
    gt_dir: Path = typer.Argument(..., help="Reference label maps (e.g. labelsTs/)."),
    labels: Path | None = typer.Option(None, "--labels", help="dataset.json declaring the classes."),
    out: Path | None = typer.Option(None, "--out", help="Folder for metrics.csv, summary.json, plots (PRED_DIR)."),
    hd95: bool = typer.Option(True, "--hd95/--no-hd95", help="Compute HD95 (slower)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Dice and HD95 per case and class (background excluded); mean +- sd per class and overall."""
    from rich.console import Console
    from rich.table import Table

    from medvit.apps.ct_seg.api import evaluate as evaluate_api

    s = evaluate_api(pred_dir, gt_dir, labels_json=labels, out=out, hd95=hd95, quiet=quiet)
    table = Table(title=f"{s['cases']} cases")
    table.add_column("class")
    table.add_column("Dice", justify="right")
    if hd95:
        table.add_column("HD95 (mm)", justify="right")

    def fmt(d: dict) -> str:
        return "n/a" if d["mean"] is None or d["mean"] != d["mean"] else f"{d['mean']:.4f} ± {d['sd']:.4f}"

    for name, m in s["per_class"].items():
        table.add_row(name, fmt(m["dice"]), *([fmt(m["hd95"])] if hd95 else []))
    table.add_row("overall", fmt(s["overall"]["dice"]), *([fmt(s["overall"]["hd95"])] if hd95 else []))
    Console().print(table)
    typer.echo(f"wrote {(out or pred_dir) / 'metrics.csv'} and summary.json")
