"""Lazy re-exports for package ``__init__`` modules (PEP 562), so that importing a package stays cheap.

``medvit``, ``medvit.shared.backbone`` and ``medvit.shared.engine`` re-export names whose modules import torch;
with :func:`lazy_getattr` the import happens on first use, and ``medvit --help`` never pays for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``table[name]`` on first access and returns its ``name``.

    Args:
        package: The package's ``__name__`` (for the error message).
        table: Exported name -> module that defines it.

    Returns:
        The function to assign to the package's ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 - the PEP 562 hook's own name
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
