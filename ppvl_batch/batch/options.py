"""What a scan is asked to do (ScanOptions, as the command line gives it, and the narrow views
of it that each part takes) and what it did (Summary, --summary-json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ppvl_batch.documents.pages import PageRanges
from ppvl_batch.errors import PPVLError
from ppvl_batch.files import atomic_write

from .review import DEFAULT_REVIEW_BELOW, DEFAULT_REVIEW_MIN_TOKEN, ReviewRules


@dataclass(frozen=True)
class PageOptions:
    """How a page is opened and read: everything here but `password`, `skip_blank` and `review`
    is part of its checkpoint key (plan.page_settings)."""

    task: str = "ocr"
    prompt: str | None = None
    max_new_tokens: int = 1024
    min_pixels: int | None = None
    max_pixels: int | None = None
    dpi: float | None = None
    password: str | None = None
    skip_blank: bool = True  # blank pages get an ok record without the model
    text_layer: str = "ignore"  # --text-layer (text_pages.py): not in the digest, it picks between keys
    review: ReviewRules = ReviewRules()  # needs_review thresholds: record fields only, not in the key


@dataclass(frozen=True)
class PlanOptions:
    """Which pages a run records."""

    pages: PageRanges | None = None
    retry_failed: bool = False
    skip_blank: bool = True  # False: pages recorded blank before are read again
    rehash: bool = False  # hash every file again instead of trusting the hash cache


@dataclass(frozen=True)
class OutputOptions:
    """Where results go."""

    output: str = "-"
    state: Path | None = None
    markdown: Path | None = None
    summary_json: Path | None = None
    images: Path | None = None  # layout mode's image blocks
    overwrite: bool = False
    pdf: Path | None = None  # searchable PDFs (outputs/pdf.py), PDF/A-2b with `pdfa`
    hocr: Path | None = None
    alto: Path | None = None
    pdfa: bool = False


@dataclass(frozen=True)
class LayoutOptions:
    """Layout mode (batch/layout_mode.py); `layout` None: on when the bundle has a layout model."""

    layout: bool | None = None
    charts: bool = False
    seals: bool = False
    threshold: float | None = None
    merge_tables: bool = True


@dataclass(frozen=True)
class PipelineOptions:
    """How the local executor paces its work, and what it says."""

    batch_size: int = 4
    prefetch: int = 8  # rendered pages waiting for the model
    quiet: bool = False
    log_interval: float = 60.0


@dataclass
class ScanOptions:
    """One scan as the command line (or a library caller) asks for it; each part of the scan
    takes only its narrow view (the properties below)."""

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
    # pages (blocks) decoded together in the one llama.cpp context; None: the mode's default
    parallel: int | None = None
    prefetch: int = 8
    quiet: bool = False
    log_interval: float = 60.0
    skip_blank: bool = True
    rehash: bool = False
    layout: bool | None = None
    charts: bool = False
    seals: bool = False
    images: Path | None = None
    layout_threshold: float | None = None
    merge_tables: bool = True
    pdf: Path | None = None
    hocr: Path | None = None
    alto: Path | None = None
    pdfa: bool = False
    text_layer: str = "ignore"  # auto | ignore | only (text_pages.py); the CLI defaults to auto
    # needs_review thresholds (review.py): record fields only, not part of the checkpoint key
    review_below: float = DEFAULT_REVIEW_BELOW
    review_min_token: float = DEFAULT_REVIEW_MIN_TOKEN

    @property
    def page(self) -> PageOptions:
        return PageOptions(self.task, self.prompt, self.max_new_tokens, self.min_pixels, self.max_pixels, self.dpi,
                           self.password, self.skip_blank, self.text_layer,
                           ReviewRules(self.review_below, self.review_min_token))

    @property
    def plan(self) -> PlanOptions:
        return PlanOptions(self.pages, self.retry_failed, self.skip_blank, self.rehash)

    @property
    def outputs(self) -> OutputOptions:
        return OutputOptions(self.output, self.state, self.markdown, self.summary_json, self.images, self.overwrite,
                             self.pdf, self.hocr, self.alto, self.pdfa)

    @property
    def layout_options(self) -> LayoutOptions:
        return LayoutOptions(self.layout, self.charts, self.seals, self.layout_threshold, self.merge_tables)

    @property
    def pipeline(self) -> PipelineOptions:
        return PipelineOptions(self.batch_size, self.prefetch, self.quiet, self.log_interval)


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
    pages_read: int = 0  # pages the model read in this run (what pages_per_minute counts)
    pages_text_layer: int = 0  # of pages_ok: text taken from the PDF's text layer (whole page), not the model
    blocks_text_layer: int = 0  # layout mode: blocks whose text came from the text layer
    pages_done_before: int = 0  # skipped: finished by an earlier run
    pages_failed_before: int = 0  # skipped: failed in an earlier run (see --retry-failed)
    outputs_written: int = 0  # document outputs (Markdown, ...) written in this run
    output_errors: list[str] = field(default_factory=list)  # one line per document output not written
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
        extras = [(self.pages_review, "need review"), (self.pages_text_layer, "from text layers"),
                  (self.blocks_text_layer, "blocks from text layers"), (self.pages_blank, "blank (not read)"),
                  (self.pages_copied, "copied from identical files"), (self.files_repaired, "repaired PDFs"),
                  (len(self.output_errors), "document outputs not written")]
        text += "".join(f", {n} {what}" for n, what in extras if n)
        if not self.pages_read:
            return text + f"; no page read by the model, {_duration(self.seconds)}"
        return text + f"; {self.pages_per_minute:.1f} pages/min over {_duration(self.seconds)}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def write_summary_json(path: Path, summary: Summary) -> None:
    atomic_write(path, orjson.dumps(asdict(summary), option=orjson.OPT_INDENT_2) + b"\n")
