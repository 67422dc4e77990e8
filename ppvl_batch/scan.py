"""scan: documents -> records, through one recognizer, resumably.

    rasterizer thread:  hash file (or take its hash from the cache), open it unless every page is
                        done, skip pages already done, copy pages of identical files, render,
                        spare blank pages the model, prepare the others
                        -> bounded queue (memory stays flat however long the PDF)
    main thread:        take up to batch_size pages -> one vision forward -> decode page by page
                        -> record (journal, flushed) -> Markdown when a document is complete

Items flow in document order, so records come out in document and page order. A signal
(Ctrl-C, SIGTERM) lets the page in flight finish and stops; a second one stops at once. Either
way every record written is whole and the next run resumes after it.

Whatever goes wrong with one file (any exception while hashing, opening, rendering or preparing
it) becomes that file's or page's error record; only a bug outside the per-file work ends the
run, as an InternalError (one line, exit 1).
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from ppvl_batch.blank import is_blank
from ppvl_batch.errors import ExitCode, OutputError, PPVLError, UsageError
from ppvl_batch.hashcache import HashCache
from ppvl_batch.inputs import Document, Inputs, collect
from ppvl_batch.outputs import (
    Record,
    RecordWriter,
    atomic_write,
    checkpoint_key,
    make_record,
    render_markdown,
    settings_digest,
)
from ppvl_batch.pages import Document as OpenDocument
from ppvl_batch.pages import PageError, PageRanges, classify_error, open_document


@dataclass
class ScanOptions:
    inputs: list[str]
    output: str = "-"
    markdown: Path | None = None
    state: Path | None = None
    summary_json: Path | None = None
    null_separated: bool = False
    include_hidden: bool = False
    overwrite: bool = False
    retry_failed: bool = False
    pages: PageRanges | None = None
    dpi: float | None = None
    password: str | None = None
    task: str = "ocr"
    prompt: str | None = None
    max_new_tokens: int = 1024
    min_pixels: int | None = None
    max_pixels: int | None = None
    batch_size: int = 4
    parallel: int = 1  # pages decoded together in the one llama.cpp context
    prefetch: int = 8  # rendered pages waiting for the model
    quiet: bool = False
    log_interval: float = 60.0
    skip_blank: bool = True  # blank pages get an ok record without the model
    rehash: bool = False  # hash every file again instead of trusting the hash cache


class InternalError(PPVLError):
    """A bug of ours outside the per-file work: ends the run (records written so far stay)."""


@dataclass
class Summary:
    files: int = 0
    files_failed: int = 0  # documents that could not be opened at all
    files_repaired: int = 0  # PDFs that PyMuPDF had to repair (their records carry a warning)
    files_hashed: int = 0  # files whose contents were read to hash them (the others: hash cache)
    pages_ok: int = 0
    pages_blank: int = 0  # of pages_ok: blank, not read by the model
    pages_copied: int = 0  # records copied from a file with the same content (`same_as`)
    pages_failed: int = 0
    pages_done_before: int = 0  # skipped: finished by an earlier run
    pages_failed_before: int = 0  # skipped: failed in an earlier run (see --retry-failed)
    seconds: float = 0.0
    pages_per_minute: float = 0.0
    interrupted: bool = False
    exit_code: int = 0

    def line(self) -> str:
        unopened = ""
        if self.files_failed:
            unopened = f" ({self.files_failed} file{'s' if self.files_failed > 1 else ''} could not be opened)"
        text = (
            f"{self.files} files: {self.pages_ok} pages ok, {self.pages_failed} failed{unopened}, "
            f"{self.pages_done_before} already done"
        )
        if self.pages_failed_before:
            text += f", {self.pages_failed_before} failed before and skipped (--retry-failed retries them)"
        extras = [(self.pages_blank, "blank (not read)"), (self.pages_copied, "copied from identical files"),
                  (self.files_repaired, "repaired PDFs")]
        text += "".join(f", {n} {what}" for n, what in extras if n)
        return text + f"; {self.pages_per_minute:.1f} pages/min over {_duration(self.seconds)}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


# ------------------------------------------------------------------------------------------------
# items passed from the rasterizer thread to the model thread


@dataclass
class DocStart:
    doc: Document
    sha256: str
    page_count: int
    numbers: list[int]  # the selected pages, including those skipped as done
    todo: int  # how many of them this run records
    warnings: tuple[str, ...] = ()


@dataclass
class Page:
    doc: Document
    sha256: str
    number: int
    page_count: int
    key: str
    prepared: Any = None  # the recognizer's PreparedImage, or None when `error` is set or blank
    error: PageError | None = None
    seconds: float = 0.0  # spent rendering and preparing
    blank: bool = False
    size: tuple[int, int] | None = None  # of the rendered page, for a blank one
    warnings: tuple[str, ...] = ()


@dataclass
class CopyPage:
    """A page (or, number 0, a whole failed document) whose content was already recorded under
    `key` for another path, in this run or an earlier one: its record is copied, not re-read."""

    doc: Document
    key: str
    number: int


@dataclass
class Skipped:
    status: str  # the status recorded by the earlier run


@dataclass
class DocFailed:
    doc: Document
    sha256: str | None
    key: str
    error: PageError
    seconds: float


@dataclass
class DocEnd:
    start: DocStart


@dataclass
class Crashed:
    error: BaseException


_END = object()


# ------------------------------------------------------------------------------------------------


def check_outside_inputs(found: Inputs, options: ScanOptions, markdown_targets: list[Path]) -> None:
    """Refuse outputs inside the input tree: they would be read back as inputs, or overwrite them."""
    outputs: list[tuple[str, Path]] = []
    if options.output != "-":
        outputs.append(("output", Path(options.output)))
    for label, path in (("--state", options.state), ("--summary-json", options.summary_json)):
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


def page_settings(o: ScanOptions, model_id: str) -> str:
    """Digest of everything besides the file that changes a page's answer (checkpoint_key)."""
    return settings_digest(
        {
            "model": model_id,
            "task": o.task,
            "prompt": o.prompt,
            "min_pixels": o.min_pixels,
            "max_pixels": o.max_pixels,
            "dpi": o.dpi,
            "max_new_tokens": o.max_new_tokens,
        }
    )


