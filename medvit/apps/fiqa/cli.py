"""``medvit fiqa``: face-image quality with ViT-FIQA (train, score, evaluate, convert, extract-bin).

Thin layer over :mod:`medvit.apps.fiqa.api`: each command parses its options (``train`` resolves them into a
``FiqaConfig``) and calls the API; torch, insightface and OpenCV are imported inside the commands so that
``medvit --help`` stays fast. Mounted by the root CLI as ``fiqa``.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Face-image quality (ViT-FIQA): train, score folders of faces, evaluate with EDC curves.",
)


@app.command()
def train(
    data: Path = typer.Argument(..., help="Identity folders DATA/<identity>/*.jpg, or a folder with train.rec/.idx."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Run directory (config, checkpoints, metrics, model.safetensors). Default: $MEDVIT_RUNS/fiqa "
        "(./runs/fiqa).",
    ),
    preset: str = typer.Option("default", "--preset", help="default (reference recipe) | base (depth 24) | tiny."),
    config: Path | None = typer.Option(None, "--config", help="YAML config applied over the preset."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set optim.lr=5e-4 (repeatable)."),
    val: list[Path] = typer.Option(
        [], "--val", help="Pair list for verification accuracy: pairs.txt, pair_list.txt or .bin (repeatable)."
    ),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (instead of epochs)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Faces per step and rank."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    margin: str | None = typer.Option(None, "--margin", help="cosface (s=64, m=0.4) | arcface (m=0.5)."),
    head: str | None = typer.Option(None, "--head", help="token (ViT-FIQA) | full | crfiqa."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader workers."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/last.pt."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train ViT-FIQA: CosFace + certainty-ratio quality regression (CE + 10 * SmoothL1). Torchrun-ready."""
    from medvit.apps.fiqa.api import train as train_api
    from medvit.apps.fiqa.config import load_fiqa_config

    cfg = load_fiqa_config(
        preset,
        config,
        set_,
        **{
            "val_pairs": [str(v) for v in val] or None,
            "optim.steps": steps,
            "optim.epochs": epochs,
            "optim.batch_size": batch_size,
            "optim.lr": lr,
            "optim.device": device,
            "optim.workers": workers,
            "loss.margin": margin,
            "model.head": head,
        },
    )
    res = train_api(cfg, data, out, resume=resume, quiet=quiet)
    typer.echo(f"trained {res.steps} steps on {res.identities} identities, final loss {res.final_loss:.4f}")
    for k, v in res.val.items():
        typer.echo(f"  {k}: {v:.4f}")
    typer.echo(f"model: {res.weights}  (score with: medvit fiqa score DIR --weights {res.run_dir} --out OUT)")


