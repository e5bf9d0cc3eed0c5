"""One Hi-End-MAE training step: medvit vs a MONAI ``MaskedAutoEncoderViT`` of the same size, side by side.

For a preset (``tiny``, ``small``, ``base``, ``paper``) both models get the same encoder (width, depth, heads, MLP
ratio 4, qkv bias, patch, crop) and a decoder of the same width and the same number of blocks (MONAI's decoder has
only self-attention blocks, so it gets ``decoder_depth + 3`` of them where Hi-End-MAE has 2 self-attention + 3
cross-attention blocks). One step = forward + norm-pix masked MSE + backward + AdamW. Both models live in one process
and their timed steps alternate (after ``--warmup`` untimed steps each), so load from other jobs on a shared machine
hits both alike; the median of ``--steps`` steps is reported with crops/s. Peak memory is measured for each side
alone in its own process (CUDA: ``max_memory_allocated``; CPU: peak RSS above the process baseline).

Model FLOPs per step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward; 2 FLOPs per
multiply-add; the AdamW update is not counted) and divided by the step time and by the machine's matmul peak,
measured with ``torch.mm`` on square matrices in the same dtype and thread count after every timed step pair (median),
so that it sees the same load as the steps (``% peak`` uses it; the figure taken before the run is printed too).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/pretrain_ct.py --preset small --batch 4 --steps 5
    python benchmarks/pretrain_ct.py --preset paper --batch 16 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Best FLOP/s of ``torch.mm`` on ``n x n`` matrices."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _build(side: str, preset_name: str, mask_ratio: float) -> tuple[torch.nn.Module, Any]:
    from medvit.pretrain.presets import build_model, get_preset

    preset = get_preset("hi-end-mae", preset_name)
    ours = build_model(preset, mask_ratio=mask_ratio)
    if side == "medvit":
        return ours, preset
    from monai.networks.nets import MaskedAutoEncoderViT

    enc = ours.encoder
    d = enc.embed_dim
    dd = preset.decoder_embed_dim
    net = MaskedAutoEncoderViT(
        in_channels=1,
        img_size=preset.crop_size,
        patch_size=enc.patch_embed.patch_size,
        hidden_size=d,
        mlp_dim=4 * d,
        num_layers=len(enc.blocks),
        num_heads=enc.num_heads,
        masking_ratio=mask_ratio,
        decoder_hidden_size=dd,
        decoder_mlp_dim=4 * dd,
        decoder_num_layers=preset.decoder_depth + len(ours.taps),
        decoder_num_heads=preset.decoder_num_heads,
        proj_type="conv",
        pos_embed_type="sincos",
        decoder_pos_embed_type="sincos",
        qkv_bias=True,
        spatial_dims=3,
    )
    return net, preset


def _monai_loss(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from medvit.pretrain.mae import masked_mse, normalize_patches, patchify

    pred, mask = net(x)
    target = normalize_patches(patchify(x, net.patch_size), unbiased=False)
    return masked_mse(pred, target, mask.float())


class _Side:
    """One model with its optimizer and input, ready to take timed training steps."""

    def __init__(self, side: str, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        self.side = side
        self.model, self.preset = _build(side, args.preset, args.mask_ratio)
        self.model.to(device).train()
        self.params_m = sum(p.numel() for p in self.model.parameters()) / 1e6
        params = [p for p in self.model.parameters() if p.requires_grad]
        # The same optimizer on both sides: torch's default AdamW (for-loop on CPU, as medvit's engine builds it)
        # or the fused kernel (--fused-adamw).
        self.opt = torch.optim.AdamW(
            params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=args.fused_adamw or None
        )
        self.x = torch.rand(args.batch, 1, *self.preset.crop_size, device=device)
        self.bf16 = args.precision == "bf16"
        self.device = device

    def loss(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(self.x)["loss"] if self.side == "medvit" else _monai_loss(self.model, self.x)

    def step(self) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        self.loss().float().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - t0

    def flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.loss().float().backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def worker_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of one side alone (own process)."""
    device = torch.device(args.device)
    base_rss = _rss_mib()
    side = _Side(args.worker, args, device)
    side.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    side.step()
    if device.type == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_mib": max(_rss_mib() - base_rss, 0.0)}


