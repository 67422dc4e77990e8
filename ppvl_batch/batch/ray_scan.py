"""`scan --ray`: the same planner, page work and recorder as the local scan, with the pages read
by a pool of Ray workers (ray_executor.run_on_ray).

    driver (this process)   open the session as the local scan does (writer, journal, hash cache,
                            lazy recognizer: no weights), plan every document without rendering,
                            record what needs no model (skipped, copied, failed documents) at
                            once, and turn each Page item into a Unit
    workers                 ScanWork: load the bundle once with the CPUs Ray gave them (and its
                            layout model in layout mode), open each unit's file from the shared
                            path, render, prepare, one vision batch per task, decode (in layout
                            mode: parse the task's pages, saving image blocks where a local scan
                            would), and return each page's record (PageWork.page_record)
    driver                  record each returned record once (by key), a document's Markdown
                            when its last page is in; then the copies of files identical to one
                            read in this run (their originals are recorded by then)

Records and keys are those of the local scan; only their order differs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from ppvl_batch.bundle import MANIFEST
from ppvl_batch.documents.inputs import InputFile
from ppvl_batch.documents.pages import OpenDocument, PageError, classify_error, open_document
from ppvl_batch.errors import UsageError

from .layout_mode import layout_mode
from .options import ScanOptions, Summary
from .plan import CopyPage, DocEnd, DocStart, Page
from .progress import Progress
from .ray_cluster import RayOptions, preflight
from .ray_executor import CRASHED, Record, Signals, Unit, run_on_ray
from .records import make_record
from .session import Session, finish_summary, open_session
from .work import PageWork, needs_model

# Test hooks, read on the driver and carried to the workers in their settings (a worker of a
# cluster does not share the driver's environment). Never set them outside tests.
TEST_HOOK_EXIT_ON = "PPVL_TEST_HOOK_WORKER_EXIT_ON"  # FILE_NAME:PAGE: the worker os._exit(1)s on that page
TEST_HOOK_MODEL = "PPVL_TEST_HOOK_WORKER_MODEL"  # a bundle path the workers load instead of the driver's


def fingerprint(work: PageWork) -> str:
    """What a worker must have to write records under the driver's keys: model id and the digest
    of the settings that change a page's answer (layout mode's included)."""
    return f"{work.rec.model_id} settings {work.settings}"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs to build its ScanWork (pickled to every worker)."""

    bundle: str  # absolute: the same path on every node
    recognizer: dict[str, Any]  # Recognizer.load options (Recognizer.load_options), threads replaced
    options: ScanOptions
    cwd: str  # the driver's, resolved: layout mode's output folders and mirror paths are relative to it
    exit_on: str | None = None  # TEST_HOOK_EXIT_ON


class ScanWork:
    """A worker's page work (ray_executor.PageWork): one recognizer for the worker's life."""

    def __init__(self, settings: WorkerSettings, threads: int) -> None:
        from ppvl_batch.engine.recognizer import Recognizer

        self.s = settings
        self.rec = Recognizer.load(settings.bundle, **{**settings.recognizer, "threads": threads})
        try:
            layout = layout_mode(self.rec, settings.options, Path(settings.cwd))
        except UsageError:
            # The driver's options passed with its bundle, so this one differs (no layout model, no
            # seal task): no layout mode, and the fingerprint check stops the job with both sides.
            layout = None
        self.work = PageWork(self.rec, settings.options, layout)
        # The file of the last unit; its one InputFile lets layout mode parse its pages together.
        self._open: tuple[InputFile, OpenDocument | PageError] | None = None

    def fingerprint(self) -> str:
        return fingerprint(self.work)

    def run(self, units: list[Unit]) -> list[Record]:
        """The task's pages: rendered one by one (each file opened once for consecutive pages),
        one vision batch, decoded together; one record per unit, whatever happens to a page."""
        pages = [self._render(u) for u in units]
        self._close()
        work = self.work
        wanted = [p for p in pages if needs_model(p)]
        encoded = work.encode(wanted)
        jobs = [p for p in wanted if id(p) in encoded]
        outcomes = {id(jobs[i]): outcome for i, outcome in work.decode([encoded[id(p)] for p in jobs])}
        return [work.page_record(p, outcomes.get(id(p))) for p in pages]

    def _render(self, unit: Unit) -> Page:
        if self.s.exit_on == f"{Path(unit.path).name}:{unit.page}":
            os._exit(1)  # test hook: a page that takes its worker down every time
        began = time.monotonic()
        doc, document = self._document(unit)
        if isinstance(document, PageError):
            page = Page(doc, unit.sha256, unit.page, unit.pages, unit.key, error=document)
        else:
            page = Page(doc, unit.sha256, unit.page, unit.pages, unit.key, warnings=document.warnings)
            self.work.render(document, page)
        page.seconds = time.monotonic() - began
        return page

    def _document(self, unit: Unit) -> tuple[InputFile, OpenDocument | PageError]:
        doc = InputFile(unit.source, Path(unit.path))
        if self._open is None or self._open[0] != doc:
            self._close()
            o = self.s.options
            try:
                opened: OpenDocument | PageError = open_document(
                    Path(unit.path), password=o.password, dpi=o.dpi, max_pixels=self.rec.max_pixels
                )
            except Exception as e:  # changed or gone since the driver planned it: this page fails alone
                opened = classify_error(e, "cannot open")
            self._open = (doc, opened)
        return self._open

    def _close(self) -> None:
        if self._open is not None and not isinstance(self._open[1], PageError):
            self._open[1].close()
        self._open = None


