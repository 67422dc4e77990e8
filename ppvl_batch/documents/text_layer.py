"""A PDF page's own text layer: is it trustworthy, and its text with line boxes (docs/text-layer.md).

A born-digital page already holds its text; reading it takes milliseconds where the model takes
tens of seconds. It is used only where it is what a reader sees:

- visible: drawn on the page, not invisible (render mode 3, someone's OCR layer), not white on
  white, not hidden under an image. Measured, not guessed: the page is rendered twice at
  CHECK_DPI, as it is and with its text removed (a redaction on a copy of the page); a span is
  visible when the text changes at least VISIBLE_PIXELS of its box by TEXT_DIFF grey levels;
- decoding to Unicode: at most UNDECODED_SHARE of the characters are U+FFFD, private-use or
  control characters, and no UNDECODED_RUN of them in a row (a font without a usable ToUnicode
  map decodes to U+FFFD throughout; a lone private-use bullet from a Symbol font is tolerated);
- covering the page's ink: at least INK_COVERAGE of the ink of the rendered page lies inside the
  boxes of visible text lines (a scan with a few stamped words has its ink outside them).

The same rules decide a region (a layout block) on the characters and ink inside it.

Glyphs outside the page box are dropped (never counted, never extracted); ligatures come out
expanded (MuPDF's, then any presentation form left); a line-end hyphen is kept as drawn.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppvl_batch.documents.mupdf import pymupdf
from ppvl_batch.documents.text_order import (
    Char,
    Fragment,
    Quad,
    VisualLine,
    bounding_box,
    frame_box,
    line_quad,
    reading_order,
    visual_lines,
)

# Resolution of the two check renders. 96 dpi draws 7 pt text 9 pixels high, enough for its
# strokes to change pixels by far more than TEXT_DIFF; more costs render time for nothing.
CHECK_DPI = 96
# Grey levels (of 255) by which a pixel must change when the text is removed for the text to
# have drawn it. Anti-aliased edges change less; stroke cores of black-on-white text change by
# ~255, of mid-grey (0.5) text by ~128: 64 keeps text down to about 75% grey.
TEXT_DIFF = 64
# Share of a span's box whose pixels the text changes, at least, for the span to be visible.
# Measured on tests/test_text_layer.py's pages (docs/text-layer.md): visible spans 0.115-0.335,
# 7 pt mid-grey text 0.092; white-on-white, render mode 3 and under-an-image spans 0.000.
VISIBLE_PIXELS = 0.02
# Share of the page's characters that may be drawn invisibly while the page is still trusted
# (a born-digital page can carry a hidden word or two; an OCR layer hides everything).
HIDDEN_SHARE = 0.02
# Characters that do not decode (U+FFFD, private use, controls): share and run length allowed.
UNDECODED_SHARE = 0.02
UNDECODED_RUN = 3
# A pixel is ink when it differs from the paper (the page's median grey) by this much; share of
# the ink that must lie in text line boxes (grown by BOX_MARGIN_PT) for the text to cover the
# page. Measured at CHECK_DPI (tests/test_text_layer.py, docs/text-layer.md): born-digital pages
# 0.997-1.000 (the ruled table 0.997), a scan with stamped words 0.037, scans 0.
INK_CONTRAST = 96
INK_COVERAGE = 0.75
BOX_MARGIN_PT = 1.0
# Ink on a straight horizontal or vertical run this long (points) is a rule, a frame or a fill,
# drawn, not written: it does not count against the text (a ruled table is 34% covered with it,
# 100% without). Glyph strokes are far shorter below 36 pt type.
RULE_LENGTH_PT = 36.0
# Ligature presentation forms MuPDF may leave (a font that maps a glyph to U+FB0x itself).
LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
             "\ufb05": "st", "\ufb06": "st"}
# MuPDF flags: keep whitespace, clip to the media box; no TEXT_PRESERVE_LIGATURES (so they are
# expanded) and no TEXT_CID_FOR_UNKNOWN_UNICODE (so an unmapped glyph shows as U+FFFD).
_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP


class TextLayerError(Exception):
    """Reading the page's text layer failed; the caller reads the page with the model and puts
    the message into the record as a warning."""


@dataclass(frozen=True)
class Trust:
    """The decision for a page or region, with the measurements behind it (`reason` is for -v)."""

    trusted: bool
    reason: str
    chars: int  # non-space characters inside the page box
    hidden: int  # of them, not visible on the rendered page
    invisible: int  # of the hidden: drawn in render mode 3 (texttrace type 3)
    undecoded: int
    ink_coverage: float  # share of the ink inside text line boxes (1.0 without ink)


@dataclass(frozen=True)
class TextLine:
    """One line of the text layer, in pixels of the rendered page (the record's width x height)."""

    text: str
    bbox: tuple[float, float, float, float]
    quad: Quad

    def record(self) -> dict[str, Any]:
        """The shared record schema's `lines` entry (`confidence` is null: the file's own text)."""
        return {"text": self.text, "bbox": [round(v, 1) for v in self.bbox],
                "quad": [[round(x, 1), round(y, 1)] for x, y in self.quad], "confidence": None}


@dataclass(frozen=True)
class RegionText:
    text: str
    lines: list[TextLine]
    trust: Trust


class TextLayer:
    """A page's text layer: the page decision (`trust`), the text in reading order with its
    lines, and `region(bbox)` for layout blocks. Plain data (no PyMuPDF objects): it pickles."""

    def __init__(self, size: tuple[int, int], page_size_pt: tuple[float, float], lines: list[VisualLine],
                 ink: np.ndarray, boxes: np.ndarray) -> None:
        self.width, self.height = size
        self.page_size_pt = page_size_pt
        self._lines = lines
        self._ink, self._boxes = ink, boxes  # at CHECK_DPI
        self._mask_scale = ink.shape[1] / max(self.width, 1)  # check pixels per page pixel
        self.trust = self._decide(lines, ink, boxes)
        self.lines = _text_lines(lines)
        self.text = _page_text(lines)

    def region(self, bbox: Sequence[float]) -> RegionText:
        """Text, lines and decision for a box in rendered-page pixels: glyphs whose centre lies in
        the box, ink inside it. A region without text is not trusted."""
        x0, y0, x1, y1 = (float(v) for v in bbox)
        inside: list[VisualLine] = []
        for line in self._lines:
            chars = [ch for ch in line.chars if _centre_in(ch.quad, x0, y0, x1, y1)]
            if chars:
                inside.append(VisualLine(line.block, line.direction, chars))
        s = self._mask_scale
        window = np.s_[max(int(y0 * s), 0):max(int(np.ceil(y1 * s)), 0),
                       max(int(x0 * s), 0):max(int(np.ceil(x1 * s)), 0)]
        trust = self._decide(inside, self._ink[window], self._boxes[window])
        return RegionText(_page_text(inside), _text_lines(inside), trust)

    def record_fields(self) -> dict[str, Any]:
        """Fields of a whole-page record taken from this layer (shared record schema)."""
        return {"text": self.text, "lines": [line.record() for line in self.lines], "positions": "pdf",
                "text_source": "pdf", "confidence": None, "min_token_prob": None,
                "page_size_pt": [round(v, 2) for v in self.page_size_pt]}

    @staticmethod
    def _decide(lines: list[VisualLine], ink: np.ndarray, boxes: np.ndarray) -> Trust:
        chars = [ch for line in lines for ch in line.chars if not ch.c.isspace()]
        hidden = sum(not ch.visible for ch in chars)
        invisible = sum(ch.transparent for ch in chars)
        undecoded = [_undecoded(ch.c) for ch in chars]
        ink_total = int(ink.sum())
        coverage = float((ink & boxes).sum() / ink_total) if ink_total else 1.0
        numbers: dict[str, Any] = {"chars": len(chars), "hidden": hidden, "invisible": invisible,
                                   "undecoded": sum(undecoded), "ink_coverage": round(coverage, 3)}
        if not chars:
            return Trust(False, "no text layer", **numbers)
        if hidden > HIDDEN_SHARE * len(chars):
            why = ("invisible text (render mode 3: an OCR layer)" if invisible * 2 >= hidden
                   else "text not visible on the rendered page (white on white, or under an image)")
            return Trust(False, f"{why}: {hidden} of {len(chars)} characters", **numbers)
        run = _longest_run(undecoded)
        if sum(undecoded) > UNDECODED_SHARE * len(chars) or run >= UNDECODED_RUN:
            return Trust(False, f"characters do not decode to Unicode (U+FFFD, private use): {sum(undecoded)} of "
                                f"{len(chars)}, {run} in a row", **numbers)
        if coverage < INK_COVERAGE:
            return Trust(False, f"text covers {coverage:.0%} of the ink (at least {INK_COVERAGE:.0%})", **numbers)
        return Trust(True, f"trusted: {len(chars)} characters, {coverage:.0%} of the ink in text lines", **numbers)


def read_text_layer(page: Any, size: tuple[int, int]) -> TextLayer:
    """The text layer of a PyMuPDF page, in pixels of the page rendered at `size` (width, height:
    what documents.pages renders for it, rotation applied). Raises TextLayerError when MuPDF
    fails on the page's text or its check renders (the caller reads the page with the model)."""
    try:
        return _read(page, size)
    except (RuntimeError, ValueError, IndexError, KeyError, AttributeError, TypeError, MemoryError,
            pymupdf.mupdf.FzErrorBase) as e:
        text = str(e).strip().splitlines()
        raise TextLayerError(f"text layer unreadable: {type(e).__name__}: {text[0] if text else ''}"[:300]) from e


def _read(page: Any, size: tuple[int, int]) -> TextLayer:
    rect = page.rect
    if rect.width <= 0 or rect.height <= 0 or size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"page of zero size ({rect.width} x {rect.height} pt)")
    check = CHECK_DPI / 72
    full, bare = _render(page, check), _render(_without_text(page), check)
    if full.shape != bare.shape:
        raise ValueError("the page without its text renders at another size")
    changed = np.abs(full.astype(np.int16) - bare) >= TEXT_DIFF
    to_check = page.rotation_matrix * pymupdf.Matrix(check, check)
    to_pixels = page.rotation_matrix * pymupdf.Matrix(size[0] / rect.width, size[1] / rect.height)
    fragments = _fragments(page, to_pixels, to_check, changed)
    lines = _ordered(visual_lines(fragments))
    ink = np.abs(full.astype(np.int16) - int(np.median(full))) >= INK_CONTRAST
    ink &= ~_long_runs(ink, int(RULE_LENGTH_PT * check))  # rules, frames and fills are not unread text
    boxes = np.zeros_like(ink)
    margin = BOX_MARGIN_PT * check
    for line in lines:
        visible = [ch for ch in line.chars if ch.visible and not ch.c.isspace()]
        if visible:
            x0, y0, x1, y1 = (v * full.shape[1] / size[0] for v in bounding_box(visible))
            boxes[max(int(y0 - margin), 0):int(np.ceil(y1 + margin)),
                  max(int(x0 - margin), 0):int(np.ceil(x1 + margin))] = True
    return TextLayer(size, (rect.width, rect.height), lines, ink, boxes)


