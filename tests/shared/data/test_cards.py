"""Data cards: strict loading, the shipped cards, ``validate_dir`` and ``medvit data validate`` / ``cards``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from medvit.cli import app
from medvit.shared.data.cards import (
    LAYOUTS,
    DataCard,
    cards_dir,
    list_cards,
    load_card,
    validate_dir,
)
from medvit.shared.data.synth import synth_ct, synth_faces
from medvit.shared.errors import ConfigError, DataError

runner = CliRunner()

MINIMAL = {
    "id": "my-card",
    "name": "My data",
    "version": "1",
    "modality": "CT",
    "tasks": ["segmentation"],
    "source": "local archive",
    "citation": "none",
    "license": "internal",
    "access": "local files",
    "layout": "nnunet-raw",
    "intended_use": "research",
    "phi": "de-identified",
}


@pytest.fixture(scope="module")
def ct_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct_src")
    synth_ct(out, n=3, seed=0, shape=(48, 48, 32), oblique=True, n_test=1)
    return out


@pytest.fixture
def ct_dir(ct_src: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic CT set that a test may break."""
    return Path(shutil.copytree(ct_src, tmp_path / "ct"))


@pytest.fixture(scope="module")
def faces_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faces_src")
    synth_faces(out, identities=3, images_per_identity=3, seed=0)
    return out


@pytest.fixture
def faces_dir(faces_src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(faces_src, tmp_path / "faces"))


def _write_card(folder: Path, data: dict, name: str | None = None) -> Path:
    path = folder / f"{name or data.get('id', 'card')}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _rewrite_label(path: Path, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    img = nib.load(path)
    data = fn(np.asanyarray(img.dataobj).copy())
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


# ---------------------------------------------------------------------------------------------------- cards


def test_shipped_cards_load() -> None:
    assert cards_dir() == Path(__file__).resolve().parents[3] / "data_cards"
    assert {"ct-nnunet-raw", "ct-public-benchmarks", "faces-identity-folders"} <= set(list_cards())
    for card_id in list_cards():
        card = load_card(card_id)
        assert card.id == card_id and card.layout in LAYOUTS and card.path == cards_dir() / f"{card_id}.yaml"
        assert card.intended_use and card.phi and card.license


def test_ct_nnunet_raw_card_conventions() -> None:
    card = load_card("ct-nnunet-raw")
    assert card.layout == "nnunet-raw" and card.file_ending == ".nii.gz"
    assert card.channel_names == {"0": "CT"} and card.labels == {"background": 0}
    assert card.intensity is not None and card.intensity.unit == "HU" and card.intensity.window == (-175.0, 250.0)
    assert card.spacing is not None and card.spacing.target == (1.5, 1.5, 1.5)
    assert {"pretrain hi-end-mae", "ct-seg"} <= set(card.used_by)
    assert "descrip" in card.phi and "diagnosis" in card.intended_use


def test_catalog_and_faces_cards() -> None:
    catalog = load_card("ct-public-benchmarks")
    assert catalog.layout == "catalog"
    names = [d.name for d in catalog.datasets]
    for expected in ("BTCV", "AMOS", "WORD", "FLARE22", "TotalSegmentator"):
        assert expected in names
    assert any("Decathlon" in n for n in names)
    assert all(d.access and d.license and d.citation for d in catalog.datasets)
    assert all(d.cases is None or d.cases > 0 for d in catalog.datasets)
    faces = load_card("faces-identity-folders")
    assert faces.layout == "identity-folders" and "fiqa" in faces.used_by
    assert "consent" in faces.license.lower()


def test_load_card_by_path(tmp_path: Path) -> None:
    card = load_card(_write_card(tmp_path, MINIMAL))
    assert isinstance(card, DataCard) and card.id == "my-card" and card.tasks == ("segmentation",)
    assert card.labels is None and card.datasets == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown key(s) 'colour'"),
        ({"spacing": {"unit": "mm", "targt": [1, 1, 1]}}, "'targt'"),
        ({"intensity": {"unit": "HU", "window": [250, -175]}}, "intensity.window"),
        ({"layout": "zip-archive"}, "unknown layout 'zip-archive'"),
        ({"tasks": "segmentation", "labels": {"background": "zero"}}, "'labels'"),
        ({"id": "Other_Card"}, "'id'"),
        ({"layout": "catalog"}, "non-empty 'datasets'"),
        ({"datasets": [{"name": "X"}]}, "only allowed on 'catalog'"),
        ({"file_ending": "nii.gz"}, "'file_ending'"),
    ],
)
def test_strict_card_errors(tmp_path: Path, change: dict, message: str) -> None:
    path = _write_card(tmp_path, {**MINIMAL, **change}, name="my-card")
    with pytest.raises(ConfigError) as err:
        load_card(path)
    assert message in str(err.value) and "my-card.yaml" in str(err.value)


