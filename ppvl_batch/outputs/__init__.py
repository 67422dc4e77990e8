"""Document outputs made from records: the searchable PDF, hOCR and ALTO of one document
(docs/archival-outputs.md).

    words.py     a record line -> words, boxes shared by character width (along rotated quads)
    pagetext.py  a record -> blocks of lines with boxes (given, or estimated), the writers' one source
    pdf.py       searchable PDF: the input's pages (or images) plus an invisible text layer
    pdffont.py   the text layer's font: every character its own code, any script
    pdfa.py      PDF/A-2b through pikepdf
    hocr.py      hOCR 1.2
    alto.py      ALTO 4.4

Every writer has `suffix` and `write(records, source, target)`: `records` one per page (the newest), any
order; `source` the input file; `target` written atomically; OutputError when it cannot be. A list of one
record writes that page alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from .alto import AltoWriter, alto_document, write_alto
from .hocr import HocrWriter, hocr_document, write_hocr
from .pdf import PdfWriter, write_pdf
from .pdfa import PdfaError
from .words import Word, split_words


class DocumentWriter(Protocol):
    suffix: str  # ".pdf", ".hocr", ".alto.xml"

    def write(self, records: list[dict[str, Any]], source: Path, target: Path) -> None: ...


__all__ = [
    "AltoWriter", "DocumentWriter", "HocrWriter", "PdfWriter", "PdfaError", "Word", "alto_document",
    "hocr_document", "split_words", "write_alto", "write_hocr", "write_pdf",
]
