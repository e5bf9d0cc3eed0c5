"""Cell training data: tiles and targets, seeded augmentation, cell+tissue weights, weighted draws, bad files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from medvit.apps.cell_seg.data import (
    CellTiles,
    WeightedDraws,
    _cell_tissue_weights,
    normalise,
    read_labels,
    sampling_weights,
)
from medvit.apps.cell_seg.prepare import prepare
from medvit.apps.cell_seg.targets import hv_map
from medvit.shared.data.io import read_image
from medvit.shared.data.synth_cells import synth_cells
from medvit.shared.engine.fit import SeededSamples
from medvit.shared.errors import ConfigError, DataError

SIZE = 64


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cells")
    synth_cells(base / "raw", n=9, size=SIZE, seed=4)
    prepare("pannuke", base / "raw", base / "prepared")
    return base / "prepared"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _check_item(item: dict, n_classes: int = 5) -> None:
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
    assert item["hv_map"].shape == (2, SIZE, SIZE) and item["hv_map"].dtype == torch.float32
    assert item["hv_map"].abs().max() <= 1.0
    for key in ("nuclei_binary_map", "nuclei_type_map", "instance_map"):
        assert item[key].shape == (SIZE, SIZE) and item[key].dtype == torch.int64
    assert item["tissue"].shape == () and item["tissue"].dtype == torch.int64
    binary = item["nuclei_binary_map"]
    assert set(binary.unique().tolist()) <= {0, 1}
    assert torch.equal(binary, (item["instance_map"] > 0).long())
    assert torch.equal(binary, (item["nuclei_type_map"] > 0).long())
    assert item["nuclei_type_map"].max() <= n_classes
    torch.testing.assert_close(item["hv_map"], torch.from_numpy(hv_map(item["instance_map"].numpy())))


def test_items_without_augmentation_are_the_files(root: Path) -> None:
    ds = CellTiles(root, ["fold1", "fold2"], augment=False)
    assert len(ds) == 6 and [it.name for it in ds.items[:3]] == ["1_0", "1_1", "1_2"]
    tissues = {r["img"]: r["tissue"] for r in _rows(root / "fold2" / "types.csv")}
    for i in (0, 4):
        ds.reseed(123)  # no augmentation: the seed changes nothing
        item = ds[i]
        _check_item(item)
        it = ds.items[i]
        image, _ = read_image(it.image, mode="rgb")
        inst, types = read_labels(it.labels)
        torch.testing.assert_close(item["image"], torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0)
        assert torch.equal(item["instance_map"], torch.from_numpy(inst).long())
        assert torch.equal(item["nuclei_type_map"], torch.from_numpy(types).long())
        assert item["index"] == i and ds.info.tissue_types[int(item["tissue"])] == it.tissue
    assert ds.info.tissue_types[int(ds[4]["tissue"])] == tissues[f"{ds.items[4].name}.png"]
    assert normalise(np.array([[[0, 255, 127]]], dtype=np.uint8)).flatten().tolist() == pytest.approx(
        [-1.0, 1.0, 127 / 127.5 - 1]
    )


def test_limit_keeps_evenly_spaced_items(root: Path) -> None:
    full = CellTiles(root, ["fold1", "fold2", "fold3"], augment=False)
    part = CellTiles(root, ["fold1", "fold2", "fold3"], augment=False, limit=3)
    assert [it.name for it in part.items] == [full.items[k].name for k in (0, 4, 8)]
    assert len(CellTiles(root, ["fold1"], augment=False, limit=10)) == 3


def test_augmented_items_same_seed_same_sample(root: Path) -> None:
    ds = CellTiles(root, ["fold1"], augment=True)
    ds.reseed(7)
    first = ds[1]
    _check_item(first)
    for s in (8, 9):  # other fetches in between do not matter
        ds.reseed(s)
        ds[2]
    ds.reseed(7)
    again = ds[1]
    assert all(torch.equal(first[k], again[k]) for k in first if isinstance(first[k], torch.Tensor))
    differs = 0
    for s in range(20, 30):
        ds.reseed(s)
        item = ds[1]
        _check_item(item)
        differs += not torch.equal(item["image"], first["image"])
    assert differs >= 8  # nearly every seed changes something (GaussNoise alone fires half the time)


def test_hv_is_recomputed_after_a_flip(root: Path) -> None:
    ds = CellTiles(root, ["fold1"], augment=True)
    _, inst, _ = ds.load(0)
    flipped = np.ascontiguousarray(inst[:, ::-1])
    for seed in range(200):
        ds.reseed(seed)
        item = ds[0]
        if np.array_equal(item["instance_map"].numpy(), flipped):
            break
    else:
        pytest.fail("no seed in 0..199 gave a plain horizontal flip")
    np.testing.assert_array_equal(item["hv_map"].numpy(), hv_map(flipped))
    # not the flipped target: the x channel changes sign and HoVer-Net's 1-based centre shifts by a pixel
    assert not np.allclose(item["hv_map"].numpy(), hv_map(inst)[:, :, ::-1])


def test_weights_formula_on_a_hand_example() -> None:
    # gamma 0.5; K = 3 images, n_A = 2, n_B = 1: w_t = 3 / (0.5 n + 1.5) -> A 1.2, B 1.5 -> /1.5 -> 0.8, 1.0
    # m = [2, 1] images per class, K' = 3: f = [3 / 2.5, 3 / 2] = [1.2, 1.5]
    # w_cell = 0.5 max(b) + 0.5 sum(b f): [1.1, 0 -> 1.1 (smallest non-zero), 0.5 + 0.5 * 2.7 = 1.85] -> / 1.85
    w = _cell_tissue_weights(np.array(["A", "A", "B"]), np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), 0.5)
    np.testing.assert_allclose(w, [0.8 + 1.1 / 1.85, 0.8 + 1.1 / 1.85, 2.0])
    uniform = _cell_tissue_weights(np.array(["A", "A", "B"]), np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), 0.0)
    np.testing.assert_allclose(uniform, [2.0, 2.0, 2.0])


def test_sampling_weights_of_a_prepared_dataset(root: Path) -> None:
    w = sampling_weights(root, ["fold1", "fold2"])
    ds = CellTiles(root, ["fold1", "fold2"], augment=False)
    assert w.shape == (len(ds),) and np.all(w > 0)
    tissue = np.array([it.tissue for it in ds.items])
    rows = {}
    for fold in ("fold1", "fold2"):
        for r in _rows(root / fold / "cell_count.csv"):
            rows[r["img"]] = [int(r[c]) for c in ds.info.nuclei_types[1:]]
    present = np.clip(np.array([rows[f"{it.name}.png"] for it in ds.items]), 0, 1).astype(float)
    np.testing.assert_allclose(w, _cell_tissue_weights(tissue, present, 0.85))
    with pytest.raises(ConfigError, match="gamma"):
        sampling_weights(root, ["fold1"], gamma=1.5)


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n
        self.seeds: list[int] = []

    def __len__(self) -> int:
        return self.n

    def reseed(self, seed: int) -> None:
        self.seeds.append(seed)

    def __getitem__(self, i: int) -> int:
        return i


def test_weighted_draws_follow_the_weights_and_the_seed() -> None:
    toy = _Toy(4)
    draws = WeightedDraws(toy, [1.0, 2.0, 0.0, 5.0], num_samples=10)
    assert len(draws) == 10
    picks = np.array([draws.draw(s) for s in range(8000)])
    freq = np.bincount(picks, minlength=4) / picks.size
    np.testing.assert_allclose(freq, [1 / 8, 2 / 8, 0.0, 5 / 8], atol=0.025)
    assert freq[2] == 0.0
    draws.reseed(12345)
    a = draws[0]
    draws.reseed(12345)
    b = draws[9]  # the slot is only a position: the seed decides
    assert a == b == draws.draw(12345) and toy.seeds == [12345, 12345]
    assert draws[3] == draws.draw(3)  # without reseed the slot is the seed
    with pytest.raises(ValueError, match="weights"):
        WeightedDraws(toy, [1.0, 1.0])
    with pytest.raises(ValueError, match="not all zero"):
        WeightedDraws(toy, [0.0, 0.0, 0.0, 0.0])


def test_weighted_draws_inside_the_training_loop_wrapper(root: Path) -> None:
    tiles = CellTiles(root, ["fold1", "fold2"], augment=True)
    samples = SeededSamples(WeightedDraws(tiles, sampling_weights(root, ["fold1", "fold2"])))
    first, again = samples[(0, 2**40 + 5)], samples[(3, 2**40 + 5)]
    assert first["index"] == again["index"]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["hv_map"], again["hv_map"])


def test_bad_folds_and_files(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fold 'fold9'"):
        CellTiles(root, ["fold9"], augment=False)
    with pytest.raises(DataError, match="dataset.json: missing"):
        CellTiles(tmp_path, ["fold1"], augment=False)
    bad = tmp_path / "labels.npz"
    np.savez(bad, inst_map=np.zeros((4, 4), np.float32), type_map=np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="inst_map' must hold integers"):
        read_labels(bad)
    np.savez(bad, inst_map=np.zeros((4, 4), np.int32))
    with pytest.raises(DataError, match="missing array"):
        read_labels(bad)
    np.savez(bad, inst_map=np.array([None] * 16, dtype=object).reshape(4, 4), type_map=np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="not a readable label"):
        read_labels(bad)
    bad.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DataError, match="labels.npz"):
        read_labels(bad)
