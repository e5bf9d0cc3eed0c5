"""One writer per output folder: an exclusive lock file naming its owner.

Two batch jobs (or two trainings) writing into one folder at the same time interleave their manifests and
checkpoints and lose results without an error. Every command that writes a folder holds
:class:`FolderLock` on it for its whole run: a second command gets a clear error naming the owner (pid,
host, start time) instead of silently sharing the folder.

- The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems) holding
  JSON: pid, host, the process start time, when it was taken and the command that took it.
- Stale locks are detected, not waited on: on the same host, a lock whose pid is gone (or now belongs to
  another process, told by the process start time in ``/proc``) is removed with a warning. A lock of another
  host cannot be checked from here; the error says which file to remove if that run is gone.
- Under ``torchrun`` every rank holds its own lock (``.medvit.lock.rank{r}``); a single-process run conflicts
  with any of them, and a distributed run with a single-process lock or with its own rank's lock.

Why our own: ``filelock``/``fcntl.flock`` locks vanish with the process and are advisory across NFS, so they
cannot tell a user *who* holds the folder, and they need no stale detection because they never outlive
their owner; a lock that names its owner and is visible in ``ls -a`` is what a shared cluster folder needs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from medvit.shared.errors import DataError

logger = logging.getLogger(__name__)

LOCK_NAME = ".medvit.lock"
_HELD: dict[str, int] = {}  # lock paths this process holds -> nesting depth (an app's lock around run_batch's)
_UNWRITTEN_GRACE_S = 10.0  # a lock file still empty this long after its creation was left by a kill


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is parenthesised and may contain spaces: split after its closing paren.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def _owner_gone(owner: dict[str, Any]) -> bool:
    """True when the lock's owner ran on this host and is no longer running."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if not _pid_alive(pid):
        return True
    started = owner.get("proc_start")
    now = _proc_start(pid)
    return started is not None and now is not None and str(started) != now  # the pid was reused


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The lock's JSON, ``{}`` when it is empty or unreadable, None when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unknown process"
    when = owner.get("since")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"
    command = f"`{owner['command']}` " if owner.get("command") else ""
    return f"{command}pid {owner.get('pid', '?')} on {owner.get('host', '?')}, since {since}"


def _lock_name(rank: int, world: int) -> str:
    return LOCK_NAME if world <= 1 else f"{LOCK_NAME}.rank{rank}"


class FolderLock:
    """Exclusive ownership of an output folder for one run (a context manager).

    Args:
        folder: The folder to own; created if needed.
        command: What takes the lock, shown to a user who meets it, e.g. ``"fiqa score"``.
        rank: This process's rank under ``torchrun`` (0 otherwise).
        world: Number of ranks (1 for a single process).

    Raises:
        DataError: (on enter) another live run holds the folder.
    """

    def __init__(self, folder: str | os.PathLike[str], command: str = "", *, rank: int = 0, world: int = 1) -> None:
        self.folder = Path(folder)
        self.command = command
        self.rank, self.world = rank, world
        self.path = self.folder / _lock_name(rank, world)
        self._token: str | None = None
        self._key = os.path.abspath(self.path)
        self._nested = False

    def _conflicts(self) -> list[Path]:
        """Other lock files that exclude this one."""
        if self.world <= 1:
            return sorted(p for p in self.folder.glob(f"{LOCK_NAME}*") if p != self.path)
        single = self.folder / LOCK_NAME
        return [single]

    def _check_live(self, path: Path) -> None:
        """Raise if ``path`` is a live lock; remove it if its owner is gone."""
        owner = _read_owner(path)
        if owner is None:
            return
        if not owner:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return
            if age < _UNWRITTEN_GRACE_S:  # being written right now by its creator
                raise DataError(f"output folder {self.folder} is being locked by another run ({path.name}); retry")
        elif not _owner_gone(owner):
            raise DataError(
                f"output folder {self.folder} is in use by another run ({_describe(owner)}); wait for it to finish "
                f"or choose another output folder. If that run is gone, remove {path}"
            )
        logger.warning("removing a stale lock %s left by %s", path, _describe(owner))
        path.unlink(missing_ok=True)

    def acquire(self) -> None:
        """Take the lock (see the class docstring for what conflicts); a no-op nested in this process's own."""
        if _HELD.get(self._key):
            _HELD[self._key] += 1
            self._nested = True
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create output folder {self.folder}: {exc.strerror or exc}") from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "proc_start": _proc_start(os.getpid()),
            "since": time.time(),
            "command": self.command or Path(sys.argv[0]).name,
            "token": f"{os.getpid()}-{time.time_ns()}",
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_live(self.path)  # raises if live, removes it if stale
                continue
            except OSError as exc:  # a read-only or full file system, no permission
                raise DataError(f"cannot write to output folder {self.folder}: {exc.strerror or exc}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            break
        else:
            raise DataError(f"cannot lock output folder {self.folder}: {self.path} keeps reappearing")
        self._token = me["token"]
        _HELD[self._key] = 1
        # Created first, checked second: of two runs starting together, at least one sees the other.
        try:
            for other in self._conflicts():
                self._check_live(other)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Remove the lock if it is still this run's (never another run's that replaced a stale one)."""
        if self._nested:
            _HELD[self._key] -= 1
            self._nested = False
            return
        if self._token is None:
            return
        _HELD.pop(self._key, None)
        owner = _read_owner(self.path)
        if owner is not None and owner.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
