"""Folder roots from environment variables, resolved lazily at call time.

Modelled on nnU-Net's ``nnunetv2/paths.py`` ``_EnvPath``: nothing is read at import, so importing medvit
never fails or warns because a variable is unset, and a test can set a variable with ``monkeypatch``
after import. Every root is overridable by a CLI option (pass it as ``override``).

========================  ==============================  ==========================================
variable                  default when unset              used for
========================  ==============================  ==========================================
``MEDVIT_WEIGHTS``        ``~/.cache/medvit/weights``     local backbone/app weights (never downloaded)
``MEDVIT_RUNS``           ``./runs``                      run directories (config.yaml, checkpoints)
``INSIGHTFACE_HOME``      ``~/.insightface/models``       insightface ONNX model folders
========================  ==============================  ==========================================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from medvit.shared.errors import ConfigError

__all__ = [
    "insightface_models_dir",
    "runs_dir",
    "weights_dir",
]


def _absolute(value: str | os.PathLike) -> Path:
    # Absolute at call time, so a run started from one folder still finds its files after a chdir.
    return Path(os.fspath(value)).expanduser().absolute()


class _EnvPath(os.PathLike):
    """A folder root named by an environment variable, read each time it is used.

    Args:
        var: Environment variable name.
        default: Called when the variable is unset or empty; None means the root is required.
        hint: Where to read more, appended to the error when a required root is unset.
    """

    def __init__(self, var: str, default: Callable[[], str | os.PathLike] | None = None, hint: str = "") -> None:
        self.var = var
        self.default = default
        self.hint = hint

    def get(self, override: str | os.PathLike | None = None) -> Path | None:
        """The root: ``override`` if given, else the variable, else the default (None if there is none)."""
        if override is not None and os.fspath(override) != "":
            return _absolute(override)
        value = os.environ.get(self.var, "").strip()
        if value:
            return _absolute(value)
        return _absolute(self.default()) if self.default is not None else None

    def require(self, override: str | os.PathLike | None = None) -> Path:
        """Like :meth:`get`, but raise :class:`ConfigError` naming the variable when there is no root."""
        path = self.get(override)
        if path is None:
            hint = f"; see {self.hint}" if self.hint else ""
            raise ConfigError(f"{self.var} is not set: export {self.var}=/path/to/folder or pass the option{hint}")
        return path

    def __fspath__(self) -> str:
        return os.fspath(self.require())

    def __repr__(self) -> str:
        return f"_EnvPath({self.var!r} -> {self.get()!s})"


WEIGHTS = _EnvPath("MEDVIT_WEIGHTS", lambda: Path.home() / ".cache" / "medvit" / "weights")
RUNS = _EnvPath("MEDVIT_RUNS", lambda: "runs")
INSIGHTFACE_MODELS = _EnvPath("INSIGHTFACE_HOME", lambda: Path.home() / ".insightface" / "models")


def weights_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder of local weights: ``override``, else ``$MEDVIT_WEIGHTS``, else ``~/.cache/medvit/weights``."""
    return WEIGHTS.require(override)


def runs_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder of run directories: ``override``, else ``$MEDVIT_RUNS``, else ``./runs`` (made absolute)."""
    return RUNS.require(override)


def insightface_models_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder of insightface ONNX models: ``override``, else ``$INSIGHTFACE_HOME``, else ``~/.insightface/models``.

    ``$INSIGHTFACE_HOME`` names the models folder itself (the one holding e.g. ``buffalo_l/``).
    """
    return INSIGHTFACE_MODELS.require(override)
