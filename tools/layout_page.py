"""A synthetic document page made of blocks the demo model can read, and its layout.

Each block is printed the way the demo model was trained (render_pages.draw_text_page: one
character per 28 x 28 cell, 20 cells wide), so `DocumentParser` with a stand-in detector that
returns these boxes reads the page block by block; the whole page at once is beyond the demo.

    page = layout_page(seed=0)     # -> LayoutPage(image, regions)
    page.regions[0]                 # Region(label="doc_title", bbox=(...), score=..., text="...")
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image
from render_pages import CELL, PAGE_COLUMNS, draw_text_page, random_text

FONT = "dejavu/DejaVuSans.ttf"  # in fonts-dejavu-core, which the test machines have
FONT_PX = 22
GAP = 40  # pixels between blocks and around the page
BLOCK_ROWS = 5  # cells: up to 3 lines with one empty cell above and below
# Reading order (left column top to bottom, then the right one) and the label of each block.
LABELS_12 = (
    "doc_title", "paragraph_title", "text", "text", "text", "table",
    "text", "display_formula", "paragraph_title", "text", "text", "text",
)  # fmt: skip


@dataclass(frozen=True)
class Region:
    label: str
    score: float
    bbox: tuple[int, int, int, int]
    text: str  # what is printed there


@dataclass
class LayoutPage:
    image: Image.Image
    regions: list[Region]


def layout_page(seed: int = 0, labels: tuple[str, ...] = LABELS_12, titles: dict[int, str] | None = None) -> LayoutPage:
    """Blocks in two columns of len(labels) / 2 rows. `titles`: fixed texts by block index (a
    numbered section title, say); other blocks get random document-like lines."""
    rng = random.Random(seed)
    rows = (len(labels) + 1) // 2
    w, h = PAGE_COLUMNS * CELL, BLOCK_ROWS * CELL
    page = Image.new("RGB", (2 * w + 3 * GAP, rows * (h + GAP) + GAP), (235, 235, 235))
    regions = []
    for i, label in enumerate(labels):
        column, row = divmod(i, rows)
        text = (titles or {}).get(i) or random_text(rng, max_lines=1 if "title" in label else 3)
        image, _ = draw_text_page(text, FONT, FONT_PX, rng=rng, margin=(1, 1), canvas=(PAGE_COLUMNS, BLOCK_ROWS))
        x, y = GAP + column * (w + GAP), GAP + row * (h + GAP)
        page.paste(image, (x, y))
        regions.append(Region(label, round(rng.uniform(0.5, 0.99), 4), (x, y, x + w, y + h), text))
    return LayoutPage(page, regions)
