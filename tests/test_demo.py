"""``medvit demo``: the CT settings it relies on and its output-folder guard (the full demo is too slow for tests)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvit import demo
from medvit.apps.ct_seg.config import load_ct_seg_config
from medvit.shared.data.synth import CT_LABELS, synth_ct
from medvit.shared.errors import MedvitError


@pytest.fixture(scope="module")
def demo_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_ct")
    synth_ct(out, n=demo.CT_CASES, n_test=demo.CT_TEST_CASES, shape=demo.CT_SHAPE, n_organs=demo.CT_ORGANS, seed=0)
    return out


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for split in ("Tr", "Ts"):
        for label in sorted((root / f"labels{split}").glob("*.nii.gz")):
            pairs.append((root / f"images{split}" / label.name.replace(".nii.gz", "_0000.nii.gz"), label))
    return pairs


def test_every_organ_in_every_demo_case(demo_ct: Path) -> None:
    pairs = _pairs(demo_ct)
    assert len(pairs) == demo.CT_CASES + demo.CT_TEST_CASES
    organs = {v for n, v in CT_LABELS.items() if n != "background"}
    for _, label in pairs:
        present = set(np.unique(np.asarray(nib.load(label).dataobj)).tolist()) - {0}
        assert present == organs, label.name


def test_every_demo_training_crop_holds_every_organ(demo_ct: Path) -> None:
    """ct-seg crops the air away (windowed image > 0, i.e. HU > -175), pads to the crop size and places crops inside
    that box: wherever a crop lands, it must contain every labelled voxel."""
    crop = np.array(load_ct_seg_config("tiny", **demo.SEG_OPTIONS).data.crop_size)
    for image, label in _pairs(demo_ct):
        body = np.nonzero(np.asarray(nib.load(image).dataobj) > -175)
        organs = np.nonzero(np.asarray(nib.load(label).dataobj) > 0)
        body_lo, body_hi = np.array([i.min() for i in body]), np.array([i.max() for i in body])
        organ_lo, organ_hi = np.array([i.min() for i in organs]), np.array([i.max() for i in organs])
        # a crop starting at the body's first voxel reaches the last organ voxel, one ending at its last voxel
        # reaches the first organ voxel
        assert np.all(organ_hi - body_lo + 1 <= crop), (image.name, organ_hi - body_lo + 1, crop)
        assert np.all(body_hi - organ_lo + 1 <= crop), (image.name, body_hi - organ_lo + 1, crop)


def test_demo_seg_options_resolve_on_the_tiny_preset() -> None:
    cfg = load_ct_seg_config("tiny", **demo.SEG_OPTIONS)
    assert cfg.optim.steps == demo.SEG_STEPS
    assert cfg.data.fold == "all" and cfg.data.spacing == "native"
    patch = cfg.model.backbone_overrides["patch_size"]
    assert all(c % p == 0 for c, p in zip(cfg.data.crop_size, patch, strict=True))
    assert cfg.data.crop_size == tuple(demo.SEG_OPTIONS["data.crop_size"])


def test_prepare_refuses_a_foreign_folder_and_replaces_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(MedvitError, match="not made by `medvit demo`"):
        demo._prepare(foreign)
    assert (foreign / "keep.txt").read_text() == "x"

    own = tmp_path / "own"
    demo._prepare(own)
    (own / "old_output.txt").write_text("x")
    demo._prepare(own)
    assert sorted(p.name for p in own.iterdir()) == [demo._MARKER]


def test_unknown_part_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(MedvitError, match="unknown demo part xray; choose from ct-seg, cell, cxr, eye, fiqa, deepfake"):
        demo.run_demo(tmp_path / "out", parts=("xray",))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # the CT learning loop: 100 pretraining + 160 fine-tuning steps
def test_demo_ct_seg_part_learns_and_keeps_every_file_promise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``medvit demo ct-seg``: Hi-End-MAE pretraining -> ct-seg fine-tuning from the exported encoder -> predict ->
    evaluate, through the CLI. Asserts the demo's learning target (mean foreground Dice >= 0.8 on the 4 held-out
    cases; 0.90 measured) and what each command owes its user on the way."""
    from typer.testing import CliRunner

    from medvit.cli import app

    caplog.set_level("INFO")  # what the CLI logs outside pytest (and what train.log keeps)
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "ct-seg", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    pre, seg, pred, ct = (
        out / "runs" / "pretrain",
        out / "runs" / "ct-seg",
        out / "predictions" / "ct-seg",
        out / "data" / "ct",
    )
    assert (pre / "encoder.safetensors").is_file() and any((pre / "previews").iterdir())
    spec = json.loads((seg / "model.json").read_text())
    assert spec["preprocess"]["spacing"] == "native"
    steps = [json.loads(line)["step"] for line in (seg / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == demo.SEG_STEPS
    for name in ("model.safetensors", "train.log", "plots/loss.png", "config.yaml", "summary.json"):
        assert (seg / name).is_file(), name
    for image in sorted((ct / "imagesTs").glob("*_0000.nii.gz")):
        case = image.name.replace("_0000.nii.gz", "")
        src, got = nib.load(image), nib.load(pred / f"{case}.nii.gz")
        assert got.shape == src.shape
        np.testing.assert_array_equal(got.affine, src.affine)  # outputs carry the input's grid
        assert (pred / "overlays" / f"{case}.png").is_file()
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["cases"] == demo.CT_TEST_CASES
    assert summary["overall"]["dice"]["mean"] >= 0.8, summary["per_class"]


@pytest.mark.slow  # the cell learning loop: 200 steps of the tiny CellVTA on 64 px tiles
def test_demo_cell_part_learns_and_writes_what_qupath_reads(tmp_path: Path) -> None:
    """``medvit demo cell``: synthetic tiles in the PanNuke release format -> cell prepare -> train -> predict the
    40 held-out tiles and a 640x768 image cut into overlapping tiles -> evaluate. Asserts the demo's learning target
    (image-averaged bPQ >= 0.6 on the held-out tiles) and the files a pathologist opens."""
    from typer.testing import CliRunner

    from medvit.apps.cell_seg.export import validate_geojson
    from medvit.cli import app

    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "cell", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    cell = out / "cell"
    summary = json.loads((cell / "evaluation" / "summary.json").read_text())
    assert summary["counts"]["images"] == 40
    assert summary["image_average"]["bPQ"] >= 0.6, summary["image_average"]
    assert validate_geojson(cell / "predictions" / "stitched.cells.geojson") > 50
    assert (cell / "predictions" / "stitched.overlay.png").is_file()
    with np.load(cell / "predictions" / "stitched.labels.npz") as z:
        assert z["inst_map"].shape == (640, 768)
