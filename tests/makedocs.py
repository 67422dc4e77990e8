"""Small real documents for the scan tests: PDFs with PyMuPDF, images with PIL."""

from __future__ import annotations

from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw


def make_pdf(
    path: Path,
    pages: int = 1,
    *,
    size: tuple[float, float] = (144, 108),
    password: str | None = None,
    label: str = "page",
) -> Path:
    """A PDF whose page i says `{label} {i}` (tiny by default: 2 x 1.5 inches)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = pymupdf.open()
    for i in range(1, pages + 1):
        page = doc.new_page(width=size[0], height=size[1])
        page.insert_text((10, 40), f"{label} {i}", fontsize=18)
    kwargs = {}
    if password:
        kwargs = dict(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=password, owner_pw=password + "-owner")
    doc.save(path, **kwargs)
    doc.close()
    return path


def make_zero_page_pdf(path: Path) -> Path:
    """A well-formed PDF with an empty page tree (PyMuPDF refuses to save one)."""
    objects = [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[]/Count 0>>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def text_image(size: tuple[int, int] = (96, 64), text: str = "Hi", mode: str = "RGB") -> Image.Image:
    """Black text on white, converted to `mode`."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((8, 8), text, fill="black")
    return image.convert(mode)
