"""Planning: which pages of which files this run reads, and under which keys.

For each input file the planner decides, page by page, from the journal and the hash cache:
skip it (recorded before), copy it (a file with the same content was recorded: `same_as`), or
read it (a PageTask, or the Rendered page the `render` hook makes of it when the executor renders
here; a Ray worker renders the PageTask itself). Items come out in document order: DocStart,
the document's pages, DocEnd; a file that cannot be opened gives one DocFailed (or is skipped
or copied like a page). Every checkpoint key is computed here, once, and carried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ppvl_batch.documents.inputs import InputFile, Inputs
from ppvl_batch.documents.pages import OpenDocument, PageError, classify_error, open_document
from ppvl_batch.errors import UsageError

from .hashcache import HashCache
from .journal import RecordWriter
from .options import OutputOptions, PageOptions, PlanOptions
from .records import checkpoint_key, settings_digest
from .task import PageTask, Rendered
from .text_pages import policy, text_settings


@dataclass
class DocStart:
    doc: InputFile
    sha256: str
    page_count: int
    numbers: list[int]  # the selected pages, including those skipped as done
    keys: dict[int, str]  # every page of the document -> its checkpoint key (computed here, once)
    todo: int  # how many of the selected pages this run records
    warnings: tuple[str, ...] = ()
    text_keys: dict[int, str] = field(default_factory=dict)  # keys of pages taken from their text layer


@dataclass
class CopyPage:
    """A page (or, page None, a whole failed document) whose content was already recorded under
    its key for another path, in this run or an earlier one: its record is copied, not re-read."""

    task: PageTask


@dataclass
class Skipped:
    status: str  # the status recorded by the earlier run


@dataclass
class DocFailed:
    task: PageTask  # page None
    error: PageError
    seconds: float


@dataclass
class DocEnd:
    start: DocStart


def check_outside_inputs(found: Inputs, options: OutputOptions, targets: list[tuple[str, Path]]) -> None:
    """Refuse outputs inside the input tree: they would be read back as inputs, or overwrite them.
    `targets`: (option, path) of every document output."""
    outputs: list[tuple[str, Path]] = []
    if options.output != "-":
        outputs.append(("output", Path(options.output)))
    for label, path in (("--state", options.state), ("--summary-json", options.summary_json),
                        ("--images", options.images)):
        if path is not None:
            outputs.append((label, path))
    outputs += targets
    files = {d.path for d in found.documents}
    for label, path in outputs:
        resolved = path.resolve()
        inside = next((f for f in found.folders if resolved.is_relative_to(f)), None)
        if inside is not None:
            raise UsageError(f"{label} {path} is inside the input folder {inside}; "
                             "write outputs outside the input tree")
        if resolved in files:
            raise UsageError(f"{label} {path} is one of the input files")


def page_settings(o: PageOptions, model_id: str, layout: dict[str, Any] | None = None) -> str:
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
    """Documents -> items (see the module docstring). `render(document, task)` makes a Rendered
    page (input prepared, or its error); None leaves the PageTask for a worker to render."""

    def __init__(
        self,
        options: PlanOptions,
        opening: PageOptions,
        writer: RecordWriter,
        hashes: HashCache,
        settings: str,
        max_pixels: int,
        render: Callable[[OpenDocument, PageTask], Rendered] | None,
    ) -> None:
        self.o = options
        self.opening = opening  # --password, --dpi
        self.writer = writer
        self.hashes = hashes
        self.settings = settings
        self.max_pixels = max_pixels
        self.render = render
        self.text_layer = policy(opening)  # --text-layer as it applies (text_pages.py)
        self.text_settings = text_settings(settings) if self.text_layer != "ignore" else None
        # sha256 -> page count of the files opened in this run (0: failed to open), for copies
        self._seen: dict[str, int] = {}

    def items(self, doc: InputFile) -> Iterator[object]:
        """The items of one input file; the file is open only while they are being taken."""
        started = time.monotonic()
        sha: str | None = None
        document: OpenDocument | None = None
        try:
            sha = self.hashes.sha256(doc.path)
            page_count = self._page_count_without_opening(sha)
            if page_count is None:
                document = open_document(doc.path, password=self.opening.password, dpi=self.opening.dpi,
                                         max_pixels=self.max_pixels)
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
        return count if all(self._done(self._task("", "", sha, n, count)) for n in numbers) else None

    def _failed_items(self, doc: InputFile, sha: str | None, error: PageError, seconds: float) -> Iterator[object]:
        key = checkpoint_key(self.settings, sha or f"path:{doc.path}", 0)
        task = PageTask(key, str(doc.path), doc.source, None, None, sha)
        if sha is not None and self.writer.journal is not None and (self._skip(key) or sha in self._seen):
            yield self._skip_or_copy(task)
        elif self._skip(key):
            yield self._skipped(key)
        else:
            yield DocFailed(task, error, seconds)
        if sha is not None:
            self._seen.setdefault(sha, 0)

    def _skip_or_copy(self, task: PageTask) -> object:
        """A page recorded before: skipped when this path has its own record, else copied."""
        journal = self.writer.journal
        if journal is not None and (task.key, task.source) in journal.sources and self._skip(task.key):
            return self._skipped(task.key)
        return CopyPage(task)

    def _page_items(
        self, doc: InputFile, sha: str, page_count: int, document: OpenDocument | None
    ) -> Iterator[object]:
        o = self.o
        numbers = o.pages.select(page_count) if o.pages else list(range(1, page_count + 1))
        everything = {n: self._task(str(doc.path), doc.source, sha, n, page_count) for n in range(1, page_count + 1)}
        keys = {n: t.key for n, t in everything.items()}
        text_keys = {n: t.text_key for n, t in everything.items() if t.text_key is not None}
        tasks = {n: everything[n] for n in numbers}
        # An identical file earlier in this run is read (or skipped) first; its records are copied.
        copying = self.writer.journal is not None and sha in self._seen
        self._seen.setdefault(sha, page_count)
        plan = {n: self._skip_or_copy(self._recorded(tasks[n])) if copying or self._done(tasks[n]) else None
                for n in numbers}
        todo = sum(not isinstance(p, Skipped) for p in plan.values())
        warnings = document.warnings if document is not None else ()
        start = DocStart(doc, sha, page_count, numbers, keys, todo, warnings, text_keys)
        yield start
        for number in numbers:
            if plan[number] is not None:
                yield plan[number]
            elif self.render is None:
                yield tasks[number]
            else:
                assert document is not None  # opened whenever a page is to be read
                yield self.render(document, tasks[number])
        yield DocEnd(start)

    def _task(self, doc_path: str, source: str, sha: str, number: int, count: int) -> PageTask:
        text_key = checkpoint_key(self.text_settings, sha, number) if self.text_settings else None
        return PageTask(checkpoint_key(self.settings, sha, number), doc_path, source, number, count, sha, text_key)

    def _done(self, task: PageTask) -> bool:
        """Recorded before under either of its keys: the model's (skipped as ever), or the text
        layer's when it is ok (under `only` also its no_text_layer error, unless --retry-failed;
        a later run without `only` reads such pages)."""
        if self._skip(task.key) or task.text_key is None:
            return self._skip(task.key)
        status = self.writer.status(task.text_key)
        return status == "ok" or (status == "error" and self.text_layer == "only" and not self.o.retry_failed)

    def _recorded(self, task: PageTask) -> PageTask:
        """The task under the key it was recorded with (a copy or a skip reads that record)."""
        if task.text_key is not None and self.writer.status(task.key) is None and self.writer.status(task.text_key):
            return replace(task, key=task.text_key)
        return task

    def _skipped(self, key: str) -> Skipped:
        status = self.writer.status(key)
        assert status is not None  # only called where _skip(key) held: the key has a record
        return Skipped(status)

    def _skip(self, key: str) -> bool:
        status = self.writer.status(key)
        journal = self.writer.journal
        if status == "ok" and journal is not None:  # a status comes from the journal
            return self.o.skip_blank or not journal.entries[key].blank  # --no-skip-blank reads them
        return status == "error" and not self.o.retry_failed