@dataclass(frozen=True)
class CrashedRecord:
    """The record of a page that took its worker down on every try (built on a worker)."""

    task: str
    prompt: str | None
    model: str
    layout_model: str | None

    @classmethod
    def of(cls, work: PageWork) -> CrashedRecord:
        """The fields every record of `work`'s run has."""
        return cls(work.task, work.o.prompt, work.rec.model_id, work.layout_model)

    def __call__(self, unit: Unit, message: str) -> Record:
        return make_record(
            source=unit.source, sha256=unit.sha256, page=unit.page, page_count=unit.pages, task=self.task,
            prompt=self.prompt, model=self.model, key=unit.key, seconds=0.0, error=(CRASHED, message),
            layout_model=self.layout_model,
        )


@dataclass
class _Planned:
    """The plan as the driver keeps it while the workers read."""

    units: list[Unit] = field(default_factory=list)
    starts: dict[str, DocStart] = field(default_factory=dict)  # source -> its DocStart, for documents with units
    later: list[object] = field(default_factory=list)  # copies of pages read in this run, and their DocEnds


class _Sink:
    """run_on_ray's sink: the Recorder (run_on_ray hands it each key once)."""

    def __init__(self, session: Session, plan: _Planned) -> None:
        self.recorder = session.recorder
        self.starts = plan.starts

    def write(self, record: Record) -> None:
        self.recorder.page_record(self.starts[record["source"]].doc, record)

    def document_done(self, source: str) -> None:
        self.recorder.finish_document(self.starts[source])


class RayScan:
    def __init__(self, options: ScanOptions, load_recognizer: Callable[[], Any], ray: RayOptions, *,
                 log: TextIO | None = None) -> None:
        self.options = options
        self.ray = ray
        self._load_recognizer = load_recognizer
        self.progress = Progress(quiet=options.quiet, log_interval=options.log_interval, stream=log)
        self.summary = Summary()

    def run(self) -> Summary:
        """As Scan.run; also RayUnavailable (Ray missing or unreachable: exit 2), SharedPathMissing
        (2) and WorkerMismatch / WorkerLoadError (3), before any page is read."""
        preflight(self.ray.address)
        with open_session(self.options, self._load_recognizer, self.summary, self.progress, render=False) as session:
            started = time.monotonic()
            self.progress.start(started)
            interrupted = False
            try:
                signals = Signals()  # planning may take long (hashing): a signal stops it as it would the run
                with signals.installed():
                    plan = self._plan(session, signals)
                interrupted = self._read(session, plan)
                for item in plan.later:
                    session.recorder.item(item)  # a copy whose original was not recorded is left to the next run
            except KeyboardInterrupt:
                interrupted = True
            finish_summary(self.summary, started, interrupted)
        return self.summary

    def _plan(self, session: Session, signals: Signals) -> _Planned:
        """Every document's items: Page items become units, the rest is recorded now, except
        copies of files being read in this run, which wait for their originals."""
        plan = _Planned()
        for doc in session.documents:
            waiting = False
            start: DocStart | None = None  # the planner yields a document's DocStart before its pages
            for item in session.planner.items(doc):
                if isinstance(item, Page):
                    plan.units.append(Unit(item.key, str(doc.path), doc.source, item.number, item.page_count, item.sha256))
                    plan.starts[doc.source] = start
                    continue
                if isinstance(item, DocStart):
                    start = item
                elif waiting or isinstance(item, CopyPage) and session.writer.status(item.key) is None:
                    waiting = True  # this copy and the rest of its document, after the run
                    plan.later.append(item)
                    continue
                elif isinstance(item, DocEnd) and doc.source in plan.starts:
                    continue  # a document read on the workers ends when its last record is in
                with signals.whole():  # a record is written whole, then the signal stops the run
                    session.recorder.item(item)
        return plan

    def _read(self, session: Session, plan: _Planned) -> bool:
        """The units on Ray; whether the run was interrupted."""
        if not plan.units:
            return False
        rec, o = session.recognizer, self.options
        hooked = os.environ.get(TEST_HOOK_MODEL)
        bundle = Path(hooked or rec.bundle.path).resolve()
        # The input list stays here: it may be a million paths, and workers get theirs per unit.
        settings = WorkerSettings(str(bundle), rec.load_options(), replace(o, inputs=[]), str(session.cwd),
                                  os.environ.get(TEST_HOOK_EXIT_ON))
        manifest = Path(rec.bundle.path).resolve() / MANIFEST
        run = run_on_ray(
            plan.units, ScanWork, settings, fingerprint(session.work), _Sink(session, plan),
            CrashedRecord.of(session.work), self.ray, probes={str(manifest): manifest.stat().st_size},
            say=self.progress.say,
        )
        self.summary.ray = {
            "address": self.ray.address, "connect_seconds": round(run.connect_seconds, 3),
            "repeats": run.repeats, "crashed": run.crashed, "workers": run.workers_summary(),
        }
        return run.interrupted

