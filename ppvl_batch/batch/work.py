"""The per-page work, the same on every executor: render and prepare a page, run vision over a
batch of pages, decode them, and turn each outcome into its record. Nothing here raises for a bad
page: whatever goes wrong with one page becomes its error (and then its error record)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ppvl_batch.documents.blank import is_blank
from ppvl_batch.documents.pages import OpenDocument
from ppvl_batch.documents.pages import PageError, classify_error

from .options import ScanOptions
from .plan import CopyPage, DocFailed, Page
from .records import Record, make_record


class PageWork:
    """One recognizer's work on pages, with a scan's options (task, prompt, limits)."""

    def __init__(self, recognizer: Any, options: ScanOptions) -> None:
        self.rec = recognizer
        self.o = options

    def render(self, document: OpenDocument, page: Page) -> None:
        """Render and prepare one page, or set its error; blank pages are not prepared."""
        try:
            image = document.render(page.number)
        except Exception as e:
            page.error = classify_error(e, f"cannot render page {page.number}")
            return
        try:
            if self.o.skip_blank and is_blank(image):
                page.blank, page.size = True, image.size
            else:
                page.prepared = self.rec.prepare(image, self.o.task)
        except (ValueError, OSError) as e:  # the model's preprocessing refused the image
            page.error = PageError("unsupported", f"page cannot be prepared for the model: {e}")
        except Exception as e:
            page.error = PageError("internal", f"cannot prepare page {page.number}: {type(e).__name__}: {e}")

    def encode(self, pages: Sequence[Page]) -> dict[int, Any]:
        """Vision for the batch (id(page) -> embedding); if the batch fails, page by page, so one
        bad page fails alone (its error set)."""
        if not pages:
            return {}
        try:
            return {id(p): e for p, e in zip(pages, self.rec.encode([p.prepared for p in pages], self.o.task))}
        except (RuntimeError, ValueError):
            encoded = {}
            for page in pages:
                try:
                    (encoded[id(page)],) = self.rec.encode([page.prepared], self.o.task)
                except (RuntimeError, ValueError) as e:
                    page.error = PageError("recognition", f"vision encoder failed: {e}")
            return encoded

    def decode(self, embeddings: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """(index, PageResult or DecoderError) as pages finish, up to --parallel at once."""
        o = self.o
        requests = ((e, self.rec.request(e, o.task, o.prompt, max_new_tokens=o.max_new_tokens)) for e in embeddings)
        return self.rec.decode_many(requests)

    def page_record(self, page: Page, result: Any) -> Record:
        """A page's record: its PageResult, blank, or the error it met on the way (the page's
        `error` is set when it failed, here too for a DecoderError outcome)."""
        o = self.o
        common = dict(
            source=page.doc.source, sha256=page.sha256, page=page.number, page_count=page.page_count,
            task=o.task, prompt=o.prompt, model=self.rec.model_id, key=page.key, warnings=page.warnings,
        )
        if page.error is None and isinstance(result, Exception):  # DecoderError
            page.error = PageError("recognition", f"decoder failed: {result}")
        if page.blank:
            return make_record(**common, seconds=page.seconds, blank=True, size=page.size)
        if page.error is None:
            return make_record(**common, seconds=page.seconds + result.seconds, result=result)
        return make_record(**common, seconds=page.seconds, error=(page.error.type, page.error.message))

    def failed_record(self, item: DocFailed) -> Record:
        """The one record of a document that could not be opened."""
        o = self.o
        return make_record(
            source=item.doc.source, sha256=item.sha256, page=None, page_count=None, task=o.task, prompt=o.prompt,
            model=self.rec.model_id, key=item.key, seconds=item.seconds, error=(item.error.type, item.error.message),
        )


def copy_record(item: CopyPage, original: Record) -> Record:
    """The record of a page of a file identical to one already recorded: the original's record,
    with this file's source and `same_as` naming the file that was read."""
    return {**original, "source": item.doc.source, "seconds": 0.0, "same_as": original.get("same_as") or original["source"]}


def needs_model(item: object) -> bool:
    return isinstance(item, Page) and item.error is None and not item.blank
