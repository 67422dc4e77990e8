"""Synthetic records and inputs for the tests of ppvl_batch/outputs (searchable PDF, hOCR, ALTO)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pymupdf

# Lines of a page rendered at 2x (a 400 x 300 pt page is 800 x 600 px): Latin, CJK, Greek, LaTeX.
LINES = [
    ("Searchable archives today", (60, 50, 460, 80)),
    ("漢字かな 混じり文", (60, 110, 360, 140)),
    ("Αλφα βήτα γάμμα", (60, 170, 400, 200)),
    ("\\frac{a}{b} + x^{2} = 𝑥", (60, 230, 500, 260)),
]


def line(text: str, bbox: tuple[float, float, float, float], confidence: float | None = 0.9) -> dict[str, Any]:
    x0, y0, x1, y1 = bbox
    return {"text": text, "bbox": list(bbox), "quad": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "confidence": confidence}


def rotated_line(text: str, start: tuple[float, float], length: float, height: float, degrees: float) -> dict[str, Any]:
    """A line whose baseline rises at `degrees` (counterclockwise as seen), top-left corner at `start`."""
    a = math.radians(degrees)
    ux, uy, vx, vy = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
    tl = start
    tr = (tl[0] + length * ux, tl[1] + length * uy)
    br = (tr[0] + height * vx, tr[1] + height * vy)
    bl = (tl[0] + height * vx, tl[1] + height * vy)
    quad = [list(tl), list(tr), list(br), list(bl)]
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    return {"text": text, "bbox": [min(xs), min(ys), max(xs), max(ys)], "quad": quad, "confidence": 0.75}


def ok_record(page: int, width: int, height: int, lines: list[dict[str, Any]] | None, text: str | None = None,
              **extra: Any) -> dict[str, Any]:
    if text is None:
        text = "\n".join(entry["text"] for entry in lines or [])
    return {"source": "in", "page": page, "status": "ok", "width": width, "height": height, "text": text,
            "lines": lines, "positions": "spotting" if lines else None, "confidence": 0.9, **extra}


def failed_record(page: int) -> dict[str, Any]:
    return {"source": "in", "page": page, "status": "error", "width": None, "height": None, "text": None,
            "error": {"type": "corrupt", "message": "bad"}}


def blank_record(page: int, width: int, height: int) -> dict[str, Any]:
    return {"source": "in", "page": page, "status": "ok", "width": width, "height": height, "text": "", "blank": True}


def sample_pdf(path: Path, pages: int = 3, *, own_text: bool = False) -> Path:
    """Pages of 400 x 300 pt with drawings and an annotation; page 2 is rotated 90 degrees and page 3 has a
    crop box that does not start at the origin. No text of their own unless `own_text`."""
    doc = pymupdf.open()
    for n in range(pages):
        page = doc.new_page(width=400, height=300)
        page.draw_rect(pymupdf.Rect(20, 20, 200, 120), color=(0, 0, 1), fill=(0.9, 0.9, 0.5))
        page.draw_line((30, 250), (370, 200), color=(1, 0, 0), width=3)
        page.add_text_annot((350, 40), f"note {n + 1}")
        if own_text:
            page.insert_text((220, 280), "printed words", fontsize=12)
        if n == 1:
            page.set_rotation(90)
        if n == 2:
            page.set_cropbox(pymupdf.Rect(10, 5, 390, 290))
    doc.save(path)
    doc.close()
    return path


def records_for_pdf(path: Path, zoom: float = 2.0) -> list[dict[str, Any]]:
    """One record per page of `path` with the LINES (scaled to the page as rendered at `zoom`)."""
    doc = pymupdf.open(path)
    records = []
    for page in doc:
        w, h = round(page.rect.width * zoom), round(page.rect.height * zoom)
        sx, sy = w / 800, h / 600
        lines = [line(t, (x0 * sx, y0 * sy, x1 * sx, y1 * sy)) for t, (x0, y0, x1, y1) in LINES]
        records.append(ok_record(page.number + 1, w, h, lines, page_size_pt=[page.rect.width, page.rect.height]))
    doc.close()
    return records
