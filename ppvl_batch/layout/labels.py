"""The layout labels and what the pipeline does with each (docs/layout-text.md, "Labels").

PP-DocLayoutV2 and V3 share one list of 25 labels (their `inference.yml`). A label decides the
prompt its crop is read with (or that it is not read but saved as an image), the format of the
block's text, whether it takes a reading-order number, and whether it appears in Markdown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

# Class id -> label, identical for PP-DocLayoutV2 and PP-DocLayoutV3.
LABELS: tuple[str, ...] = (
    "abstract", "algorithm", "aside_text", "chart", "content", "display_formula", "doc_title",
    "figure_title", "footer", "footer_image", "footnote", "formula_number", "header", "header_image",
    "image", "inline_formula", "number", "paragraph_title", "reference", "reference_content", "seal",
    "table", "text", "vertical_text", "vision_footnote",
)  # fmt: skip
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

# Never sent to the model: the crop is saved and linked.
IMAGE_LABELS = frozenset({"image", "header_image", "footer_image"})
FORMULA_LABELS = frozenset({"display_formula", "inline_formula"})  # formula_number is read as text

# Labels that get no reading-order number in PaddleX's results (`order` is null).
SKIP_ORDER_LABELS = frozenset({
    "figure_title", "vision_footnote", "image", "chart", "table", "header", "header_image",
    "footer", "footer_image", "footnote", "aside_text",
})  # fmt: skip
# Kept in the JSON, left out of the Markdown (the pipeline configs' `markdown_ignore_labels`).
MARKDOWN_IGNORE_LABELS = frozenset({
    "number", "footnote", "header", "header_image", "footer", "footer_image", "aside_text",
})  # fmt: skip

FORMATS = ("text", "latex", "html", "image")


def check_label(label: str) -> None:
    if label not in LABEL_IDS:
        raise ValueError(f"unknown layout label {label!r}")


def block_task(label: str, *, charts: bool = False, seals: bool = False) -> str | None:
    """The task (a key of prompt.TASKS) a block of this label is read with, or None when the
    block is not sent to the model. Charts and seals are read only when enabled (off by
    default, as in PaddleOCR); otherwise they are kept as images."""
    check_label(label)
    if label in IMAGE_LABELS:
        return None
    if label == "table":
        return "table"
    if label in FORMULA_LABELS:
        return "formula"
    if label == "chart":
        return "chart" if charts else None
    if label == "seal":
        return "seal" if seals else None
    return "ocr"


def block_format(label: str, *, charts: bool = False, seals: bool = False) -> str:
    """The format a successful block's text has: text, latex, html or image (no text, a file).
    A table or chart answer that cannot be converted stays `text` (see blocks.finish_text)."""
    task = block_task(label, charts=charts, seals=seals)
    return {None: "image", "formula": "latex", "table": "html", "chart": "html"}.get(task, "text")


def saves_image(label: str, *, charts: bool = False, seals: bool = False) -> bool:
    """Whether the block's crop is written as an image file. Seals are saved even when read:
    PaddleX shows a seal as its picture in Markdown either way."""
    return block_task(label, charts=charts, seals=seals) is None or label == "seal"


def prompt_table(*, charts: bool = False, seals: bool = False) -> dict[str, str | None]:
    """label -> task for every label: what a checkpoint key must cover of these choices."""
    return {label: block_task(label, charts=charts, seals=seals) for label in LABELS}


def reading_orders(labels: Iterable[str], ignore: Iterable[str] = MARKDOWN_IGNORE_LABELS) -> list[int | None]:
    """Reading-order numbers for blocks already in reading order: 1, 2, ... over the labels that
    take one (not in SKIP_ORDER_LABELS nor in the Markdown-ignored labels), None for the rest."""
    skip = SKIP_ORDER_LABELS | frozenset(ignore)
    orders: list[int | None] = []
    n = 0
    for label in labels:
        if label in skip:
            orders.append(None)
        else:
            n += 1
            orders.append(n)
    return orders


@dataclass
class Block:
    """One layout block of a page as the pipeline carries it and a record stores it."""

    id: int  # index in the page's block list (reading order)
    label: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the page as rendered
    score: float
    order: int | None = None  # reading-order number, None for labels that take none
    task: str | None = None  # prompt.TASKS key, None when not sent to the model
    text: str = ""  # post-processed answer: plain text, LaTeX (no delimiters) or HTML
    format: str = "text"  # text | latex | html | image
    image: str | None = None  # saved crop, relative to the Markdown file's folder
    finish_reason: str | None = None
    output_tokens: int | None = None
    error: dict[str, str] | None = None  # {"type", "message"}: this block failed, not the page
    # PP-DocLayoutV4's quad, [[x, y]] TL TR BR BL in the bbox's pixels (bbox is its extent);
    # None for V2/V3, whose blocks are their bbox
    polygon: list[list[int]] | None = None
    text_source: str | None = None  # "model" | "pdf" (the PDF's text layer, --text-layer); None: not read
    lines: list[dict[str, Any]] | None = None  # the text layer's lines in the block (shared record schema)
    confidence: float | None = None  # of its answer's tokens (engine/confidence.py); None unless read
    min_token_prob: float | None = None

    def __post_init__(self) -> None:
        check_label(self.label)
        if self.format not in FORMATS:
            raise ValueError(f"unknown block format {self.format!r}")
        self.bbox = tuple(int(v) for v in self.bbox)  # type: ignore[assignment]
        if self.polygon is not None:
            self.polygon = [[int(x), int(y)] for x, y in self.polygon]

    def fail(self, type: str, message: str) -> None:
        """Mark this block failed (a crop the preprocessor cannot take, a decoder error)."""
        self.error = {"type": type, "message": message}
        self.text = ""

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["bbox"] = list(self.bbox)
        record["score"] = round(float(self.score), 4)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Block:
        return cls(**{**record, "bbox": tuple(record["bbox"])})
