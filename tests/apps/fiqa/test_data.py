"""RecordIO (byte-level format), identity folders, pair lists, augmentation, and the restricted .bin reader."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from medvit.apps.fiqa.bin_reader import read_bin, write_bin
from medvit.apps.fiqa.data import (
    RECORDIO_MAGIC,
    IdentityFolderDataset,
    IRHeader,
    RecordIODataset,
    RecordIOReader,
    RecordIOWriter,
    build_augment,
    open_training_set,
    pack_record,
    read_pairs,
    unpack_record,
)
from medvit.shared.errors import DataError


def _face(seed: int, colour: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    img[..., colour] = 250
    return img


def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img[..., ::-1])[1].tobytes()  # PNG: lossless, so pixels can be compared


def _write_insightface_set(root: Path, labels: list[int], header: bool) -> list[np.ndarray]:
    """A train.rec/.idx as insightface's MS1MV2 ships it: record 0 = header (a, b), images 1..a-1, then one
    record per identity holding its image range."""
    imgs = [_face(i, colour=lab % 3) for i, lab in enumerate(labels)]
    n_ids = max(labels) + 1
    with RecordIOWriter(root / "train.rec", root / "train.idx") as w:
        if header:
            a = len(imgs) + 1
            w.write_idx(0, pack_record(IRHeader(2, [a, a + n_ids], 0, 0), b""))
        for i, (img, lab) in enumerate(zip(imgs, labels, strict=True)):
            key = i + 1 if header else i
            w.write_idx(key, pack_record(IRHeader(0, float(lab), key, 0), _jpeg(img)))
        if header:
            for k in range(n_ids):
                members = [i + 1 for i, lab in enumerate(labels) if lab == k]
                w.write_idx(len(imgs) + 1 + k, pack_record(IRHeader(2, [members[0], members[-1] + 1], 0, 0), b""))
    return imgs


def test_recordio_bytes_follow_the_dmlc_layout(tmp_path: Path) -> None:
    payload = pack_record(IRHeader(0, 7.0, 3, 0), b"abcde")
    with RecordIOWriter(tmp_path / "x.rec", tmp_path / "x.idx") as w:
        w.write_idx(5, payload)
        w.write_idx(9, pack_record(IRHeader(0, 1.0, 4, 0), b"xy"))
    raw = (tmp_path / "x.rec").read_bytes()
    magic, lrec = struct.unpack("<II", raw[:8])
    assert magic == RECORDIO_MAGIC and lrec >> 29 == 0 and lrec & ((1 << 29) - 1) == len(payload) == 29
    assert raw[8 : 8 + 24] == struct.pack("<IfQQ", 0, 7.0, 3, 0)  # IRHeader 'IfQQ'
    assert raw[8 + 24 : 8 + 29] == b"abcde" and raw[8 + 29 : 8 + 32] == b"\0\0\0"  # padded to 4 bytes
    assert (tmp_path / "x.idx").read_text() == "5\t0\n9\t40\n"
    reader = RecordIOReader(tmp_path / "x.rec")
    head, body = unpack_record(reader.read_idx(9))
    assert head.label == 1.0 and head.id == 4 and body == b"xy"


def test_recordio_payload_containing_the_magic_is_split_and_rejoined(tmp_path: Path) -> None:
    magic = struct.pack("<I", RECORDIO_MAGIC)
    data = b"A" * 24 + magic + b"BBBB" + magic + b"tail!"  # magic at aligned offsets 24 and 32
    with RecordIOWriter(tmp_path / "m.rec", tmp_path / "m.idx") as w:
        w.write_idx(0, data)
    raw = (tmp_path / "m.rec").read_bytes()
    flags = []
    pos = 0
    while pos < len(raw):
        mg, lrec = struct.unpack("<II", raw[pos : pos + 8])
        assert mg == RECORDIO_MAGIC
        flags.append(lrec >> 29)
        pos += 8 + (((lrec & ((1 << 29) - 1)) + 3) & ~3)
    assert flags == [1, 2, 3]  # first, middle, last part
    assert RecordIOReader(tmp_path / "m.rec").read_idx(0) == data


@pytest.mark.parametrize("header", [True, False])
def test_recordio_dataset_reads_images_and_labels(tmp_path: Path, header: bool) -> None:
    labels = [0, 0, 1, 2, 2, 1]
    imgs = _write_insightface_set(tmp_path, labels, header)
    ds = open_training_set(tmp_path, align="never")
    assert isinstance(ds, RecordIODataset)
    assert len(ds) == len(labels) and ds.num_classes == 3
    assert (ds.header0 is not None) == header
    for i in (0, 3, 5):
        item = ds[i]
        assert int(item["label"]) == labels[i]
        expected = (torch.from_numpy(imgs[i]).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
        torch.testing.assert_close(item["image"], expected)  # RGB order kept through the BGR codec


def test_recordio_multi_label_records_take_the_first_float(tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        for i in range(3):
            w.write_idx(i, pack_record(IRHeader(0, [float(i), 9.0], i, 0), _jpeg(_face(i))))
    ds = RecordIODataset(tmp_path, align="never")
    assert [int(ds[i]["label"]) for i in range(3)] == [0, 1, 2] and ds.num_classes == 3


def test_recordio_corruption_is_a_clear_error(tmp_path: Path) -> None:
    _write_insightface_set(tmp_path, [0, 1], header=False)
    raw = bytearray((tmp_path / "train.rec").read_bytes())
    raw[0:4] = b"\0\0\0\0"
    (tmp_path / "train.rec").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="bad magic"):
        RecordIOReader(tmp_path / "train.rec").read_idx(0)
    (tmp_path / "train.idx").write_text("0\t99999999\n")
    with pytest.raises(DataError, match="outside"):
        RecordIOReader(tmp_path / "train.rec")


def test_identity_folders(tmp_path: Path) -> None:
    for name, n in (("bob", 2), ("alice", 3), ("carol", 1)):
        (tmp_path / name).mkdir()
        for k in range(n):
            cv2.imwrite(str(tmp_path / name / f"{k}.png"), _face(k)[..., ::-1])
    (tmp_path / "notes.txt").write_text("ignored")
    ds = IdentityFolderDataset(tmp_path, min_images=2, align="never")
    assert ds.class_names == ["alice", "bob"] and len(ds) == 5 and ds.num_classes == 2
    assert int(ds[4]["label"]) == 1 and tuple(ds[0]["image"].shape) == (3, 112, 112)
    with pytest.raises(DataError, match="identity folders"):
        IdentityFolderDataset(tmp_path / "carol", align="never")


def test_unaligned_image_with_align_never_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "x.png"), np.zeros((200, 150, 3), np.uint8))
    with pytest.raises(DataError, match="150x200 px"):
        IdentityFolderDataset(tmp_path, align="never")[0]


@pytest.mark.parametrize("kind", ["full", "flip"])
def test_augment_keeps_shape_and_type(kind: str) -> None:
    aug = build_augment(kind, p=1.0)
    out = aug(_face(0))
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    assert build_augment("none") is None


@pytest.mark.parametrize("kind", ["full", "flip"])
def test_augment_replays_from_its_seed(kind: str) -> None:
    """The same seed gives the same augmented image, whatever ran before (the training loop's per-sample reseed)."""
    aug = build_augment(kind, p=1.0)

    def run(seed: int) -> list[np.ndarray]:
        out = []
        for i in range(12):
            aug.reseed(seed * 100 + i)
            out.append(aug(_face(i % 3)))
        return out

    a, c, b = run(0), run(1), run(0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_lfw_and_crfiqa_pair_lists(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text("1\t2\nann\t1\t2\nbo\t1\t3\nann\t1\tbo\t2\nann\t2\tbo\t3\n")
    ps = read_pairs(tmp_path / "pairs.txt")
    assert list(ps.issame) == [True, True, False, False]
    assert ps.refs[ps.a[0]] == str(tmp_path / "ann" / "ann_0001.jpg")
    assert ps.refs[ps.b[3]] == str(tmp_path / "bo" / "bo_0003.jpg")
    assert len(ps.refs) == 5  # ann_1, ann_2, bo_1, bo_3, bo_2
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "0.png"), _face(0)[..., ::-1])
    (tmp_path / "pair_list.txt").write_text("0 1 1\n2 3 0\n")
    pl = read_pairs(tmp_path / "pair_list.txt")
    assert list(pl.issame) == [True, False] and pl.refs[0] == str(tmp_path / "images" / "0.png")
    (tmp_path / "bad.txt").write_text("a b maybe\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        read_pairs(tmp_path / "bad.txt")


# ------------------------------------------------------------------------------------------------ .bin
@pytest.mark.parametrize("protocol", [2, 4])
def test_bin_reader_reads_images_and_pairs(tmp_path: Path, protocol: int) -> None:
    imgs = [_face(i) for i in range(4)]
    write_bin(tmp_path / "lfw.bin", [_jpeg(x) for x in imgs], [True, False], protocol=protocol)
    bins, issame = read_bin(tmp_path / "lfw.bin")
    assert list(issame) == [True, False] and len(bins) == 4
    ps = read_pairs(tmp_path / "lfw.bin")
    assert list(ps.a) == [0, 2] and list(ps.b) == [1, 3]
    np.testing.assert_array_equal(ps.load(3), imgs[3])


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.makedirs, (str(self.target),))


def test_bin_reader_refuses_a_malicious_pickle_without_running_it(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    payload = pickle.dumps(([_Evil(target)], [True]), protocol=4)
    (tmp_path / "evil.bin").write_bytes(payload)
    with pytest.raises(DataError, match=r"refused to load global posix\.makedirs|refused to load global os\."):
        read_bin(tmp_path / "evil.bin")
    assert not target.exists()
    # Plain pickle would have run it: the payload is live.
    pickle.loads(payload)
    assert target.exists()


def test_bin_reader_refuses_numpy_objects_and_bad_structure(tmp_path: Path) -> None:
    (tmp_path / "np.bin").write_bytes(pickle.dumps(([b"x", b"y"], np.array([True]))))
    with pytest.raises(DataError, match="refused"):
        read_bin(tmp_path / "np.bin")
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([b"x"], [True])))
    with pytest.raises(DataError, match="2 per pair"):
        read_bin(tmp_path / "odd.bin")
    (tmp_path / "cut.bin").write_bytes(pickle.dumps(([b"x", b"y"], [True]))[:-5])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_bin(tmp_path / "cut.bin")


