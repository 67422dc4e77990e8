"""PyMuPDF, imported once for the documents layer (pages.py renders with it, text_layer.py reads text)."""

from __future__ import annotations

import sys


def _import_pymupdf():
    """PyMuPDF without the extras it imports on its own when they are installed (PyMuPDF 2 pulls
    in pymupdf.layout with onnxruntime, and pymupdf4llm): we only render pages, and they cost
    every scan, worker and server about 90 MB resident and 0.3 s (bench/RESULTS.md). A module
    marked None makes its import fail, which PyMuPDF takes as "not installed"; the marks go once
    it is imported, so code that wants the extras can still import them itself."""
    extras = [name for name in ("pymupdf.layout", "pymupdf4llm") if name not in sys.modules]
    sys.modules.update(dict.fromkeys(extras))  # type: ignore[arg-type]  # None entries are allowed (see above)
    try:
        import pymupdf
    finally:
        for name in extras:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
    return pymupdf


pymupdf = _import_pymupdf()
