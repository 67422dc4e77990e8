"""The worker side of ray_executor: the actor class map_batches runs (one TaskWork for the
actor's life), the per-page start counts that end a page which keeps killing its worker, and the
errors a worker stops the job with (WorkerError, read back on the driver by `worker_error`)."""

from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from ppvl_batch.errors import ModelError, OutputError, UsageError

from .ray_cluster import limit_threads
from .records import Record
from .task import PageTask


class TaskWork(Protocol):
    """The per-page work of a worker, built once per worker from picklable settings."""

    def __init__(self, settings: Any, threads: int) -> None: ...

    def fingerprint(self) -> str:
        """Bundle id + settings digest; must equal the driver's."""
        ...

    def run(self, tasks: list[PageTask]) -> list[Record]:
        """One record (with its task's `key`) per task; never raises for a bad page."""
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
    with this text in the message, which `worker_error` reads back."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"[{kind}] {message}")


def assigned_cpus() -> int:
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


class Worker:
    """The actor class given to map_batches: one TaskWork for the actor's life."""

    def __init__(self, work_factory: Callable[[Any, int], TaskWork], settings: Any, fingerprint: str,
                 probes: dict[str, int | None], attempts: Any, tries: int,
                 crashed_record: Callable[[PageTask, str], Record]) -> None:
        import ray

        self.ray = ray
        self.attempts, self.tries, self.crashed_record = attempts, tries, crashed_record
        threads = assigned_cpus()
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
        units = [PageTask.from_json(text) for text in batch["task"]]
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
            "record": [orjson.dumps(_record_of(u, by_key)).decode() for u in units],
            "worker": [self.name] * len(units),
            "threads": [self.threads] * len(units),
            "seconds": [each] * len(units),
        }

    def _alone(self, unit: PageTask, starts: int) -> Record:
        """A unit of a task whose worker died: run by itself, so that a crash counts against it only."""
        if starts >= self.tries:
            return self.crashed_record(unit, f"the page took its worker down on each of {starts} tries")
        self.ray.get(self.attempts.begin.remote(unit.key))
        (record,) = self.work.run([unit])
        self.ray.get(self.attempts.clear.remote(unit.key))
        return record


def worker_error(exc: BaseException) -> Exception | None:
    """Our worker's error, recovered from the text of the actor death or task failure Ray reports."""
    m = re.search(r"WorkerError: \[(\w+)\] (.+)", str(exc))
    return _WORKER_ERRORS[m.group(1)](m.group(2).strip()) if m and m.group(1) in _WORKER_ERRORS else None


def _record_of(task: PageTask, by_key: dict[str, Any]) -> Any:
    """A task's record: under its key, or under its text-layer key when the page's text came from
    its PDF text layer (text_pages.py gives such a page a key of its own)."""
    if task.key in by_key or task.text_key is None:
        return by_key[task.key]
    return by_key[task.text_key]
