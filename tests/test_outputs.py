"""outputs.py: records, the journal (checkpoint), the lock, Markdown."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from ppvl_batch.batch.journal import Journal, Lock, RecordWriter
from ppvl_batch.batch.markdown import render_markdown
from ppvl_batch.batch.records import RECORD_START, RunFields, build_record, checkpoint_key, settings_digest
from ppvl_batch.batch.task import PageTask
from ppvl_batch.documents.pages import PageError
from ppvl_batch.errors import OutputError
from ppvl_batch.files import atomic_write

RESULT = SimpleNamespace(finish_reason="stop", image_tokens=12, output_tokens=3, width=56, height=28, seconds=1.0)


def record(key: str, status: str = "ok", page: int = 1, text: str = "t") -> dict:
    task = PageTask(key, "/abs/a.pdf", "a.pdf", page, 3, "ab")
    run = RunFields("ocr", None, "m")
    outcome = SimpleNamespace(**{**vars(RESULT), "text": text}) if status == "ok" else PageError("corrupt", "bad -- page")
    return build_record(run, task, outcome, seconds=0.23456)


def line(rec: dict) -> bytes:
    return orjson.dumps(rec) + b"\n"


def add(journal: Journal, rec: dict) -> None:
    journal.append(line(rec), rec)


# ---------------------------------------------------------------------------- keys and records


def test_settings_digest_is_order_independent_and_sensitive() -> None:
    a = settings_digest({"model": "m", "dpi": None, "max_new_tokens": 8})
    assert a == settings_digest({"max_new_tokens": 8, "dpi": None, "model": "m"})
    assert a != settings_digest({"model": "m", "dpi": 150, "max_new_tokens": 8})


def test_checkpoint_key_parts() -> None:
    base = checkpoint_key("s", "sha", 1)
    assert len({base, checkpoint_key("t", "sha", 1), checkpoint_key("s", "sha2", 1), checkpoint_key("s", "sha", 2)}) == 4
    assert base == checkpoint_key("s", "sha", 1)


def test_record_fields_and_prefix() -> None:
    ok = record("k")
    assert list(ok) == [
        "source", "sha256", "page", "page_count", "width", "height", "task", "prompt", "text", "finish_reason",
        "status", "error", "image_tokens", "output_tokens", "seconds", "model", "key",
        "confidence", "min_token_prob", "needs_review", "review_reasons",
    ]
    assert (ok["status"], ok["error"], ok["width"], ok["text"], ok["seconds"]) == ("ok", None, 56, "t", 1.235)
    bad = record("k", status="error")
    assert bad["status"] == "error" and bad["error"] == {"type": "corrupt", "message": "bad -- page"}
    assert bad["text"] is None and bad["width"] is None
    # The journal recognises a partial line of ours by this prefix.
    assert line(ok).startswith(RECORD_START) and line(bad).startswith(RECORD_START)


# ---------------------------------------------------------------------------- journal


def test_journal_round_trip_and_latest_entry_wins(tmp_path: Path) -> None:
    j = Journal(tmp_path / "out.jsonl")
    j.open(overwrite=False)
    add(j, record("k1", text="one"))
    add(j, record("k2", status="error"))
    add(j, record("k2", text="retried"))
    j.close()
    again = Journal(tmp_path / "out.jsonl")
    again.open(overwrite=False)
    assert {k: again.status(k) for k in ("k1", "k2", "k3")} == {"k1": "ok", "k2": "ok", "k3": None}
    assert again.record("k2")["text"] == "retried"
    assert again.record("k1")["text"] == "one"


def test_journal_cuts_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    whole = line(record("k1"))
    path.write_bytes(whole + line(record("k2"))[:30])
    j = Journal(path)
    j.open(overwrite=False)
    assert set(j.entries) == {"k1"}
    assert path.read_bytes() == whole
    add(j, record("k2"))
    j.close()
    assert path.read_bytes() == whole + line(record("k2"))


def _torn_cases(last: bytes) -> list[tuple[str, bytes]]:
    """Every way a crash can leave the last record: cut at each byte offset (inside multi-byte
    characters too), replaced by NULs, NULs after it or after a cut."""
    cases = [(f"cut at {i}", last[:i]) for i in range(len(last))]
    cases += [(f"{n} NULs", b"\0" * n) for n in (1, 7, len(last), 4096)]
    cases += [("cut + NULs", last[:len(last) // 3] + b"\0" * 500), ("NUL line", b"\0" * 40 + b"\n")]
    return cases


def test_writer_repairs_every_torn_tail_and_records_each_page_once(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    recs = [record(f"k{i}", page=i) for i in range(1, 4)]
    recs = [{**r, "source": "архив/日本語 é.pdf"} for r in recs]  # multi-byte characters to cut inside
    head = b"".join(line(r) for r in recs[:-1])
    last = line(recs[-1])
    assert len(last.decode()) < len(last)
    for name, tail in _torn_cases(last):
        path.write_bytes(head + tail)
        writer = RecordWriter(str(path), None, overwrite=False)
        writer.open()
        assert set(writer.journal.entries) == {"k1", "k2"}, name
        assert writer.status("k3") is None, name  # so the page is read again...
        writer.write(recs[-1])
        writer.close()
        assert path.read_bytes() == head + last, name  # ... and recorded once


def test_a_torn_first_record_is_cut_but_a_foreign_one_line_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first = line(record("k1"))
    for cut in (1, 5, len(RECORD_START), len(first) // 2, len(first) - 1):
        path.write_bytes(first[:cut])
        j = Journal(path)
        j.open(overwrite=False)
        assert not j.entries and path.read_bytes() == b"", cut
        j.close()
    path.write_bytes(b"\0" * 300)
    Journal(path).open(overwrite=False)
    assert path.read_bytes() == b""
    path.write_bytes(b'{"sourdough": 1}')
    with pytest.raises(OutputError, match="not a ppvl-ocr record"):
        Journal(path).open(overwrite=False)
    path.write_bytes(first + b"garbage\n" + first)  # a bad line in the middle is not a torn tail
    with pytest.raises(OutputError, match="line 2 is not a ppvl-ocr record"):
        Journal(path).open(overwrite=False)


@pytest.mark.parametrize("content", [b"my notes\n", b"\x89PNG\r\n\x1a\n\x00binary", b'{"a": 1}\n', b"[1, 2]\n", b"%PDF-1.7 no newline"])
def test_journal_refuses_foreign_files_and_leaves_them_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "precious.txt"
    path.write_bytes(content)
    with pytest.raises(OutputError, match="not a ppvl-ocr record.*--overwrite"):
        Journal(path).open(overwrite=False)
    assert path.read_bytes() == content
    j = Journal(path)
    j.open(overwrite=True)
    assert path.read_bytes() == b"" and not j.entries


def test_journal_write_failure_is_output_error_and_keeps_whole_records(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out.jsonl"
    j = Journal(path)
    j.open(overwrite=False)
    add(j, record("k1"))

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match="disk full") as info:
        add(j, record("k2"))
    assert info.value.exit_code == 4
    assert path.read_bytes() == line(record("k1"))
    assert j.status("k2") is None


# ---------------------------------------------------------------------------- lock


HOLD_LOCK = """
import sys, time
from pathlib import Path
from ppvl_batch.batch.journal import Lock
lock = Lock(Path(sys.argv[1]), "out")
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_excludes_a_second_process_and_names_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "out.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"another ppvl-ocr run \\(pid {holder.pid}\\)") as info:
            Lock(path, "output out.jsonl").acquire()
        assert info.value.exit_code == 4
    finally:
        holder.kill()
        holder.wait()
    # killed with SIGKILL: its lock file is still there, but the lock died with it
    assert path.read_text().strip() == str(holder.pid)
    lock = Lock(path, "output out.jsonl")
    lock.acquire()
    assert path.read_text().strip() == str(os.getpid())
    lock.release()
    assert not path.exists()


