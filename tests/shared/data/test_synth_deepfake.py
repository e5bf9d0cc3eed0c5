"""Synthetic deepfake clips: FF++ layout, splits, sidecar faces, where the reenactment changes pixels, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from medvit.shared.data.synth_deepfake import synth_deepfake
from medvit.shared.errors import ConfigError
from medvit.shared.faces.sidecar import read_face_sidecar, sidecar_path


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f[..., ::-1])
    cap.release()
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ffpp")
    synth_deepfake(out, n=3, frames=4, size=96, levels=("raw", "c40"), methods=("Face2Face",), seed=1)
    return out


def test_layout_splits_and_table(clips: Path) -> None:
    for level in ("raw", "c40"):
        assert sorted(p.name for p in (clips / f"original_sequences/youtube/{level}/videos").glob("*.avi")) == [
            f"{k:03d}.avi" for k in range(6)
        ]
        fakes = sorted(p.stem for p in (clips / f"manipulated_sequences/Face2Face/{level}/videos").glob("*.avi"))
        assert len(fakes) == 6 and "000_001" in fakes and "001_000" in fakes
    splits = {s: json.loads((clips / "splits" / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    ids = [i for pairs in splits.values() for p in pairs for i in p]
    assert sorted(ids) == [f"{k:03d}" for k in range(6)]  # each identity in exactly one split
    assert all(len(p) == 2 for pairs in splits.values() for p in pairs) and splits["val"] and splits["test"]
    with open(clips / "clips.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (6 + 6)
    assert {r["label"] for r in rows if r["method"] == "original"} == {"0"}
    assert {r["label"] for r in rows if r["method"] == "Face2Face"} == {"1"}
    split_of = {i: s for s, pairs in splits.items() for p in pairs for i in p}
    assert all(r["split"] == split_of[r["target"]] for r in rows)


def test_sidecar_faces_follow_the_motion(clips: Path) -> None:
    video = clips / "original_sequences/youtube/raw/videos/000.avi"
    frames = _frames(video)
    faces = read_face_sidecar(sidecar_path(video))
    assert len(frames) == len(faces) == 4 and all(len(f) == 1 for f in faces)
    for img, [(box, score, lm)] in zip(frames, faces, strict=True):
        assert score == 1.0 and (lm >= box[:2]).all() and (lm <= box[2:]).all()
        # the eyes (landmarks 0, 1) are drawn as white ellipses with a dark pupil: dark at the landmark
        for x, y in lm[:2]:
            assert img[round(y), round(x)].mean() < 110
    assert not np.allclose(faces[0][0][2], faces[-1][0][2])  # the face moves


def test_reenactment_changes_only_the_face_region(clips: Path) -> None:
    real = _frames(clips / "original_sequences/youtube/raw/videos/000.avi")
    fake = _frames(clips / "manipulated_sequences/Face2Face/raw/videos/000_001.avi")
    faces = read_face_sidecar(clips / "original_sequences/youtube/raw/videos/000.faces.json")
    for r, f, [(_, _, lm)] in zip(real, fake, faces, strict=True):
        diff = np.abs(r.astype(int) - f.astype(int)).max(-1)
        ys, xs = np.nonzero(diff > 12)
        assert len(ys) > 30  # a visible region changed
        d = np.linalg.norm(lm[1] - lm[0])
        centre = lm[2] * 0.5 + (lm[3] + lm[4]) * 0.25  # Face2Face: nose and mouth
        assert (np.hypot(xs - centre[0], ys - centre[1]) < 1.3 * d).all()  # nothing changed far from it


def test_same_seed_same_clip_and_bad_arguments(tmp_path: Path, clips: Path) -> None:
    synth_deepfake(tmp_path / "b", n=3, frames=4, size=96, levels=("raw",), methods=("Face2Face",), seed=1)
    rel = "manipulated_sequences/Face2Face/raw/videos/002_003.avi"
    a, b = _frames(clips / rel), _frames(tmp_path / "b" / rel)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ConfigError, match="--n"):
        synth_deepfake(tmp_path / "c", n=2)
    with pytest.raises(ConfigError, match="unknown level"):
        synth_deepfake(tmp_path / "c", levels=("c99",))


def test_medvit_data_synth_deepfake(tmp_path: Path) -> None:
    from medvit.shared.data.cli import app

    res = CliRunner().invoke(
        app, ["synth", "deepfake", str(tmp_path / "o"), "--n", "3", "--frames", "2", "--size", "64", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "o").rglob("*.avi"))) == 3 * 6 * 3  # real + 2 methods, 3 levels
    res = CliRunner().invoke(
        app,
        [
            "synth",
            "deepfake",
            str(tmp_path / "o"),
            "--n",
            "3",
            "--frames",
            "2",
            "--size",
            "64",
            "--quiet",
            "--overwrite",
        ],
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["synth", "deepfake", str(tmp_path / "p"), "--bscans"])
    assert isinstance(res.exception, ConfigError) and "--bscans" in str(res.exception)
