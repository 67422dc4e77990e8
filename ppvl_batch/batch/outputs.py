"""Document outputs written from the journal: a document's Markdown, searchable PDF, hOCR and ALTO
made from every recorded page of it, newest record per page (`scan`, and `export` without a model).

An output is written when every page this run selected of its document has a record (in this run
or an earlier one, in any order: --pages, resume, --retry-failed, Ray), and again whenever one of
its pages gets a newer record. An output that is missing (say --markdown added to a finished run)
is written from the journal without reading a page. A writer that fails for one document (an
unwritable target, a PDF that cannot be written back) leaves the others alone: the summary
counts it and says why on stderr, and the run exits with 4. A PDF that cannot be PDF/A (--pdfa) is
written as a plain PDF and counted as written, with its line and the exit code 4 all the same.

A writer (DocumentWriter) gets the records sorted by page, each page once, and writes its target,
DIR/<document path><suffix>, atomically (files.atomic_write or files.atomic_file). It is handed a
document only when every page of it is recorded, unless it says `partial = True` (Markdown does:
with --pages it holds the pages recorded so far).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ppvl_batch.documents.inputs import InputFile
from ppvl_batch.errors import UsageError
from ppvl_batch.layout.markdown import MarkdownOptions
from ppvl_batch.outputs import AltoWriter, HocrWriter, PdfaError, PdfWriter

from .journal import Journal
from .markdown import MarkdownWriter
from .options import OutputOptions, Summary
from .plan import DocStart
from .progress import Progress
from .records import Record


class DocumentWriter(Protocol):
    suffix: str  # ".md", ".pdf", ".hocr", ".alto.xml": the target is DIR/<input path><suffix>

    def write(self, records: list[Record], source: Path, target: Path) -> None:
        """Write `target` atomically from the document's records; OutputError for an unwritable target."""
        ...


@dataclass(frozen=True)
class Output:
    writer: DocumentWriter
    folder: Path  # DIR, as given
    option: str  # the option that asked for it, for messages ("--markdown")


def wanted_outputs(o: OutputOptions, markdown: MarkdownOptions, password: str | None) -> list[Output]:
    """The document outputs the options ask for (--markdown, --pdf [--pdfa], --hocr, --alto);
    `markdown`: the page strategy's options; `password`: the inputs' (--password), for the PDF."""
    if o.pdfa and o.pdf is None:
        raise UsageError("--pdfa makes the --pdf files PDF/A: give --pdf DIR too")
    wanted: list[tuple[Path | None, DocumentWriter, str]] = [
        (o.markdown, MarkdownWriter(markdown), "--markdown"),
        (o.pdf, PdfWriter(pdfa=o.pdfa, password=password), "--pdf"),
        (o.hocr, HocrWriter(), "--hocr"),
        (o.alto, AltoWriter(), "--alto"),
    ]
    return [Output(writer, folder, option) for folder, writer, option in wanted if folder is not None]


class DocumentOutputs:
    """The document outputs: where each goes, and writing them when a document is complete."""

    def __init__(self, outputs: list[Output], cwd: Path, journal: Journal | None, summary: Summary,
                 progress: Progress) -> None:
        self.outputs = outputs
        self.cwd = cwd  # targets mirror the documents' paths relative to it (InputFile.mirror_path)
        self.journal = journal  # where the pages recorded before are read back (None: stdout without --state)
        self.summary = summary
        self.progress = progress

    def targets(self, doc: InputFile) -> list[tuple[Output, Path]]:
        return [(out, out.folder / f"{doc.mirror_path(self.cwd)}{out.writer.suffix}") for out in self.outputs]

    def finish(self, start: DocStart, written: dict[int, Record], rewrite: bool = False) -> None:
        """The document's outputs, if its selected pages are all recorded: each one that is
        missing, or all when this run wrote one of its records (`written`: page -> record) or
        `rewrite` (export)."""
        targets = [(out, t) for out, t in self.targets(start.doc) if written or rewrite or not t.exists()]
        if not targets or not start.numbers:
            return
        pages = self._records(start, written)
        if pages is None:
            return
        whole = len(pages) == start.page_count
        for out, target in targets:
            if not whole and not getattr(out.writer, "partial", False):
                continue
            try:
                out.writer.write(pages, start.doc.path, target)
            except PdfaError as e:  # the plain PDF is written: the user asked for PDF/A and did not get it
                self._error(f"{start.doc.source}: --pdfa {target}: {e}")
                self.summary.outputs_written += 1
            except Exception as e:  # this document's output alone fails; the run goes on
                self._error(f"{start.doc.source}: {out.option} {target} not written: {e}")
            else:
                self.summary.outputs_written += 1

    def _error(self, line: str) -> None:
        self.summary.output_errors.append(line)
        self.progress.say(line)

    def _records(self, start: DocStart, written: dict[int, Record]) -> list[Record] | None:
        """The newest record of each recorded page, by page; None when a selected page has none
        (or there is no journal to read it from: stdout without --state)."""
        journal = self.journal
        selected = set(start.numbers)
        pages = []
        for number, key in start.keys.items():
            record = written.get(number)
            if record is None and journal is not None:  # the model's record, else the text layer's
                found = next((k for k in (key, start.text_keys.get(number)) if k in journal.entries), None)
                record = journal.record(found) if found is not None else None
            if record is not None:
                pages.append(record)
            elif number in selected:
                return None
        return pages
