"""The package's layers, enforced (README, "Layout of the code"):

    cli                       the front-end: click commands
    batch, serve, convert     documents -> records; the HTTP server; checkpoint -> bundle
    layout                    layout blocks -> text (document parsing)
    engine                    one page in, text out
    bundle, documents         the model on disk; paths -> page images
    errors, config, files     shared by every layer; they import no layer

A layer imports only the layers below it. Nothing imports cli, serve or compare (llama.cpp's own
vision path, kept for tests and benchmarks). The imports are read with ast, function-level ones
too (not those under `if TYPE_CHECKING:`), so a lazy import that crosses a layer the wrong way
fails here as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ppvl_batch"

# layer -> the layers its modules may import (besides their own and the shared modules)
ALLOWED: dict[str, set[str]] = {
    "cli": {"batch", "serve", "convert", "layout", "engine", "bundle", "documents", "compare"},
    "batch": {"layout", "engine", "bundle", "documents"},
    "serve": {"engine", "bundle", "documents"},
    "convert": {"engine", "bundle"},
    "layout": {"engine", "bundle", "documents"},
    "engine": {"bundle", "documents"},
    "bundle": set(),
    "documents": set(),
    "compare": {"engine", "bundle"},
}
SHARED = {"errors", "config", "files"}
COMPATIBILITY = {"recognizer"}  # the import path the README documents: a re-export of engine's


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the ppvl_batch modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("ppvl_batch"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("ppvl_batch"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, except what sits under `if TYPE_CHECKING:` (annotations only, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def layer_of(module: str) -> str | None:
    """The layer folder a module is in (None for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "demo" not in p.relative_to(PACKAGE).parts)
NAMES = {module_name(p) for p in MODULES}


def test_every_module_is_in_a_layer() -> None:
    loose = [
        module_name(p)
        for p in MODULES
        if layer_of(module_name(p)) not in {*ALLOWED, *SHARED, *COMPATIBILITY, None}
    ]
    assert not loose, f"modules outside every layer: {loose}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_follow_the_layers(path: Path) -> None:
    name = module_name(path)
    own = layer_of(name)
    if own in COMPATIBILITY or own is None:
        return
    allowed = SHARED if own in SHARED else ALLOWED[own]
    for target in sorted(imported_modules(path)):
        layer = layer_of(target)
        if layer in COMPATIBILITY:
            layer = "engine"
        if layer not in ALLOWED.keys() | SHARED or layer == own:
            continue  # the package root (its __version__), or this module's own layer
        if layer in SHARED and own not in SHARED:
            continue
        assert layer in allowed, f"{name} ({own}) imports {target} ({layer})"


def test_no_import_cycles() -> None:
    graph = {module_name(p): {t for t in imported_modules(p) if t in NAMES} - {module_name(p)} for p in MODULES}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            pytest.fail("import cycle: " + " -> ".join(stack[stack.index(node) :] + [node]))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            if not nxt.startswith(node + "."):  # a package re-exporting its own submodule
                visit(nxt, stack + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
