"""``medvit weights``: list backbones, inspect and convert checkpoints. No torch import at module top."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


class Format(str, Enum):
    auto = "auto"
    timm = "timm"
    mae = "mae"
    hi_end_mae = "hi-end-mae"
    monai = "monai"
    medvit = "medvit"
    vit_fiqa = "vit-fiqa"


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
    fmt: Format = typer.Option(Format.auto, "--format", help="Source format; auto detects it from the keys."),
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

    if out.suffix != ".safetensors":
        raise WeightsError(f"{out}: the output must end in .safetensors")
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} exists; pass --overwrite to replace it")
    from medvit.shared.schema import parse_arch_overrides

    overrides = parse_arch_overrides(set_)
    from medvit.shared.backbone.weights import WholeModelCheckpointError, convert_checkpoint

    try:
        report, kwargs = convert_checkpoint(file, out, source_format=fmt.value, arch_overrides=overrides)
    except WholeModelCheckpointError as err:
        # The app owns the heads, so its importer writes the file (the backbone layer does not import apps).
        if err.source_format != "vit-fiqa":
            raise
        # Weights give every shape but the head count, so num_heads is the one override that applies.
        if set(overrides) - {"num_heads"}:
            raise ConfigError(
                f"{file}: only --set num_heads=N applies to a ViT-FIQA checkpoint (its weights give every other "
                f"shape); got {', '.join(sorted(set(overrides) - {'num_heads'}))}"
            ) from None
        heads = overrides.get("num_heads")
        if heads is not None and (not isinstance(heads, int) or isinstance(heads, bool) or heads < 1):
            raise ConfigError(f"--set num_heads={heads!r}: expected a positive integer") from None
        from medvit.apps.fiqa.api import convert as convert_fiqa
        from medvit.apps.fiqa.model import checkpoint_config

        side = convert_fiqa(
            file,
            out,
            overwrite=overwrite,
            state_dict=err.state_dict,
            num_heads=heads,
            config=checkpoint_config(file, err.info),
        )
        kw = side["backbone_kwargs"]
        typer.echo(
            f"wrote {out} (ViT-FIQA, head {side['head']}, width {kw['embed_dim']}, depth {kw['depth']}, "
            f"num_heads={kw['num_heads']} ({side['num_heads_source']})); "
            f"score with `medvit fiqa score DIR --weights {out}`"
        )
        return
    typer.echo(f"wrote {out} ({report.summary()})")
    if report.dropped:
        typer.echo(f"dropped {len(report.dropped)} non-backbone key(s), e.g. {', '.join(report.dropped[:3])}")
    typer.echo("architecture: " + ", ".join(f"{k}={kwargs[k]}" for k in ("embed_dim", "depth", "num_heads")))
