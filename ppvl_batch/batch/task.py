"""The work for one page as the planner describes it (`PageTask`: small, picklable, carrying its
checkpoint key), and the page on its way through the model (`Rendered`). Both executors hand
these to the same functions (work.PageWork); a Ray worker gets the PageTask itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from ppvl_batch.documents.pages import PageError


@dataclass(frozen=True)
class PageTask:
    """One page to record (page None: the document itself, which could not be opened). The key is
    computed once, by the planner, and carried to the record."""

    key: str  # checkpoint key (records.checkpoint_key)
    path: str  # absolute path of the input file (the same on every node of a cluster)
    source: str  # the path as recorded
    page: int | None  # 1-based; None for a document that could not be opened
    page_count: int | None
    sha256: str | None  # of the file; None when it could not be read
    text_key: str | None = None  # its key when its text comes from the PDF's text layer (text_pages.py)

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> PageTask:
        return cls(**orjson.loads(text))


@dataclass
class Rendered:
    """A page on its way: what the page strategy prepared from the rendered image (`input`), or
    the error it met, or blank (`blank_size`: the rendered page's size, the model is spared)."""

    task: PageTask
    input: Any = None  # the strategy's prepared input; dropped once read
    error: PageError | None = None
    blank_size: tuple[int, int] | None = None
    seconds: float = 0.0  # spent rendering and preparing
    warnings: tuple[str, ...] = ()  # of its document (e.g. a repaired PDF)
    size_pt: tuple[float, float] | None = None  # a PDF page's size in points
    layer: Any = None  # its PDF text layer (documents/text_layer.TextLayer) when --text-layer may use it
    from_layer: bool = False  # whole page: its text is the trusted `layer`'s, the model is spared

    @property
    def needs_model(self) -> bool:
        return self.error is None and self.blank_size is None and not self.from_layer
