"""The hash cache: a file's sha256 remembered by (path, size, mtime_ns, ctime_ns, inode), so a
re-run over an unchanged archive reads no file contents.

Any write to a file changes its ctime (which no tool can set back), a replaced file has a new
inode, so a changed file never matches its old entry. A file hashed in the same second it was
last changed is not remembered: a second change within the file system's timestamp granularity
could otherwise go unseen. The cache lives beside the journal (`OUTPUT.hashes`, or
`STATE/hashes`), is rewritten atomically at the end of each run, and is only a cache: a missing
or damaged one costs a rehash, nothing else.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson

from ppvl_batch.documents.pages import file_sha256
from ppvl_batch.errors import OutputError
from ppvl_batch.files import atomic_write

HEADER = {"ppvl_hash_cache": 1}
_RACY_NS = 1_000_000_000  # a file changed this close to its hashing is hashed again next run


class HashCache:
    def __init__(self, path: Path | None, rehash: bool = False) -> None:
        self.path = path  # None: nowhere to keep it (stdout without --state); every file is hashed
        self.rehash = rehash  # --rehash: look nothing up, still remember what is hashed
        self._entries: dict[str, list] = {}  # path -> [size, mtime_ns, ctime_ns, inode, sha256]
        self._lock = threading.Lock()
        self.hashed = 0  # files whose contents were read in this run
        self.changed = False

    def load(self, overwrite: bool) -> None:
        """Read the cache. A file at our path that is not a hash cache is someone's: refused
        (unless `overwrite`); a damaged cache of ours is dropped."""
        if self.path is None or overwrite:
            return
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        except OSError as e:
            raise OutputError(f"cannot read {self.path}: {e.strerror or e}") from e
        try:
            if orjson.loads(lines[0]) != HEADER:
                raise ValueError
        except (IndexError, ValueError):
            raise OutputError(f"{self.path} is not a ppvl-ocr hash cache; remove it or use --overwrite") from None
        try:
            for line in lines[1:]:
                path, *entry = orjson.loads(line)
                self._entries[path] = entry
        except (ValueError, TypeError):
            self._entries.clear()  # damaged: everything is hashed again

    def sha256(self, path: Path) -> str:
        """The file's sha256, from the cache when the file's identity is unchanged; raises
        PageError (missing, unreadable) like file_sha256."""
        key = str(path)
        try:
            st = os.stat(path)
        except OSError:
            return file_sha256(path)  # fails the same way, with the right PageError
        identity = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        with self._lock:
            entry = self._entries.get(key)
        if not self.rehash and entry is not None and entry[:4] == identity:
            return entry[4]
        started = time.time_ns()
        sha = file_sha256(path)
        self.hashed += 1
        with self._lock:
            if max(st.st_mtime_ns, st.st_ctime_ns) < started - _RACY_NS:
                self._entries[key] = [*identity, sha]
            else:
                self._entries.pop(key, None)
            self.changed = True
        return sha

    def save(self) -> None:
        """Rewrite the cache (when anything changed); entries of files not seen in this run stay,
        so a run over part of an archive keeps the rest."""
        if self.path is None or not self.changed:
            return
        with self._lock:
            lines = [orjson.dumps(HEADER)] + [orjson.dumps([p, *e]) for p, e in self._entries.items()]
        atomic_write(self.path, b"\n".join(lines) + b"\n")
