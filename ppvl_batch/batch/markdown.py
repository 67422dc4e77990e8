"""A document's Markdown: its pages' texts in page order, written once every selected page of it
has a record. In layout mode the pages' Markdown is made again from their blocks, so that a table
running over a page break is merged (layout/markdown.pages_markdown)."""

from __future__ import annotations

from collections.abc import Iterable

from ppvl_batch.layout.labels import Block
from ppvl_batch.layout.markdown import pages_markdown

from .records import Record


def _layout_texts(records: list[Record], merge_tables: bool) -> dict[int, str]:
    """Index -> Markdown of the layout-mode pages, tables merged within runs of consecutive
    pages that were read (a failed, blank or unselected page in between breaks a run)."""
    texts: dict[int, str] = {}
    run: list[int] = []

    def flush() -> None:
        pages = [[Block.from_record(b) for b in records[i]["blocks"]] for i in run]
        texts.update(zip(run, pages_markdown(pages, merge_tables=merge_tables)))
        run.clear()

    for i, record in enumerate(records):
        readable = record["status"] == "ok" and record.get("blocks") and not record.get("blank")
        if readable and run and records[run[-1]]["page"] == record["page"] - 1:
            run.append(i)
            continue
        flush()
        if readable:
            run.append(i)
    flush()
    return texts


def render_markdown(records: Iterable[Record], merge_tables: bool = True) -> str:
    """One document's Markdown: pages in order, each introduced by an HTML comment (invisible when
    rendered, easy to split on); a failed page leaves a comment saying why."""
    records = list(records)
    layout = _layout_texts(records, merge_tables)
    parts = []
    for i, record in enumerate(records):
        if record["status"] == "ok":
            text = layout.get(i, record["text"])
            parts.append(f"<!-- page {record['page']} -->\n\n{text.strip()}\n")
        else:
            error = record["error"]
            message = error["message"].replace("--", "- -")  # "--" may not appear in a comment
            parts.append(f"<!-- page {record['page']}: {error['type']}: {message} -->\n")
    return "\n".join(parts)
