"""The fiqa package on the app kit: a config-object API, the default run directory, the shared atomic writers,
the score job as a :class:`~medvit.shared.engine.batch.BatchJob`, short functions and a torch-free CLI layer."""

from __future__ import annotations

import ast
import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from medvit import cli
from medvit.apps.fiqa import api
from medvit.apps.fiqa.bin_reader import write_bin
from medvit.apps.fiqa.config import FiqaConfig, default_run_dir, load_fiqa_config
from medvit.apps.fiqa.data import IRHeader, RecordIOWriter, pack_record
from medvit.apps.fiqa.score import ScoreJob
from medvit.shared.engine.batch import BatchJob

from .conftest import official_state_dict, save_official

PACKAGE = Path(api.__file__).parent
runner = CliRunner()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_train_api_takes_a_resolved_config() -> None:
    params = inspect.signature(api.train).parameters
    assert list(params)[:3] == ["cfg", "data", "out"]
    assert params["cfg"].annotation in (FiqaConfig, "FiqaConfig")
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())  # no dotted-key **options
    for fn in (api.score, api.evaluate):
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def test_default_run_dir_follows_medvit_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDVIT_RUNS", str(tmp_path / "runs"))
    assert default_run_dir() == tmp_path / "runs" / "fiqa"
    monkeypatch.delenv("MEDVIT_RUNS")
    monkeypatch.chdir(tmp_path)
    assert default_run_dir() == tmp_path / "runs" / "fiqa"  # ./runs/fiqa, made absolute


def test_train_without_out_writes_into_medvit_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medvit.shared.data.synth import synth_faces

    synth_faces(tmp_path / "faces", identities=3, images_per_identity=4, seed=0)
    monkeypatch.setenv("MEDVIT_RUNS", str(tmp_path / "runs"))
    args = ["fiqa", "train", str(tmp_path / "faces"), "--preset", "tiny", "--steps", "2", "--batch-size", "4"]
    res = runner.invoke(cli.app, [*args, "--quiet"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "fiqa"
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "model.safetensors", "model.json"):
        assert (run / name).is_file(), name
    assert f"model: {run / 'model.safetensors'}" in res.output


def test_score_job_is_a_batch_job_logging_to_score_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert issubclass(ScoreJob, BatchJob) and ScoreJob.log_name == "score.log"
    save_official(tmp_path / "model.pt", official_state_dict("token"))
    (tmp_path / "in").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), np.random.default_rng(i).integers(0, 255, (112, 112, 3)))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        res = api.score(tmp_path / "in", out, weights=tmp_path / "model.pt", aligned=True, workers=0, quiet=True)
    assert res.exit_code == 0 and res.faces == 2
    assert "2 ok, 0 skipped, 0 errors" in (out / "score.log").read_text()
    assert not (out / "predict.log").exists()
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_recordio_writer_is_atomic(tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path / "ok" / "x.rec", tmp_path / "ok" / "x.idx") as w:
        w.write_idx(0, pack_record(IRHeader(0, 0.0, 0, 0), b"abc"))
    assert _files(tmp_path / "ok") == ["x.idx", "x.rec"]  # no temp left beside them
    with (
        pytest.raises(RuntimeError, match="stop"),
        RecordIOWriter(tmp_path / "bad" / "x.rec", tmp_path / "bad" / "x.idx") as w,
    ):
        w.write_idx(0, pack_record(IRHeader(0, 0.0, 0, 0), b"abc"))
        raise RuntimeError("stop")
    assert _files(tmp_path / "bad") == []  # neither a half set nor a temp


def test_bin_writer_and_extract_bin_leave_no_temps(tmp_path: Path) -> None:
    blobs = [cv2.imencode(".jpg", np.full((112, 112, 3), 10 * i, np.uint8))[1].tobytes() for i in range(4)]
    write_bin(tmp_path / "set.bin", blobs, [True, False])
    assert _files(tmp_path) == ["set.bin"]
    pair_list = api.extract_bin(tmp_path / "set.bin", tmp_path / "x")
    assert pair_list.read_text() == "0 1 1\n2 3 0\n"
    assert _files(tmp_path / "x") == ["images", *[f"images/{i}.jpg" for i in range(4)], "pair_list.txt"]


def test_no_local_temp_file_writers_in_the_package() -> None:
    """Every file is written through medvit.shared.files (atomic_path and the write_*_atomic helpers)."""
    offenders = [
        f"{p.name}: {needle}"
        for p in sorted(PACKAGE.glob("*.py"))
        for needle in ("os.replace(", ".tmp-", "def write_csv_atomic")
        if needle in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for p in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - start + 1 > 80:
                    long.append(f"{p.name}:{node.lineno} {node.name} ({node.end_lineno - start + 1} lines)")
    assert long == []


def test_cli_config_and_formats_stay_torch_free() -> None:
    code = (
        "import sys\n"
        "import medvit.apps.fiqa.cli, medvit.apps.fiqa.config, medvit.apps.fiqa.formats\n"
        "print(sorted(m for m in ('torch', 'numpy', 'cv2', 'matplotlib', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_config_layers_resolve_as_before() -> None:
    """The CLI's resolution: preset < --set < first-class options (given as dotted keys, None = not given)."""
    cfg = load_fiqa_config(
        "tiny", None, ["optim.lr=5e-4", "model.head=crfiqa"], **{"optim.lr": 1e-4, "loss.margin": None}
    )
    assert cfg.preset == "tiny" and cfg.optim.lr == 1e-4 and cfg.model.head == "crfiqa"
    assert cfg.loss.margin == "cosface"
