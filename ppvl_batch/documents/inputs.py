"""Inputs: command-line paths, folders, glob patterns and stdin lists -> an ordered list of documents.

Rules (the manual in `ppvl-ocr scan --help` repeats them):
- a file named explicitly (argument, stdin line, glob match) is always a document, whatever its
  extension: if it is not one we can read, its record says so;
- a folder is walked recursively in sorted order and yields only files with a document extension,
  so stray files (READMEs, thumbnails) do not turn every run into a failure;
- hidden names (leading dot) inside folders are skipped unless include_hidden;
- symlinked folders are followed, but a folder already visited (same device and inode) is not
  entered again, so symlink loops end;
- the same resolved path is processed once, at its first position.
A path that does not exist is still returned: opening it reports `missing`, exactly as it would
for a file that vanishes between listing and reading.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

# Extensions a folder walk picks up (lower case). Named files are opened whatever their name.
DOCUMENT_EXTENSIONS = frozenset(
    {".pdf", ".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".webp", ".bmp", ".dib", ".gif"}
)

_GLOB_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One input file. `source` is the path as the user gave it (or as found under a given folder)."""

    source: str
    path: Path  # absolute, symlinks resolved: the identity used for de-duplication

    def mirror_path(self, cwd: Path) -> PurePath:
        """Relative path under which outputs mirror this document: relative to `cwd` when the
        file lies under it, otherwise its absolute path under `_abs/`. Built from the resolved
        path, so two documents never share one, and the same file gets the same one every run.
        """
        try:
            return self.path.relative_to(cwd)
        except ValueError:
            return PurePath("_abs", *self.path.parts[1:])


def read_path_list(stream: BinaryIO, null_separated: bool) -> list[str]:
    """Paths from a stream: one per line, or NUL-separated (`find -print0`). Empty entries are
    skipped; names are decoded with the file-system encoding so any byte sequence round-trips."""
    data = stream.read()
    if null_separated:
        raw = data.split(b"\0")
    else:
        raw = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    return [os.fsdecode(item) for item in raw if item]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(folder: str, include_hidden: bool, visited: set[tuple[int, int]]) -> Iterator[str]:
    """Document files under `folder`, depth first, each level in sorted name order."""
    try:
        st = os.stat(folder)
    except OSError:
        return
    identity = (st.st_dev, st.st_ino)
    if identity in visited:  # a symlink loop, or a second link to a folder already walked
        return
    visited.add(identity)
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return  # unreadable folder: nothing to list (the walk must not stop the whole run)
    for entry in entries:
        if not include_hidden and _is_hidden(entry.name):
            continue
        path = os.path.join(folder, entry.name)
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            continue
        if is_dir:
            yield from _walk(path, include_hidden, visited)
        elif os.path.splitext(entry.name)[1].lower() in DOCUMENT_EXTENSIONS:
            yield path


@dataclass
class Inputs:
    documents: list[InputFile]
    folders: list[Path]  # resolved folders that were walked: with the documents, the input tree


def collect(
    args: Iterable[str],
    *,
    stdin: BinaryIO | None = None,
    null_separated: bool = False,
    include_hidden: bool = False,
) -> Inputs:
    """Documents named by `args`, in order, each resolved path once. An argument `-` stands for
    the paths read from `stdin` (which are taken literally: folders are walked, globs are not
    expanded, since `find` and friends already did that)."""
    found = Inputs(documents=[], folders=[])
    seen: set[Path] = set()
    visited: set[tuple[int, int]] = set()

    def add(source: str) -> None:
        path = Path(os.path.realpath(source))
        if path not in seen:
            seen.add(path)
            found.documents.append(InputFile(source=source, path=path))

    def walk(folder: str) -> None:
        found.folders.append(Path(os.path.realpath(folder)))
        for file in _walk(folder, include_hidden, visited):
            add(file)

    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            names = read_path_list(stream, null_separated)
        elif not os.path.lexists(arg) and _GLOB_MAGIC & set(arg):
            # sorted for a stable order; a pattern matching nothing is reported as missing
            names = sorted(glob.glob(arg, recursive=True, include_hidden=include_hidden)) or [arg]
        else:
            names = [arg]
        for name in names:
            if os.path.isdir(name):
                walk(name)
            else:
                add(name)
    return found
