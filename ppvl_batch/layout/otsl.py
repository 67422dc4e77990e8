"""Tables: the model's OTSL answer -> HTML, chart answers -> HTML, and the small table model the
cross-page merge works on (docs/layout-text.md, "Tables").

`Table Recognition:` answers in OTSL: a cell is a tag followed by its text, `<fcel>` a cell with
text, `<ecel>` an empty cell, `<lcel>` merged into the cell on its left, `<ucel>` into the cell
above, `<xcel>` into both (the inside of a 2-D span), `<nl>` ends a row.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

_TAG = re.compile(r"<(fcel|ecel|lcel|ucel|xcel|nl)>")
_SPAN_TAGS = frozenset({"lcel", "ucel", "xcel"})
_LEFT = frozenset({"lcel", "xcel"})  # tags that continue the cell on their left
_UP = frozenset({"ucel", "xcel"})  # tags that continue the cell above


@dataclass
class Cell:
    html: str  # inner HTML, text already escaped
    rowspan: int = 1
    colspan: int = 1
    header: bool = False  # <th> rather than <td>


# Rows of the cells that start in them, left to right (as in HTML: a position covered by a span
# from an earlier row has no cell of its own).
Table = list[list[Cell]]


def _otsl_rows(otsl: str) -> list[list[tuple[str, str]]]:
    """(tag, text) rows; empty rows dropped, text before the first tag ignored."""
    rows: list[list[tuple[str, str]]] = []
    row: list[tuple[str, str]] = []
    matches = list(_TAG.finditer(otsl))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(otsl)
        if m.group(1) == "nl":
            if row:
                rows.append(row)
            row = []
        else:
            row.append((m.group(1), otsl[m.end() : end].strip()))
    if row:  # a last row without <nl>
        rows.append(row)
    return rows


def _repair_width(rows: list[list[tuple[str, str]]]) -> int:
    """The row width that ragged rows are cut or padded to: the one with the least total
    |len(row) - width|, never narrower than the last <fcel> of any row (PaddleX's
    otsl_pad_to_sqr_v2), the narrowest on ties."""
    least = max(max((i + 1 for i, (tag, _) in enumerate(r) if tag == "fcel"), default=0) for r in rows)
    widest = max(least, max(len(r) for r in rows))
    return min(range(least, widest + 1), key=lambda w: (sum(abs(len(r) - w) for r in rows), w))


def parse_otsl(otsl: str) -> Table | None:
    """The table an OTSL answer describes, or None when it has no cell at all.

    Ragged rows are cut or padded with empty cells to one width. Every grid position ends up in
    exactly one cell: a span stops where it would run into another cell's start or span, and a
    span tag that continues nothing (an `<lcel>` opening a row) becomes a cell of its own, with
    its text if it has one. The text of a span tag that does continue a cell is dropped, as
    PaddleX drops it."""
    rows = _otsl_rows(otsl)
    if not rows:
        return None
    width = _repair_width(rows)
    grid = [(r + [("ecel", "")] * width)[:width] for r in rows]
    owned = [[False] * width for _ in grid]
    table: Table = []
    for r, row in enumerate(grid):
        out: list[Cell] = []
        for c, (tag, text) in enumerate(row):
            if owned[r][c]:
                continue
            colspan = rowspan = 1
            if tag not in _SPAN_TAGS:
                while c + colspan < width and row[c + colspan][0] in _LEFT and not owned[r][c + colspan]:
                    colspan += 1
                while r + rowspan < len(grid) and _continues_up(grid, r + rowspan, c, colspan):
                    rowspan += 1
            for rr in range(r, r + rowspan):
                for cc in range(c, c + colspan):
                    owned[rr][cc] = True
            out.append(Cell(html.escape(text), rowspan, colspan))
        table.append(out)
    return table


def _continues_up(grid: list[list[tuple[str, str]]], r: int, c: int, colspan: int) -> bool:
    """Whether row r extends the span of the cell starting above at column c, `colspan` wide.
    (No position there can belong to an earlier cell: cells are rectangles, so it would own
    the position above too, which this cell's colspan did not run into.)"""
    return grid[r][c][0] in _UP and all(grid[r][cc][0] in _SPAN_TAGS for cc in range(c, c + colspan))


def table_html(table: Table) -> str:
    """`<table><tr><td rowspan=.. colspan=..>..</td></tr></table>`, no other markup."""
    parts = ["<table>"]
    for row in table:
        parts.append("<tr>")
        for cell in row:
            tag = "th" if cell.header else "td"
            attrs = (f' rowspan="{cell.rowspan}"' if cell.rowspan > 1 else "") + (
                f' colspan="{cell.colspan}"' if cell.colspan > 1 else ""
            )
            parts.append(f"<{tag}{attrs}>{cell.html}</{tag}>")
        parts.append("</tr>")
    parts.append("</table>")
    return "".join(parts)


def otsl_to_html(otsl: str) -> str | None:
    """HTML for an OTSL answer, or None when it holds no table (the caller keeps the text)."""
    table = parse_otsl(otsl)
    return None if table is None else table_html(table)


_ROW = re.compile(r"<tr\b[^>]*>(.*?)</tr\s*>", re.IGNORECASE | re.DOTALL)
_CELL = re.compile(r"<(td|th)\b([^>]*)>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
_SPAN_ATTR = {name: re.compile(rf"\b{name}\s*=\s*[\"']?(\d+)", re.IGNORECASE) for name in ("rowspan", "colspan")}


def parse_table_html(text: str) -> Table | None:
    """The rows and cells of one HTML table (as table_html writes it, or a model's plain
    `<table>`): None for anything else, nested tables included."""
    if text.lower().count("<table") != 1:
        return None
    table: Table = []
    for row in _ROW.findall(text):
        cells = []
        for tag, attrs, inner in _CELL.findall(row):
            spans = {k: int(m.group(1)) if (m := p.search(attrs)) else 1 for k, p in _SPAN_ATTR.items()}
            cells.append(Cell(inner.strip(), max(1, spans["rowspan"]), max(1, spans["colspan"]), tag.lower() == "th"))
        table.append(cells)
    return table or None


def total_columns(table: Table) -> int:
    """Width of the table counting spans, rows below a rowspan included."""
    occupied: dict[int, set[int]] = {}
    width = 0
    for r, row in enumerate(table):
        c = 0
        for cell in row:
            while c in occupied.get(r, ()):
                c += 1
            for rr in range(r, r + cell.rowspan):
                occupied.setdefault(rr, set()).update(range(c, c + cell.colspan))
            c += cell.colspan
            width = max(width, c)
    return width


_TAG_RE = re.compile(r"<[^>]*>")


def cell_key(cell: Cell) -> str:
    """A cell's text for comparing header rows: no markup, full-width ASCII folded to
    half-width, no whitespace."""
    text = html.unescape(_TAG_RE.sub("", cell.html))
    text = "".join(chr(ord(ch) - 0xFEE0) if 0xFF01 <= ord(ch) <= 0xFF5E else ch for ch in text)
    return "".join(text.split())


def chart_to_html(answer: str) -> str | None:
    """A `Chart Recognition:` answer (one line per row, cells separated by `|`, the first line
    the header) as an HTML table; None when no line has a `|`."""
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    if not any("|" in line for line in lines):
        return None

    def cells(line: str) -> list[str]:
        if line.startswith("|"):
            line = line[1:]
        if line.endswith("|"):
            line = line[:-1]
        return [html.escape(c.strip()) for c in line.split("|")]

    head = "".join(f"<th>{c}</th>" for c in cells(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(line)) + "</tr>" for line in lines[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
