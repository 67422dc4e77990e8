"""Rules about the package's sources that no single feature test would see: its dependencies
behind their adapters, text files read and written as UTF-8."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ppvl_batch"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "demo" not in p.relative_to(PACKAGE).parts)
# third-party package -> the one module of ours that may import it
ADAPTERS = {"transformers": "hf.py", "llama_cpp": "engine/llama.py"}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every package a file imports, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ADAPTERS))
def test_a_dependency_is_imported_by_its_adapter_only(package: str) -> None:
    users = [str(p.relative_to(PACKAGE)) for p in SOURCES if package in imported_packages(p)]
    assert users == [ADAPTERS[package]]


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from transformers.models import x\n    import llama_cpp.mtmd_cpp\n", encoding="utf-8")
    assert imported_packages(source) == {"transformers", "llama_cpp"}


def text_io_without_encoding(path: Path) -> list[int]:
    """Lines that read or write text without naming an encoding: Path.read_text / write_text, and
    open() in text mode (a mode without "b")."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            positional = 1 if func.attr == "write_text" else 0  # write_text(data, encoding, ...)
            if len(node.args) <= positional:
                lines.append(node.lineno)
        elif isinstance(func, ast.Name) and func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            binary = isinstance(mode, ast.Constant) and "b" in str(mode.value)
            if not binary and len(node.args) < 4:
                lines.append(node.lineno)
    return lines


def test_text_is_read_and_written_as_utf8() -> None:
    """The platform's default encoding is not UTF-8 everywhere (Windows, a C locale)."""
    found = {str(p.relative_to(PACKAGE)): text_io_without_encoding(p) for p in SOURCES}
    assert {name: lines for name, lines in found.items() if lines} == {}


def test_the_encoding_check_catches_each_form(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "p.read_text()\np.write_text('x')\nopen(f)\nopen(f, 'w')\n"
        "p.read_text(encoding='utf-8')\np.write_text('x', 'utf-8')\nopen(f, 'rb')\nopen(f, 'a', encoding='utf-8')\n",
        encoding="utf-8")
    assert text_io_without_encoding(source) == [1, 2, 3, 4]


def test_the_library_api_and_the_server_do_not_load_pymupdf() -> None:
    """Recognizing an image needs no PDF library: importing the engine or the server's modules
    leaves PyMuPDF unloaded (it costs every process about 90 MB and 0.3 s)."""
    modules = ["ppvl_batch.recognizer", "ppvl_batch.engine.recognizer", "ppvl_batch.engine.answers",
               "ppvl_batch.serve.app", "ppvl_batch.serve.worker", "ppvl_batch.serve.images",
               "ppvl_batch.serve.requests", "ppvl_batch.serve.metrics"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fitz', 'pymupdf')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_v3_mask_to_box_replacement_is_undone_after_overlapping_blocks() -> None:
    """hf.v3_mask_to_box replaces a function of transformers' module at run time: two blocks that
    overlap (two threads detecting) keep it replaced until the last one ends, then it is restored."""
    from transformers.models.pp_doclayout_v3 import modeling_pp_doclayout_v3 as modeling

    from ppvl_batch.hf import v3_mask_to_box

    original = modeling.mask_to_box_coordinate

    def replacement(*args):
        return None

    first, second = v3_mask_to_box(replacement), v3_mask_to_box(replacement)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert modeling.mask_to_box_coordinate is replacement
    second.__exit__(None, None, None)
    assert modeling.mask_to_box_coordinate is original
