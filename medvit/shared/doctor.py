"""``medvit doctor``: versions, devices, threads and folder roots in one table, for bug reports.

Every import is guarded: a package that is missing or fails to import is reported with its error and
never stops the report. insightface is optional; only ``insightface.utils.face_align`` (the part medvit
uses offline) is imported.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
from typing import Any

from medvit import __version__

__all__ = ["report"]

# (name shown, module imported, distribution for the version when the module has no __version__)
_PACKAGES: tuple[tuple[str, str, str], ...] = (
    ("torch", "torch", "torch"),
    ("torchvision", "torchvision", "torchvision"),
    ("timm", "timm", "timm"),
    ("monai", "monai", "monai"),
    ("numpy", "numpy", "numpy"),
    ("nibabel", "nibabel", "nibabel"),
    ("pydicom", "pydicom", "pydicom"),
    ("cv2", "cv2", "opencv-python-headless"),
    ("albumentations", "albumentations", "albumentations"),
    ("insightface", "insightface.utils.face_align", "insightface"),
    ("onnxruntime", "onnxruntime", "onnxruntime"),
    ("safetensors", "safetensors", "safetensors"),
    ("typer", "typer", "typer"),
    ("scipy", "scipy", "scipy"),
    ("skimage", "skimage", "scikit-image"),
)

# All four wheels unpack into the same cv2/ folder; with two installed, uninstalling one breaks cv2.
_OPENCV_DISTS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")

NOT_INSTALLED = "not installed"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _package_version(module_name: str, dist: str) -> str:
    """Import ``module_name`` and return its version, ``"not installed"`` or ``"error: ..."``."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Only the package itself missing counts as "not installed"; a missing dependency is an error.
        if err.name is not None and (err.name == module_name or module_name.startswith(err.name + ".")):
            return NOT_INSTALLED
        return f"error: {_one_line(err)}"
    except Exception as err:  # noqa: BLE001 - doctor reports every failure instead of crashing
        return f"error: {_one_line(err)}"
    top_module = sys.modules.get(module_name.split(".")[0], module)
    version = getattr(top_module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown version"
    return str(version)


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        return {"error": _one_line(err)}
    info: dict[str, Any] = {
        "num_threads": torch.get_num_threads(),
        "cuda_available": False,
        "cuda_version": torch.version.cuda,
        "cuda_devices": [],
        "mps_available": False,
    }
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as err:  # noqa: BLE001 - a broken driver should show up here, not crash doctor
        info["cuda_error"] = _one_line(err)
    try:
        mps = getattr(torch.backends, "mps", None)
        info["mps_available"] = bool(mps is not None and mps.is_available())
    except Exception as err:  # noqa: BLE001
        info["mps_error"] = _one_line(err)
    return info


def _paths_info() -> dict[str, str | None]:
    from medvit.shared import paths

    out: dict[str, str | None] = {}
    for key, func in (
        ("weights", paths.weights_dir),
        ("runs", paths.runs_dir),
        ("insightface_models", paths.insightface_models_dir),
    ):
        try:
            value = func()
            out[key] = None if value is None else str(value)
        except Exception as err:  # noqa: BLE001
            out[key] = f"error: {_one_line(err)}"
    return out


def _opencv_dists() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in _OPENCV_DISTS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def _collect() -> dict[str, Any]:
    # albumentations checks PyPI for updates at import time; medvit never goes online at run time.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    info: dict[str, Any] = {
        "medvit": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "platform": platform.platform(),
        "packages": {name: _package_version(module, dist) for name, module, dist in _PACKAGES},
        "torch": _torch_info(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "paths": _paths_info(),
        "opencv_distributions": _opencv_dists(),
    }
    warnings: list[str] = []
    installed_cv = [d for d, v in info["opencv_distributions"].items() if v is not None]
    if len(installed_cv) > 1:
        warnings.append(
            f"several OpenCV wheels are installed ({', '.join(installed_cv)}); they share the cv2/ folder, "
            "so uninstalling one breaks `import cv2`. Keep only opencv-python-headless "
            "(install insightface with --no-deps, see the Makefile)."
        )
    for name, version in info["packages"].items():
        if version.startswith("error:"):
            warnings.append(f"{name} fails to import: {version[len('error: ') :]}")
    info["warnings"] = warnings
    return info


def _render(info: dict[str, Any], console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"medvit doctor (medvit {escape(info['medvit'])})", show_header=True, header_style="bold")
    table.add_column("item", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")

    table.add_row("medvit", escape(info["medvit"]))
    table.add_row("python", escape(info["python"]))
    table.add_row("platform", escape(info["platform"]))
    table.add_section()
    for name, version in info["packages"].items():
        name = "cv2 (opencv)" if name == "cv2" else name
        style = "red" if version.startswith("error:") else ("yellow" if version == NOT_INSTALLED else "")
        table.add_row(name, f"[{style}]{escape(version)}[/]" if style else escape(version))
    table.add_section()
    t = info["torch"]
    if "error" in t:
        table.add_row("torch", f"[red]{escape(t['error'])}[/]")
    else:
        table.add_row("torch threads", f"{t['num_threads']} (OMP_NUM_THREADS={info['omp_num_threads'] or 'unset'})")
        devices = ", ".join(t["cuda_devices"]) or "-"
        table.add_row("CUDA available", f"{t['cuda_available']} (devices: {escape(devices)})")
        table.add_row("CUDA version (torch build)", escape(str(t["cuda_version"] or "none (CPU build)")))
        table.add_row("MPS available", str(t["mps_available"]))
        for key in ("cuda_error", "mps_error"):
            if key in t:
                table.add_row(key, f"[red]{escape(t[key])}[/]")
    table.add_section()
    labels = {
        "weights": "weights ($MEDVIT_WEIGHTS)",
        "runs": "runs ($MEDVIT_RUNS)",
        "insightface_models": "insightface models ($INSIGHTFACE_HOME)",
    }
    for key, value in info["paths"].items():
        table.add_row(escape(labels.get(key, key)), escape(value) if value is not None else "[yellow]unset[/]")
    table.add_section()
    for dist, version in info["opencv_distributions"].items():
        table.add_row(dist, escape(version) if version else "-")
    console.print(table)
    for line in info["warnings"]:
        console.print(f"[bold yellow]warning:[/] {escape(line)}")


def report(console: Any = None) -> dict[str, Any]:
    """Print the environment report as a rich table and return it.

    Args:
        console: A ``rich.console.Console`` to print to; a new one on stdout by default.

    Returns:
        Dict with keys ``medvit``, ``python``, ``platform``, ``packages`` (name -> version, ``"not installed"``
        or ``"error: ..."``), ``torch`` (``num_threads``, ``cuda_available``, ``cuda_version``, ``cuda_devices``,
        ``mps_available``), ``omp_num_threads``, ``paths`` (``weights``, ``runs``,
        ``insightface_models``), ``opencv_distributions`` (distribution -> version or None) and ``warnings``.
    """
    info = _collect()
    if console is None:
        from rich.console import Console

        console = Console()
    _render(info, console)
    return info
