"""Synthetic H&E nucleus tiles in the PanNuke release format, and ``medvit data synth cells``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.measure import regionprops
from typer.testing import CliRunner

from medvit.cli import app
from medvit.shared.data.cell_format import PANNUKE_TISSUES, label_problem, read_labels
from medvit.shared.data.io import read_image
from medvit.shared.data.synth import _rng
from medvit.shared.data.synth_cells import LARGE_SHAPE, TISSUE_PROFILES, draw_cells_image, synth_cells
from medvit.shared.errors import ConfigError

SIZE = 64


def _fold(root: Path, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = root / f"Fold {k}"
    images = np.load(base / "images" / f"fold{k}" / "images.npy", allow_pickle=False)
    types = np.load(base / "images" / f"fold{k}" / "types.npy", allow_pickle=False)
    masks = np.load(base / "masks" / f"fold{k}" / "masks.npy", allow_pickle=False)
    return images, types, masks


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cells")
    summary = synth_cells(out, n=7, size=SIZE, seed=0, large=1)
    assert summary.kind == "cells" and summary.counts["tiles"] == 7 and summary.counts["large"] == 1
    assert [summary.counts[f"fold{k}"] for k in (1, 2, 3)] == [3, 2, 2]
    return out


def test_release_layout_dtypes_and_masks(release: Path) -> None:
    for k, n in ((1, 3), (2, 2), (3, 2)):
        images, types, masks = _fold(release, k)
        assert images.shape == (n, SIZE, SIZE, 3) and images.dtype == np.float64
        assert masks.shape == (n, SIZE, SIZE, 6) and masks.dtype == np.float64
        assert types.shape == (n,) and types.dtype.kind == "U" and set(types) <= set(PANNUKE_TISSUES)
        assert np.array_equal(images, np.rint(images)) and images.min() >= 0 and images.max() <= 255
        assert np.array_equal(masks, np.rint(masks)) and masks.min() >= 0
        for mask in masks:
            nuclear = mask[..., :5] > 0
            assert np.all(nuclear.sum(-1) <= 1)  # one class per pixel
            assert np.array_equal(mask[..., 5] == 1, ~nuclear.any(-1))  # channel 5 = background
            ids = [set(np.unique(mask[..., c])) - {0.0} for c in range(5)]
            assert all(not (ids[a] & ids[b]) for a in range(5) for b in range(a + 1, 5))  # ids unique per tile


def test_tile_k_does_not_depend_on_n_and_seed_matters(release: Path, tmp_path: Path) -> None:
    synth_cells(tmp_path / "n4", n=4, size=SIZE, seed=0)
    images7, types7, masks7 = _fold(release, 1)
    images4, types4, masks4 = _fold(tmp_path / "n4", 1)  # tiles 0 and 3 in both
    np.testing.assert_array_equal(images4, images7[:2])
    np.testing.assert_array_equal(masks4, masks7[:2])
    assert list(types4) == list(types7[:2])
    synth_cells(tmp_path / "s1", n=3, size=SIZE, seed=1)
    assert not np.array_equal(_fold(tmp_path / "s1", 1)[0], images7[:1])


def test_large_images_png_rgb_and_labels(release: Path) -> None:
    image, _ = read_image(release / "large" / "large_000.png", mode="rgb")
    inst, types = read_labels(release / "large" / "large_000.npz")
    rgb, inst_ref, types_ref, _ = draw_cells_image(_rng(0, 11, 0), LARGE_SHAPE)
    assert image.shape == (*LARGE_SHAPE, 3)
    np.testing.assert_array_equal(image, rgb)  # written BGR for opencv, read back RGB
    np.testing.assert_array_equal(inst, inst_ref)
    np.testing.assert_array_equal(types, types_ref)
    assert label_problem(inst, types, 5) is None and np.unique(inst).size > 50


def _props(n_tiles: int) -> dict[int, list]:
    by_type: dict[int, list] = {t: [] for t in range(1, 6)}
    for k in range(n_tiles):
        rgb, inst, types, _ = draw_cells_image(_rng(5, 10, k), (256, 256), TISSUE_PROFILES[k % len(TISSUE_PROFILES)])
        gray = rgb.mean(-1)
        for p in regionprops(inst, intensity_image=gray):
            if p.area >= 6:
                by_type[int(types[p.coords[0, 0], p.coords[0, 1]])].append(p)
    return by_type


def test_nucleus_classes_have_their_own_size_shape_and_darkness() -> None:
    props = _props(10)
    assert all(len(props[t]) >= 5 for t in range(1, 6))
    area = {t: np.median([p.area for p in props[t]]) for t in props}
    elong = {t: np.median([p.axis_major_length / max(p.axis_minor_length, 1) for p in props[t]]) for t in props}
    dark = {t: np.median([p.intensity_mean for p in props[t]]) for t in props}
    assert area[4] < area[2] < area[5] < area[1]  # dead < inflammatory < epithelial < neoplastic
    assert elong[3] > 2.5 and elong[2] < 1.4  # spindles vs round lymphocytes
    assert dark[2] < dark[1] and dark[4] < dark[1]  # dense chromatin vs pale neoplastic nuclei


def test_nuclei_touch_and_every_instance_stays_substantial() -> None:
    _, inst, types, tissue = draw_cells_image(_rng(0, 10, 0), (256, 256), TISSUE_PROFILES[1])  # glands
    assert tissue == "Colon"
    right = (inst[:, 1:] > 0) & (inst[:, :-1] > 0) & (inst[:, 1:] != inst[:, :-1])
    down = (inst[1:] > 0) & (inst[:-1] > 0) & (inst[1:] != inst[:-1])
    assert right.sum() + down.sum() > 20  # neighbouring pixels of different nuclei
    areas = np.bincount(inst.ravel())[1:]
    assert areas[areas > 0].min() >= 3  # occlusion never leaves a nucleus as a speck of a pixel or two
    assert label_problem(inst, types, 5) is None


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="multiple of 16"):
        synth_cells("/nonexistent", n=3, size=100)
    with pytest.raises(ConfigError, match="n >= folds"):
        synth_cells("/nonexistent", n=2, folds=3)
    with pytest.raises(ConfigError, match="seed"):
        synth_cells("/nonexistent", n=3, seed=-1)


def test_cli_synth_cells_options_and_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cells"
    result = runner.invoke(app, ["data", "synth", "cells", str(out), "--n", "3", "--size", "64", "--large", "1"])
    assert result.exit_code == 0, result.output
    assert (out / "Fold 3" / "masks" / "fold3" / "masks.npy").is_file() and (out / "large" / "large_000.npz").is_file()
    (out / "Fold 1" / "stale.txt").write_text("x")
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["data", "synth", "cells", str(out), "--n", "3", "--size", "64", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "Fold 1" / "stale.txt").exists() and not (out / "large").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only the generator's own outputs are removed
    for args in (["--shape", "8,8,8"], ["--identities", "3"], ["--held-out"]):
        result = runner.invoke(app, ["data", "synth", "cells", str(tmp_path / "x"), *args])
        assert result.exit_code != 0 and "do not apply to 'synth cells'" in result.output
    result = runner.invoke(app, ["data", "synth", "ct", str(tmp_path / "y"), "--large", "2"])
    assert result.exit_code != 0 and "--large" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
