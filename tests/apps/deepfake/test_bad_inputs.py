"""Bad inputs to ``medvit deepfake``: one ``error:`` line naming the file and the problem, non-zero exit."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from medvit.cli import app


def _fails(args: list[str], *needles: str) -> str:
    res = CliRunner().invoke(app, ["deepfake", *args])
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output, res.output
    for needle in needles:
        assert needle in res.output, res.output
    return res.output


def test_train_on_a_folder_that_was_not_prepared(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _fails(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--preset", "tiny"], "data")


def test_predict_with_a_corrupt_model_description(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text("{not json", encoding="utf-8")
    (run / "model.safetensors").write_bytes(b"\x00" * 16)
    video = tmp_path / "v.avi"
    video.write_bytes(b"not a video")
    _fails(["predict", str(run), str(video), "--out", str(tmp_path / "out")], "model")


def test_prepare_a_folder_without_videos(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _fails(["prepare", str(tmp_path / "empty"), str(tmp_path / "out")], "empty")
