"""fiqa on bad files: ``score`` gives an ``error`` row per bad input and exits 1; ``train`` stops with one
``error:`` line (exit 2) before training. Messages name the file or folder and the problem, never a traceback."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from medvit.apps.fiqa.cli import app as fiqa_app
from medvit.shared.data.cards import MIN_FACE_SIZE

from .conftest import official_state_dict, save_official

runner = CliRunner()


def _invoke(*args: object) -> object:
    from medvit import cli

    root = cli.app
    if not any(g.name == "fiqa" for g in cli.app.registered_groups):
        root = typer.Typer(cls=cli._MedvitGroup)
        root.add_typer(fiqa_app, name="fiqa")
    return runner.invoke(root, ["fiqa", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fiqa_weights") / "model.pt"
    save_official(path, official_state_dict("token"))
    return path


def _astronaut_jpeg() -> bytes:
    from skimage.data import astronaut

    ok, enc = cv2.imencode(".jpg", astronaut()[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return enc.tobytes()


def test_score_reports_every_bad_input_and_exits_1(
    tmp_path: Path, weights: Path, unreadable: Callable[[Path], Path]
) -> None:
    rng = np.random.default_rng(0)
    crops = tmp_path / "crops"
    (crops / "site_b").mkdir(parents=True)
    for name in ("a.png", "site_b/b.png"):
        cv2.imwrite(str(crops / name), rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    cv2.imwrite(str(crops / "c.webp"), rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    good = _astronaut_jpeg()
    (crops / "d_astronaut.jpg").write_bytes(good)
    damaged = bytearray(good)
    n = len(damaged)
    damaged[n // 3 : n // 3 + n // 10] = bytes(n // 10)  # decodes to a half-grey picture in opencv
    (crops / "e_corrupt.jpg").write_bytes(bytes(damaged))
    cv2.imwrite(str(crops / "f_one_pixel.png"), np.zeros((1, 1, 3), np.uint8))
    (crops / "g_link.jpg").symlink_to(crops / "nowhere.jpg")
    os.mkfifo(crops / "h_pipe.png")
    unreadable(crops / "site_b")
    out = tmp_path / "out"

    res = _invoke("score", crops, "--weights", weights, "--out", out, "--aligned", "--workers", 1, "--quiet")
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    with open(out / "scores.csv", newline="", encoding="utf-8") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert {k: rows[k]["status"] for k in ("a.png", "c.webp", "d_astronaut.jpg")} == dict.fromkeys(
        ("a.png", "c.webp", "d_astronaut.jpg"), "ok"
    )
    expected = {
        "site_b": "site_b: permission denied: cannot read the folder; the images in it were not scored",
        "e_corrupt.jpg": "e_corrupt.jpg: truncated or corrupt JPEG data (libjpeg: Corrupt JPEG data",
        "f_one_pixel.png": f"f_one_pixel.png: 1x1 px is below the minimum face size of {MIN_FACE_SIZE} px",
        "g_link.jpg": "g_link.jpg",  # the batch runner's own "input not found" row, before any reader
        "h_pipe.png": "h_pipe.png: is a FIFO (named pipe), not a regular file",
    }
    for name, message in expected.items():
        assert rows[name]["status"] == "error", rows[name]
        assert message in rows[name]["message"], rows[name]
    assert "b.png" not in rows  # behind the unreadable folder: reported through the folder's row


def test_score_small_but_usable_crop_is_scored(tmp_path: Path, weights: Path) -> None:
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "small.png"), np.full((MIN_FACE_SIZE, MIN_FACE_SIZE, 3), 90, np.uint8))
    res = _invoke("score", tmp_path / "in", "--weights", weights, "--out", tmp_path / "out", "--aligned", "--quiet")
    assert res.exit_code == 0, res.output


# --------------------------------------------------------------------------------------------------- train


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    from medvit.shared.data.synth import synth_faces

    synth_faces(tmp_path / "faces", identities=2, images_per_identity=2, seed=0)
    return tmp_path / "faces"


def _train_fails(faces: Path, tmp_path: Path, *needles: str) -> None:
    res = _invoke("train", faces, "--out", tmp_path / "run", "--preset", "tiny", "--steps", 1, "--workers", 0)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.output
    text = " ".join(res.output.split())
    for needle in needles:
        assert needle in text, res.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_train_unreadable_image(faces: Path, tmp_path: Path, unreadable: Callable[[Path], Path]) -> None:
    unreadable(faces / "person_001" / "person_001_0002.jpg")
    _train_fails(faces, tmp_path, "person_001_0002.jpg: permission denied: cannot read the file")


def test_train_unreadable_identity_folder(faces: Path, tmp_path: Path, unreadable: Callable[[Path], Path]) -> None:
    unreadable(faces / "person_000")
    _train_fails(faces, tmp_path, "person_000: permission denied: cannot read the folder")


def test_train_dangling_symlink(faces: Path, tmp_path: Path) -> None:
    (faces / "person_000" / "extra.jpg").symlink_to(faces / "moved_away.jpg")
    _train_fails(faces, tmp_path, "extra.jpg: broken symbolic link")
