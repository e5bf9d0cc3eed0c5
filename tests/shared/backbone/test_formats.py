"""Whole-model formats registered by apps: detection, refusal by the backbone loaders, duplicate names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medvit.shared.backbone import formats
from medvit.shared.backbone.registry import create_backbone
from medvit.shared.backbone.weights import WholeModelCheckpointError, convert_checkpoint, detect_format


@pytest.fixture
def seg_format(monkeypatch: pytest.MonkeyPatch) -> formats.WholeModelFormat:
    monkeypatch.setattr(formats, "_REGISTRY", dict(formats._REGISTRY))  # registrations vanish after the test
    return formats.register_format(
        formats.WholeModelFormat(
            name="toy-seg",
            description="a toy segmentation network (backbone and decoder)",
            recognises=lambda keys: "decoder.head.weight" in keys,
            importer=lambda job: f"imported {job.src.name}",
            command="medvit toy import",
        )
    )


def test_registered_layout_is_detected_and_refused_by_backbone_loaders(
    seg_format: formats.WholeModelFormat, tmp_path: Path
) -> None:
    sd = dict(create_backbone("test_vit_2d").state_dict())  # timm keys, as such files carry them
    sd["decoder.head.weight"] = torch.zeros(2, 2)
    assert detect_format(sd) == "toy-seg"
    assert detect_format({k: v for k, v in sd.items() if not k.startswith("decoder.")}) == "timm"
    torch.save(sd, tmp_path / "model.pt")
    with pytest.raises(WholeModelCheckpointError, match="toy segmentation network.*`medvit toy import`") as info:
        convert_checkpoint(tmp_path / "model.pt", tmp_path / "out.safetensors")
    assert info.value.source_format == "toy-seg" and info.value.state_dict is not None
    assert not (tmp_path / "out.safetensors").exists()


def test_a_taken_name_cannot_be_registered_twice(seg_format: formats.WholeModelFormat) -> None:
    assert formats.register_format(seg_format) is seg_format  # the same object again: a no-op
    other = formats.WholeModelFormat("toy-seg", "another", lambda keys: False, lambda job: "")
    with pytest.raises(ValueError, match="registered already"):
        formats.register_format(other)
