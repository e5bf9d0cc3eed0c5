"""The cxr demo part runs end to end (a few steps: the learning itself is tests/apps/cxr/test_learning.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvit.apps.cxr.demo import run_cxr_demo
from medvit.shared.data.synth_xray import CXR_FINDINGS


@pytest.mark.slow  # writes 520 synthetic images (about 6 s on one core)
def test_cxr_demo_smoke(tmp_path: Path) -> None:
    res = run_cxr_demo(tmp_path, quiet=True, steps=2, size=64)
    assert 0.0 <= res["mean_auc"] <= 1.0 and set(res["auc"]) == set(CXR_FINDINGS)
    assert res["heatmap"] is not None and res["heatmap"].is_file() and res["heatmap"].suffix == ".png"
    assert (res["run"] / "model.safetensors").is_file() and res["predictions"].is_file()
