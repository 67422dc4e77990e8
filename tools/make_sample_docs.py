"""Write sample_docs/: a few small documents (PDF with a text layer, scanned PDF, PNG, JPEG,
multi-page TIFF) in nested folders, each with its ground truth beside it as X.gt.json
({"pages": ["text of page 1", ...]}).

    .venv/bin/python tools/make_sample_docs.py [OUT_DIR]     # default: sample_docs

The pages are printed the way the demo model was trained (render_pages.py): typewriter-style,
one character per 28 x 28 cell, 20 cells wide, a few short lines, plain grey paper. PDF pages are
20 x 6 cells (560 x 168 pt), exactly the demo model's max_pixels, so the scanner's automatic zoom
renders them at 1.0 and the cells stay aligned with the image tokens. Deterministic: the same files every
run. Needs the fonts named in render_pages.py.
"""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import pymupdf
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_pages import CELL, MAX_ROWS, PAGE_COLUMNS, draw_text_page, font_path  # noqa: E402

PDF_CELLS = (PAGE_COLUMNS, MAX_ROWS)  # 20 x 6 = 120 image tokens, the demo model's maximum

DOCS: dict[str, dict] = {
    # name: font, size (px per 28-px cell), pages
    "invoices/invoice_2024-117.pdf": dict(font="liberation/LiberationSans-Regular.ttf", size=22, pages=[
        "INVOICE: 117\nDate: 12 Mar\nShop: North\nTotal: 431.50",
        "Item: coffee\nBoxes: 12\nPrice: 86.30\nTax: 17.26",
    ]),
    "invoices/scanned/receipt_scan.pdf": dict(font="dejavu/DejaVuSans.ttf", size=21, pages=[
        "Receipt 48213\nCity Market\nmilk bread tea\nTotal: 12.75",
        "Paid: 12.75\nThank you\nMon 4 Nov 2024\nCard: 4421",
    ]),
    "notes/meeting_notes.png": dict(font="dejavu/DejaVuSerif.ttf", size=21, pages=[
        "Meeting notes\nBudget: 5200 EUR\nNext: Friday 10:30",
    ]),
    "notes/ticket.jpg": dict(font="liberation/LiberationSerif-Regular.ttf", size=23, pages=[
        "Ticket: TR-3381\nTrain 14 Track 3\nSeat 42 Gate B",
    ]),
    "archive/letters.tiff": dict(font="dejavu/DejaVuSans.ttf", size=21, pages=[
        "Letter no 7\nTo: City Library\nBooks: 14 items",
        "Section 2\nReturned: 3\nStatus: approved",
        "Library office\n2024-06-18",
    ]),
}

BACKGROUND, INK = 232, 25


def page_image(text: str, font: str, size: int, seed: int, *, scan: bool = False, pdf: bool = False,
               scale: int = 1) -> Image.Image:
    """A printed page; `scan` adds what a scanner adds (noise, a very small skew)."""
    rng = random.Random(seed)
    img, _ = draw_text_page(
        text, font, size, rng=rng, background=BACKGROUND, ink=INK, margin=(1, 1),
        canvas=PDF_CELLS if pdf else (PAGE_COLUMNS, text.count("\n") + 3), noise=6.0 if scan else 2.0,
        angle=rng.uniform(-0.4, 0.4) if scan else 0.0, scale=scale,
    )
    return img


def text_pdf(pages: list[str], font: str, size: int) -> bytes:
    """A PDF whose text is real text (selectable), one character per cell like draw_text_page,
    1 pt per pixel, font embedded."""
    doc = pymupdf.open()
    metrics = pymupdf.Font(fontfile=str(font_path(font)))
    for text in pages:
        page = doc.new_page(width=PDF_CELLS[0] * CELL, height=PDF_CELLS[1] * CELL)
        page.draw_rect(page.rect, color=None, fill=(BACKGROUND / 255,) * 3)
        page.insert_font(fontname="F0", fontfile=str(font_path(font)))
        for i, line in enumerate(text.split("\n")):
            cy = (1 + i + 0.5) * CELL
            # PIL's anchor "mm" centres between ascender and descender; put the baseline there.
            baseline = cy + size * (metrics.ascender + metrics.descender) / 2
            for j, ch in enumerate(line):
                cx = (1 + j + 0.5) * CELL
                page.insert_text((cx - metrics.text_length(ch, size) / 2, baseline), ch, fontname="F0",
                                 fontsize=size, color=(INK / 255,) * 3)
    doc.subset_fonts()
    return doc.tobytes(garbage=4, deflate=True, no_new_id=True)  # no random file ID: same bytes every run


def scanned_pdf(images: list[Image.Image]) -> bytes:
    """A PDF of page images only (no text layer), as a scanner writes it: each image fills a
    PDF_CELLS page."""
    doc = pymupdf.open()
    for img in images:
        buf = io.BytesIO()
        img.convert("L").save(buf, "JPEG", quality=80)
        page = doc.new_page(width=PDF_CELLS[0] * CELL, height=PDF_CELLS[1] * CELL)
        page.insert_image(page.rect, stream=buf.getvalue())
    return doc.tobytes(garbage=4, deflate=True, no_new_id=True)  # no random file ID: same bytes every run


def main(out: Path) -> None:
    for name, spec in DOCS.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        font, size, pages = spec["font"], spec["size"], spec["pages"]
        seed = sum(map(ord, name))
        if name.endswith("receipt_scan.pdf"):
            # Scanned at twice the printed resolution, as a 144-dpi scan.
            images = [page_image(t, font, size, seed + i, scan=True, pdf=True, scale=2) for i, t in enumerate(pages)]
            path.write_bytes(scanned_pdf(images))
        elif name.endswith(".pdf"):
            path.write_bytes(text_pdf(pages, font, size))
        else:
            images = [page_image(t, font, size, seed + i, scan=name.endswith(".jpg")) for i, t in enumerate(pages)]
            if name.endswith(".tiff"):
                images[0].save(path, save_all=True, append_images=images[1:], compression="tiff_deflate")
            elif name.endswith(".jpg"):
                images[0].save(path, quality=90)
            else:
                images[0].convert("L").save(path, optimize=True)
        path.with_suffix(".gt.json").write_text(json.dumps({"pages": pages}, indent=2) + "\n")
        print(f"{path} ({path.stat().st_size // 1024} KB, {len(pages)} pages)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("sample_docs"))
