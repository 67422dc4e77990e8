"""Blocks to model inputs and back (docs/layout-text.md, "Crops" and "Answers").

Inputs: a block is cut from the page image at full resolution as PaddleX cuts it and formula
crops are trimmed to their ink; a crop of an aspect ratio smart_resize refuses is padded with
white by the engine's preprocessor itself (engine/vision.pad_aspect_ratio), at the block limits.
Outputs: the model's answer for a block is cleaned up by the rules PaddleX applies per label
(repetition cut, math delimiters, OTSL tables, chart tables).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .labels import FORMULA_LABELS, block_format
from .otsl import chart_to_html, otsl_to_html

# The pixel limits PaddleX's pipeline passes for every block crop (not the checkpoint's
# preprocessor_config, not transformers' class defaults): 336^2 and 1280 * 28^2.
BLOCK_MIN_PIXELS = 112896
BLOCK_MAX_PIXELS = 1003520
# A pixel is ink when its grey level, after stretching the crop's darkest to 0 and lightest to
# 255, is at most this (PaddleX's crop_margin: inverse binary threshold at 200).
INK_THRESHOLD = 200


class CropError(Exception):
    """A block whose crop cannot be given to the model; it fails that block, not the page."""


def crop_block(page: Image.Image, bbox: Sequence[float],
               polygon: Sequence[Sequence[float]] | None = None) -> Image.Image:
    """The block's pixels: `page[y0:y1, x0:x1]` with each coordinate truncated to an int, no
    margin, no padding. With a polygon (PP-DocLayoutV3), pixels outside it are painted white."""
    x0, y0, x1, y1 = (int(v) for v in bbox)
    # A box is clipped to the page before it gets here; clamp anyway so a negative coordinate
    # cannot wrap around as a numpy index.
    x0, x1 = (min(max(v, 0), page.width) for v in (x0, x1))
    y0, y1 = (min(max(v, 0), page.height) for v in (y0, y1))
    if x1 <= x0 or y1 <= y0:
        raise CropError(f"empty crop for box {list(bbox)} on a {page.width}x{page.height} page")
    crop = Image.fromarray(np.asarray(page.convert("RGB"))[y0:y1, x0:x1])
    if polygon is not None:
        mask = Image.new("L", crop.size, 0)
        ImageDraw.Draw(mask).polygon([(float(x) - x0, float(y) - y0) for x, y in polygon], fill=255)
        crop = Image.composite(crop, Image.new("RGB", crop.size, (255, 255, 255)), mask)
    return crop


def trim_to_ink(crop: Image.Image) -> Image.Image:
    """The crop cut to the bounding box of its ink (formula crops, before the model sees them).
    A crop of one grey level, or whose ink box is 2 pixels or less on a side, stays as it is."""
    grey = np.asarray(crop.convert("L"))
    lo, hi = int(grey.min()), int(grey.max())
    if lo == hi:
        return crop
    stretched = ((grey - lo) / (hi - lo) * 255).astype(np.uint8)  # truncated, as PaddleX's astype
    ys, xs = np.nonzero(stretched <= INK_THRESHOLD)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    if x1 - x0 <= 2 or y1 - y0 <= 2:
        return crop
    return crop.crop((x0, y0, x1, y1))


def block_input(
    page: Image.Image,
    label: str,
    bbox: Sequence[float],
    polygon: Sequence[Sequence[float]] | None = None,
) -> Image.Image:
    """The image the model reads for one block: crop, ink trim for formulas. Raises CropError
    for a block that cannot be read (no pixels)."""
    crop = crop_block(page, bbox, polygon)
    return trim_to_ink(crop) if label in FORMULA_LABELS else crop


# -- answers ------------------------------------------------------------------------------------


def _repeated_suffix(s: str, min_unit: int = 8, min_repeats: int = 5) -> tuple[str, int, int] | None:
    """(prefix, unit length, repeats) for the longest unit of >= min_unit chars that ends `s`
    at least min_repeats times in a row, or None."""
    for size in range(len(s) // min_repeats, min_unit - 1, -1):
        unit = s[-size:]
        if s.endswith(unit * min_repeats):
            end = len(s) - size * min_repeats
            while end >= size and s.startswith(unit, end - size):
                end -= size
            return s[:end], size, (len(s) - end) // size
    return None


def _period(s: str) -> str | None:
    """The shortest unit that `s` is a whole number (>= 2) of repeats of, or None."""
    n = len(s)
    for size in range(1, n // 2 + 1):
        if n % size == 0 and s[:size] * (n // size) == s:
            return s[:size]
    return None


def truncate_repetition(text: str, min_count: int = 50) -> str:
    """PaddleX's cut of a looping answer (truncate_repetitive_content), for texts of at least
    `min_count` characters (PaddleX: 5000 for tables, 50 for everything else):
    - one line over 100 chars ending in a unit of >= 8 chars repeated >= 5 times that covers over
      half the line: the text before the repeats;
    - one line that is a single unit repeated >= 10 times: that unit once;
    - >= 10 non-empty lines of which one line makes >= 80% (and >= 10): that line once.
    The decoder's own token-level loop guard is a separate, earlier stop."""
    if len(text) < min_count:
        return text
    s = text.strip()
    if not s:
        return text
    single_line = "\n" not in s
    if single_line and len(s) > 100:
        found = _repeated_suffix(s)
        if found and found[1] * found[2] > len(s) * 0.5:
            return found[0]
    if single_line and len(s) > 10:
        unit = _period(s)
        if unit is not None and len(s) // len(unit) >= 10:
            return unit
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) >= 10:
        line, count = Counter(lines).most_common(1)[0]
        if count >= 10 and count / len(lines) >= 0.8:
            return line
    return text