def _long_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """Pixels of `mask` on a straight horizontal or vertical run of at least `length` of them."""
    out = np.zeros_like(mask)
    for axis in (0, 1):
        m = np.moveaxis(mask, axis, -1)
        sums = np.cumsum(np.pad(m, ((0, 0), (1, 0))), axis=-1, dtype=np.int32)
        starts = (sums[:, length:] - sums[:, :-length]) == length  # a full window starts here
        # a pixel is on a run when some full window starting at most length-1 before it covers it
        cover = np.cumsum(np.pad(starts, ((0, 0), (0, length - 1))), axis=-1, dtype=np.int32)
        cover[:, length:] -= cover[:, :-length].copy()
        np.moveaxis(out, axis, -1)[...] |= cover > 0
    return out


def _render(page: Any, zoom: float) -> np.ndarray:
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csGRAY, alpha=False)
    return np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.stride)[:, :pix.width]


def _without_text(page: Any) -> Any:
    """A copy of the page (in a new document) with all its text removed and everything else kept."""
    copy = pymupdf.open()
    copy.insert_pdf(page.parent, from_page=page.number, to_page=page.number)
    bare = copy[0]
    rotation = bare.rotation
    bare.set_rotation(0)  # the redaction box in plain page coordinates: the whole visible page
    bare.add_redact_annot(bare.rect, fill=False)
    bare.apply_redactions(images=pymupdf.PDF_REDACT_IMAGE_NONE, graphics=pymupdf.PDF_REDACT_LINE_ART_NONE,
                          text=pymupdf.PDF_REDACT_TEXT_REMOVE)
    bare.set_rotation(rotation)
    return bare


