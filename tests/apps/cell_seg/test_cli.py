"""`medvit cell` end to end on synthetic tiles: prepare -> train -> predict (tiles, a stitched image) -> evaluate.

The tiny preset on 64 px synthetic tiles; these short runs check files, manifests, resume and errors. That the loop
learns (bPQ on held-out tiles) is checked through ``medvit demo cell`` in ``tests/test_demo.py``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medvit.cli import app

SIZE = 64


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic set (3 folds of 64 px tiles) plus one 640x768 image with its labels in ``large/``."""
    from medvit.apps.cell_seg.prepare import prepare
    from medvit.shared.data.synth_cells import synth_cells

    root = tmp_path_factory.mktemp("cells")
    synth_cells(root / "raw", n=36, size=SIZE, seed=0, large=1)
    prepare("pannuke", root / "raw", root / "prepared")
    return root


@pytest.fixture(scope="module")
def stitched(cells: Path) -> Path:
    """A 208x240 crop of the large synthetic image: several 64 px tiles with 16 px overlaps (tiling and merging)."""
    import cv2

    image = cv2.imread(str(cells / "raw" / "large" / "large_000.png"))
    path = cells / "stitched.png"
    cv2.imwrite(str(path), image[:208, :240])
    return path


def _train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return [
        "cell", "train", str(data), "--out", str(run), "--preset", "tiny", "--quiet",
        "--set", "optim.log_every=1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def short_run(cells: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cell_run") / "run"
    res = CliRunner().invoke(app, _train_args(cells / "prepared", run, "--steps", "3", "--set", "optim.eval_every=3"))
    assert res.exit_code == 0, res.output
    return run


def test_train_writes_the_run_directory(short_run: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "model.json", "model.safetensors", "folds.json"):
        assert (short_run / name).is_file(), name
    spec = json.loads((short_run / "model.json").read_text())
    assert spec["format"] == "medvit-cell-model"
    assert spec["nuclei_types"][:2] == ["Background", "Neoplastic"]
    assert spec["best"]["metric"] == "val/bpq"
    assert json.loads((short_run / "folds.json").read_text()) == {"train": ["fold1"], "val": ["fold2"]}
    records = [json.loads(line) for line in (short_run / "metrics.jsonl").read_text().splitlines()]
    assert {"np_ft", "hv_msge", "nt_ce", "tissue_ce"} <= set(records[0])
    assert any("val/bpq" in r for r in records)


def test_predict_tiles_and_a_stitched_image_then_evaluate(
    cells: Path, stitched: Path, short_run: Path, tmp_path: Path
) -> None:
    from medvit.apps.cell_seg.export import validate_geojson

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for png in sorted((cells / "prepared" / "fold3" / "images").glob("*.png"))[:3]:
        (inputs / png.name).write_bytes(png.read_bytes())
    (inputs / "large.png").write_bytes(stitched.read_bytes())
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "pred"
    runner = CliRunner()
    res = runner.invoke(app, ["cell", "predict", str(short_run), str(inputs), "--out", str(out), "--quiet"])
    assert res.exit_code == 1, res.output  # the broken file fails alone
    rows = {Path(r["input"]).name: r for r in csv.DictReader((out / "manifest.csv").open())}
    assert rows["broken.png"]["status"] == "error" and "broken.png" in rows["broken.png"]["message"]
    assert all(r["status"] == "ok" for name, r in rows.items() if name != "broken.png")
    for stem in ("large", *[p.stem for p in inputs.glob("*_*.png")]):
        for suffix in (".cells.geojson", ".cells.csv", ".overlay.png", ".labels.npz"):
            assert (out / f"{stem}{suffix}").is_file(), stem + suffix
    n_features = validate_geojson(out / "large.cells.geojson")
    assert n_features == int(rows["large.png"]["cells"])
    with np.load(out / "large.labels.npz") as z:
        assert z["inst_map"].shape == (208, 240) and z["type_map"].shape == (208, 240)
    assert int(rows["large.png"]["tiles"]) == 4 * 5  # 64 px tiles, stride 48: the image is stitched

    # Resume: a second run skips every finished input and retries only the failed one.
    res = runner.invoke(app, ["cell", "predict", str(short_run), str(inputs), "--out", str(out), "--quiet"])
    rows = {Path(r["input"]).name: r for r in csv.DictReader((out / "manifest.csv").open())}
    assert {r["status"] for n, r in rows.items() if n != "broken.png"} == {"skipped"}

    res = runner.invoke(app, ["cell", "evaluate", str(out), str(cells / "prepared"), "--fold", "fold3"])
    # The GT fold has 12 tiles and only 3 were predicted: refused, naming the missing ones.
    assert res.exit_code != 0 and "missing" in res.output.lower()


def test_same_cells_whatever_batch_size_and_workers(stitched: Path, short_run: Path, tmp_path: Path) -> None:
    src = stitched
    outs = []
    for i, (bs, workers) in enumerate([(1, 0), (8, 2)]):
        out = tmp_path / f"p{i}"
        args = ["cell", "predict", str(short_run), str(src), "--out", str(out), "--quiet"]
        res = CliRunner().invoke(app, [*args, "--batch-size", str(bs), "--workers", str(workers)])
        assert res.exit_code == 0, res.output
        outs.append((out / "stitched.cells.csv").read_text())
    assert outs[0] == outs[1]


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_resume_after_kill_equals_uninterrupted(
    cells: Path, tmp_path: Path, kill_training_at: Callable[[int], Callable[[], None]]
) -> None:
    # The published augmentation and the cell+tissue weighted draws (both seeded per sample): every random
    # stream of the recipe is in play; the kill lands mid-epoch.
    extra = [
        "--steps", "5", "--set", "data.augment=true", "--set", "data.sampling=cell+tissue",
        "--set", "optim.ckpt_every=2", "--set", "optim.batch_size=4",
    ]  # fmt: skip
    runner = CliRunner()
    ref, run = tmp_path / "ref", tmp_path / "run"
    res = runner.invoke(app, _train_args(cells / "prepared", ref, *extra))
    assert res.exit_code == 0, res.output
    disarm = kill_training_at(2)
    runner.invoke(app, _train_args(cells / "prepared", run, *extra))
    disarm()
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2
    res = runner.invoke(app, [*_train_args(cells / "prepared", run, *extra), "--resume"])
    assert res.exit_code == 0, res.output
    assert _losses(run) == _losses(ref)
    a = torch.load(ref / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_bad_data_folder_is_one_error_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, _train_args(tmp_path, tmp_path / "run", "--steps", "1"))
    assert res.exit_code != 0
    assert "dataset.json" in res.output and "Traceback" not in res.output
