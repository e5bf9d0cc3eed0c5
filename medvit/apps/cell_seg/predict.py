"""``cell predict``: nuclei of images and whole slides with a trained run, through the shared batch runner.

Per input (a plain PNG/TIFF/JPEG tile or image, or a whole-slide image through tiffslide/OpenSlide):

1. open it at the working magnification (:func:`~medvit.apps.cell_seg.slide.open_source`: the slide's microns per
   pixel, ``--mpp`` to override, ``--target-mag`` 40 or 20) and find the tissue (Otsu on a thumbnail; plain
   images are all tissue), so background tiles are never run;
2. cut the working grid into overlapping tiles (:func:`~medvit.apps.cell_seg.tiling.tile_grid`), read them a tile
   row at a time in reader threads (:func:`~medvit.apps.cell_seg.slide.read_tiles`), run the network on batches;
3. post-process every tile into instances (:func:`~medvit.apps.cell_seg.postproc.postprocess`) in worker
   processes while the next batch runs;
4. merge the tiles' cells in raster order (:class:`~medvit.apps.cell_seg.tiling.CellMerger`: a nucleus cut by a
   tile border appears once) and stream every final cell straight into ``NAME.cells.geojson`` (QuPath detections,
   level-0 coordinates) and ``NAME.cells.csv``, so a slide's cells are never all held twice;
5. write ``NAME.overlay.png`` (outlines coloured by class; for a slide a downsampled overview) and, for plain
   images, ``NAME.labels.npz`` (instance and type maps, the schema ``cell evaluate`` reads).

The batch runner adds the manifest, resume, atomic outputs and the folder lock. The same weights and input give the
same cells whatever ``--workers`` (post-processing is deterministic) and ``--batch-size`` (tiles are independent).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvit.apps.cell_seg.export import CellsCSVWriter, GeoJSONWriter, Overview, cells_to_label_maps, draw_overlay
from medvit.apps.cell_seg.model import CellVTA
from medvit.apps.cell_seg.model_file import NORMALIZE, load_run_model
from medvit.apps.cell_seg.postproc import postprocess
from medvit.apps.cell_seg.slide import (
    INPUT_SUFFIXES,
    SLIDE_SUFFIXES,
    ImageSource,
    _inspect_tiff,
    open_source,
    read_tiles,
    tissue_mask,
)
from medvit.apps.cell_seg.tiling import CellMerger, Tile, tile_grid
from medvit.shared.engine.batch import BatchJob, BatchSummary, common_root, output_relpath, resolve_inputs, run_batch
from medvit.shared.engine.fit import resolve_device
from medvit.shared.errors import ConfigError, DataError
from medvit.shared.files import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["CellInference", "PredictJob", "is_slide", "predict"]


def is_slide(path: Path) -> bool:
    """Whether ``path`` is read as a whole-slide image (a slide format, or a tiled/pyramidal/huge TIFF)."""
    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        try:
            return _inspect_tiff(path).is_slide
        except DataError:
            return False  # unreadable: the load step reports it in the manifest
    return name.endswith(SLIDE_SUFFIXES)


def _postprocess_tile(args: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> list[Any]:
    """One tile's network outputs -> its cells (runs in a worker process)."""
    nuclei_prob, hv, type_prob, magnification = args
    return postprocess(nuclei_prob, hv, type_prob, magnification=magnification)[1]


