"""A page record (the shared record schema) -> OCRmyPDF's OcrElement tree, and that tree as the
hOCR file and the text-only PDF that OCRmyPDF's older engine paths ask for.

    page ─ ocr_par (one per layout block; one for a whole page) ─ ocr_line ─ ocrx_word

Boxes are pixels of the image OCRmyPDF handed the engine: the record's own pixels (its `width`
x `height`) are scaled onto it. A line's words are split from its text by spaces, each word a
share of the line's width by its characters (the line's box when it is rotated: OCRmyPDF draws
each word along the line's angle). Control characters and U+FFFD are dropped: a PDF text layer cannot
hold them. Confidence is 0..1 on elements and x_wconf 0..100 in hOCR.
"""

from __future__ import annotations

import math
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from ocrmypdf.hocrtransform import BoundingBox, OcrClass, OcrElement

from .. import __version__
from ..outputs.words import is_rotated, line_quad, quad_angle, split_words


def plain_text(text: str) -> str:
    """A block's answer as text for the text layer: an HTML table becomes one line per row,
    cells apart by spaces; anything else is kept as it is (text, LaTeX)."""
    if "<td" not in text and "<th" not in text:
        return text
    flat = _TableText()
    flat.feed(text)
    flat.close()
    return "\n".join(" ".join(cell.split()) for cell in "".join(flat.parts).split("\n") if cell.strip())


class _TableText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_endtag(self, tag: str) -> None:
        self.parts.append("\n" if tag == "tr" else " " if tag in ("td", "th") else "")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def record_to_tree(record: dict[str, Any], size: tuple[int, int], dpi: float, page_number: int) -> OcrElement:
    """The OcrElement page of a record, on an image of `size` pixels at `dpi`."""
    width, height = size
    sx = width / (record.get("width") or width)
    sy = height / (record.get("height") or height)
    page = OcrElement(ocr_class=OcrClass.PAGE, bbox=BoundingBox(0, 0, width, height), dpi=dpi,
                      page_number=page_number, confidence=record.get("confidence"))
    if record.get("blocks") is not None:
        groups = [(b.get("lines") or [], b.get("bbox"), b.get("confidence")) for b in record["blocks"]]
    else:
        groups = [(record.get("lines") or [], None, record.get("confidence"))]
    for lines, bbox, confidence in groups:
        elements = [e for e in (_line(line, sx, sy, (width, height)) for line in lines) if e is not None]
        if not elements:
            continue
        box = _scaled(bbox, sx, sy, (width, height)) if bbox else _union([e.bbox for e in elements if e.bbox])
        page.children.append(
            OcrElement(ocr_class=OcrClass.PARAGRAPH, bbox=box, confidence=confidence, children=elements))
    return page


def tree_text(page: OcrElement) -> str:
    """The page's text as the text layer holds it: a line per line, a blank line between blocks."""
    return "\n\n".join("\n".join(line.get_text_recursive() for line in par.lines) for par in page.paragraphs)


def _line(line: dict[str, Any], sx: float, sy: float, size: tuple[int, int]) -> OcrElement | None:
    text = " ".join(_printable(line.get("text", "")).split())
    if not text or not line.get("bbox"):
        return None
    box = _scaled(line["bbox"], sx, sy, size)
    if box.width <= 0 or box.height <= 0:
        return None
    quad = [(x * sx, y * sy) for x, y in line["quad"]] if line.get("quad") else None
    scaled = {"text": text, "bbox": [box.left, box.top, box.right, box.bottom], "quad": quad,
              "confidence": line.get("confidence")}
    four = line_quad(scaled)
    rotated = four is not None and is_rotated(four)
    # a rotated line is one word along its angle, as OCRmyPDF's other engines give it
    words = [(text, box)] if rotated else [(w.text, BoundingBox(*w.bbox)) for w in split_words(scaled)]
    confidence = line.get("confidence")
    return OcrElement(
        ocr_class=OcrClass.LINE, bbox=box, confidence=confidence,
        textangle=quad_angle(four) if four is not None and rotated else 0.0,
        children=[OcrElement(ocr_class=OcrClass.WORD, bbox=b, text=w, confidence=confidence) for w, b in words],
    )


def _printable(text: str) -> str:
    """Control characters and U+FFFD (bytes the model wrote that are not UTF-8) dropped, spaces
    kept as spaces: they carry nothing to search for, and OCRmyPDF's renderer cannot map them back
    to text (extraction gives U+FFFD and U+0011 for them)."""
    return "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or (ch != "\ufffd" and unicodedata.category(ch) != "Cc"))