# ------------------------------------------------------------------------------------------------ hostile RecordIO
def _labelled_set(root: Path, labels: list[float], n_classes: int | None) -> None:
    """Records with tiny payloads (labels are checked before any image is decoded) and an optional header."""
    n = len(labels)
    with RecordIOWriter(root / "train.rec", root / "train.idx") as w:
        if n_classes is not None:
            w.write_idx(0, pack_record(IRHeader(2, [n + 1, n + 1 + n_classes], 0, 0), b""))
        for i, lab in enumerate(labels):
            key = i + 1 if n_classes is not None else i
            w.write_idx(key, pack_record(IRHeader(0, lab, key, 0), b"not an image"))


@pytest.mark.parametrize("bad", [-3.0, 500.0, 100.0, float("nan"), 2.5, float("inf")])
def test_recordio_labels_outside_the_classes_are_refused_before_decoding(tmp_path: Path, bad: float) -> None:
    labels = [float(i) for i in range(100)] + [bad]
    _labelled_set(tmp_path, labels, n_classes=100)
    ds = RecordIODataset(tmp_path, align="never")
    assert ds.num_classes == 100
    with pytest.raises(DataError, match=r"train\.rec\[101\]: label") as info:
        ds[100]
    assert "outside the set's classes 0..99" in str(info.value) or "not a whole number" in str(info.value)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ((1, [3.0]), "header record 0 carries 1 label"),
        ((2, [float("nan"), 5.0]), "first identity record is nan"),
        ((2, [3.0, float("inf")]), "end of identity records is inf"),
        ((2, [3.0, 1.0]), r"declares identity records 3\.\.0"),
        ((2, [3.0, 3.0 + 2**30]), "declares 1,073,741,821 identities but the set holds 2 image records"),  # float32
    ],
)
def test_recordio_hostile_headers(tmp_path: Path, header: tuple[int, list[float]], match: str) -> None:
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, pack_record(IRHeader(header[0], header[1], 0, 0), b""))
        for k in (1, 2):
            w.write_idx(k, pack_record(IRHeader(0, 0.0, k, 0), b"x"))
    with pytest.raises(DataError, match=match):
        RecordIODataset(tmp_path, align="never")