@app.command()
def score(
    inp: Path = typer.Argument(..., metavar="INPUT", help="Image, folder of images (recursive) or .txt list."),
    out: Path = typer.Option(..., "--out", help="Output folder: scores.csv, manifest.csv, quality_hist.png, ..."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Run directory, model.safetensors, or an official ViT-FIQA .pt checkpoint."
    ),
    aligned: bool = typer.Option(False, "--aligned", help="Inputs are aligned 112x112 crops: skip detection."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Score every face, not only the largest."),
    models: Path | None = typer.Option(
        None, "--models", help="insightface model folder with an SCRFD detector (default ~/.insightface/models)."
    ),
    detector: str = typer.Option("auto", "--detector", help="auto | scrfd | mtcnn | dlib."),
    min_face_score: float | None = typer.Option(
        None,
        "--min-face-score",
        help="Detections scoring below it are logged and not scored. Default per detector, from scores on real "
        "photos: scrfd 0.5, mtcnn 0.9 (probabilities), dlib 0.3 (HOG SVM score; dlib's own threshold is 0).",
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per forward pass."),
    workers: int = typer.Option(2, "--workers", min=0, help="Threads decoding/detecting/aligning ahead."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Torch compute threads."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rescore images already in OUT."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Score face quality (higher = better); no-face and unreadable images get their own rows."""
    from medvit.apps.fiqa.api import score as score_api

    res = score_api(
        inp,
        out,
        weights=weights,
        aligned=aligned,
        all_faces=all_faces,
        models=models,
        detector=detector,
        min_face_score=min_face_score,
        batch_size=batch_size,
        workers=workers,
        threads=threads,
        device=device,
        overwrite=overwrite,
        quiet=quiet,
    )
    typer.echo(res.line)
    if res.contact_sheet is not None:
        typer.echo(f"contact sheet: {res.contact_sheet}")
    raise typer.Exit(res.exit_code)


@app.command()
def evaluate(
    pairs: Path = typer.Argument(..., help="pairs.txt (LFW), pair_list.txt (a b is_same) or insightface .bin."),
    out: Path = typer.Option(..., "--out", help="Folder for edc.csv, edc_summary.csv, edc.png, pairs_scored.csv."),
    quality: Path | None = typer.Option(None, "--quality", help="scores.csv of `fiqa score` (else: --weights)."),
    embeddings: str = typer.Option(
        "fiqa",
        "--embeddings",
        help="fiqa (our embedding head) | dlib (dlib ResNet, medvit[face]) | recognition .onnx (insightface) | "
        "folder of .npy.",
    ),
    weights: Path | None = typer.Option(None, "--weights", help="FIQA model (for --embeddings fiqa / no --quality)."),
    images: Path | None = typer.Option(None, "--images", help="Image root of the pair list."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Faces per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
) -> None:
    """Error-versus-Discard curves: FNMR at FMR 1e-2/1e-3/1e-4 vs discarded lowest-quality pairs (0-95 %)."""
    from rich.console import Console
    from rich.table import Table

    from medvit.apps.fiqa.api import evaluate as evaluate_api

    res = evaluate_api(
        pairs,
        out,
        quality=quality,
        weights=weights,
        embeddings=embeddings,
        images=images,
        batch_size=batch_size,
        device=device,
    )
    table = Table(title=f"EDC on {pairs.name} (verification accuracy {res.accuracy:.4f}); lower AUC is better")
    for col in ("threshold", "FMR", "FNMR @0%", "AUC", "pAUC 20%", "pAUC 30%"):
        table.add_column(col, justify="right")
    for s in res.summary:
        table.add_row(
            s["convention"], f"{s['fmr']:g}", *(f"{s[k]:.4f}" for k in ("fnmr_0", "auc", "pauc_20", "pauc_30"))
        )
    Console().print(table)
    typer.echo(f"wrote {res.edc_csv}, {res.summary_csv}, {res.plot}")


@app.command()
def convert(
    checkpoint: Path = typer.Argument(..., help="Official ViT-FIQA checkpoint (backbones/vit_qs.py keys)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors (+ .json sidecar)."),
    num_heads: int | None = typer.Option(
        None,
        "--num-heads",
        min=1,
        help="Attention heads of the checkpoint (weights do not record them). Default: the checkpoint's config "
        "(CHECKPOINT.json beside it, or a config saved in it), else 8 for a published arcface_torch / ViT-FIQA "
        "shape, else refused.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Import the official ViT-FIQA weights (token, full or crfiqa head) into medvit's format."""
    from medvit.apps.fiqa.api import convert as convert_api

    side = convert_api(checkpoint, out, overwrite=overwrite, num_heads=num_heads)
    kw = side["backbone_kwargs"]
    typer.echo(
        f"wrote {out}: head {side['head']}, width {kw['embed_dim']}, depth {kw['depth']}, "
        f"num_heads={kw['num_heads']} ({side['num_heads_source']})"
    )


@app.command("extract-bin")
def extract_bin(
    bin_file: Path = typer.Argument(..., metavar="BIN", help="insightface verification .bin (lfw.bin, agedb_30.bin)."),
    out: Path = typer.Option(..., "--out", help="Folder for images/<i>.jpg and pair_list.txt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing pair_list.txt."),
) -> None:
    """Unpack a .bin (read without running pickle code) into images + pair_list.txt, as CR-FIQA's scripts do."""
    from medvit.apps.fiqa.api import extract_bin as extract_api

    path = extract_api(bin_file, out, overwrite=overwrite)
    typer.echo(f"wrote {path} and {out / 'images'}")