CRASH_HOLDING_LOCK = """
import os, sys
from pathlib import Path
from ppvl_batch.batch.journal import Lock
Lock(Path(sys.argv[1]), "out").acquire()
print("locked", flush=True)
sys.stdin.readline()
os._exit(1)  # dies holding the lock: no release, the lock file and its PID stay
"""


def test_lock_from_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    """The lock file a run left when it died names that run's PID; the lock itself died with the
    process, so the next run takes it over (while the holder lived, it was refused)."""
    path = tmp_path / "out.lock"
    holder = subprocess.Popen([sys.executable, "-c", CRASH_HOLDING_LOCK, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputError, match=f"pid {holder.pid}"):
        Lock(path, "x").acquire()
    holder.communicate("exit\n", timeout=30)
    assert holder.returncode == 1 and path.read_text().strip() == str(holder.pid)
    lock = Lock(path, "x")
    lock.acquire()
    assert path.read_text().strip() == str(os.getpid())
    lock.release()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("failing", ["flock", "write"])
def test_a_lock_that_cannot_be_taken_leaves_no_descriptor_open(tmp_path: Path, monkeypatch, failing: str) -> None:
    import ppvl_batch.batch.journal as journal_module

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    if failing == "flock":
        monkeypatch.setattr(journal_module.fcntl, "flock", no_locks)
    else:
        monkeypatch.setattr(journal_module.os, "ftruncate", no_locks)
    before = _open_fds()
    for _ in range(3):
        with pytest.raises(OutputError, match="No locks available"):
            Lock(tmp_path / "out.lock", "x").acquire()
    assert _open_fds() == before
    monkeypatch.undo()
    lock = Lock(tmp_path / "out.lock", "x")  # nothing holds it
    lock.acquire()
    lock.release()


# ---------------------------------------------------------------------------- writer


def test_writer_file_output_is_its_own_journal(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.jsonl"
    w = RecordWriter(str(out), None, overwrite=False)
    w.open()
    assert w.fresh and (tmp_path / "sub" / "out.jsonl.lock").exists()
    w.write(record("k1"))
    assert out.read_bytes() == line(record("k1"))  # flushed as written
    w.close()
    assert not (tmp_path / "sub" / "out.jsonl.lock").exists()
    w = RecordWriter(str(out), None, overwrite=False)
    w.open()
    assert not w.fresh and w.status("k1") == "ok"
    w.close()


def test_writer_that_fails_to_open_holds_no_lock(tmp_path: Path) -> None:
    out = tmp_path / "notes.jsonl"
    out.write_text("mine\n")
    with pytest.raises(OutputError):
        RecordWriter(str(out), None, overwrite=False).open()
    assert not (tmp_path / "notes.jsonl.lock").exists()
    w = RecordWriter(str(out), None, overwrite=True)
    w.open()  # in the same process: a leaked flock would refuse this
    w.close()
    assert out.read_bytes() == b""


def test_writer_stdout_with_and_without_state(tmp_path: Path, monkeypatch) -> None:
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    w = RecordWriter("-", tmp_path / "state", overwrite=False)
    w.open()
    w.write(record("k1"))
    w.close()
    assert stdout.buffer.getvalue() == line(record("k1"))
    assert (tmp_path / "state" / "journal.jsonl").read_bytes() == line(record("k1"))
    w = RecordWriter("-", None, overwrite=False)
    w.open()
    w.write(record("k1"))
    assert w.fresh and w.status("k1") is None  # nothing remembered without a state folder
    w.close()


def test_writer_to_a_full_device_is_output_error() -> None:
    w = RecordWriter("/dev/full", None, overwrite=False)
    w.open()
    with pytest.raises(OutputError, match="/dev/full: disk full"):
        w.write(record("k1"))
    w.close()


# ---------------------------------------------------------------------------- Markdown


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.md"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["b.md"]


def test_render_markdown_pages_and_errors() -> None:
    pages = [record("a", page=1, text=" First page \n"), record("b", status="error", page=2), record("c", page=3, text="Third")]
    text = render_markdown(pages)
    assert text == (
        "<!-- page 1 -->\n\nFirst page\n\n"
        "<!-- page 2: corrupt: bad - - page -->\n\n"
        "<!-- page 3 -->\n\nThird\n"
    )
