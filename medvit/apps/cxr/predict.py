"""``medvit cxr predict``: list the inputs (:func:`medvit.apps.cxr.inputs.list_inputs`) and run the core's batch job.

The core (:func:`medvit.shared.classify.predict.predict`) writes ``predictions.csv`` (``key``, ``prob_<finding>``,
the thresholded findings), ``manifest.csv`` with a status per input (unreadable inputs get ``error`` rows and the
others still run), resumes by skipping finished inputs, and writes heat-map overlays when asked.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvit.apps.cxr.inputs import list_inputs

__all__ = ["PredictResult", "manifest_counts", "predict"]


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` returns.

    Attributes:
        out: The output folder.
        predictions: ``predictions.csv``.
        manifest: ``manifest.csv``.
        ok: Inputs predicted (this call or an earlier one).
        error: Inputs that failed.
    """

    out: Path
    predictions: Path
    manifest: Path
    ok: int
    error: int

    @property
    def exit_code(self) -> int:
        """1 when any input failed, else 0."""
        return 1 if self.error else 0

    @property
    def line(self) -> str:
        """One line for the terminal."""
        return f"{self.ok} ok, {self.error} error{'s' if self.error != 1 else ''} - see {self.predictions}"


def manifest_counts(manifest: Path) -> tuple[int, int]:
    """``(ok + skipped, error)`` rows of a batch manifest (0, 0 when it does not exist)."""
    if not manifest.is_file():
        return 0, 0
    with open(manifest, newline="", encoding="utf-8") as fh:
        status = [row.get("status", "") for row in csv.DictReader(fh)]
    return sum(s in ("ok", "skipped") for s in status), sum(s == "error" for s in status)


def predict(
    run: str | Path,
    inp: str | Path,
    out: str | Path,
    *,
    batch_size: int | None = None,
    workers: int = 2,
    heatmaps: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    device: str = "auto",
) -> PredictResult:
    """Predict the findings of every radiograph of INPUT into ``out``.

    Args:
        run: Run directory of ``train`` (or its ``model.safetensors``).
        inp: INPUT (see :func:`list_inputs`).
        out: Output folder.
        batch_size: Inputs per forward pass (default: the core's).
        workers: Decoding threads.
        heatmaps: ``rollout``, ``gradcam`` or None.
        overwrite: Recompute inputs already done.
        quiet: No progress bar.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        DataError: INPUT missing or an unreadable list; WeightsError: an unreadable run.
    """
    from medvit.shared.classify.predict import predict as core_predict

    samples = list_inputs(inp)
    kw: dict[str, Any] = {"workers": workers, "heatmaps": heatmaps, "overwrite": overwrite, "quiet": quiet}
    kw["device"] = device
    if batch_size is not None:
        kw["batch_size"] = batch_size
    res = core_predict(Path(run), samples, Path(out), **kw)
    folder = Path(out)
    predictions = Path(res) if res is not None else folder / "predictions.csv"
    ok, error = manifest_counts(folder / "manifest.csv")
    return PredictResult(folder, predictions, folder / "manifest.csv", ok, error)
