"""Hostile and malformed files at the command line: one ``error:`` line, exit code 2, no traceback, and the
refusal comes before the memory the file asks for is spent (no model built, no voxels decoded).

The corpus is generated in ``tmp_path``: weight sidecars (``encoder.json``-style, FIQA and ct-seg ``model.json``),
architecture overrides and deeply nested configs, insightface RecordIO and ``.bin`` files, pickles carrying code,
and NIfTI headers that promise more than the file holds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

from medvit.cli import app

runner = CliRunner()


def assert_user_error(result: Result, *phrases: str) -> str:
    """Exit code 2, exactly one ``error:`` line holding ``phrases``, no exception escaped, no traceback."""
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}\n{result.output}"
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def no_model_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any backbone is constructed: a refusal must come from the description alone."""
    from medvit.shared.backbone.vit import VisionTransformer

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a VisionTransformer was built from a hostile description")

    monkeypatch.setattr(VisionTransformer, "__init__", refuse)


# ============================================================================================ 4. sidecars
def _mutate(doc: dict[str, Any], kind: str, arch_key: str) -> tuple[Any, str]:
    """Apply one hostile change to a good sidecar; return the document and a phrase the error must hold."""
    arch = doc[arch_key]
    if kind == "top_level_list":
        return [doc], "must be a JSON object, got a list"
    if kind == "string_version":
        doc["format_version"] = "1"
        return doc, "'format_version' must be a positive integer"
    if kind == "missing_arch":
        del doc[arch_key]
        return doc, f"has no '{arch_key}'"
    if kind == "unexpected_keyword":
        arch["evil"] = 1
        return doc, "unknown key 'evil'"
    if kind == "embed_dim_1e9":
        arch["embed_dim"] = 1e9
        return doc, "embed_dim must be an integer"
    if kind == "img_size_1e6":
        arch["img_size"] = 1000000
        return doc, "img_size must be an integer in [1, 65536]"
    if kind == "depth_1e6":
        arch["depth"] = 1000000
        return doc, "depth must be an integer in [1, 512]"
    if kind == "negative":
        arch["num_heads"] = -2
        return doc, "num_heads must be an integer"
    if kind == "too_many_parameters":
        arch.update(embed_dim=32768, depth=512, num_heads=16)
        return doc, "parameters"
    if kind == "deep_nesting":
        doc["notes"] = json.loads("[" * 100 + "]" * 100)
        return doc, "nested deeper than"
    raise AssertionError(kind)


SIDECAR_CASES = [
    "top_level_list",
    "string_version",
    "missing_arch",
    "unexpected_keyword",
    "embed_dim_1e9",
    "img_size_1e6",
    "depth_1e6",
    "negative",
    "too_many_parameters",
    "deep_nesting",
]


@pytest.fixture
def backbone_file(tmp_path: Path) -> Path:
    from medvit.shared.backbone import create_backbone
    from medvit.shared.backbone.weights import save_backbone

    return save_backbone(create_backbone("test_vit_2d"), tmp_path / "encoder.safetensors")


def _rewrite(path: Path, kind: str, arch_key: str) -> str:
    doc, phrase = _mutate(json.loads(path.read_text()), kind, arch_key)
    path.write_text(json.dumps(doc))
    return phrase


@pytest.mark.parametrize("kind", SIDECAR_CASES)
def test_hostile_backbone_sidecar(kind: str, backbone_file: Path, tmp_path: Path, no_model_built: None) -> None:
    side = backbone_file.with_suffix(".json")
    phrase = _rewrite(side, kind, "kwargs")
    assert_user_error(runner.invoke(app, ["weights", "inspect", str(backbone_file)]), str(side), phrase)
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["weights", "convert", str(backbone_file), "--out", str(out)])
    assert_user_error(result, str(side), phrase)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["missing_arch", "depth_1e6", "embed_dim_1e9", "top_level_list", "deep_nesting"])