@dataclass
class CellInference:
    """A trained network on its device with the settings of tiled inference.

    Attributes:
        model: the network in eval mode on ``device``.
        spec: its ``model.json``.
        device: where it runs.
        precision: ``fp32`` or ``bf16`` (autocast; CUDA only).
        tile: tile size in working pixels.
        overlap: pixels shared by neighbouring tiles.
        batch_size: tiles per forward pass.
        target_mag: working magnification (20 or 40).
    """

    model: CellVTA
    spec: dict[str, Any]
    device: torch.device
    precision: str
    tile: int
    overlap: int
    batch_size: int
    target_mag: int

    @property
    def class_names(self) -> list[str]:
        """Nuclei type names by id (0 = background)."""
        return list(self.spec["nuclei_types"])

    def normalise(self, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 tiles ``[h, w, 3]`` -> the network's input ``[B, 3, h, w]`` on the device."""
        norm = self.spec.get("normalize") or NORMALIZE
        x = torch.from_numpy(np.stack(tiles)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(norm["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(norm["std"], device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def forward(self, tiles: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        """Network outputs of a batch of tiles, per tile ``(nuclei prob [h, w], hv [2, h, w], types [C+1, h, w],
        magnification)`` as float32 numpy arrays: the arguments of the post-processing."""
        x = self.normalise(tiles)
        use_bf16 = self.precision == "bf16" and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self.model(x)
        nuclei = torch.softmax(out["nuclei_binary_map"].float(), 1)[:, 1].cpu().numpy()
        hv = out["hv_map"].float().cpu().numpy()
        types = torch.softmax(out["nuclei_type_map"].float(), 1).cpu().numpy()
        return [(nuclei[i], hv[i], types[i], self.target_mag) for i in range(len(tiles))]

    def cells(self, source: ImageSource, pool: Executor | None) -> Iterator[tuple[Tile, list[Any]]]:
        """Tile-local cells of every tissue tile of ``source``, in raster order.

        The next batch's forward pass runs while the worker processes post-process the previous ones.
        """
        grid = tile_grid(source.width, source.height, self.tile, self.overlap)
        mask = tissue_mask(source)
        todo = [t for t in grid if mask.tile_has_tissue(t)]
        pending: deque[tuple[Tile, Future | list[Any]]] = deque()
        batch: list[tuple[Tile, np.ndarray]] = []

        def run(batch: list[tuple[Tile, np.ndarray]]) -> None:
            for (t, _), args in zip(batch, self.forward([rgb for _, rgb in batch]), strict=True):
                pending.append((t, pool.submit(_postprocess_tile, args) if pool else _postprocess_tile(args)))

        for tile_and_rgb in read_tiles(source, todo, workers=2):
            batch.append(tile_and_rgb)
            if len(batch) == self.batch_size:
                run(batch)
                batch = []
            while len(pending) > 2 * self.batch_size:  # bounded: at most ~3 batches of outputs alive
                yield _resolved(pending.popleft())
        if batch:
            run(batch)
        while pending:
            yield _resolved(pending.popleft())


def _resolved(entry: tuple[Tile, Future | list[Any]]) -> tuple[Tile, list[Any]]:
    tile, cells = entry
    return tile, cells.result() if isinstance(cells, Future) else cells


class PredictJob(BatchJob):
    """Batch job of :func:`predict`: one image or slide in, cells (GeoJSON, CSV), overlay and labels out."""

    description = "cell predict"
    log_name = "predict.log"

    def __init__(
        self, inference: CellInference, root: Path, *, mpp: float | None, workers: int, max_label_pixels: int
    ) -> None:
        self.inf = inference
        self.root = root
        self.mpp = mpp
        self.workers = workers
        self.max_label_pixels = max_label_pixels
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor | None:
        """The post-processing worker processes (started on first use; spawned: torch and fork do not mix)."""
        if self.workers > 0 and self._pool is None:
            import multiprocessing

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _writes_labels(self, item: Path) -> bool:
        if is_slide(item):
            return False
        try:
            from PIL import Image

            with Image.open(item) as im:  # lazy: reads the header only
                w, h = im.size
        except Exception:  # noqa: BLE001 - an unreadable file fails in load() with its own message
            return True
        return w * h <= self.max_label_pixels

    def outputs_for(self, item: Path) -> list[Path]:
        outs = [output_relpath(item, self.root, s) for s in (".cells.geojson", ".cells.csv", ".overlay.png")]
        if self._writes_labels(item):
            outs.append(output_relpath(item, self.root, ".labels.npz"))
        return outs

    def load(self, item: Path) -> ImageSource:
        return open_source(item, mpp=self.mpp, target_mag=self.inf.target_mag)

    def process(self, item: Path, loaded: ImageSource, tmp_outputs: list[Path]) -> dict[str, Any]:
        source = loaded
        try:
            return self._run(item, source, tmp_outputs)
        finally:
            source.close()

    def _run(self, item: Path, source: ImageSource, tmp: list[Path]) -> dict[str, Any]:
        t0 = time.perf_counter()
        names = self.inf.class_names
        grid = tile_grid(source.width, source.height, self.inf.tile, self.inf.overlap)
        merger = CellMerger(grid)
        keep: list[Any] | None = [] if source.kind == "image" else None  # a slide's cells are streamed only
        view = None if keep is not None else Overview(*source.thumbnail(4096), class_names=names)
        counts: dict[int, int] = {}
        n_tiles = 0
        kw = {"class_names": names, "scale": source.scale}
        with (
            GeoJSONWriter(tmp[0], image_name=item.name, mpp=source.mpp, **kw) as geo,
            CellsCSVWriter(tmp[1], **kw) as table,
        ):

            def emit(cells: list[Any]) -> None:
                geo.write_many(cells)
                table.write_many(cells)
                for c in cells:
                    counts[int(c.type)] = counts.get(int(c.type), 0) + 1
                if keep is not None:
                    keep.extend(cells)
                else:
                    view.add(cells)

            for tile, cells in self.inf.cells(source, self.pool()):
                n_tiles += 1
                emit(merger.add(tile, cells))
            emit(merger.finish())
        self._pictures(source, keep, view, tmp)
        return {
            "kind": source.kind,
            "width": source.level0_size[0],
            "height": source.level0_size[1],
            "mpp": source.base_mpp,
            "magnification": source.magnification,
            "tiles": n_tiles,
            "cells": sum(counts.values()),
            **{f"n_{names[t] if t < len(names) else t}": n for t, n in sorted(counts.items())},
            "inference_s": round(time.perf_counter() - t0, 3),
        }

    def _pictures(self, source: ImageSource, keep: list[Any] | None, view: Overview | None, tmp: list[Path]) -> None:
        """The overlay (plain image: full size; slide: the overview) and the label maps of a plain image."""
        import cv2

        names = self.inf.class_names
        if keep is not None:
            image = source.read_region(0, 0, source.width, source.height)
            picture = draw_overlay(image, keep, class_names=names)
        else:
            picture = view.image()
        ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        if not ok:
            raise DataError(f"{source.path}: could not encode the overlay PNG")
        tmp[2].write_bytes(png.tobytes())
        if len(tmp) > 3:
            inst, types = cells_to_label_maps(keep or [], source.height, source.width)
            with atomic_path(tmp[3]) as p, open(p, "wb") as fh:
                np.savez_compressed(fh, inst_map=inst, type_map=types)


def _inference(
    run: str | Path,
    checkpoint: str,
    *,
    device: str | None,
    tile: int | None,
    overlap: int | None,
    batch_size: int | None,
    target_mag: int | None,
) -> CellInference:
    """The run's network on its device, with the run's inference settings where the caller gave none."""
    model, spec = load_run_model(run, checkpoint)
    inf = dict(spec.get("infer") or {})
    dev = resolve_device(device or inf.get("device", "auto"))
    precision = str(inf.get("precision", "auto"))
    precision = "bf16" if precision in ("auto", "bf16") and dev.type == "cuda" else "fp32"
    tile = int(tile or inf.get("tile", 256))
    overlap = int(overlap if overlap is not None else inf.get("overlap", 64))
    if tile % 16 or tile < 32:
        raise ConfigError(f"--tile must be a multiple of 16 and >= 32, got {tile}")
    if not 0 <= overlap < tile // 2:
        raise ConfigError(f"--overlap must be in [0, tile/2), got {overlap} for tile {tile}")
    mag = int(target_mag or inf.get("target_mag") or spec.get("magnification", 40))
    return CellInference(
        model.to(dev), spec, dev, precision, tile, overlap, int(batch_size or inf.get("batch_size", 8)), mag
    )


def predict(
    run: str | Path,
    inp: str | Path,
    out: str | Path,
    *,
    checkpoint: str = "auto",
    mpp: float | None = None,
    target_mag: int | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    workers: int = 2,
    device: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> BatchSummary:
    """Segment and classify the nuclei of images and whole slides with a trained run.

    Writes per input ``NAME.cells.geojson`` (QuPath detections), ``NAME.cells.csv``, ``NAME.overlay.png`` and, for
    plain images, ``NAME.labels.npz``, mirroring the input's sub-folders, plus ``OUT/manifest.csv``.

    Args:
        run: run directory of ``cell train`` (or a cell ``model.safetensors`` with its sidecar, e.g. an imported
            CellVTA checkpoint).
        inp: an image or slide, a folder (searched recursively), or a ``.txt`` list of paths.
        out: output folder.
        checkpoint: see :func:`~medvit.apps.cell_seg.model_file.load_run_model`.
        mpp: level-0 microns per pixel of the inputs (overrides their metadata).
        target_mag: working magnification 40 or 20 (default: the training data's).
        tile: tile size (default: the run's).
        overlap: tile overlap (default: the run's).
        batch_size: tiles per forward pass (default: the run's).
        workers: post-processing worker processes (0: in this process).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (default: the run's).
        overwrite: redo inputs whose outputs exist.
        quiet: no progress bar.

    Returns:
        The :class:`~medvit.shared.engine.batch.BatchSummary` (``exit_code`` 1 if any input failed).
    """
    if target_mag is not None and target_mag not in (20, 40):
        raise ConfigError(f"target magnification must be 40 or 20, got {target_mag}")
    inference = _inference(
        run, checkpoint, device=device, tile=tile, overlap=overlap, batch_size=batch_size, target_mag=target_mag
    )
    items = resolve_inputs(inp, INPUT_SUFFIXES)
    if not items:
        raise DataError(f"{inp}: no images or slides ({', '.join(INPUT_SUFFIXES)})")
    max_px = int((inference.spec.get("infer") or {}).get("max_label_pixels", 8192 * 8192))
    job = PredictJob(inference, common_root(items), mpp=mpp, workers=workers, max_label_pixels=max_px)
    logger.info(
        "predicting %d input(s) on %s (%s) at %dx, tiles %d px overlap %d",
        len(items),
        inference.device,
        inference.precision,
        inference.target_mag,
        inference.tile,
        inference.overlap,
    )
    try:
        # One input at a time: a slide's tiles already fill the forward batches and the reader threads.
        return run_batch(job, items, out, overwrite=overwrite, workers=1, batch_size=1, quiet=quiet)
    finally:
        job.close()