@pytest.mark.parametrize("text", ["1000000000,112,112", "0,112,112", "-5,112,112"])
def test_recordio_property_class_count_is_bounded(tmp_path: Path, text: str) -> None:
    _labelled_set(tmp_path, [0.0, 1.0], n_classes=None)
    (tmp_path / "property").write_text(text)
    with pytest.raises(DataError, match=r"property declares .* identities but the set holds 2 image records"):
        RecordIODataset(tmp_path, align="never")


def test_recordio_labels_counted_without_header_must_be_whole_and_bounded(tmp_path: Path) -> None:
    _labelled_set(tmp_path, [0.0, 1e9], n_classes=None)
    with pytest.raises(DataError, match="declares 1,000,000,001 identities"):
        RecordIODataset(tmp_path, align="never")
    _labelled_set(tmp_path, [0.0, -1.0], n_classes=None)
    with pytest.raises(DataError, match=r"\[1\]: label -1 outside"):
        RecordIODataset(tmp_path, align="never")


def test_recordio_length_is_checked_against_the_file_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medvit.apps.fiqa.data as data_mod

    rec = tmp_path / "train.rec"
    rec.write_bytes(struct.pack("<II", RECORDIO_MAGIC, (1 << 29) - 1) + b"\0" * 32)
    (tmp_path / "train.idx").write_text("0\t0\n")
    requested: list[int] = []
    real_pread = os.pread

    def spy(fd: int, n: int, offset: int) -> bytes:
        requested.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(data_mod.os, "pread", spy)
    with pytest.raises(DataError, match="declares 536870911 bytes but the file ends at byte 40"):
        RecordIOReader(rec).read_idx(0)
    assert max(requested) <= rec.stat().st_size  # pread never asked for the 512 MiB the record claims
    rec.write_bytes(struct.pack("<II", RECORDIO_MAGIC, (5 << 29) | 4) + b"\0" * 4)
    with pytest.raises(DataError, match="bad part flag 5"):
        RecordIOReader(rec).read_idx(0)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.",  # BINBYTES8
        b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"abc.",  # BINUNICODE8
        b"\x80\x03B" + struct.pack("<I", 2**31) + b"abc.",  # BINBYTES
        b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"abc.",  # BYTEARRAY8
        b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N.",  # FRAME
    ],
    ids=["bytes8", "unicode8", "bytes4", "bytearray8", "frame"],
)
def test_bin_lengths_are_checked_before_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes
) -> None:
    from medvit.apps.fiqa import bin_reader

    def refuse(self: object) -> None:
        raise AssertionError("the unpickler ran on a hostile length")

    monkeypatch.setattr(bin_reader.RestrictedUnpickler, "load", refuse)
    (tmp_path / "huge.bin").write_bytes(payload)
    with pytest.raises(DataError, match=r"huge\.bin: corrupt or truncated \.bin \(.*(remain|declares)"):
        read_bin(tmp_path / "huge.bin")