def test_hostile_fiqa_sidecar(kind: str, tmp_path: Path, no_model_built: None) -> None:
    weights = tmp_path / "fiqa.safetensors"
    weights.write_bytes(b"\0" * 16)  # never read: the sidecar is refused first
    side = weights.with_suffix(".json")
    good = {"format": "medvit-fiqa", "format_version": 1, "head": "token", "backbone_kwargs": {"embed_dim": 64}}
    doc, phrase = _mutate(good, kind, "backbone_kwargs")
    side.write_text(json.dumps(doc))
    faces = tmp_path / "faces"
    faces.mkdir()
    cv2.imwrite(str(faces / "a.png"), np.zeros((112, 112, 3), np.uint8))
    result = runner.invoke(
        app, ["fiqa", "score", str(faces), "--out", str(tmp_path / "o"), "--weights", str(weights), "--aligned"]
    )
    assert_user_error(result, str(side), phrase)


def _ct_seg_spec() -> dict[str, Any]:
    from medvit.shared.backbone import backbone_kwargs

    return {
        "format": "medvit-ct-seg",
        "format_version": 1,
        "encoder": backbone_kwargs("test_vit_3d"),
        "decoder": {"num_classes": 2, "feature_size": 8},
        "preprocess": {"spacing": [1.5, 1.5, 1.5], "hu_window": [-175.0, 250.0], "orientation": "RAS"},
        "crop_size": [32, 32, 32],
        "labels": {"0": "background", "1": "organ"},
    }


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (lambda d: d["encoder"].update(depth=1000000), "depth must be an integer in [1, 512]"),
        (lambda d: d["encoder"].update(embed_dim=1e9), "embed_dim must be an integer"),
        (lambda d: d.pop("decoder"), "has no 'decoder'"),
        (lambda d: d["decoder"].update(feature_size=10**9), "feature_size must be an integer in [1, 512]"),
        (lambda d: d["decoder"].update(sneaky=1), "unknown key 'sneaky'"),
        (lambda d: d["preprocess"].update(spacing="fine"), "spacing must be 'native' or 3 positive mm values"),
        (lambda d: d.update(format_version="one"), "'format_version' must be a positive integer"),
    ],
)
def test_hostile_ct_seg_model_json(
    change: Callable[[dict[str, Any]], Any], phrase: str, tmp_path: Path, no_model_built: None
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    spec = _ct_seg_spec()
    change(spec)
    (run / "model.json").write_text(json.dumps(spec))
    (run / "model.safetensors").write_bytes(b"\0" * 16)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), scans / "a.nii.gz")
    result = runner.invoke(app, ["ct-seg", "predict", str(run), str(scans), "--out", str(tmp_path / "o")])
    assert_user_error(result, str(run / "model.json"), phrase)


# ============================================================================================ 5. overrides, configs
@pytest.fixture
def foreign_checkpoint(tmp_path: Path) -> Path:
    from medvit.shared.backbone import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    return tmp_path / "timm.pth"


@pytest.mark.parametrize(
    ("item", "phrase"),
    [
        ("embed_dim=[1,", "not valid YAML"),
        ("embed_dimm=32", "unknown key 'embed_dimm' (did you mean 'embed_dim'?)"),
        ("model.backbone_overrides.depth=2", "architecture keys have no dots"),
        ("depth=1e6", "depth must be an integer"),
        ("num_heads=0", "num_heads must be an integer"),
        ("img_size=" + "[" * 500 + "]" * 500, "nested deeper"),
        ("patch_size", "expected KEY=VALUE"),
    ],
)
def test_weights_convert_bad_overrides(item: str, phrase: str, foreign_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["weights", "convert", str(foreign_checkpoint), "--out", str(out), "--set", item])
    assert_user_error(result, "--set", phrase)
    assert not out.exists()


def test_weights_convert_override_making_the_model_too_large(
    foreign_checkpoint: Path, tmp_path: Path, no_model_built: None
) -> None:
    out = tmp_path / "out.safetensors"
    args = ["weights", "convert", str(foreign_checkpoint), "--out", str(out), "--set", "embed_dim=32768"]
    result = runner.invoke(app, [*args, "--set", "depth=512", "--set", "num_heads=16"])
    assert_user_error(result, str(foreign_checkpoint), "parameters", "with the override(s) depth, embed_dim")


