"""`export`: an earlier scan's document outputs (Markdown, searchable PDF, hOCR, ALTO) written from its
JSONL records and the input files, without the model. The files come from the scan's own
DocumentOutputs, so they are the ones `scan` writes.

The documents are the records' sources: paths as the scan was given them, so export runs in the
folder the scan ran in (targets mirror the same paths). Each document is written from the newest
record of each page; an input whose sha256 is no longer its records' (it changed, or is gone, since
it was read) is refused and its outputs are left alone, the other documents go on (exit 1). The
journal is only read: a scan may be appending to it meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ppvl_batch.documents.inputs import InputFile
from ppvl_batch.documents.pages import PageError, file_sha256
from ppvl_batch.errors import ExitCode, OutputError, UsageError
from ppvl_batch.layout.markdown import MarkdownOptions

from .journal import Journal
from .options import OutputOptions, Summary
from .outputs import DocumentOutputs, wanted_outputs
from .plan import DocStart
from .progress import Progress


@dataclass(frozen=True)
class ExportOptions:
    journal: Path  # the scan's JSONL output (or, after -o -, STATE/journal.jsonl)
    outputs: OutputOptions  # markdown, pdf, hocr, alto, pdfa, overwrite
    password: str | None = None  # for encrypted input PDFs
    markdown: MarkdownOptions = MarkdownOptions()


@dataclass
class ExportResult:
    documents: int = 0
    refused: list[str] = field(default_factory=list)  # one line per input changed or gone since it was read
    incomplete: int = 0  # documents with pages not recorded: only their Markdown is written
    outputs: Summary = field(default_factory=Summary)  # outputs_written, output_errors

    @property
    def exit_code(self) -> int:
        if self.outputs.output_errors:
            return int(ExitCode.OUTPUT)
        return int(ExitCode.PAGES_FAILED if self.refused else ExitCode.OK)

    def line(self) -> str:
        o = self.outputs
        text = f"{self.documents} documents: {o.outputs_written} outputs written"
        extras = [(len(o.output_errors), "outputs not written"), (len(self.refused), "inputs changed since read"),
                  (self.incomplete, "with pages not recorded (Markdown only)")]
        return text + "".join(f", {n} {what}" for n, what in extras if n)


@dataclass
class _Document:
    sha256: str
    page_count: int
    keys: dict[int, str]  # recorded page -> key of its newest record


def recorded_documents(path: Path) -> dict[str, _Document]:
    """The journal's documents by source; a source recorded again with other content keeps only the
    newer content's pages. Documents that could not be opened (page null) have nothing to write."""
    documents: dict[str, _Document] = {}
    with open(path, "rb") as f:
        for line in f:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line (Journal.read refuses anything else)
            page, source = record.get("page"), record.get("source")
            if not isinstance(page, int) or not isinstance(source, str):
                continue
            doc = documents.get(source)
            if doc is None or doc.sha256 != record["sha256"]:
                documents[source] = doc = _Document(record["sha256"], record["page_count"], {})
            doc.keys[page] = record["key"]
    return documents


def export(options: ExportOptions, progress: Progress, cwd: Path | None = None) -> ExportResult:
    """Write the asked-for outputs of every recorded document. Raises UsageError (nothing asked for),
    OutputError (journal unreadable; a target exists and not `overwrite`) before writing anything."""
    o = options.outputs
    wanted = wanted_outputs(o, options.markdown, options.password)
    if not wanted:
        raise UsageError("nothing to export: give --markdown, --pdf, --hocr or --alto DIR")
    journal = Journal(options.journal)
    journal.read()
    try:
        recorded = recorded_documents(options.journal)
    except OSError as e:
        raise OutputError(f"cannot read {options.journal}: {e.strerror or e}") from e
    result = ExportResult(documents=len(recorded))
    cwd = (cwd or Path.cwd()).resolve()
    outputs = DocumentOutputs(wanted, cwd, journal, result.outputs, progress)
    docs = {source: InputFile(source, Path(os.path.realpath(source))) for source in recorded}
    _check_targets(outputs, list(docs.values()), o.overwrite)
    for start in _unchanged(recorded, docs, result, progress):
        result.incomplete += len(start.numbers) < start.page_count
        outputs.finish(start, {}, rewrite=True)
    return result


def _check_targets(outputs: DocumentOutputs, docs: list[InputFile], overwrite: bool) -> None:
    """No target may be an input; an existing one is replaced only with `overwrite`."""
    inputs = {d.path for d in docs}
    for doc in docs:
        for out, target in outputs.targets(doc):
            if target.resolve() in inputs:
                raise UsageError(f"{out.option} {target} is one of the input files")
            if not overwrite and target.exists():
                raise OutputError(f"{target} exists; use another {out.option} folder or --overwrite")


def _unchanged(recorded: dict[str, _Document], docs: dict[str, InputFile], result: ExportResult,
               progress: Progress) -> Iterator[DocStart]:
    """The documents whose input is still the file their records were read from."""
    for source, rec in recorded.items():
        doc = docs[source]
        try:
            now = file_sha256(doc.path)
            why = f"sha256 {now[:12]}... is not its records' {rec.sha256[:12]}...; scan it again"
        except PageError as e:
            now, why = "", f"{e.type}: {e.message}"
        if now != rec.sha256:
            line = f"{source}: changed since it was read ({why}); its outputs are not written"
            result.refused.append(line)
            progress.say(line)
            continue
        numbers = sorted(rec.keys)
        yield DocStart(doc, rec.sha256, rec.page_count, numbers, rec.keys, todo=0)