def _fragments(page: Any, to_pixels: Any, to_check: Any, changed: np.ndarray) -> list[Fragment]:
    page_box = page.rect * page.derotation_matrix  # the visible page in unrotated coordinates
    raw = page.get_text("rawdict", flags=_FLAGS)
    fragments = []
    for number, block in enumerate(raw["blocks"]):
        for line in block.get("lines", ()):
            d = pymupdf.Point(line["dir"]) * page.rotation_matrix - pymupdf.Point(0, 0) * page.rotation_matrix
            direction = (d.x / (abs(d) or 1), d.y / (abs(d) or 1))
            chars: list[Char] = []
            for span in line["spans"]:
                # MuPDF gives text in render mode 3 (texttrace type 3) alpha 0: tests/test_text_layer.py
                transparent = span.get("alpha", 255) == 0
                visible = not transparent and _drawn(pymupdf.Rect(span["bbox"]) * to_check, changed)
                for ch in span["chars"]:
                    box = pymupdf.Rect(ch["bbox"])
                    centre = pymupdf.Point((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
                    if centre not in page_box:
                        continue
                    quad = pymupdf.recover_char_quad(line["dir"], span, ch) * to_pixels
                    for text in _expand(ch["c"]):
                        chars.append(Char(text, ((quad.ul.x, quad.ul.y), (quad.ur.x, quad.ur.y),
                                                 (quad.lr.x, quad.lr.y), (quad.ll.x, quad.ll.y)), visible, transparent))
            fragments.append(Fragment(number, direction, chars))
    return fragments


def _expand(c: str) -> str:
    return LIGATURES.get(c, c)


def _drawn(box: Any, changed: np.ndarray) -> bool:
    h, w = changed.shape
    x0, y0 = max(int(box.x0), 0), max(int(box.y0), 0)
    x1, y1 = min(int(np.ceil(box.x1)), w), min(int(np.ceil(box.y1)), h)
    if x1 <= x0 or y1 <= y0:
        return False
    return float(changed[y0:y1, x0:x1].mean()) >= VISIBLE_PIXELS


def _ordered(lines: list[VisualLine]) -> list[VisualLine]:
    """Visual lines grouped by block, blocks in reading order, block numbers renumbered."""
    blocks: dict[int, list[VisualLine]] = {}
    for line in lines:
        if line.text:
            blocks.setdefault(line.block, []).append(line)
    groups = list(blocks.values())
    # the XY cut runs in the frame of the page's main writing direction, so sideways text (a
    # table turned 90 degrees on a portrait page) reads along its own lines
    direction = Counter(line.direction for line in lines for _ in line.chars).most_common(1)
    boxes = [frame_box([ch for line in group for ch in line.chars], direction[0][0] if direction else (1.0, 0.0))
             for group in groups]
    ordered = []
    for number, index in enumerate(reading_order(boxes)):
        for line in groups[index]:
            line.block = number
            ordered.append(line)
    return ordered


def _undecoded(c: str) -> bool:
    category = unicodedata.category(c)
    return c == "\ufffd" or category in ("Co", "Cs") or (category == "Cc" and c not in "\t\n\r")


def _longest_run(flags: Sequence[bool]) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def _centre_in(quad: Quad, x0: float, y0: float, x1: float, y1: float) -> bool:
    cx = sum(x for x, _ in quad) / 4
    cy = sum(y for _, y in quad) / 4
    return x0 <= cx <= x1 and y0 <= cy <= y1


def _visible_text(line: VisualLine) -> list[Char]:
    chars = [ch for ch in line.chars if ch.visible]
    while chars and chars[0].c.isspace():
        chars.pop(0)
    while chars and chars[-1].c.isspace():
        chars.pop()
    return chars


def _text_lines(lines: list[VisualLine]) -> list[TextLine]:
    out = []
    for line in lines:
        chars = _visible_text(line)
        if chars:
            out.append(TextLine("".join(ch.c for ch in chars), bounding_box(chars), line_quad(chars, line.direction)))
    return out


def _page_text(lines: list[VisualLine]) -> str:
    """Visible text, one line per visual line, a blank line between blocks."""
    parts: list[str] = []
    previous = None
    for line in lines:
        text = "".join(ch.c for ch in _visible_text(line))
        if not text:
            continue
        if previous is not None and line.block != previous:
            parts.append("")
        parts.append(text)
        previous = line.block
    return "\n".join(parts)
