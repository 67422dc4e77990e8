"""One page's work, the same on every executor (the local threads and each Ray worker call these
functions): render and prepare a page from its PageTask, read a batch of rendered pages through
the scan's page strategy, and build each outcome's record (records.build_record). Nothing here
raises for a bad page: whatever goes wrong with one page becomes its error record."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ppvl_batch.documents.blank import is_blank
from ppvl_batch.documents.pages import OpenDocument, PageError, classify_error, open_document

from .options import PageOptions
from .plan import page_settings
from .records import Blank, Copied, Record, RunFields, build_record
from .strategy import PageStrategy
from .task import PageTask, Rendered
from .text_pages import NO_TEXT_LAYER, TextPage, read_layer


class PageWork:
    """A scan's page work: its strategy over one recognizer, with the page options."""

    def __init__(self, strategy: PageStrategy, page: PageOptions, model_id: str) -> None:
        self.strategy = strategy
        self.page = page
        self.run = RunFields(strategy.task, page.prompt, model_id, strategy.layout_model, page.review)
        # page_settings digest: part of every key, and what a Ray worker must compute as well
        self.settings = page_settings(page, model_id, strategy.key_settings())

    def render(self, document: OpenDocument, task: PageTask) -> Rendered:
        """Render one page and prepare it for the strategy, or say what went wrong; blank pages
        are not prepared."""
        began = time.monotonic()
        page = Rendered(task, warnings=document.warnings)
        assert task.page is not None
        if task.text_key is not None and self._from_layer(document, page):
            page.seconds = time.monotonic() - began
            return page
        try:
            image = document.render(task.page)
            page.size_pt = document.size_pt(task.page)
        except Exception as e:
            page.error = classify_error(e, f"cannot render page {task.page}")
        if page.error is None:
            try:
                if self.page.skip_blank and is_blank(image):
                    page.blank_size = image.size
                else:
                    page.input = self.strategy.prepare(image)
            except (ValueError, OSError) as e:  # the model's preprocessing refused the image
                page.error = PageError("unsupported", f"page cannot be prepared for the model: {e}")
            except Exception as e:
                page.error = PageError("internal", f"cannot prepare page {task.page}: {type(e).__name__}: {e}")
        page.seconds = time.monotonic() - began
        return page

    def _from_layer(self, document: OpenDocument, page: Rendered) -> bool:
        """--text-layer (the planner gave the task a text key): True when the page needs no
        rendering, its text taken from a trusted layer (whole pages) or, under `only`, its
        no_text_layer error; in layout mode the layer is kept for the blocks."""
        task = page.task
        assert task.page is not None and task.text_key is not None
        layer, warning = read_layer(document, task.page, task.source)
        if warning is not None:
            page.warnings = (*page.warnings, warning)
        if self.strategy.layout_model is not None:
            page.layer = layer
            return False
        if layer is not None and layer.trust.trusted:
            page.layer, page.from_layer = layer, True
        elif self.page.text_layer == "only":
            why = layer.trust.reason if layer is not None else warning or "an image has no text layer"
            page.error = PageError(NO_TEXT_LAYER,
                                    f"no trustworthy text layer ({why}); --text-layer only runs no model")
        else:
            return False
        page.task = replace(task, key=task.text_key)
        page.size_pt = document.size_pt(task.page)
        return True

    def read(self, pages: Sequence[Rendered]) -> Iterator[tuple[Rendered, Record]]:
        """Each page with its record: first those that need no model (failed, blank), then the
        others as the strategy finishes them."""
        wanted = [p for p in pages if p.needs_model]
        for page in pages:
            if not page.needs_model:
                outcome = page.error or (TextPage(page.layer) if page.from_layer else None)
                yield page, self.record(page, outcome or Blank(*(page.blank_size or (None, None))))
        if wanted:
            for page, outcome in self.strategy.read(wanted):
                yield page, self.record(page, outcome)

    def record(self, page: Rendered, outcome: Any) -> Record:
        record = build_record(self.run, page.task, outcome, seconds=page.seconds, warnings=page.warnings,
                              size_pt=page.size_pt)
        if isinstance(outcome, TextPage):
            record.update(outcome.fields())
        elif record["status"] == "ok" and not record.get("blank") and self.run.layout_model is None:
            record.setdefault("text_source", "model")
        return record

    def failed(self, task: PageTask, error: PageError, seconds: float) -> Record:
        """The one record of a document that could not be opened."""
        return build_record(self.run, task, error, seconds=seconds)

    def copy(self, task: PageTask, original: Record) -> Record:
        """The record of a page of a file identical to one already recorded."""
        return build_record(self.run, task, Copied(original))


class TaskReader:
    """A worker's side: PageTasks -> records, each file opened once for consecutive tasks."""

    def __init__(self, work: PageWork, max_pixels: int) -> None:
        self.work = work
        self.max_pixels = max_pixels  # as the planner opens documents (the recognizer's)

    def records(self, tasks: Sequence[PageTask]) -> list[Record]:
        """One record per task, in the tasks' order, whatever happens to a page."""
        rendered: list[Rendered] = []
        opened: tuple[str, OpenDocument | PageError] | None = None
        try:
            for task in tasks:
                if opened is None or opened[0] != task.path:
                    _close(opened)
                    opened = (task.path, self._open(task))
                document = opened[1]
                rendered.append(self.work.render(document, task) if isinstance(document, OpenDocument)
                                else Rendered(task, error=document))
        finally:
            _close(opened)
        by_page = {id(page): record for page, record in self.work.read(rendered)}
        return [by_page[id(page)] for page in rendered]

    def _open(self, task: PageTask) -> OpenDocument | PageError:
        o = self.work.page
        try:
            return open_document(Path(task.path), password=o.password, dpi=o.dpi, max_pixels=self.max_pixels)
        except Exception as e:  # changed or gone since the driver planned it: its pages fail alone
            return classify_error(e, "cannot open")


def _close(opened: tuple[str, OpenDocument | PageError] | None) -> None:
    if opened is not None and isinstance(opened[1], OpenDocument):
        opened[1].close()
