"""The layers of ARCHITECTURE.md, read from the import graph (AST, no imports executed); no exceptions list.

- ``medvit.shared`` imports neither an app, nor ``medvit.pretrain``, nor an entry point;
- ``medvit.pretrain`` imports no app; an app imports neither another app nor ``medvit.pretrain``;
- CLI modules and config modules import no heavy library at import time (``medvit --help`` stays fast);
- no function of a package root in :data:`SHORT_FUNCTION_ROOTS` is longer than :data:`MAX_FUNCTION_LINES` lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import medvit

PACKAGE = Path(medvit.__file__).parent
ENTRY_POINTS = {"medvit.cli", "medvit.demo", "medvit.__main__", "medvit.weights_cli"}
HEAVY = ("torch", "torchvision", "monai", "timm", "cv2", "albumentations", "numpy", "scipy", "skimage", "nibabel")
HEAVY += ("pydicom", "onnxruntime", "insightface", "matplotlib", "safetensors", "dlib")

MAX_FUNCTION_LINES = 80
"""Longest function (from its ``def`` line to its last line, decorators excluded) in :data:`SHORT_FUNCTION_ROOTS`."""
SHORT_FUNCTION_ROOTS = ["shared", "pretrain", "apps"]
"""Package roots (relative to ``medvit/``) held to :data:`MAX_FUNCTION_LINES`: every app and library layer."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> list[tuple[str, Path]]:
    return sorted((_module_name(p), p) for p in PACKAGE.rglob("*.py"))


def _imports(path: Path, *, top_level_only: bool = False) -> Iterator[tuple[str, int]]:
    """``(imported module, line)``; relative imports resolved; ``top_level_only`` skips function bodies and
    ``if TYPE_CHECKING:`` blocks (what runs at import time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)

    def visit(nodes: list[ast.stmt]) -> Iterator[tuple[str, int]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node.lineno
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    yield ".".join([*base, *([node.module] if node.module else [])]), node.lineno
                elif node.module:
                    yield node.module, node.lineno
            elif top_level_only:
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                if isinstance(node, (ast.If, ast.Try, ast.With)):
                    for block in (
                        getattr(node, "body", []),
                        getattr(node, "orelse", []),
                        getattr(node, "finalbody", []),
                    ):
                        yield from visit(block)
                    for handler in getattr(node, "handlers", []):
                        yield from visit(handler.body)
            else:
                yield from visit(list(ast.iter_child_nodes(node)))  # type: ignore[arg-type]

    yield from visit(tree.body)


def _layer(module: str) -> tuple[str, str]:
    parts = module.split(".")
    if module in ENTRY_POINTS or module == "medvit":
        return "entry", module
    if parts[1] == "apps":
        return "app", parts[2] if len(parts) > 2 else ""
    if parts[1] in ("shared", "pretrain"):
        return parts[1], ""
    return "other", module


def _forbidden(importer: str, imported: str) -> bool:
    (a, a_app), (b, b_app) = _layer(importer), _layer(imported)
    if a == "shared":
        return b in ("app", "pretrain", "entry")
    if a == "pretrain":
        return b in ("app", "entry")
    if a == "app":
        return (b == "app" and b_app != a_app and a_app != "") or b in ("pretrain", "entry")
    return False


def test_every_module_sits_in_a_known_layer() -> None:
    assert [m for m, _ in _modules() if _layer(m)[0] == "other"] == []


def test_no_upward_or_sideways_import() -> None:
    bad = []
    for module, path in _modules():
        for imported, line in _imports(path):
            if imported.startswith("medvit.") and _forbidden(module, imported):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {imported}")
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize("module", [m for m, _ in _modules() if m.endswith(("cli", "config")) or m in ENTRY_POINTS])
def test_cli_and_config_modules_import_nothing_heavy_at_import_time(module: str) -> None:
    path = dict(_modules())[module]
    heavy = [
        f"{imported} (line {line})"
        for imported, line in _imports(path, top_level_only=True)
        if imported.split(".")[0] in HEAVY
    ]
    assert heavy == [], f"{module} imports at import time: {heavy}"


def test_the_rules_catch_what_they_forbid() -> None:
    assert _forbidden("medvit.shared.backbone.weights", "medvit.apps.fiqa.api")
    assert not _forbidden("medvit.weights_cli", "medvit.apps.fiqa")
    assert _forbidden("medvit.apps.fiqa.api", "medvit.apps.ct_seg.data")
    assert _forbidden("medvit.apps.ct_seg.api", "medvit.pretrain.api")
    assert _forbidden("medvit.pretrain.api", "medvit.apps.ct_seg.model")
    assert not _forbidden("medvit.apps.fiqa.api", "medvit.apps.fiqa.model")
    assert not _forbidden("medvit.cli", "medvit.apps.fiqa.cli")
    assert not _forbidden("medvit.apps.fiqa.api", "medvit.shared.engine.fit")


def test_weights_cli_lists_the_backbone_formats_the_shared_layer_converts() -> None:
    from medvit import weights_cli
    from medvit.shared.backbone.weights import FORMATS

    assert weights_cli._BACKBONE_FORMATS == FORMATS
    assert "vit-fiqa" in weights_cli._format_names()  # registered by the fiqa package


def _function_lengths(source: str) -> Iterator[tuple[str, int, int]]:
    """``(name, def line, lines)`` of every function and method, nested ones included; a function's lines run from
    its ``def`` to its last line (decorators excluded)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("root", SHORT_FUNCTION_ROOTS)
def test_no_function_over_80_lines(root: str) -> None:
    folder = PACKAGE / root
    assert folder.is_dir(), f"{folder}: not a package root"
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name} has {n} lines"
        for path in sorted(folder.rglob("*.py"))
        for name, line, n in _function_lengths(path.read_text(encoding="utf-8"))
        if n > MAX_FUNCTION_LINES
    ]
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(long)


def test_function_length_counts_from_def_to_last_line() -> None:
    source = "@decorator\n@other(1)\ndef f(\n    a,\n):\n    def g():\n        pass\n\n    return a\n"
    assert sorted(_function_lengths(source)) == [("f", 3, 7), ("g", 6, 2)]
