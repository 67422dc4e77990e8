"""A PDF page's characters -> visual lines -> blocks in reading order (docs/text-layer.md, "Order").

MuPDF's own lines follow the content stream: a generator that draws a line's words (or glyphs)
right to left, or a page's lines bottom to top, gives one MuPDF line per word or glyph, in the
drawn order. So lines are rebuilt from geometry: within a MuPDF block, fragments on the same
baseline band merge into one visual line, ordered along the writing direction; blocks are then
put in reading order by a recursive XY cut that knows columns from table rows.

Everything here works on displayed coordinates (page rotation applied, pixels of the rendered
page), so a rotated page reads as a reader sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Point = tuple[float, float]
Quad = tuple[Point, Point, Point, Point]  # TL, TR, BR, BL

# Two fragments are on one visual line when their extents across the writing direction overlap
# by at least this share of the thinner one (a superscript still joins its line, the next line
# of a paragraph, 1.2 line heights away, does not).
SAME_LINE_OVERLAP = 0.5
# A gap along the line wider than this share of the line's height between two fragments is a
# word space (PDFs position words without drawing a space glyph). Helvetica's space is 0.28 em,
# glyphs drawn one by one in reverse order abut with 0 gap: 0.15 sits between.
SPACE_GAP = 0.15
# A wider gap (in line heights) between two fragments of one row keeps them apart as two lines:
# table cells and tab stops. Justified text stretches a space to about 1 em at most.
JOIN_GAP = 1.5
# Blocks closer than this (pixels) along an axis do not leave a gap an XY cut may split at.
MIN_CUT_GAP = 2.0


@dataclass
class Char:
    """One glyph: its Unicode text (ligatures expanded), quad in rendered-page pixels, whether
    it is drawn visibly on the page, and if not, whether it was meant to be invisible."""

    c: str
    quad: Quad
    visible: bool
    transparent: bool = False  # drawn invisibly on purpose: render mode 3 (or zero alpha)


@dataclass
class Fragment:
    """What MuPDF calls a line: a run of glyphs in one direction, from one block."""

    block: int
    direction: Point  # unit vector along the writing direction, displayed coordinates
    chars: list[Char]


@dataclass
class VisualLine:
    block: int
    direction: Point
    chars: list[Char] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(ch.c for ch in self.chars).strip()


def _extent(chars: Sequence[Char], axis: Point) -> tuple[float, float]:
    values = [x * axis[0] + y * axis[1] for ch in chars for x, y in ch.quad]
    return min(values), max(values)


def _across(direction: Point) -> Point:
    return (-direction[1], direction[0])  # the writing direction turned 90 degrees (y down)


def visual_lines(fragments: Sequence[Fragment]) -> list[VisualLine]:
    """Fragments merged into visual lines (see the module docstring), each line's glyphs in
    writing order, lines of a block from top to bottom. A single fragment keeps MuPDF's glyph
    order (which already handles right-to-left scripts)."""
    groups: list[tuple[Fragment, list[Fragment]]] = []  # (first fragment, members)
    for frag in fragments:
        if not frag.chars:
            continue
        across = _across(frag.direction)
        lo, hi = _extent(frag.chars, across)
        for first, members in groups:
            if first.block != frag.block or _dot(first.direction, frag.direction) < 0.99:
                continue
            glo, ghi = _extent([ch for m in members for ch in m.chars], across)
            overlap = min(hi, ghi) - max(lo, glo)
            if overlap >= SAME_LINE_OVERLAP * min(hi - lo, ghi - glo):
                members.append(frag)
                break
        else:
            groups.append((frag, [frag]))
    groups.sort(key=lambda g: (g[0].block, _extent([ch for m in g[1] for ch in m.chars], _across(g[0].direction))[0]))
    return [line for first, members in groups for line in _join(first.block, first.direction, members)]


def _dot(a: Point, b: Point) -> float:
    return a[0] * b[0] + a[1] * b[1]


def _join(block: int, direction: Point, members: list[Fragment]) -> list[VisualLine]:
    """One row's fragments in writing order, joined into lines; a gap over JOIN_GAP starts a
    new line (table cells, tab stops)."""
    members = sorted(members, key=lambda m: _extent(m.chars, direction)[0])
    across = _across(direction)
    height = max(hi - lo for lo, hi in (_extent(m.chars, across) for m in members))
    lines: list[VisualLine] = []
    end = None
    for frag in members:
        start, stop = _extent(frag.chars, direction)
        gap = None if end is None else start - end
        if gap is None or gap > JOIN_GAP * height:
            lines.append(VisualLine(block, direction))
        elif gap > SPACE_GAP * height and not lines[-1].chars[-1].c.isspace() and not frag.chars[0].c.isspace():
            last = lines[-1].chars[-1].quad  # a zero-width space glyph at the end of the last one
            lines[-1].chars.append(Char(" ", (last[1], last[1], last[2], last[2]), True))
        lines[-1].chars.extend(frag.chars)
        end = stop if end is None else max(end, stop)
    return lines


def bounding_box(chars: Sequence[Char]) -> tuple[float, float, float, float]:
    xs = [x for ch in chars for x, _ in ch.quad]
    ys = [y for ch in chars for _, y in ch.quad]
    return min(xs), min(ys), max(xs), max(ys)


def frame_box(chars: Sequence[Char], direction: Point) -> tuple[float, float, float, float]:
    """The glyphs' box in the frame whose x axis is `direction` (and y axis 90 degrees on)."""
    u0, u1 = _extent(chars, direction)
    v0, v1 = _extent(chars, _across(direction))
    return u0, v0, u1, v1


