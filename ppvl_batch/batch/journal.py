"""The journal: records on disk, the resume checkpoint, and the lock that keeps two runs apart.

The checkpoint is a journal of records, one JSON object per line, each carrying a `key` that
identifies the page *and* everything that changes its answer (checkpoint_key). A page is done when
its complete line is in the journal. When the output is a file, the output itself is the journal:
one write per record, flushed and fsync'd, so a crash (kill -9, power loss) leaves at most a
torn last line (cut anywhere, even inside a UTF-8 character, or replaced by the NUL bytes some
file systems leave after a power cut), which the next run cuts off and redoes. No second file can disagree with it,
so there is neither a lost nor a duplicated page. When the output is stdout (`-o -`), the journal
is `STATE/journal.jsonl`; each record goes to stdout first, then to the journal.

A lock (flock on `<output>.lock` or `STATE/lock`, holding the PID for the message) keeps two runs
from writing one output. The kernel drops a flock when its process dies, so a lock file left by a
killed run is simply taken over.
"""

from __future__ import annotations

import fcntl
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from ppvl_batch.errors import OutputError
from ppvl_batch.files import fsync_dir, output_error

from .records import RECORD_START, Record


class Lock:
    """An exclusive, non-blocking lock on a file, held until release() or process death."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # named in the error message: the output the lock protects
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise OutputError; on failure nothing stays open."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise output_error("create lock", self.path, e) from e
            try:
                if self._locked(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # an orphan inode: start over on the current file
        self._fd = fd

    def _locked(self, fd: int) -> bool:
        """Lock `fd` and write our PID; False when the file was unlinked meanwhile."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            raise OutputError(
                f"{self.what} is being written by another ppvl-ocr run (pid {holder}); "
                f"wait for it to finish or stop it"
            ) from None
        except OSError as e:  # e.g. a file system without locks
            raise output_error("lock", self.path, e) from e
        # The previous holder may have unlinked the file between our open and flock: then we
        # locked an orphan inode and must start over on the current file.
        try:
            if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                return False
        except FileNotFoundError:
            return False
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            raise output_error("write", self.path, e) from e
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.unlink(self.path)  # unlink while still locked, so no one locks a dying file
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class Entry:
    status: str  # "ok" or "error"
    offset: int  # where the record's line starts in the journal
    blank: bool = False  # an ok page found blank, not read by the model


