"""`scan --ray`: the same planner, page work and recorder as the local scan, with the pages read
by a pool of Ray workers (ray_executor.run_on_ray).

    driver (this process)   open the session as the local scan does (strategy, writer, journal,
                            hash cache, lazy recognizer: no weights), plan every document without
                            rendering, record what needs no model (skipped, copied, failed
                            documents) at once, and hand the planner's PageTasks to Ray as they are
    workers                 ScanWork: load the bundle once with the CPUs Ray gave them, start the
                            driver's strategy plan (layout mode: its layout model too), and turn
                            each task's pages into records with the local scan's functions
                            (work.TaskReader: PageWork.render, PageWork.read, build_record)
    driver                  record each returned record once (by key), a document's outputs when
                            its last page is in; then the copies of files identical to one read in
                            this run (their originals are recorded by then)

Records and keys are those of the local scan; only their order differs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from ppvl_batch.bundle import MANIFEST
from ppvl_batch.errors import ModelError

from .options import PageOptions, ScanOptions, Summary
from .plan import CopyPage, DocEnd, DocStart
from .progress import Progress
from .ray_cluster import RayOptions, Signals, preflight
from .ray_executor import run_on_ray
from .records import Record, crash_record
from .session import Session, finish_summary, open_session
from .strategy import StrategyPlan, WholePagePlan
from .task import PageTask
from .work import PageWork, TaskReader

# Test hooks, read on the driver and carried to the workers in their settings (a worker of a
# cluster does not share the driver's environment). Never set them outside tests.
TEST_HOOK_EXIT_ON = "PPVL_TEST_HOOK_WORKER_EXIT_ON"  # FILE_NAME:PAGE: the worker os._exit(1)s on that page
TEST_HOOK_MODEL = "PPVL_TEST_HOOK_WORKER_MODEL"  # a bundle path the workers load instead of the driver's


def fingerprint(work: PageWork) -> str:
    """What a worker must have to write records under the driver's keys: model id and the digest
    of the settings that change a page's answer (layout mode's included)."""
    return f"{work.run.model} settings {work.settings}"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs to build its ScanWork (pickled to every worker)."""

    bundle: str  # absolute: the same path on every node
    recognizer: dict[str, Any]  # Recognizer.load options (Recognizer.load_options), threads replaced
    plan: StrategyPlan  # the driver's, as chosen when the session opened
    page: PageOptions
    cwd: str  # the driver's, resolved: layout mode's output folders and mirror paths are relative to it
    exit_on: str | None = None  # TEST_HOOK_EXIT_ON


class ScanWork:
    """A worker's TaskWork (ray_worker): one recognizer and the scan's page work for the worker's life."""

    def __init__(self, settings: WorkerSettings, threads: int) -> None:
        from ppvl_batch.engine.recognizer import Recognizer

        self.exit_on = settings.exit_on
        rec = Recognizer.load(settings.bundle, **{**settings.recognizer, "threads": threads})
        try:
            strategy = settings.plan.start(rec, Path(settings.cwd))
        except ModelError:
            # This node's bundle differs from the driver's (no layout model): read whole pages, and
            # the fingerprint check stops the job naming both sides.
            strategy = WholePagePlan(settings.page).start(rec, Path(settings.cwd))
        self.work = PageWork(strategy, settings.page, rec.model_id)
        self.reader = TaskReader(self.work, rec.max_pixels)

    def fingerprint(self) -> str:
        return fingerprint(self.work)

    def run(self, tasks: list[PageTask]) -> list[Record]:
        for task in tasks:
            if self.exit_on == f"{Path(task.path).name}:{task.page}":
                os._exit(1)  # test hook: a page that takes its worker down every time
        return self.reader.records(tasks)


@dataclass
class _Planned:
    """The plan as the driver keeps it while the workers read."""

    tasks: list[PageTask] = field(default_factory=list)
    starts: dict[str, DocStart] = field(default_factory=dict)  # source -> its DocStart, for documents with tasks
    later: list[object] = field(default_factory=list)  # copies of pages read in this run, and their DocEnds


class _Sink:
    """run_on_ray's sink: the Recorder (run_on_ray hands it each key once)."""

    def __init__(self, session: Session, plan: _Planned) -> None:
        self.recorder = session.recorder
        self.starts = plan.starts

    def write(self, record: Record) -> None:
        self.recorder.page(record)

    def document_done(self, source: str) -> None:
        self.recorder.finish_document(self.starts[source])


class RayScan:
    """The Ray executor: plans on the driver, schedules the pages on Ray (see the module docstring)."""

    def __init__(self, options: ScanOptions, load_recognizer: Callable[..., Any], ray: RayOptions, *,
                 bundle: Any = None, log: TextIO | None = None) -> None:
        self.options = options
        self.ray = ray
        self._load_recognizer = load_recognizer
        self._bundle = bundle
        self.progress = Progress(quiet=options.quiet, log_interval=options.log_interval, stream=log)
        self.summary = Summary()

    def run(self) -> Summary:
        """As Scan.run; also RayUnavailable (Ray missing or unreachable: exit 2), SharedPathMissing
        (2) and WorkerMismatch / WorkerLoadError (3), before any page is read."""
        preflight(self.ray.address)
        with open_session(self.options, self._load_recognizer, self.summary, self.progress, render=False,
                          bundle=self._bundle) as session:
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
        """Every document's items: its PageTasks go to Ray, the rest is recorded now, except
        copies of files being read in this run, which wait for their originals."""
        plan = _Planned()
        for doc in session.documents:
            waiting = False
            start: DocStart | None = None  # the planner yields a document's DocStart before its pages
            for item in session.planner.items(doc):
                if isinstance(item, PageTask):
                    plan.tasks.append(item)
                    assert start is not None, "a document's pages came before its DocStart"
                    plan.starts[doc.source] = start
                    continue
                if isinstance(item, DocStart):
                    start = item
                elif waiting or isinstance(item, CopyPage) and session.writer.status(item.task.key) is None:
                    waiting = True  # this copy and the rest of its document, after the run
                    plan.later.append(item)
                    continue
                elif isinstance(item, DocEnd) and doc.source in plan.starts:
                    continue  # a document read on the workers ends when its last record is in
                with signals.whole():  # a record is written whole, then the signal stops the run
                    session.recorder.item(item)
        return plan

    def _read(self, session: Session, plan: _Planned) -> bool:
        """The tasks on Ray; whether the run was interrupted."""
        if not plan.tasks:
            return False
        rec = session.recognizer
        hooked = os.environ.get(TEST_HOOK_MODEL)
        bundle = Path(hooked or rec.bundle.path).resolve()
        settings = WorkerSettings(str(bundle), rec.load_options(), session.plan, self.options.page, str(session.cwd),
                                  os.environ.get(TEST_HOOK_EXIT_ON))
        manifest = Path(rec.bundle.path).resolve() / MANIFEST
        run = run_on_ray(
            plan.tasks, ScanWork, settings, fingerprint(session.work), _Sink(session, plan),
            partial(crash_record, session.work.run), self.ray, probes={str(manifest): manifest.stat().st_size},
            say=self.progress.say,
        )
        self.summary.ray = {
            "address": self.ray.address, "connect_seconds": round(run.connect_seconds, 3),
            "repeats": run.repeats, "crashed": run.crashed, "workers": run.workers_summary(),
        }
        return run.interrupted

