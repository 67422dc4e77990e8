"""Planning: which pages of which files this run reads, and under which keys.

For each input file the planner decides, page by page, from the journal and the hash cache:
skip it (recorded before), copy it (a file with the same content was recorded: `same_as`), or
read it (a Page item, rendered by the `render` hook when the executor renders here, or later on a
worker). Items come out in document order: DocStart, the document's pages, DocEnd; a file that
cannot be opened gives one DocFailed (or is skipped or copied like a page).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppvl_batch.errors import UsageError
from ppvl_batch.documents.inputs import InputFile, Inputs
from ppvl_batch.documents.pages import OpenDocument
from ppvl_batch.documents.pages import PageError, classify_error, open_document

from .hashcache import HashCache
from .journal import RecordWriter
from .options import ScanOptions
from .records import checkpoint_key, settings_digest


@dataclass
class DocStart:
    doc: InputFile
    sha256: str
    page_count: int
    numbers: list[int]  # the selected pages, including those skipped as done
    todo: int  # how many of them this run records
    warnings: tuple[str, ...] = ()


@dataclass
class Page:
    doc: InputFile
    sha256: str
    number: int
    page_count: int
    key: str
    prepared: Any = None  # the recognizer's PreparedImage, or None when `error` is set or blank
    image: Any = None  # layout mode: the rendered page (PIL), until parsed
    error: PageError | None = None
    seconds: float = 0.0  # spent rendering and preparing
    blank: bool = False
    size: tuple[int, int] | None = None  # of the rendered page (the record's width x height)
    page_size_pt: tuple[float, float] | None = None  # of a PDF page, in points
    ink: Any = None  # whole pages: the rendered page's ink mask, for estimated line positions
    warnings: tuple[str, ...] = ()


@dataclass
class CopyPage:
    """A page (or, number 0, a whole failed document) whose content was already recorded under
    `key` for another path, in this run or an earlier one: its record is copied, not re-read."""

    doc: InputFile
    key: str
    number: int


@dataclass
class Skipped:
    status: str  # the status recorded by the earlier run


@dataclass
class DocFailed:
    doc: InputFile
    sha256: str | None
    key: str
    error: PageError
    seconds: float


@dataclass
class DocEnd:
    start: DocStart


def check_outside_inputs(found: Inputs, options: ScanOptions, markdown_targets: list[Path]) -> None:
    """Refuse outputs inside the input tree: they would be read back as inputs, or overwrite them."""
    outputs: list[tuple[str, Path]] = []
    if options.output != "-":
        outputs.append(("output", Path(options.output)))
    for label, path in (("--state", options.state), ("--summary-json", options.summary_json), ("--images", options.images)):
        if path is not None:
            outputs.append((label, path))
    outputs += [("--markdown", p) for p in markdown_targets]
    files = {d.path for d in found.documents}
    for label, path in outputs:
        resolved = path.resolve()
        inside = next((f for f in found.folders if resolved.is_relative_to(f)), None)
        if inside is not None:
            raise UsageError(f"{label} {path} is inside the input folder {inside}; write outputs outside the input tree")
        if resolved in files:
            raise UsageError(f"{label} {path} is one of the input files")


def page_settings(o: ScanOptions, model_id: str, layout: dict[str, Any] | None = None) -> str:
    """Digest of everything besides the file that changes a page's answer (checkpoint_key);
    `layout`: layout mode's settings (LayoutMode.key_settings), absent in whole-page mode so that
    whole-page keys stay what they were."""
    settings = {
        "model": model_id,
        "task": o.task,
        "prompt": o.prompt,
        "min_pixels": o.min_pixels,
        "max_pixels": o.max_pixels,
        "dpi": o.dpi,
        "max_new_tokens": o.max_new_tokens,
    }
    return settings_digest(settings if layout is None else {**settings, "layout": layout})


class Planner:
    """Documents -> items (see the module docstring). `render(document, page)` fills a Page in
    place (image prepared, or its error); None leaves pages unrendered, for a worker to render."""

    def __init__(
        self,
        options: ScanOptions,
        writer: RecordWriter,
        hashes: HashCache,
        settings: str,
        max_pixels: int,
        render: Callable[[OpenDocument, Page], None] | None,
    ) -> None:
        self.o = options
        self.writer = writer
        self.hashes = hashes
        self.settings = settings
        self.max_pixels = max_pixels
        self.render = render
        # sha256 -> page count of the files opened in this run (0: failed to open), for copies
        self._seen: dict[str, int] = {}

    def items(self, doc: InputFile) -> Iterator[object]:
        """The items of one input file; the file is open only while they are being taken."""
        o = self.o
        started = time.monotonic()
        sha: str | None = None
        document: OpenDocument | None = None
        try:
            sha = self.hashes.sha256(doc.path)
            page_count = self._page_count_without_opening(sha)
            if page_count is None:
                document = open_document(doc.path, password=o.password, dpi=o.dpi, max_pixels=self.max_pixels)
                page_count = document.page_count
        except Exception as e:  # whatever it is, this file fails alone
            yield from self._failed_items(doc, sha, classify_error(e, "cannot open"), time.monotonic() - started)
            return
        try:
            yield from self._page_items(doc, sha, page_count, document)
        finally:
            if document is not None:
                document.close()

    def _page_count_without_opening(self, sha: str) -> int | None:
        """The page count of a file with this content when it need not be opened: every selected
        page is already recorded (or is being read in this run from an identical file)."""
        if self.writer.journal is None:
            return None
        seen = self._seen.get(sha)
        if seen is not None:
            return seen or None  # 0: the identical file failed to open; so will this one
        count = self.writer.journal.page_counts.get(sha)
        if count is None:
            return None
        numbers = self.o.pages.select(count) if self.o.pages else range(1, count + 1)
        return count if all(self._skip(checkpoint_key(self.settings, sha, n)) for n in numbers) else None

    def _failed_items(self, doc: InputFile, sha: str | None, error: PageError, seconds: float) -> Iterator[object]:
        key = checkpoint_key(self.settings, sha or f"path:{doc.path}", 0)
        if sha is not None and self.writer.journal is not None and (self._skip(key) or sha in self._seen):
            yield self._skip_or_copy(doc, key, 0)
        elif self._skip(key):
            yield Skipped(self.writer.status(key))
        else:
            yield DocFailed(doc, sha, key, error, seconds)
        if sha is not None:
            self._seen.setdefault(sha, 0)

    def _skip_or_copy(self, doc: InputFile, key: str, number: int) -> object:
        """A page recorded before: skipped when this path has its own record, else copied."""
        journal = self.writer.journal
        if journal is not None and (key, doc.source) in journal.sources and self._skip(key):
            return Skipped(journal.status(key))
        return CopyPage(doc, key, number)

    def _page_items(
        self, doc: InputFile, sha: str, page_count: int, document: OpenDocument | None
    ) -> Iterator[object]:
        o = self.o
        numbers = o.pages.select(page_count) if o.pages else list(range(1, page_count + 1))
        keys = {n: checkpoint_key(self.settings, sha, n) for n in numbers}
        # An identical file earlier in this run is read (or skipped) first; its records are copied.
        copying = self.writer.journal is not None and sha in self._seen
        self._seen.setdefault(sha, page_count)
        plan = {n: self._skip_or_copy(doc, keys[n], n) if copying or self._skip(keys[n]) else None for n in numbers}
        todo = sum(not isinstance(p, Skipped) for p in plan.values())
        warnings = document.warnings if document is not None else ()
        start = DocStart(doc, sha, page_count, numbers, todo, warnings)
        yield start
        for number in numbers:
            if plan[number] is not None:
                yield plan[number]
                continue
            assert document is not None  # opened whenever a page is to be read
            began = time.monotonic()
            page = Page(doc, sha, number, page_count, keys[number], warnings=warnings)
            if self.render is not None:
                self.render(document, page)
            page.seconds = time.monotonic() - began
            yield page
        yield DocEnd(start)

    def _skip(self, key: str) -> bool:
        status = self.writer.status(key)
        if status == "ok":
            return self.o.skip_blank or not self.writer.journal.entries[key].blank  # --no-skip-blank reads them
        return status == "error" and not self.o.retry_failed
