"""prepare: FF++ layout, splits, faceless frames counted, resume after a kill; predict: no_face videos, images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvit.apps.deepfake import prepare as prepare_module
from medvit.apps.deepfake.predict import predict
from medvit.apps.deepfake.prepare import prepare
from medvit.shared.data.synth_deepfake import write_video
from medvit.shared.faces.sidecar import read_face_sidecar, sidecar_path, write_face_sidecar


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_prepare_ffpp_layout(ffpp: Path, tmp_path: Path) -> None:
    # drop the face of frames 1 and 4 of one real video: those sampled frames are skipped and counted
    video = ffpp / "original_sequences/youtube/c23/videos/000.avi"
    root = Path(shutil.copytree(ffpp, tmp_path / "src"))
    faces = read_face_sidecar(sidecar_path(root / video.relative_to(ffpp)))
    faces[1], faces[4] = [], []
    write_face_sidecar(root / video.relative_to(ffpp), faces, (96, 96))
    res = prepare(root, tmp_path / "out", frames=4, size=64, workers=0, quiet=True)
    assert res.exit_code == 0 and res.videos == 12
    data = json.loads((tmp_path / "out/dataset.json").read_text())
    by_id = {(v["method"], v["video_id"]): v for v in data["videos"]}
    split = {i: s for s in ("train", "val", "test") for p in json.loads((ffpp / f"splits/{s}.json").read_text())
             for i in p}  # fmt: skip
    assert all(v["split"] == split[v["video_id"][:3]] for v in data["videos"])
    assert by_id[("Face2Face", "000_001")]["label"] == 1 and by_id[("original", "001")]["label"] == 0
    # frames 0, 1, 3, 5 sampled (linspace(0, 5, 4) truncated); frame 1 has no face
    assert by_id[("original", "000")]["frames"] == 3 and by_id[("original", "000")]["frames_no_face"] == 1
    assert res.frames_no_face == 1
    crops = np.load(tmp_path / "out" / by_id[("original", "000")]["crops"])
    meta = json.loads((tmp_path / "out" / by_id[("original", "000")]["crops"]).with_suffix(".json").read_text())
    assert crops.shape == (3, 64, 64, 3) and [c["frame"] for c in meta["crops"]] == [0, 3, 5]
    assert meta["frames_no_face"] == [1] and len(meta["crops"][0]["landmarks"]) == 5


def test_prepare_resumes_after_a_kill(ffpp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = prepare_module.PrepareJob.process

    def dying(self, item, loaded, tmp_outputs):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return original(self, item, loaded, tmp_outputs)

    monkeypatch.setattr(prepare_module.PrepareJob, "process", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(ffpp, tmp_path / "killed", frames=3, size=64, workers=0, quiet=True)
    assert len(list((tmp_path / "killed/crops").rglob("*.npy"))) == 4  # the finished videos, no partial file
    monkeypatch.setattr(prepare_module.PrepareJob, "process", original)
    res = prepare(ffpp, tmp_path / "killed", frames=3, size=64, workers=0, quiet=True)
    rows = _rows(tmp_path / "killed/manifest.csv")
    assert res.videos == 12 and len(rows) == 12
    assert sorted(r["status"] for r in rows) == ["ok"] * 8 + ["skipped"] * 4  # finished videos not redone
    full = prepare(ffpp, tmp_path / "full", frames=3, size=64, workers=0, quiet=True)
    assert full.frames == res.frames
    for npy in (tmp_path / "full/crops").rglob("*.npy"):
        assert np.array_equal(
            np.load(npy), np.load(tmp_path / "killed/crops" / npy.relative_to(tmp_path / "full/crops"))
        )


def test_prepare_real_fake_folders(ffpp: Path, tmp_path: Path) -> None:
    src = tmp_path / "plain"
    for label, rel in (
        ("real", "original_sequences/youtube/c23/videos/000"),
        ("fake", "manipulated_sequences/Face2Face/c23/videos/000_001"),
    ):
        (src / label).mkdir(parents=True)
        for suffix in (".avi", ".faces.json"):
            shutil.copy(ffpp / (rel + suffix), src / label / (Path(rel).name + suffix))
    res = prepare(src, tmp_path / "out", frames=2, size=64, workers=0, quiet=True)
    data = json.loads((tmp_path / "out/dataset.json").read_text())
    assert res.videos == 2 and {(v["label"], v["level"]) for v in data["videos"]} == {(0, "unknown"), (1, "unknown")}


def test_a_video_without_faces_is_no_face(ffpp: Path, untrained_run: Path, tmp_path: Path) -> None:
    vids = tmp_path / "videos"
    blank = write_video(vids / "empty.avi", [np.full((80, 80, 3), 40 + 10 * i, np.uint8) for i in range(5)])
    write_face_sidecar(blank, [[] for _ in range(5)], (80, 80))
    shutil.copy(ffpp / "original_sequences/youtube/c23/videos/002.avi", vids / "face.avi")
    shutil.copy(ffpp / "original_sequences/youtube/c23/videos/002.faces.json", vids / "face.faces.json")
    (vids / "broken.avi").write_bytes(b"not a video")
    res = predict(untrained_run, vids, tmp_path / "pred", frames=4, workers=0, quiet=True)
    rows = {Path(r["path"]).stem: r for r in _rows(tmp_path / "pred/videos.csv")}
    assert rows["empty"]["status"] == "no_face" and rows["empty"]["fake_prob"] == "" and rows["empty"]["decision"] == ""
    assert rows["face"]["status"] == "ok" and 0.0 <= float(rows["face"]["fake_prob"]) <= 1.0
    assert rows["face"]["frames_used"] == "4" and rows["broken"]["status"] == "error"
    assert res.no_face == 1 and res.errors == 1 and res.exit_code == 1
    assert (tmp_path / "pred/strips/empty.png").is_file() and (tmp_path / "pred/strips/face.png").is_file()
    frames = _rows(tmp_path / "pred/frames.csv")
    assert {Path(r["path"]).stem for r in frames} == {"face"} and len(frames) == 4
    # the same per-frame probabilities as scoring the video's own rows; a rerun skips finished videos
    again = predict(untrained_run, vids, tmp_path / "pred", frames=4, workers=0, quiet=True)
    assert again.videos == 3 and _rows(tmp_path / "pred/frames.csv") == frames


def test_predict_single_image_with_a_sidecar(ffpp: Path, untrained_run: Path, tmp_path: Path) -> None:
    import cv2

    cap = cv2.VideoCapture(str(ffpp / "original_sequences/youtube/c23/videos/001.avi"))
    ok, frame = cap.read()
    cap.release()
    img = tmp_path / "still.png"
    cv2.imwrite(str(img), frame)
    faces = read_face_sidecar(ffpp / "original_sequences/youtube/c23/videos/001.faces.json")
    write_face_sidecar(img, faces[:1], (96, 96))
    predict(untrained_run, img, tmp_path / "pred", workers=0, quiet=True)
    [row] = _rows(tmp_path / "pred/videos.csv")
    assert row["status"] == "ok" and row["frames_used"] == "1" and row["frames_total"] == "1"
