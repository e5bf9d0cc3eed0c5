"""Seconds per volume and peak memory of ``medvit ct-seg predict`` vs MONAI's UNETR + ``sliding_window_inference``.

Both sides get the same network function: a ``monai.networks.nets.UNETR`` (seeded random init, or ``--train-steps``
of fine-tuning on synthetic CT first) and medvit's :class:`~medvit.apps.ct_seg.model.UNETR` built from its state
dict with :meth:`UNETR.from_monai_unetr` (identical outputs in fp32, checked here), so any difference in the
label maps comes from numerics (bf16 on CUDA) and any difference in time from the pipelines:

* **medvit**: ``medvit.apps.ct_seg.api.predict`` as the CLI runs it (read, RAS + 1.5 mm + HU window + foreground
  crop, sliding window with Gaussian blending, probabilities resampled onto the input grid, argmax, NIfTI write,
  manifest; overlays off). bf16 autocast on CUDA (its default), fp32 on CPU.
* **MONAI**: the UNETR tutorial pipeline: ``LoadImaged -> EnsureChannelFirstd -> Orientationd -> Spacingd ->
  ScaleIntensityRanged -> CropForegroundd``, ``sliding_window_inference(mode="gaussian")`` under ``no_grad`` in fp32,
  ``Invertd`` of the softmax back to the input grid, ``AsDiscreted(argmax)``, ``SaveImaged``.

Same ViT size, crop, overlap and windows per batch. The random output layer is scaled by 50 so that the logits are
decisive (random weights otherwise give near-ties that any rounding flips); the agreement of the two label maps
then measures whether the pipelines compute the same thing on the same grid (they differ only on the one-voxel rim
of the foreground crop, where medvit counts the cropped-away air as background while ``Invertd`` pads every class
with 0). Each side runs in its own subprocess (clean peak RSS and CUDA peak). Dice of each side against the synthetic
ground truth (meaningless for random weights, equal by construction), and the agreement between the two.

Usage (the issue's setting: 512x512x200, ViT-B, 96^3, overlap 0.5; CUDA recommended)::

    python benchmarks/ct_seg_predict.py --shape 512,512,200 --vit base --device cuda

CPU run that finishes in a few minutes on 2 cores (``--repeats 3``: three alternating pairs of runs, medians; the
shared machine's speed drifts by 10-20 % between runs)::

    OMP_NUM_THREADS=1 python benchmarks/ct_seg_predict.py --shape 256,256,100 --vit small --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import peak_rss_mib

VITS = {  # width, heads (12 blocks, MONAI UNETR's fixed depth)
    "tiny": (192, 3),
    "small": (384, 6),
    "base": (768, 12),
}
LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "gallbladder"}


def _peak() -> dict[str, float]:
    out = {"peak_rss_mib": peak_rss_mib()}
    import torch

    if torch.cuda.is_available():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ------------------------------------------------------------------------------------------------ workers
def run_medvit(args: argparse.Namespace) -> dict[str, Any]:
    from medvit.apps.ct_seg.api import predict

    t0 = time.perf_counter()
    summary = predict(
        args.run,
        args.inputs,
        args.pred,
        overlay=False,
        device=args.device,
        precision=args.precision,
        sw_batch_size=args.sw_batch,
        overlap=args.overlap,
        workers=1,
        quiet=True,
        overwrite=True,
    )
    seconds = time.perf_counter() - t0
    if summary.error:
        raise SystemExit(f"medvit predict failed: {summary.line}")
    return {"seconds": seconds, **_peak()}


def run_monai(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNETR
    from monai.transforms import (
        AsDiscreted,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    width, heads = VITS[args.vit]
    crop = (args.crop,) * 3
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    t_start = time.perf_counter()  # like the medvit side: building the model and loading weights count
    model = UNETR(
        1, len(LABELS), crop, feature_size=args.feature_size, hidden_size=width, mlp_dim=4 * width, num_heads=heads
    )
    model.load_state_dict(torch.load(args.monai_weights, map_location="cpu", weights_only=True))
    model.eval().to(device)
    pre = Compose(
        [
            LoadImaged("image", image_only=False),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd("image", pixdim=(1.5, 1.5, 1.5), mode="bilinear"),
            ScaleIntensityRanged("image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
            CropForegroundd("image", source_key="image", allow_smaller=True),
        ]
    )
    post = Compose(
        [
            Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", argmax=True),
            SaveImaged(
                "pred",
                output_dir=args.pred,
                output_postfix="",
                separate_folder=False,
                output_dtype=np.uint8,
                resample=False,
                print_log=False,
            ),
        ]
    )
    files = sorted(Path(args.inputs).glob("*.nii.gz"))
    for f in files:
        d = pre({"image": str(f)})
        x = d["image"][None].to(device)
        with torch.no_grad():
            logits = sliding_window_inference(x, crop, args.sw_batch, model, overlap=args.overlap, mode="gaussian")
        d["pred"] = torch.softmax(logits, 1)[0].cpu()  # Invertd takes the applied transforms from d["image"]
        post(d)
    seconds = time.perf_counter() - t_start
    return {"seconds": seconds, **_peak()}


# ------------------------------------------------------------------------------------------------ setup
def setup(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from monai.networks.nets import UNETR as MonaiUNETR  # noqa: N811

    from medvit.apps.ct_seg.model import UNETR
    from medvit.apps.ct_seg.model_file import MODEL_FORMAT, MODEL_FORMAT_VERSION, save_run_model
    from medvit.shared.data.synth import synth_ct

    shape = tuple(int(s) for s in args.shape.split(","))
    synth_ct(work / "data", n=args.volumes, seed=7, shape=shape, n_organs=(5, 5))
    inputs = work / "inputs"
    inputs.mkdir()
    for f in sorted((work / "data" / "imagesTr").glob("*.nii.gz")):
        os.symlink(f, inputs / f.name.replace("_0000", ""))
    width, heads = VITS[args.vit]
    crop = (args.crop,) * 3
    torch.manual_seed(0)
    ref = MonaiUNETR(
        1, len(LABELS), crop, feature_size=args.feature_size, hidden_size=width, mlp_dim=4 * width, num_heads=heads
    ).eval()
    with torch.no_grad():  # decisive logits: random weights otherwise give near-ties that any rounding flips
        ref.out.conv.conv.weight.mul_(50.0)
    sd = ref.state_dict()
    torch.save(sd, work / "monai_unetr.pt")
    ours = UNETR.from_monai_unetr(sd, num_heads=heads).eval()
    x = torch.rand(1, 1, *crop)
    with torch.no_grad():
        diff = float((ours(x) - ref(x)).abs().max())
    spec = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "encoder": ours.encoder.arch_kwargs,
        "decoder": ours.decoder_kwargs(),
        "labels": {str(k): v for k, v in LABELS.items()},
        "preprocess": {
            "spacing": [1.5, 1.5, 1.5],
            "hu_window": [-175.0, 250.0],
            "orientation": "RAS",
            "crop_foreground": True,
        },
        "crop_size": list(crop),
        "infer": {"overlap": args.overlap, "sw_batch_size": args.sw_batch, "blend": "gaussian"},
    }
    run = work / "run"
    save_run_model(run / "model.safetensors", ours.state_dict(), spec)  # model.safetensors + model.json
    return {"fp32_max_abs_diff": diff, "shape": shape, "params": sum(p.numel() for p in ours.parameters())}


def dice_table(work: Path) -> dict[str, Any]:
    import nibabel as nib

    from medvit.shared.metrics.segmentation import dice_only

    out: dict[str, Any] = {}
    for f in sorted((work / "data" / "labelsTr").glob("*.nii.gz")):
        gt_img = nib.load(f)
        gt = np.asarray(gt_img.dataobj).astype(np.int64)
        preds = {}
        for side in ("medvit", "monai"):
            p = nib.load(work / f"pred_{side}" / f.name)
            assert p.shape == gt.shape, (side, p.shape, gt.shape)
            preds[side] = np.asarray(p.dataobj).astype(np.int64)
            out.setdefault(f"{side}_affine_equal", []).append(bool(np.allclose(p.affine, gt_img.affine, atol=1e-5)))
        fg = list(range(1, len(LABELS)))
        out.setdefault("medvit_vs_gt", []).append(dice_only(preds["medvit"], gt, fg))
        out.setdefault("monai_vs_gt", []).append(dice_only(preds["monai"], gt, fg))
        out.setdefault("agreement", []).append(dice_only(preds["medvit"], preds["monai"], fg))
        out.setdefault("voxels_equal", []).append(float((preds["medvit"] == preds["monai"]).mean()))
    return {k: (v if k.endswith("equal") else _mean_dict(v)) for k, v in out.items()}


def _mean_dict(rows: list[Any]) -> Any:
    if not isinstance(rows[0], dict):
        return rows
    return {LABELS[k]: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]} | {
        "mean": round(float(np.mean([np.mean(list(r.values())) for r in rows])), 4)
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="512,512,200", help="synthetic CT size X,Y,Z (0.8 x 0.8 x 2.5 mm voxels)")
    p.add_argument("--volumes", type=int, default=1)
    p.add_argument("--vit", choices=sorted(VITS), default="base")
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--feature-size", type=int, default=16)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--sw-batch", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="medvit side: auto (bf16 on CUDA) | fp32 | bf16")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    p.add_argument("--repeats", type=int, default=1, help="alternating medvit/MONAI runs; medians are reported")
    p.add_argument("--worker", choices=["medvit", "monai"], help=argparse.SUPPRESS)
    for name in ("run", "inputs", "pred", "monai-weights"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        res = run_medvit(args) if args.worker == "medvit" else run_monai(args)
        print("RESULT " + json.dumps(res))
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="ct_seg_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    info = setup(args, work)
    results: dict[str, Any] = {}
    runs: dict[str, list[float]] = {"medvit": [], "monai": []}
    for _rep, side in ((r, s) for r in range(args.repeats) for s in ("medvit", "monai")):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            side,
            "--run",
            str(work / "run"),
            "--inputs",
            str(work / "inputs"),
            "--pred",
            str(work / f"pred_{side}"),
            "--monai-weights",
            str(work / "monai_unetr.pt"),
            "--vit",
            args.vit,
            "--crop",
            str(args.crop),
            "--feature-size",
            str(args.feature_size),
            "--overlap",
            str(args.overlap),
            "--sw-batch",
            str(args.sw_batch),
            "--device",
            args.device,
            "--precision",
            args.precision,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{side} worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        res = json.loads(line[len("RESULT ") :])
        runs[side].append(res["seconds"] / args.volumes)
        prev = results.get(side, {})
        res["peak_rss_mib"] = max(res["peak_rss_mib"], prev.get("peak_rss_mib", 0.0))
        results[side] = res
    for side in runs:
        results[side]["s_per_volume"] = statistics.median(runs[side])
    dice = dice_table(work)
    pair_ratios = [a / b for a, b in zip(runs["medvit"], runs["monai"], strict=True)]
    ratio = statistics.median(pair_ratios)
    import torch

    device = (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else platform.processor()
    )
    print(
        f"\nct-seg predict vs MONAI UNETR, {args.volumes} volume(s) {info['shape']} at 0.8x0.8x2.5 mm -> 1.5 mm, "
        f"ViT-{args.vit} ({info['params'] / 1e6:.1f} M params), crop {args.crop}^3, overlap {args.overlap}, "
        f"sw_batch {args.sw_batch}, device {device}, threads {torch.get_num_threads()}"
    )
    print(f"fp32 max |medvit - MONAI| logits on one crop: {info['fp32_max_abs_diff']:.2e}")
    print("| pipeline | s/volume | peak RSS MiB | CUDA peak MiB | mean Dice vs GT |")
    print("|---|---|---|---|---|")
    for side in ("medvit", "monai"):
        r = results[side]
        print(
            f"| {side} | {r['s_per_volume']:.1f} | {r['peak_rss_mib']:.0f} | {r.get('cuda_peak_mib', 0):.0f} | "
            f"{dice[side + '_vs_gt']['mean']:.4f} |"
        )
    print(
        f"time ratio medvit / MONAI: {ratio:.2f} (median of {len(pair_ratios)} alternating pairs: "
        + ", ".join(f"{r:.2f}" for r in pair_ratios)
        + ")"
    )
    for side in runs:
        print(f"{side} s/volume per run: " + ", ".join(f"{t:.1f}" for t in runs[side]))
    print(f"agreement Dice (medvit vs MONAI label maps): {dice['agreement']}")
    print(f"fraction of voxels with the same label: {dice['voxels_equal']}")
    print(
        f"label maps on the input grid (affine equal): medvit {dice['medvit_affine_equal']}, "
        f"MONAI {dice['monai_affine_equal']}"
    )
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
