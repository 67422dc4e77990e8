"""Benchmark the re-run of `ppvl-ocr scan` over an unchanged archive: the planning path only.

    python bench/bench_rehash.py                     # 10,000 files of 200 KB (about 2 GB)
    python bench/bench_rehash.py --files 500 --kb 50 # a quick try

It generates an archive under bench/work/rehash/ (JPEG files, each made unique by a few bytes
after its end marker), writes a journal that says every page is done (as a finished run would
have left it: no model runs are needed to measure planning), then runs the real CLI
(`ppvl-ocr scan ARCHIVE -o out.jsonl`, demo bundle, which a run with nothing to do never loads)
in a fresh process, three times:

    no hash cache    every file is read to hash it (what every run did before the cache)
    hash cache       unchanged files are recognised by (path, size, mtime_ns, ctime_ns, inode)
    --rehash         the cache ignored on request

Before each run the page cache is dropped (`echo 3 > /proc/sys/vm/drop_caches`, as root) and
then the program's own files are read once by importing it, so read_bytes counts what the run
itself reads from disk: archive contents, folders and inodes, journal, cache. rchar (bytes
returned by read calls, from the page cache or not) is reported too. The numbers come from
/proc/self/io of the scan process, written at its exit. The archive is deleted at the end
(--keep keeps it). Results are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work" / "rehash"
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # this checkout's ppvl_batch, bench_engine

from bench_engine import machine, report  # noqa: E402

# Runs the CLI and writes, at exit (click ends with sys.exit), its own /proc/self/io and the
# seconds spent in the phases of a run that has nothing to do.
CHILD = """
import atexit, json, os, resource, sys, time
started = time.perf_counter()
target = sys.argv[1]
phases = {}

def timed(owner, name, label):
    inner = getattr(owner, name)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapper)

def write():
    io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    phases["total"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    phases["cpu"] = usage.ru_utime + usage.ru_stime
    phases["load"] = os.getloadavg()[0]
    json.dump({"io": {k: int(v) for k, v in io.items()}, "phases": phases}, open(target, "w"))

atexit.register(write)
import ppvl_batch.cli.scan as cli_scan, ppvl_batch.cli as cli, ppvl_batch.batch.local as local, ppvl_batch.batch.session as session, ppvl_batch.batch.journal as journal, ppvl_batch.batch.hashcache as hashcache
phases["imports"] = time.perf_counter() - started
timed(session, "collect", "walk inputs")
timed(journal.Journal, "open", "load journal")
timed(hashcache.HashCache, "load", "load hash cache")
timed(cli_scan, "load_recognizer", "model (lazy)")
timed(local.Scan, "_run_pipeline", "plan and skip")
sys.argv = ["ppvl-ocr", *sys.argv[2:]]
cli.main()
"""


def make_archive(folder: Path, files: int, kb: int) -> tuple[list[tuple[str, str]], int]:
    """`files` JPEGs of `kb` KiB each in folders of 100; returns [(source, sha256)], total bytes.
    Each is one noise image padded after its end marker with bytes of its own (still a valid
    JPEG of the same image, but a distinct content)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    base = buf.getvalue()[: kb * 1024]
    padding = rng.integers(0, 255, max(0, kb * 1024 - len(base)), dtype=np.uint8).tobytes()
    out, total = [], 0
    for i in range(files):
        path = folder / f"{i // 100:03d}" / f"scan-{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{i:08d}".encode()
        data = base + tag + padding[len(tag):]
        path.write_bytes(data)
        out.append((str(path.relative_to(ROOT)), hashlib.sha256(data).hexdigest()))
        total += len(data)
    return out, total


def write_done_journal(journal: Path, files: list[tuple[str, str]]) -> None:
    """A journal in which every file's one page is done, keyed as `scan` keys it."""
    import orjson

    from ppvl_batch.batch.options import ScanOptions
    from ppvl_batch.batch.plan import page_settings
    from ppvl_batch.batch.records import RunFields, build_record, checkpoint_key
    from ppvl_batch.batch.task import PageTask
    from ppvl_batch.recognizer import Recognizer

    with Recognizer.load(None, lazy=True) as rec:
        model_id = rec.model_id
    settings = page_settings(ScanOptions(inputs=[]).page, model_id)
    run = RunFields("ocr", None, model_id)
    result = type("R", (), dict(width=448, height=588, text="done", finish_reason="stop", image_tokens=336,
                                output_tokens=1, seconds=1.0))
    with open(journal, "wb") as f:
        for source, sha in files:
            key = checkpoint_key(settings, sha, 1)
            task = PageTask(key, source, source, 1, 1, sha)
            f.write(orjson.dumps(build_record(run, task, result)) + b"\n")


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n", encoding="utf-8")
        return True
    except OSError:
        return False


def scan_process(archive: Path, out: Path, *extra: str) -> tuple[float, dict[str, int], dict]:
    """Run `ppvl-ocr scan ARCHIVE -o OUT` in a fresh process: wall seconds, its /proc/self/io, summary."""
    io_file, summary_file = WORK / "io.txt", WORK / "summary.json"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(io_file), "scan", str(archive.relative_to(ROOT)),
                           "-o", str(out.relative_to(ROOT)), "--summary-json", str(summary_file), *extra],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"scan failed ({proc.returncode}): {proc.stderr}")
    measured = json.loads(io_file.read_text())
    return wall, measured, json.loads(summary_file.read_text())


