"""Synthetic CT (nnU-Net raw) and face (identity folders) generators, and ``medvit data synth``."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medvit.cli import app
from medvit.shared.data.synth import (
    ARCFACE_TEMPLATE_112,
    CT_LABELS,
    CT_ORGAN_HU,
    DEGRADATIONS,
    LANDMARK_COLUMNS,
    _degrade,
    _draw_face,
    _face_identity,
    _face_look,
    _rng,
    synth_ct,
    synth_faces,
)
from medvit.shared.errors import ConfigError

SHAPE = (48, 48, 32)
SPACING = (0.8, 0.8, 2.5)


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct")
    synth_ct(out, n=3, seed=0, shape=SHAPE, spacing=SPACING, oblique=True, n_test=1)
    return out


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faces")
    synth_faces(out, identities=4, images_per_identity=5, seed=0)
    return out


def _cases(root: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for split in ("Tr", "Ts"):
        for img in sorted((root / f"images{split}").glob("*_0000.nii.gz")):
            pairs.append((img, root / f"labels{split}" / img.name.replace("_0000.nii.gz", ".nii.gz")))
    return pairs


# ------------------------------------------------------------------------------------------------------ CT


def test_ct_writes_nnunet_raw_layout(ct_dir: Path) -> None:
    assert sorted(p.name for p in (ct_dir / "imagesTr").iterdir()) == [f"case_00{i}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (ct_dir / "labelsTr").iterdir()) == [f"case_00{i}.nii.gz" for i in range(3)]
    assert [p.name for p in (ct_dir / "imagesTs").iterdir()] == ["case_003_0000.nii.gz"]
    assert [p.name for p in (ct_dir / "labelsTs").iterdir()] == ["case_003.nii.gz"]
    ds = json.loads((ct_dir / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"}
    assert ds["labels"] == CT_LABELS
    assert ds["labels"]["background"] == 0 and sorted(ds["labels"].values()) == list(range(6))
    assert ds["numTraining"] == 3 and ds["numTest"] == 1
    assert ds["file_ending"] == ".nii.gz"
    assert len(ds["training"]) == 3 and len(ds["test"]) == 1
    for item in ds["training"]:
        assert (ct_dir / item["image"]).is_file() and (ct_dir / item["label"]).is_file()
    assert (ct_dir / ds["test"][0]).is_file()
    assert not list(ct_dir.rglob("*.tmp")), "temp files left behind"


def test_ct_volumes_load_with_matching_geometry(ct_dir: Path) -> None:
    for img_path, lab_path in _cases(ct_dir):
        img, lab = nib.load(img_path), nib.load(lab_path)
        assert img.shape == lab.shape == SHAPE
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, lab.affine, atol=1e-6)
        np.testing.assert_allclose(img.header.get_zooms(), SPACING, rtol=1e-5)  # anisotropic spacing
        # non-identity affine: LPS-like axes, an origin offset and (oblique=True) off-diagonal rotation terms
        direction = img.affine[:3, :3]
        np.testing.assert_allclose(np.linalg.norm(direction, axis=0), SPACING, rtol=1e-6)
        assert np.abs(direction - np.diag(np.diag(direction))).max() > 0.01
        assert np.linalg.norm(img.affine[:3, 3]) > 50.0
        assert img.header["sform_code"] == 1 and img.header["qform_code"] == 1
        hu = np.asanyarray(img.dataobj)
        assert hu.min() >= -1024 and hu.max() <= 3071
        assert abs(float(np.median(hu[:2, :2, :])) - (-1000.0)) < 40  # corners are air
        assert (hu > 500).sum() > 20  # bone


def test_ct_labels_subset_and_at_least_three_organs(ct_dir: Path) -> None:
    allowed = set(CT_LABELS.values())
    for _, lab_path in _cases(ct_dir):
        values = set(np.unique(np.asanyarray(nib.load(lab_path).dataobj)).tolist())
        assert values <= allowed, lab_path.name
        assert len(values - {0}) >= 3, f"{lab_path.name} has organs {values - {0}}"


def test_ct_organs_have_distinct_hu(ct_dir: Path) -> None:
    voxels: dict[int, list[np.ndarray]] = {lab: [] for lab in CT_ORGAN_HU}
    for img_path, lab_path in _cases(ct_dir):
        hu = np.asanyarray(nib.load(img_path).dataobj).astype(np.float64)
        lab = np.asanyarray(nib.load(lab_path).dataobj)
        for value in voxels:
            voxels[value].append(hu[lab == value])
    # medians: the partial-volume blur pulls border voxels towards the neighbours, which moves means of small organs
    medians = {value: float(np.median(np.concatenate(v))) for value, v in voxels.items() if sum(x.size for x in v)}
    assert len(medians) == 5, "every organ appears somewhere in 4 cases"
    for value, median in medians.items():
        assert abs(median - CT_ORGAN_HU[value]) < 15, (value, median)
    for a, b in itertools.combinations(medians, 2):
        assert abs(medians[a] - medians[b]) > 25, (a, b, medians)


def test_ct_is_deterministic_per_seed(ct_dir: Path, tmp_path: Path) -> None:
    synth_ct(tmp_path / "again", n=3, seed=0, shape=SHAPE, spacing=SPACING, oblique=True, n_test=1)
    for path in sorted(ct_dir.rglob("*")):
        if path.is_file():
            twin = tmp_path / "again" / path.relative_to(ct_dir)
            assert twin.read_bytes() == path.read_bytes(), path.name  # byte-identical, gzip mtime included
    synth_ct(tmp_path / "other", n=1, seed=1, shape=SHAPE, spacing=SPACING, oblique=True)
    a = np.asanyarray(nib.load(ct_dir / "imagesTr/case_000_0000.nii.gz").dataobj)
    b = np.asanyarray(nib.load(tmp_path / "other/imagesTr/case_000_0000.nii.gz").dataobj)
    assert not np.array_equal(a, b)


def test_ct_case_does_not_depend_on_n(ct_dir: Path, tmp_path: Path) -> None:
    synth_ct(tmp_path, n=1, seed=0, shape=SHAPE, spacing=SPACING, oblique=True)
    for rel in ("imagesTr/case_000_0000.nii.gz", "labelsTr/case_000.nii.gz"):
        assert (tmp_path / rel).read_bytes() == (ct_dir / rel).read_bytes()


def test_ct_straight_grid_has_lps_axes_and_offset(tmp_path: Path) -> None:
    summary = synth_ct(tmp_path, n=1, seed=3, shape=(32, 32, 16), spacing=(1.0, 1.0, 3.0), n_organs=(5, 5))
    img = nib.load(tmp_path / "imagesTr/case_000_0000.nii.gz")
    np.testing.assert_allclose(img.affine[:3, :3], np.diag([-1.0, -1.0, 3.0]))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert np.abs(img.affine[:3, 3]).max() > 50.0
    assert summary.counts == {"imagesTr": 1, "labelsTr": 1, "imagesTs": 0, "labelsTs": 0}
    assert summary.params["shape"] == [32, 32, 16] and summary.files[-1] == "dataset.json"
    labels = np.unique(np.asanyarray(nib.load(tmp_path / "labelsTr/case_000.nii.gz").dataobj))
    assert labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_ct_readable_by_the_project_reader(ct_dir: Path) -> None:
    from medvit.shared.data import io

    array, meta = io.read_nifti(ct_dir / "imagesTr/case_000_0000.nii.gz")
    assert array.shape == SHAPE and array.dtype == np.float32
    np.testing.assert_allclose(meta.spacing, SPACING, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n_test": -1},
        {"shape": (48, 48)},
        {"shape": (8, 48, 32)},
        {"spacing": (0.8, 0.0, 2.5)},
        {"n_organs": (0, 3)},
        {"n_organs": (4, 3)},
        {"n_organs": (3, 6)},
        {"seed": -1},
    ],
)
def test_ct_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        synth_ct(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------- faces


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_faces_identity_folders(faces_dir: Path) -> None:
    folders = sorted(p for p in faces_dir.iterdir() if p.is_dir())
    assert [p.name for p in folders] == [f"person_{k:03d}" for k in range(4)]
    for folder in folders:
        images = sorted(folder.iterdir())
        assert [p.name for p in images] == [f"{folder.name}_{m:04d}.jpg" for m in range(1, 6)]
        for p in images:
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert img.shape == (112, 112, 3) and img.dtype == np.uint8


def test_faces_degradations_csv(faces_dir: Path) -> None:
    rows = _read_csv(faces_dir / "degradations.csv")
    assert list(rows[0]) == ["path", "identity", "degradation", "strength"]
    assert len(rows) == 4 * 5
    for row in rows:
        assert (faces_dir / row["path"]).is_file()
        assert row["path"].split("/")[0] == row["identity"]
        s = float(row["strength"])
        assert 0.0 <= s <= 1.0
        assert (row["degradation"] == "none") == (s == 0.0)
        assert row["degradation"] in (*DEGRADATIONS, "none")
    for ident in {r["identity"] for r in rows}:
        strengths = sorted(float(r["strength"]) for r in rows if r["identity"] == ident)
        np.testing.assert_allclose(strengths, np.linspace(0, 1, 5), atol=1e-4)
    assert {r["degradation"] for r in rows} == {*DEGRADATIONS, "none"}


def test_faces_landmarks_csv(faces_dir: Path) -> None:
    rows = _read_csv(faces_dir / "landmarks.csv")
    assert list(rows[0])[2:] == list(LANDMARK_COLUMNS) and len(rows) == 20
    by_identity: dict[str, set[tuple[float, ...]]] = {}
    for row in rows:
        pts = tuple(float(row[c]) for c in LANDMARK_COLUMNS)
        assert np.abs(np.array(pts).reshape(5, 2) - ARCFACE_TEMPLATE_112).max() <= 3.0
        by_identity.setdefault(row["identity"], set()).add(pts)
    assert all(len(v) == 1 for v in by_identity.values()), "landmarks are fixed within an identity"
    assert len({next(iter(v)) for v in by_identity.values()}) == 4, "and differ between identities"
    # the landmarks are where the features were drawn: pupils are dark in the clean image
    degr = {r["path"]: r["degradation"] for r in _read_csv(faces_dir / "degradations.csv")}
    for row in rows:
        if degr[row["path"]] != "none":
            continue
        gray = cv2.imread(str(faces_dir / row["path"]), cv2.IMREAD_GRAYSCALE).astype(float)
        for eye in ("left_eye", "right_eye"):
            x, y = round(float(row[f"{eye}_x"])), round(float(row[f"{eye}_y"]))
            assert gray[y - 1 : y + 2, x - 1 : x + 2].mean() < 110, (row["path"], eye)


def test_faces_pairs_balanced_and_existing(faces_dir: Path) -> None:
    lines = (faces_dir / "pairs.txt").read_text().splitlines()
    folds, n = (int(x) for x in lines[0].split("\t"))
    assert folds == 1 and n == 4 * 10  # every within-identity pair: 4 * C(5, 2)
    genuine = [ln.split("\t") for ln in lines[1 : 1 + n]]
    impostor = [ln.split("\t") for ln in lines[1 + n :]]
    assert len(genuine) == len(impostor) == n
    assert all(len(g) == 3 and g[1] != g[2] for g in genuine)
    assert all(len(i) == 4 and i[0] != i[2] for i in impostor)
    assert len({tuple(i) for i in impostor}) == n
    for name, a, b in genuine:
        for idx in (a, b):
            assert (faces_dir / name / f"{name}_{int(idx):04d}.jpg").is_file()
    for n1, a, n2, b in impostor:
        assert (faces_dir / n1 / f"{n1}_{int(a):04d}.jpg").is_file()
        assert (faces_dir / n2 / f"{n2}_{int(b):04d}.jpg").is_file()


def test_faces_deterministic_and_held_out_disjoint(faces_dir: Path, tmp_path: Path) -> None:
    synth_faces(tmp_path / "again", identities=4, images_per_identity=5, seed=0)
    for path in sorted(faces_dir.rglob("*")):
        if path.is_file():
            assert (tmp_path / "again" / path.relative_to(faces_dir)).read_bytes() == path.read_bytes(), path.name
    summary = synth_faces(tmp_path / "held", identities=2, images_per_identity=2, seed=0, held_out=True, size=64)
    names = sorted(p.name for p in (tmp_path / "held").iterdir() if p.is_dir())
    assert names == ["heldout_000", "heldout_001"]
    assert summary.counts == {"identities": 2, "images": 4, "genuine_pairs": 2, "impostor_pairs": 2}
    img = cv2.imread(str(tmp_path / "held/heldout_000/heldout_000_0001.jpg"))
    assert img.shape == (64, 64, 3)
    row = _read_csv(tmp_path / "held/landmarks.csv")[0]
    assert abs(float(row["nose_x"]) - 56.0252 * 64 / 112) < 2.0


def test_faces_identity_attributes_are_consistent() -> None:
    """Two renderings of one identity are closer (face region) than renderings of different identities."""
    idents = [_face_identity(_rng(0, 9, k)) for k in range(4)]
    renders = [
        [_draw_face(ident, _rng(0, 9, k, m), 112).astype(float) for m in range(2)] for k, ident in enumerate(idents)
    ]
    face = (slice(40, 100), slice(30, 82))
    within = np.mean([np.mean((r[0][face] - r[1][face]) ** 2) for r in renders])
    between = np.mean(
        [np.mean((renders[a][0][face] - renders[b][0][face]) ** 2) for a, b in itertools.combinations(range(4), 2)]
    )
    assert within < 0.5 * between, (within, between)


def _face_mse(a: np.ndarray, b: np.ndarray) -> float:
    face = (slice(40, 100), slice(30, 82))
    return float(np.mean((a[face].astype(float) - b[face].astype(float)) ** 2))


@pytest.mark.parametrize("kind", ["blur", "noise", "low_light"])
def test_identities_sharing_a_look_differ_in_detail_that_degradations_erase(kind: str) -> None:
    """Same look, different identities: the clean renders differ beyond the per-image variation, and at full
    strength the identity margin (between - within, relative to within) falls below half its clean value."""
    look = _face_look(_rng(0, 5))
    idents = [_face_identity(_rng(0, 6, k), look) for k in range(3)]
    assert all(i.look is look for i in idents)
    renders = [[_draw_face(ident, _rng(0, 6, k, m), 112) for m in range(2)] for k, ident in enumerate(idents)]

    def margin(s: float) -> float:
        deg = [[_degrade(r, kind, s, _rng(0, 7, k, m)) for m, r in enumerate(rr)] for k, rr in enumerate(renders)]
        within = np.mean([_face_mse(d[0], d[1]) for d in deg])
        between = np.mean([_face_mse(deg[i][0], deg[j][1]) for i in range(3) for j in range(3) if i != j])
        return float((between - within) / within)

    clean = margin(0.0)
    assert clean > 1.0, clean
    assert margin(1.0) < 0.5 * clean, (kind, clean, margin(1.0))


def test_identities_have_skin_marks_and_share_looks(tmp_path: Path) -> None:
    ident = _face_identity(_rng(0, 3))
    assert 10 <= len(ident.marks) <= 16 and ident.marks.shape[1] == 4
    summary = synth_faces(tmp_path / "f", identities=6, images_per_identity=1, seed=1, looks=2)
    assert summary.params["looks"] == 2
    assert synth_faces(tmp_path / "g", identities=17, images_per_identity=1, seed=1).params["looks"] == 3
    with pytest.raises(ConfigError, match="looks"):
        synth_faces(tmp_path / "h", identities=3, images_per_identity=1, looks=4)


def test_low_light_lowers_the_signal_to_noise_ratio() -> None:
    """A photon-limited exposure: darker and noisier relative to the signal as strength grows."""
    flat = np.full((64, 64, 3), 180, np.uint8)
    out = [_degrade(flat, "low_light", s, _rng(0, 9)).astype(float) for s in (0.25, 0.5, 1.0)]
    snr = [o.mean() / o.std() for o in out]
    assert out[0].mean() > out[1].mean() > out[2].mean()
    assert snr[0] > snr[1] > snr[2], snr


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_degradation_strength_is_graded(kind: str) -> None:
    clean = _draw_face(_face_identity(_rng(0, 7)), _rng(0, 7, 1), 112)
    assert np.array_equal(_degrade(clean, kind, 0.0, _rng(0, 8)), clean)
    errors = [np.mean((_degrade(clean, kind, s, _rng(0, 8)).astype(float) - clean) ** 2) for s in (0.2, 0.6, 1.0)]
    assert 0 < errors[0] < errors[1] < errors[2], (kind, errors)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"identities": 1},
        {"images_per_identity": 0},
        {"size": 16},
        {"degradations": ("blur", "fog")},
        {"degradations": ()},
    ],
)
def test_faces_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        synth_faces(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------------ CLI

runner = CliRunner()


def test_cli_synth_ct_then_refuses_non_empty_out(tmp_path: Path) -> None:
    out = tmp_path / "ct"
    result = runner.invoke(app, ["data", "synth", "ct", str(out), "--n", "2", "--shape", "48,48,32", "--test", "1"])
    assert result.exit_code == 0, result.output
    assert "imagesTr" in result.output
    assert len(list((out / "imagesTr").glob("*.nii.gz"))) == 2 and len(list((out / "imagesTs").iterdir())) == 1
    before = (out / "imagesTr/case_000_0000.nii.gz").read_bytes()

    result = runner.invoke(app, ["data", "synth", "ct", str(out), "--n", "1", "--shape", "48,48,32"])
    assert result.exit_code == 2 and "not empty" in result.output and "--overwrite" in result.output
    assert (out / "imagesTr/case_001_0000.nii.gz").is_file()

    (out / "notes.txt").write_text("keep me")
    args = ["data", "synth", "ct", str(out), "--n", "1", "--shape", "48,48,32", "--overwrite"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["case_000_0000.nii.gz"]  # stale cases gone
    assert not (out / "imagesTs").exists()
    assert (out / "notes.txt").read_text() == "keep me"  # files the generator did not write are kept
    assert (out / "imagesTr/case_000_0000.nii.gz").read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [
        ["ct", "--identities", "3"],
        ["ct", "--shape", "48,48"],
        ["faces", "--shape", "48,48,32"],
        ["faces", "--n", "3", "--identities", "4"],
        ["ct", "--looks", "2"],
        ["mri"],
    ],
)
def test_cli_synth_rejects_bad_options(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "synth", args[0], str(out), *args[1:]])
    assert result.exit_code == 2, result.output
    assert not out.exists() or not any(out.iterdir())


def test_cli_synth_faces(tmp_path: Path) -> None:
    out = tmp_path / "faces"
    result = runner.invoke(app, ["data", "synth", "faces", str(out), "--n", "3", "--per-identity", "2", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"person_{k:03d}" for k in range(3)]
    assert len(list(out.rglob("*.jpg"))) == 6


def test_faces_drawn_in_a_process_pool_are_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medvit.shared.data import synth

    synth.synth_faces(tmp_path / "serial", identities=4, images_per_identity=5, seed=3)
    monkeypatch.setattr(synth, "_PARALLEL_FACES", 10)  # 20 images: the pool path
    synth.synth_faces(tmp_path / "pool", identities=4, images_per_identity=5, seed=3)
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*") if p.is_file())
    assert len(files) == 23
    for rel in files:
        assert (tmp_path / "pool" / rel).read_bytes() == (tmp_path / "serial" / rel).read_bytes(), rel
