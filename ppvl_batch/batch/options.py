"""What a scan is asked to do (ScanOptions) and what it did (Summary, --summary-json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from ppvl_batch.errors import PPVLError
from ppvl_batch.files import atomic_write
from ppvl_batch.documents.pages import PageRanges

from .review import DEFAULT_REVIEW_BELOW, DEFAULT_REVIEW_MIN_TOKEN, ReviewRules


@dataclass
class ScanOptions:
    inputs: list[str]
    output: str = "-"
    markdown: Path | None = None
    state: Path | None = None
    summary_json: Path | None = None
    null_separated: bool = False
    include_hidden: bool = False
    overwrite: bool = False
    retry_failed: bool = False
    pages: PageRanges | None = None
    dpi: float | None = None
    password: str | None = None
    task: str = "ocr"
    prompt: str | None = None
    max_new_tokens: int = 1024
    min_pixels: int | None = None
    max_pixels: int | None = None
    batch_size: int = 4
    parallel: int | None = None  # pages (blocks) decoded together in the one llama.cpp context; None: the mode's default
    prefetch: int = 8  # rendered pages waiting for the model
    quiet: bool = False
    log_interval: float = 60.0
    skip_blank: bool = True  # blank pages get an ok record without the model
    rehash: bool = False  # hash every file again instead of trusting the hash cache
    # layout mode (layout_mode.py); layout None: on when the bundle has a layout model
    layout: bool | None = None
    charts: bool = False
    seals: bool = False
    images: Path | None = None
    layout_threshold: float | None = None
    merge_tables: bool = True
    # needs_review thresholds (review.py): record fields only, not part of the checkpoint key
    review_below: float = DEFAULT_REVIEW_BELOW
    review_min_token: float = DEFAULT_REVIEW_MIN_TOKEN

    @property
    def review(self) -> ReviewRules:
        return ReviewRules(self.review_below, self.review_min_token)


class InternalError(PPVLError):
    """A bug of ours outside the per-file work: ends the run (records written so far stay)."""


@dataclass
class Summary:
    files: int = 0
    files_failed: int = 0  # documents that could not be opened at all
    files_repaired: int = 0  # PDFs that PyMuPDF had to repair (their records carry a warning)
    files_hashed: int = 0  # files whose contents were read to hash them (the others: hash cache)
    pages_ok: int = 0
    pages_blank: int = 0  # of pages_ok: blank, not read by the model
    pages_copied: int = 0  # records copied from a file with the same content (`same_as`)
    pages_failed: int = 0
    pages_done_before: int = 0  # skipped: finished by an earlier run
    pages_failed_before: int = 0  # skipped: failed in an earlier run (see --retry-failed)
    pages_review: int = 0  # ok records (copies included) with needs_review: true
    seconds: float = 0.0
    pages_per_minute: float = 0.0
    interrupted: bool = False
    exit_code: int = 0
    ray: dict[str, Any] | None = None  # --ray: address, connect_seconds, repeats, crashed, per-worker throughput

    def line(self) -> str:
        unopened = ""
        if self.files_failed:
            unopened = f" ({self.files_failed} file{'s' if self.files_failed > 1 else ''} could not be opened)"
        text = (
            f"{self.files} files: {self.pages_ok} pages ok, {self.pages_failed} failed{unopened}, "
            f"{self.pages_done_before} already done"
        )
        if self.pages_failed_before:
            text += f", {self.pages_failed_before} failed before and skipped (--retry-failed retries them)"
        extras = [(self.pages_review, "need review"), (self.pages_blank, "blank (not read)"),
                  (self.pages_copied, "copied from identical files"), (self.files_repaired, "repaired PDFs")]
        text += "".join(f", {n} {what}" for n, what in extras if n)
        return text + f"; {self.pages_per_minute:.1f} pages/min over {_duration(self.seconds)}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def write_summary_json(path: Path, summary: Summary) -> None:
    atomic_write(path, orjson.dumps(asdict(summary), option=orjson.OPT_INDENT_2) + b"\n")
