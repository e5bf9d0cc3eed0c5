"""``medvit cxr``: multi-label chest X-ray classification (train, predict, evaluate) on the shared classification core.

Thin layer over :mod:`medvit.apps.cxr.api`: ``train`` resolves its options into a
:class:`~medvit.apps.cxr.config.CxrConfig`; torch is imported inside the commands so that ``medvit --help`` stays
fast. Mounted by the root CLI as ``cxr``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medvit.shared.errors import ConfigError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Chest X-ray findings (multi-label): fine-tune a ViT (thorax MAE recipe), predict, evaluate (AUC).",
)

MIX_MODES = ("none", "mixup", "cutmix", "tl-align")
HEATMAP_MODES = ("none", "rollout", "gradcam")


def _findings(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ConfigError("--findings: give finding names separated by commas (or 'all')")
    return names


def _check_choice(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


@app.command()
def train(
    data: Path = typer.Argument(
        ..., help="ChestX-ray14 / CheXpert / MIMIC-CXR-JPG folder, a folder with labels.csv, or a label CSV."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run directory; default $MEDVIT_RUNS/cxr (./runs/cxr)."),
    preset: str | None = typer.Option(None, "--preset", help="paper (thorax MAE fine-tuning recipe) | tiny (CPU)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config applied over the preset."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set optim.blr=5e-4 (repeatable)."),
    init: Path | None = typer.Option(
        None, "--init", metavar="ENCODER", help="Start from an encoder export, a foreign checkpoint or a cxr run."
    ),
    mix: str | None = typer.Option(None, "--mix", help="none | mixup | cutmix | tl-align."),
    split: str | None = typer.Option(None, "--split", help="Release split to train on (default: its train split)."),
    val: Path | None = typer.Option(None, "--val", help="Separate validation set (folder or CSV)."),
    val_split: str | None = typer.Option(None, "--val-split", help="Release split to validate on (valid, validate)."),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", min=0.0, max=0.9, help="Share held out by patient when no --val (default 0.1)."
    ),
    findings: str | None = typer.Option(None, "--findings", help="Comma-separated findings, or 'all'."),
    uncertain: str | None = typer.Option(
        None, "--uncertain", help="CheXpert/MIMIC -1 labels: reference | ones | zeros | ignore."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (instead of epochs)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per step and rank."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default blr x batch / 256)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader workers."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/last.pt."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Fine-tune on labelled radiographs (best checkpoint by validation mean AUC); resumable, torchrun-ready."""
    from medvit.apps.cxr.api import train as train_api
    from medvit.apps.cxr.config import default_run_dir, load_train_config

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
            "dataset.split": split,
            "dataset.val": str(val) if val else None,
            "dataset.val_split": val_split,
            "data.val_fraction": val_fraction,
            "dataset.findings": _findings(findings),
            "dataset.uncertain": uncertain,
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
    typer.echo(f"model: {res.run_dir}  (predict with: medvit cxr predict {res.run_dir} INPUT --out OUT)")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory of `cxr train` (or its model.safetensors)."),
    inp: Path = typer.Argument(
        ..., metavar="INPUT", help="Image or DICOM file, folder (recursive), CSV (path column) or .txt list."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: predictions.csv, manifest.csv, heat maps."),
    heatmaps: str = typer.Option(
        "none", "--heatmaps", help="none | rollout (attention rollout) | gradcam: PNG overlays under OUT/heatmaps."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per forward pass."),
    workers: int = typer.Option(2, "--workers", min=0, help="Decoding workers."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs already in OUT (default: resume)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Probabilities per finding and thresholded labels; unreadable inputs get `error` rows (exit 1)."""
    from medvit.apps.cxr.api import predict as predict_api

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
    pred: Path = typer.Argument(..., help="predictions.csv of `cxr predict`, or its output folder."),
    gt: Path = typer.Argument(..., help="Ground truth: a release folder, a folder with labels.csv, or a label CSV."),
    out: Path | None = typer.Option(None, "--out", help="Folder for metrics.csv, summary.json, plots (default PRED)."),
    split: str | None = typer.Option(None, "--split", help="Release split of GT (e.g. test, valid)."),
    uncertain: str = typer.Option("reference", "--uncertain", help="CheXpert/MIMIC -1 labels in GT."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for 95 % CIs (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Per-finding ROC AUC, mean AUC (with bootstrap CIs), sensitivity/specificity at the thresholds, plots."""
    from medvit.apps.cxr.api import evaluate as evaluate_api
    from medvit.apps.cxr.api import print_summary

    summary = evaluate_api(pred, gt, out, split=split, uncertain=uncertain, bootstrap=bootstrap, seed=seed)
    print_summary(summary)
