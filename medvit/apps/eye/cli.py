"""``medvit eye``: fundus and OCT classification (train, predict, evaluate) on the shared classification core.

Graded labels (diabetic retinopathy 0-4, quadratic-weighted kappa), multi-class (OCT CNV / DME / DRUSEN / NORMAL),
binary (glaucoma); colour fundus photographs (cropped to the field of view), 2D OCT B-scans and 3D OCT volumes.
Thin layer over :mod:`medvit.apps.eye.api`; torch is imported inside the commands so that ``medvit --help`` stays
fast. Mounted by the root CLI as ``eye``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medvit.shared.errors import ConfigError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Eye images (fundus photographs, OCT B-scans and volumes): fine-tune a ViT, predict, evaluate (kappa, AUC).",
)

MIX_MODES = ("none", "mixup", "cutmix", "tl-align")
HEATMAP_MODES = ("none", "rollout", "gradcam")


def _check_choice(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def _classes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if len(names) < 2:
        raise ConfigError("--classes: give at least two class names separated by commas (e.g. 0,1,2,3,4)")
    return names


@app.command()
def train(
    data: Path = typer.Argument(..., help="ImageFolder tree (class = folder), folder with labels.csv, or a CSV."),
    out: Path | None = typer.Option(None, "--out", help="Run directory; default $MEDVIT_RUNS/eye (./runs/eye)."),
    preset: str | None = typer.Option(None, "--preset", help="paper | paper-3d (OCT volumes) | tiny | tiny-3d (CPU)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config applied over the preset."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set optim.blr=5e-4 (repeatable)."),
    init: Path | None = typer.Option(
        None, "--init", metavar="ENCODER", help="Start from an encoder export, a foreign checkpoint or an eye run."
    ),
    mix: str | None = typer.Option(None, "--mix", help="none | mixup | cutmix | tl-align."),
    task: str | None = typer.Option(None, "--task", help="auto | graded | multiclass | binary."),
    classes: str | None = typer.Option(None, "--classes", help="Comma-separated class names in order (0,1,2,3,4)."),
    positive: str | None = typer.Option(None, "--positive", help="Binary tasks: the positive class name."),
    images: Path | None = typer.Option(None, "--images", help="Folder the CSV's paths are relative to."),
    modality: str | None = typer.Option(None, "--modality", help="auto | fundus | oct."),
    split: str | None = typer.Option(None, "--split", help="Split folder to train on (train)."),
    val: Path | None = typer.Option(None, "--val", help="Separate validation set (CSV or tree)."),
    val_split: str | None = typer.Option(None, "--val-split", help="Split folder to validate on (val, test)."),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", min=0.0, max=0.9, help="Share held out (by patient where known) when no --val."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (instead of epochs)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Inputs per step and rank."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default blr x batch / 256)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader workers."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/last.pt."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Fine-tune on labelled eye images (best checkpoint by kappa / AUC / accuracy); resumable, torchrun-ready."""
    from medvit.apps.eye.api import train as train_api
    from medvit.apps.eye.config import default_run_dir, load_train_config

    _check_choice("--mix", mix, MIX_MODES)
    run = out if out is not None else default_run_dir()
    cfg = load_train_config(
        run,
        resume=resume,
        preset=preset,
        config_file=config,
        overrides=set_,
        **{
            "model.weights": str(init) if init else None,
            "mix.mode": mix,
            "dataset.task": task,
            "dataset.classes": _classes(classes),
            "dataset.positive": positive,
            "dataset.images": str(images) if images else None,
            "dataset.modality": modality,
            "dataset.split": split,
            "dataset.val": str(val) if val else None,
            "dataset.val_split": val_split,
            "data.val_fraction": val_fraction,
            "optim.epochs": epochs,
            "optim.steps": steps,
            "optim.batch_size": batch_size,
            "optim.lr": lr,
            "optim.device": device,
            "optim.workers": workers,
        },
    )
    res = train_api(cfg, data, run, resume=resume, quiet=quiet)
    typer.echo(res.line)
    typer.echo(f"model: {res.run_dir}  (predict with: medvit eye predict {res.run_dir} INPUT --out OUT)")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory of `eye train` (or its model.safetensors)."),
    inp: Path = typer.Argument(
        ..., metavar="INPUT", help="Image, volume or B-scan folder, a folder (recursive), CSV or .txt list."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: predictions.csv, manifest.csv, heat maps."),
    heatmaps: str = typer.Option(
        "none", "--heatmaps", help="none | rollout (attention rollout) | gradcam: PNG overlays under OUT/heatmaps."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Inputs per forward pass."),
    workers: int = typer.Option(2, "--workers", min=0, help="Decoding workers."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs already in OUT (default: resume)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Class probabilities and the predicted class; unreadable inputs get `error` rows (exit 1)."""
    from medvit.apps.eye.api import predict as predict_api

    _check_choice("--heatmaps", heatmaps, HEATMAP_MODES)
    res = predict_api(
        run,
        inp,
        out,
        batch_size=batch_size,
        workers=workers,
        device=device,
        heatmaps=None if heatmaps == "none" else heatmaps,
        overwrite=overwrite,
        quiet=quiet,
    )
    typer.echo(res.line)
    raise typer.Exit(res.exit_code)


@app.command()
def evaluate(
    pred: Path = typer.Argument(..., help="predictions.csv of `eye predict`, or its output folder."),
    gt: Path = typer.Argument(..., help="Ground truth: ImageFolder tree, folder with labels.csv, or a CSV."),
    out: Path | None = typer.Option(None, "--out", help="Folder for metrics.csv, summary.json, plots (default PRED)."),
    split: str | None = typer.Option(None, "--split", help="Split folder of an ImageFolder GT (test)."),
    task: str = typer.Option("auto", "--task", help="auto (from the predictions) | graded | multiclass | binary."),
    positive: str | None = typer.Option(None, "--positive", help="Binary tasks: the positive class name in GT."),
    images: Path | None = typer.Option(None, "--images", help="Folder the GT CSV's paths are relative to."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for 95 % CIs (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Graded: quadratic-weighted kappa; multi-class: accuracy, macro-F1; binary: AUC; confusion matrix, ROC."""
    from medvit.apps.eye.api import evaluate as evaluate_api
    from medvit.apps.eye.api import print_summary

    summary = evaluate_api(
        pred, gt, out, split=split, task=task, positive=positive, images=images, bootstrap=bootstrap, seed=seed
    )
    print_summary(summary)
