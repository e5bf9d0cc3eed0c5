"""``medvit eye predict``: list the inputs (:func:`medvit.apps.eye.inputs.list_inputs`) and run the core's batch job.

The core (:func:`medvit.shared.classify.listing.predict_samples`) writes ``predictions.csv`` (``key``,
``prob_<class>``, the predicted class), ``manifest.csv`` with a status per input (unreadable inputs get ``error``
rows and the others still run), resumes by skipping finished inputs, and writes heat-map overlays when asked.
"""

from __future__ import annotations

from pathlib import Path

from medvit.apps.eye.inputs import list_inputs, model_dims
from medvit.shared.classify.listing import PredictResult, predict_samples

__all__ = ["PredictResult", "predict"]


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
    """Predict the class of every image or volume of INPUT into ``out``.

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
    options = {"workers": workers, "heatmaps": heatmaps, "overwrite": overwrite, "quiet": quiet, "device": device}
    return predict_samples(run, list_inputs(inp, model_dims(run)), out, batch_size=batch_size, **options)
