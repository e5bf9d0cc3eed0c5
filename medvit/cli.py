"""The ``medvit`` command: one root typer app that mounts every sub-app explicitly.

This module must stay import-light (typer, rich and the stdlib only): ``medvit --help`` never imports
torch. Commands import what they need inside their bodies.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer
from typer.core import TyperGroup, TyperOption

from medvit import __version__
from medvit.apps.cell_seg.cli import app as cell_app
from medvit.apps.ct_seg.cli import app as ct_seg_app
from medvit.apps.cxr.cli import app as cxr_app
from medvit.apps.deepfake.cli import app as deepfake_app
from medvit.apps.eye.cli import app as eye_app
from medvit.apps.fiqa.cli import app as fiqa_app
from medvit.pretrain.cli import pretrain_command
from medvit.shared.data.cli import app as data_app
from medvit.shared.errors import MedvitError
from medvit.weights_cli import app as weights_app

_typer_display_type = TyperOption.display_type_rich


def _display_type_rich(self: TyperOption, ctx: Any) -> str | None:
    # typer 0.29 labels on/off flags `<bool>` in --help although they take no value: show no type for them.
    if self.is_flag and self.metavar is None:
        return None
    return _typer_display_type(self, ctx)


TyperOption.display_type_rich = _display_type_rich  # type: ignore[method-assign]


class _MedvitGroup(TyperGroup):
    """Root group: turns user errors into one clear line and a non-zero exit code, no traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except MedvitError as err:
            typer.secho(f"error: {err}", err=True, fg="red")
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True, fg="yellow")
            ctx.exit(130)


app = typer.Typer(
    name="medvit",
    cls=_MedvitGroup,
    help="Vision Transformers for medical and face imaging: pretraining, fine-tuning, batch inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # never dump tensors or patient paths into a traceback
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"medvit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Show version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


@app.command()
def doctor() -> None:
    """Show versions, device, threads and where weights and runs go."""
    from medvit.shared.doctor import report

    report()


@app.command()
def demo(
    part: str = typer.Argument(
        "all", help="ct-seg (CT pretraining + segmentation), cell, cxr, eye, fiqa, deepfake, or all."
    ),
    out: str = typer.Option("demo_out", "--out", help="Folder for the demo's data and runs."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run the main jobs end to end on built-in synthetic data (one app's part with PART)."""
    from medvit.demo import PARTS, run_demo

    run_demo(out, quiet=quiet, parts=PARTS if part == "all" else (part,))


# Sub-apps, mounted explicitly (no registry for apps: see ARCHITECTURE.md).
app.command("pretrain")(pretrain_command)
app.add_typer(ct_seg_app, name="ct-seg", help="CT segmentation: UNETR decoder on the shared ViT.")
app.add_typer(cell_app, name="cell", help="Pathology nucleus segmentation and classification (CellVTA).")
app.add_typer(cxr_app, name="cxr", help="Chest X-ray classification (multi-label findings, thorax MAE recipe).")
app.add_typer(eye_app, name="eye", help="Fundus and OCT classification (DR grades, OCT classes, glaucoma).")
app.add_typer(fiqa_app, name="fiqa", help="Face-image quality assessment (ViT-FIQA).")
app.add_typer(
    deepfake_app,
    name="deepfake",
    help="Deepfake detection (GGViT-style): global-guided multi-stream ViT on FaceForensics++.",
)
app.add_typer(weights_app, name="weights", help="Inspect and convert checkpoints; list backbones.")
app.add_typer(data_app, name="data", help="Synthetic datasets and data-card validation.")
