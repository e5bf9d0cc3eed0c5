"""``medvit weights``: list backbones, inspect and convert checkpoints. No torch import at module top.

An entry point (ARCHITECTURE.md, "Layers"): it imports the app packages so that the whole-model checkpoint formats
they register (:mod:`medvit.shared.backbone.formats`) are known to ``inspect`` and ``convert``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

import medvit.apps.cell_seg  # noqa: F401 - registers the CellVTA / CellViT checkpoint formats
import medvit.apps.fiqa  # noqa: F401 - registers the ViT-FIQA checkpoint format

app = typer.Typer(no_args_is_help=True)

# Backbone formats the shared layer converts itself (medvit.shared.backbone.weights.FORMATS, without importing torch).
_BACKBONE_FORMATS = ("timm", "mae", "hi-end-mae", "monai", "medvit", "uni4eye")


def _format_names() -> list[str]:
    from medvit.shared.backbone.formats import whole_model_formats

    return ["auto", *_BACKBONE_FORMATS, *(f.name for f in whole_model_formats())]


@app.command("list")
def list_cmd(pattern: str = typer.Argument("*", help="Shell pattern, e.g. 'vit_*_3d'.")) -> None:
    """List registered backbones with their size."""
    from rich.console import Console
    from rich.table import Table

    from medvit.shared.backbone.registry import backbone_kwargs, list_backbones

    table = Table("name", "dims", "patch", "width", "depth", "heads", "input")
    for name in list_backbones(pattern):
        kw = backbone_kwargs(name)
        patch = kw.get("patch_size", 16)
        dims = 2 if isinstance(patch, int) else len(patch)
        table.add_row(
            name,
            f"{dims}D",
            str(patch),
            str(kw.get("embed_dim")),
            str(kw.get("depth")),
            str(kw.get("num_heads")),
            str(kw.get("img_size")),
        )
    Console().print(table)


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="Checkpoint: .safetensors (medvit) or a torch .pt/.pth."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Detect a checkpoint's source format and show its architecture, tensor count and key summary."""
    from medvit.shared.backbone.weights import inspect_checkpoint

    info = inspect_checkpoint(file)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{file}[/bold]")
    console.print(f"format: [cyan]{info['format']}[/cyan]  wrapper: {info['wrapper']}")
    console.print(
        f"tensors: {info['tensors']}  parameters: {info['parameters']:,}  dtypes: {', '.join(info['dtypes'])}"
    )
    arch = info.get("architecture")
    if isinstance(arch, dict):
        console.print("architecture: " + ", ".join(f"{k}={v}" for k, v in arch.items()))
    else:
        console.print(f"architecture: {arch}")
    table = Table("key group", "tensors")
    for group, count in info["key_groups"].items():
        table.add_row(group, str(count))
    console.print(table)


@app.command()
def convert(
    file: Path = typer.Argument(
        ..., help="Foreign checkpoint (timm, MAE, Hi-End-MAE, MONAI ViT/UNETR, ViT-FIQA / arcface_torch face ViT)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors (a .json sidecar is written beside it)."),
    fmt: str = typer.Option(
        "auto", "--format", help="Source format: auto (from the keys), timm, mae, hi-end-mae, monai, medvit, vit-fiqa."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Architecture override KEY=VALUE (YAML value), e.g. --set num_heads=16."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Convert a foreign checkpoint into medvit's safetensors + sidecar format.

    Backbone checkpoints become a backbone file; a ViT-FIQA checkpoint becomes a whole FIQA model (quality token
    and heads kept) that `medvit fiqa score --weights` takes.
    """
    from medvit.shared.errors import ConfigError, WeightsError

    if fmt not in _format_names():
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(_format_names())}")
    if out.suffix != ".safetensors":
        raise WeightsError(f"{out}: the output must end in .safetensors")
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} exists; pass --overwrite to replace it")
    from medvit.shared.schema import parse_arch_overrides

    overrides = parse_arch_overrides(set_)
    from medvit.shared.backbone.formats import WholeModelImport, get_format
    from medvit.shared.backbone.weights import WholeModelCheckpointError, convert_checkpoint

    try:
        report, kwargs = convert_checkpoint(file, out, source_format=fmt, arch_overrides=overrides)
    except WholeModelCheckpointError as err:
        # The app owns the heads, so its registered importer writes the file (the shared layer imports no app).
        whole = get_format(err.source_format)
        if whole is None or err.state_dict is None:
            raise
        job = WholeModelImport(file, out, err.state_dict, err.info or {}, overrides, overwrite)
        typer.echo(whole.importer(job))
        return
    typer.echo(f"wrote {out} ({report.summary()})")
    if report.dropped:
        typer.echo(f"dropped {len(report.dropped)} non-backbone key(s), e.g. {', '.join(report.dropped[:3])}")
    typer.echo("architecture: " + ", ".join(f"{k}={kwargs[k]}" for k in ("embed_dim", "depth", "num_heads")))
