"""How a page's text is made, picked once when a scan opens (`choose_strategy`): whole pages
(this module) or layout mode (layout_mode.py); next, spotting and a PDF's own text layer.

A choice is a small picklable plan: what it asks of the recognizer (`recognizer_options`:
parallelism and context size, fixed before the recognizer is built) and `start`, which turns
a loaded recognizer into the PageStrategy that prepares and reads pages. The driver and every
Ray worker start the same plan."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from ppvl_batch.documents.pages import PageError
from ppvl_batch.errors import UsageError
from ppvl_batch.layout.markdown import MarkdownOptions

from .options import PageOptions, ScanOptions
from .task import Rendered


class PageStrategy(Protocol):
    """What the page work (work.PageWork) needs of a way to read pages."""

    task: str  # the records' `task`
    layout_model: str | None  # the records' `layout_model` (None: records have no `blocks`)
    whole_batch: bool  # `read` reads its whole batch before it yields: stopping early saves nothing

    def key_settings(self) -> dict[str, Any] | None:
        """What besides the page options changes a page's text (None: nothing)."""
        ...

    def prepare(self, image: Image.Image) -> Any:
        """A rendered page -> the input `read` takes (cheap enough for a prefetch thread)."""
        ...

    def read(self, pages: Sequence[Rendered]) -> Iterator[tuple[Rendered, Any]]:
        """Each page with its result, or the PageError it met, as pages finish; never raises
        for a bad page (an OutputError, which every later page would meet too, ends the run)."""
        ...


class StrategyPlan(Protocol):
    """A strategy as chosen before the recognizer exists."""

    def recognizer_options(self) -> dict[str, Any]:
        """What the recognizer must be built with (parallel, context_pixels)."""
        ...

    def markdown_options(self) -> MarkdownOptions: ...

    def start(self, recognizer: Any, cwd: Path) -> PageStrategy: ...


@dataclass(frozen=True)
class WholePagePlan:
    page: PageOptions
    parallel: int = 1  # pages decoded together

    def recognizer_options(self) -> dict[str, Any]:
        return {"parallel": self.parallel}

    def markdown_options(self) -> MarkdownOptions:
        return MarkdownOptions()

    def start(self, recognizer: Any, cwd: Path) -> WholePage:
        return WholePage(recognizer, self.page)


class WholePage:
    """A page read whole: one vision batch for the batch's pages, then decoding, `parallel` at once."""

    layout_model: str | None = None
    whole_batch: bool = False

    def __init__(self, recognizer: Any, page: PageOptions) -> None:
        self.rec = recognizer
        self.page = page
        self.task = page.task

    def key_settings(self) -> None:
        return None

    def prepare(self, image: Image.Image) -> Any:
        return self.rec.prepare(image, self.page.task)

    def read(self, pages: Sequence[Rendered]) -> Iterator[tuple[Rendered, Any]]:
        encoded = self._encode(pages)
        jobs = [p for p in pages if id(p) in encoded]
        for p in pages:
            if id(p) not in encoded:
                yield p, p.error
        o = self.page
        requests = ((e, self.rec.request(e, o.task, o.prompt, max_new_tokens=o.max_new_tokens))
                    for e in (encoded[id(p)] for p in jobs))
        for index, outcome in self.rec.decode_many(requests):
            page = jobs[index]
            page.input = None
            if isinstance(outcome, Exception):  # DecoderError
                outcome = PageError("recognition", f"decoder failed: {outcome}")
            yield page, outcome

    def _encode(self, pages: Sequence[Rendered]) -> dict[int, Any]:
        """Vision for the batch (id(page) -> embedding); if the batch fails, page by page, so one
        bad page fails alone (its error set)."""
        if not pages:
            return {}
        task = self.page.task
        try:
            return {id(p): e for p, e in zip(pages, self.rec.encode([p.input for p in pages], task))}
        except (RuntimeError, ValueError):
            encoded = {}
            for page in pages:
                try:
                    (encoded[id(page)],) = self.rec.encode([page.input], task)
                except (RuntimeError, ValueError) as e:
                    page.error = PageError("recognition", f"vision encoder failed: {e}")
            return encoded


def choose_strategy(options: ScanOptions, bundle: Any) -> StrategyPlan:
    """The scan's strategy from its options and the bundle (None: a recognizer without one, which
    reads whole pages); options that contradict it are a UsageError, raised before any model loads."""
    from .layout_mode import layout_plan

    if options.text_layer == "only" and (options.task != "ocr" or options.prompt is not None):
        raise UsageError("--text-layer only gives plain text: not with --task or --prompt")
    plan = layout_plan(options, bundle)
    return plan if plan is not None else WholePagePlan(options.page, options.parallel or 1)
