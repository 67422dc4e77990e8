"""What every executor of a scan sets up the same way before it runs pages, and takes down after:
inputs, the page strategy (chosen before the recognizer is built), the writer (journal and lock),
the hash cache, the (lazy) recognizer, the page work, the planner, the document outputs, the
recorder; and the summary's last numbers. The local executor and the Ray driver differ only in
how they run the planner's pages."""

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
from .options import InternalError, ScanOptions, Summary
from .outputs import DocumentOutputs, wanted_outputs
from .plan import Planner, check_outside_inputs
from .progress import Progress
from .recorder import Recorder
from .strategy import StrategyPlan, choose_strategy
from .work import PageWork


@dataclass
class Session:
    documents: list[InputFile]
    cwd: Path  # resolved: outputs mirror the documents' paths relative to it (InputFile.mirror_path)
    writer: RecordWriter
    recognizer: Any  # the Recognizer (lazy: weights load when a page first needs them)
    plan: StrategyPlan  # what a Ray worker starts too
    work: PageWork  # its `settings` digest is part of every key
    planner: Planner
    recorder: Recorder


@contextlib.contextmanager
def open_session(
    options: ScanOptions, load_recognizer: Callable[..., Any], summary: Summary, progress: Progress, *,
    render: bool, bundle: Any = None,
) -> Iterator[Session]:
    """Open everything a scan needs. `load_recognizer(**recognizer_options)` builds the recognizer
    the chosen strategy asks for; `bundle`: the model's bundle, which says whether layout mode is
    possible (None: whole pages); `render`: the planner renders pages here (else a worker does).
    Raises UsageError, OutputError, ModelError before anything is written; a bug of ours inside
    the block (not a PPVLError or an interrupt) comes out as one InternalError line."""
    outs = options.outputs
    writer = RecordWriter(outs.output, outs.state, outs.overwrite)
    if outs.state is not None and not writer.is_stream:
        raise UsageError("--state is only for -o -: a file output is its own checkpoint")
    found = collect(options.inputs, null_separated=options.null_separated, include_hidden=options.include_hidden)
    if not found.documents:
        raise UsageError("no documents to scan (no files found in the given inputs)")
    cwd = Path.cwd().resolve()
    plan = choose_strategy(options, bundle)
    wanted = wanted_outputs(outs, plan.markdown_options(), options.password)
    outputs = DocumentOutputs(wanted, cwd, writer.journal, summary, progress)
    targets = [(out.option, target) for d in found.documents for out, target in outputs.targets(d)]
    check_outside_inputs(found, outs, targets)
    summary.files = len(found.documents)

    writer.open()
    journal = writer.journal
    hashes_path = journal.path.with_name(journal.path.name + ".hashes") if journal is not None else None
    hashes = HashCache(hashes_path, rehash=options.rehash)
    try:
        hashes.load(outs.overwrite)
        # Without a checkpoint, an existing file at one of our output paths is someone else's.
        if writer.fresh and not outs.overwrite:
            existing = next(((option, t) for option, t in targets if t.exists()), None)
            if existing is not None:
                raise OutputError(f"{existing[1]} exists and no checkpoint of this output wrote it; "
                                  f"use another {existing[0]} folder or --overwrite")
        rec = load_recognizer(**plan.recognizer_options())
        try:
            work = PageWork(plan.start(rec, cwd), options.page, rec.model_id)
            planner = Planner(options.plan, options.page, writer, hashes, work.settings, rec.max_pixels,
                              render=work.render if render else None)
            recorder = Recorder(writer, work, summary, progress, outputs)
            yield Session(found.documents, cwd, writer, rec, plan, work, planner, recorder)
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
    """The run's time, rate (of the pages the model read) and exit code."""
    s = summary
    s.interrupted = interrupted
    s.seconds = time.monotonic() - started
    s.pages_per_minute = 60 * s.pages_read / s.seconds if s.seconds > 0 else 0.0
    code = ExitCode.OK
    if s.interrupted:
        code = ExitCode.INTERRUPTED
    elif s.output_errors:
        code = ExitCode.OUTPUT
    elif s.pages_failed:
        code = ExitCode.PAGES_FAILED
    s.exit_code = int(code)