def line_quad(chars: Sequence[Char], direction: Point) -> Quad:
    """The smallest quad along the writing direction around the glyphs (TL, TR, BR, BL)."""
    across = _across(direction)
    u0, u1 = _extent(chars, direction)
    v0, v1 = _extent(chars, across)

    def point(u: float, v: float) -> Point:
        return (u * direction[0] + v * across[0], u * direction[1] + v * across[1])

    return point(u0, v0), point(u1, v0), point(u1, v1), point(u0, v1)


# -- block order ---------------------------------------------------------------------------------


Box = tuple[float, float, float, float]


def reading_order(boxes: Sequence[Box]) -> list[int]:
    """Indices of `boxes` (blocks, x0 y0 x1 y1, y down) in reading order: a recursive XY cut.
    At each level a vertical cut (columns) is taken first, unless the blocks on its two sides
    pair up row by row (a table: its cells share top and bottom), then a horizontal cut (bands,
    read top to bottom); a region neither cut splits is read top to bottom, left to right."""
    order: list[int] = []
    _cut(list(range(len(boxes))), boxes, order)
    return order


def _cut(indices: list[int], boxes: Sequence[Box], out: list[int]) -> None:
    if len(indices) <= 1:
        out.extend(indices)
        return
    columns = _split(indices, boxes, 0)
    rows = _split(indices, boxes, 1)
    if len(columns) > 1 and not (len(rows) > 1 and _row_aligned(columns, boxes)):
        parts = columns
    elif len(rows) > 1:
        parts = rows
    else:
        out.extend(sorted(indices, key=lambda i: (boxes[i][1], boxes[i][0])))
        return
    for part in parts:
        _cut(part, boxes, out)


def _split(indices: list[int], boxes: Sequence[Box], axis: int) -> list[list[int]]:
    """Groups of blocks separated by empty bands along `axis` (0: x, 1: y), in axis order."""
    ordered = sorted(indices, key=lambda i: boxes[i][axis])
    parts: list[list[int]] = [[ordered[0]]]
    reach = boxes[ordered[0]][axis + 2]
    for i in ordered[1:]:
        if boxes[i][axis] - reach >= MIN_CUT_GAP:
            parts.append([])
        parts[-1].append(i)
        reach = max(reach, boxes[i][axis + 2])
    return parts


def _row_aligned(columns: list[list[int]], boxes: Sequence[Box]) -> bool:
    """Whether most blocks of the first column have a partner in the next one with about the
    same top and bottom (table cells in rows), rather than paragraphs that run independently."""
    left, right = columns[0], columns[1]
    tolerance = min(boxes[i][3] - boxes[i][1] for i in left + right) * 0.5

    def paired(i: int) -> bool:
        return any(abs(boxes[i][1] - boxes[j][1]) <= tolerance and abs(boxes[i][3] - boxes[j][3]) <= tolerance
                   for j in right)

    return sum(paired(i) for i in left) * 2 > len(left)
