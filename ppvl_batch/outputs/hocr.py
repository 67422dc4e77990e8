"""hOCR 1.2 (kba/hocr-spec): one XHTML file for a document, one `ocr_page` per page.

Each layout block is an `ocr_carea` holding one `ocr_par`; whole-page records have one block. Lines are
`ocr_line` (with `textangle` when their quad is rotated), words `ocrx_word` with integer `bbox` and
`x_wconf` (round(100 * the line's confidence): the model gives no word confidence). Word boxes are
shared out of their line's box by character width, and each page says where its line boxes came from
in `x_positions` (spotting, estimated, pdf); the `ppvl-ocr-word-boxes` meta says the words are estimated.
Failed and blank pages are `ocr_page` elements without content.
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from .document import atomic_text, page_records, xml_attr, xml_text
from .pagetext import InkBoxes, Record, TextBlock, page_blocks, positions_estimated
from .words import quad_angle

CAPABILITIES = "ocr_page ocr_carea ocr_par ocr_line ocrx_word ocrp_wconf"


class HocrWriter:
    """The hOCR file of one document (a DocumentWriter)."""

    suffix = ".hocr"

    def write(self, records: list[Record], source: Path, target: Path) -> None:
        write_hocr(records, source, target)


def write_hocr(records: list[Record], source: Path, target: Path) -> None:
    """Write `target`, the hOCR of the pages `records` name (one record per page), atomically."""
    atomic_text(target, hocr_document(records, source))


def hocr_document(records: list[Record], source: Path) -> str:
    inks = InkBoxes(source)
    try:
        pages = [hocr_page(record, source, inks) for record in page_records(records)]
    finally:
        inks.close()
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        ('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"'
         ' "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">'),
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">',
        "<head>",
        f"<title>{xml_text(source.name)}</title>",
        '<meta http-equiv="Content-Type" content="text/html; charset=utf-8"/>',
        f'<meta name="ocr-system" content="ppvl-ocr {__version__} (PaddleOCR-VL)"/>',
        f'<meta name="ocr-capabilities" content="{CAPABILITIES}"/>',
        ('<meta name="ppvl-ocr-word-boxes" content="estimated: each line\'s box shared among its words by'
         ' character width"/>'),
        "</head>",
        "<body>",
        *pages,
        "</body>",
        "</html>",
        "",
    ])


def _box(bbox: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = (max(0, round(v)) for v in bbox)
    return f"bbox {x0} {y0} {max(x1, x0)} {max(y1, y0)}"


def hocr_page(record: Record, source: Path, inks: InkBoxes | None = None) -> str:
    """One page as an `ocr_page` div (its blocks, lines and words inside)."""
    n = record["page"]
    width, height = record.get("width") or 0, record.get("height") or 0
    title = f"image {_quoted(source.name)}; bbox 0 0 {width} {height}; ppageno {n - 1}"
    if record.get("lines") or record.get("blocks") is not None or record.get("text"):
        title += f"; x_positions {'estimated' if positions_estimated(record) else record.get('positions')}"
    out = [f'<div class="ocr_page" id="page_{n}" title={xml_attr(title)}>']
    blocks = page_blocks(record, inks.for_record(record) if inks else None) if record.get("width") else []
    for b, block in enumerate(blocks, 1):
        out += _block(block, f"{n}_{b}")
    out.append("</div>")
    return "\n".join(out)


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _block(block: TextBlock, key: str) -> list[str]:
    out = [f'<div class="ocr_carea" id="block_{key}" title="{_box(block.bbox)}">',
           f'<p class="ocr_par" id="par_{key}" title="{_box(block.bbox)}">']
    for i, line in enumerate(block.lines, 1):
        words = line.words
        if not words:
            continue
        title = _box(line.bbox)
        if line.quad is not None and round(quad_angle(line.quad)):
            title += f"; textangle {round(quad_angle(line.quad)) % 360}"
        spans = []
        for w, word in enumerate(words, 1):
            wtitle = _box(word.bbox)
            if word.confidence is not None:
                wtitle += f"; x_wconf {round(100 * word.confidence)}"
            spans.append(f'<span class="ocrx_word" id="word_{key}_{i}_{w}" title="{wtitle}">'
                         f'{xml_text(word.text)}</span>')
        out.append(f'<span class="ocr_line" id="line_{key}_{i}" title="{title}">{" ".join(spans)}</span>')
    out += ["</p>", "</div>"]
    return out
