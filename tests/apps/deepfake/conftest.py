"""Fixtures of the deepfake tests: a small synthetic FF++ tree and an untrained run (for predict plumbing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvit.shared.data.synth_deepfake import synth_deepfake

TINY_SPEC = {
    "backbone": "test_vit_2d",
    "backbone_overrides": {"patch_size": 8, "depth": 1},
    "global_size": 32,
    "region_size": 16,
    "regions": ["eyes", "nose", "mouth", "contour"],
    "shared_streams": True,
    "guide": "tokens",
    "quality_hidden": 8,
}


@pytest.fixture(scope="session")
def ffpp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 identity pairs, 6 frames, 96 px, c23 only, Face2Face only."""
    out = tmp_path_factory.mktemp("ffpp")
    synth_deepfake(out, n=3, frames=6, size=96, levels=("c23",), methods=("Face2Face",), seed=2)
    return out


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a randomly initialised tiny network (model.json + model.safetensors)."""
    import torch

    from medvit.apps.deepfake.model_file import model_from_spec, new_model_spec, save_run_model

    run = tmp_path_factory.mktemp("run")
    spec = new_model_spec(TINY_SPEC, crop_size=64, margin=1.3, train={"method": "Face2Face", "levels": ["c23"]})
    torch.manual_seed(0)
    model = model_from_spec(spec)
    save_run_model(run / "model.safetensors", model.state_dict(), spec)
    (run / "model.json").write_text((run / "model.safetensors").with_suffix(".json").read_text())
    return run
