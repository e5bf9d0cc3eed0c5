"""``medvit data``: synthetic datasets, data cards, and checking folders against cards.

Thin layer over :mod:`medvit.shared.data.synth` and :mod:`medvit.shared.data.cards`; heavy imports (numpy,
nibabel, opencv) happen inside the commands so ``medvit --help`` stays fast.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from medvit.shared.engine.progress import ItemProgress
from medvit.shared.errors import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False)


class SynthKind(str, Enum):
    """Generators of ``medvit data synth``."""

    ct = "ct"
    faces = "faces"
    cells = "cells"
    cxr = "cxr"
    fundus = "fundus"
    oct = "oct"
    deepfake = "deepfake"


ACCEPTS: dict[str, tuple[str, ...]] = {
    "ct": ("--n", "--shape", "--spacing", "--oblique", "--test"),
    "faces": ("--n", "--identities", "--per-identity", "--size", "--held-out", "--looks"),
    "cells": ("--n", "--size", "--large"),
    "cxr": ("--n", "--size", "--bit-depth", "--dicom", "--layout"),
    "fundus": ("--n", "--size"),
    "oct": ("--n", "--shape", "--bscans"),
    "deepfake": ("--n", "--size", "--frames"),
}
"""The options each generator takes; any other option given is an error (never silently ignored)."""


def _parse_tuple(text: str, n: int, cast: type, option: str) -> tuple[Any, ...]:
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        values = tuple(cast(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != n:
        raise ConfigError(f"{option} expects {n} comma-separated {cast.__name__} values (e.g. 96,96,64), got {text!r}")
    return values


def _reject(kind: SynthKind, given: dict[str, Any]) -> None:
    """Options that do not apply to this kind are errors, not silently ignored."""
    bad = [name for name, value in given.items() if value not in (None, False) and name not in ACCEPTS[kind.value]]
    if bad:
        raise ConfigError(f"option(s) {', '.join(bad)} do not apply to 'synth {kind.value}'")


class _ProgressCallback:
    """A ``progress(done, total)`` callback (generators, validators) shown as an :class:`ItemProgress` on stderr.

    A new bar starts when ``total`` changes or ``done`` goes back (a validator reports each split on its own).
    """

    def __init__(self, description: str, *, enabled: bool) -> None:
        self.description = description
        self.enabled = enabled
        self.bar: ItemProgress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None or total != self.bar.total or done < self.bar.done:
            self.close()
            self.bar = ItemProgress(total, self.description, enabled=self.enabled)
        while self.bar.done < done:
            self.bar.advance()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _ProgressCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ct_options(n: int | None, shape: str | None, spacing: str | None, oblique: bool, test: int | None) -> dict:
    return {
        "n": n if n is not None else 8,
        "shape": _parse_tuple(shape, 3, int, "--shape") if shape else (96, 96, 64),
        "spacing": _parse_tuple(spacing, 3, float, "--spacing") if spacing else (0.8, 0.8, 2.5),
        "oblique": oblique,
        "n_test": test or 0,
    }


def _faces_options(
    n: int | None, identities: int | None, per_identity: int | None, size: int | None, held_out: bool, looks: int | None
) -> dict:
    if n is not None and identities is not None and n != identities:
        raise ConfigError(f"--n ({n}) and --identities ({identities}) disagree; give one of them")
    return {
        "identities": identities or n or 8,
        "images_per_identity": per_identity or 6,
        "size": size or 112,
        "held_out": held_out,
        "looks": looks,
    }


def _generator(kind: SynthKind, o: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The generator of ``kind`` and its keyword arguments from the command's options ``o`` (by option name)."""
    if kind is SynthKind.ct:
        from medvit.shared.data.synth import synth_ct

        return synth_ct, _ct_options(o["--n"], o["--shape"], o["--spacing"], o["--oblique"], o["--test"])
    if kind is SynthKind.faces:
        from medvit.shared.data.synth import synth_faces

        opts = (o["--n"], o["--identities"], o["--per-identity"], o["--size"], o["--held-out"], o["--looks"])
        return synth_faces, _faces_options(*opts)
    if kind is SynthKind.cells:
        from medvit.shared.data.synth_cells import synth_cells

        return synth_cells, {"n": o["--n"] or 64, "size": o["--size"] or 256, "large": o["--large"] or 0}
    if kind is SynthKind.cxr:
        from medvit.shared.data.synth_xray import synth_cxr

        layout = o["--layout"] or "flat"
        if layout not in ("flat", "chestxray14"):
            raise ConfigError(f"--layout must be flat or chestxray14, got {layout!r}")
        bits = o["--bit-depth"] or 8
        if bits not in (8, 16):
            raise ConfigError(f"--bit-depth must be 8 or 16, got {bits}")
        kw = {"n": o["--n"] or 64, "size": o["--size"] or 256, "bit_depth": bits, "layout": layout}
        return synth_cxr, {**kw, "n_dicom": o["--dicom"] or 0}
    if kind is SynthKind.fundus:
        from medvit.shared.data.synth_eye import synth_fundus

        return synth_fundus, {"n": o["--n"] or 64, "size": o["--size"] or 256}
    if kind is SynthKind.deepfake:
        from medvit.shared.data.synth_deepfake import synth_deepfake

        return synth_deepfake, {"n": o["--n"] or 12, "size": o["--size"] or 128, "frames": o["--frames"] or 16}
    from medvit.shared.data.synth_eye import synth_oct

    shape = _parse_tuple(o["--shape"], 3, int, "--shape") if o["--shape"] else (64, 64, 32)
    return synth_oct, {"n": o["--n"] or 16, "shape": shape, "bscan_folders": o["--bscans"]}


