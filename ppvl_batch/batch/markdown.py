"""A document's Markdown: its pages' texts in page order, written once every selected page of it
has a record."""

from __future__ import annotations

from collections.abc import Iterable

from .records import Record


def render_markdown(records: Iterable[Record]) -> str:
    """One document's Markdown: pages in order, each introduced by an HTML comment (invisible when
    rendered, easy to split on); a failed page leaves a comment saying why."""
    parts = []
    for record in records:
        if record["status"] == "ok":
            parts.append(f"<!-- page {record['page']} -->\n\n{record['text'].strip()}\n")
        else:
            error = record["error"]
            message = error["message"].replace("--", "- -")  # "--" may not appear in a comment
            parts.append(f"<!-- page {record['page']}: {error['type']}: {message} -->\n")
    return "\n".join(parts)
