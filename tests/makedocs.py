"""Small real documents for the scan tests: PDFs with PyMuPDF, images with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def shapes_image(size: tuple[int, int], seed: int) -> Image.Image:
    """Coloured rectangles at random on a paper of a random colour: content (not blank) that
    differs with the seed, enough that even a random-weight model answers differently."""
    import numpy as np

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = (int(v) for v in rng.integers(0, min(size) - 20, 2))
        fill = tuple(int(c) for c in rng.integers(0, 200, 3))
        draw.rectangle([x, y, x + int(rng.integers(10, 200)), y + int(rng.integers(5, 60))], fill=fill)
    return image


def empty_scan(seed: int, size: tuple[int, int] = (850, 1100), faint_line: bool = False) -> Image.Image:
    """What a scanner makes of an empty page: off-white paper with fibre texture, a slight
    gradient of light, dust specks, JPEG noise; with `faint_line`, one faint pencil line."""
    import io

    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paper = rng.uniform(225, 245) + rng.uniform(-8, 8) * (xx / w) + rng.uniform(-8, 8) * (yy / h)
    fibre = Image.fromarray(rng.normal(0, 1, (h // 4, w // 4)).astype(np.float32), "F").resize((w, h), Image.BICUBIC)
    paper = paper + rng.uniform(2, 5) * np.asarray(fibre) + rng.normal(0, rng.uniform(1, 3), (h, w))
    page = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8), "L").convert("RGB")
    draw = ImageDraw.Draw(page)
    for _ in range(int(rng.integers(10, 60))):  # dust: dark specks up to 3 px across (0.75 mm at 100 dpi)
        x, y, r = float(rng.uniform(0, w)), float(rng.uniform(0, h)), float(rng.uniform(0.5, 1.5))
        g = int(rng.uniform(40, 160))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(g, g, g))
    if faint_line:
        x0, y0 = float(rng.uniform(0.1, 0.5) * w), float(rng.uniform(0.1, 0.9) * h)
        length = float(rng.uniform(0.1, 0.4) * w)
        g = int(paper.mean() - rng.uniform(35, 50))
        draw.line((x0, y0, x0 + length, y0 + rng.uniform(-5, 5)), fill=(g, g, g), width=1)
    buf = io.BytesIO()
    page.save(buf, "JPEG", quality=int(rng.integers(60, 90)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def page(width: int, height: int, seed: int = 0) -> Image.Image:
    """A noisy light page with lines of text (the parity tests' pages: any size, seeded)."""
    rng = np.random.default_rng(seed + width * 7 + height)
    pixels = rng.integers(150, 255, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for y in range(4, height - 10, 24):
        draw.text((4, y), f"Line {y} total {width * y}", fill=(0, 0, 0))
    return img

def detector_pages() -> list[Image.Image]:
    """A portrait and a landscape page with a few dark blocks, and a noisy one."""
    out = []
    for size in [(300, 420), (500, 260)]:
        page = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(page)
        draw.rectangle([20, 20, size[0] - 20, 60], fill=(30, 30, 30))
        draw.rectangle([20, 90, size[0] // 2, size[1] - 30], fill=(90, 60, 40))
        draw.ellipse([size[0] // 2 + 10, 90, size[0] - 20, size[1] // 2], fill=(10, 120, 200))
        out.append(page)
    rng = np.random.default_rng(3)
    out.append(Image.fromarray(rng.integers(0, 256, (333, 257, 3), dtype=np.uint8)))
    return out
