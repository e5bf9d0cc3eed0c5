"""fiqa training config: presets, precedence of the layers, and errors that name the layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medvit.apps.fiqa.config import PRESETS, FiqaConfig, load_fiqa_config, preset_path
from medvit.shared.config import from_dict
from medvit.shared.errors import ConfigError


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_record_their_name(name: str) -> None:
    cfg = load_fiqa_config(name)
    assert cfg.preset == name
    shipped = yaml.safe_load(preset_path(name).read_text(encoding="utf-8"))
    assert cfg == from_dict(FiqaConfig, {**shipped, "preset": name})


def test_tiny_preset_values() -> None:
    cfg = load_fiqa_config("tiny")
    assert (cfg.model.backbone, cfg.data.augment, cfg.optim.steps, cfg.optim.batch_size) == (
        "test_vit_fiqa",
        "flip",
        200,
        32,
    )
    assert cfg.optim.seed == 0 and cfg.optim.lr == 2e-3
    assert load_fiqa_config().optim.seed == 2048  # the reference recipe


def test_precedence_preset_file_set_options(tmp_path: Path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("optim:\n  lr: 0.5\n  steps: 7\nmodel:\n  head: full\n")
    cfg = load_fiqa_config("tiny", user)
    assert (cfg.optim.lr, cfg.optim.steps, cfg.model.head) == (0.5, 7, "full")  # the file wins over the preset
    assert cfg.optim.batch_size == 32 and cfg.model.backbone == "test_vit_fiqa"  # the rest of the preset stays
    cfg = load_fiqa_config("tiny", user, ["optim.lr=0.25", "loss.scale=32"])
    assert (cfg.optim.lr, cfg.loss.scale, cfg.optim.steps) == (0.25, 32.0, 7)  # --set wins over the file
    cfg = load_fiqa_config("tiny", user, ("optim.lr=0.25",), **{"optim.lr": 0.125, "optim.steps": None})
    assert (cfg.optim.lr, cfg.optim.steps) == (0.125, 7)  # options win; None means "not given"
    cfg = load_fiqa_config("tiny", None, ["val_pairs=[a.bin, b.txt]"])
    assert cfg.val_pairs == (Path("a.bin"), Path("b.txt"))


def test_errors_name_the_layer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown fiqa preset 'huge'; choose one of default, base, tiny"):
        load_fiqa_config("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'optim\.lrr' \(did you mean 'optim\.lr'\?\)"):
        load_fiqa_config("tiny", bad)
    bad.write_text("model:\n  mask_ratio: 2.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: config 'model': model\.mask_ratio must be in \[0, 1\)"):
        load_fiqa_config("tiny", bad)
    bad.write_text("optim:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML at line 3.*duplicate key 'lr'"):
        load_fiqa_config("tiny", bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_fiqa_config("tiny", tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.nope'.*\(from --set\)"):
        load_fiqa_config("tiny", None, ["optim.nope=1"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load_fiqa_config("tiny", None, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"config key 'optim\.steps': expected int.*\(from command-line option\)"):
        load_fiqa_config("tiny", **{"optim.steps": "x"})
