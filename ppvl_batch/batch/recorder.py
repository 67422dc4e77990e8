"""Recording: each outcome becomes a record in the journal (and on the output), the summary
counts it, progress shows it, and a document's outputs are written when its pages are all in
(outputs.DocumentOutputs). The executor that runs the pages (local threads or Ray) hands every
item here, in any order across documents; only this one object writes."""

from __future__ import annotations

from .journal import RecordWriter
from .options import Summary
from .outputs import DocumentOutputs
from .plan import CopyPage, DocEnd, DocFailed, DocStart, Skipped
from .progress import Progress
from .records import CRASHED, Record
from .task import PageTask
from .work import PageWork


class Recorder:
    """The one writer of a scan: records (through the RecordWriter), counts, progress, outputs."""

    def __init__(self, writer: RecordWriter, work: PageWork, summary: Summary, progress: Progress,
                 outputs: DocumentOutputs) -> None:
        self.writer = writer
        self.work = work
        self.summary = summary
        self.progress = progress
        self.outputs = outputs
        self._pages: dict[str, dict[int, Record]] = {}  # document source -> its records written in this run

    def item(self, item: object) -> None:
        """Record one planned item other than a page (pages come with their record: `page`)."""
        if isinstance(item, Skipped):
            if item.status == "ok":
                self.summary.pages_done_before += 1
            else:
                self.summary.pages_failed_before += 1
        elif isinstance(item, CopyPage):
            self.copy(item.task)
        elif isinstance(item, DocStart):
            self._pages[item.doc.source] = {}
            self.summary.files_repaired += bool(item.warnings)
            self.progress.document(item.todo, self.summary.files)
        elif isinstance(item, DocFailed):
            self.failed(item)
        elif isinstance(item, DocEnd):
            self.finish_document(item.start)
        else:
            raise TypeError(f"not a planned item: {item!r}")

    def page(self, record: Record) -> None:
        """A page's record, made here or by a worker: counted, written, kept for the document's outputs."""
        s = self.summary
        if record["status"] == "ok":
            s.pages_ok += 1
            s.pages_blank += bool(record.get("blank"))
            from_layer = record.get("text_source") == "pdf"
            s.pages_text_layer += from_layer
            s.blocks_text_layer += sum(b.get("text_source") == "pdf" for b in record.get("blocks") or ())
            s.pages_read += not record.get("blank") and not from_layer
            s.pages_review += bool(record.get("needs_review"))
        else:
            s.pages_failed += 1
            s.pages_read += record["error"]["type"] in ("recognition", CRASHED)  # the model tried
            error = record["error"]
            self.progress.say(f"{record['source']} page {record['page']}: {error['type']}: {error['message']}")
        self.writer.write(record)
        self._pages[record["source"]][record["page"]] = record
        self.progress.page(s)

    def copy(self, task: PageTask) -> None:
        journal = self.writer.journal
        key = task.key if task.text_key is None or self.writer.status(task.key) else task.text_key  # text_pages.py
        if journal is None or self.writer.status(key) is None:
            return  # the identical file's page was not recorded (the run is stopping): next run
        record = self.work.copy(task, journal.record(key))
        if task.page is None:
            self.progress.document(1, self.summary.files)
        else:
            self._pages[task.source][task.page] = record
        self.writer.write(record)
        s = self.summary
        s.pages_copied += 1
        s.pages_review += bool(record.get("needs_review"))
        if record["status"] == "error":  # this file fails too: it counts as failed in this run
            s.pages_failed += 1
            s.files_failed += task.page is None
            error = record["error"]
            self.progress.say(f"{task.source}: {error['type']}: {error['message']} (same as {record['same_as']})")
        self.progress.page(s)

    def failed(self, item: DocFailed) -> None:
        self.progress.document(1, self.summary.files)
        self.writer.write(self.work.failed(item.task, item.error, item.seconds))
        self.summary.files_failed += 1
        self.summary.pages_failed += 1
        self.progress.say(f"{item.task.source}: {item.error.type}: {item.error.message}")
        self.progress.page(self.summary)

    def finish_document(self, start: DocStart) -> None:
        """The document's outputs, from this run's records and the journal's."""
        self.outputs.finish(start, self._pages.pop(start.doc.source, {}))
