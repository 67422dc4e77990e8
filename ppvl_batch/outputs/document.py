"""What every writer of a document needs: its records in page order, and an atomic text write."""

from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from ..files import atomic_write, output_error
from .pagetext import Record


def page_records(records: list[Record]) -> list[Record]:
    """The page records (a record without a page number is a document that could not be opened), sorted."""
    return sorted((r for r in records if r.get("page")), key=lambda r: r["page"])


def atomic_text(target: Path, text: str) -> None:
    """Write `text` (UTF-8) to `target` so readers see the old file or the whole new one (OutputError if not)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where the folder should be, no permission
        raise output_error("write", target, e) from e
    atomic_write(target, text.encode("utf-8"))


# Characters XML 1.0 cannot hold even escaped (a model may emit them): dropped from hOCR and ALTO text.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(text: str) -> str:
    return escape(_NOT_XML.sub("", text))


def xml_attr(text: str) -> str:
    """A quoted attribute value."""
    return quoteattr(_NOT_XML.sub("", text))