def run_scan(archive: Path, out: Path, warm: tuple[Path, Path], *extra: str) -> dict[str, float]:
    dropped = drop_caches()
    # The same command on a one-file archive reads the program's own files (Python, torch,
    # transformers, the demo bundle's manifest) back into the cache: they are not the run's reads.
    scan_process(*warm)
    wall, measured, summary = scan_process(archive, out, *extra)
    return {"wall": wall, "phases": measured["phases"], "read_bytes": measured["io"]["read_bytes"],
            "rchar": measured["io"]["rchar"], "done": summary["pages_done_before"], "hashed": summary["files_hashed"],
            "dropped": dropped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--kb", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the generated archive")
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    archive = WORK / "archive"
    out = WORK / "out.jsonl"
    try:
        t = time.perf_counter()
        files, total = make_archive(archive, args.files, args.kb)
        write_done_journal(out, files)
        warm = (WORK / "warm", WORK / "warm.jsonl")
        write_done_journal(warm[1], make_archive(warm[0], 1, 1)[0])
        print(f"archive: {len(files)} files, {total / 1e9:.2f} GB, made in {time.perf_counter() - t:.0f} s",
              file=sys.stderr)
        time.sleep(1.5)  # past the hash cache's racy window for the newest files
        runs = [("no hash cache (first run with this version)", run_scan(archive, out, warm)),
                ("hash cache", run_scan(archive, out, warm)),
                ("hash cache, again", run_scan(archive, out, warm)),
                ("--rehash", run_scan(archive, out, warm, "--rehash"))]
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    for name, r in runs:
        if r["done"] != len(files):
            raise SystemExit(f"{name}: only {r['done']} of {len(files)} pages were found done")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cache_note = "page cache dropped before each run" if all(r["dropped"] for _, r in runs) else \
        "page cache could NOT be dropped: read_bytes undercounts, see rchar"
    lines = [
        f"## scan re-run over an unchanged archive (bench_rehash.py), {stamp}",
        "",
        f"Machine: {machine()}.",
        f"Archive: {len(files)} JPEG files, {total / 1e9:.2f} GB, every page already in the journal; "
        f"{cache_note}, program files re-read first (by the same command on a one-file archive). "
        "`wall`: the whole `ppvl-ocr scan` process; the phases inside it (seconds) are: imports of "
        "ppvl_batch (Python start included), walking the input folder, loading the journal and the hash "
        "cache, opening the model lazily (bundle manifest, torch and transformers imports, no weights), "
        "and the pipeline that plans every file and skips every page (hashing included).",
        "",
        "`cpu`: user + system CPU seconds of the process; `load`: the machine's 1-minute load average at "
        "the end of the run (2 cores, shared with other work: wall times grow with it).",
        "",
        "| run | files hashed | wall s | cpu s | load | imports | walk | journal | hash cache | model | plan+skip "
        "| read_bytes | of the archive | rchar |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs:
        p = r["phases"]
        cols = " | ".join(f"{p.get(k, 0.0):.2f}" for k in ("imports", "walk inputs", "load journal", "load hash cache",
                                                            "model (lazy)", "plan and skip"))
        lines.append(f"| {name} | {r['hashed']} | {r['wall']:.2f} | {p['cpu']:.2f} | {p['load']:.1f} | {cols} | {r['read_bytes'] / 1e6:.1f} MB | "
                     f"{100 * r['read_bytes'] / total:.3f}% | {r['rchar'] / 1e6:.1f} MB |")
    report(lines)


if __name__ == "__main__":
    main()
