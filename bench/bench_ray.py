"""What Ray costs `scan`, three ways.

    python bench/bench_ray.py toy [--pages 200] [--sleep 0.02] [--per-task 1,2,4]
    python bench/bench_ray.py overhead [--pages 200] [--runs 2]
    python bench/bench_ray.py scaling [--pages 8]        # full size: heavy, not for a shared 2-core box

`toy`: the toy page work of tests/ray_toy.py (a fixed sleep per page, no model) through one worker
holding both cores: the steady-state overhead per page (between the first and the last record, so
the pool's start is apart) for several pages per task, start-up times, and the RAM of the local
Ray's processes.

`overhead`: the real thing on the tiny random-weight bundle: `ppvl-ocr scan` against
`ppvl-ocr scan --ray local --ray-workers 1 --ray-cpus-per-worker 2` over the same folder of PDFs,
each run a fresh process whose output file is watched: the steady cost per page is the time from
the first record to the last (so the fixed costs, model load, ray.init, the pool's start, stay
apart; they show in the time to the first record). Appended to bench/RESULTS.md.

`scaling`: full-size random weights, 8 pages, `--ray local` with 1 worker x 2 CPUs against 2
workers x 1 CPU. Appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]  # this checkout, the toy work, bench helpers

from bench_scan import PPVL, WORK, machine, make_bundle  # noqa: E402
from makedocs import make_pdf  # noqa: E402
from ray_toy import JsonlSink, ToyWork, crashed_record, make_units  # noqa: E402

from ppvl_batch.batch.ray_cluster import RayOptions, connect  # noqa: E402
from ppvl_batch.batch.ray_executor import run_on_ray  # noqa: E402


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


def toy(a: argparse.Namespace) -> None:
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
                       progress=lambda r, arrivals=arrivals: arrivals.append(time.perf_counter()))
            total = time.perf_counter() - began
            sink.close()
            # Records arrive a task at a time: steady = from the first task's records to the last's.
            steady = (arrivals[-1] - arrivals[0]) / (len(arrivals) - per_task)
            print(f"| {per_task} | {arrivals[0] - began:.2f} | {steady * 1000:.2f} | "
                  f"{(steady - sequential) * 1000:.2f} | {total:.2f} |")
    print(f"\nray.init (local): {connect_seconds:.2f} s; Ray's processes: {idle_rss / 2**20:.0f} MB RSS and "
          f"{idle * 100:.0f}% of a core when idle, peak RSS {ray_procs.peak / 2**20:.0f} MB with the worker")


def timed_scan(docs: Path, bundle: Path, extra: list[str], small: list[str]) -> tuple[float, float, dict]:
    """One fresh `ppvl-ocr scan` of `docs`, its output watched: (steady seconds per page, between
    the first record and the last; seconds from the start to the first record; its summary)."""
    out = Path(tempfile.mkdtemp(prefix="bench-ray-scan-"))
    records = out / "out.jsonl"
    command = [PPVL, "scan", str(docs), "-o", str(records), "--model", str(bundle), "--summary-json",
               str(out / "summary.json"), "-q", *small, *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    arrivals: list[tuple[float, int]] = []  # (time, lines) whenever the output grew
    while proc.poll() is None:
        lines = records.read_bytes().count(b"\n") if records.exists() else 0
        if lines and (not arrivals or lines > arrivals[-1][1]):
            arrivals.append((time.perf_counter(), lines))
        time.sleep(0.002)
    if proc.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({proc.returncode}):\n{proc.stderr.read()[-2000:]}")
    lines = records.read_bytes().count(b"\n")
    if arrivals[-1][1] < lines:
        arrivals.append((time.perf_counter(), lines))
    summary = json.loads((out / "summary.json").read_text())
    shutil.rmtree(out)
    (t0, n0), (t1, n1) = arrivals[0], arrivals[-1]
    return (t1 - t0) / (n1 - n0), t0 - started, summary


def folder(pages: int) -> Path:
    docs = WORK / f"ray-docs-{pages}"
    if not docs.exists():
        for i in range(0, pages, 4):
            make_pdf(docs / f"d{i // 4:03d}.pdf", pages=min(4, pages - i), size=(612, 792), label=f"document {i}")
    return docs


def report(title: str, command: str, header: str, rows: list[str], notes: list[str]) -> None:
    load = os.getloadavg()[0]
    lines = [f"\n## {title}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
             f"Machine: {machine()}; load average {load:.1f} at the end.",
             f"Command: `{command}`\n", header, *rows, "", *notes]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
        f.write(text)


def overhead(a: argparse.Namespace) -> None:
    bundle = make_bundle("tiny", "F32")
    small_args = ["--min-pixels", "784", "--max-pixels", "3136", "--max-new-tokens", "16"]
    docs = folder(a.pages)
    one_worker = ["--ray", "local", "--ray-workers", "1", "--ray-cpus-per-worker"]
    # Pairs with the same thread count: on a shared 2-core machine, 2 threads suffer far more from
    # other load than 1 (each step waits for both), so the 1-thread pair is the steadier measure.
    pairs = {2: (["--threads", "2"], [*one_worker, "2"]), 1: (["--threads", "1"], [*one_worker, "1"])}
    runs: dict[tuple[int, str], list[tuple[float, float, dict]]] = {}
    for _ in range(a.runs):  # interleaved, so that both sides of a pair see the same load
        for threads, (local, on_ray) in pairs.items():
            for name, extra in (("local", local), ("ray", on_ray)):
                runs.setdefault((threads, name), []).append(timed_scan(docs, bundle, extra, small_args))
    rows, notes = [], []
    for threads in pairs:
        best = {}
        for name, label in (("local", f"local scan --threads {threads}"),
                            ("ray", f"--ray local, 1 worker x {threads} CPU{'s' if threads > 1 else ''}")):
            got = runs[(threads, name)]
            per_page, first, _ = min(got)
            best[name] = per_page
            rows.append(f"| {label} | {per_page * 1000:.1f} | {60 / per_page:.0f} | {first:.1f} | "
                        f"{', '.join(f'{r[0] * 1000:.1f}' for r in got)} |")
        extra_ms = (best["ray"] - best["local"]) * 1000
        notes.append(f"{threads} thread{'s' if threads > 1 else ''}: Ray adds {extra_ms:.1f} ms per page "
                     f"({extra_ms / 600:.3f}% of a full-size page of about 60 s on 2 cores).")
    report(
        "scan --ray overhead per page (bench_ray.py overhead)",
        f"python bench/bench_ray.py overhead --pages {a.pages} --runs {a.runs}",
        "| run | ms/page (steady, best run) | pages/min | s to the first record | ms/page of each run |\n"
        "|---|---|---|---|---|",
        rows,
        [f"Tiny random-weight bundle, {a.pages} pages (PDFs of 4 letter pages) of at most 3136 pixels, 16 new "
         f"tokens, default pages per task (2); each run a fresh process, its output file watched: steady = from "
         f"the first record to the last; the time to the first record holds the fixed costs (imports, model "
         f"load, and for Ray its start and the pool's).", *notes],
    )


def scaling(a: argparse.Namespace) -> None:
    bundle = make_bundle("full", "Q4_K_M")
    docs = folder(a.pages)
    rows = []
    for workers, cpus in ((1, 2), (2, 1)):
        per_page, first, summary = timed_scan(docs, bundle, ["--ray", "local", "--ray-workers", str(workers),
                                                           "--ray-cpus-per-worker", str(cpus)], ["--max-new-tokens", "256"])
        rows.append(f"| {workers} x {cpus} | {per_page:.1f} | {summary['seconds']:.0f} | {summary['pages_per_minute']:.2f} |")
    report("scan --ray scaling, full size (bench_ray.py scaling)", f"python bench/bench_ray.py scaling --pages {a.pages}",
           "| workers x CPUs | s/page (steady) | run s | pages/min |\n|---|---|---|---|", rows, [])


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("toy")
    t.add_argument("--pages", type=int, default=200)
    t.add_argument("--sleep", type=float, default=0.02)
    t.add_argument("--per-task", default="1,2,4")
    o = sub.add_parser("overhead")
    o.add_argument("--pages", type=int, default=200)
    o.add_argument("--runs", type=int, default=2, help="runs per mode; the fastest counts")
    s = sub.add_parser("scaling")
    s.add_argument("--pages", type=int, default=8)
    a = ap.parse_args()
    # The commands measured (and their Ray workers) import this checkout; Ray phones nowhere.
    os.environ.update(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    {"toy": toy, "overhead": overhead, "scaling": scaling}[a.what](a)


if __name__ == "__main__":
    main()
