"""Inputs of ``cell predict``: slides written here with tifffile, plain images, resampling, tissue detection."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from medvit.apps.cell_seg import slide as slide_mod
from medvit.apps.cell_seg.slide import TissueMask, open_source, read_tiles, tissue_mask
from medvit.apps.cell_seg.tiling import tile_grid
from medvit.shared.errors import ConfigError, DataError

H, W = 520, 700


def _noise(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _block_mean(img: np.ndarray, k: int) -> np.ndarray:
    """Exact k x k block means (what INTER_AREA computes for an integer factor), rounded."""
    h, w = img.shape[0] // k * k, img.shape[1] // k * k
    blocks = img[:h, :w].astype(np.float64).reshape(h // k, k, w // k, k, 3)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _write_pyramid(path: Path, img: np.ndarray, *, mpp: float | None, levels: int = 3) -> list[np.ndarray]:
    """A tiled generic pyramidal TIFF (sub-IFDs) with resolution tags in pixels per centimetre."""
    pyramid = [img]
    for _ in range(levels - 1):
        pyramid.append(_block_mean(pyramid[-1], 2))
    res = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(128, 128), subifds=levels - 1, photometric="rgb", compression="zlib", **res)
        for lvl in pyramid[1:]:
            tw.write(lvl, tile=(128, 128), subfiletype=1, photometric="rgb", compression="zlib")
    return pyramid


def _write_aperio(path: Path, img: np.ndarray, mpp: float = 0.25) -> list[np.ndarray]:
    """An SVS-like file: Aperio description with ``MPP``, baseline, thumbnail strip page, two reduced levels."""
    pyramid = [img, _block_mean(img, 2), _block_mean(img, 4)]
    h, w = img.shape[:2]
    desc = f"Aperio Image Library v12.0.0\n{w}x{h} [0,0 {w}x{h}] (128x128) RGB|AppMag = 40|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(128, 128), description=desc, metadata=None, photometric="rgb", compression="zlib")
        tw.write(_block_mean(img, 8), description="thumbnail", metadata=None, photometric="rgb")
        for lvl in pyramid[1:]:
            tw.write(lvl, tile=(128, 128), description="level", metadata=None, photometric="rgb", compression="zlib")
    return pyramid


@pytest.fixture(scope="module")
def pyramid_tif(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    return path, _write_pyramid(path, _noise(), mpp=0.25)


def test_pyramid_tiff_is_a_slide_read_exactly_at_level0(pyramid_tif: tuple[Path, list[np.ndarray]]) -> None:
    path, pyr = pyramid_tif
    with open_source(path, target_mag=40) as src:
        assert (src.kind, src.backend) == ("slide", "tiffslide")
        assert (src.width, src.height, src.scale, src.level) == (W, H, 1.0, 0)
        assert src.mpp == pytest.approx(0.25) and src.base_mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(src.read_region(130, 70, 200, 150), pyr[0][70:220, 130:330])
        # Partly outside the image: the outside is white glass.
        reg = src.read_region(W - 50, -20, 100, 60)
        np.testing.assert_array_equal(reg[20:, :50], pyr[0][:40, W - 50 :])
        assert (reg[:20] == 255).all() and (reg[:, 50:] == 255).all()


def test_target_20x_reads_the_matching_pyramid_level(pyramid_tif: tuple[Path, list[np.ndarray]]) -> None:
    path, pyr = pyramid_tif
    with open_source(path, target_mag=20) as src:
        assert src.scale == 2.0 and src.level == 1 and src.mpp == pytest.approx(0.5)
        assert (src.width, src.height) == (W // 2, H // 2)
        np.testing.assert_array_equal(src.read_region(33, 17, 120, 90), pyr[1][17:107, 33:153])
        np.testing.assert_allclose(src.to_level0(np.array([[0.0, 0.0], [10.0, 3.0]])), [[0.5, 0.5], [20.5, 6.5]])


def test_single_level_slide_is_area_resampled_to_20x(tmp_path: Path) -> None:
    img = _noise(300, 400, seed=1)
    path = tmp_path / "flat.tif"
    _write_pyramid(path, img, mpp=0.25, levels=1)
    with open_source(path, target_mag=20) as src:
        assert src.kind == "slide" and src.level == 0 and src.scale == 2.0
        reg = src.read_region(21, 11, 64, 48)
    expected = _block_mean(img, 2)[11:59, 21:85]
    assert np.abs(reg.astype(int) - expected.astype(int)).max() <= 1


def test_aperio_mpp_both_backends_agree(tmp_path: Path) -> None:
    img = _noise(384, 512, seed=2)
    path = tmp_path / "case.svs"
    pyr = _write_aperio(path, img)
    for backend in ("tiffslide", "openslide"):
        with open_source(path, target_mag=40, backend=backend) as src:
            assert src.backend == backend and src.base_mpp == pytest.approx(0.25) and src.scale == 1.0
            np.testing.assert_array_equal(src.read_region(5, 9, 100, 80), img[9:89, 5:105])
        with open_source(path, target_mag=20, backend=backend) as src:
            assert src.level == 1
            np.testing.assert_array_equal(src.read_region(40, 30, 64, 64), pyr[1][30:94, 40:104])


def _gradient(h: int, w: int, gx: float, gy: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    g = 20 + gx * xx + gy * yy
    assert g.max() <= 255
    return np.round(np.stack([g, g * 0.5, 255 - g], axis=-1)).astype(np.uint8)


def _ramp_error(rgb: np.ndarray, x: int, y: int, s: float, gx: float, gy: float) -> float:
    """Largest distance of a read region's red channel from the ramp sampled at (j + 0.5) * s - 0.5."""
    h, w = rgb.shape[:2]
    ys, xs = np.mgrid[y : y + h, x : x + w].astype(np.float64)
    g = 20 + gx * ((xs + 0.5) * s - 0.5) + gy * ((ys + 0.5) * s - 0.5)
    return float(np.abs(rgb[..., 0] - g).max())