def test_checkpoint_whose_keys_declare_a_million_blocks(tmp_path: Path, no_model_built: None) -> None:
    state = {
        "patch_embed.proj.weight": torch.zeros(32, 3, 8, 8),
        "cls_token": torch.zeros(1, 1, 32),
        "pos_embed": torch.zeros(1, 17, 32),
        "blocks.999999.norm1.weight": torch.zeros(32),
    }
    torch.save(state, tmp_path / "odd.pth")
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["weights", "convert", str(tmp_path / "odd.pth"), "--out", str(out)])
    assert_user_error(result, "odd.pth", "depth must be an integer in [1, 512], got 1000000")


@pytest.mark.parametrize("app_name", ["ct-seg", "fiqa"])
@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda p: p.write_text("optim: " + "[" * 5000 + "]" * 5000 + "\n"), "nested deeper than 32 levels"),
        (lambda p: p.write_text("optim: " + "{a: " * 40 + "1" + "}" * 40 + "\n"), "nested deeper than 32 levels"),
        (
            lambda p: p.write_text(
                "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
                + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
            ),
            "holds more than 100,000 values",
        ),
    ],
)
def test_deeply_nested_config_files(app_name: str, make: Callable[[Path], Any], phrase: str, tmp_path: Path) -> None:
    cfg = tmp_path / "deep.yaml"
    make(cfg)
    result = runner.invoke(
        app, [app_name, "train", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(cfg)]
    )
    assert_user_error(result, str(cfg), phrase)


@pytest.mark.parametrize("app_name", ["ct-seg", "fiqa"])
def test_deeply_nested_set_value(app_name: str, tmp_path: Path) -> None:
    item = "optim.lr=" + "[" * 3000 + "]" * 3000
    result = runner.invoke(app, [app_name, "train", str(tmp_path), "--out", str(tmp_path / "run"), "--set", item])
    assert_user_error(result, "--set", "nested deeper than 32 levels")


def test_typo_inside_backbone_overrides(tmp_path: Path) -> None:
    args = ["ct-seg", "train", str(tmp_path), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "--set", "model.backbone_overrides.embed_dimm=96"])
    assert_user_error(result, "model.backbone_overrides", "unknown key 'embed_dimm' (did you mean 'embed_dim'?)")
    result = runner.invoke(app, [*args, "--set", "model.backbone_overrides.depth=1e6"])
    assert_user_error(result, "model.backbone_overrides", "depth must be an integer")


# ============================================================================================ 6. RecordIO, .bin
def _record_set(root: Path, header: tuple[int, list[float]] | None, n_images: int = 2) -> None:
    from medvit.apps.fiqa.data import IRHeader, RecordIOWriter, pack_record

    png = cv2.imencode(".png", np.zeros((112, 112, 3), np.uint8))[1].tobytes()
    with RecordIOWriter(root / "train.rec", root / "train.idx") as w:
        first = 0
        if header is not None:
            flag, labels = header
            w.write_idx(0, pack_record(IRHeader(flag, labels, 0, 0), b"")[: 24 + 4 * flag])
            first = 1
        for i in range(n_images):
            w.write_idx(first + i, pack_record(IRHeader(0, float(i % 2), first + i, 0), png))


def _flag1_header(root: Path) -> None:
    _record_set(root, (1, [3.0]))


def _nan_header(root: Path) -> None:
    _record_set(root, (2, [float("nan"), 5.0]))


def _billion_classes_header(root: Path) -> None:
    _record_set(root, (2, [3.0, 3.0 + 1e9]))


def _billion_classes_property(root: Path) -> None:
    _record_set(root, None)
    (root / "property").write_text("1000000000,112,112\n")


def _billion_label_without_count(root: Path) -> None:
    from medvit.apps.fiqa.data import IRHeader, RecordIOWriter, pack_record

    with RecordIOWriter(root / "train.rec", root / "train.idx") as w:
        w.write_idx(0, pack_record(IRHeader(0, 1e9, 0, 0), b"x"))


