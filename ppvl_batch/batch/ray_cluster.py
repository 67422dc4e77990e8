"""Reaching Ray and sizing the worker pool: the --ray options, importing Ray only when asked,
connecting the driver (with a fast check for a HOST:PORT where nothing listens: ray.init would
wait forever there), the driver's signal handling while it runs, and the thread limits a worker
applies for the CPUs it was given."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ppvl_batch.errors import UsageError

INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'ppvl-batch[ray]'"

class RayUnavailable(UsageError):
    """Ray is not installed, or the cluster cannot be reached."""


@dataclass(frozen=True)
class RayOptions:
    address: str = "local"  # "local" (throwaway local Ray), "auto", HOST:PORT or ray://HOST:PORT
    workers: int | tuple[int, int] | None = None  # fixed, or (min, max); None: as many as fit
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    pages_per_task: int = 2
    task_retries: int = 3  # a page that kills its worker gets this many more tries, then its error record

    def __post_init__(self) -> None:
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise UsageError("--cpus-per-worker must be above 0 and --gpus-per-worker at least 0")
        if self.pages_per_task < 1 or self.task_retries < 0:
            raise UsageError("--pages-per-task must be at least 1 and --task-retries at least 0")


def parse_workers(text: str) -> int | tuple[int, int]:
    """`N` or `MIN:MAX` (the --workers option)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", text)
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
        raise UsageError(f"--workers {text!r}: expected N or MIN:MAX with 1 <= MIN <= MAX")
    return int(m.group(1)) if m.group(2) is None else (int(m.group(1)), int(m.group(2)))


def import_ray() -> Any:
    """Ray, imported only when --ray is given."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra has no pyarrow)
    except ImportError:
        raise RayUnavailable(INSTALL_HINT) from None
    return ray


def _check_reachable(address: str) -> None:
    """ray.init waits forever on a HOST:PORT where no Ray runs; a TCP probe says so at once."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray {address!r}: expected local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise RayUnavailable(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from None


def _cluster_address(address: str) -> str | None:
    """The HOST:PORT (or ray://) that --ray ADDRESS names: RAY_ADDRESS for auto, where it is set
    (as `ray job submit` sets it); None when Ray itself finds or starts the cluster."""
    target = os.environ.get("RAY_ADDRESS") if address == "auto" else None if address == "local" else address
    return target if target and target != "auto" else None


def preflight(address: str) -> None:
    """Before any work: Ray is installed, and the cluster's HOST:PORT answers (a run that plans a
    large archive first should not learn only then that the cluster is not there)."""
    import_ray()
    target = _cluster_address(address)
    if target:
        _check_reachable(target)


@contextlib.contextmanager
def connect(address: str, *, runtime_env: dict[str, Any] | None = None) -> Iterator[float]:
    """Connect the driver to Ray for the duration of the block; yields the seconds it took. An
    already connected Ray (tests, a notebook) is used as is and left connected."""
    ray = import_ray()
    if ray.is_initialized():
        yield 0.0
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Worker output stays in Ray's logs; our own messages say what went wrong in one line.
    common: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR, runtime_env=runtime_env)
    started = time.monotonic()
    if address == "local":
        ray.init(address="local", include_dashboard=False, **common)
    else:
        target = _cluster_address(address)
        if target:
            _check_reachable(target)
        if (target or address).startswith("ray://"):
            try:
                import grpc  # noqa: F401  (Ray Client's transport)
            except ImportError:
                raise RayUnavailable("ray:// addresses need Ray Client: pip install 'ray[client]'") from None
        try:
            ray.init(address=address, **common)
        except ConnectionError as e:
            raise RayUnavailable(f"cannot connect to Ray at {address}: {e}") from None
    try:
        yield time.monotonic() - started
    finally:
        ray.shutdown()


def limit_threads(threads: int) -> None:
    """Make torch and OpenMP use the CPUs Ray gave this worker, not the node's core count. The
    environment covers libraries that read it when they start; torch, if loaded, is told directly."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


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
