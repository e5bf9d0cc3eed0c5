"""Synthetic face clips, real and reenacted, in the FaceForensics++ folder layout (for ``medvit deepfake``).

Each identity (the drawn faces of :func:`medvit.shared.data.synth.synth_faces`) gets one short clip: its face
moves smoothly in the frame (drift, a few degrees of roll, a little zoom) over a background continued from the
face's own. Identities come in pairs ``(a, b)``, as FF++'s official splits; a *reenacted* clip ``a_b`` keeps
clip ``a`` (its face, background, motion) and replaces one face region by the same region of ``b``, warped onto
``a``'s landmarks, with a colour mismatch (a per-clip gain of 12-20 % on the pasted skin) and a darker one-pixel
seam along its border: the tone step and blending edge a reenactment leaves. Regions per method (ours):

==============  ==========================================================
method          region replaced
==============  ==========================================================
Face2Face       lower face: nose and mouth (expression transfer)
NeuralTextures  the mouth
Deepfakes       the inner face, brows to chin
FaceSwap        the inner face, with a stronger colour step
==============  ==========================================================

Every clip is written at each compression level: ``raw`` untouched, ``c23`` and ``c40`` as per-frame JPEG at
quality 60 and 25 (ours; FF++ used H.264 at constant rate factor 23 and 40, but opencv's wheels carry no H.264
encoder), stored losslessly (FFV1 in ``.avi``) so the artefacts are exactly those of the level. Layout::

    out/original_sequences/youtube/<level>/videos/000.avi       real clips, one per identity
    out/manipulated_sequences/<method>/<level>/videos/000_001.avi   reenacted: target 000, source 001
    out/.../videos/<stem>.faces.json    per frame, the face box and five landmarks (medvit.shared.faces.sidecar)
    out/splits/{train,val,test}.json    FF++'s official split format: lists of [target, source] id pairs
    out/clips.csv                       path, label (0 real / 1 fake), method, level, split, target, source

The sidecars stand in for a face detector: no detector with offline weights is guaranteed to be installed and
none is trained on drawn faces. Clip ``k`` depends only on ``(seed, k)``; files are written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.data.synth import ProgressFn, SynthSummary, _check_seed, _csv_text, _rng
from medvit.shared.errors import ConfigError
from medvit.shared.faces.sidecar import write_face_sidecar
from medvit.shared.files import temp_path, write_bytes_atomic

logger = logging.getLogger(__name__)

__all__ = ["DEEPFAKE_LEVELS", "DEEPFAKE_METHODS", "DEEPFAKE_OWNED", "clear_deepfake_outputs", "synth_deepfake"]

DEEPFAKE_LEVELS: dict[str, int | None] = {"raw": None, "c23": 60, "c40": 25}
"""Compression levels and their JPEG quality (None: untouched)."""

# method: (ellipse centre as weights of the five landmarks, semi-axes in eye distances, extra colour step)
_METHOD_REGIONS: dict[str, tuple[tuple[float, ...], tuple[float, float], float]] = {
    "Face2Face": ((0.0, 0.0, 0.5, 0.25, 0.25), (0.75, 0.62), 0.0),
    "NeuralTextures": ((0.0, 0.0, 0.0, 0.5, 0.5), (0.55, 0.32), 0.0),
    "Deepfakes": ((0.2, 0.2, 0.2, 0.2, 0.2), (0.95, 1.15), 0.0),
    "FaceSwap": ((0.2, 0.2, 0.2, 0.2, 0.2), (0.95, 1.15), 0.06),
}
DEEPFAKE_METHODS: tuple[str, ...] = tuple(_METHOD_REGIONS)
_FACE_BOX_112 = np.array([[17.0, 12.0], [95.0, 12.0], [95.0, 114.0], [17.0, 114.0]])  # face ellipse + margin
DEEPFAKE_OWNED: tuple[str, ...] = ("original_sequences", "manipulated_sequences", "splits", "clips.csv")


def _check_args(n: int, frames: int, size: int, levels: Sequence[str], methods: Sequence[str]) -> None:
    if not 3 <= n <= 10000:
        raise ConfigError(f"synth deepfake: --n (identity pairs) must be in [3, 10000], got {n}")
    if not 1 <= frames <= 1000:
        raise ConfigError(f"synth deepfake: --frames must be in [1, 1000], got {frames}")
    if not 64 <= size <= 1024:
        raise ConfigError(f"synth deepfake: --size must be in [64, 1024], got {size}")
    bad = [lv for lv in levels if lv not in DEEPFAKE_LEVELS] + [m for m in methods if m not in _METHOD_REGIONS]
    if bad or not levels or not methods:
        raise ConfigError(
            f"synth deepfake: unknown level/method {bad}; levels {', '.join(DEEPFAKE_LEVELS)}, methods "
            f"{', '.join(_METHOD_REGIONS)}"
        )


def _split_pairs(n: int, seed: int) -> dict[str, list[tuple[int, int]]]:
    """Pairs (2i, 2i+1) shuffled into train / val / test (60 / 20 / 20 %, at least one pair in val and test)."""
    order = _rng(seed, 5).permutation(n)
    n_test = max(1, round(0.2 * n))
    n_val = max(1, round(0.2 * n))
    pairs = [(2 * int(i), 2 * int(i) + 1) for i in order]
    return {
        "train": sorted(pairs[: n - n_val - n_test]),
        "val": sorted(pairs[n - n_val - n_test : n - n_test]),
        "test": sorted(pairs[n - n_test :]),
    }


def _identity_face(seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(face RGB uint8 [112, 112, 3], landmarks [5, 2]) of identity ``k``."""
    from medvit.shared.data.synth import _draw_face, _face_identity

    ident = _face_identity(_rng(seed, 1, k))
    return _draw_face(ident, _rng(seed, 2, k), 112), ident.landmarks.copy()