class Scan:
    def __init__(
        self,
        options: ScanOptions,
        load_recognizer: Callable[[], Any],
        *,
        log: TextIO | None = None,
    ) -> None:
        self.o = options
        self._load_recognizer = load_recognizer
        self.log_stream = log or sys.stderr
        self.summary = Summary()
        self.stop = threading.Event()
        self.interrupted = False  # by a signal
        self._bar: Any = None  # tqdm bar when stderr is a terminal
        self.cwd = Path.cwd().resolve()
        # sha256 -> page count of the files opened in this run (0: failed to open), for copies
        self._seen: dict[str, int] = {}

    # -- messages ---------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if not self.o.quiet:
            self._write_log(f"ppvl-ocr: {message}")

    def _write_log(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.log_stream)
        else:
            print(line, file=self.log_stream, flush=True)

    # -- run --------------------------------------------------------------------------------------

    def run(self) -> Summary:
        """Scan everything; return the summary (its exit_code says how it went). Raises
        UsageError, OutputError, ModelError for problems that stop the run before or while it
        writes."""
        o = self.o
        self.writer = RecordWriter(o.output, o.state, o.overwrite)
        if o.state is not None and not self.writer.is_stream:
            raise UsageError("--state is only for -o -: a file output is its own checkpoint")
        found = collect(o.inputs, null_separated=o.null_separated, include_hidden=o.include_hidden)
        if not found.documents:
            raise UsageError("no documents to scan (no files found in the given inputs)")
        self.markdown_paths = (
            {d.path: o.markdown / f"{d.mirror_path(self.cwd)}.md" for d in found.documents} if o.markdown else {}
        )
        check_outside_inputs(found, o, list(self.markdown_paths.values()))
        self.summary.files = len(found.documents)

        self.writer.open()
        journal = self.writer.journal
        self.hashes = HashCache(journal and journal.path.with_name(journal.path.name + ".hashes"), rehash=o.rehash)
        try:
            self.hashes.load(o.overwrite)
            # Without a checkpoint, an existing Markdown file at one of our paths is someone else's.
            existing = next((t for t in self.markdown_paths.values() if t.exists()), None)
            if existing is not None and self.writer.fresh and not o.overwrite:
                raise OutputError(
                    f"{existing} exists and no checkpoint of this output wrote it; "
                    f"use another --markdown folder or --overwrite"
                )
            self.rec = self._load_recognizer()
            try:
                self._run_pipeline(found.documents)
            finally:
                self.rec.close()
                self.summary.files_hashed = self.hashes.hashed
                self.hashes.save()
        except (PPVLError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise InternalError(
                f"internal error, a bug in ppvl-ocr ({type(e).__name__}: {str(e).strip() or 'no message'}); "
                "records written so far are kept and re-running resumes"
            ) from e
        finally:
            self.writer.close()
            if self._bar is not None:
                self._bar.close()
        s = self.summary
        s.exit_code = int(
            ExitCode.INTERRUPTED if s.interrupted else ExitCode.PAGES_FAILED if s.pages_failed else ExitCode.OK
        )
        return s

    def _run_pipeline(self, documents: list[Document]) -> None:
        o = self.o
        self.settings = page_settings(o, self.rec.model_id)
        items: queue.Queue = queue.Queue(maxsize=max(o.prefetch, o.batch_size))
        rasterizer = threading.Thread(target=self._rasterize, args=(documents, items), name="rasterizer", daemon=True)
        started = time.monotonic()
        self._progress_start(started)
        old_handlers = self._install_signal_handlers()
        rasterizer.start()
        try:
            self._consume(items)
        except KeyboardInterrupt:  # second signal: drop the page in flight
            self.interrupted = True
        finally:
            _restore_signal_handlers(old_handlers)
            self.stop.set()
            rasterizer.join(timeout=10)
            s = self.summary
            s.interrupted = self.interrupted
            s.seconds = time.monotonic() - started
            done = s.pages_ok + s.pages_failed
            s.pages_per_minute = 60 * done / s.seconds if s.seconds > 0 else 0.0

    # -- signals ----------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: object) -> None:
            if self.stop.is_set():
                raise KeyboardInterrupt
            self.interrupted = True
            self.stop.set()
            self.say(f"{signal.Signals(signum).name}: stopping after the page in flight (again to stop now)")

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    # -- rasterizer thread ------------------------------------------------------------------------

    def _put(self, items: queue.Queue, item: object) -> bool:
        """Queue an item, giving up when the run is stopping (the consumer no longer reads)."""
        while not self.stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _rasterize(self, documents: list[Document], items: queue.Queue) -> None:
        try:
            for doc in documents:
                for item in self._document_items(doc):
                    if not self._put(items, item):
                        return
            self._put(items, _END)
        except BaseException as e:  # a bug: hand it to the main thread instead of dying silently
            self._put(items, Crashed(e))

    def _document_items(self, doc: Document) -> Iterator[object]:
        o = self.o
        started = time.monotonic()
        sha: str | None = None
        document: OpenDocument | None = None
        try:
            sha = self.hashes.sha256(doc.path)
            page_count = self._page_count_without_opening(sha)
            if page_count is None:
                document = open_document(doc.path, password=o.password, dpi=o.dpi, max_pixels=self.rec.max_pixels)
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

    def _failed_items(self, doc: Document, sha: str | None, error: PageError, seconds: float) -> Iterator[object]:
        key = checkpoint_key(self.settings, sha or f"path:{doc.path}", 0)
        if sha is not None and self.writer.journal is not None and (self._skip(key) or sha in self._seen):
            yield self._skip_or_copy(doc, key, 0)
        elif self._skip(key):
            yield Skipped(self.writer.status(key))
        else:
            yield DocFailed(doc, sha, key, error, seconds)
        if sha is not None:
            self._seen.setdefault(sha, 0)

    def _skip_or_copy(self, doc: Document, key: str, number: int) -> object:
        """A page recorded before: skipped when this path has its own record, else copied."""
        journal = self.writer.journal
        if journal is not None and (key, doc.source) in journal.sources and self._skip(key):
            return Skipped(journal.status(key))
        return CopyPage(doc, key, number)

    def _page_items(
        self, doc: Document, sha: str, page_count: int, document: OpenDocument | None
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
            self._render(document, page)
            page.seconds = time.monotonic() - began
            yield page
        yield DocEnd(start)

    def _render(self, document: OpenDocument, page: Page) -> None:
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

    def _skip(self, key: str) -> bool:
        status = self.writer.status(key)
        if status == "ok":
            return self.o.skip_blank or not self.writer.journal.entries[key].blank  # --no-skip-blank reads them
        return status == "error" and not self.o.retry_failed

    # -- model thread -----------------------------------------------------------------------------

    def _consume(self, items: queue.Queue) -> None:
        batch: list[object] = []
        images = 0
        while not self.stop.is_set():
            try:
                item = items.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, Crashed):
                raise item.error
            if item is _END:
                self._flush(batch)
                return
            batch.append(item)
            images += _needs_model(item)
            # Bounded by pages for the vision batch, and by items so that long runs of failures
            # or skipped pages are still written as they come.
            if images >= self.o.batch_size or len(batch) >= 8 * self.o.batch_size:
                self._flush(batch)
                batch, images = [], 0

    def _flush(self, batch: list[object]) -> None:
        """Vision for the batch's pages, then decode them (up to --parallel at once) and handle
        the batch's items in order as their pages finish, so records stay in page order and
        each is written as soon as everything before it is."""
        pages = [i for i in batch if _needs_model(i)]
        encoded = self._encode(pages)
        jobs = [p for p in pages if id(p) in encoded]
        outcomes: dict[int, Any] = {}
        waiting = list(batch)

        def handle_ready() -> None:
            # Decoded pages are recorded even after a stop request: that is "finish the page in flight".
            while waiting:
                item = waiting[0]
                if isinstance(item, Page) and id(item) in encoded and id(item) not in outcomes:
                    return  # still decoding
                waiting.pop(0)
                self._item(item, outcomes.get(id(item)))

        handle_ready()
        if not jobs:
            return
        requests = ((encoded[id(p)], self.rec.request(encoded[id(p)], self.o.task, self.o.prompt,
                                                      max_new_tokens=self.o.max_new_tokens)) for p in jobs)
        for index, outcome in self.rec.decode_many(requests):
            outcomes[id(jobs[index])] = outcome
            handle_ready()
            if self.stop.is_set():
                return  # pages still in flight are dropped: the next run does them

    def _item(self, item: object, outcome: Any) -> None:
        if isinstance(item, Page):
            self._page(item, outcome)
        elif isinstance(item, Skipped):
            if item.status == "ok":
                self.summary.pages_done_before += 1
            else:
                self.summary.pages_failed_before += 1
        elif isinstance(item, CopyPage):
            self._copy(item)
        elif isinstance(item, DocStart):
            self._doc_records: dict[int, Record] = {}
            self.summary.files_repaired += bool(item.warnings)
            self._progress_document(item.todo)
        elif isinstance(item, DocEnd):
            self._finish_document(item.start)
        elif isinstance(item, DocFailed):
            self._doc_failed(item)

    def _encode(self, pages: list[Page]) -> dict[int, Any]:
        """Vision for the batch; if the batch fails, page by page, so one bad page fails alone."""
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

    def _page(self, page: Page, result: Any) -> None:
        """Record one page: its PageResult, or the error it met on the way."""
        o = self.o
        common = dict(
            source=page.doc.source, sha256=page.sha256, page=page.number, page_count=page.page_count,
            task=o.task, prompt=o.prompt, model=self.rec.model_id, key=page.key,
        )
        if page.error is None and isinstance(result, Exception):  # DecoderError
            page.error = PageError("recognition", f"decoder failed: {result}")
        if page.blank:
            record = make_record(**common, seconds=page.seconds, blank=True, size=page.size, warnings=page.warnings)
            self.summary.pages_ok += 1
            self.summary.pages_blank += 1
        elif page.error is None:
            record = make_record(**common, seconds=page.seconds + result.seconds, result=result, warnings=page.warnings)
            self.summary.pages_ok += 1
        else:
            record = make_record(**common, seconds=page.seconds, error=(page.error.type, page.error.message),
                                 warnings=page.warnings)
            self.summary.pages_failed += 1
            self.say(f"{page.doc.source} page {page.number}: {page.error.type}: {page.error.message}")
        self.writer.write(record)
        self._doc_records[page.number] = record
        self._progress_page()

    def _copy(self, item: CopyPage) -> None:
        """Record a page of a file identical to one already recorded: the original's record, with
        this file's source and `same_as` naming the file that was read."""
        if self.writer.status(item.key) is None:
            return  # the identical file's page was not recorded (the run is stopping): next run
        original = self.writer.journal.record(item.key)
        record = {**original, "source": item.doc.source, "seconds": 0.0,
                  "same_as": original.get("same_as") or original["source"]}
        if item.number == 0:
            self._progress_document(1)
        else:
            self._doc_records[item.number] = record
        self.writer.write(record)
        s = self.summary
        s.pages_copied += 1
        if record["status"] == "error":  # this file fails too: it counts as failed in this run
            s.pages_failed += 1
            s.files_failed += item.number == 0
            self.say(f"{item.doc.source}: {record['error']['type']}: {record['error']['message']} (same as {record['same_as']})")
        self._progress_page()

    def _doc_failed(self, item: DocFailed) -> None:
        o = self.o
        record = make_record(
            source=item.doc.source, sha256=item.sha256, page=None, page_count=None, task=o.task, prompt=o.prompt,
            model=self.rec.model_id, key=item.key, seconds=item.seconds, error=(item.error.type, item.error.message),
        )
        self._progress_document(1)
        self.writer.write(record)
        self.summary.files_failed += 1
        self.summary.pages_failed += 1
        self.say(f"{item.doc.source}: {item.error.type}: {item.error.message}")
        self._progress_page()

    def _finish_document(self, start: DocStart) -> None:
        """Write the document's Markdown once all its selected pages have records: when pages
        were read in this run, or when the file is missing (e.g. the document was moved)."""
        target = self.markdown_paths.get(start.doc.path)
        if target is None or not start.numbers or (not self._doc_records and target.exists()):
            return
        records = []
        for number in start.numbers:
            record = self._doc_records.get(number)
            if record is None:
                key = checkpoint_key(self.settings, start.sha256, number)
                if self.writer.status(key) is None:
                    return  # no journal to read it from (stdout without --state)
                record = self.writer.journal.record(key)
            records.append(record)
        atomic_write(target, render_markdown(records).encode())

    # -- progress ---------------------------------------------------------------------------------

    def _progress_start(self, started: float) -> None:
        self._started = started
        self._last_log = started
        self._files_seen = 0
        if not self.o.quiet and self.log_stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=None, unit="page", file=self.log_stream, dynamic_ncols=True)

    def _progress_document(self, todo: int) -> None:
        """A document starts: `todo` more records to write."""
        self._files_seen += 1
        if self._bar is not None:
            self._bar.total = (self._bar.total or 0) + todo
            self._bar.set_description_str(f"file {self._files_seen}/{self.summary.files}", refresh=False)

    def _progress_page(self) -> None:
        s = self.summary
        done = s.pages_ok + s.pages_failed
        now = time.monotonic()
        rate = 60 * done / max(now - self._started, 1e-9)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{rate:.1f} pages/min, {s.pages_failed} failed", refresh=False)
        elif now - self._last_log >= self.o.log_interval:
            self._last_log = now
            self.say(f"{done} pages ({s.pages_failed} failed, {s.pages_done_before} already done), {rate:.1f} pages/min")


def _needs_model(item: object) -> bool:
    return isinstance(item, Page) and item.error is None and not item.blank


def _restore_signal_handlers(handlers: dict[int, Any]) -> None:
    for sig, old in handlers.items():
        signal.signal(sig, old)


def write_summary_json(path: Path, summary: Summary) -> None:
    atomic_write(path, orjson.dumps(asdict(summary), option=orjson.OPT_INDENT_2) + b"\n")
