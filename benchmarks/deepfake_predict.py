"""Throughput of ``medvit deepfake predict`` on a folder of videos vs the bare model forward on preloaded crops.

Numbers from one run (the machine is shared, so only ratios within a run are meaningful):

1. **bare forward**: the GGViT-style network (global stream + K part streams, fusion) on crops that are already
   decoded, cropped, normalised and in memory, in batches of ``--batch-size``, under ``inference_mode``;
2. **predict**: the full command path, :func:`medvit.apps.deepfake.api.predict` on ``--videos`` synthetic clips
   (``medvit data synth deepfake``; faces from their sidecars, so detection costs only the sidecar read):
   decoding ``--frames`` evenly spaced frames with opencv, tracking, the 1.3-margin crops in ``--workers`` loader
   threads overlapped with the forward pass, per-frame CSVs and frame strips. Model loading is excluded;
3. **FLOP/s**: model FLOPs per crop (``torch.utils.flop_counter.FlopCounterMode``, 2 FLOPs per MAC) times the bare
   rate, against a square fp32 ``torch.mm`` peak measured in the same process.

Target: predict >= 0.7 x bare forward (decode and detection hidden).

Usage: ``python benchmarks/deepfake_predict.py --preset small --videos 24 --frames 32`` (``--preset tiny`` for a
quick check; ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch


def _run_dir(folder: Path, preset: str, crop: int) -> Path:
    """An untrained run of ``preset`` (speed does not depend on the weights)."""
    from medvit.apps.deepfake.config import load_deepfake_config
    from medvit.apps.deepfake.model_file import model_from_spec, new_model_spec, save_run_model
    from medvit.shared.config import to_dict

    m = to_dict(load_deepfake_config(preset).model)
    m.pop("weights", None)
    spec = new_model_spec(m, crop_size=crop, margin=1.3, train={"method": "Face2Face", "levels": ["c23"]})
    save_run_model(folder / "model.safetensors", model_from_spec(spec).state_dict(), spec)
    (folder / "model.json").write_text((folder / "model.safetensors").with_suffix(".json").read_text())
    return folder


def _bare(model: torch.nn.Module, n: int, crop: int, batch: int, device: torch.device) -> float:
    from medvit.apps.deepfake.faces import crop_template

    x = torch.randn(batch, 3, crop, crop, device=device)
    lm = torch.tensor(crop_template(crop), dtype=torch.float32, device=device)[None].repeat(batch, 1, 1)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model(x, lm)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(max(1, n // batch)):
            model(x, lm)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return max(1, n // batch) * batch / (time.perf_counter() - t)


def _flops(model: torch.nn.Module, crop: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from medvit.apps.deepfake.faces import crop_template

    x = torch.randn(1, 3, crop, crop)
    lm = torch.tensor(crop_template(crop), dtype=torch.float32)[None]
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.cpu()(x, lm)
    return float(counter.get_total_flops())


def _mm_peak(device: torch.device, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 5 * 2 * n**3 / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=("paper-like", "small", "tiny"))
    p.add_argument("--videos", type=int, default=12, help="synthetic clips (pairs x 2 real + 2 fake)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    from medvit.apps.deepfake.model_file import load_run_model
    from medvit.apps.deepfake.predict import predict
    from medvit.shared.data.synth_deepfake import synth_deepfake

    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth_deepfake(
            root / "ffpp", n=max(3, a.videos // 4), frames=a.frames, size=320, levels=("c23",), methods=("Face2Face",)
        )
        run = _run_dir(root / "run", a.preset, a.crop)
        model = load_run_model(run)[0].to(device).eval()
        n_crops = (a.videos if a.videos >= 12 else 12) * a.frames
        bare = _bare(model, n_crops, a.crop, a.batch_size, device)
        t = time.perf_counter()
        res = predict(
            run,
            root / "ffpp",
            root / "pred",
            frames=a.frames,
            batch_size=a.batch_size,
            workers=a.workers,
            device=a.device,
            quiet=True,
        )
        seconds = time.perf_counter() - t
        frames_done = len((root / "pred" / "frames.csv").read_text().splitlines()) - 1
    rate = frames_done / seconds
    flops = _flops(model, a.crop)
    peak = _mm_peak(device)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {a.device}"
    )
    print(
        f"preset {a.preset}, crop {a.crop}, {res.videos} videos x {a.frames} frames, batch {a.batch_size}, "
        f"workers {a.workers}"
    )
    print(f"bare forward: {bare:.1f} crops/s")
    print(f"predict: {rate:.1f} frames/s ({frames_done} frames in {seconds:.1f} s) = {rate / bare:.2f} x bare")
    print(
        f"model: {flops / 1e9:.2f} GFLOP/crop -> {flops * bare / 1e9:.1f} GFLOP/s = {flops * bare / peak:.1%} of the "
        f"fp32 mm peak ({peak / 1e9:.0f} GFLOP/s)"
    )


if __name__ == "__main__":
    main()
