"""The per-page work, the same on every executor: render and prepare a page, run vision over a
batch of pages, decode them, and turn each outcome into its record. Nothing here raises for a bad
page: whatever goes wrong with one page becomes its error (and then its error record).

In layout mode (`layout` given, batch/layout_mode.py) `encode` parses the batch's pages whole
through DocumentParser (detection, every block's vision and decoding) and `decode` hands the
parsed pages on: the executor's loop and the records' code path stay the same."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import groupby
from typing import Any

from ppvl_batch.errors import OutputError

from ppvl_batch.documents.blank import is_blank
from ppvl_batch.documents.pages import OpenDocument
from ppvl_batch.documents.pages import PageError, classify_error

from .layout_mode import LayoutMode
from .options import ScanOptions
from .plan import CopyPage, DocFailed, Page, page_settings
from .records import Record, make_record


class PageWork:
    """One recognizer's work on pages, with a scan's options (task, prompt, limits)."""

    def __init__(self, recognizer: Any, options: ScanOptions, layout: LayoutMode | None = None) -> None:
        self.rec = recognizer
        self.o = options
        self.layout = layout
        self.task = "layout" if layout else options.task  # the records' `task`
        self.layout_model = layout.model_id if layout else None  # the records' `layout_model`
        # page_settings digest: part of every key, and what a Ray worker must compute as well
        self.settings = page_settings(options, recognizer.model_id, layout.key_settings() if layout else None)

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
            elif self.layout is not None:
                page.image = image.convert("RGB")
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
        if self.layout is not None:
            return self._parse(pages)
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

    def _parse(self, pages: Sequence[Page]) -> dict[int, Any]:
        """Layout mode: id(page) -> ParsedPage. One parser call per run of consecutive pages of
        one document (the saved images are named by page number); if a call fails, page by page,
        so one bad page fails alone. A folder the images cannot be written to ends the run."""
        assert self.layout is not None
        parsed: dict[int, Any] = {}
        runs = groupby(enumerate(pages), key=lambda ip: (id(ip[1].doc), ip[1].number - ip[0]))
        for _, run in runs:
            group = [page for _, page in run]
            parser = self.layout.parser(self.rec, group[0].doc)
            try:
                results = parser.parse([p.image for p in group], first_page=group[0].number)
            except OutputError:
                raise
            except Exception:
                results = []
                for page in group:
                    try:
                        results += parser.parse([page.image], first_page=page.number)
                    except OutputError:
                        raise
                    except Exception as e:
                        page.error = PageError("recognition", f"layout parsing failed: {type(e).__name__}: {e}")
                        results.append(None)
            for page, result in zip(group, results):
                page.image = None  # a long run holds only the pages still to parse
                if result is not None:
                    parsed[id(page)] = result
        return parsed

    def decode(self, embeddings: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """(index, PageResult or DecoderError) as pages finish, up to --parallel at once; in
        layout mode the ParsedPages `encode` made, in order."""
        if self.layout is not None:
            return iter(enumerate(embeddings))
        o = self.o
        requests = ((e, self.rec.request(e, o.task, o.prompt, max_new_tokens=o.max_new_tokens)) for e in embeddings)
        return self.rec.decode_many(requests)

    def page_record(self, page: Page, result: Any) -> Record:
        """A page's record: its PageResult, blank, or the error it met on the way (the page's
        `error` is set when it failed, here too for a DecoderError outcome)."""
        o = self.o
        common = dict(
            source=page.doc.source, sha256=page.sha256, page=page.number, page_count=page.page_count,
            task=self.task, prompt=o.prompt, model=self.rec.model_id, key=page.key, warnings=page.warnings,
            layout_model=self.layout_model,
        )
        if page.error is None and isinstance(result, Exception):  # DecoderError
            page.error = PageError("recognition", f"decoder failed: {result}")
        if page.blank:
            return make_record(**common, seconds=page.seconds, blank=True, size=page.size)
        if page.error is None:
            blocks = [b.to_record() for b in result.blocks] if self.layout else None
            return make_record(**common, seconds=page.seconds + result.seconds, result=result, blocks=blocks,
                               review=o.review)
        return make_record(**common, seconds=page.seconds, error=(page.error.type, page.error.message))

    def failed_record(self, item: DocFailed) -> Record:
        """The one record of a document that could not be opened."""
        o = self.o
        return make_record(
            source=item.doc.source, sha256=item.sha256, page=None, page_count=None, task=self.task, prompt=o.prompt,
            model=self.rec.model_id, key=item.key, seconds=item.seconds, error=(item.error.type, item.error.message),
            layout_model=self.layout_model,
        )


def copy_record(item: CopyPage, original: Record) -> Record:
    """The record of a page of a file identical to one already recorded: the original's record,
    with this file's source and `same_as` naming the file that was read. The model did not read
    it: confidence and min_token_prob are null (needs_review follows the original's text)."""
    return {**original, "source": item.doc.source, "seconds": 0.0, "same_as": original.get("same_as") or original["source"],
            "confidence": None, "min_token_prob": None}


def needs_model(item: object) -> bool:
    return isinstance(item, Page) and item.error is None and not item.blank