class Journal:
    """Append-only JSONL file of records with keys; `entries` maps key -> latest Entry. Also
    indexed: which sources have a record under a key (a copy at a new path gets its own record),
    and the page count of each file content (so a re-run need not open files it has done)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        self.sources: set[tuple[str, str]] = set()  # (key, source)
        self.page_counts: dict[str, int] = {}  # sha256 -> page count
        self._file: BinaryIO | None = None
        self._size = 0

    def open(self, overwrite: bool) -> None:
        """Open for appending: load the keys of complete records, cut off a torn last line.
        An existing file that is not a journal is refused unless `overwrite` (then emptied)."""
        try:
            created = not self.path.exists()
            self._file = open(self.path, "a+b")
            if created:
                fsync_dir(self.path.parent)  # the new journal's name must survive a power cut
            if overwrite:
                self._file.truncate(0)
            self._file.seek(0)
            self._load()
        except OSError as e:
            raise output_error("open", self.path, e) from e

    def read(self) -> None:
        """Load the records' keys without writing anything (`export`: a scan may be appending);
        a torn last line is left alone."""
        try:
            with open(self.path, "rb") as self._file:
                self._load(writable=False)
        except OSError as e:
            raise output_error("read", self.path, e) from e
        finally:
            self._file = None

    def _load(self, writable: bool = True) -> None:
        assert self._file is not None
        offset = 0
        for number, line in enumerate(self._file, 1):
            if not line.endswith(b"\n") or not line.strip(b"\0\n"):
                tail = line + self._file.read()  # the rest of the file (the loop ends either way)
                if self._torn_tail(tail, whole_records=number > 1):
                    break
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not {"key", "status"} <= record.keys():
                raise OutputError(
                    f"{self.path} line {number} is not a ppvl-ocr record; "
                    f"use another output or --overwrite to replace it"
                )
            self._index(record, offset)
            offset += len(line)
        if writable and offset != self._file.seek(0, os.SEEK_END):
            self._file.truncate(offset)
            self._file.flush()
            os.fsync(self._file.fileno())
        self._size = offset

    @staticmethod
    def _torn_tail(tail: bytes, whole_records: bool) -> bool:
        """Whether `tail` (from a line start to the end of the file) is what a crash leaves of
        our last write: a line without its newline (cut at any byte, even inside a UTF-8
        character), or NUL bytes where the data never reached the disk. After whole records
        that is the only thing it can be; in a file of nothing else it must also look like the
        start of a record, so that someone's one-line file is not mistaken for one."""
        if not tail.replace(b"\n", b"").strip(b"\0"):
            return True  # NULs (and newlines) only
        if b"\n" in tail.rstrip(b"\0"):
            return False  # whole lines follow: a bad line in the middle is refused, not cut
        if whole_records:
            return True
        start = tail.rstrip(b"\0")
        return start.startswith(RECORD_START) or RECORD_START.startswith(start)

    def _index(self, record: Record, offset: int) -> None:
        key = record["key"]
        self.entries[key] = Entry(record["status"], offset, bool(record.get("blank")))
        if isinstance(record.get("source"), str):
            self.sources.add((key, record["source"]))
        if isinstance(record.get("sha256"), str) and isinstance(record.get("page_count"), int):
            self.page_counts[record["sha256"]] = record["page_count"]

    def status(self, key: str) -> str | None:
        entry = self.entries.get(key)
        return entry.status if entry else None

    def record(self, key: str) -> Record:
        """The latest record stored under `key` (read back from disk: texts stay out of memory)."""
        with open(self.path, "rb") as f:
            f.seek(self.entries[key].offset)
            return orjson.loads(f.readline())

    def append(self, line: bytes, record: Record) -> None:
        assert self._file is not None
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            # Drop what may have been half-written, so the journal stays a list of whole records.
            try:
                self._file.truncate(self._size)
            except OSError:
                pass  # the next run's _load cuts it instead
            raise output_error("write", self.path, e) from e
        self._index(record, self._size)
        self._size += len(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RecordWriter:
    """Where records go: a file output, which is its own journal; or a stream (stdout, or a
    device or pipe given as the output) plus, with a state folder, a journal there."""

    def __init__(self, output: str, state_dir: Path | None, overwrite: bool) -> None:
        path = None if output == "-" else Path(output)
        self.stream_name = "stdout" if path is None else str(path)
        self.is_stream = path is None or (path.exists() and not path.is_file())
        self._stream: BinaryIO | None = None
        if path is not None and not self.is_stream:
            self.journal: Journal | None = Journal(path)
            self.lock: Lock | None = Lock(path.with_name(path.name + ".lock"), f"output {path}")
        elif state_dir is not None:
            self.journal = Journal(state_dir / "journal.jsonl")
            self.lock = Lock(state_dir / "lock", f"state {state_dir}")
        else:
            self.journal = self.lock = None
        self._path = path
        self.overwrite = overwrite

    @property
    def fresh(self) -> bool:
        """True when there is no earlier checkpoint: nothing was done before."""
        return self.journal is None or not self.journal.entries

    def open(self) -> None:
        """Take the lock, load the checkpoint, open the stream; on failure hold nothing."""
        try:
            if self.lock is not None:
                try:
                    self.lock.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise output_error("create", self.lock.path.parent, e) from e
                self.lock.acquire()
            if self.journal is not None:
                self.journal.open(self.overwrite)
            path = self._path
            if self.is_stream and path is None:
                self._stream = sys.stdout.buffer
            elif self.is_stream and path is not None:
                try:
                    self._stream = open(path, "wb")
                except OSError as e:
                    raise output_error("open", path, e) from e
        except BaseException:
            self.close()
            raise

    def status(self, key: str) -> str | None:
        return self.journal.status(key) if self.journal else None

    def write(self, record: Record) -> None:
        line = orjson.dumps(record) + b"\n"
        if self._stream is not None:
            # Stream first, journal second: after a crash in between, the page is read again
            # (a duplicate line on the stream) rather than recorded as done but never delivered.
            try:
                self._stream.write(line)
                self._stream.flush()
            except OSError as e:  # includes BrokenPipeError: the reader went away
                raise output_error("write", self.stream_name, e) from e
        if self.journal is not None:
            self.journal.append(line, record)

    def close(self) -> None:
        if self._stream is not None and self._path is not None:
            try:
                self._stream.close()
            except OSError:
                pass  # the failed write was already reported
        if self.journal is not None:
            self.journal.close()
        if self.lock is not None:
            self.lock.release()
