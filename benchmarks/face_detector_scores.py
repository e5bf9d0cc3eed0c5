"""Detection scores of the offline face detectors on real photos: the source of ``--min-face-score``'s defaults.

Photos (all ship inside scikit-image, so this runs offline):

1. ``astronaut()`` (a portrait) at 0.25-1.5x: her face, and her suit with a round embroidered badge and a name tag;
2. scikit-image's other bundled photos (camera, coffee, chelsea, rocket, motorcycle, ...): the cameraman's face,
   everything else not a face;
3. a "group photo": the 100 face crops of ``lfw_subset()`` (25 px, grey) upscaled to 80 px in a grid, above
   ``astronaut()`` at 0.5/0.75/1x (the same image ``tests/apps/fiqa`` uses, built by its ``conftest.group_photo``).

For every detector it prints the scores of the detections on faces and on non-faces, and how many of each a
threshold keeps. dlib (``medvit[face]``) is always measured; MTCNN when facenet-pytorch is importable
(``pip install --no-deps facenet-pytorch``); SCRFD cannot be measured offline (no weights ship in a package).

Usage: ``python benchmarks/face_detector_scores.py`` (about 30 s on one CPU core).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT_SUIT_TOP = 290  # astronaut() rows below this are her suit: no face there


def _test_helpers() -> object:
    """``tests/apps/fiqa/conftest.py`` as a module (the group photo the tests check)."""
    spec = importlib.util.spec_from_file_location("fiqa_test_helpers", ROOT / "tests" / "apps" / "fiqa" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dlib_detect(threshold: float = -0.5) -> Callable[[np.ndarray], list[tuple[np.ndarray, float]]]:
    from medvit.shared.faces.align import DlibDetector

    det = DlibDetector(threshold=threshold)
    return lambda img: [(box, score) for box, score, _ in det.detect(img)]


def mtcnn_detect() -> Callable[[np.ndarray], list[tuple[np.ndarray, float]]] | None:
    from medvit.shared.errors import ConfigError
    from medvit.shared.faces.align import MTCNNDetector

    try:
        det = MTCNNDetector(threshold=0.0)
    except ConfigError:
        return None
    return lambda img: [(box, score) for box, score, _ in det.detect(img)]


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3])


def measure(name: str, detect: Callable[[np.ndarray], list[tuple[np.ndarray, float]]]) -> None:
    import skimage
    from skimage.data import astronaut
    from skimage.io import imread

    helpers = _test_helpers()
    faces: list[float] = []
    other: list[tuple[str, float]] = []
    print(f"\n== {name}")
    for f in (0.25, 0.5, 0.75, 1.0, 1.5):
        img = cv2.resize(astronaut(), None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        found = detect(img)
        for box, score in found:
            on_suit = (box[1] + box[3]) / 2 / f > ASTRONAUT_SUIT_TOP
            (other.append((f"astronaut x{f} suit", score)) if on_suit else faces.append(score))
        print(f"astronaut x{f}: " + ", ".join(f"{s:.3f}" for _, s in found))
    data = Path(os.path.dirname(skimage.__file__)) / "data"
    for path in sorted(data.glob("*.png")) + sorted(data.glob("*.jpg")):
        if path.name == "astronaut.png":
            continue
        img = imread(path)
        if img.dtype != np.uint8 or img.ndim not in (2, 3):
            continue
        for _, score in detect(_rgb(img)):
            other.append((path.name, score)) if path.name != "camera.png" else faces.append(score)
            print(f"{path.name}: {score:.3f}")
    img, boxes = helpers.group_photo()
    kinds: dict[str | None, list[float]] = {}
    for box, score in detect(img):
        kinds.setdefault(helpers.box_kind(box, boxes), []).append(score)
    for kind, scores in sorted(kinds.items(), key=lambda kv: str(kv[0])):
        lowest = ", ".join(f"{s:.3f}" for s in sorted(scores)[:8])
        print(f"group photo, {kind}: {len(scores)} detections, lowest {lowest}")
    lfw = kinds.get("lfw", [])
    faces += kinds.get("astronaut", [])
    other += [("group photo suit", s) for s in kinds.get("suit", [])]
    print(f"real faces outside the LFW grid: {len(faces)}, lowest {min(faces):.3f}")
    print("non-faces, highest first: " + ", ".join(f"{n} {s:.3f}" for n, s in sorted(other, key=lambda t: -t[1])[:8]))
    for t in sorted({0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95}):
        print(
            f"  threshold {t:.2f}: faces kept {sum(s >= t for s in faces)}/{len(faces)}, LFW kept "
            f"{sum(s >= t for s in lfw)}/100, non-faces kept {sum(s >= t for _, s in other)}/{len(other)}"
        )


def main() -> None:
    measure("dlib (HOG SVM score, candidates down to -0.5)", dlib_detect())
    mtcnn = mtcnn_detect()
    if mtcnn is None:
        print("\n== mtcnn: facenet-pytorch not installed (pip install --no-deps facenet-pytorch)")
    else:
        measure("mtcnn (face probability, every candidate of its 3 stages)", mtcnn)
    print("\n== scrfd: not measurable offline (no SCRFD weights ship in a package); default = insightface's 0.5")


if __name__ == "__main__":
    main()
