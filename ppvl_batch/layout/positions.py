"""The `lines` and `positions` of records (docs/positions.md): from a spotting answer, or
estimated from the ink under a block or a whole page. Pure functions of a page's result, its ink
and its text, so that every executor and record builder gives the same lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.spotting import Spotting
from .labels import Block
from .lines import block_line_boxes, even_boxes, ink_box, ink_mask, line_records, page_line_boxes, text_lines

# Tasks whose whole answer is one unit on the page (HTML, LaTeX, a seal's text): one line, the
# ink's box. OCR answers are lines of text; free prompts can be anything (no lines).
ONE_LINE_TASKS = frozenset({"table", "formula", "chart", "seal"})


@dataclass
class PagePositions:
    """What a page's record gets: `lines`, `positions`, and for spotting its text and whether it
    parsed (`unparsed`: the formats review.py flags)."""

    lines: list[dict[str, Any]] | None
    positions: str | None  # spotting | estimated | None
    text: str | None = None  # replaces the answer's text (spotting: without location tokens)
    unparsed: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)  # what did not parse, for a warning


def spotting_positions(spotting: Spotting) -> PagePositions:
    """A parsed spotting answer as record fields; an answer not parsed whole asks for review."""
    return PagePositions(
        lines=[line.to_record() for line in spotting.lines],
        positions="spotting",
        text=spotting.text,
        unparsed=() if spotting.ok else ("spotting",),
        problems=list(spotting.problems),
    )


def estimated_positions(mask: np.ndarray | None, text: str, task: str, prompt: str | None) -> PagePositions:
    """Lines of a whole page read without spotting, from its ink `mask` (lines.ink_mask of the
    rendered page): OCR text matched to its ink bands, or no lines when they do not match;
    tables, formulas, charts and seals one line over all the ink; free prompts no lines."""
    if mask is None or prompt:
        return PagePositions(None, None)
    if task in ONE_LINE_TASKS:
        box = ink_box(mask)
        stripped = text.strip()
        if box is None or not stripped:
            return PagePositions([], "estimated")
        return PagePositions(line_records([stripped], [box]), "estimated")
    lines = text_lines(text)
    boxes = page_line_boxes(mask, len(lines))
    if boxes is None:
        return PagePositions(None, None)
    return PagePositions(line_records(lines, boxes), "estimated")


def stacked_lines(mask: np.ndarray, text: str, max_band: float = 0.5) -> list[dict[str, Any]]:
    """Every line of `text` in the ink's box (the whole mask without ink), sharing its height
    evenly, for a consumer that must place all the text (a PDF text layer) where
    estimated_positions found no match. A line is at most `max_band` times as tall as the box is
    wide: OCRmyPDF's renderer drops a line far taller than its text (a page's ink for one line)."""
    lines = text_lines(text)
    if not lines:
        return []
    box = ink_box(mask) or (0.0, 0.0, float(mask.shape[1]), float(mask.shape[0]))
    x0, y0, x1, y1 = box
    band = min((y1 - y0) / len(lines), (x1 - x0) * max_band)
    return line_records(lines, even_boxes((x0, y0, x1, y0 + band * len(lines)), len(lines)))


def block_lines(grey: np.ndarray, block: Block) -> list[dict[str, Any]] | None:
    """A layout block's `lines` from the page's grey pixels: text blocks from their crop's ink
    (the block's height shared evenly when bands and lines disagree), tables, formulas and
    charts one line with the block's box; blocks not read or failed none."""
    if block.task is None or block.error is not None:
        return None
    text = block.text.strip()
    if not text:
        return []
    if block.format != "text" or block.task in ONE_LINE_TASKS:
        return line_records([text], [tuple(float(v) for v in block.bbox)])  # type: ignore[list-item]
    x0, y0, x1, y1 = _clipped(block.bbox, grey.shape)
    lines = text_lines(text)
    if x1 <= x0 or y1 <= y0:
        return line_records(lines, even_boxes(block.bbox, len(lines)))
    return line_records(lines, block_line_boxes(ink_mask(grey[y0:y1, x0:x1]), (x0, y0, x1, y1), len(lines)))


def page_block_lines(grey: np.ndarray, blocks: Sequence[Block]) -> list[dict[str, Any]]:
    """Set each block's `lines`; the page's lines: every block's, in block order."""
    out: list[dict[str, Any]] = []
    for block in blocks:
        block.lines = block_lines(grey, block)
        out += block.lines or []
    return out


def _clipped(bbox: Sequence[float], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    height, width = shape[:2]
    x0, y0, x1, y1 = (int(v) for v in bbox)
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
