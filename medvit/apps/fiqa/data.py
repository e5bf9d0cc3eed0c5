"""Face datasets in the formats of the field: identity folders, insightface RecordIO, pair lists; augmentation.

* Identity folders ``DATA/<identity>/*.jpg`` (CASIA-WebFace, VGGFace2 exports, ``medvit data synth faces``).
* insightface RecordIO ``train.rec`` + ``train.idx`` (MS1MV2, Glint360K, WebFace42M as distributed for
  arcface_torch), read without mxnet. The format (dmlc-core ``recordio.h``, mxnet ``recordio.py``):

  - ``.idx``: text lines ``key<TAB>byte offset`` of each record in ``.rec``;
  - a record: uint32 magic ``0xced7230a``, uint32 ``lrecord`` (upper 3 bits ``cflag``, lower 29 bits length),
    the payload, zero padding to a multiple of 4 bytes. A payload containing the magic at a 4-byte aligned
    offset is split there into parts (``cflag`` 1 = first, 2 = middle, 3 = last; 0 = whole record) and the
    reader puts the magic back between parts;
  - payload = ``IRHeader`` struct ``IfQQ`` (flag, label, id, id2; 24 bytes), then ``flag`` float32 labels when
    ``flag > 0``, then the encoded image;
  - insightface sets start with a header record 0 (``flag > 0``, empty image) whose labels ``(a, b)`` say that
    images are records ``1 .. a-1`` and identity records ``a .. b-1``; sets without it have images only.
    An image's label is ``label`` (``flag == 0``) or its first float.

  Why our own reader: mxnet is unmaintained and does not install on current Pythons; the format is small.
* Pair lists for verification and EDC: LFW ``pairs.txt``, CR-FIQA ``pair_list.txt`` (``a b is_same``) and
  insightface ``.bin`` (see ``bin_reader.py``).

Images are decoded with OpenCV and returned as RGB uint8 (never BGR). Augmentation uses albumentations: the
reference's "gridsample" recipe (with probability 0.6: scale 0.8-1.2 and shift 0.1, rotation up to 20 degrees
with p 0.2, two photometric ops, blur p 0.2, cutout p 0.2; horizontal flip always p 0.5) re-expressed with
albumentations transforms (not the reference's RandAugment implementation).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from medvit.shared.data.augment import SeededAlbumentations, reseed
from medvit.shared.data.io import IMAGE_SUFFIXES, check_file, list_folder
from medvit.shared.errors import DataError
from medvit.shared.files import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "IRHeader",
    "IdentityFolderDataset",
    "PairSet",
    "RecordIODataset",
    "RecordIOReader",
    "RecordIOWriter",
    "build_augment",
    "decode_image",
    "open_training_set",
    "pack_record",
    "read_pairs",
    "unpack_record",
]

FACE_SIZE = 112
RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_LEN_MASK = (1 << 29) - 1

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
"""mxnet's image-record header: ``label`` is a float, or a float32 array when ``flag > 0``."""


# ============================================================================= decoding
def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Encoded image bytes -> RGB uint8 ``[H, W, 3]``.

    Raises:
        DataError: undecodable bytes (names ``name``).
    """
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise DataError(f"{name}: empty image data")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{name}: cannot decode the image (corrupt or not an image)")
    return np.ascontiguousarray(img[..., ::-1])


def read_face_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as RGB uint8 ``[H, W, 3]`` (the shared reader: clear errors for bad files)."""
    from medvit.shared.data.io import read_image

    img, meta = read_image(path, mode="rgb")
    if img.dtype != np.uint8:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)  # 16-bit -> 8-bit
    return img


# ============================================================================= RecordIO
def pack_record(header: IRHeader, payload: bytes) -> bytes:
    """mxnet ``recordio.pack``: header struct (+ float32 labels) + payload.

    Args:
        header: ``IRHeader(flag, label, id, id2)``; a sequence label is written as ``flag`` floats.
        payload: encoded image (may be empty).
    """
    label = header.label
    if isinstance(label, (int, float, np.integer, np.floating)):
        head = struct.pack(_IR_FORMAT, 0, float(label), int(header.id), int(header.id2))
        return head + bytes(payload)
    arr = np.asarray(label, dtype="<f4").reshape(-1)
    head = struct.pack(_IR_FORMAT, arr.size, 0.0, int(header.id), int(header.id2))
    return head + arr.tobytes() + bytes(payload)


