"""A document's Markdown (document output `--markdown`): its recorded pages' texts in page order,
through layout/markdown.document_markdown, the assembler that ask --layout and the library use
too. In layout mode a page's Markdown is made again from its blocks, so that a table running over
a page break is merged."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ppvl_batch.files import atomic_write
from ppvl_batch.layout.labels import Block
from ppvl_batch.layout.markdown import MarkdownOptions, PageText, document_markdown

from .records import Record


def page_text(record: Record) -> PageText:
    """A record as the document's Markdown sees it."""
    if record["status"] != "ok":
        error = record["error"]
        return PageText(record["page"], error=f"{error['type']}: {error['message']}")
    blocks = record.get("blocks")
    return PageText(record["page"], record["text"] or "", [Block.from_record(b) for b in blocks] if blocks else None)


_PLAIN = MarkdownOptions()


def render_markdown(records: Iterable[Record], options: MarkdownOptions = _PLAIN) -> str:
    """One document's Markdown from its records, in page order."""
    return document_markdown([page_text(r) for r in records], options)


class MarkdownWriter:
    """The DocumentWriter of --markdown: DIR/<document path>.md."""

    suffix = ".md"
    partial = True  # with --pages: the pages recorded so far

    def __init__(self, options: MarkdownOptions) -> None:
        self.options = options  # the page strategy's (layout mode: its parser's)

    def write(self, records: list[Record], source: Path, target: Path) -> None:
        atomic_write(target, render_markdown(records, self.options).encode())
