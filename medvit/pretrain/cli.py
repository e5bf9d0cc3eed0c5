"""``medvit pretrain DIR``: thin typer command over :func:`medvit.pretrain.api.run_pretrain`.

Torch is imported only inside the command, so ``medvit --help`` stays fast. The root CLI mounts it with
``app.command("pretrain")(pretrain_command)``. The method follows the data unless ``--method`` names one (CT ->
hi-end-mae, chest X-rays -> mae with the thorax recipe, fundus photographs + OCT -> uni4eye). Distributed runs use
the same command unchanged::

    medvit pretrain chestxray14/ --out runs/cxr                               # mae, preset cxr-vit-s
    medvit pretrain eye/ --out runs/eye --set model.mask_strategy=entropy     # uni4eye, preset uni4eye-vit-b
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
        ...,
        help="Folder of CT volumes (NIfTI, nnU-Net raw, DICOM series), of chest X-rays (PNG/JPEG/DICOM; ChestX-ray14, "
        "CheXpert, MIMIC-CXR-JPG layouts) or of eye data (fundus photographs and OCT volumes).",
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Run directory (default $MEDVIT_RUNS/pretrain; runs/pretrain when MEDVIT_RUNS is unset).",
    ),
    method: Optional[str] = typer.Option(
        None,
        "--method",
        help="hi-end-mae | mae | uni4eye (default: chosen from the data and logged with the reason: 3D CT -> "
        "hi-end-mae, 2D X-rays -> mae with the thorax recipe, fundus + OCT -> uni4eye).",
    ),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        help="Model size. CT: paper | base | small | tiny (default base); X-rays: cxr-vit-s | cxr-vit-b | cxr-tiny "
        "(default cxr-vit-s); eye: uni4eye-vit-l | uni4eye-vit-b | uni4eye-tiny | uni4eye-cpu (default uni4eye-vit-b).",
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the inputs (default 100)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (instead of --epochs)."),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        help="Per step and process: CT volumes (each yields --crops-per-volume crops) or 2D images (default 2); "
        "Uni4Eye's 3D batch is data.batch_size_3d (default batch / 8).",
    ),
    crops_per_volume: Optional[int] = typer.Option(
        None, "--crops-per-volume", help="Random crops drawn from each volume per step (default 4)."
    ),
    mask_ratio: Optional[float] = typer.Option(None, "--mask-ratio", help="Fraction of patches masked (0.75)."),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Peak learning rate (default: CT the preset's, 1e-4; recipes blr x effective batch / 256)."
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data loader processes per rank (default 0)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (see config.yaml of a previous run)."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override any config key, e.g. --set data.spacing=[1,1,2] (repeatable)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights, masks, crops and order (default 0)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Self-supervised pretraining (Hi-End-MAE, MAE or Uni4Eye) on a folder of raw images; exports the encoder(s)."""
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
        # typer turns Ctrl-C into Exit(130), which a non-standalone call returns instead of raising
        rv = command.main(
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
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