@pytest.mark.parametrize("mpp", [0.2, 0.3])
def test_non_integer_resampling_keeps_the_pixel_grid(tmp_path: Path, mpp: float) -> None:
    # A linear ramp survives area averaging and bilinear interpolation: working pixel j must carry the ramp's value
    # at level-0 coordinate (j + 0.5) * scale - 0.5, whatever the region's sub-pixel phase. The ramp is steep
    # (2 grey levels per level-0 pixel), so a shift by one working pixel fails.
    img = _gradient(60, 100, 2.0, 0.5)
    path = tmp_path / "ramp.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    with open_source(path, mpp=mpp, target_mag=40) as src:
        s = 0.25 / mpp
        assert src.scale == pytest.approx(s) and src.width == round(100 / s)
        for x, y in ((7, 5), (8, 6), (13, 3)):
            region = src.read_region(x, y, 50, 40)
            assert _ramp_error(region, x, y, s, 2.0, 0.5) <= 1.2
            assert _ramp_error(region, x + 1, y, s, 2.0, 0.5) > 1.2  # the check does see a one-pixel shift


def test_plain_png_rgba_and_16bit_grey(tmp_path: Path) -> None:
    rgb = _noise(90, 120, seed=3)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    with open_source(tmp_path / "a.png") as src:
        assert (src.kind, src.width, src.height, src.mpp, src.scale) == ("image", 120, 90, None, 1.0)
        np.testing.assert_array_equal(src.read_region(0, 0, 120, 90), rgb)
        assert tissue_mask(src).fraction(0, 0, 120, 90) == 1.0  # plain images: all tissue unless asked
        assert tissue_mask(src).fraction(60, 0, 120, 90) == 0.5  # ... up to their border
    grey16 = np.random.default_rng(4).integers(0, 65536, (40, 50), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), grey16)
    with open_source(tmp_path / "g.png") as src:
        reg = src.read_region(0, 0, 50, 40)
    expected = np.round(grey16 / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(reg, np.repeat(expected[..., None], 3, axis=2))


def test_plain_tiff_resolution_tags_used_when_sane(tmp_path: Path) -> None:
    img = _noise(64, 80, seed=5)
    tifffile.imwrite(tmp_path / "20x.tif", img, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with open_source(tmp_path / "20x.tif", target_mag=40) as src:  # 0.5 um/px -> enlarged 2x to 40x
        assert src.kind == "image" and src.base_mpp == pytest.approx(0.5) and src.scale == pytest.approx(0.5)
        assert (src.width, src.height) == (160, 128)
        np.testing.assert_allclose(src.to_level0(np.array([1.0, 3.0])), [0.25, 1.25])  # (j + 0.5) * s - 0.5
    tifffile.imwrite(tmp_path / "72dpi.tif", img, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with open_source(tmp_path / "72dpi.tif", target_mag=40) as src:  # 352.8 um/px is no microscope: ignored
        assert src.base_mpp is None and src.scale == 1.0 and (src.width, src.height) == (80, 64)
        np.testing.assert_array_equal(src.read_region(0, 0, 80, 64), img)


def test_bad_inputs_are_data_errors_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _noise(64, 64))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:300])
    garbage = tmp_path / "junk.svs"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"II*\x00" + b"\xff" * 64)
    for path in (cut, garbage, bad_tif, tmp_path / "missing.png"):
        with pytest.raises(DataError, match=path.name):
            open_source(path)
    (tmp_path / "x.xyz").write_bytes(b"abc")
    with pytest.raises(DataError, match="unsupported"):
        open_source(tmp_path / "x.xyz")
    with pytest.raises(ConfigError, match="target_mag"):
        open_source(good, target_mag=10)
    with pytest.raises(ConfigError, match="mpp"):
        open_source(good, mpp=0.0)


