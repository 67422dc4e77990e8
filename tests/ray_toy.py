"""A toy page work, a journal sink and a driver script for the Ray executor's tests.

ToyWork stands in for the recognizer: it reads its unit's file from the shared path, sleeps a
little and answers a text derived from the file and the page, so a run's records can be compared
with a direct sequential run. Hooks in its settings let a test find the workers (each writes its
pid into a folder), see what was computed (each key appended to a log before the page runs), and
make one page kill its worker every time (`crash_on`: os._exit), the load fail (`fail_load`) or
one page raise (`raise_on`, a bug).

Run as a script it is a driver: `python ray_toy.py ROOT OUT --address A ...` plans the pages of
ROOT's documents, drops those OUT already has, and runs the rest on Ray (exit 130 when
interrupted), so tests can kill -9 or interrupt a real driver process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from ppvl_batch.batch.ray_executor import CRASHED, RayOptions, Unit, run_on_ray
from ppvl_batch.errors import PPVLError


class ToyWork:
    def __init__(self, settings: dict[str, Any], threads: int) -> None:
        self.s = settings
        if settings.get("fail_load"):
            raise RuntimeError(settings["fail_load"])
        if settings.get("pids"):
            info = {"threads": threads, "omp": os.environ.get("OMP_NUM_THREADS")}
            Path(settings["pids"], str(os.getpid())).write_text(json.dumps(info))

    def fingerprint(self) -> str:
        return self.s["fingerprint"]

    def run(self, units: list[Unit]) -> list[dict[str, Any]]:
        return [self._page(u) for u in units]

    def _page(self, u: Unit) -> dict[str, Any]:
        if self.s.get("log"):
            with open(self.s["log"], "a") as f:
                f.write(u.key + "\n")
        if u.key == self.s.get("crash_on"):
            os._exit(1)
        if u.key == self.s.get("raise_on"):  # a bug in the page work: it must not raise
            raise ValueError(f"toy bug on {u.source} page {u.page}")
        time.sleep(self.s.get("sleep", 0))
        try:
            head = Path(u.path).read_bytes()[:64]
        except OSError as e:
            return record(u, error=("missing", str(e)))
        return record(u, text=f"{u.source} p{u.page}/{u.pages} {hashlib.sha256(head + bytes([u.page])).hexdigest()[:12]}")


def record(u: Unit, text: str | None = None, error: tuple[str, str] | None = None) -> dict[str, Any]:
    return {
        "source": u.source, "page": u.page, "page_count": u.pages, "status": "ok" if error is None else "error",
        "text": text, "error": None if error is None else {"type": error[0], "message": error[1]}, "key": u.key,
    }


def crashed_record(u: Unit, message: str) -> dict[str, Any]:
    return record(u, error=(CRASHED, message))


class JsonlSink:
    """The journal as the driver keeps it: one fsync'd line per key, a torn last line cut off."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = path.read_bytes() if path.exists() else b""
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            path.write_bytes(data)
        self.keys = {orjson.loads(line)["key"] for line in data.splitlines()}
        self.written: Counter[str] = Counter()  # records written by this run, per source
        self.documents: list[tuple[str, int]] = []  # (source, its records so far) when called done
        self._f = open(path, "ab")

    def write(self, record: dict[str, Any]) -> None:
        if record["key"] in self.keys:
            return
        self._f.write(orjson.dumps(record) + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.keys.add(record["key"])
        self.written[record["source"]] += 1

    def document_done(self, source: str) -> None:
        self.documents.append((source, self.written[source]))

    def close(self) -> None:
        self._f.close()


def make_units(root: Path, docs: int, pages: int) -> list[Unit]:
    """`docs` small files under root (made once) with `pages` pages each; keys from path and page."""
    root.mkdir(parents=True, exist_ok=True)
    units = []
    for d in range(docs):
        path = root / f"doc{d}.bin"
        if not path.exists():
            path.write_bytes(f"document {d} ".encode() * 8)
        for p in range(1, pages + 1):
            key = hashlib.sha256(f"{path}\0{p}".encode()).hexdigest()[:32]
            units.append(Unit(key=key, path=str(path), source=f"doc{d}.bin", page=p, pages=pages))
    return units


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--address", default="local")
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--pages", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=float, default=1)
    ap.add_argument("--pages-per-task", type=int, default=2)
    ap.add_argument("--task-retries", type=int, default=1)
    ap.add_argument("--settings", default="{}", help="ToyWork settings as JSON (fingerprint defaults to toy)")
    a = ap.parse_args()
    settings = {"fingerprint": "toy", **json.loads(a.settings)}
    sink = JsonlSink(a.out)
    todo = [u for u in make_units(a.root, a.docs, a.pages) if u.key not in sink.keys]
    options = RayOptions(address=a.address, workers=a.workers, cpus_per_worker=a.cpus, pages_per_task=a.pages_per_task,
                         task_retries=a.task_retries)
    try:
        run = run_on_ray(todo, ToyWork, settings, "toy", sink, crashed_record, options)
    except PPVLError as e:
        print(f"error: {e}", file=sys.stderr)
        return int(e.exit_code)
    finally:
        sink.close()
    print(json.dumps({"ok": run.pages_ok, "documents": sorted(sink.documents), "failed": run.pages_failed, "interrupted": run.interrupted,
                      "connect_seconds": run.connect_seconds, "seconds": run.seconds,
                      "workers": run.workers_summary()}), file=sys.stderr)
    return 130 if run.interrupted else 1 if run.pages_failed else 0


if __name__ == "__main__":
    sys.exit(main())
