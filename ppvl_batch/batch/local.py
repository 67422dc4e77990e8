"""The local executor: documents -> records on this machine, through one recognizer, resumably.

    rasterizer thread:  plan each file (hash or hash cache, skip, copy), render pages, spare blank
                        pages the model, prepare the others
                        -> bounded queue (memory stays flat however long the PDF)
    main thread:        take up to batch_size pages -> one vision forward -> decode them (up to
                        --parallel at once) -> record (journal, flushed) -> Markdown when a
                        document is complete

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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ppvl_batch.errors import ExitCode, OutputError, PPVLError, UsageError
from ppvl_batch.documents.inputs import InputFile, collect

from .hashcache import HashCache
from .journal import RecordWriter
from .options import InternalError, ScanOptions, Summary
from .layout_mode import layout_mode
from .plan import Page, Planner, check_outside_inputs, page_settings
from .progress import Progress
from .recorder import Recorder
from .work import PageWork, needs_model


@dataclass
class Crashed:
    """A bug in the rasterizer thread, handed to the main thread to end the run."""

    error: BaseException


_END = object()


class Scan:
    def __init__(self, options: ScanOptions, load_recognizer: Callable[[], Any], *, log: TextIO | None = None) -> None:
        self.options = options
        self._load_recognizer = load_recognizer
        self.progress = Progress(quiet=options.quiet, log_interval=options.log_interval, stream=log)
        self.summary = Summary()
        self.stop = threading.Event()
        self.interrupted = False  # by a signal
        self.cwd = Path.cwd().resolve()

    def run(self) -> Summary:
        """Scan everything; return the summary (its exit_code says how it went). Raises
        UsageError, OutputError, ModelError for problems that stop the run before or while it
        writes."""
        o = self.options
        writer = RecordWriter(o.output, o.state, o.overwrite)
        if o.state is not None and not writer.is_stream:
            raise UsageError("--state is only for -o -: a file output is its own checkpoint")
        found = collect(o.inputs, null_separated=o.null_separated, include_hidden=o.include_hidden)
        if not found.documents:
            raise UsageError("no documents to scan (no files found in the given inputs)")
        markdown_paths = (
            {d.path: o.markdown / f"{d.mirror_path(self.cwd)}.md" for d in found.documents} if o.markdown else {}
        )
        check_outside_inputs(found, o, list(markdown_paths.values()))
        self.summary.files = len(found.documents)

        writer.open()
        journal = writer.journal
        hashes = HashCache(journal and journal.path.with_name(journal.path.name + ".hashes"), rehash=o.rehash)
        try:
            hashes.load(o.overwrite)
            # Without a checkpoint, an existing Markdown file at one of our paths is someone else's.
            existing = next((t for t in markdown_paths.values() if t.exists()), None)
            if existing is not None and writer.fresh and not o.overwrite:
                raise OutputError(
                    f"{existing} exists and no checkpoint of this output wrote it; "
                    f"use another --markdown folder or --overwrite"
                )
            rec = self._load_recognizer()
            try:
                layout = layout_mode(rec, o, self.cwd)
                work = PageWork(rec, o, layout)
                settings = page_settings(o, rec.model_id, layout.key_settings() if layout else None)
                self.planner = Planner(o, writer, hashes, settings, rec.max_pixels, render=work.render)
                self.recorder = Recorder(writer, work, self.summary, self.progress, settings, markdown_paths)
                self.work = work
                self._run_pipeline(found.documents)
            finally:
                rec.close()
                self.summary.files_hashed = hashes.hashed
                hashes.save()
        except (PPVLError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise InternalError(
                f"internal error, a bug in ppvl-ocr ({type(e).__name__}: {str(e).strip() or 'no message'}); "
                "records written so far are kept and re-running resumes"
            ) from e
        finally:
            writer.close()
            self.progress.close()
        s = self.summary
        s.exit_code = int(
            ExitCode.INTERRUPTED if s.interrupted else ExitCode.PAGES_FAILED if s.pages_failed else ExitCode.OK
        )
        return s

    def _run_pipeline(self, documents: list[InputFile]) -> None:
        o = self.options
        items: queue.Queue = queue.Queue(maxsize=max(o.prefetch, o.batch_size))
        rasterizer = threading.Thread(target=self._rasterize, args=(documents, items), name="rasterizer", daemon=True)
        started = time.monotonic()
        self.progress.start(started)
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

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: object) -> None:
            if self.stop.is_set():
                raise KeyboardInterrupt
            self.interrupted = True
            self.stop.set()
            self.progress.say(f"{signal.Signals(signum).name}: stopping after the page in flight (again to stop now)")

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

    def _rasterize(self, documents: list[InputFile], items: queue.Queue) -> None:
        try:
            for doc in documents:
                for item in self.planner.items(doc):
                    if not self._put(items, item):
                        return
            self._put(items, _END)
        except BaseException as e:  # a bug: hand it to the main thread instead of dying silently
            self._put(items, Crashed(e))

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
            images += needs_model(item)
            # Bounded by pages for the vision batch, and by items so that long runs of failures
            # or skipped pages are still written as they come.
            if images >= self.options.batch_size or len(batch) >= 8 * self.options.batch_size:
                self._flush(batch)
                batch, images = [], 0

    def _flush(self, batch: list[object]) -> None:
        """Vision for the batch's pages, then decode them (up to --parallel at once) and record
        the batch's items in order as their pages finish, so records stay in page order and
        each is written as soon as everything before it is."""
        pages = [i for i in batch if needs_model(i)]
        encoded = self.work.encode(pages)
        jobs = [p for p in pages if id(p) in encoded]
        outcomes: dict[int, Any] = {}
        waiting = list(batch)

        def record_ready() -> None:
            # Decoded pages are recorded even after a stop request: that is "finish the page in flight".
            while waiting:
                item = waiting[0]
                if isinstance(item, Page) and id(item) in encoded and id(item) not in outcomes:
                    return  # still decoding
                waiting.pop(0)
                self.recorder.item(item, outcomes.get(id(item)))

        record_ready()
        if not jobs:
            return
        for index, outcome in self.work.decode([encoded[id(p)] for p in jobs]):
            outcomes[id(jobs[index])] = outcome
            record_ready()
            if self.stop.is_set():
                return  # pages still in flight are dropped: the next run does them


def _restore_signal_handlers(handlers: dict[int, Any]) -> None:
    for sig, old in handlers.items():
        signal.signal(sig, old)
