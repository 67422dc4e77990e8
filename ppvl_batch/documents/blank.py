"""Blank pages: a page with no ink, decided from its pixels before the model sees it.

A scanned archive is full of empty backs; read by the model they cost a full page of vision and
may come back with invented text. A page is blank when no mark on it is larger than a speck:

1. grey levels; the paper is estimated as the median of blocks of about 1/32 of the page,
   smoothly interpolated, so an uneven scan (a gradient, a shadowed side) is still paper;
2. a pixel is ink when it differs from the paper by more than INK_CONTRAST (24) grey levels and
   by more than NOISE_SIGMAS (4.5) times the page's own noise (estimated from the median absolute
   deviation, so JPEG noise and paper texture raise the bar only as far as they reach), and is
   not much fainter (RING_RATIO) than the darkest pixel within RING_REACH: JPEG leaves faint
   echoes of a dark speck a few pixels away, which would make the speck look larger;
3. ink pixels one pixel apart are joined (a faint line broken by noise stays one mark), and
   the page is blank when no mark's bounding box reaches MIN_MARK (0.8%) of the page's longer
   side, and at least MIN_MARK_PIXELS (10; proportionally less below 600 pixels): on an A4 page
   about 2.4 mm, the height of a 10 pt digit. Dust and specks are smaller; a character, a word or
   a pencil line is not. A lone mark smaller than that (a full stop, a tiny digit at 100 dpi) counts as a speck.

A margin of EDGE (2%) of each side is ignored (scanner shadows and page edges). Cost: a few numpy
passes over the page (about 30 ms for 850 x 1100 pixels and 60 ms for 1240 x 1754 on one core of
the project's machine), against tens of seconds for the model. `--no-skip-blank` reads such pages
anyway. tests/test_scan_robust.py checks the thresholds on generated scans of empty pages (paper
texture, a light gradient, dust, JPEG noise) and on the same pages with one faint line.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

INK_CONTRAST = 24.0  # grey levels (of 255) between ink and paper, at least
NOISE_SIGMAS = 4.5  # ... and this many noise standard deviations
MIN_MARK = 0.008  # a mark this long (fraction of the longer side) is ink, not a speck
MIN_MARK_PIXELS = 10
EDGE = 0.02  # margin ignored on each side
RING_RATIO = 0.3  # a pixel this much fainter than the darkest within RING_REACH is a JPEG echo
RING_REACH = 9  # pixels (one JPEG block and a bit)
_MAX_INK_FRACTION = 0.02  # more ink pixels than this: not blank, no need to look closer


def is_blank(image: Image.Image) -> bool:
    """True when the page holds no mark larger than a speck (see the module docstring)."""
    grey = image.convert("L")
    width, height = grey.size
    mx, my = int(width * EDGE), int(height * EDGE)
    if width - 2 * mx < 4 or height - 2 * my < 4:
        return False  # too small to judge: let the model read it
    pixels = np.asarray(grey, dtype=np.float32)
    diff = np.abs(pixels - _paper(pixels))[my:height - my, mx:width - mx]
    sigma = 1.4826 * float(np.median(diff))  # MAD of a zero-centred residual
    # JPEG rings around a dark speck with faint copies of it a few pixels away: a pixel is only
    # ink when it is not much fainter than the darkest mark next to it
    ink = (diff > max(INK_CONTRAST, NOISE_SIGMAS * sigma)) & (diff > RING_RATIO * _max_filter(diff, RING_REACH))
    if ink.mean() > _MAX_INK_FRACTION:
        return False
    if not ink.any():
        return True
    # join pixels one apart, then measure each mark's extent
    joined = _max_filter(ink, 3)
    longer = max(width, height)
    limit = max(min(MIN_MARK_PIXELS, longer / 60), MIN_MARK * longer) + 2  # +2: what the join added
    return _longest_mark(joined) < limit


def _max_filter(a: np.ndarray, size: int) -> np.ndarray:
    """Maximum over a size x size square around each pixel (separable: rows, then columns)."""
    r = size // 2
    out = a.copy()
    for axis in (0, 1):
        src = out.copy()
        n = a.shape[axis]
        for shift in range(1, r + 1):
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(0, n - shift), slice(shift, n)
            np.maximum(out[tuple(lo)], src[tuple(hi)], out=out[tuple(lo)])
            np.maximum(out[tuple(hi)], src[tuple(lo)], out=out[tuple(hi)])
    return out


def _paper(pixels: np.ndarray) -> np.ndarray:
    """The paper's grey level at every pixel: block medians, bilinearly interpolated."""
    height, width = pixels.shape
    block = max(4, max(height, width) // 32)
    rows, cols = -(-height // block), -(-width // block)
    padded = np.pad(pixels, ((0, rows * block - height), (0, cols * block - width)), mode="edge")
    medians = np.median(padded.reshape(rows, block, cols, block).transpose(0, 2, 1, 3).reshape(rows, cols, -1), axis=2)
    small = Image.fromarray(medians.astype(np.float32), "F")
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _longest_mark(mask: np.ndarray) -> int:
    """The largest bounding-box side of the 8-connected marks of a sparse mask: runs of pixels in
    each row, runs touching in neighbouring rows joined with a union-find."""
    ys, xs = np.nonzero(mask)
    starts = np.ones(len(xs), dtype=bool)
    starts[1:] = (ys[1:] != ys[:-1]) | (xs[1:] != xs[:-1] + 1)
    first = np.flatnonzero(starts)
    last = np.append(first[1:], len(xs)) - 1
    run_y, run_x0, run_x1 = ys[first].tolist(), xs[first].tolist(), xs[last].tolist()
    parent = list(range(len(run_y)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # runs are ordered by row then x: each run is checked against the runs of the row above
    above, row_start = (0, 0), 0
    for i, y in enumerate(run_y):
        if i and y != run_y[i - 1]:
            above = (row_start, i) if run_y[i - 1] == y - 1 else (i, i)
            row_start = i
        for j in range(*above):
            if run_x1[j] >= run_x0[i] - 1 and run_x0[j] <= run_x1[i] + 1:
                parent[find(j)] = find(i)
    boxes: dict[int, list[int]] = {}
    for i, y in enumerate(run_y):
        box = boxes.setdefault(find(i), [y, y, run_x0[i], run_x1[i]])
        box[0], box[1] = min(box[0], y), max(box[1], y)
        box[2], box[3] = min(box[2], run_x0[i]), max(box[3], run_x1[i])
    return max(max(b[1] - b[0], b[3] - b[2]) + 1 for b in boxes.values())
