"""One ``ct-seg train`` step vs the same step built from MONAI's UNETR, side by side in one process.

Both sides start from the same weights: a seeded ``monai.networks.nets.UNETR`` and medvit's
:class:`~medvit.apps.ct_seg.model.UNETR` built from its state dict (:meth:`UNETR.from_monai_unetr`: the same
function, checked here on the first batch), and get the same crops and labels.

* **medvit**: what ``medvit ct-seg train`` runs per optimizer step: ``SegTask`` (DiceCE as in
  ``medvit/apps/ct_seg/train.py``), backward, gradient clipping at 1.0, the engine's fused AdamW over its
  parameter groups (weight decay 1e-5, layer-wise LR decay 0.75), ``zero_grad(set_to_none=True)``.
* **MONAI**: the UNETR tutorial's step: ``DiceCELoss(to_onehot_y=True, softmax=True)``, backward,
  ``torch.optim.AdamW(lr=1e-4, weight_decay=1e-5)`` (torch's default implementation), ``zero_grad``.

After ``--warmup`` untimed steps each, timed steps alternate between the sides (load from other jobs hits both
alike); the median of ``--steps`` is reported, with the ratio and peak RSS growth during the steps (each side
alone in a subprocess with ``--rss``). ``--profile`` prints the top operators of one step of each side.

Usage (the small preset's size: ViT-S, feature size 16, 96^3 crops)::

    OMP_NUM_THREADS=1 python benchmarks/ct_seg_train_step.py --vit small --batch 2 --steps 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
from _common import peak_rss_mib

VITS = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}  # width, heads (12 blocks)
CLASSES = 6


class _Side:
    def __init__(self, side: str, args: argparse.Namespace) -> None:
        from monai.losses import DiceCELoss
        from monai.networks.nets import UNETR as MonaiUNETR  # noqa: N811

        width, heads = VITS[args.vit]
        crop = (args.crop,) * 3
        torch.manual_seed(0)
        ref = MonaiUNETR(
            1, CLASSES, crop, feature_size=args.feature_size, hidden_size=width, mlp_dim=4 * width, num_heads=heads
        )
        self.side = side
        if side == "monai":
            self.model = ref.train()
            self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
            self.params = list(self.model.parameters())
            self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=1e-5)
            self.clip = None
        else:
            from medvit.apps.ct_seg.model import UNETR
            from medvit.apps.ct_seg.train import SegTask
            from medvit.shared.engine.optim import build_param_groups

            model = UNETR.from_monai_unetr(ref.state_dict(), num_heads=heads)
            self.model = SegTask(model).train()
            groups = build_param_groups(self.model, 1e-5, 0.75)
            self.params = [p for g in groups for p in g["params"]]
            self.opt = torch.optim.AdamW(groups, lr=1e-4, fused=True)
            self.clip = 1.0
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(args.batch, 1, *crop, generator=g)
        self.y = torch.randint(0, CLASSES, (args.batch, 1, *crop), generator=g)

    def logits(self) -> torch.Tensor:
        net = self.model if self.side == "monai" else self.model.model
        return net(self.x)

    def step(self) -> float:
        t0 = time.perf_counter()
        if self.side == "monai":
            loss = self.loss_fn(self.model(self.x), self.y)
        else:
            loss = self.model({"image": self.x, "label": self.y})["loss"]
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def _rss_worker(side: str, args: argparse.Namespace) -> None:
    s = _Side(side, args)
    s.step()
    base = peak_rss_mib()
    for _ in range(2):
        s.step()
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "base_rss_mib": base}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vit", choices=sorted(VITS), default="small")
    p.add_argument("--batch", type=int, default=2, help="crops per step")
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--feature-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--rss", choices=["medvit", "monai"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss:
        _rss_worker(args.rss, args)
        return

    sides = {name: _Side(name, args) for name in ("medvit", "monai")}
    with torch.no_grad():
        diff = float((sides["medvit"].logits() - sides["monai"].logits()).abs().max())
    for s in sides.values():
        for _ in range(args.warmup):
            s.step()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.steps):
        for name, s in sides.items():
            times[name].append(s.step())
    med = {name: statistics.median(t) for name, t in times.items()}
    rss = {}
    for name in sides:
        out = subprocess.run(
            [sys.executable, __file__, "--rss", name, *sys.argv[1:]], capture_output=True, text=True, check=True
        )
        rss[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"ct-seg train step vs MONAI UNETR: ViT-{args.vit}, {args.batch} x {args.crop}^3 crops, feature size "
        f"{args.feature_size}, {CLASSES} classes, fp32, {torch.get_num_threads()} thread(s), {platform.processor()}"
    )
    print(f"fp32 max |medvit - MONAI| logits before training: {diff:.2e}")
    print("| side | median step s | steps s | peak RSS MiB |")
    print("|---|---|---|---|")
    for name in sides:
        steps = " ".join(f"{t:.2f}" for t in times[name])
        print(f"| {name} | {med[name]:.2f} | {steps} | {rss[name]['peak_rss_mib']:.0f} |")
    print(f"step time ratio medvit / MONAI: {med['medvit'] / med['monai']:.2f}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, s in sides.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                s.step()
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main()
