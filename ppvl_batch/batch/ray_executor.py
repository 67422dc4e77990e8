"""Running scan's per-page work on a Ray cluster with Ray Data.

The driver (the `scan` process) has already planned: it walked the inputs, hashed them, built the
checkpoint keys and dropped the pages its journal has. Here the remaining pages (the planner's
`PageTask`s, as they are) become a Ray dataset that goes through a pool of stateful workers
(`map_batches` with a callable class on an actor pool, ray_worker.Worker). Each worker builds one
`TaskWork` (the bundle is loaded once per worker), renders its own pages from the shared path and
returns one record per task. Records stream back to the driver, which is the only writer: it hands
each record whose key it has not written yet to the sink.

Faults, and how they end:
- A worker that dies mid-task is restarted by Ray and the task retried (Ray Data's defaults for
  actor pools: restarts and task retries without limit); pages computed twice are recorded once
  (the driver dedups by key).
- A page that kills its worker every time: every task start is counted per page in one small
  actor (`_Attempts`). A task that starts again after its worker died runs its pages one at a
  time, each counted, so the page that kills the worker is the only one whose count grows; once
  it has had `task_retries + 1` tries, the worker returns its error record (`worker_crashed`)
  instead of running it, and the job goes on.
- A worker that cannot start (bundle fingerprint differs from the driver's, an input or the bundle
  is not at the same path on its node, the bundle does not load) fails the job at once with a
  one-line message naming the node.
- An output a worker cannot write (an image block's folder under --markdown/--images) fails the
  job with the OutputError a local run would stop with (exit 4), naming the node.
- Any other exception out of TaskWork.run (a bug: it must not raise for a bad page) fails the job.
- Ctrl-C or SIGTERM stops the job; what was written stays written, the next run resumes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ppvl_batch.errors import UsageError

from .ray_cluster import RayOptions, Signals, connect, import_ray
from .ray_worker import (
    SharedPathMissing,
    TaskWork,
    Worker,
    WorkerLoadError,
    WorkerMismatch,
    WorkerOutputError,
    _Attempts,
    worker_error,
)
from .records import CRASHED, Record
from .task import PageTask

__all__ = ["CRASHED", "RayRun", "Sink", "SharedPathMissing", "WorkerLoadError", "WorkerMismatch", "WorkerOutputError",
           "WorkerStats", "run_on_ray"]

# RayOptions is frozen: one shared default is safe.
_DEFAULT_OPTIONS = RayOptions()


class Sink(Protocol):
    """The driver's writer: journal append (with fsync) and Markdown."""

    def write(self, record: Record) -> None: ...

    def document_done(self, source: str) -> None:
        """Every page of `source` that this run had to read now has a record."""
        ...


@dataclass
class WorkerStats:
    worker: str  # node address and pid
    threads: int = 0  # torch's thread count in the worker (llama.cpp is given the same)
    pages: int = 0
    seconds: float = 0.0  # time spent in TaskWork.run for those pages

    @property
    def pages_per_minute(self) -> float:
        return 60 * self.pages / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RayRun:
    """What a run did, for the summary."""

    pages_ok: int = 0
    pages_failed: int = 0  # error records written, `crashed` included
    crashed: int = 0  # pages that took their worker down on every try
    repeats: int = 0  # records that came back for a key already written (a retried task)
    interrupted: bool = False
    connect_seconds: float = 0.0
    seconds: float = 0.0
    workers: dict[str, WorkerStats] = field(default_factory=dict)

    def workers_summary(self) -> list[dict[str, Any]]:
        """Per-worker throughput for the summary JSON."""
        return [
            {"worker": w.worker, "threads": w.threads, "pages": w.pages, "seconds": round(w.seconds, 3),
             "pages_per_minute": round(w.pages_per_minute, 2)}
            for w in sorted(self.workers.values(), key=lambda w: w.worker)
        ]


# ------------------------------------------------------------------------------------------ driver


