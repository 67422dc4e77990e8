"""Running scan's per-page work on a Ray cluster with Ray Data.

The driver (the `scan` process) has already planned: it walked the inputs, hashed them, built the
checkpoint keys and dropped the pages its journal has. Here the remaining pages (`Unit`s) become a
Ray dataset that goes through a pool of stateful workers (`map_batches` with a callable class on an
actor pool). Each worker builds one `PageWork` (the bundle is loaded once per worker), renders its
own pages from the shared path and returns one record per unit. Records stream back to the driver,
which is the only writer: it hands each record whose key it has not written yet to the sink.

Faults, and how they end:
- A worker that dies mid-task is restarted by Ray and the task retried (Ray Data's defaults for
  actor pools: restarts and task retries without limit); pages computed twice are recorded once
  (the driver dedups by key).
- A page that kills its worker every time: every task start is counted per unit in one small
  actor (`_Attempts`). A task that starts again after its worker died runs its pages one at a
  time, each counted, so the page that kills the worker is the only one whose count grows; once
  it has had `task_retries + 1` tries, the worker returns its error record (`worker_crashed`)
  instead of running it, and the job goes on.
- A worker that cannot start (bundle fingerprint differs from the driver's, an input or the bundle
  is not at the same path on its node, the bundle does not load) fails the job at once with a
  one-line message naming the node.
- An output a worker cannot write (an image block's folder under --markdown/--images) fails the
  job with the OutputError a local run would stop with (exit 4), naming the node.
- Any other exception out of PageWork.run (a bug: it must not raise for a bad page) fails the job.
- Ctrl-C or SIGTERM stops the job; what was written stays written, the next run resumes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import orjson

from ppvl_batch.errors import ModelError, OutputError, UsageError

from .ray_cluster import RayOptions, connect, import_ray, limit_threads

CRASHED = "worker_crashed"

Record = dict[str, Any]


@dataclass(frozen=True)
class Unit:
    """One page to read."""

    key: str  # checkpoint key, unique per page
    path: str  # absolute path of the input file (the same path on every node)
    source: str  # as recorded in the journal
    page: int  # 1-based
    pages: int  # page count of its document
    sha256: str = ""  # of the file, as the driver hashed it (for the record)

    @classmethod
    def from_batch(cls, batch: dict[str, Any]) -> list[Unit]:
        """The units of a map_batches batch (numpy columns, one per field)."""
        types = {f.name: {"int": int}.get(f.type, str) for f in fields(cls)}
        return [cls(**{name: types[name](batch[name][i]) for name in types}) for i in range(len(batch["key"]))]


class PageWork(Protocol):
    """The per-page work of a worker, built once per worker from picklable settings."""

    def __init__(self, settings: Any, threads: int) -> None: ...

    def fingerprint(self) -> str:
        """Bundle id + settings digest; must equal the driver's."""
        ...

    def run(self, units: list[Unit]) -> list[Record]:
        """One record (with its unit's `key`) per unit; never raises for a bad page."""
        ...


class Sink(Protocol):
    """The driver's writer: journal append (with fsync) and Markdown."""

    def write(self, record: Record) -> None: ...

    def document_done(self, source: str) -> None:
        """Every page of `source` that this run had to read now has a record."""
        ...


class SharedPathMissing(UsageError):
    """A worker's node does not see an input or the bundle at the driver's path."""


class WorkerMismatch(ModelError):
    """A worker built a different bundle or settings than the driver expects."""


class WorkerLoadError(ModelError):
    """A worker could not build its page work (bundle missing or broken on its node)."""


class WorkerOutputError(OutputError):
    """A worker could not write an output the driver does not write (an image block's file)."""


_WORKER_ERRORS: dict[str, type[Exception]] = {
    "shared_path": SharedPathMissing,
    "fingerprint": WorkerMismatch,
    "load": WorkerLoadError,
    "output": WorkerOutputError,
}