def test_card_missing_key_and_catalog_entry_errors(tmp_path: Path) -> None:
    data = dict(MINIMAL)
    del data["phi"]
    with pytest.raises(ConfigError, match="missing required key.*phi"):
        load_card(_write_card(tmp_path, data))
    catalog = {**MINIMAL, "layout": "catalog", "datasets": [{"name": "X", "modality": "CT", "access": "public"}]}
    with pytest.raises(ConfigError, match=r"datasets\[0\].*'license'"):
        load_card(_write_card(tmp_path, catalog))
    bad_entry = {"name": "X", "modality": "CT", "access": "a", "license": "l", "citation": "c", "size": 3}
    with pytest.raises(ConfigError, match=r"datasets\[0\].*'size'"):
        load_card(_write_card(tmp_path, {**catalog, "datasets": [bad_entry]}))


def test_card_id_must_match_file_and_yaml_must_parse(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must match"):
        load_card(_write_card(tmp_path, MINIMAL, name="renamed"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_card(broken)
    with pytest.raises(ConfigError, match="known cards: .*ct-nnunet-raw"):
        load_card("no-such-card")
    with pytest.raises(ConfigError, match="not found"):
        load_card(tmp_path / "absent.yaml")


# ------------------------------------------------------------------------------------------ validate: nnunet


def test_validate_synthetic_ct_passes(ct_dir: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = validate_dir("ct-nnunet-raw", ct_dir, progress=lambda done, total: calls.append((done, total)))
    assert calls[:3] == [(1, 3), (2, 3), (3, 3)] and calls[-1] == (1, 1)
    assert report.ok, report.problems
    assert report.counts["cases"] == 3 and report.counts["test_cases"] == 1
    assert "OK" in report.summary()


def test_validate_reports_removed_label(ct_dir: Path) -> None:
    (ct_dir / "labelsTr/case_001.nii.gz").unlink()
    report = validate_dir(load_card("ct-nnunet-raw"), ct_dir)
    assert not report.ok
    assert any(p.startswith("case_001:") and "no label" in p for p in report.problems), report.problems
    assert any("numTraining is 3" in p for p in report.problems)


def test_validate_reports_removed_image(ct_dir: Path) -> None:
    (ct_dir / "imagesTr/case_002_0000.nii.gz").unlink()
    report = validate_dir("ct-nnunet-raw", ct_dir)
    assert any(p.startswith("case_002:") and "has no image" in p for p in report.problems), report.problems


def test_validate_reports_out_of_range_label(ct_dir: Path) -> None:
    def add_label_nine(a: np.ndarray) -> np.ndarray:
        a[0, 0, 0] = 9
        return a

    _rewrite_label(ct_dir / "labelsTr/case_002.nii.gz", add_label_nine)
    report = validate_dir("ct-nnunet-raw", ct_dir)
    bad = [p for p in report.problems if p.startswith("case_002:")]
    assert len(bad) == 1 and "[9]" in bad[0] and "not in dataset.json labels" in bad[0], report.problems
    assert len(report.problems) == 1


def test_validate_reports_geometry_mismatch(ct_dir: Path) -> None:
    _rewrite_label(ct_dir / "labelsTr/case_000.nii.gz", lambda a: a[:, :, :-1])
    lab = nib.load(ct_dir / "labelsTr/case_001.nii.gz")
    shifted = lab.affine.copy()
    shifted[0, 3] += 0.5
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj), shifted), ct_dir / "labelsTr/case_001.nii.gz")
    report = validate_dir("ct-nnunet-raw", ct_dir)
    assert any(p.startswith("case_000:") and "shape" in p for p in report.problems), report.problems
    assert any(p.startswith("case_001:") and "affine" in p for p in report.problems), report.problems


def test_validate_reports_dataset_json_problems(ct_dir: Path) -> None:
    ds = json.loads((ct_dir / "dataset.json").read_text())
    del ds["file_ending"]
    ds["channel_names"] = {"0": "MRI"}
    ds["labels"] = {"background": 0, "liver": 1}
    (ct_dir / "dataset.json").write_text(json.dumps(ds))
    (ct_dir / "imagesTr/stray.txt").write_text("x")
    problems = validate_dir("ct-nnunet-raw", ct_dir).problems
    text = "\n".join(problems)
    assert "missing required key(s) file_ending" in text
    assert "channel_names" in text and "MRI" in text
    assert "imagesTr/stray.txt" in text
    assert any("not in dataset.json labels" in p for p in problems)  # spleen etc. are no longer declared
    (ct_dir / "dataset.json").write_text("{not json")
    assert any(p.startswith("dataset.json: not valid JSON") for p in validate_dir("ct-nnunet-raw", ct_dir).problems)


def test_validate_reports_corrupt_label(ct_dir: Path) -> None:
    (ct_dir / "labelsTr/case_001.nii.gz").write_bytes(b"\x00" * 10)
    report = validate_dir("ct-nnunet-raw", ct_dir)
    assert "case_001: label labelsTr/case_001.nii.gz: not a NIfTI file" in report.problems[0], report.problems


def test_validate_missing_dir_and_catalog(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        validate_dir("ct-nnunet-raw", tmp_path / "absent")
    with pytest.raises(ConfigError, match="catalog"):
        validate_dir("ct-public-benchmarks", tmp_path)


# ------------------------------------------------------------------------------------------ validate: faces


def test_validate_synthetic_faces_passes(faces_dir: Path) -> None:
    report = validate_dir("faces-identity-folders", faces_dir)
    assert report.ok, report.problems
    assert report.counts == {"identities": 3, "images": 9, "genuine_pairs": 9, "impostor_pairs": 9}


def test_validate_faces_problems(faces_dir: Path) -> None:
    (faces_dir / "person_000/notes.txt").write_text("x")
    (faces_dir / "person_001/person_001_0002.jpg").write_bytes(b"not a jpeg at all")
    (faces_dir / "person_001/person_001_0003.jpg").write_bytes(b"")
    for p in (faces_dir / "person_002").iterdir():
        p.unlink()
    problems = validate_dir("faces-identity-folders", faces_dir).problems
    text = "\n".join(problems)
    assert "person_000/notes.txt: not an image extension" in text
    assert "person_001/person_001_0002.jpg: not a readable image" in text
    assert "person_001/person_001_0003.jpg: empty file" in text
    assert "person_002: identity folder has no readable image" in text
    assert any(p.startswith("pairs.txt line") and "person_002_0001" in p for p in problems)


def test_validate_faces_needs_two_identities(faces_dir: Path) -> None:
    for name in ("person_001", "person_002"):
        shutil.rmtree(faces_dir / name)
    (faces_dir / "pairs.txt").write_text("person_000/person_000_0001.jpg person_000/person_000_0002.jpg 1\nbad\n")
    report = validate_dir("faces-identity-folders", faces_dir)
    assert any("need at least 2" in p for p in report.problems)
    assert any(p.startswith("pairs.txt line 2:") for p in report.problems)
    assert report.counts["genuine_pairs"] == 1


# ----------------------------------------------------------------------------------------------------- CLI


def test_cli_synth_validate_roundtrip(tmp_path: Path) -> None:
    out = tmp_path / "ct"
    result = runner.invoke(app, ["data", "synth", "ct", str(out), "--n", "2", "--shape", "48,48,32"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "validate", "ct-nnunet-raw", str(out)])
    assert result.exit_code == 0, result.output
    assert "OK against ct-nnunet-raw" in result.output

    (out / "labelsTr/case_001.nii.gz").unlink()
    result = runner.invoke(app, ["data", "validate", "ct-nnunet-raw", str(out)])
    assert result.exit_code == 1
    assert "case_001: image imagesTr/case_001_0000.nii.gz has no label" in result.output
    assert "2 problems against ct-nnunet-raw" in result.output


def test_cli_validate_faces_and_user_errors(faces_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", "faces-identity-folders", str(faces_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "validate", "no-such-card", str(faces_dir)])
    assert result.exit_code == 2 and "unknown data card" in result.output
    result = runner.invoke(app, ["data", "validate", "ct-nnunet-raw", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "not found" in result.output


def test_cli_cards_lists_and_shows() -> None:
    result = runner.invoke(app, ["data", "cards"])
    assert result.exit_code == 0, result.output
    for card_id in ("ct-nnunet-raw", "ct-public-benchmarks", "faces-identity-folders"):
        assert card_id in result.output
    result = runner.invoke(app, ["data", "cards", "ct-public-benchmarks"])
    assert result.exit_code == 0 and "TotalSegmentator" in result.output
