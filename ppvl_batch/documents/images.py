"""Image helpers that need no PDF library: what the engine and the server use (pages.py, which
opens PDFs with PyMuPDF, builds on them; tests/test_sources.py checks neither imports PyMuPDF)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Image formats we read (PIL's names).
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "MPO", "TIFF", "WEBP", "BMP", "DIB", "GIF"})


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of any PIL image: EXIF orientation applied, 16/32-bit and float scaled
    (not clipped) to 8 bits, palette expanded, transparency composited onto white (a transparent
    background is paper, not black ink)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
        else:
            scale = 1.0 if image.mode == "I" and values.max(initial=0) <= 255 else 1 / 257
        image = Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("L", "RGB") and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
