"""``medvit pretrain DIR`` picks the method from the data (CT / chest X-ray / eye), logs why, and ``--method`` wins."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from medvit.pretrain import api, pipeline2d
from medvit.pretrain.api import DEFAULT_PRESETS, choose_method
from medvit.pretrain.cli import main
from medvit.shared.data.synth import synth_ct
from medvit.shared.data.synth_eye import synth_fundus, synth_oct
from medvit.shared.data.synth_xray import synth_cxr
from medvit.shared.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("choice")
    synth_ct(root / "ct", n=1, seed=0, shape=(32, 32, 16))
    synth_cxr(root / "nih", n=4, size=64, layout="chestxray14")  # the ChestX-ray14 release layout
    # a plain folder: grey PNGs and a DICOM CR (fewer than 8 numbered images per folder: not a B-scan stack)
    synth_cxr(root / "plain", n=5, size=64, n_dicom=1)
    synth_fundus(root / "eye" / "photos", n=4, size=64)
    synth_oct(root / "eye" / "oct", n=2, shape=(32, 32, 16))
    oct_only = root / "oct_only"
    shutil.copytree(root / "eye" / "oct", oct_only)
    return {"ct": root / "ct", "nih": root / "nih", "plain": root / "plain", "eye": root / "eye", "oct": oct_only}


@pytest.mark.parametrize(
    ("name", "method", "data", "reader", "words"),
    [
        ("ct", "hi-end-mae", "ct", "ct", "look like CT"),
        ("nih", "mae", "2d", "xray", "chestxray14"),
        ("plain", "mae", "2d", "xray", "radiographs"),
        ("eye", "uni4eye", "eye", "eye", "fundus"),
        ("oct", "uni4eye", "eye", "eye", "OCT"),
    ],
)
def test_method_follows_the_data(
    folders: dict[str, Path], name: str, method: str, data: str, reader: str, words: str
) -> None:
    choice = choose_method(folders[name])
    assert (choice.method, choice.data, choice.reader, choice.given) == (method, data, reader, False)
    assert choice.preset == DEFAULT_PRESETS[data]
    assert choice.reason.startswith("chosen from the data") and words in choice.reason


@pytest.mark.parametrize(
    ("name", "method", "preset", "want"),
    [
        ("nih", "hi-end-mae", None, ("hi-end-mae", "ct", "base")),  # X-rays, but --method hi-end-mae wins
        ("ct", "uni4eye", None, ("uni4eye", "eye", "uni4eye-vit-b")),
        ("ct", "mae", None, ("mae", "ct", "base")),  # mae on CT volumes: the 3D pipeline
        ("nih", "mae", None, ("mae", "2d", "cxr-vit-s")),  # mae on X-rays: the thorax recipe
        ("eye", "mae", "cxr-tiny", ("mae", "2d", "cxr-tiny")),  # a 2D preset: the 2D pipeline, no inspection
        ("eye", "mae", "tiny", ("mae", "ct", "tiny")),  # a 3D preset: the CT pipeline
    ],
)
def test_method_given_always_wins(
    folders: dict[str, Path], name: str, method: str, preset: str | None, want: tuple[str, str, str]
) -> None:
    choice = choose_method(folders[name], method, preset)
    assert (choice.method, choice.data, choice.preset) == want and choice.given
    assert f"--method {method}" in choice.reason


@pytest.mark.parametrize(
    ("preset", "want"),
    [("tiny", ("hi-end-mae", "ct")), ("cxr-vit-b", ("mae", "2d")), ("uni4eye-tiny", ("uni4eye", "eye"))],
)
def test_a_preset_without_method_names_the_method(folders: dict[str, Path], preset: str, want: tuple) -> None:
    # the CT folder on purpose: the preset decides, the folder is not inspected
    choice = choose_method(folders["ct"], "auto", preset)
    assert (choice.method, choice.data) == want and preset in choice.reason


def test_bad_preset_and_empty_folder_are_clear_errors(folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cxr-vit-s"):
        choose_method(folders["nih"], "mae", "cxr-vit-x")
    with pytest.raises(ConfigError, match="uni4eye-vit-b"):
        choose_method(folders["eye"], "uni4eye", "base")  # a CT size is no Uni4Eye preset
    (tmp_path / "notes.txt").write_text("nothing to train on")
    with pytest.raises(DataError, match="no images or volumes"):
        choose_method(tmp_path)


@pytest.mark.parametrize(("name", "runner"), [("nih", "run_images"), ("eye", "run_eye")])
def test_cli_logs_the_choice_and_its_reason(
    folders: dict[str, Path],
    tmp_path: Path,
    name: str,
    runner: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The command hands the choice to the pipeline and logs method, preset and reason (the pipeline is a stub)."""
    seen = []
    monkeypatch.setattr(pipeline2d, runner, lambda cfg, choice, **kw: seen.append(choice) or cfg.out)
    with caplog.at_level(logging.INFO, logger=api.__name__):
        assert main([str(folders[name]), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"]) == 0
    (choice,) = seen
    logged = [r.getMessage() for r in caplog.records if r.name == api.__name__]
    assert f"method {choice.method}, preset {choice.preset} (chosen from the data: " in logged[0]
    assert choice.reason in logged[0]
