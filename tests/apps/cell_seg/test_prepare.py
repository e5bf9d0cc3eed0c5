"""``medvit cell prepare``: PanNuke (release and flat layouts) and CoNIC to the prepared layout; resume; errors."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvit.apps.cell_seg.prepare import conic_labels, pannuke_labels, prepare
from medvit.shared.data.cards import load_card, validate_dir
from medvit.shared.data.cell_format import load_cell_dataset, read_labels
from medvit.shared.data.io import read_image
from medvit.shared.data.synth_cells import synth_cells
from medvit.shared.errors import ConfigError, DataError

SIZE = 64


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("release")
    synth_cells(out, n=6, size=SIZE, seed=2)
    return out


@pytest.fixture(scope="module")
def prepared(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "out"
    summary = prepare("pannuke", release, out)
    assert summary["images"] == 6 and summary["written"] == 6 and summary["skipped"] == 0
    return out


def _release_fold(root: Path, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = root / f"Fold {k}"
    return (
        np.load(d / "images" / f"fold{k}" / "images.npy"),
        np.load(d / "masks" / f"fold{k}" / "masks.npy"),
        np.load(d / "images" / f"fold{k}" / "types.npy"),
    )


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_prepared_labels_match_the_synthetic_masks(release: Path, prepared: Path) -> None:
    for k in (1, 2, 3):
        images, masks, tissues = _release_fold(release, k)
        types_rows = _csv(prepared / f"fold{k}" / "types.csv")
        count_rows = _csv(prepared / f"fold{k}" / "cell_count.csv")
        assert [r["img"] for r in types_rows] == [f"{k}_{i}.png" for i in range(len(images))]
        assert [r["tissue"] for r in types_rows] == list(tissues)
        for i in range(len(images)):
            inst, types = read_labels(prepared / f"fold{k}" / "labels" / f"{k}_{i}.npz")
            png, _ = read_image(prepared / f"fold{k}" / "images" / f"{k}_{i}.png", mode="rgb")
            np.testing.assert_array_equal(png, images[i].astype(np.uint8))  # RGB kept through opencv's BGR
            expected_types = np.zeros((SIZE, SIZE), np.uint8)
            for c in range(5):
                expected_types[masks[i, ..., c] > 0] = c + 1
            np.testing.assert_array_equal(types, expected_types)
            counts = [np.unique(masks[i, ..., c][masks[i, ..., c] > 0]).size for c in range(5)]
            assert [np.unique(inst[types == c + 1]).size for c in range(5)] == counts
            names = ["Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"]
            assert [int(count_rows[i][n]) for n in names] == counts
            # same partition: each synthetic id maps to exactly one prepared id and back; ids are 1..N
            pairs = np.unique(np.stack([inst.ravel(), masks[i, ..., :5].sum(-1).ravel().astype(np.int64)]), axis=1)
            assert pairs.shape[1] == np.unique(inst).size == np.unique(pairs[1]).size
            assert set(np.unique(inst)) == set(range(int(inst.max()) + 1))


def test_dataset_json_splits_and_card_validation(prepared: Path) -> None:
    info = load_cell_dataset(prepared)
    assert info.source == "pannuke" and info.magnification == 40 and info.mpp == 0.25
    assert info.folds == ("fold1", "fold2", "fold3") and info.images == {"fold1": 2, "fold2": 2, "fold3": 2}
    assert info.split(1) == {"train": ("fold1",), "val": ("fold2",), "test": ("fold3",)}
    assert info.split("2") == {"train": ("fold2",), "val": ("fold1",), "test": ("fold3",)}
    assert info.split(3) == {"train": ("fold3",), "val": ("fold2",), "test": ("fold1",)}
    assert info.nuclei_types[1] == "Neoplastic" and len(info.tissue_types) == 19 and "CC BY-NC-SA 4.0" in info.license
    assert not (prepared / ".prepare.json").exists()
    report = validate_dir(load_card("pannuke"), prepared)
    assert report.ok, report.problems
    assert report.counts["images"] == 6
    assert sum(sum(c.values()) for c in info.class_counts.values()) == report.counts["nuclei"]
    wrong = validate_dir(load_card("conic"), prepared)  # conic card: other class names at those indices
    assert any("Neutrophil" in p for p in wrong.problems)


def test_raw_release_is_one_problem_pointing_at_prepare(release: Path) -> None:
    report = validate_dir(load_card("pannuke"), release)
    assert len(report.problems) == 1 and "medvit cell prepare pannuke" in report.problems[0]


def test_flat_layout_with_cellvit_numbering(release: Path, prepared: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for k in (1, 2, 3):
        images, masks, tissues = _release_fold(release, k)
        (flat / f"fold{k - 1}").mkdir(parents=True)
        np.save(flat / f"fold{k - 1}" / "images.npy", images.astype(np.uint8))  # uint8 accepted too
        np.save(flat / f"fold{k - 1}" / "masks.npy", masks.astype(np.int32))
        np.save(flat / f"fold{k - 1}" / "types.npy", tissues.astype("S"))  # bytes names accepted
    prepare("pannuke", flat, tmp_path / "out")
    for k in (1, 2, 3):
        for name in (f"{k}_0", f"{k}_1"):
            a = read_labels(tmp_path / "out" / f"fold{k}" / "labels" / f"{name}.npz")
            b = read_labels(prepared / f"fold{k}" / "labels" / f"{name}.npz")
            assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert _csv(tmp_path / "out" / "fold2" / "types.csv") == _csv(prepared / "fold2" / "types.csv")


def test_overlapping_channels_later_wins_by_hand() -> None:
    mask = np.zeros((4, 6, 6))
    mask[0:2, 0:3, 0] = 40  # neoplastic id 40
    mask[2:4, 0:2, 0] = 7  # neoplastic id 7
    mask[1:3, 2:5, 2] = 3  # connective overlapping both neoplastic nuclei
    mask[..., 5] = (mask[..., :5].sum(-1) == 0).astype(float)
    inst, types = pannuke_labels(mask)
    expected_types = np.array(
        [[1, 1, 1, 0, 0, 0], [1, 1, 3, 3, 3, 0], [1, 1, 3, 3, 3, 0], [1, 1, 0, 0, 0, 0]], dtype=np.uint8
    )
    # channel 0: 7 -> 1, 40 -> 2 (sorted ids); channel 2: 3 -> 1 + offset 2 = 3
    expected_inst = np.array(
        [[2, 2, 2, 0, 0, 0], [2, 2, 3, 3, 3, 0], [1, 1, 3, 3, 3, 0], [1, 1, 0, 0, 0, 0]], dtype=np.int32
    )
    np.testing.assert_array_equal(types, expected_types)
    np.testing.assert_array_equal(inst, expected_inst)


def _conic_src(root: Path, n_sources: int = 4, per_source: int = 3, patch_info: bool = True) -> Path:
    rng = np.random.default_rng(0)
    n = n_sources * per_source
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros((n, 32, 32, 2), dtype=np.int32)
    for i in range(n):
        for j in range(1 + i % 4):
            r, c = 2 + 7 * j, 3 + 5 * j
            labels[i, r : r + 5, c : c + 4, 0] = 10 * (j + 1)
            labels[i, r : r + 5, c : c + 4, 1] = 1 + (i + j) % 6
    root.mkdir(parents=True)
    np.save(root / "images.npy", images)
    np.save(root / "labels.npy", labels)
    if patch_info:
        names = [f"src{s}_{s}-{p:04d}" for s in range(n_sources) for p in range(per_source)]
        (root / "patch_info.csv").write_text("patch_info\n" + "\n".join(names) + "\n")
    return root


def test_conic_source_disjoint_folds_and_labels(tmp_path: Path) -> None:
    src = _conic_src(tmp_path / "conic", n_sources=7, per_source=3)
    labels = np.load(src / "labels.npy")
    summary = prepare("conic", src, tmp_path / "out")
    info = load_cell_dataset(tmp_path / "out")
    assert info.magnification == 20 and info.mpp == 0.5 and info.tissue_types == ("Colon",)
    assert info.nuclei_types[1] == "Neutrophil" and len(info.folds) == 5 and summary["images"] == 21
    assert info.split(1) == {"train": ("fold3", "fold4", "fold5"), "val": ("fold2",), "test": ("fold1",)}
    sources_of = {}
    for fold in info.folds:
        names = [r["img"].removesuffix(".png") for r in _csv(tmp_path / "out" / fold / "types.csv")]
        for name in names:
            sources_of.setdefault(name.rsplit("-", 1)[0], set()).add(fold)
            i = int(name.split("_")[0].removeprefix("src")) * 3 + int(name.rsplit("-", 1)[1])
            inst, types = read_labels(tmp_path / "out" / fold / "labels" / f"{name}.npz")
            np.testing.assert_array_equal(types, labels[i, ..., 1])
            assert np.unique(inst).size - 1 == np.unique(labels[i, ..., 0]).size - 1
    assert all(len(folds) == 1 for folds in sources_of.values())  # no source image in two folds
    assert sorted(info.images.values()) == [3, 3, 3, 6, 6]  # 7 groups of 3 over 5 folds, balanced greedily
    assert validate_dir(load_card("conic"), tmp_path / "out").ok


def test_conic_labels_fix_mixed_instances() -> None:
    label = np.zeros((4, 4, 2), dtype=np.int64)
    label[0, :3, 0], label[0, :3, 1] = 5, [2, 2, 3]  # mixed: majority 2
    label[2, :2, 0] = 9  # no class at all: dropped
    label[3, 3] = [4, 6]
    inst, types, fixed = conic_labels(label)
    assert fixed == 2
    assert types[0, :3].tolist() == [2, 2, 2] and types[2].sum() == 0 and types[3, 3] == 6
    assert inst[2].sum() == 0 and sorted(np.unique(inst).tolist()) == [0, 1, 2]


def test_conic_without_patch_info_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = _conic_src(tmp_path / "conic", n_sources=2, per_source=2, patch_info=False)
    with caplog.at_level(logging.WARNING):
        prepare("conic", src, tmp_path / "out")
    assert "leakage" in caplog.text
    assert load_cell_dataset(tmp_path / "out").images == {f"fold{k}": 1 for k in range(1, 5)}


class _StopError(Exception):
    pass


def test_resume_after_interruption(release: Path, prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def stop_after_four(done: int, total: int) -> None:
        if done == 4:
            raise _StopError

    with pytest.raises(_StopError):
        prepare("pannuke", release, out, progress=stop_after_four)
    assert not (out / "dataset.json").exists() and (out / ".prepare.json").exists()
    other = _copy_release(release, tmp_path / "other")
    with pytest.raises(ConfigError, match="partial prepare"):
        prepare("pannuke", other, out)  # another source may not continue it
    summary = prepare("pannuke", release, out)
    assert summary["skipped"] == 4 and summary["written"] == 2
    for png in sorted(prepared.glob("fold*/labels/*.npz")):
        rel = png.relative_to(prepared)
        assert all(np.array_equal(a, b) for a, b in zip(read_labels(png), read_labels(out / rel), strict=True))
    assert json.loads((out / "dataset.json").read_text()) == json.loads((prepared / "dataset.json").read_text())
    with pytest.raises(ConfigError, match="already holds a prepared dataset"):
        prepare("pannuke", release, out)
    assert prepare("pannuke", release, out, overwrite=True)["written"] == 6


def _copy_release(release: Path, dst: Path) -> Path:
    shutil.copytree(release, dst)
    return dst


def test_bad_inputs_name_the_file(release: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        prepare("monuseg", release, tmp_path / "o0")
    with pytest.raises(DataError, match="no PanNuke folds"):
        prepare("pannuke", tmp_path, tmp_path / "o1")
    src = _copy_release(release, tmp_path / "a")
    (src / "Fold 2" / "masks" / "fold2" / "masks.npy").unlink()
    with pytest.raises(DataError, match=r"fold2/masks\.npy: missing"):
        prepare("pannuke", src, tmp_path / "o2")
    src = _copy_release(release, tmp_path / "b")
    masks = src / "Fold 1" / "masks" / "fold1" / "masks.npy"
    np.save(masks, np.load(masks)[..., :4])
    with pytest.raises(DataError, match=r"masks\.npy: expected \[N, H, W, 5\]"):
        prepare("pannuke", src, tmp_path / "o3")
    src = _copy_release(release, tmp_path / "c")
    images = src / "Fold 1" / "images" / "fold1" / "images.npy"
    arr = np.load(images)
    arr[1, 3, 3, 0] = np.nan
    np.save(images, arr)
    with pytest.raises(DataError, match=r"images\.npy: image 1 has NaN"):
        prepare("pannuke", src, tmp_path / "o4")
    src = _copy_release(release, tmp_path / "d")
    types = src / "Fold 3" / "images" / "fold3" / "types.npy"
    np.save(types, np.array(["Breast", None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"types\.npy: holds pickled Python objects"):
        prepare("pannuke", src, tmp_path / "o5")
    src = _copy_release(release, tmp_path / "e")
    masks = src / "Fold 1" / "masks" / "fold1" / "masks.npy"
    arr = np.load(masks)
    arr[0, 0, 0, 0] = 0.5
    np.save(masks, arr)
    with pytest.raises(DataError, match=r"masks\.npy: labels of image 0 have non-integer values"):
        prepare("pannuke", src, tmp_path / "o6")
    conic = _conic_src(tmp_path / "conic")
    labels = np.load(conic / "labels.npy")
    labels[2, 0, 0] = [99, 7]
    np.save(conic / "labels.npy", labels)
    with pytest.raises(DataError, match=r"labels\.npy: labels of image 2 have class 7"):
        prepare("conic", conic, tmp_path / "o7")
    (conic / "patch_info.csv").write_text("patch_info\na-0001\n")
    with pytest.raises(DataError, match=r"patch_info\.csv: 1 patch names for 12 images"):
        prepare("conic", conic, tmp_path / "o8")