_INLINE = re.compile(r"\\\((.*?)\\\)", re.DOTALL)
_DISPLAY = re.compile(r"\\\[(.*?)\\\]", re.DOTALL)
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def normalize_math(text: str) -> str:
    """`\\(x\\)` -> `$x$` and `\\[x\\]` -> `$$x$$` (doubled `\\[\\[`/`\\]\\]` count once). As in
    PaddleX, only a text holding a `\\(`..`\\)` or `\\[`..`\\]` pair is touched; unlike PaddleX,
    `$` signs outside the math are kept (PaddleX deletes every `$` of such a text) and no
    spaces are added around the delimiters."""
    if not (("\\(" in text and "\\)" in text) or ("\\[" in text and "\\]" in text)):
        return text
    text = text.replace("\\[\\[", "\\[").replace("\\]\\]", "\\]")

    def wrap(delimiter: str):
        return lambda m: f"{delimiter}{_UNESCAPED_DOLLAR.sub('', m.group(1)).strip()}{delimiter}"

    return _INLINE.sub(wrap("$"), _DISPLAY.sub(wrap("$$"), text))


def strip_math_delimiters(text: str) -> str:
    """A formula answer's LaTeX without the `$$`/`$` (or `\\[`/`\\(`) around it."""
    s = normalize_math(text.strip())
    for delimiter in ("$$", "$"):
        inner = s[len(delimiter) : -len(delimiter)]
        if len(s) >= 2 * len(delimiter) and s.startswith(delimiter) and s.endswith(delimiter):
            # only one pair around the whole answer: "$$a$$ $$b$$" stays as it is
            return inner.strip() if not _UNESCAPED_DOLLAR.search(inner) else s
    return s


def finish_text(label: str, answer: str, *, charts: bool = False) -> tuple[str, str]:
    """(text, format) for a block's raw answer, in PaddleX's order: repetition cut, math
    delimiters, then per label. Formulas keep bare LaTeX (Markdown adds `$$`); formula numbers
    lose their `$`; tables and enabled charts become HTML, or stay text when they hold none."""
    fmt = block_format(label, charts=charts, seals=True)
    if fmt == "image":
        raise ValueError(f"a {label} block is not read by the model (charts={charts})")
    text = truncate_repetition(answer, min_count=5000 if label == "table" else 50)
    text = normalize_math(text)
    if label == "formula_number":
        return text.replace("$", ""), fmt
    if fmt == "latex":
        return strip_math_delimiters(text), fmt
    if fmt == "html":
        converted = otsl_to_html(text) if label == "table" else chart_to_html(text)
        return (converted, fmt) if converted is not None else (text, "text")
    return text, fmt