def _scaled(bbox: Sequence[float], sx: float, sy: float, size: tuple[int, int]) -> BoundingBox:
    x0, y0, x1, y1 = bbox
    return BoundingBox(_clamp(x0 * sx, size[0]), _clamp(y0 * sy, size[1]),
                       _clamp(x1 * sx, size[0]), _clamp(y1 * sy, size[1]))


def _clamp(value: float, high: int) -> float:
    return min(max(value, 0.0), float(high))


def _union(boxes: Sequence[BoundingBox]) -> BoundingBox:
    return BoundingBox(min(b.left for b in boxes), min(b.top for b in boxes),
                       max(b.right for b in boxes), max(b.bottom for b in boxes))


# -- hOCR and the text-only PDF --------------------------------------------------------------------

XHTML = "http://www.w3.org/1999/xhtml"
CAPABILITIES = "ocr_page ocr_par ocr_line ocrx_word ocrp_wconf"


def write_hocr(page: OcrElement, path: Path, image_name: str = "") -> None:
    """hOCR 1.2 of the page, as OCRmyPDF's own hOCR reader takes it (integer boxes and x_wconf,
    lines inside p.ocr_par, scan_res for the DPI)."""
    ET.register_namespace("", XHTML)
    html = ET.Element(f"{{{XHTML}}}html", {"lang": "en", "xml:lang": "en"})
    head = ET.SubElement(html, f"{{{XHTML}}}head")
    ET.SubElement(head, f"{{{XHTML}}}title").text = "PaddleOCR-VL"
    ET.SubElement(head, f"{{{XHTML}}}meta", {"http-equiv": "Content-Type", "content": "text/html;charset=utf-8"})
    ET.SubElement(head, f"{{{XHTML}}}meta", {"name": "ocr-system", "content": f"ppvl-ocr {__version__} (PaddleOCR-VL)"})
    ET.SubElement(head, f"{{{XHTML}}}meta", {"name": "ocr-capabilities", "content": CAPABILITIES})
    body = ET.SubElement(html, f"{{{XHTML}}}body")
    dpi = round(page.dpi or 72)
    title = f'image "{image_name}"; {_bbox(page.bbox)}; ppageno {page.page_number or 0}; scan_res {dpi} {dpi}'
    div = ET.SubElement(body, f"{{{XHTML}}}div", {"class": "ocr_page", "id": "page_1", "title": title})
    for p, par in enumerate(page.paragraphs, 1):
        p_el = ET.SubElement(div, f"{{{XHTML}}}p", {"class": "ocr_par", "id": f"par_1_{p}", "title": _bbox(par.bbox)})
        for n, line in enumerate(par.lines, 1):
            angle = f"; textangle {line.textangle:.2f}" if line.textangle else ""
            line_title = f"{_bbox(line.bbox)}; baseline 0 0{angle}"
            line_attrs = {"class": "ocr_line", "id": f"line_1_{p}_{n}", "title": line_title}
            l_el = ET.SubElement(p_el, f"{{{XHTML}}}span", line_attrs)
            for w, word in enumerate(line.words, 1):
                conf = "" if word.confidence is None else f"; x_wconf {round(100 * word.confidence)}"
                attrs = {"class": "ocrx_word", "id": f"word_1_{p}_{n}_{w}", "title": _bbox(word.bbox) + conf}
                ET.SubElement(l_el, f"{{{XHTML}}}span", attrs).text = word.text
    tree = ET.ElementTree(html)
    ET.indent(tree)
    with path.open("wb") as f:
        f.write(b'<?xml version="1.0" encoding="UTF-8"?>\n'
                b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"'
                b' "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n')
        tree.write(f, encoding="utf-8", xml_declaration=False)


def _bbox(box: BoundingBox | None) -> str:
    if box is None:
        return "bbox 0 0 0 0"
    return f"bbox {math.floor(box.left)} {math.floor(box.top)} {math.ceil(box.right)} {math.ceil(box.bottom)}"


def write_text_pdf(page: OcrElement, path: Path) -> None:
    """A PDF of the page's size holding only its invisible text, drawn by OCRmyPDF's own renderer
    with its own fonts (the `sandwich` renderer's text layer)."""
    import ocrmypdf
    from ocrmypdf.font import MultiFontManager
    from ocrmypdf.fpdf_renderer import Fpdf2PdfRenderer

    fonts = MultiFontManager(Path(ocrmypdf.__file__).parent / "data")
    Fpdf2PdfRenderer(page=page, dpi=page.dpi or 72.0, multi_font_manager=fonts, invisible_text=True).render(path)
