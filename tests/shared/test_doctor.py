"""Tests of ``medvit doctor`` (medvit.shared.doctor)."""

from __future__ import annotations

import importlib.metadata
import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from medvit import __version__
from medvit.shared import doctor

EXPECTED_PACKAGES = [
    "torch", "torchvision", "timm", "monai", "numpy", "nibabel", "pydicom", "cv2", "albumentations",
    "insightface", "onnxruntime", "safetensors", "typer", "scipy", "skimage",
]  # fmt: skip


def _quiet_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, color_system=None), buf


def test_report_returns_every_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDVIT_RUNS", str(tmp_path / "runs"))
    console, buf = _quiet_console()
    info = doctor.report(console=console)

    assert set(info) >= {"medvit", "python", "platform", "packages", "torch", "paths", "opencv_distributions"}
    assert info["medvit"] == __version__
    assert info["python"].startswith(".".join(map(str, sys.version_info[:3])))
    assert list(info["packages"]) == EXPECTED_PACKAGES

    import numpy
    import torch

    assert info["packages"]["torch"] == torch.__version__
    assert info["packages"]["numpy"] == numpy.__version__
    assert set(info["torch"]) >= {"num_threads", "cuda_available", "cuda_version", "cuda_devices", "mps_available"}
    assert info["torch"]["num_threads"] == torch.get_num_threads()
    assert info["torch"]["cuda_available"] == torch.cuda.is_available()
    assert len(info["torch"]["cuda_devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)

    assert info["paths"]["runs"] == str(tmp_path / "runs")
    assert set(info["paths"]) == {"weights", "runs", "insightface_models"}
    assert set(info["opencv_distributions"]) >= {"opencv-python", "opencv-python-headless"}

    text = buf.getvalue()
    assert "medvit doctor" in text and torch.__version__ in text and str(tmp_path / "runs") in text


def test_failing_and_missing_packages_never_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "medvit_broken_pkg.py").write_text("raise RuntimeError('boom at import')\n", encoding="utf-8")
    (tmp_path / "medvit_needs_dep.py").write_text("import medvit_no_such_dependency\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    # insightface is optional: simulate its absence even where it is installed.
    for name in ("insightface", "insightface.utils", "insightface.utils.face_align"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(
        doctor,
        "_PACKAGES",
        (
            ("broken", "medvit_broken_pkg", "medvit-broken-pkg"),
            ("needs_dep", "medvit_needs_dep", "medvit-needs-dep"),
            ("absent", "medvit_absent_pkg", "medvit-absent-pkg"),
            ("insightface", "insightface.utils.face_align", "insightface"),
        ),
    )
    console, buf = _quiet_console()
    info = doctor.report(console=console)

    assert info["packages"] == {
        "broken": "error: RuntimeError: boom at import",
        "needs_dep": "error: ModuleNotFoundError: No module named 'medvit_no_such_dependency'",
        "absent": "not installed",
        "insightface": "not installed",
    }
    assert any("broken fails to import: RuntimeError: boom at import" in w for w in info["warnings"])
    text = buf.getvalue()
    assert "boom at import" in text and "not installed" in text


def test_warns_when_both_opencv_wheels_are_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real_version = importlib.metadata.version
    fake = {"opencv-python": "5.0.0.93", "opencv-python-headless": "5.0.0.93"}

    def version(dist: str) -> str:
        if dist in fake:
            return fake[dist]
        if dist.startswith("opencv"):
            raise importlib.metadata.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(doctor, "_PACKAGES", ())
    console, buf = _quiet_console()
    info = doctor.report(console=console)

    assert info["opencv_distributions"]["opencv-python"] == "5.0.0.93"
    assert info["opencv_distributions"]["opencv-python-headless"] == "5.0.0.93"
    assert len(info["warnings"]) == 1
    assert "opencv-python, opencv-python-headless" in info["warnings"][0]
    assert "warning:" in buf.getvalue()


def test_no_warning_with_one_opencv_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    def version(dist: str) -> str:
        if dist == "opencv-python-headless":
            return "5.0.0.93"
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(doctor, "_PACKAGES", ())
    info = doctor.report(console=_quiet_console()[0])
    assert info["warnings"] == []


def test_cli_doctor_exits_0_and_mentions_torch() -> None:
    from typer.testing import CliRunner

    import medvit.cli

    result = CliRunner().invoke(medvit.cli.app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.output
    assert "medvit doctor" in result.output