def unpack_record(record: bytes) -> tuple[IRHeader, bytes]:
    """mxnet ``recordio.unpack``: ``(IRHeader, payload)``; labels become a float32 array when ``flag > 0``."""
    if len(record) < _IR_SIZE:
        raise DataError(f"RecordIO record of {len(record)} bytes is shorter than its {_IR_SIZE}-byte header")
    flag, label, id1, id2 = struct.unpack(_IR_FORMAT, record[:_IR_SIZE])
    rest = record[_IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise DataError(f"RecordIO record declares {flag} labels but holds {len(rest)} bytes after the header")
        labels = np.frombuffer(rest[: 4 * flag], dtype="<f4").copy()
        return IRHeader(flag, labels, id1, id2), rest[4 * flag :]
    return IRHeader(flag, label, id1, id2), rest


def _encode_parts(data: bytes) -> bytes:
    """dmlc ``RecordIOWriter::WriteRecord``: split at aligned magic occurrences, pad the end to 4 bytes."""
    out = bytearray()
    n = len(data)
    start = 0
    for i in range(0, n - n % 4, 4):
        if data[i : i + 4] == _MAGIC_BYTES:
            cflag = 1 if start == 0 else 2
            out += _MAGIC_BYTES + struct.pack("<I", (cflag << 29) | (i - start)) + data[start:i]
            start = i + 4
    cflag = 3 if start != 0 else 0
    out += _MAGIC_BYTES + struct.pack("<I", (cflag << 29) | (n - start)) + data[start:]
    out += b"\x00" * ((-n) % 4)
    return bytes(out)


class RecordIOWriter:
    """Write an indexed RecordIO pair (``.rec`` + ``.idx``) as mxnet's ``MXIndexedRecordIO(..., 'w')`` does.

    Files are written under temp names and renamed on :meth:`close` (a crash leaves no half set).

    Args:
        rec_path: ``train.rec``.
        idx_path: ``train.idx``.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str]) -> None:
        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path)
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        # Both temps stay open until close(): the .idx is entered first so that the .rec is renamed first.
        self._files = contextlib.ExitStack()
        self._tmp_idx = self._files.enter_context(atomic_path(self.idx_path))
        self._tmp_rec = self._files.enter_context(atomic_path(self.rec_path))
        self._rec: BinaryIO | None = open(self._tmp_rec, "wb")  # noqa: SIM115 - closed in close()
        self._lines: list[str] = []

    def write_idx(self, key: int, record: bytes) -> None:
        """Append one record (payload from :func:`pack_record`) under integer ``key``."""
        assert self._rec is not None, "writer is closed"
        self._lines.append(f"{int(key)}\t{self._rec.tell()}\n")
        self._rec.write(_encode_parts(record))

    def close(self) -> None:
        if self._rec is None:
            return
        self._rec.close()
        self._rec = None
        self._tmp_idx.write_text("".join(self._lines), encoding="utf-8")
        self._files.close()  # renames the .rec, then the .idx, onto their final names

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        if self._rec is not None:
            self._rec.close()
            self._rec = None
        self._files.__exit__(exc_type, exc, tb)  # removes both temps; the exception propagates


class RecordIOReader:
    """Random access to an indexed RecordIO file with ``os.pread`` (no shared file position: safe in threads
    and DataLoader workers; the descriptor is reopened after a fork).

    Args:
        rec_path: ``.rec`` file.
        idx_path: ``.idx`` file (default: same stem).
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        for p in (self.rec_path, self.idx_path):
            if not p.is_file():
                raise DataError(f"{p}: RecordIO file not found")
        self.size = self.rec_path.stat().st_size
        self.offsets: dict[int, int] = {}
        for n, line in enumerate(self.idx_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                key, off = int(parts[0]), int(parts[1])
            except (ValueError, IndexError):
                raise DataError(f"{self.idx_path}:{n}: expected 'key<TAB>offset', got {line[:60]!r}") from None
            if not 0 <= off < self.size:
                raise DataError(f"{self.idx_path}:{n}: offset {off} lies outside {self.rec_path} ({self.size} bytes)")
            self.offsets[key] = off
        if not self.offsets:
            raise DataError(f"{self.idx_path}: empty index")
        self._fd: int | None = None
        self._pid = -1

    @property
    def keys(self) -> list[int]:
        return list(self.offsets)

    def _read_at(self, offset: int, n: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._pid = os.getpid()
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise DataError(f"{self.rec_path}: truncated record at byte {offset}")
        return data

    def read_idx(self, key: int) -> bytes:
        """The payload of record ``key`` (parts joined, padding removed)."""
        try:
            pos = self.offsets[key]
        except KeyError:
            raise DataError(f"{self.idx_path}: no record with key {key}") from None
        out = bytearray()
        while True:
            magic, lrec = struct.unpack("<II", self._read_at(pos, 8))
            if magic != RECORDIO_MAGIC:
                raise DataError(f"{self.rec_path}: bad magic 0x{magic:08x} at byte {pos} (key {key}); corrupt file")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            # Checked before reading: a corrupt length would otherwise make pread allocate up to 512 MiB.
            if cflag > 3:
                raise DataError(f"{self.rec_path}: bad part flag {cflag} at byte {pos} (key {key}); corrupt file")
            if pos + 8 + length > self.size:
                raise DataError(
                    f"{self.rec_path}: record {key} at byte {pos} declares {length} bytes but the file ends at byte "
                    f"{self.size}; truncated or corrupt file"
                )
            out += self._read_at(pos + 8, length) if length else b""
            pos += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                return bytes(out)
            out += _MAGIC_BYTES

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


# ============================================================================= augmentation
def build_augment(kind: str = "full", p: float = 0.6) -> SeededAlbumentations | None:
    """Training augmentation on RGB uint8 ``[112, 112, 3]``.

    Args:
        kind: ``full``: horizontal flip (0.5) and, with probability ``p``, scale/shift (0.8-1.2, 0.1), rotation
            (up to 20 degrees, p 0.2), two of brightness/contrast, hue/saturation, gamma, equalize, posterize,
            solarize, sharpen, grey, then blur (p 0.2) and one cutout (p 0.2); ``flip``: flip only; ``none``.
        p: probability of the heavy branch (reference: 0.6).

    Returns:
        A callable image -> image, reseeded per sample by the training loop, or None for ``none``.
    """
    if kind == "none":
        return None
    import albumentations as A
    import cv2

    flip = A.HorizontalFlip(p=0.5)
    if kind == "flip":
        pipe = A.Compose([flip])
    elif kind == "full":
        heavy = A.Sequential(
            [
                A.Affine(
                    scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0
                ),
                A.Affine(rotate=(-20, 20), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.2),
                A.SomeOf(
                    [
                        A.RandomBrightnessContrast(brightness_limit=0.4, contrast_limit=0.4, p=1.0),
                        A.HueSaturationValue(p=1.0),
                        A.RandomGamma(gamma_limit=(60, 140), p=1.0),
                        A.Equalize(p=1.0),
                        A.Posterize(num_bits=(4, 6), p=1.0),
                        A.Solarize(p=1.0),
                        A.Sharpen(p=1.0),
                        A.ToGray(p=1.0),
                    ],
                    n=2,
                    p=1.0,
                ),
                A.GaussianBlur(blur_limit=(3, 7), p=0.2),
                A.CoarseDropout(
                    num_holes_range=(1, 1), hole_height_range=(0.2, 0.4), hole_width_range=(0.2, 0.4), fill=0, p=0.2
                ),
            ],
            p=p,
        )
        pipe = A.Compose([flip, heavy])
    else:
        raise ValueError(f"augment must be full, flip or none, got {kind!r}")

    # The training loop reseeds the pipeline per sample (``_FaceDataset.reseed``): replayable after a resume.
    return SeededAlbumentations(pipe)


# ============================================================================= datasets
class _FaceDataset:
    """Shared ``__getitem__``: decode -> (align) -> augment -> normalised tensor."""

    num_classes: int
    align: str
    models: Path | None
    augment: Callable[[np.ndarray], np.ndarray] | None

    def _aligner(self) -> Any:
        al = getattr(self, "_aligner_obj", None)
        if al is None or getattr(self, "_aligner_pid", -1) != os.getpid():
            from medvit.shared.faces.align import FaceAligner

            al = FaceAligner.create(models=self.models)
            self._aligner_obj, self._aligner_pid = al, os.getpid()
        return al

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation for the next item (called by the training loop per sample)."""
        reseed(self.augment, seed)

    def _finish(self, img: np.ndarray, name: str, label: int) -> dict[str, Any]:
        import torch

        from medvit.apps.fiqa.model import preprocess_faces

        if img.shape[:2] != (FACE_SIZE, FACE_SIZE):
            if self.align == "never":
                raise DataError(
                    f"{name}: {img.shape[1]}x{img.shape[0]} px, expected an aligned 112x112 face crop "
                    "(set data.align=auto to detect and align on the fly)"
                )
            faces = self._aligner().detect_align(img, all_faces=False)
            if not faces:
                raise DataError(f"{name}: no face found for on-the-fly alignment")
            img = faces[0].crop
        if self.augment is not None:
            img = self.augment(img)
        x = preprocess_faces(np.ascontiguousarray(img)[None])[0]
        return {"image": x, "label": torch.tensor(label, dtype=torch.long)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_aligner_obj", None)  # detector sessions are rebuilt in each worker
        return state


class IdentityFolderDataset(_FaceDataset):
    """``root/<identity>/<image>`` -> ``{"image": [3, 112, 112], "label": int}``.

    Args:
        root: dataset folder; each sub-folder is one identity (sorted names -> labels 0..K-1).
        augment: image -> image callable (see :func:`build_augment`) or None.
        align: ``auto`` (faces that are not 112x112 are detected and aligned) or ``never``.
        models: insightface model folder for on-the-fly alignment.
        min_images: drop identities with fewer images.

    Raises:
        DataError: no identity folders or no images.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
        *,
        align: str = "auto",
        models: Path | None = None,
        min_images: int = 1,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder")
        self.items: list[tuple[str, int]] = []
        self.class_names: list[str] = []
        for d in (p for p in list_folder(self.root) if p.is_dir()):
            # check_file: an unreadable or dangling entry is named now, not by a loader worker midway through a run
            files = [str(check_file(f)) for f in list_folder(d) if f.name.lower().endswith(IMAGE_SUFFIXES)]
            if len(files) < max(1, min_images):
                continue
            label = len(self.class_names)
            self.class_names.append(d.name)
            self.items += [(f, label) for f in files]
        if not self.items:
            raise DataError(
                f"{self.root}: no identity folders with images ({', '.join(IMAGE_SUFFIXES)}); "
                "expected DATA/<identity>/*.jpg"
            )
        self.num_classes = len(self.class_names)
        self.augment, self.align, self.models = augment, align, models

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.items[i]
        return self._finish(read_face_file(path), path, label)


class RecordIODataset(_FaceDataset):
    """insightface ``train.rec`` + ``train.idx`` -> ``{"image": [3, 112, 112], "label": int}``.

    Args:
        path: the folder holding ``train.rec``/``train.idx``, or the ``.rec`` file.
        augment, align, models: as :class:`IdentityFolderDataset`.

    Attributes:
        num_classes: from the header record (``b - a``), else ``property`` (``num_classes,h,w``), else the
            largest label + 1 (reads every record header once).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
        *,
        align: str = "auto",
        models: Path | None = None,
    ) -> None:
        p = Path(path)
        rec = p / "train.rec" if p.is_dir() else p
        self.reader = RecordIOReader(rec, rec.with_suffix(".idx"))
        self.augment, self.align, self.models = augment, align, models
        keys = sorted(self.reader.keys)
        head, payload = unpack_record(self.reader.read_idx(keys[0]))
        self.header0: tuple[int, int] | None = None
        if keys[0] == 0 and head.flag > 0 and len(payload) == 0:
            if head.flag < 2:
                raise DataError(
                    f"{rec}: header record 0 carries {head.flag} label(s); insightface's header carries 2 "
                    "(first identity record, end of identity records)"
                )
            a = _whole_number(head.label[0], f"{rec}: header record 0, first identity record")
            b = _whole_number(head.label[1], f"{rec}: header record 0, end of identity records")
            if not 1 <= a <= b:
                raise DataError(f"{rec}: header record 0 declares identity records {a}..{b - 1}; corrupt header")
            self.header0 = (a, b)
            self.keys = [k for k in keys if 1 <= k < a]
            self.num_classes = self._bounded_classes(b - a, f"{rec}: header record 0")
        else:
            self.keys = keys
            self.num_classes = self._classes_without_header(rec.parent)
        if not self.keys:
            raise DataError(f"{rec}: the RecordIO set holds no image records")

    def _bounded_classes(self, n: int, where: str) -> int:
        """A class count, checked before a classifier of that many rows is allocated: every class needs an image."""
        if not 1 <= n <= max(len(self.keys), 1):
            raise DataError(
                f"{where} declares {n:,} identities but the set holds {len(self.keys):,} image records; "
                "corrupt header or property file"
            )
        return n

    def _classes_without_header(self, folder: Path) -> int:
        prop = folder / "property"
        if prop.is_file():
            try:
                with open(prop, encoding="utf-8") as fh:
                    text = fh.read(256)  # "num_classes,h,w": a few bytes; a huge file is not one
                value = int(text.split(",")[0])
            except (ValueError, OSError):
                logger.warning("%s: unreadable 'property' file; counting labels instead", prop)
            else:
                return self._bounded_classes(value, str(prop))
        # No declared count: the labels must run 0..K-1, so the largest one bounds K (and each is checked here).
        largest = max(self._label(k) for k in self.keys)
        return self._bounded_classes(largest + 1, f"{self.reader.rec_path}: the labels")

    def _label(self, key: int, num_classes: int | None = None) -> int:
        head, _ = unpack_record(self.reader.read_idx(key))
        return self._checked_label(head, key, num_classes)

    def _checked_label(self, head: IRHeader, key: int, num_classes: int | None) -> int:
        """The record's class, a whole number in ``[0, num_classes)`` (NaN, -3 or 500 of 100 are errors)."""
        name = f"{self.reader.rec_path}[{key}]"
        label = _whole_number(head.label if head.flag == 0 else head.label[0], f"{name}: label")
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise DataError(f"{name}: label {label} outside the set's classes {bound}")
        return label

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Any]:
        key = self.keys[i]
        head, payload = unpack_record(self.reader.read_idx(key))
        label = self._checked_label(head, key, self.num_classes)
        name = f"{self.reader.rec_path}[{key}]"
        return self._finish(decode_image(payload, name), name, label)


def _whole_number(value: Any, what: str) -> int:
    """A float32 label field as an int; NaN, infinities and fractions are corrupt data."""
    v = float(value)
    if not math.isfinite(v) or v != int(v):
        raise DataError(f"{what} is {v!r}, not a whole number; corrupt record")
    return int(v)


def open_training_set(
    path: str | os.PathLike[str],
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    align: str = "auto",
    models: Path | None = None,
    min_images: int = 1,
) -> IdentityFolderDataset | RecordIODataset:
    """Identity folders or a RecordIO set, chosen by what ``path`` holds.

    Raises:
        DataError: neither layout.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: training data not found")
    if p.suffix == ".rec" or (p.is_dir() and (p / "train.rec").is_file()):
        return RecordIODataset(p, augment, align=align, models=models)
    return IdentityFolderDataset(p, augment, align=align, models=models, min_images=min_images)


# ============================================================================= pair lists
@dataclass
class PairSet:
    """Verification pairs over a list of images.

    Attributes:
        name: dataset name (file stem).
        refs: one entry per image: a file path, or ``bin:<i>`` for images held in :attr:`blobs`.
        a: index into ``refs`` of each pair's first image ``[N]``.
        b: index of the second image ``[N]``.
        issame: genuine (True) or impostor ``[N]``.
        blobs: encoded images of a ``.bin`` set.
    """

    name: str
    refs: list[str]
    a: np.ndarray
    b: np.ndarray
    issame: np.ndarray
    blobs: list[bytes] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.issame.shape[0])

    def load(self, i: int) -> np.ndarray:
        """RGB uint8 image ``i``."""
        ref = self.refs[i]
        if ref.startswith("bin:"):
            return decode_image(self.blobs[int(ref[4:])], f"{self.name}[{ref[4:]}]")
        return read_face_file(ref)


def _find_image(root: Path, stem: str) -> str:
    for ext in IMAGE_SUFFIXES:
        cand = root / f"{stem}{ext}"
        if cand.is_file():
            return str(cand)
    if (root / stem).is_file():
        return str(root / stem)
    return str(root / f"{stem}.jpg")  # missing: reported when it is read


def read_pairs(path: str | os.PathLike[str], images: str | os.PathLike[str] | None = None) -> PairSet:
    """Read a pair list.

    Formats:
        * LFW ``pairs.txt``: first line ``folds<TAB>n`` (or ``n``), then ``name i j`` (genuine) and
          ``name1 i name2 j`` (impostor) lines; images ``<images>/<name>/<name>_<i:04d>.jpg``.
        * CR-FIQA ``pair_list.txt``: ``a b is_same`` lines; images ``<images>/<a>.jpg`` (default images folder:
          ``images/`` beside the list if it exists, else the list's folder).
        * insightface ``.bin``: images inside; pairs ``(2k, 2k+1)``.

    Args:
        path: the list.
        images: image root overriding the default.

    Raises:
        DataError: unreadable or malformed list (naming the line).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: pair list not found")
    if p.suffix == ".bin":
        from medvit.apps.fiqa.bin_reader import read_bin

        blobs, issame = read_bin(p)
        n = len(issame)
        return PairSet(
            p.stem, [f"bin:{i}" for i in range(len(blobs))], np.arange(n) * 2, np.arange(n) * 2 + 1, issame, blobs
        )
    try:
        lines = [ln.split() for ln in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{p}: cannot read the pair list ({err})") from None
    numbered = [(n, ln) for n, ln in enumerate(lines, 1) if ln and not ln[0].startswith("#")]
    if not numbered:
        raise DataError(f"{p}: empty pair list")
    first = numbered[0][1]
    if len(first) <= 2 and all(t.isdigit() for t in first):
        pairs = _lfw_pairs(p, numbered[1:], Path(images) if images is not None else p.parent)
    else:
        if images is not None:
            root = Path(images)
        else:
            root = p.parent / "images" if (p.parent / "images").is_dir() else p.parent
        pairs = _pair_list_pairs(p, numbered, root)
    if not pairs:
        raise DataError(f"{p}: no pairs")
    return _pair_set(p.stem, pairs)


def _lfw_pairs(p: Path, numbered: list[tuple[int, list[str]]], root: Path) -> list[tuple[str, str, bool]]:
    """``(image a, image b, genuine)`` of the ``name i j`` / ``name1 i name2 j`` lines of an LFW ``pairs.txt``."""
    pairs = []
    for n, ln in numbered:
        try:
            if len(ln) == 3:
                pa = _find_image(root / ln[0], f"{ln[0]}_{int(ln[1]):04d}")
                pb = _find_image(root / ln[0], f"{ln[0]}_{int(ln[2]):04d}")
                s = True
            elif len(ln) == 4:
                pa = _find_image(root / ln[0], f"{ln[0]}_{int(ln[1]):04d}")
                pb = _find_image(root / ln[2], f"{ln[2]}_{int(ln[3]):04d}")
                s = False
            else:
                raise ValueError
        except ValueError:
            raise DataError(f"{p}:{n}: expected 'name i j' or 'name1 i name2 j', got {' '.join(ln)!r}") from None
        pairs.append((pa, pb, s))
    return pairs


def _pair_list_pairs(p: Path, numbered: list[tuple[int, list[str]]], root: Path) -> list[tuple[str, str, bool]]:
    """``(image a, image b, genuine)`` of the ``a b is_same`` lines of a CR-FIQA ``pair_list.txt``."""
    pairs = []
    for n, ln in numbered:
        if len(ln) != 3 or ln[2] not in ("0", "1"):
            raise DataError(f"{p}:{n}: expected 'a b is_same' (is_same 0 or 1), got {' '.join(ln)!r}")
        pairs.append((_find_image(root, ln[0]), _find_image(root, ln[1]), ln[2] == "1"))
    return pairs


def _pair_set(name: str, pairs: list[tuple[str, str, bool]]) -> PairSet:
    """A :class:`PairSet` over the distinct images of ``pairs``, numbered in order of first appearance."""
    index: dict[str, int] = {}
    for pa, pb, _ in pairs:
        index.setdefault(pa, len(index))
        index.setdefault(pb, len(index))
    a = np.asarray([index[pa] for pa, _, _ in pairs])
    b = np.asarray([index[pb] for _, pb, _ in pairs])
    return PairSet(name, list(index), a, b, np.asarray([s for _, _, s in pairs], dtype=bool))


def pair_list_lines(pairs: PairSet, names: Sequence[str]) -> list[str]:
    """CR-FIQA ``pair_list.txt`` lines ``a b is_same`` for image names ``names`` (one per ref)."""
    return [f"{names[i]} {names[j]} {int(s)}" for i, j, s in zip(pairs.a, pairs.b, pairs.issame, strict=True)]