def _clear_out(kind: SynthKind, out: Path, overwrite: bool) -> None:
    """Refuse a non-empty OUT unless ``overwrite``; then remove only what a previous synth of ``kind`` wrote."""
    from medvit.shared.data.synth import clear_synth_outputs

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out}: output folder is not empty; pass --overwrite to replace generated files")
        removed = clear_synth_outputs(kind.value, out)
        if removed:
            shown = ", ".join(removed[:5]) + (", ..." if len(removed) > 5 else "")
            typer.echo(f"--overwrite: removed the previous {kind.value} output ({shown})", err=True)


def _print_summary(summary: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    title = escape(f"synth {summary.kind} -> {summary.root}")  # a path may contain [brackets]
    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in summary.counts.items():
        table.add_row(key, str(value))
    for key, value in summary.params.items():
        if key not in summary.counts:
            table.add_row(key, str(value))
    table.add_row("seconds", f"{summary.seconds:.1f}")
    Console().print(table)


@app.command()
def synth(
    kind: SynthKind = typer.Argument(..., help="What to generate."),
    out: Path = typer.Argument(..., help="Output folder (created; must be empty unless --overwrite)."),
    n: int | None = typer.Option(
        None,
        "--n",
        "-n",
        min=1,
        help="ct: training cases (8). faces: identities (8). cells: tiles over 3 folds (64). cxr, fundus: images "
        "(64). oct: volumes (16). deepfake: identity pairs (12).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; same seed, same files."),
    shape: str | None = typer.Option(
        None, "--shape", help="ct: volume size X,Y,Z in voxels (96,96,64). oct: rows,columns,B-scans (64,64,32)."
    ),
    spacing: str | None = typer.Option(None, "--spacing", help="ct: voxel size in mm (0.8,0.8,2.5)."),
    oblique: bool = typer.Option(False, "--oblique", help="ct: tilt the grid a few degrees (rotated affine)."),
    test: int | None = typer.Option(None, "--test", min=0, help="ct: extra cases in imagesTs/ + labelsTs/ (0)."),
    identities: int | None = typer.Option(None, "--identities", min=2, help="faces: identities (8)."),
    per_identity: int | None = typer.Option(None, "--per-identity", min=1, help="faces: images per identity (6)."),
    size: int | None = typer.Option(
        None,
        "--size",
        min=32,
        help="faces: image side in pixels (112). cells: tile side, multiple of 16 (256). cxr, fundus: side (256). "
        "deepfake: frame side (128).",
    ),
    held_out: bool = typer.Option(False, "--held-out", help="faces: a disjoint set of identities (heldout_XXX)."),
    looks: int | None = typer.Option(
        None, "--looks", min=1, help="faces: coarse looks the identities share (one per 8 identities)."
    ),
    large: int | None = typer.Option(
        None, "--large", min=0, help="cells: extra 640x768 images with labels in large/ for tiling (0)."
    ),
    bit_depth: int | None = typer.Option(None, "--bit-depth", help="cxr: PNG bit depth, 8 or 16 (8)."),
    dicom: int | None = typer.Option(None, "--dicom", min=0, help="cxr: write the first N images as DICOM DX (0)."),
    layout: str | None = typer.Option(None, "--layout", help="cxr: flat or chestxray14 (flat)."),
    bscans: bool = typer.Option(False, "--bscans", help="oct: also write each volume as numbered B-scan PNGs."),
    frames: int | None = typer.Option(None, "--frames", min=1, help="deepfake: frames per clip (16)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous synth output in OUT."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Write a small synthetic dataset in the field's layout (ct: nnU-Net raw; faces: identity folders; cells:
    H&E nucleus tiles as the PanNuke release; cxr: chest X-rays with findings; fundus: graded photographs; oct:
    NIfTI volumes with a class each; deepfake: real and reenacted face clips at three compression levels in the
    FaceForensics++ layout)."""
    given = {
        "--n": n,
        "--shape": shape,
        "--spacing": spacing,
        "--oblique": oblique,
        "--test": test,
        "--identities": identities,
        "--per-identity": per_identity,
        "--size": size,
        "--held-out": held_out,
        "--looks": looks,
        "--large": large,
        "--bit-depth": bit_depth,
        "--dicom": dicom,
        "--layout": layout,
        "--bscans": bscans,
        "--frames": frames,
    }
    # check every option before touching OUT, so a rejected call never deletes anything
    _reject(kind, given)
    generate, kwargs = _generator(kind, given)
    _clear_out(kind, out, overwrite)
    with _ProgressCallback(f"synth {kind.value}", enabled=not quiet) as progress:
        summary = generate(out, seed=seed, progress=progress, **kwargs)
    _print_summary(summary)


@app.command()
def validate(
    card: str = typer.Argument(..., help="Card id (see `medvit data cards`) or a card .yaml path."),
    directory: Path = typer.Argument(..., metavar="DIR", help="Dataset folder to check."),
    quick: bool = typer.Option(
        False, "--quick", help="Read headers only: faster, but truncated data, NaN voxels and label values go unseen."
    ),
) -> None:
    """Check a dataset folder against a data card; prints every problem, exit code 1 if there is any.

    Every file is decoded with the readers training uses, so OK means the data will load; --quick reads headers.
    """
    from medvit.shared.data.cards import load_card, validate_dir

    loaded = load_card(card)
    with _ProgressCallback(f"validate {loaded.id}", enabled=True) as progress:
        report = validate_dir(loaded, directory, progress=progress, quick=quick)
    for problem in report.problems:
        typer.echo(problem)  # plain echo: problem text may contain [brackets] that rich would eat as markup
    typer.echo(report.summary(), err=not report.ok)
    if not report.ok:
        raise typer.Exit(code=1)


@app.command()
def cards(card: str | None = typer.Argument(None, help="Show this card in full instead of the list.")) -> None:
    """List the data cards, or show one."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from medvit.shared.data.cards import cards_dir, list_cards, load_card

    console = Console()
    if card is not None:
        path = load_card(card).path  # parses strictly first, so a broken card is an error, not a listing
        if path is not None:
            typer.echo(f"# {path}")
            typer.echo(path.read_text(encoding="utf-8").rstrip())
        return
    ids = list_cards()
    if not ids:
        raise ConfigError(f"no data cards found in {cards_dir()} (a wheel install ships none; pass card paths)")
    table = Table(title=escape(f"data cards in {cards_dir()}"), title_justify="left")
    table.add_column("id", no_wrap=True)  # the id is what users type: never truncate it
    for column in ("layout", "used by", "name"):
        table.add_column(column)
    for card_id in ids:
        c = load_card(card_id)
        table.add_row(c.id, c.layout, ", ".join(c.used_by), c.name)
    console.print(table)
