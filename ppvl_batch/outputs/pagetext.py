"""A record -> the text of its page as blocks of lines with boxes, the one model every writer draws from.

Where the lines come from, in this order:
- layout mode (`blocks`): one block per layout block with text, its `lines` when it has them, else its
  text lines sharing the block's box evenly (an estimate);
- whole-page records with `lines` (spotting, estimated, or the PDF's own): one block holding them;
- whole-page records without lines: the text lines sharing the box of the page's ink evenly (an estimate;
  the box comes from `ink_box`, a callable so that the page is only looked at when it is needed).
Failed and blank pages have no blocks. Coordinates stay in the record's pixels (`width` x `height`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..documents.pages import PageError, open_document
from .words import Box, Point, Word, bounds, line_box, line_quad, split_words

Record = dict[str, Any]
_TAG = re.compile(r"<[^>]+>")
# Grey level under which a pixel counts as ink for the box of a page without lines: darker than this and
# than the paper (the page's median grey) by INK_CONTRAST.
INK_LEVEL = 208
INK_CONTRAST = 48
INK_DPI = 50  # PDF pages are rendered this fine to find their ink (a box, not a measurement)


@dataclass(frozen=True)
class TextLine:
    text: str
    bbox: Box
    quad: tuple[Point, Point, Point, Point] | None
    confidence: float | None

    @property
    def words(self) -> list[Word]:
        return split_words({"text": self.text, "bbox": self.bbox, "quad": self.quad, "confidence": self.confidence})


@dataclass(frozen=True)
class TextBlock:
    label: str
    bbox: Box
    lines: list[TextLine]
    polygon: tuple[Point, ...] | None = None
    confidence: float | None = None
    from_pdf: bool = False  # its text was taken from the PDF's own text layer
    estimated: bool = field(default=False)  # its line boxes were shared out here, not given


def has_text(record: Record) -> bool:
    return record.get("status") == "ok" and not record.get("blank") and bool((record.get("text") or "").strip())


def positions_estimated(record: Record) -> bool:
    """Whether the line positions of this page are estimates (not spotting quads, not the PDF's own boxes)."""
    if record.get("blocks") is not None:
        return True  # layout lines are estimated from ink bands at best
    return record.get("positions") not in ("spotting", "pdf") or not record.get("lines")


def page_blocks(record: Record, ink_box: Callable[[], Box | None] | None = None) -> list[TextBlock]:
    """The page's text as blocks of lines (see the module docstring); [] for failed and blank pages."""
    if record.get("status") != "ok" or record.get("blank"):
        return []
    if record.get("blocks") is not None:
        return [block for entry in record["blocks"] if (block := _layout_block(entry)) is not None]
    text = (record.get("text") or "").strip()
    from_pdf = record.get("text_source") == "pdf"
    if record.get("lines"):
        lines = [_line(entry) for entry in record["lines"] if str(entry.get("text") or "").strip()]
        if not lines:
            return []
        box = bounds([p for line in lines for p in ((line.bbox[0], line.bbox[1]), (line.bbox[2], line.bbox[3]))])
        return [TextBlock("text", box, lines, confidence=record.get("confidence"), from_pdf=from_pdf)]
    if not text:
        return []
    box = (ink_box() if ink_box else None) or (0.0, 0.0, float(record["width"]), float(record["height"]))
    return [TextBlock("text", box, share_box(text, box, record.get("confidence")), confidence=record.get("confidence"),
                      from_pdf=from_pdf, estimated=True)]


def _line(entry: dict[str, Any]) -> TextLine:
    return TextLine(" ".join(str(entry["text"]).split()), line_box(entry), line_quad(entry), entry.get("confidence"))


def block_text(entry: dict[str, Any]) -> str:
    """A layout block's text as plain lines: an HTML table's cells one row a line, tags dropped."""
    text = str(entry.get("text") or "")
    if entry.get("format") == "html":
        text = re.sub(r"</tr\s*>", "\n", text, flags=re.IGNORECASE)
        text = html.unescape(_TAG.sub(" ", text))
    return text.strip()


def _layout_block(entry: dict[str, Any]) -> TextBlock | None:
    text = block_text(entry)
    if not text or entry.get("error") or entry.get("format") == "image":
        return None
    box = tuple(float(v) for v in entry["bbox"])
    polygon = tuple((float(x), float(y)) for x, y in entry["polygon"]) if entry.get("polygon") else None
    given = [_line(line) for line in entry.get("lines") or [] if str(line.get("text") or "").strip()]
    lines = given or share_box(text, box, entry.get("confidence"))  # type: ignore[arg-type]
    return TextBlock(entry["label"], box, lines, polygon, entry.get("confidence"),  # type: ignore[arg-type]
                     entry.get("text_source") == "pdf", estimated=not given)


def share_box(text: str, box: Box, confidence: float | None) -> list[TextLine]:
    """The text's lines stacked in the box, each an equal share of its height."""
    rows = [" ".join(row.split()) for row in text.splitlines() if row.strip()]
    x0, y0, x1, y1 = box
    step = (y1 - y0) / max(len(rows), 1)
    return [TextLine(row, (x0, y0 + i * step, x1, y0 + (i + 1) * step), None, confidence) for i, row in enumerate(rows)]


def ink_fraction_box(image: Image.Image) -> tuple[float, float, float, float] | None:
    """The box of the image's ink as fractions of its width and height, or None when it has none."""
    grey = np.asarray(image.convert("L"))
    ink = grey < min(INK_LEVEL, float(np.median(grey)) - INK_CONTRAST)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return None
    h, w = grey.shape
    return cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h


class InkBoxes:
    """Ink boxes of a document's pages for records without lines; the document is opened on first use."""

    def __init__(self, source: Path, password: str | None = None) -> None:
        self._source, self._password = source, password
        self._doc: Any = None

    def for_record(self, record: Record) -> Callable[[], Box | None]:
        def box() -> Box | None:
            try:
                if self._doc is None:
                    self._doc = open_document(self._source, password=self._password, dpi=INK_DPI, max_pixels=1 << 22)
                found = ink_fraction_box(self._doc.render(record["page"]))
            except PageError:
                return None  # the whole page stands in for its ink
            if found is None:
                return None
            fx0, fy0, fx1, fy1 = found
            w, h = float(record["width"]), float(record["height"])
            return fx0 * w, fy0 * h, fx1 * w, fy1 * h

        return box

    def close(self) -> None:
        if self._doc is not None:
            self._doc.close()
