"""Fixtures shared by every test folder: unreadable paths (even as root), simulated kills of a training run."""

from __future__ import annotations

import builtins
import errno
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _still_readable(path: Path) -> bool:
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
    except PermissionError:
        return False
    return True


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], Path]]:
    """``unreadable(path)``: take the read permission of a file or folder away (mode 000).

    Under a normal user the kernel then refuses every read. Root ignores mode bits, so where the path still
    reads after the chmod (and only there), the kernel's refusal is reproduced in this process: ``os.open``,
    ``os.listdir``, ``os.scandir`` and ``open`` raise the same ``PermissionError`` for that path. Modes are put
    back afterwards so that pytest can remove ``tmp_path``.
    """
    changed: list[tuple[Path, int]] = []
    denied: set[str] = set()

    def deny(*names: str) -> None:
        for mod, name in ((os, "open"), (os, "listdir"), (os, "scandir"), (builtins, "open"), (io, "open")):
            original = getattr(mod, name)

            def refusing(target: object, *args: object, _original: Callable = original, **kwargs: object) -> object:
                if isinstance(target, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(target)) in denied:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(target))
                return _original(target, *args, **kwargs)

            monkeypatch.setattr(mod, name, refusing)

    def make(path: Path) -> Path:
        changed.append((path, path.stat().st_mode & 0o7777))
        path.chmod(0)
        if _still_readable(path):
            if not denied:
                deny()
            denied.add(os.path.realpath(path))
        return path

    yield make
    for path, mode in reversed(changed):
        path.chmod(mode)


class _KillAt:
    """Raises KeyboardInterrupt from ``on_step_end`` at ``step``: a kill right after that step's checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: Any) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt(f"simulated kill after step {state.step}")


@pytest.fixture
def kill_training_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Callable[[], None]]:
    """Arm a simulated kill of every ``fit`` call (any app, any import style) after step ``k``; returns a disarm.

    The hook runs after the step's checkpoint is written, as a ``kill -9`` landing between two steps would.
    """
    from medvit.shared.engine import fit as fit_module

    original = fit_module._Trainer.__init__

    def arm(step: int) -> Callable[[], None]:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            self.hooks.append(_KillAt(step))

        monkeypatch.setattr(fit_module._Trainer, "__init__", init)
        return lambda: monkeypatch.setattr(fit_module._Trainer, "__init__", original)

    return arm


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding a ``slow`` test first, longest learning loops (the demo parts) at the head.

    ``make test`` runs two workers that take one file at a time in collection order (``--dist loadfile``); started
    last, a several-minute file would leave the other worker idle at the end. The order within a file is kept.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        if item.path.name == "test_demo.py":
            return 0
        return 1 if item.path in slow else 2

    items.sort(key=rank)  # stable: files and their tests keep their relative order
