"""Lines -> words: the model gives positions per line (or they are estimated per line); hOCR, ALTO and the
PDF text layer want words. A line's text is split at spaces and the line's box is shared among its words
in proportion to their characters' widths (a CJK full-width character counts as two, a combining mark as
none), along the line's own direction when its quad is rotated. These word boxes are estimates; the
writers say so where the format allows."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Point = tuple[float, float]
Box = tuple[float, float, float, float]
# A quad whose top edge leans less than this (radians, ~0.3 degrees) counts as axis-aligned.
_STRAIGHT = 0.005


@dataclass(frozen=True)
class Word:
    """One word: its text, its box (x0, y0, x1, y1) in the record's pixels, its quad (TL, TR, BR,
    BL) when its line is rotated (None for an axis-aligned line), and its line's confidence."""

    text: str
    bbox: tuple[float, float, float, float]
    quad: tuple[tuple[float, float], ...] | None
    confidence: float | None


def char_width(char: str) -> int:
    """Relative width of one character: 2 for East Asian wide/full-width, 0 for combining marks."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(char_width(c) for c in text)


def line_quad(line: dict[str, Any]) -> tuple[Point, Point, Point, Point] | None:
    """The line's quad as four (x, y) points, or None when it has none (or not four points)."""
    quad = line.get("quad")
    if not quad or len(quad) != 4:
        return None
    (a, b), (c, d), (e, f), (g, h) = quad
    return (float(a), float(b)), (float(c), float(d)), (float(e), float(f)), (float(g), float(h))


def line_box(line: dict[str, Any]) -> Box:
    """The line's bbox, or the bounds of its quad when it has no bbox."""
    if line.get("bbox"):
        x0, y0, x1, y1 = (float(v) for v in line["bbox"])
        return x0, y0, x1, y1
    quad = line_quad(line)
    if quad is None:
        raise ValueError("a line needs a bbox or a quad")
    return bounds(quad)


def bounds(points: Sequence[Point]) -> Box:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def is_rotated(quad: Sequence[Point]) -> bool:
    """Whether the quad's top edge (TL -> TR) leans away from the horizontal."""
    (x0, y0), (x1, y1) = quad[0], quad[1]
    return abs(math.atan2(y1 - y0, x1 - x0)) > _STRAIGHT


def quad_angle(quad: Sequence[Point]) -> float:
    """Angle of the quad's top edge in degrees, counterclockwise on the page as seen (y grows down)."""
    (x0, y0), (x1, y1) = quad[0], quad[1]
    return -math.degrees(math.atan2(y1 - y0, x1 - x0))


def _spans(text: str) -> list[tuple[str, float, float]]:
    """(word, start, end) for each space-separated word, start/end as fractions of the line's width."""
    total = _width(text)
    if total == 0:
        return []
    spans: list[tuple[str, float, float]] = []
    offset = 0
    for piece in text.split(" "):
        width = _width(piece)
        if piece:
            spans.append((piece, offset / total, (offset + width) / total))
        offset += width + 1  # the space after it
    return spans


def _lerp(p: Point, q: Point, t: float) -> Point:
    return p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t


def split_words(line: dict) -> list[Word]:
    """A record line {text, bbox, quad, confidence} -> its words, split at spaces (tabs and newlines
    count as spaces), each with its share of the line's box. Rotated lines share their quad along its
    top and bottom edges, so each word gets a rotated quad of its own."""
    text = " ".join(str(line.get("text") or "").split())
    spans = _spans(text)
    if not spans:
        return []
    confidence = line.get("confidence")
    quad = line_quad(line)
    if quad is not None and is_rotated(quad):
        tl, tr, br, bl = quad
        words = []
        for piece, start, end in spans:
            word_quad = (_lerp(tl, tr, start), _lerp(tl, tr, end), _lerp(bl, br, end), _lerp(bl, br, start))
            words.append(Word(piece, bounds(word_quad), word_quad, confidence))
        return words
    x0, y0, x1, y1 = line_box(line)
    return [
        Word(piece, (x0 + (x1 - x0) * start, y0, x0 + (x1 - x0) * end, y1), None, confidence)
        for piece, start, end in spans
    ]
