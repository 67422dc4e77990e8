"""A toy page work and a journal sink for the Ray executor's mechanics (tests/test_ray.py) and
its overhead benchmark (bench/bench_ray.py); the real page work is tested through `scan --ray`.

ToyWork stands in for the recognizer: it reads its unit's file from the shared path, sleeps a
little and answers a text derived from the file and the page. Hooks in its settings make the
load fail (`fail_load`) or one page raise (`raise_on`, a bug).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from ppvl_batch.batch.ray_executor import CRASHED
from ppvl_batch.batch.task import PageTask


class ToyWork:
    def __init__(self, settings: dict[str, Any], threads: int) -> None:
        self.s = settings
        if settings.get("fail_load"):
            raise RuntimeError(settings["fail_load"])

    def fingerprint(self) -> str:
        return self.s["fingerprint"]

    def run(self, units: list[PageTask]) -> list[dict[str, Any]]:
        return [self._page(u) for u in units]

    def _page(self, u: PageTask) -> dict[str, Any]:
        if u.key == self.s.get("raise_on"):  # a bug in the page work: it must not raise
            raise ValueError(f"toy bug on {u.source} page {u.page}")
        time.sleep(self.s.get("sleep", 0))
        try:
            head = Path(u.path).read_bytes()[:64]
        except OSError as e:
            return record(u, error=("missing", str(e)))
        return record(u, text=f"{u.source} p{u.page}/{u.page_count} {hashlib.sha256(head + bytes([u.page])).hexdigest()[:12]}")


def record(u: PageTask, text: str | None = None, error: tuple[str, str] | None = None) -> dict[str, Any]:
    return {
        "source": u.source, "page": u.page, "page_count": u.page_count, "status": "ok" if error is None else "error",
        "text": text, "error": None if error is None else {"type": error[0], "message": error[1]}, "key": u.key,
    }


def crashed_record(u: PageTask, message: str) -> dict[str, Any]:
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


def make_units(root: Path, docs: int, pages: int) -> list[PageTask]:
    """`docs` small files under root (made once) with `pages` pages each; keys from path and page."""
    root.mkdir(parents=True, exist_ok=True)
    units = []
    for d in range(docs):
        path = root / f"doc{d}.bin"
        if not path.exists():
            path.write_bytes(f"document {d} ".encode() * 8)
        for p in range(1, pages + 1):
            key = hashlib.sha256(f"{path}\0{p}".encode()).hexdigest()[:32]
            units.append(PageTask(key=key, path=str(path), source=f"doc{d}.bin", page=p, page_count=pages, sha256=None))
    return units