class _Driver:
    def __init__(self, ray: Any, units: list[PageTask], constructor: dict[str, Any], sink: Sink, options: RayOptions,
                 progress: Callable[[Record], None] | None, say: Callable[[str], None], signals: Signals) -> None:
        self.ray = ray
        self.constructor = constructor  # the Worker's arguments
        self.say = say
        self.signals = signals
        self.pending = {u.key: u for u in units}
        self.left = Counter(u.source for u in self.pending.values())  # pages still to come, per document
        self.written: set[str] = set()
        self.sink = sink
        self.o = options
        self.progress = progress
        self.run = RayRun()

    def pool(self, blocks: int) -> Any:
        o = self.o
        size = o.workers
        if size is None:
            cpus = self.ray.cluster_resources().get("CPU", 1)
            size = max(1, int(cpus // o.cpus_per_worker))
        # More workers than tasks would only load the model for nothing.
        if isinstance(size, tuple):
            return self.ray.data.ActorPoolStrategy(min_size=min(size[0], blocks), max_size=min(size[1], blocks))
        return self.ray.data.ActorPoolStrategy(size=min(size, blocks))

    def stream(self, units: list[PageTask]) -> None:
        """The tasks through the worker pool, each record handed to the sink."""
        blocks = math.ceil(len(units) / self.o.pages_per_task)
        rows = [{"key": u.key, "task": u.to_json()} for u in units]
        ds = self.ray.data.from_items(rows, override_num_blocks=blocks)
        ctx = ds.context  # this dataset's own copy of the settings
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        extra = {"num_gpus": self.o.gpus_per_worker} if self.o.gpus_per_worker else {}
        # Ray Data's defaults for actor pools (restart and retry without limit) are what we want:
        # _Attempts ends a page that keeps killing its worker.
        ds = ds.map_batches(
            Worker, fn_constructor_kwargs=self.constructor, batch_size=self.o.pages_per_task,
            batch_format="numpy", compute=self.pool(blocks), num_cpus=self.o.cpus_per_worker,
            udf_modifying_row_count=False, **extra,
        )
        # Ray Data logs each lost task with its traceback; the driver reports the pages instead.
        quiet = logging.getLogger("ray.data")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            for row in ds.iter_rows():
                self.accept(row["key"], orjson.loads(row["record"]), row["worker"], int(row["threads"]),
                            float(row["seconds"]))
        except Exception as e:
            ours = worker_error(e)
            if ours is not None:
                raise ours from None
            raise
        finally:
            quiet.setLevel(level)

    def accept(self, key: str, record: Record, worker: str, threads: int, seconds: float) -> None:
        if key in self.written or key not in self.pending:
            self.run.repeats += 1
            return
        with self.signals.sink_call():
            self.sink.write(record)
        self.written.add(key)
        r = self.run
        if record.get("status") == "ok":
            r.pages_ok += 1
        else:
            r.pages_failed += 1
            r.crashed += (record.get("error") or {}).get("type") == CRASHED  # the sink reports it
        stats = r.workers.setdefault(worker, WorkerStats(worker, threads))
        stats.pages += 1
        stats.seconds += seconds
        source = self.pending[key].source
        self.left[source] -= 1
        if self.left[source] == 0:
            with self.signals.sink_call():
                self.sink.document_done(source)
        if self.progress is not None:
            self.progress(record)
        if self.signals.stop:  # a signal came during a sink call
            raise KeyboardInterrupt

    def missing(self) -> list[PageTask]:
        return [u for k, u in self.pending.items() if k not in self.written]


def run_on_ray(
    units: Iterable[PageTask],
    work_factory: Callable[[Any, int], TaskWork],
    settings: Any,
    fingerprint: str,
    sink: Sink,
    crashed_record: Callable[[PageTask, str], Record],
    options: RayOptions = _DEFAULT_OPTIONS,
    *,
    probes: dict[str, int | None] | None = None,
    progress: Callable[[Record], None] | None = None,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> RayRun:
    """Read the pages of `units` (PageTasks) on Ray and hand every record to `sink`, each key once.

    `work_factory(settings, threads)` builds the TaskWork on each worker (a class or a
    module-level function: it is pickled by reference, so ppvl_batch must be installed on every
    node). `fingerprint` is what the workers' TaskWork must report. `crashed_record(task, message)`
    builds the error record of a page that took its worker down on every try (picklable). `progress` is
    called with each record written, `say` with a line for the user. `probes` maps
    paths to their size (None: existence only) that every worker must see as the driver does (the
    bundle, say); the first 100 input files are always probed. Raises RayUnavailable,
    SharedPathMissing, WorkerMismatch or WorkerLoadError (PPVLErrors) for a job that cannot run.
    """
    units = list(units)
    run = RayRun()
    if not units:
        return run
    ray = import_ray()
    checks = dict(probes or {})
    for path in list(dict.fromkeys(u.path for u in units))[:100]:
        with contextlib.suppress(OSError):
            checks[path] = os.stat(path).st_size
    started = time.monotonic()
    # Ray prints cluster errors (a worker died..., with the worker's traceback) on sys.stdout, which
    # may be carrying our records, until ray.shutdown has flushed its repeated-message counts.
    # They go to stderr with -v; otherwise only to Ray's logs, and our one line says what happened.
    # (Record writers hold the real stdout's buffer from before the run.)
    signals = Signals()
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    with open(os.devnull, "w", encoding="utf-8") as devnull, \
            contextlib.redirect_stdout(sys.stderr if verbose else devnull), \
            connect(options.address) as connect_seconds, signals.installed():
        cpus = ray.cluster_resources().get("CPU", 0)
        low = options.workers[0] if isinstance(options.workers, tuple) else options.workers or 1
        if options.address == "local" and cpus < low * options.cpus_per_worker:
            raise UsageError(f"this machine has {cpus:g} CPUs for Ray; {low} worker(s) x "
                             f"{options.cpus_per_worker:g} CPUs do not fit")
        attempts = ray.remote(num_cpus=0)(_Attempts).remote()
        constructor = dict(work_factory=work_factory, settings=settings, fingerprint=fingerprint, probes=checks,
                           attempts=attempts, tries=options.task_retries + 1, crashed_record=crashed_record)
        driver = _Driver(ray, units, constructor, sink, options, progress, say, signals)
        run = driver.run
        run.connect_seconds = connect_seconds
        try:
            driver.stream(units)
            if driver.missing():  # cannot happen with Ray's retries; say so rather than lose track
                say(f"{len(driver.missing())} pages came back without a record; the next run reads them")
        except KeyboardInterrupt:
            run.interrupted = True
    run.seconds = time.monotonic() - started
    return run