def worker_timing(args: argparse.Namespace) -> dict[str, Any]:
    """Both sides in one process, steps interleaved (alternating order), so load drift hits both alike."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sides = {name: _Side(name, args, device) for name in ("medvit", "monai")}
    out: dict[str, Any] = {}
    for name, side in sides.items():
        out[name] = {"params_m": side.params_m, "gflop_per_step": side.flops() / 1e9, "times": []}
        for _ in range(args.warmup):
            side.step()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    n = 8192 if device.type == "cuda" else 2048
    peaks = []
    for i in range(args.steps):
        order = ("medvit", "monai") if i % 2 == 0 else ("monai", "medvit")
        for name in order:
            out[name]["times"].append(sides[name].step())
        peaks.append(matmul_peak(device, dtype, n, repeats=3))  # the reference under the same load as the steps
    for name in sides:
        times = out[name].pop("times")
        out[name]["step_s"] = statistics.median(times)
        out[name]["step_s_all"] = [round(t, 4) for t in times]
        out[name]["crops_per_s"] = args.batch / out[name]["step_s"]
    out["peak_flops_interleaved"] = statistics.median(peaks)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", help="tiny | small | base | paper")
    ap.add_argument("--batch", type=int, default=4, help="crops per step")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--fused-adamw", action="store_true", help="fused AdamW kernel on both sides")
    ap.add_argument("--worker", choices=("medvit", "monai", "timing"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "timing":
        print(json.dumps(worker_timing(args)))
        return
    if args.worker:
        print(json.dumps(worker_memory(args)))
        return

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 2048)
    base = [sys.executable, os.path.abspath(__file__), "--preset", args.preset, "--batch", str(args.batch)]
    base += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--mask-ratio", str(args.mask_ratio)]
    base += ["--device", args.device, "--precision", args.precision] + (["--fused-adamw"] if args.fused_adamw else [])

    def run(worker: str) -> dict[str, Any]:
        proc = subprocess.run([*base, "--worker", worker], capture_output=True, text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    timing = run("timing")
    peak_now = timing["peak_flops_interleaved"]
    ours = {**timing["medvit"], **run("medvit")}
    monai = {**timing["monai"], **run("monai")}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"machine: {name}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"{args.precision}; matmul peak {peak / 1e9:.1f} GFLOP/s before the run, {peak_now / 1e9:.1f} GFLOP/s "
        "(median) measured between the timed steps"
    )
    print(
        f"preset {args.preset}, {args.batch} crops/step, mask ratio {args.mask_ratio}, median of {args.steps} steps, "
        f"steps interleaved, AdamW {'fused' if args.fused_adamw else 'default'}"
    )
    header = f"{'model':<28}{'params M':>9}{'step s':>9}{'crops/s':>9}{'peak MiB':>10}{'GFLOP/step':>12}{'% peak':>8}"
    print(header)
    for label, r in (("medvit HiEndMAE", ours), ("MONAI MaskedAutoEncoderViT", monai)):
        frac = r["gflop_per_step"] * 1e9 / r["step_s"] / peak_now
        print(
            f"{label:<28}{r['params_m']:>9.1f}{r['step_s']:>9.3f}{r['crops_per_s']:>9.2f}{r['peak_mib']:>10.0f}"
            f"{r['gflop_per_step']:>12.1f}{100 * frac:>7.1f}%"
        )
    print(f"step time medvit / MONAI: {ours['step_s'] / monai['step_s']:.2f} (target <= 0.70)")
    print(
        json.dumps(
            {"peak_gflops": peak / 1e9, "peak_gflops_interleaved": peak_now / 1e9, "medvit": ours, "monai": monai}
        )
    )


if __name__ == "__main__":
    main()
