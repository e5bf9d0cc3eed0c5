"""Decoded-image cache: hits and misses, invalidation when the file changes, atomic entries, concurrent writers."""

from __future__ import annotations

import io
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from medvit.shared.data.image_cache import CachedImageDataset, ImageCache, resize_short_side
from medvit.shared.files import TEMP_RE


def _xray(path: Path, seed: int, shape: tuple[int, int] = (80, 120), dtype: type = np.uint8) -> Path:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    assert cv2.imwrite(str(path), rng.integers(0, top, shape, endpoint=True).astype(dtype))
    return path


def test_resize_short_side() -> None:
    img = np.zeros((80, 120), np.uint8)
    assert resize_short_side(img, 40).shape == (40, 60)
    assert resize_short_side(np.zeros((120, 80, 3), np.uint8), 40).shape == (60, 40, 3)
    assert resize_short_side(img, 160).shape == (160, 240)
    assert resize_short_side(img, 160, enlarge=False) is img
    flat = np.full((80, 120), 0.5, np.float32)
    np.testing.assert_allclose(resize_short_side(flat, 32), 0.5, atol=1e-6)  # area averaging keeps constants


def test_hit_miss_and_content(tmp_path: Path) -> None:
    src = _xray(tmp_path / "a.png", 0)
    cache = ImageCache(tmp_path / "cache", "xray", short_side=40)
    first = cache.get(src)
    assert cache.stats == {"hits": 0, "misses": 1, "corrupt": 0}
    again = cache.get(src)
    assert cache.stats["hits"] == 1 and cache.stats["misses"] == 1
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.uint8 and first.shape == (40, 60)
    ref = cv2.resize(cv2.imread(str(src), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255, (60, 40),
                     interpolation=cv2.INTER_AREA)  # fmt: skip
    assert np.abs(first.astype(np.float64) - ref * 255).max() <= 1.0  # only rounding to uint8
    entry = cache.get_entry(src)
    assert entry["original_shape"] == [80, 120] and entry["spacing"] == []
    other = ImageCache(tmp_path / "cache", "xray", short_side=32)  # other settings: other entries, same folder
    assert other.get(src).shape == (32, 48) and other.stats["misses"] == 1
    assert cache.get(src).shape == (40, 60) and cache.stats["hits"] == 3


def test_uint16_entry_keeps_16_bit_precision(tmp_path: Path) -> None:
    src = _xray(tmp_path / "x16.png", 1, dtype=np.uint16)
    cache = ImageCache(tmp_path / "cache", "xray", short_side=None, dtype="uint16")
    np.testing.assert_array_equal(cache.get(src), cv2.imread(str(src), cv2.IMREAD_UNCHANGED))


def test_invalidated_when_the_file_changes(tmp_path: Path) -> None:
    src = _xray(tmp_path / "a.png", 0)
    cache = ImageCache(tmp_path / "cache", "xray", short_side=None)
    before = cache.get(src)
    st = src.stat()
    _xray(src, 1)  # new pixels, same size (same shape, same PNG framing is not guaranteed: set the time too)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = cache.get(src)
    assert cache.stats["misses"] == 2 and cache.stats["hits"] == 0
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, cv2.imread(str(src), cv2.IMREAD_UNCHANGED))


def test_atomic_entries_and_corrupt_ones_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _xray(tmp_path / "a.png", 0)
    cache_dir = tmp_path / "cache"
    cache = ImageCache(cache_dir, "xray", short_side=40)
    real_savez = np.savez

    def killed(fh: io.BufferedWriter, **arrays: np.ndarray) -> None:
        real_savez(fh, **arrays)
        fh.truncate(fh.tell() // 2)  # half the entry reached the temp file...
        raise KeyboardInterrupt  # ...when the worker was interrupted

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.get(src)
    monkeypatch.setattr(np, "savez", real_savez)
    assert list(cache_dir.iterdir()) == []  # no entry, no half-written file, no temp left behind
    good = cache.get(src)
    npz = next(cache_dir.glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:100])  # damaged afterwards (disk trouble): recomputed, not trusted
    np.testing.assert_array_equal(cache.get(src), good)
    assert cache.stats["corrupt"] == 1 and cache.stats["misses"] == 3  # interrupted, first, recomputed


def _fill(args: tuple[str, list[str]]) -> list[int]:
    cache_dir, paths = args
    cache = ImageCache(cache_dir, "xray", short_side=40)
    return [int(cache.get(p).sum()) for p in paths]


def test_concurrent_writers(tmp_path: Path) -> None:
    paths = [str(_xray(tmp_path / f"{i}.png", i)) for i in range(4)]
    cache_dir = str(tmp_path / "cache")
    with ThreadPoolExecutor(4) as pool:  # threads of one process writing the same keys at once
        sums = list(pool.map(_fill, [(cache_dir, paths)] * 4))
    ctx = multiprocessing.get_context("fork")
    proc_dir = str(tmp_path / "cache_proc")
    with ctx.Pool(2) as pool:  # DataLoader workers / ranks: separate processes
        sums += pool.map(_fill, [(proc_dir, paths)] * 2)
    assert all(s == sums[0] for s in sums)
    for d in (cache_dir, proc_dir):
        names = os.listdir(d)
        assert len(names) == 4 and not any(TEMP_RE.match(n) for n in names)  # one .npz per source, no temps
        cache = ImageCache(d, "xray", short_side=40)
        assert [int(cache.get(p).sum()) for p in paths] == sums[0] and cache.stats["hits"] == 4


def test_fundus_and_oct_kinds_and_dataset(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:120, 0:160]
    img = np.zeros((120, 160, 3), np.uint8)
    img[np.hypot(xx - 80, yy - 60) < 50] = (40, 90, 200)  # BGR on disk: a red disc
    assert cv2.imwrite(str(tmp_path / "f.png"), img)
    fundus = ImageCache(tmp_path / "cache", "fundus", short_side=32)
    out = fundus.get(tmp_path / "f.png")
    assert out.shape == (32, 32, 3) and out[16, 16].tolist() == [200, 90, 40] and not out[0, 0].any()
    vol = (np.arange(16 * 12 * 6) % 200).astype(np.uint8).reshape(16, 12, 6)
    np.save(tmp_path / "v.npy", vol)
    octc = ImageCache(tmp_path / "cache", "oct", oct_shape=(8, 12, 6))
    entry = octc.get_entry(tmp_path / "v.npy")
    assert entry["image"].shape == (8, 12, 6) and entry["image"].dtype == np.uint8
    assert entry["original_shape"] == [16, 12, 6]
    ds = CachedImageDataset([tmp_path / "f.png"], fundus, labels=[3])
    item = ds[0]
    assert item["label"] == 3 and item["image"].shape == (32, 32, 3) and fundus.stats["hits"] == 1
