"""Writing files so that a crash never leaves a half-written one: atomic replace and directory
fsync, and the one-line OutputError for a write that fails (disk full, permissions). Shared by
the batch journal, the hash cache, the document outputs and the bundle converter."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ppvl_batch.errors import OutputError


def output_error(action: str, path: Path | str, e: OSError) -> OutputError:
    reason = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
    return OutputError(f"cannot {action} {path}: {reason}")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in folder `path` survive a power cut (its entry is data of the
    folder, which fsync on the file does not write)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file in `folder` and the folder itself."""
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write (with any library); when the block
    ends without an error it replaces `path`, so readers see the old file or the whole new one.
    An OSError comes out as an OutputError naming `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)  # else a power cut can undo the rename
    except BaseException as e:  # also Ctrl-C: leave no temporary file behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise output_error("write", path, e) from e
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
