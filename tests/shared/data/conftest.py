"""Fixtures for the data-layer tests: real DICOM/NIfTI files shipped in installed packages, and writers for
small synthetic DICOM series and NIfTI volumes in ``tmp_path``."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def ct_small_path() -> Path:
    """A real 128x128 CT slice (int16, RescaleIntercept -1024) that ships with pydicom."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="session")
def nibabel_data() -> Path:
    """nibabel's bundled test files (``anatomical.nii`` 3D, ``example4d.nii.gz`` 4D, ...)."""
    from nibabel.testing import data_path

    return Path(data_path)


SeriesWriter = Callable[..., list[Path]]


@pytest.fixture
def write_series(ct_small_path: Path) -> SeriesWriter:
    """Write a DICOM series made of modified CT_small copies.

    Call as ``write_series(folder, positions, orientation=..., series_uids=None, shuffle=True, suffix=".dcm")``.
    Slice ``k`` (in the order of ``positions``) gets ImagePositionPatient ``positions[k]``, InstanceNumber ``k + 1``
    and stored pixels ``original + 10 * k`` so a test can tell which slice ended where. File names are shuffled
    so that sorting by name would be wrong. Returns the written files in slice order.
    """
    import pydicom

    def write(
        folder: Path,
        positions: Sequence[Sequence[float]],
        orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        series_uids: Sequence[str] | None = None,
        shuffle: bool = True,
        suffix: str = ".dcm",
    ) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"IM{n:04d}{suffix}" for n in range(len(positions))]
        if shuffle:
            random.Random(0).shuffle(names)
        files = []
        for k, pos in enumerate(positions):
            ds = pydicom.dcmread(ct_small_path)
            base = ds.pixel_array.astype(np.int16)
            ds.PixelData = (base + 10 * k).astype(np.int16).tobytes()
            ds.ImagePositionPatient = [float(v) for v in pos]
            ds.ImageOrientationPatient = [float(v) for v in orientation]
            ds.InstanceNumber = len(positions) - k  # deliberately the reverse of the true order
            if series_uids is not None:
                ds.SeriesInstanceUID = series_uids[k]
            f = folder / names[k]
            ds.save_as(f, enforce_file_format=True)
            files.append(f)
        return files

    return write


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, array, affine=None)``: save an array with nibabel (identity-ish affine by default)."""
    import nibabel as nib

    def write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        aff = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine
        nib.save(nib.Nifti1Image(array, aff), path)
        return path

    return write
