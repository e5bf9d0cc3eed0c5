"""Worker for test_torchrun.py: a tiny fit under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 _torchrun_script.py RUN_DIR OUT_DIR``.
Each rank initialises its model from a different seed (so identical final weights prove DDP's initial
broadcast and gradient averaging), trains, and saves its final state dict to ``OUT_DIR/rank{R}.pt`` plus a
JSON with its result.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from medvit.shared.engine.fit import TrainConfig, fit


class MLPRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
        x, y = batch
        pred = self.net(x)
        return {"loss": nn.functional.mse_loss(pred, y), "logs": {"n": float(x.shape[0])}}


def main() -> None:
    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x.sum(dim=1, keepdim=True).sin()
    torch.manual_seed(100 + rank)  # deliberately different init on each rank
    task = MLPRegression()
    cfg = TrainConfig(
        steps=10,
        batch_size=4,
        grad_accum=2,
        lr=1e-2,
        warmup_steps=2,
        log_every=2,
        ckpt_every=5,
        seed=3,
        device="cpu",
    )
    result = fit(task, TensorDataset(x, y), cfg, run_dir, quiet=True, resolved_config={"train": cfg.to_dict()})
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(task.state_dict(), out_dir / f"rank{rank}.pt")
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"step": result.step, "final_loss": result.final_loss}))


if __name__ == "__main__":
    main()
