"""``medvit pretrain DIR``: thin typer command over :func:`medvit.pretrain.api.run_pretrain`.

Torch is imported only inside the command, so ``medvit --help`` stays fast. The root CLI mounts it with
``app.command("pretrain")(pretrain_command)``. Distributed runs use the same command unchanged::

    torchrun --nproc_per_node=4 -m medvit pretrain ct/ --out runs/ct --preset base
    torchrun --nproc_per_node=2 -m medvit.pretrain.cli ct/ --out runs/ct        # standalone launcher
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

__all__ = ["app", "main", "pretrain_command"]


def pretrain_command(
    data_dir: Path = typer.Argument(
        ..., help="Folder of CT volumes: NIfTI files, nnU-Net raw layouts (imagesTr/*_0000.nii.gz), DICOM series."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Run directory (default $MEDVIT_RUNS/pretrain; runs/pretrain when MEDVIT_RUNS is unset).",
    ),
    method: Optional[str] = typer.Option(
        None, "--method", help="hi-end-mae | mae (default: chosen from the data; 3D CT -> hi-end-mae)."
    ),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="Model size: paper | base | small | tiny (default base; tiny for CPU demos)."
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the volumes (default 100)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (instead of --epochs)."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Volumes per step per process; each yields --crops-per-volume crops (default 2)."
    ),
    crops_per_volume: Optional[int] = typer.Option(
        None, "--crops-per-volume", help="Random crops drawn from each volume per step (default 4)."
    ),
    mask_ratio: Optional[float] = typer.Option(None, "--mask-ratio", help="Fraction of patches masked (0.75)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default: the preset's, 1e-4)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data loader processes per rank (default 0)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (see config.yaml of a previous run)."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override any config key, e.g. --set data.spacing=[1,1,2] (repeatable)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights, masks and crops (default 0)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Self-supervised pretraining (Hi-End-MAE or MAE) on a folder of raw CT; exports encoder.safetensors."""
    from medvit.pretrain.api import run_pretrain
    from medvit.pretrain.config import PretrainConfig
    from medvit.shared.config import load_config

    options = {
        "data_dir": data_dir,
        "out": out,
        "model.method": method,
        "model.preset": preset,
        "model.mask_ratio": mask_ratio,
        "train.epochs": epochs,
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.workers": workers,
        "train.device": device,
        "train.seed": seed,
        "data.crops_per_volume": crops_per_volume,
        "quiet": True if quiet else None,
    }
    overrides = list(set_ or [])
    # --steps on the command line replaces epochs from a config file (and vice versa), as a user would expect.
    if steps is not None:
        overrides.append("train.epochs=null")
    if epochs is not None:
        overrides.append("train.steps=null")
    cfg = load_config(PretrainConfig, config, overrides, **options)
    run_pretrain(cfg, resume=resume)


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
app.command("pretrain")(pretrain_command)


def main(argv: list[str] | None = None) -> int:
    """Standalone launcher (``python -m medvit.pretrain.cli DIR ...``), with the root CLI's error handling."""
    import click

    from medvit.shared.errors import MedvitError

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command()(pretrain_command)
    command = typer.main.get_command(single)
    try:
        command.main(
            args=argv if argv is not None else sys.argv[1:], prog_name="medvit pretrain", standalone_mode=False
        )
    except MedvitError as err:
        click.secho(f"error: {err}", err=True, fg="red")
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    except click.ClickException as err:
        err.show()
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
