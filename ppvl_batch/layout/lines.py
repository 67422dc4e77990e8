"""Where the lines of a text sit, estimated from the ink of its image (docs/positions.md).

A printed text line is a band of rows with ink, and paper separates one line from the next. The
bands of a block (or of a whole page) are matched in order to the lines of the text the model
read there. Bands that touch (tight leading) are split at the faintest row near where the lines
should part; marks much smaller than a line (an accent, a dot, dust) join the line next to them or
are dropped. When bands and lines still disagree in number, a block's lines share its height
evenly; a whole page gets no lines, since there the disagreement means columns or figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from PIL import Image

MIN_CONTRAST = 24  # grey levels between paper and the darkest ink, at least, for there to be ink
SMALL_MARK = 0.45  # a band lower than this share of the median band is a mark, not a line ...
MARK_REACH = 0.6  # ... and joins a line within this share of the median band height
SPLIT_AT = 1.5  # a band this many line pitches tall holds more than one line
SPLIT_WINDOW = 0.35  # a split is looked for within this share of a pitch around where it should be
FIGURE_BAND = 3.0  # on a whole page, a band this many median bands tall is a figure (no lines)
GUTTER = 2.5  # a gap in a band wider than this many band heights is between columns ...
COLUMN_SHARE = 0.3  # ... and when this share of a page's bands have one, the page has columns

Box = tuple[float, float, float, float]


def ink_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """True where a pixel is ink: darker than halfway between the paper (the 90th percentile grey)
    and the darkest pixel, when those differ by MIN_CONTRAST at least."""
    grey = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image)
    if grey.size == 0:
        return np.zeros(grey.shape, dtype=bool)
    paper, dark = float(np.percentile(grey, 90)), float(grey.min())
    if paper - dark < MIN_CONTRAST:
        return np.zeros(grey.shape, dtype=bool)
    return grey < (paper + dark) / 2


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def ink_bands(mask: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges [y0, y1) of the mask's lines: runs of inked rows, small marks joined to the
    line next to them (accents, the dots of i and j) or dropped (specks)."""
    profile = mask.sum(axis=1)
    bands = _runs(profile > 0)
    if len(bands) < 2:
        return bands
    median = float(np.median([b - a for a, b in bands]))
    out: list[list[int]] = []
    for a, b in bands:
        if b - a >= SMALL_MARK * median:
            out.append([a, b])
    if not out:
        return [(bands[0][0], bands[-1][1])]
    for a, b in bands:  # the small marks: to the nearest line within reach, or away
        if b - a >= SMALL_MARK * median:
            continue
        near = min(out, key=lambda band: max(band[0] - b, a - band[1], 0))
        if max(near[0] - b, a - near[1], 0) <= MARK_REACH * median:
            near[0], near[1] = min(near[0], a), max(near[1], b)
    return [(a, b) for a, b in out]


def split_bands(profile: np.ndarray, bands: list[tuple[int, int]], lines: int) -> list[tuple[int, int]]:
    """Bands that hold several lines (their height over SPLIT_AT pitches) cut at the faintest row
    near each place the lines should part, while there are fewer bands than `lines`."""
    if not bands or len(bands) >= lines:
        return bands
    pitch = (bands[-1][1] - bands[0][0]) / lines
    out: list[tuple[int, int]] = []
    for a, b in bands:
        parts = round((b - a) / pitch) if (b - a) > SPLIT_AT * pitch else 1
        start = a
        for k in range(1, parts):
            at = a + (b - a) * k / parts
            lo, hi = int(max(start + 1, at - SPLIT_WINDOW * pitch)), int(min(b - 1, at + SPLIT_WINDOW * pitch))
            if hi <= lo:
                continue
            cut = lo + int(np.argmin(profile[lo:hi]))
            out.append((start, cut))
            start = cut
        out.append((start, b))
    return out


def _band_box(mask: np.ndarray, band: tuple[int, int]) -> tuple[int, int, int, int]:
    a, b = band
    cols = np.flatnonzero(mask[a:b].any(axis=0))
    return int(cols[0]), a, int(cols[-1]) + 1, b


def _has_gutter(mask: np.ndarray, band: tuple[int, int]) -> bool:
    """Whether the band's ink parts somewhere by more than GUTTER band heights."""
    a, b = band
    runs = _runs(np.asarray(mask[a:b].any(axis=0)))
    return any(later[0] - earlier[1] > GUTTER * (b - a) for earlier, later in pairwise(runs))


def text_lines(text: str) -> list[str]:
    """The non-empty lines of a text, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def match_lines(mask: np.ndarray, lines: int, origin: tuple[float, float] = (0, 0)) -> list[Box] | None:
    """One ink box per line, in order, in the coordinates of the image the mask was cut from
    (`origin` is where the mask's top-left pixel lies), or None when the bands cannot be matched."""
    if lines <= 0:
        return []
    bands = ink_bands(mask)
    bands = split_bands(mask.sum(axis=1), bands, lines)
    if len(bands) != lines:
        return None
    ox, oy = origin
    return [(x0 + ox, y0 + oy, x1 + ox, y1 + oy) for x0, y0, x1, y1 in (_band_box(mask, band) for band in bands)]


def even_boxes(bbox: Sequence[float], lines: int) -> list[Box]:
    """`lines` boxes that share the block's height evenly."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    step = (y1 - y0) / max(lines, 1)
    return [(x0, y0 + i * step, x1, y0 + (i + 1) * step) for i in range(lines)]


def block_line_boxes(mask: np.ndarray, bbox: Sequence[float], lines: int) -> list[Box]:
    """Boxes of a text block's `lines` from its crop's ink mask (the crop of `bbox`), the block's
    height shared evenly when the ink does not match."""
    return match_lines(mask, lines, (int(bbox[0]), int(bbox[1]))) or even_boxes(bbox, lines)


def page_line_boxes(mask: np.ndarray, lines: int) -> list[Box] | None:
    """Boxes of a whole page's `lines` from its ink mask, or None when the page's bands do not
    match its lines (columns, figures)."""
    bands = ink_bands(mask)
    if not bands:
        return None if lines else []
    heights = [b - a for a, b in bands]
    median = float(np.median(heights))
    if max(heights) > FIGURE_BAND * median:
        return None
    if sum(_has_gutter(mask, band) for band in bands) > COLUMN_SHARE * len(bands):
        return None
    return match_lines(mask, lines)


def ink_box(mask: np.ndarray, origin: tuple[float, float] = (0, 0)) -> Box | None:
    """The bounding box of all the ink, or None without ink."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    ox, oy = origin
    return (cols[0] + ox, rows[0] + oy, cols[-1] + 1 + ox, rows[-1] + 1 + oy)


def line_records(texts: Sequence[str], boxes: Sequence[Box]) -> list[dict]:
    """The records' `lines` entries for texts and their axis-aligned boxes."""
    out = []
    for text, (x0, y0, x1, y1) in zip(texts, boxes):
        x0, y0, x1, y1 = (round(float(v), 2) for v in (x0, y0, x1, y1))
        out.append({"text": text, "bbox": [x0, y0, x1, y1], "quad": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
                    "confidence": None})
    return out
