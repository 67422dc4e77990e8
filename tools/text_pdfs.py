"""Born-digital PDF pages with known text and line boxes, and the same pages as scans.

For tests/test_text_layer.py and bench/bench_text_layer.py. Every builder draws on a new page of
`doc` and returns the lines it drew, `(text, (x0, y0, x1, y1))` in points of the displayed page
(the font's ascender to descender, as MuPDF measures a line), in reading order.

    python tools/text_pdfs.py OUT.pdf [--pages 40]     a mixed archive: half born-digital, half scans
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image

Line = tuple[str, tuple[float, float, float, float]]
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
A4 = (595.0, 842.0)

PARAGRAPHS = [
    "Invoices are due within thirty days of the date shown above.",
    "Late payment adds interest at the rate agreed in the contract.",
    "Questions about this statement go to the accounts office.",
    "Goods remain our property until they are paid in full.",
    "Please quote the customer number on every payment you make.",
    "Returns are accepted within fourteen days in their packaging.",
]


def write(page: pymupdf.Page, point: tuple[float, float], text: str, *, font: str = "helv", size: float = 11,
          fontfile: str | None = None, **kwargs: object) -> Line:
    """insert_text, and the line's box as MuPDF measures it (ascender to descender)."""
    page.insert_text(point, text, fontsize=size, fontname=font, fontfile=fontfile, **kwargs)
    f = pymupdf.Font(fontfile=fontfile) if fontfile else pymupdf.Font(font)
    x, y = point
    return text, (x, y - f.ascender * size, x + f.text_length(text, size), y - f.descender * size)


def letter(doc: pymupdf.Document) -> list[Line]:
    """Several fonts (Helvetica, Times, Courier, DejaVu Sans from a TTF file when present)."""
    page = doc.new_page(width=A4[0], height=A4[1])
    lines = [write(page, (72, 90), "Quarterly statement", font="hebo", size=18)]
    fonts = [("helv", None), ("tiro", None), ("cour", None)]
    if DEJAVU.exists():
        fonts.append(("dejavu", str(DEJAVU)))
    y = 140.0
    for i, text in enumerate(PARAGRAPHS):
        font, file = fonts[i % len(fonts)]
        lines.append(write(page, (72, y), text, font=font, fontfile=file, size=11))
        y += 22
    return lines


def two_columns(doc: pymupdf.Document) -> list[Line]:
    """A title across the page, then two columns of unequal length (left is read first)."""
    page = doc.new_page(width=A4[0], height=A4[1])
    lines = [write(page, (72, 80), "Annual report of the archive", font="hebo", size=16)]
    words = " ".join(PARAGRAPHS).split()
    columns = [(72.0, 14), (320.0, 9)]
    for x, count in columns:
        y = 130.0
        for _ in range(count):
            chunk, words = words[:4], words[4:] or " ".join(PARAGRAPHS).split()
            lines.append(write(page, (x, y), " ".join(chunk), size=10))
            y += 14
    return lines


def table(doc: pymupdf.Document) -> list[Line]:
    """A ruled 4 x 3 table: read row by row."""
    page = doc.new_page(width=A4[0], height=A4[1])
    rows = [("Item", "Qty", "Price"), ("Paper", "12", "3.40"), ("Toner", "2", "81.00"), ("Folders", "40", "0.65")]
    xs, top, height = (72.0, 272.0, 372.0, 472.0), 100.0, 24.0
    lines = []
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            lines.append(write(page, (xs[c] + 6, top + r * height + 16), cell, size=11))
    for r in range(len(rows) + 1):
        page.draw_line((xs[0], top + r * height), (xs[-1], top + r * height), width=0.8)
    for x in xs:
        page.draw_line((x, top), (x, top + len(rows) * height), width=0.8)
    return lines


def rotated(doc: pymupdf.Document) -> list[Line]:
    """A portrait page stored with /Rotate 90, its text written upright on the landscape page a
    reader sees (the usual way a landscape page is stored)."""
    page = doc.new_page(width=A4[0], height=A4[1])
    page.set_rotation(90)
    lines = []
    for i, text in enumerate(PARAGRAPHS[:3]):
        # insert_text takes unrotated coordinates; rotate=90 turns the text upright for the reader
        x, y = 72.0, 100.0 + 30 * i
        page.insert_text(pymupdf.Point(x, y) * page.derotation_matrix, text, fontsize=12, rotate=90)
        f = pymupdf.Font("helv")
        lines.append((text, (x, y - f.ascender * 12, x + f.text_length(text, 12), y - f.descender * 12)))
    return lines


def cjk(doc: pymupdf.Document) -> list[Line]:
    """Simplified Chinese in MuPDF's built-in font ("china-s")."""
    page = doc.new_page(width=A4[0], height=A4[1])
    texts = ["档案馆年度报告", "发票应在三十天内支付", "请在付款时注明客户编号"]
    return [write(page, (72, 100 + 30 * i), text, font="china-s", size=14) for i, text in enumerate(texts)]


BORN_DIGITAL: dict[str, Callable[[pymupdf.Document], list[Line]]] = {
    "letter": letter, "two_columns": two_columns, "table": table, "rotated": rotated, "cjk": cjk,
}


def scan_image(page: pymupdf.Page, dpi: float = 150, seed: int = 0) -> bytes:
    """What a scanner makes of the page: grey paper, noise, JPEG."""
    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
    grey = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.stride)[:, :pix.width].astype(np.float32)
    rng = np.random.default_rng(seed)
    grey = grey * 0.85 + 25 + rng.normal(0, 6, grey.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").save(out, "JPEG", quality=80)
    return out.getvalue()


def as_scan(source: pymupdf.Page, doc: pymupdf.Document, ocr: list[Line] | None = None, seed: int = 0) -> pymupdf.Page:
    """A new page in `doc` holding only a scan of `source` (displayed orientation); with `ocr`,
    also those lines as an invisible OCR layer (render mode 3) where the scan shows them."""
    image = scan_image(source, seed=seed)  # before new_page: it may invalidate `source` (same doc)
    page = doc.new_page(width=source.rect.width, height=source.rect.height)
    page.insert_image(page.rect, stream=image)
    for text, (x0, _, x1, y1) in ocr or ():
        font = pymupdf.Font("helv")
        # an OCR engine fits a line's width with the font size, on the line's baseline
        size = (x1 - x0) / max(font.text_length(text, 1), 1e-6)
        page.insert_text((x0, y1 + font.descender * size), text, fontsize=size, render_mode=3)
    return page


def mixed_archive(path: Path, pages: int = 40) -> tuple[int, int]:
    """One PDF of `pages` pages, alternating born-digital and scanned versions of the builders'
    pages. Returns (born-digital pages, scanned pages)."""
    doc = pymupdf.open()
    source = pymupdf.open()
    kinds = list(BORN_DIGITAL.values())
    born = scanned = 0
    for i in range(pages):
        if i % 2 == 0:
            kinds[(i // 2) % len(kinds)](doc)
            born += 1
        else:
            kinds[(i // 2) % len(kinds)](source)
            as_scan(source[-1], doc, seed=i)
            scanned += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path, garbage=3, deflate=True)
    return born, scanned


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pages", type=int, default=40)
    args = parser.parse_args()
    born, scanned = mixed_archive(args.out, args.pages)
    print(f"{args.out}: {born} born-digital pages, {scanned} scans")