def test_damaged_tile_is_a_data_error_at_read_time(tmp_path: Path) -> None:
    path = tmp_path / "damaged.tif"
    _write_pyramid(path, _noise(256, 256, seed=6), mpp=0.25, levels=1)
    with tifffile.TiffFile(path) as tf:
        offset, count = tf.pages.first.dataoffsets[0], tf.pages.first.databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x00" * count  # zlib stream gone
    path.write_bytes(bytes(data))
    with open_source(path) as src, pytest.raises(DataError, match="damaged.tif"):
        src.read_region(0, 0, 64, 64)


def test_missing_slide_readers_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "case.svs"
    _write_aperio(path, _noise(128, 128))
    monkeypatch.setitem(sys.modules, "tiffslide", None)
    monkeypatch.setitem(sys.modules, "openslide", None)
    with pytest.raises(DataError, match=r"medvit\[wsi\]"):
        open_source(path)


def _tissue_slide(path: Path, size: int = 1024) -> None:
    rng = np.random.default_rng(7)
    img = np.clip(rng.normal(242, 4, (size, size, 3)), 0, 255).astype(np.uint8)  # glass
    yy, xx = np.mgrid[0:size, 0:size]
    disk = (yy - 400) ** 2 + (xx - 600) ** 2 < 250**2
    stain = np.clip(rng.normal((200, 110, 170), 15, (size, size, 3)), 0, 255).astype(np.uint8)
    img[disk] = stain[disk]
    _write_pyramid(path, img, mpp=0.25, levels=2)


def test_tissue_mask_finds_the_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tissue.tif"
    _tissue_slide(path)
    with open_source(path) as src:
        mask = tissue_mask(src, max_side=256)
        assert isinstance(mask, TissueMask) and mask.scale == 4.0 and mask.mask.shape == (256, 256)
        assert mask.fraction(500, 300, 200, 200) == 1.0  # inside the disk
        assert mask.fraction(0, 800, 200, 200) == 0.0  # glass
        assert abs(mask.mask.sum() * 16 - np.pi * 250**2) < 0.05 * np.pi * 250**2
        assert mask.tile_has_tissue(_Rect(550, 350, 256, 256))
        assert not mask.tile_has_tissue(_Rect(0, 0, 256, 256))
        # A thumbnail built in many strips is the one-shot thumbnail (up to the sub-pixel phase of each strip's
        # first row, interpolated on the fine grid: a few grey levels on the disk's edge).
        whole, _ = src.thumbnail(200)
        monkeypatch.setattr(slide_mod, "_STRIP_BYTES", 20_000)
        strips, factor = src.thumbnail(200)
        assert factor == pytest.approx(1024 / 200)
        diff = np.abs(strips.astype(int) - whole.astype(int))
        assert diff.max() <= 10 and diff.mean() < 0.3


class _Rect:
    def __init__(self, x: int, y: int, w: int, h: int) -> None:
        self.x, self.y, self.w, self.h = x, y, w, h


def test_blank_glass_has_no_tissue(tmp_path: Path) -> None:
    path = tmp_path / "glass.tif"
    img = np.clip(np.random.default_rng(8).normal(240, 5, (512, 512, 3)), 0, 255).astype(np.uint8)
    _write_pyramid(path, img, mpp=0.25, levels=1)
    with open_source(path) as src:
        assert not tissue_mask(src, max_side=128).mask.any()


def test_read_tiles_in_blocks_equals_tile_by_tile(pyramid_tif: tuple[Path, list[np.ndarray]]) -> None:
    path, _ = pyramid_tif
    with open_source(path, target_mag=40) as src:
        tiles = [t for t in tile_grid(src.width, src.height, 128, 32) if (t.row + t.col) % 3]  # gaps break runs
        for workers in (0, 2):
            got = list(read_tiles(src, tiles, block=300, workers=workers))
            assert [t for t, _ in got] == tiles
            for t, rgb in got:
                np.testing.assert_array_equal(rgb, src.read_region(t.x, t.y, t.w, t.h))


def test_read_tiles_at_a_resampled_magnification(tmp_path: Path) -> None:
    path = tmp_path / "flat.tif"
    _write_pyramid(path, _gradient(100, 200, 1.0, 0.3), mpp=0.3, levels=1)  # to 0.5 um/px: 1.667 px per pixel
    with open_source(path, target_mag=20) as src:
        s = src.scale
        tiles = tile_grid(src.width, src.height, 32, 8)
        for t, rgb in read_tiles(src, tiles, block=70):
            # Away from the image border (white padding enters the interpolation there).
            inner = rgb[1 : min(t.h, src.height - t.y) - 1, 1 : min(t.w, src.width - t.x) - 1]
            assert _ramp_error(inner, t.x + 1, t.y + 1, s, 1.0, 0.3) <= 1.2