class WorkerError(RuntimeError):
    """Raised in a worker: the job cannot go on there (its constructor, or an output it cannot
    write). Ray reports it to the driver as the death of the actor or the failure of the task,
    with this text in the message, which `_worker_error` reads back."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"[{kind}] {message}")


@dataclass
class WorkerStats:
    worker: str  # node address and pid
    threads: int = 0  # torch's thread count in the worker (llama.cpp is given the same)
    pages: int = 0
    seconds: float = 0.0  # time spent in PageWork.run for those pages

    @property
    def pages_per_minute(self) -> float:
        return 60 * self.pages / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RayRun:
    """What a run did, for the summary."""

    pages_ok: int = 0
    pages_failed: int = 0  # error records written, `crashed` included
    crashed: int = 0  # units that took their worker down on every try
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


# ------------------------------------------------------------------------------------------ worker


def _assigned_cpus() -> int:
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def _probe(path: str, size: int | None) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return size is None or st.st_size == size


class _Attempts:
    """Per unit, how many times a worker started it without it being proven harmless; one actor
    per run, owned by the driver (and gone with it)."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()

    def task(self, keys: list[str]) -> list[int]:
        """A task starts: its units' counts from before. A first run (all zero) counts them all
        now; otherwise nothing is counted here and the worker counts each unit as it runs it."""
        before = [self.started[k] for k in keys]
        if not any(before):
            self.started.update(keys)
        return before

    def begin(self, key: str) -> None:
        self.started[key] += 1

    def clear(self, key: str) -> None:
        """The unit ran to the end alone: it does not kill its worker."""
        self.started.pop(key, None)


class _Worker:
    """The actor class given to map_batches: one PageWork for the actor's life."""

    def __init__(self, work_factory: Callable[[Any, int], PageWork], settings: Any, fingerprint: str,
                 probes: dict[str, int | None], attempts: Any, tries: int,
                 crashed_record: Callable[[Unit, str], Record]) -> None:
        import ray

        self.ray = ray
        self.attempts, self.tries, self.crashed_record = attempts, tries, crashed_record
        threads = _assigned_cpus()
        limit_threads(threads)
        node = ray.util.get_node_ip_address()
        self.name = f"{node} pid {os.getpid()}"
        missing = next((p for p, size in probes.items() if not _probe(p, size)), None)
        if missing is not None:
            raise WorkerError(
                "shared_path",
                f"node {node} does not see {missing} as the driver does; the bundle and the inputs "
                f"must be at the same path on every node (a shared filesystem or the same image)",
            )
        try:
            self.work = work_factory(settings, threads)
        except Exception as e:
            raise WorkerError("load", f"node {node} cannot load the model: {e}") from None
        limit_threads(threads)  # loading torch may have reset its pool to the core count
        torch = sys.modules.get("torch")
        self.threads = torch.get_num_threads() if torch is not None else threads
        got = self.work.fingerprint()
        if got != fingerprint:
            raise WorkerError(
                "fingerprint",
                f"node {node} has bundle/settings {got}, the driver has {fingerprint}; "
                f"every node must have the same bundle at the same path",
            )

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        units = Unit.from_batch(batch)
        began = time.monotonic()
        before = self.ray.get(self.attempts.task.remote([u.key for u in units]))
        try:
            if not any(before):
                records = self.work.run(units)  # the usual case: the task's pages together
            else:
                records = [self._alone(u, n) for u, n in zip(units, before)]
        except OutputError as e:  # the folder, not the page, is wrong: every later page would fail too
            raise WorkerError("output", f"{e} (on node {self.name})") from None
        by_key = {r["key"]: r for r in records}
        each = (time.monotonic() - began) / len(units)
        # Records travel as JSON text: Arrow never has to find one schema for varied records.
        return {
            "key": [u.key for u in units],
            "record": [orjson.dumps(by_key[u.key]).decode() for u in units],
            "worker": [self.name] * len(units),
            "threads": [self.threads] * len(units),
            "seconds": [each] * len(units),
        }

    def _alone(self, unit: Unit, starts: int) -> Record:
        """A unit of a task whose worker died: run by itself, so that a crash counts against it only."""
        if starts >= self.tries:
            return self.crashed_record(unit, f"the page took its worker down on each of {starts} tries")
        self.ray.get(self.attempts.begin.remote(unit.key))
        (record,) = self.work.run([unit])
        self.ray.get(self.attempts.clear.remote(unit.key))
        return record


