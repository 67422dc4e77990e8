"""The local executor: documents -> records on this machine, through one recognizer, resumably.

    rasterizer thread:  plan each file (hash or hash cache, skip, copy), render pages, spare blank
                        pages the model, prepare the others
                        -> bounded queue (memory stays flat however long the PDF)
    main thread:        take up to batch_size pages -> PageWork.read (the page strategy: one
                        vision forward, decode up to --parallel at once; or layout parsing)
                        -> record (journal, flushed) -> document outputs when a document is
                        complete

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
from typing import Any, TextIO

from ppvl_batch.documents.inputs import InputFile

from .options import ScanOptions, Summary
from .progress import Progress
from .records import Record
from .session import finish_summary, open_session
from .task import Rendered


@dataclass
class Crashed:
    """A bug in the rasterizer thread, handed to the main thread to end the run."""

    error: BaseException


_END = object()


class Scan:
    """The local executor: schedules the planner's items through a rasterizer thread and the model
    thread (see the module docstring); the page work, records and outputs are the session's."""

    def __init__(self, options: ScanOptions, load_recognizer: Callable[..., Any], *, bundle: Any = None,
                 log: TextIO | None = None) -> None:
        self.options = options
        self.pipeline = options.pipeline
        self._load_recognizer = load_recognizer
        self._bundle = bundle  # which page strategies the model allows (session.open_session)
        self.progress = Progress(quiet=options.quiet, log_interval=options.log_interval, stream=log)
        self.summary = Summary()
        self.stop = threading.Event()
        self.interrupted = False  # by a signal

    def run(self) -> Summary:
        """Scan everything; return the summary (its exit_code says how it went). Raises
        UsageError, OutputError, ModelError for problems that stop the run before or while it
        writes."""
        with open_session(self.options, self._load_recognizer, self.summary, self.progress, render=True,
                          bundle=self._bundle) as session:
            self.planner, self.recorder, self.work = session.planner, session.recorder, session.work
            self._run_pipeline(session.documents)
        return self.summary

    def _run_pipeline(self, documents: list[InputFile]) -> None:
        o = self.pipeline
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
            finish_summary(self.summary, started, self.interrupted)

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
            images += isinstance(item, Rendered) and item.needs_model
            # Bounded by pages for the vision batch, and by items so that long runs of failures
            # or skipped pages are still written as they come.
            size = self.pipeline.batch_size
            if images >= size or len(batch) >= 8 * size:
                self._flush(batch)
                batch, images = [], 0

    def _flush(self, batch: list[object]) -> None:
        """Read the batch's pages (PageWork.read) and record the batch's items in order as their
        pages finish, so records stay in page order and each is written as soon as everything
        before it is."""
        pages = [i for i in batch if isinstance(i, Rendered)]
        records: dict[int, Record] = {}
        waiting = list(batch)

        def record_ready() -> None:
            # Read pages are recorded even after a stop request: that is "finish the page in flight".
            while waiting:
                item = waiting[0]
                if isinstance(item, Rendered):
                    if id(item) not in records:
                        return  # still being read
                    self.recorder.page(records.pop(id(item)))
                else:
                    self.recorder.item(item)
                waiting.pop(0)

        record_ready()
        for page, record in self.work.read(pages):
            records[id(page)] = record
            record_ready()
            # Pages still in flight are dropped (the next run does them), unless the strategy
            # has read the whole batch already (layout mode): then all of it is recorded.
            if self.stop.is_set() and page.needs_model and not self.work.strategy.whole_batch:
                return


def _restore_signal_handlers(handlers: dict[int, Any]) -> None:
    for sig, old in handlers.items():
        signal.signal(sig, old)
