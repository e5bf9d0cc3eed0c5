"""The eye demo part runs end to end (a few steps: the learning itself is tests/apps/eye/test_learning.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvit.apps.eye.demo import run_eye_demo


@pytest.mark.slow  # writes 520 synthetic images (about 6 s on one core)
def test_eye_demo_smoke(tmp_path: Path) -> None:
    res = run_eye_demo(tmp_path, quiet=True, steps=2, size=64)
    assert -1.0 <= res["kappa"] <= 1.0 and res["summary"]["task"] == "graded"
    assert res["heatmap"] is not None and res["heatmap"].is_file() and res["heatmap"].suffix == ".png"
    assert (res["run"] / "model.safetensors").is_file() and res["predictions"].is_file()
