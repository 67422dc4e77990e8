"""Recording: each outcome becomes a record in the journal (and on the output), the summary
counts it, progress shows it, and a document's Markdown is written when its last page is in.
The executor that runs the pages (local threads or Ray) hands every item here, in any order
across documents; only this one object writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppvl_batch.files import atomic_write
from ppvl_batch.documents.inputs import InputFile

from .journal import RecordWriter
from .markdown import render_markdown
from .options import Summary
from .plan import CopyPage, DocFailed, DocStart, Page, Skipped
from .progress import Progress
from .records import Record, checkpoint_key
from .work import PageWork, copy_record


class Recorder:
    def __init__(
        self,
        writer: RecordWriter,
        work: PageWork,
        summary: Summary,
        progress: Progress,
        markdown_paths: dict[Path, Path],
    ) -> None:
        self.writer = writer
        self.work = work
        self.summary = summary
        self.progress = progress
        self.markdown_paths = markdown_paths
        self._pages: dict[Path, dict[int, Record]] = {}  # document path -> records written in this run

    def item(self, item: object, outcome: Any = None) -> None:
        """Record one planned item; a Page with the outcome of its decoding (None if it needed none)."""
        if isinstance(item, Page):
            self.page(item, outcome)
        elif isinstance(item, Skipped):
            if item.status == "ok":
                self.summary.pages_done_before += 1
            else:
                self.summary.pages_failed_before += 1
        elif isinstance(item, CopyPage):
            self.copy(item)
        elif isinstance(item, DocStart):
            self._pages[item.doc.path] = {}
            self.summary.files_repaired += bool(item.warnings)
            self.progress.document(item.todo, self.summary.files)
        elif isinstance(item, DocFailed):
            self.failed(item)
        else:  # DocEnd
            self.finish_document(item.start)

    def page(self, page: Page, result: Any) -> None:
        self.page_record(page.doc, self.work.page_record(page, result))

    def page_record(self, doc: InputFile, record: Record) -> None:
        """A page's record, made here or by a worker (PageWork.page_record): counted, written,
        kept for the document's Markdown."""
        s = self.summary
        if record["status"] == "ok":
            s.pages_ok += 1
            s.pages_blank += bool(record.get("blank"))
            s.pages_review += bool(record.get("needs_review"))
        else:
            s.pages_failed += 1
            error = record["error"]
            self.progress.say(f"{doc.source} page {record['page']}: {error['type']}: {error['message']}")
        self.writer.write(record)
        self._pages[doc.path][record["page"]] = record
        self.progress.page(s)

    def copy(self, item: CopyPage) -> None:
        if self.writer.status(item.key) is None:
            return  # the identical file's page was not recorded (the run is stopping): next run
        record = copy_record(item, self.writer.journal.record(item.key))
        if item.number == 0:
            self.progress.document(1, self.summary.files)
        else:
            self._pages[item.doc.path][item.number] = record
        self.writer.write(record)
        s = self.summary
        s.pages_copied += 1
        s.pages_review += bool(record.get("needs_review"))
        if record["status"] == "error":  # this file fails too: it counts as failed in this run
            s.pages_failed += 1
            s.files_failed += item.number == 0
            self.progress.say(
                f"{item.doc.source}: {record['error']['type']}: {record['error']['message']} (same as {record['same_as']})"
            )
        self.progress.page(s)

    def failed(self, item: DocFailed) -> None:
        self.progress.document(1, self.summary.files)
        self.writer.write(self.work.failed_record(item))
        self.summary.files_failed += 1
        self.summary.pages_failed += 1
        self.progress.say(f"{item.doc.source}: {item.error.type}: {item.error.message}")
        self.progress.page(self.summary)

    def finish_document(self, start: DocStart) -> None:
        """Write the document's Markdown once all its selected pages have records: when pages
        were read in this run, or when the file is missing (e.g. the document was moved)."""
        written = self._pages.pop(start.doc.path, {})
        target = self.markdown_paths.get(start.doc.path)
        if target is None or not start.numbers or (not written and target.exists()):
            return
        records = []
        for number in start.numbers:
            record = written.get(number)
            if record is None:
                key = checkpoint_key(self.work.settings, start.sha256, number)
                if self.writer.status(key) is None:
                    return  # no journal to read it from (stdout without --state)
                record = self.writer.journal.record(key)
            records.append(record)
        atomic_write(target, render_markdown(records, merge_tables=self.work.o.merge_tables).encode())
