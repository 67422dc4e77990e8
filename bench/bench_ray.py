"""Ray's cost per page and per run, with the toy page work of tests/ray_toy.py (no model).

The toy sleeps a fixed time per page, so what a Ray run takes beyond a sequential run of the same
pages is Ray's: starting a local Ray, starting the worker pool, moving units and records. Runs one
worker holding both cores (as the issue's overhead benchmark asks), for several pages per task,
and reports per page the steady-state overhead (between the first and the last record, so the
pool's start is apart), plus the start-up times and the RAM of the local Ray's processes.

    python bench/bench_ray.py [--pages 200] [--sleep 0.02] [--per-task 1,2,4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout, and the toy work

from ray_toy import JsonlSink, ToyWork, crashed_record, make_units  # noqa: E402

from ppvl_batch.batch.ray_executor import RayOptions, connect, run_on_ray  # noqa: E402


class RayProcesses:
    """Samples this process's children (the local Ray's processes): peak summed RSS, and CPU
    seconds per process (the last sample of each, so workers that were replaced still count)."""

    def __init__(self) -> None:
        self.peak = 0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.2):
            total = 0
            for p in me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)

    def __enter__(self) -> RayProcesses:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--sleep", type=float, default=0.02)
    ap.add_argument("--per-task", default="1,2,4")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    units = make_units(tmp / "docs", docs=a.pages // 10, pages=10)
    settings = {"fingerprint": "toy", "sleep": a.sleep}
    started = time.perf_counter()
    ToyWork(settings, 2).run(units)
    sequential = (time.perf_counter() - started) / len(units)

    print(f"{len(units)} pages, toy work {a.sleep * 1000:.0f} ms/page; sequential {sequential * 1000:.2f} ms/page")
    print("| pages/task | pool start s | ms/page (steady) | overhead ms/page | total s (connected) |")
    print("|---|---|---|---|---|")
    # The workers import ray_toy and this checkout's ppvl_batch.
    env = {"env_vars": {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}}
    with RayProcesses() as ray_procs, connect("local", runtime_env=env) as connect_seconds:
        time.sleep(1)
        idle0 = ray_procs.cpu_seconds()
        time.sleep(5)
        idle = (ray_procs.cpu_seconds() - idle0) / 5
        idle_rss = ray_procs.peak
        for per_task in map(int, a.per_task.split(",")):
            out = tmp / f"out-{per_task}.jsonl"
            sink = JsonlSink(out)
            arrivals: list[float] = []
            began = time.perf_counter()
            run_on_ray(units, ToyWork, settings, "toy", sink, crashed_record,
                       RayOptions(workers=1, cpus_per_worker=2, pages_per_task=per_task, task_retries=1),
                       progress=lambda r: arrivals.append(time.perf_counter()))
            total = time.perf_counter() - began
            sink.close()
            # Records arrive a task at a time: steady = from the first task's records to the last's.
            steady = (arrivals[-1] - arrivals[0]) / (len(arrivals) - per_task)
            print(f"| {per_task} | {arrivals[0] - began:.2f} | {steady * 1000:.2f} | "
                  f"{(steady - sequential) * 1000:.2f} | {total:.2f} |")
    print(f"\nray.init (local): {connect_seconds:.2f} s; Ray's processes: {idle_rss / 2**20:.0f} MB RSS and "
          f"{idle * 100:.0f}% of a core when idle, peak RSS {ray_procs.peak / 2**20:.0f} MB with the worker")


if __name__ == "__main__":
    main()
