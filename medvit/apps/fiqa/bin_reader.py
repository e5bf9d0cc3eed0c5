"""insightface verification ``.bin`` sets (LFW, AgeDB-30, CFP-FP, CALFW, CPLFW) read without running pickle code.

A ``.bin`` file is a pickle of ``(bins, issame_list)``: a list of encoded 112x112 JPEG/PNG images and a list of
booleans, pair ``k`` being images ``2k`` and ``2k+1`` (insightface ``recognition/arcface_torch/eval/
verification.py: load_bin``). Most were written by Python 2, so their byte strings need ``encoding="bytes"``.

``pickle.load`` on a downloaded file runs whatever callables the file names (``os.system`` in a ``__reduce__``
payload). The data itself needs no callable at all: lists, tuples, bools and byte strings have their own
opcodes. :class:`RestrictedUnpickler` therefore refuses every global, with one exception: Python 3 pickles of
protocol < 3 encode ``bytes`` as ``_codecs.encode(text, "latin1")``, which is replaced by a function that only
performs that exact latin-1 conversion. Anything else (``numpy`` arrays, ``os.system``...) is a
:class:`~medvit.shared.errors.DataError` raised before any object is built.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from medvit.shared.errors import DataError
from medvit.shared.files import atomic_path

__all__ = ["RestrictedUnpickler", "read_bin", "write_bin"]


class _Refused(pickle.UnpicklingError):
    """The file names a global we do not build."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """The only callable a ``.bin`` may name: ``_codecs.encode(str, 'latin1')`` (protocol-2 ``bytes``)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise _Refused(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only lists, tuples, dicts, bools, numbers, str and bytes.

    ``find_class`` is called whenever a pickle names a global (a class or function); it refuses all of them
    (except the harmless latin-1 ``bytes`` constructor above), so no code from the file ever runs.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise _Refused(f"refused to load global {module}.{name}")


def _check_lengths(data: bytes, path: Path) -> None:
    """Walk the opcodes once and refuse any length that the file cannot hold, before anything is allocated.

    The C unpickler trusts a byte string's declared length (``BINBYTES8`` can claim 2**63 bytes) and a frame's
    size, and allocates them up front: a 100-byte file can raise ``MemoryError``. :func:`pickletools.genops`
    reads each argument from the buffer itself, so a length beyond the end of the file only fails its read.

    Raises:
        DataError: a declared length that runs past the end of the file (truncated or hostile).
    """
    stream = io.BytesIO(data)
    try:
        for op, arg, pos in pickletools.genops(stream):
            if op.name == "FRAME" and isinstance(arg, int) and arg > len(data) - (pos or 0):
                raise DataError(
                    f"{path}: corrupt or truncated .bin (a frame at byte {pos} declares {arg:,} bytes; the file has "
                    f"{len(data):,})"
                )
    except ValueError as err:
        # genops: "expected N bytes in a bytes8, but only M remain", an unknown opcode, or no STOP at the end.
        raise DataError(f"{path}: corrupt or truncated .bin ({str(err).splitlines()[0][:200]})") from None


def read_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], np.ndarray]:
    """Read an insightface verification ``.bin``.

    Args:
        path: the file.

    Returns:
        ``(bins, issame)``: encoded images (``2 * N``) and ``[N]`` bool.

    Raises:
        DataError: missing/corrupt file, a length the file cannot hold (checked before decoding), a file that
            names any code (possibly malicious; nothing was run), or a structure other than
            ``(list of bytes, list of bool)``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: .bin file not found")
    data = p.read_bytes()
    _check_lengths(data, p)
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as err:
        raise DataError(
            f"{p}: refused to unpickle ({err}); an insightface .bin holds only images and booleans, so this "
            "file is not one (or was written with numpy objects): nothing from it was executed"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise DataError(f"{p}: corrupt or truncated .bin ({type(err).__name__}: {err})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise DataError(f"{p}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise DataError(f"{p}: the first element must be a list of encoded images (bytes)")
    if not isinstance(issame, (list, tuple)) or not all(isinstance(s, (bool, int)) for s in issame):
        raise DataError(f"{p}: the second element must be a list of booleans")
    if len(bins) != 2 * len(issame):
        raise DataError(f"{p}: {len(bins)} images for {len(issame)} pairs (expected 2 per pair)")
    return [bytes(b) for b in bins], np.asarray([bool(s) for s in issame], dtype=bool)


def write_bin(path: str | os.PathLike[str], bins: list[bytes], issame: list[bool], protocol: int = 4) -> Path:
    """Write a ``.bin`` the way insightface does (for tests and for exporting pair sets), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump((list(bins), [bool(s) for s in issame]), fh, protocol=protocol)
    return Path(path)