def _length_beyond_the_file(root: Path) -> None:
    from medvit.apps.fiqa.data import RECORDIO_MAGIC

    (root / "train.rec").write_bytes(struct.pack("<II", RECORDIO_MAGIC, (1 << 29) - 1) + b"\0" * 32)
    (root / "train.idx").write_text("0\t0\n")


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (_flag1_header, "header record 0 carries 1 label(s)"),
        (_nan_header, "is nan, not a whole number"),
        (_billion_classes_header, "declares 999,999,997 identities but the set holds 2 image records"),  # float32
        (_billion_classes_property, "declares 1,000,000,000 identities"),
        (_billion_label_without_count, "declares 1,000,000,001 identities"),
        (_length_beyond_the_file, "declares 536870911 bytes but the file ends at byte 40"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_hostile_recordio_sets(make: Callable[[Path], None], phrase: str, tmp_path: Path, no_model_built: None) -> None:
    data = tmp_path / "rec"
    data.mkdir()
    make(data)
    result = runner.invoke(app, ["fiqa", "train", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny"])
    assert_user_error(result, str(data), phrase)


@pytest.mark.parametrize(
    ("payload", "phrase"),
    [
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.", "expected 4611686018427387904 bytes in a bytes8"),
        (b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"abc.", "in a unicodestring8"),
        (b"\x80\x03B" + struct.pack("<I", 2**31) + b"abc.", "in a bytes4"),
        (b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N.", "declares 1,099,511,627,776 bytes"),
    ],
    ids=["bytes8", "unicode8", "bytes4", "frame"],
)
def test_bin_with_a_huge_byte_string_length(payload: bytes, phrase: str, tmp_path: Path) -> None:
    (tmp_path / "lfw.bin").write_bytes(payload)
    result = runner.invoke(app, ["fiqa", "extract-bin", str(tmp_path / "lfw.bin"), "--out", str(tmp_path / "x")])
    assert_user_error(result, "lfw.bin", "corrupt or truncated .bin", phrase)


# ============================================================================================ 7. pickles
class _System:
    """The classic payload: unpickling it would call ``os.system``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


class _PositionalNamespace:
    def __reduce__(self) -> tuple[Any, ...]:
        return (argparse.Namespace, (1,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle-2", "pickle-5"])
def test_pickle_carrying_code_is_named_and_not_run(
    writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "evil.pt"
    obj = {"state_dict": {"w": torch.zeros(1)}, "x": _System()}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(writer[-1])))
    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)  # a run payload would be seen here
    result = runner.invoke(app, ["weights", "inspect", str(path)])
    assert_user_error(
        result, "evil.pt", "refused to unpickle", "carries code", ".system", "nothing from it was executed"
    )
    assert calls == []


def test_namespace_rebuilt_with_a_positional_argument(tmp_path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(1)}, "args": _PositionalNamespace()}, tmp_path / "ns.pth")
    result = runner.invoke(app, ["weights", "inspect", str(tmp_path / "ns.pth")])
    assert_user_error(result, "ns.pth", "cannot be rebuilt", "Namespace")


# ============================================================================================ 8. NIfTI
@pytest.mark.parametrize(
    ("shape", "suffix"), [((1200, 1200, 1200), ".nii.gz"), ((32767, 32767, 1), ".nii.gz"), ((1200,) * 3, ".nii")]
)
def test_nifti_header_promising_more_than_the_file_holds(
    shape: tuple[int, ...], suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nibabel.dataobj_images import DataobjImage

    decode = DataobjImage.get_fdata

    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        assert Path(str(self.get_filename())).parent.name != "pred", "voxels of the hostile file were decoded"
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(DataobjImage, "get_fdata", guarded)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    body = hdr.binaryblock + b"\0" * 4 + np.random.default_rng(0).bytes(600)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    bomb = pred / f"bomb{suffix}"
    bomb.write_bytes(gzip.compress(body) if suffix == ".nii.gz" else body)
    assert bomb.stat().st_size < 1100
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), gt / f"bomb{suffix}")
    result = runner.invoke(app, ["ct-seg", "evaluate", str(pred), str(gt), "--out", str(tmp_path / "o")])
    assert_user_error(result, str(bomb), "truncated or corrupt: the header declares")
