"""The package's layers, enforced (README, "Layout of the code"):

    cli                       the front-end: click commands
    batch, serve, convert     documents -> records; the HTTP server; checkpoint -> bundle
    outputs                   records -> searchable PDF, hOCR, ALTO
    layout                    layout blocks -> text (document parsing)
    engine                    one page in, text out
    bundle, documents         the model on disk; paths -> page images
    errors, config, files, hf shared by every layer; they import no layer (hf: transformers, adapted)

A layer imports only the layers below it. Nothing imports cli, serve or compare (llama.cpp's own
vision path, kept for tests and benchmarks). The imports are read with ast, function-level ones
too (not those under `if TYPE_CHECKING:`), so a lazy import that crosses a layer the wrong way
fails here as well.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ppvl_batch"

# layer -> the layers its modules may import (besides their own and the shared modules)
ALLOWED: dict[str, set[str]] = {
    "cli": {"batch", "serve", "convert", "outputs", "layout", "engine", "bundle", "documents", "compare"},
    "batch": {"outputs", "layout", "engine", "bundle", "documents"},
    "outputs": {"layout", "documents"},
    "serve": {"engine", "bundle", "documents"},
    "convert": {"engine", "bundle"},
    "layout": {"engine", "bundle", "documents"},
    "engine": {"bundle", "documents"},
    "bundle": set(),
    "documents": set(),
    "compare": {"engine", "bundle"},
}
SHARED = {"errors", "config", "files", "hf"}
COMPATIBILITY = {"recognizer"}  # the import path the README documents: a re-export of engine's


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package_dir: Path = PACKAGE) -> set[str]:
    """Absolute names of the ppvl_batch modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, package_dir)
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


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
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


def layer_violations(name: str, imports: set[str]) -> list[str]:
    """The imports of module `name` that cross the layers the wrong way, as messages."""
    own = layer_of(name)
    if own in COMPATIBILITY or own is None:
        return []
    allowed = SHARED if own in SHARED else ALLOWED[own]
    wrong = []
    for target in sorted(imports):
        layer = layer_of(target)
        if layer in COMPATIBILITY:
            layer = "engine"
        if layer not in ALLOWED.keys() | SHARED or layer == own:
            continue  # the package root (its __version__), or this module's own layer
        if layer in SHARED and own not in SHARED:
            continue
        if layer not in allowed:
            wrong.append(f"{name} ({own}) imports {target} ({layer})")
    return wrong


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of a module graph (module -> modules it imports), or None."""
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if not nxt.startswith(node + "."):  # a package re-exporting its own submodule
                cycle = visit(nxt, stack + [node])
                if cycle:
                    return cycle
        done.add(node)
        return None

    for name in sorted(graph):
        cycle = visit(name, [])
        if cycle:
            return cycle
    return None


def module_graph(package_dir: Path) -> dict[str, set[str]]:
    paths = [p for p in package_dir.rglob("*.py") if "demo" not in p.relative_to(package_dir).parts]
    names = {module_name(p, package_dir) for p in paths}
    return {
        module_name(p, package_dir): {t for t in imported_modules(p, package_dir) if t in names} - {module_name(p, package_dir)}
        for p in paths
    }


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "demo" not in p.relative_to(PACKAGE).parts)


def test_every_module_is_in_a_layer() -> None:
    loose = [
        module_name(p)
        for p in MODULES
        if layer_of(module_name(p)) not in {*ALLOWED, *SHARED, *COMPATIBILITY, None}
    ]
    assert not loose, f"modules outside every layer: {loose}"


def test_the_layers_are_ordered() -> None:
    """ALLOWED itself has no cycle: no two layers may import each other, even through a third."""
    assert find_cycle({layer: set(below) for layer, below in ALLOWED.items()}) is None


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_follow_the_layers(path: Path) -> None:
    assert layer_violations(module_name(path), imported_modules(path)) == []


def test_no_import_cycles() -> None:
    cycle = find_cycle(module_graph(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A synthetic ppvl_batch under `root`: relative path -> source."""
    for relative, source in files.items():
        path = root / "ppvl_batch" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root / "ppvl_batch"


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """The checks above on a made-up package: an engine module that imports batch (at module
    level, inside a function, relatively or absolutely) is caught; one under TYPE_CHECKING is not;
    two modules importing each other are a cycle."""
    package = write_package(tmp_path, {
        "__init__.py": "",
        "engine/__init__.py": "",
        "engine/upward.py": "from ..batch import work\n",
        "engine/lazy.py": "def f():\n    import ppvl_batch.batch.work\n",
        "engine/typing_only.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..batch import work\n",
        "engine/fine.py": "from ..bundle import Bundle\nfrom ..errors import ModelError\n",
        "bundle/__init__.py": "from ppvl_batch.engine import fine\n",
        "batch/__init__.py": "",
        "batch/work.py": "from ..engine import upward\n",
    })
    found = {module_name(p, package): layer_violations(module_name(p, package), imported_modules(p, package))
             for p in package.rglob("*.py")}
    assert found["ppvl_batch.engine.upward"] == ["ppvl_batch.engine.upward (engine) imports ppvl_batch.batch (batch)",
                                                "ppvl_batch.engine.upward (engine) imports ppvl_batch.batch.work (batch)"]
    assert found["ppvl_batch.engine.lazy"] == ["ppvl_batch.engine.lazy (engine) imports ppvl_batch.batch.work (batch)"]
    assert found["ppvl_batch.bundle"] == ["ppvl_batch.bundle (bundle) imports ppvl_batch.engine (engine)",
                                          "ppvl_batch.bundle (bundle) imports ppvl_batch.engine.fine (engine)"]
    assert found["ppvl_batch.engine.typing_only"] == found["ppvl_batch.engine.fine"] == found["ppvl_batch.batch.work"] == []
    assert find_cycle(module_graph(package)) == ["ppvl_batch.batch.work", "ppvl_batch.engine.upward", "ppvl_batch.batch.work"]