def _motion(seed: int, k: int, frames: int, size: int) -> list[np.ndarray]:
    """Per frame, the 2x3 similarity from the 112 px face to the frame (smooth drift, roll and zoom)."""
    r = _rng(seed, 3, k)
    side = size * r.uniform(0.55, 0.7)
    centre = size / 2 + r.uniform(-0.06, 0.06, size=2) * size
    amp, phase, speed = r.uniform(0.02, 0.05, size=2) * size, r.uniform(0, 2 * np.pi, size=4), r.uniform(0.15, 0.4)
    roll, zoom = r.uniform(2.0, 5.0), r.uniform(0.01, 0.04)
    out = []
    for t in range(frames):
        c = centre + amp * np.sin(speed * t + phase[:2])
        ang = math.radians(roll * math.sin(speed * t + phase[2]))
        s = side / 112 * (1 + zoom * math.sin(speed * t + phase[3]))
        rot = s * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        out.append(np.hstack([rot, (c - rot @ np.array([56.0, 56.0]))[:, None]]))
    return out


def _reenact(
    target: np.ndarray, t_lm: np.ndarray, source: np.ndarray, s_lm: np.ndarray, method: str, r: np.random.Generator
) -> np.ndarray:
    """``target`` with the method's region taken from ``source`` (aligned on the landmarks), colour-shifted."""
    import cv2

    from medvit.shared.faces.align import umeyama_similarity

    m = umeyama_similarity(s_lm, t_lm)
    warped = cv2.warpAffine(source, m, (112, 112), borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    weights, (ax, ay), extra = _METHOD_REGIONS[method]
    d = float(np.linalg.norm(t_lm[1] - t_lm[0]))
    centre = (np.asarray(weights)[:, None] * t_lm).sum(0)
    mask = np.zeros((112 * 4, 112 * 4), np.uint8)
    cv2.ellipse(
        mask,
        (round(centre[0] * 4), round(centre[1] * 4)),
        (round(ax * d * 4), round(ay * d * 4)),
        0,
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
    )
    alpha = cv2.resize(mask, (112, 112), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255.0
    # colour mismatch: a per-clip gain per channel, brighter or darker, never close to 1
    sign = 1.0 if r.random() < 0.5 else -1.0
    gain = 1.0 + sign * (r.uniform(0.12, 0.2, size=3) + extra)
    pasted = np.clip(warped * gain, 0, 255)
    out = target * (1 - alpha) + pasted * alpha
    # edge mismatch: a darker seam one pixel wide along the pasted region's border
    ring = alpha[..., 0] * (1 - alpha[..., 0]) * 4  # 1 on the border, 0 inside and outside
    seam = cv2.dilate((ring > 0.25).astype(np.uint8), np.ones((2, 2), np.uint8)).astype(np.float32)[..., None]
    return np.clip(out * (1 - 0.25 * seam), 0, 255).round().astype(np.uint8)


def _frames(face: np.ndarray, motion: list[np.ndarray], size: int, seed: int, k: int) -> list[np.ndarray]:
    """The clip's frames (before compression): the face warped into the frame, plus sensor noise."""
    import cv2

    out = []
    for t, m in enumerate(motion):
        frame = cv2.warpAffine(face, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        noise = _rng(seed, 4, k, t).normal(0.0, 2.0, frame.shape)
        out.append(np.clip(frame + noise, 0, 255).round().astype(np.uint8))
    return out


def _faces(motion: list[np.ndarray], lm112: np.ndarray) -> list[list[tuple[np.ndarray, float, np.ndarray]]]:
    from medvit.shared.faces.align import transform_points

    out = []
    for m in motion:
        corners = transform_points(_FACE_BOX_112, m)
        box = np.array([*corners.min(0), *corners.max(0)])
        out.append([(box, 1.0, transform_points(lm112, m))])
    return out


def _compress(frame: np.ndarray, quality: int | None) -> np.ndarray:
    import cv2

    if quality is None:
        return frame
    ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 25.0) -> Path:
    """Write RGB frames losslessly (FFV1 in ``.avi``) through a temp file renamed into place.

    Raises:
        RuntimeError: opencv cannot open an FFV1 writer.
    """
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    try:
        if not writer.isOpened():
            raise RuntimeError(f"opencv cannot write FFV1 video to {tmp}")
        for f in frames:
            writer.write(np.ascontiguousarray(f[..., ::-1]))
    finally:
        writer.release()
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_clip(
    root: Path, rel_dir: str, stem: str, frames: list[np.ndarray], faces: list, levels: Sequence[str], size: int
) -> list[str]:
    written = []
    for level in levels:
        rel = f"{rel_dir.format(level=level)}/{stem}.avi"
        path = write_video(root / rel, [_compress(f, DEEPFAKE_LEVELS[level]) for f in frames])
        write_face_sidecar(path, faces, (size, size))
        written += [rel, rel[: -len(".avi")] + ".faces.json"]
    return written


def _write_pair(
    root: Path,
    pair: tuple[int, int],
    split: str,
    files: list[str],
    rows: list[list[Any]],
    *,
    frames: int,
    size: int,
    levels: Sequence[str],
    methods: Sequence[str],
    seed: int,
) -> None:
    """The real clips of both identities of ``pair`` and, per method, the two reenactments (target, source)."""
    a, b = pair
    faces = {k: _identity_face(seed, k) for k in (a, b)}
    for target, source in ((a, b), (b, a)):
        motion = _motion(seed, target, frames, size)
        clip_faces = _faces(motion, faces[target][1])
        real = _frames(faces[target][0], motion, size, seed, target)
        files += _write_clip(
            root, "original_sequences/youtube/{level}/videos", f"{target:03d}", real, clip_faces, levels, size
        )
        rows += [
            [f"original_sequences/youtube/{lv}/videos/{target:03d}.avi", 0, "original", lv, split, f"{target:03d}", ""]
            for lv in levels
        ]
        for j, method in enumerate(methods):
            fake_face = _reenact(*faces[target], *faces[source], method, _rng(seed, 6, target, j))
            fake = _frames(fake_face, motion, size, seed, target)
            stem = f"{target:03d}_{source:03d}"
            files += _write_clip(
                root, f"manipulated_sequences/{method}/{{level}}/videos", stem, fake, clip_faces, levels, size
            )
            rows += [
                [
                    f"manipulated_sequences/{method}/{lv}/videos/{stem}.avi",
                    1,
                    method,
                    lv,
                    split,
                    f"{target:03d}",
                    f"{source:03d}",
                ]
                for lv in levels
            ]


def synth_deepfake(
    out: str | os.PathLike[str],
    *,
    n: int = 12,
    frames: int = 16,
    size: int = 128,
    levels: Sequence[str] = ("raw", "c23", "c40"),
    methods: Sequence[str] = ("Face2Face", "NeuralTextures"),
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> SynthSummary:
    """Write real and reenacted synthetic clips in the FF++ layout (see the module docstring).

    Args:
        out: output folder (created).
        n: identity pairs; 2n real clips and 2n reenacted clips per method, each at every level.
        frames: frames per clip.
        size: frame side in pixels.
        levels: compression levels written (``raw``, ``c23``, ``c40``).
        methods: manipulation methods written (:data:`DEEPFAKE_METHODS`).
        seed: seed; clip ``k`` depends only on ``(seed, k)``.
        progress: optional ``progress(done, total)`` callback (per identity pair).

    Returns:
        The summary (counts: ``real``, ``fake``, ``videos``, ``train``/``val``/``test`` pairs).

    Raises:
        ConfigError: an argument out of range.
    """
    _check_seed(seed)
    _check_args(n, frames, size, levels, methods)
    root, start = Path(out), time.perf_counter()
    splits = _split_pairs(n, seed)
    split_of = {p: name for name, pairs in splits.items() for p in pairs}
    files: list[str] = []
    rows: list[list[Any]] = []
    for i, pair in enumerate(sorted(split_of)):
        _write_pair(
            root, pair, split_of[pair], files, rows, frames=frames, size=size, levels=levels, methods=methods, seed=seed
        )
        if progress is not None:
            progress(i + 1, n)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        text = json.dumps([[f"{x:03d}", f"{y:03d}"] for x, y in pairs])
        write_bytes_atomic(root / "splits" / f"{name}.json", text.encode("utf-8"), fsync=False)
        files.append(f"splits/{name}.json")
    header = ["path", "label", "method", "level", "split", "target", "source"]
    write_bytes_atomic(root / "clips.csv", _csv_text(header, rows).encode("utf-8"), fsync=False)
    files.append("clips.csv")
    counts = {"real": 2 * n * len(levels), "fake": 2 * n * len(levels) * len(methods)}
    counts |= {"videos": counts["real"] + counts["fake"], **{f"{k} pairs": len(v) for k, v in splits.items()}}
    params = {"seed": int(seed), "n": n, "frames": frames, "size": size, "levels": list(levels)}
    params["methods"] = list(methods)
    seconds = time.perf_counter() - start
    logger.info("synth deepfake: %d videos in %s (%.1f s)", counts["videos"], root, seconds)
    return SynthSummary("deepfake", root, counts, params, tuple(files), seconds)


def clear_deepfake_outputs(out: str | os.PathLike[str]) -> list[str]:
    """Remove what a previous :func:`synth_deepfake` may have written to ``out`` (:data:`DEEPFAKE_OWNED`).

    Returns:
        Names removed (relative to ``out``).
    """
    from medvit.shared.data.synth_xray import remove_owned

    return remove_owned(Path(out), DEEPFAKE_OWNED)