# ------------------------------------------------------------------------------------------ driver


def _worker_error(exc: BaseException) -> Exception | None:
    """Our worker's error, recovered from the text of the actor death or task failure Ray reports."""
    m = re.search(r"WorkerError: \[(\w+)\] (.+)", str(exc))
    return _WORKER_ERRORS[m.group(1)](m.group(2).strip()) if m and m.group(1) in _WORKER_ERRORS else None


class Signals:
    """Ctrl-C and SIGTERM stop the run with KeyboardInterrupt at once (a page can take a minute),
    except inside a sink call, which finishes first (and the record is counted) so that the
    journal line or Markdown file is whole. (ray.init made SIGTERM a plain exit; this replaces that for the run.)"""

    def __init__(self) -> None:
        self.in_sink = False
        self.stop = False

    def _handler(self, signum: int, frame: object) -> None:
        if self.in_sink:
            self.stop = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)

    @contextlib.contextmanager
    def sink_call(self) -> Iterator[None]:
        self.in_sink = True
        try:
            yield
        finally:
            self.in_sink = False

    @contextlib.contextmanager
    def whole(self) -> Iterator[None]:
        """A sink call, then the stop a signal asked for during it."""
        with self.sink_call():
            yield
        if self.stop:
            raise KeyboardInterrupt


class _Driver:
    def __init__(self, ray: Any, units: list[Unit], constructor: dict[str, Any], sink: Sink, options: RayOptions,
                 progress: Callable[[Record], None] | None, say: Callable[[str], None], signals: Signals) -> None:
        self.ray = ray
        self.constructor = constructor  # the _Worker's arguments
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

    def stream(self, units: list[Unit]) -> None:
        """The units through the worker pool, each record handed to the sink."""
        blocks = math.ceil(len(units) / self.o.pages_per_task)
        ds = self.ray.data.from_items([asdict(u) for u in units], override_num_blocks=blocks)
        ctx = ds.context  # this dataset's own copy of the settings
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        extra = {"num_gpus": self.o.gpus_per_worker} if self.o.gpus_per_worker else {}
        # Ray Data's defaults for actor pools (restart and retry without limit) are what we want:
        # _Attempts ends a page that keeps killing its worker.
        ds = ds.map_batches(
            _Worker, fn_constructor_kwargs=self.constructor, batch_size=self.o.pages_per_task,
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
            ours = _worker_error(e)
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

    def missing(self) -> list[Unit]:
        return [u for k, u in self.pending.items() if k not in self.written]


def run_on_ray(
    units: Iterable[Unit],
    work_factory: Callable[[Any, int], PageWork],
    settings: Any,
    fingerprint: str,
    sink: Sink,
    crashed_record: Callable[[Unit, str], Record],
    options: RayOptions = RayOptions(),
    *,
    probes: dict[str, int | None] | None = None,
    progress: Callable[[Record], None] | None = None,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> RayRun:
    """Read `units` on Ray and hand every record to `sink`, each key once.

    `work_factory(settings, threads)` builds the PageWork on each worker (a class or a
    module-level function: it is pickled by reference, so ppvl_batch must be installed on every
    node). `fingerprint` is what the workers' PageWork must report. `crashed_record(unit, message)`
    builds the error record of a unit that took its worker down on every try. `progress` is
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
    with open(os.devnull, "w", encoding="utf-8") as devnull, contextlib.redirect_stdout(sys.stderr if verbose else devnull), \
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
