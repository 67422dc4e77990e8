"""inputs.py: paths, folders, globs and stdin lists -> ordered unique documents."""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePath

from ppvl_batch.documents.inputs import InputFile, collect, read_path_list


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def sources(found) -> list[str]:
    return [d.source for d in found.documents]


def test_folder_walk_is_sorted_recursive_and_filters_extensions(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    for rel in ["b.pdf", "a.PNG", "sub/z.tiff", "sub/a.jpg", "notes.txt", "a/c.webp", "Thumbs.db"]:
        touch(root / rel)
    found = collect([str(root)])
    rel = [os.path.relpath(s, root) for s in sources(found)]
    assert rel == ["a/c.webp", "a.PNG", "b.pdf", "sub/a.jpg", "sub/z.tiff"]
    assert found.folders == [root.resolve()]


def test_hidden_files_and_folders_skipped_unless_asked(tmp_path: Path) -> None:
    touch(tmp_path / ".hidden.pdf")
    touch(tmp_path / ".cache/x.pdf")
    touch(tmp_path / "seen.pdf")
    assert [Path(s).name for s in sources(collect([str(tmp_path)]))] == ["seen.pdf"]
    names = [os.path.relpath(s, tmp_path) for s in sources(collect([str(tmp_path)], include_hidden=True))]
    assert names == [".cache/x.pdf", ".hidden.pdf", "seen.pdf"]


def test_explicit_file_is_a_document_whatever_its_name(tmp_path: Path) -> None:
    note = touch(tmp_path / ".notes.txt")
    assert sources(collect([str(note)])) == [str(note)]


def test_duplicates_by_resolved_path_keep_first_position(tmp_path: Path) -> None:
    a = touch(tmp_path / "d/a.pdf")
    b = touch(tmp_path / "d/b.pdf")
    (tmp_path / "link.pdf").symlink_to(a)
    args = [str(b), str(tmp_path / "d"), str(tmp_path / "d/../d/a.pdf"), str(tmp_path / "link.pdf")]
    found = collect(args)
    assert sources(found) == [str(b), str(tmp_path / "d" / "a.pdf")]
    assert [d.path for d in found.documents] == [b.resolve(), a.resolve()]


def test_symlink_loop_ends(tmp_path: Path) -> None:
    touch(tmp_path / "top/f.pdf")
    (tmp_path / "top/loop").symlink_to(tmp_path / "top")
    (tmp_path / "top/sub").mkdir()
    (tmp_path / "top/sub/up").symlink_to(tmp_path)
    found = collect([str(tmp_path / "top")])
    assert [d.path for d in found.documents] == [(tmp_path / "top/f.pdf").resolve()]


def test_symlinked_folder_is_followed(tmp_path: Path) -> None:
    touch(tmp_path / "real/x.png")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/linked").symlink_to(tmp_path / "real")
    assert [Path(s).name for s in sources(collect([str(tmp_path / "docs")]))] == ["x.png"]


def test_glob_patterns_sorted_and_nonmatching_pattern_is_kept_as_missing(tmp_path: Path) -> None:
    for name in ["c.pdf", "a.pdf", "b.png", ".h.pdf"]:
        touch(tmp_path / name)
    touch(tmp_path / "deep/er/d.pdf")
    found = collect([str(tmp_path / "*.pdf"), str(tmp_path / "**/d.pdf"), str(tmp_path / "nope*.pdf")])
    assert [Path(s).name for s in sources(found)] == ["a.pdf", "c.pdf", "d.pdf", "nope*.pdf"]


def test_missing_path_is_kept_for_its_error_record(tmp_path: Path) -> None:
    found = collect([str(tmp_path / "gone.pdf")])
    assert sources(found) == [str(tmp_path / "gone.pdf")]


def test_stdin_lines_and_nul(tmp_path: Path) -> None:
    a = touch(tmp_path / "with space.pdf")
    b = touch(tmp_path / "new\nline.pdf")
    c = touch(tmp_path / "folder/in.png")
    lines = f"{a}\r\n\n{c.parent}\n".encode()
    assert sources(collect(["-"], stdin=io.BytesIO(lines))) == [str(a), str(c)]
    nul = b"\0".join(os.fsencode(p) for p in [b, a, a]) + b"\0"
    assert sources(collect(["-"], stdin=io.BytesIO(nul), null_separated=True)) == [str(b), str(a)]


def test_stdin_mixes_with_arguments_in_order(tmp_path: Path) -> None:
    a, b, c = (touch(tmp_path / n) for n in ["a.pdf", "b.pdf", "c.pdf"])
    found = collect([str(c), "-", str(a)], stdin=io.BytesIO(f"{b}\n{c}\n".encode()))
    assert sources(found) == [str(c), str(b), str(a)]


def test_stdin_paths_are_not_globbed(tmp_path: Path) -> None:
    touch(tmp_path / "a.pdf")
    pattern = str(tmp_path / "*.pdf")
    assert sources(collect(["-"], stdin=io.BytesIO(pattern.encode()))) == [pattern]


def test_read_path_list_keeps_undecodable_bytes() -> None:
    raw = b"caf\xe9.pdf\n"
    (name,) = read_path_list(io.BytesIO(raw), null_separated=False)
    assert os.fsencode(name) == b"caf\xe9.pdf"


def test_mirror_path_inside_and_outside_cwd(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    inside = InputFile("x", cwd / "a" / "b.pdf")
    outside = InputFile("y", tmp_path / "elsewhere" / "b.pdf")
    assert inside.mirror_path(cwd) == PurePath("a/b.pdf")
    assert outside.mirror_path(cwd) == PurePath("_abs", *(tmp_path / "elsewhere/b.pdf").parts[1:])
