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

import numpy as np
from PIL import Image

from ppvl_batch.documents.pages import PageError
from ppvl_batch.engine.confidence import text_confidence
from ppvl_batch.errors import UsageError
from ppvl_batch.layout.lines import ink_mask
from ppvl_batch.layout.markdown import MarkdownOptions
from ppvl_batch.layout.positions import PagePositions, estimated_positions, spotting_positions

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


@dataclass(frozen=True)
class ModelPage:
    """A whole page the model read, as its record has it (records.build_record reads these
    fields; width x height is the rendered page, the frame of `lines`)."""

    text: str
    width: int
    height: int
    finish_reason: str
    image_tokens: int
    output_tokens: int
    seconds: float
    warnings: tuple[str, ...]
    confidence: float | None
    min_token_prob: float | None
    lines: list[dict[str, Any]] | None
    positions: str | None  # "spotting" | "estimated" | None
    unparsed: tuple[str, ...] = ()  # answer formats that did not parse (review.py)
    text_source: str = "model"


@dataclass
class PageInput:
    """A rendered page prepared for the model, with what its record needs of the rendering."""

    prepared: Any  # the recognizer's PreparedImage
    size: tuple[int, int]  # the rendered page's
    ink: np.ndarray | None  # its ink mask for estimated lines (None: spotting, a free prompt)


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

    def prepare(self, image: Image.Image) -> PageInput:
        o = self.page
        ink = ink_mask(image) if not self.spotting and not o.prompt else None
        return PageInput(self.rec.prepare(image, o.task), image.size, ink)

    @property
    def spotting(self) -> bool:
        """Whether answers are spotting's lines with locations (a free prompt's are not parsed)."""
        return self.page.task == "spotting" and not self.page.prompt

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
            given, page.input = page.input, None
            if isinstance(outcome, Exception):  # DecoderError
                yield page, PageError("recognition", f"decoder failed: {outcome}")
            else:
                yield page, self.answer(outcome, given)

    def answer(self, result: Any, given: PageInput) -> ModelPage:
        """A recognizer's PageResult as the page's record has it: a spotting answer parsed into
        lines (its text without location tokens, which its confidence leaves out too), other
        answers' lines estimated from the page's ink (layout/positions.py)."""
        width, height = given.size
        exclude: set[int] = set()
        warnings = list(result.warnings)
        if self.spotting:
            spotted = self.rec.spotting(result, width, height)
            tokens = self.rec.spotting_tokens
            exclude = {t for t in result.token_ids if tokens.is_location(t)}
            warnings += [f"unparsed spotting: {problem}" for problem in spotted.problems]
            positions: PagePositions = spotting_positions(spotted)
        else:
            positions = estimated_positions(given.ink, result.text, self.page.task, self.page.prompt)
        confidence = text_confidence(result.token_ids, result.token_probs, exclude=exclude).fields()
        return ModelPage(
            text=result.text if positions.text is None else positions.text, width=width, height=height,
            finish_reason=result.finish_reason, image_tokens=result.image_tokens, output_tokens=result.output_tokens,
            seconds=result.seconds, warnings=tuple(warnings), confidence=confidence["confidence"],
            min_token_prob=confidence["min_token_prob"], lines=positions.lines, positions=positions.positions,
            unparsed=positions.unparsed)

    def _encode(self, pages: Sequence[Rendered]) -> dict[int, Any]:
        """Vision for the batch (id(page) -> embedding); if the batch fails, page by page, so one
        bad page fails alone (its error set)."""
        if not pages:
            return {}
        task = self.page.task
        try:
            return {id(p): e for p, e in zip(pages, self.rec.encode([p.input.prepared for p in pages], task))}
        except (RuntimeError, ValueError):
            encoded = {}
            for page in pages:
                try:
                    (encoded[id(page)],) = self.rec.encode([page.input.prepared], task)
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
