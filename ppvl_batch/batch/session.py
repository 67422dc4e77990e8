"""What every executor of a scan sets up the same way before it runs pages, and takes down after:
inputs, the writer (journal and lock), the hash cache, the (lazy) recognizer, the planner, the
recorder; and the summary's last numbers. The local executor and the Ray driver differ only in
how they run the planner's Page items."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppvl_batch.documents.inputs import InputFile, collect
from ppvl_batch.errors import ExitCode, OutputError, PPVLError, UsageError

from .hashcache import HashCache
from .journal import RecordWriter
from .layout_mode import layout_mode
from .options import InternalError, ScanOptions, Summary
from .plan import Planner, check_outside_inputs
from .progress import Progress
from .recorder import Recorder
from .work import PageWork


@dataclass
class Session:
    documents: list[InputFile]
    cwd: Path  # resolved: outputs mirror the documents' paths relative to it (InputFile.mirror_path)
    writer: RecordWriter
    recognizer: Any  # the Recognizer (lazy: weights load when a page first needs them)
    work: PageWork  # its `settings` digest is part of every key
    planner: Planner
    recorder: Recorder


@contextlib.contextmanager
def open_session(
    options: ScanOptions, load_recognizer: Callable[[], Any], summary: Summary, progress: Progress, *, render: bool
) -> Iterator[Session]:
    """Open everything a scan needs; `render`: the planner renders pages here (else a worker
    does). Raises UsageError, OutputError, ModelError before anything is written; a bug of ours
    inside the block (not a PPVLError or an interrupt) comes out as one InternalError line."""
    o = options
    writer = RecordWriter(o.output, o.state, o.overwrite)
    if o.state is not None and not writer.is_stream:
        raise UsageError("--state is only for -o -: a file output is its own checkpoint")
    found = collect(o.inputs, null_separated=o.null_separated, include_hidden=o.include_hidden)
    if not found.documents:
        raise UsageError("no documents to scan (no files found in the given inputs)")
    cwd = Path.cwd().resolve()
    markdown_paths = {d.path: o.markdown / f"{d.mirror_path(cwd)}.md" for d in found.documents} if o.markdown else {}
    check_outside_inputs(found, o, list(markdown_paths.values()))
    summary.files = len(found.documents)

    writer.open()
    journal = writer.journal
    hashes = HashCache(journal and journal.path.with_name(journal.path.name + ".hashes"), rehash=o.rehash)
    try:
        hashes.load(o.overwrite)
        # Without a checkpoint, an existing Markdown file at one of our paths is someone else's.
        existing = next((t for t in markdown_paths.values() if t.exists()), None)
        if existing is not None and writer.fresh and not o.overwrite:
            raise OutputError(
                f"{existing} exists and no checkpoint of this output wrote it; "
                f"use another --markdown folder or --overwrite"
            )
        rec = load_recognizer()
        try:
            work = PageWork(rec, o, layout_mode(rec, o, cwd))
            planner = Planner(o, writer, hashes, work.settings, rec.max_pixels, render=work.render if render else None)
            recorder = Recorder(writer, work, summary, progress, markdown_paths)
            yield Session(found.documents, cwd, writer, rec, work, planner, recorder)
        finally:
            rec.close()
            summary.files_hashed = hashes.hashed
            hashes.save()
    except (PPVLError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise InternalError(
            f"internal error, a bug in ppvl-ocr ({type(e).__name__}: {str(e).strip() or 'no message'}); "
            "records written so far are kept and re-running resumes"
        ) from e
    finally:
        writer.close()
        progress.close()


def finish_summary(summary: Summary, started: float, interrupted: bool) -> None:
    """The run's time, rate and exit code."""
    s = summary
    s.interrupted = interrupted
    s.seconds = time.monotonic() - started
    done = s.pages_ok + s.pages_failed
    s.pages_per_minute = 60 * done / s.seconds if s.seconds > 0 else 0.0
    s.exit_code = int(
        ExitCode.INTERRUPTED if s.interrupted else ExitCode.PAGES_FAILED if s.pages_failed else ExitCode.OK
    )
