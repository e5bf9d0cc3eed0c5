"""MONAI/albumentations pipeline builders and the preprocessed-volume cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medvit.shared.data.cache import CachedVolumeDataset, VolumeCache, transform_signature
from medvit.shared.data.io import ReadError, read_volume
from medvit.shared.data.transforms import (
    LoadVolumed,
    ct_augment,
    ct_preprocess,
    ct_random_crops,
    image2d_augment,
    image2d_preprocess,
    volume_to_metatensor,
)

# LPS-like storage (x and y axes flipped) with anisotropic spacing, as DICOM-converted CT often is.
AFFINE = np.array([[-0.75, 0, 0, 90.0], [0, -0.75, 0, 100.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])


def _ct(shape: tuple[int, int, int] = (48, 40, 12)) -> tuple[np.ndarray, np.ndarray]:
    """Air (-1000 HU) with a soft-tissue box (40 HU) and a bone core (700 HU); label 1 on the bone core."""
    x = np.full(shape, -1000, np.int16)
    x[8:40, 10:30, 2:10] = 40
    x[20:28, 16:24, 4:8] = 700
    lab = np.zeros(shape, np.uint8)
    lab[20:28, 16:24, 4:8] = 1
    return x, lab


@pytest.fixture
def ct_files(tmp_path: Path) -> tuple[Path, Path]:
    x, lab = _ct()
    img, seg = tmp_path / "ct_0000.nii.gz", tmp_path / "ct_seg.nii.gz"
    nib.save(nib.Nifti1Image(x, AFFINE), img)
    nib.save(nib.Nifti1Image(lab, AFFINE), seg)
    return img, seg


def test_volume_to_metatensor(ct_files) -> None:
    arr, meta = read_volume(ct_files[0])
    mt = volume_to_metatensor(arr, meta)
    assert isinstance(mt, MetaTensor) and mt.shape == arr.shape and mt.dtype == torch.float32
    np.testing.assert_array_equal(mt.affine.numpy(), AFFINE)
    assert mt.meta["original_channel_dim"] == "no_channel" and mt.meta["filename_or_obj"] == str(ct_files[0])
    with pytest.raises(ValueError, match=r"got shape \(4, 4\)"):
        volume_to_metatensor(np.zeros((4, 4), np.float32), meta)


def test_ct_preprocess_spacing_orientation_range_and_crop(ct_files) -> None:
    out = ct_preprocess(spacing=(1.5, 1.5, 1.5), label_key="label", load=True)(
        {"image": str(ct_files[0]), "label": ct_files[1], "case_id": "ct"}
    )
    img, lab = out["image"], out["label"]
    assert out["case_id"] == "ct" and set(out) == {"image", "label", "case_id"}
    assert img.shape == lab.shape and img.shape[0] == 1 and img.dtype == torch.float32
    np.testing.assert_allclose(img.pixdim.numpy(), [1.5, 1.5, 1.5])
    assert "".join(nib.aff2axcodes(img.affine.numpy())) == "RAS"
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    # HU window -175..250: soft-tissue voxels at 40 HU -> (40 + 175) / 425; bone 700 HU clipped to 1
    assert np.isclose(img.numpy(), (40 + 175) / 425, atol=1e-4).any() and float(img.max()) == 1.0
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0}  # nearest neighbour keeps labels
    # foreground crop: the box of tissue (32 x 20 voxels at 0.75 mm, 8 slices at 3 mm) -> about 16 x 10 x 16
    assert all(abs(s - e) <= 2 for s, e in zip(img.shape[1:], (16, 10, 16), strict=True))
    for axis in (1, 2, 3):  # tight box: every face touches tissue
        assert float(img.narrow(axis, 0, 1).max()) > 0 and float(img.narrow(axis, img.shape[axis] - 1, 1).max()) > 0


def test_ct_preprocess_without_crop_keeps_extent(ct_files) -> None:
    out = ct_preprocess(spacing=(1.5, 1.5, 3.0), crop_foreground=False, load=True)({"image": ct_files[0]})
    assert tuple(out["image"].shape) == (1, 24, 20, 12)  # 48 * 0.75 / 1.5, 40 * 0.75 / 1.5, 12 * 3 / 3
    np.testing.assert_allclose(float(out["image"].min()), 0.0)


@pytest.mark.parametrize("label", [False, True])
def test_ct_random_crops_shape_is_roi_even_for_small_volumes(label: bool) -> None:
    x = torch.zeros((1, 20, 10, 40))
    x[:, 5:15, 3:8, 10:30] = 0.5
    y = torch.zeros_like(x)
    y[:, 8:12, 4:7, 15:25] = 1.0
    data = {"image": MetaTensor(x + 0.1 * y)}
    if label:
        data["label"] = MetaTensor(y)
    crops = ct_random_crops(roi=(32, 32, 32), num_samples=3, label_key="label" if label else None)(data)
    assert isinstance(crops, list) and len(crops) == 3
    for c in crops:
        assert tuple(c["image"].shape) == (1, 32, 32, 32)
        if label:
            assert tuple(c["label"].shape) == (1, 32, 32, 32)
            # image and label cropped at the same place
            torch.testing.assert_close((c["image"] > 0.55).float(), c["label"].as_tensor())


def test_ct_random_crops_positive_only_centres_on_foreground() -> None:
    x = torch.zeros((1, 64, 64, 64))
    x[:, 40:60, 40:60, 40:60] = 1.0
    crops = ct_random_crops(roi=(16, 16, 16), num_samples=8, pos=1.0, neg=0.0)({"image": MetaTensor(x)})
    assert all(float(c["image"].sum()) > 0 for c in crops)


def test_ct_augment_preserves_shape_and_label_values() -> None:
    torch.manual_seed(0)
    img = torch.rand((1, 16, 16, 16))
    lab = (img > 0.5).float()
    aug = ct_augment(prob_flip=1.0, prob_rot90=1.0, prob_intensity=1.0, label_key="label")
    aug.set_random_state(seed=0)
    out = aug({"image": MetaTensor(img.clone()), "label": MetaTensor(lab.clone())})
    assert out["image"].shape == img.shape and set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    # spatial transforms are shared: the label still marks where the (scaled/shifted) image was > 0.5
    assert float(out["label"].sum()) == float(lab.sum())
    assert not torch.equal(out["image"].as_tensor(), img)


def test_image2d_preprocess_values() -> None:
    img = np.full((30, 40, 3), 128, np.uint8)
    out = image2d_preprocess(16)({"image": img})["image"]
    assert isinstance(out, torch.Tensor) and out.shape == (3, 16, 16) and out.dtype == torch.float32
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), (128 / 255 - mean) / std, atol=1e-4)
    gray = image2d_preprocess((8, 12), mean=(0.5,), std=(0.5,))({"image": img[..., 0]})["image"]
    assert gray.shape == (1, 8, 12)
    cropped = image2d_preprocess(16, crop_pct=0.5)({"image": img})["image"]
    assert cropped.shape == (3, 16, 16)


def test_image2d_augment_output() -> None:
    img = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    aug = image2d_augment(32, color_jitter=0.4, blur_prob=0.5, noise_prob=0.5, jpeg_prob=0.5, rotate=10)
    out = aug(image=img)["image"]
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert image2d_augment((24, 20), dropout_prob=1.0)(image=img[..., 0])["image"].shape == (24, 20)


def test_load_volumed_passes_non_paths(ct_files) -> None:
    out = LoadVolumed(["image", "label"], allow_missing_keys=True)({"image": ct_files[0], "other": 3})
    assert isinstance(out["image"], MetaTensor) and out["other"] == 3


# ------------------------------------------------------------------------------------------------ cache


def _counting(fn):
    calls = []

    def wrapped(src):
        calls.append(src)
        return fn(src)

    return wrapped, calls


def test_cache_second_call_uses_cache(tmp_path: Path, ct_files) -> None:
    pre = ct_preprocess(load=True)
    fn, calls = _counting(lambda src: pre({"image": src})["image"])
    cache = VolumeCache(tmp_path / "cache", transform_signature("ct_preprocess", spacing=[1.5] * 3))
    first = cache.get_or_compute(ct_files[0], fn)
    second = cache.get_or_compute(ct_files[0], fn)
    assert len(calls) == 1 and cache.stats == {"hits": 1, "misses": 1, "corrupt": 0}
    exact = pre({"image": ct_files[0]})["image"]
    assert isinstance(second, MetaTensor) and second.dtype == torch.float32
    torch.testing.assert_close(second.as_tensor(), first.as_tensor(), rtol=0, atol=0)
    assert float((second.as_tensor() - exact.as_tensor()).abs().max()) <= 2**-12  # float16 in [0, 1]
    torch.testing.assert_close(second.affine, exact.affine)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".npy"]  # no temp files left


def test_cache_key_changes_with_file_and_signature(tmp_path: Path, ct_files) -> None:
    fn, calls = _counting(lambda src: np.ones((4, 4, 4), np.float32))
    a = VolumeCache(tmp_path / "c", "sig-a")
    a.get_or_compute(ct_files[0], fn)
    VolumeCache(tmp_path / "c", "sig-b").get_or_compute(ct_files[0], fn)
    assert len(calls) == 2
    st = ct_files[0].stat()
    os.utime(ct_files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "edited" file
    a.get_or_compute(ct_files[0], fn)
    assert len(calls) == 3
    with pytest.raises(ReadError, match="not found"):
        a.key(tmp_path / "gone.nii.gz")


@pytest.mark.parametrize("damage", ["truncate_npy", "garbage_npy", "garbage_json", "delete_npy"])
def test_cache_corrupt_entry_is_recomputed(tmp_path: Path, ct_files, damage: str, caplog) -> None:
    value = np.linspace(0, 1, 5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    fn, calls = _counting(lambda src: value)
    cache = VolumeCache(tmp_path / "c", "sig")
    first = cache.get_or_compute(ct_files[0], fn)
    key = cache.key(ct_files[0])
    npy, js = tmp_path / "c" / f"{key}.0.npy", tmp_path / "c" / f"{key}.json"
    if damage == "truncate_npy":
        npy.write_bytes(npy.read_bytes()[:200])
    elif damage == "garbage_npy":
        npy.write_bytes(b"\x00" * 500)
    elif damage == "garbage_json":
        js.write_text("{not json")
    else:
        npy.unlink()
    again = cache.get_or_compute(ct_files[0], fn)
    assert len(calls) == 2 and cache.stats["corrupt"] == 1
    np.testing.assert_array_equal(again, first)
    assert "recomputing" in caplog.text
    third = cache.get_or_compute(ct_files[0], fn)  # the rewritten entry is good again
    assert len(calls) == 2 and np.array_equal(third, first)


def test_cache_dict_result_roundtrip(tmp_path: Path, ct_files) -> None:
    pre = ct_preprocess(label_key="label", load=True)
    item = {"image": ct_files[0], "label": ct_files[1], "case_id": "ct"}
    fn, calls = _counting(lambda src: pre(dict(item)))
    cache = VolumeCache(tmp_path / "c", "sig")
    first = cache.get_or_compute([ct_files[0], ct_files[1]], fn)
    second = cache.get_or_compute([ct_files[0], ct_files[1]], fn)
    assert len(calls) == 1 and second["case_id"] == "ct"
    torch.testing.assert_close(second["label"].as_tensor(), first["label"].as_tensor(), rtol=0, atol=0)
    assert set(torch.unique(second["label"]).tolist()) == {0.0, 1.0}
    doc = json.loads(next((tmp_path / "c").glob("*.json")).read_text())
    assert {v["dtype"] for v in doc["items"].values()} == {"float16"}


def test_cache_float32_option_is_lossless(tmp_path: Path, ct_files) -> None:
    value = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32) * 1e5  # beyond float16
    out = VolumeCache(tmp_path / "c", "s", dtype="float32").get_or_compute(ct_files[0], lambda s: value)
    np.testing.assert_array_equal(out, value)
    out16 = VolumeCache(tmp_path / "d", "s").get_or_compute(ct_files[0], lambda s: value)
    np.testing.assert_array_equal(out16, value)  # float16 overflow: stored as float32 instead


def test_cached_volume_dataset(tmp_path: Path, ct_files) -> None:
    pre = ct_preprocess(load=True)
    calls = []

    def counted(d):
        calls.append(d["image"])
        return pre(d)

    rand = ct_random_crops(roi=(24, 24, 24), num_samples=2)
    items = [{"image": ct_files[0]}, ct_files[1]]  # the label map stands in for a second "CT"
    ds = CachedVolumeDataset(items, counted, VolumeCache(tmp_path / "c", "sig"), rand)
    for _epoch in range(2):
        for i in range(len(ds)):
            crops = ds[i]
            assert len(crops) == 2 and all(tuple(c["image"].shape) == (1, 24, 24, 24) for c in crops)
    assert len(calls) == 2 and ds.cache.stats == {"hits": 2, "misses": 2, "corrupt": 0}
    nocache = CachedVolumeDataset(items, counted)
    nocache[0]
    nocache[0]
    assert len(calls) == 4
