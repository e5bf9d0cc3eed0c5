"""A 2-process ``torchrun`` (gloo, CPU) fit: both ranks end identical, rank 0 alone writes the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("_torchrun_script.py")


@pytest.mark.slow  # torchrun spawn
def test_torchrun_two_ranks_identical_weights(tmp_path: Path) -> None:
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    proc = subprocess.run(
        [*cmd, str(run_dir), str(out_dir)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    rank_lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("[rank")]
    assert proc.returncode == 0, "\n".join(rank_lines[-40:]) or proc.stderr[-3000:]

    sd0 = torch.load(out_dir / "rank0.pt", weights_only=True)
    sd1 = torch.load(out_dir / "rank1.pt", weights_only=True)
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        torch.testing.assert_close(sd0[k], sd1[k], rtol=0, atol=0, msg=f"rank weights differ at {k}")
    res = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert res[0] == res[1] and res[0]["step"] == 10  # the reduced loss is the same on both ranks

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6, 8, 10]  # written once, by rank 0
    assert sorted(p.name for p in run_dir.glob("*.jsonl")) == ["metrics.jsonl"]
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert ckpt["step"] == 10 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    for k in sd0:
        torch.testing.assert_close(ckpt["model"][k], sd0[k], rtol=0, atol=0)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 10
    assert not list(run_dir.glob(".*tmp*"))
