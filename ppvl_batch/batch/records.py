"""Records: one JSON object per page (or per document that could not be opened), and the key
that says which page and which settings it answers (the README lists the fields)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

Record = dict[str, Any]
RECORD_START = b'{"source":'  # every record starts with its `source` field (see make_record)


def settings_digest(settings: dict[str, Any]) -> str:
    """Short stable hash of the settings that change a page's answer."""
    return hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def checkpoint_key(settings: str, content: str, page: int) -> str:
    """Key of one page: settings digest + file content (sha256, or `path:...` when the file could
    not be read) + page number (0 for the document itself). A moved file keeps its key; a changed
    one gets a new one."""
    return hashlib.sha256(f"{settings}\0{content}\0{page}".encode()).hexdigest()[:32]


def make_record(
    *,
    source: str,
    sha256: str | None,
    page: int | None,
    page_count: int | None,
    task: str,
    prompt: str | None,
    model: str,
    key: str,
    seconds: float,
    result: Any = None,
    error: tuple[str, str] | None = None,
    blank: bool = False,
    size: tuple[int, int] | None = None,
    warnings: list[str] | tuple[str, ...] = (),
    blocks: list[dict[str, Any]] | None = None,
    layout_model: str | None = None,
    positions: Any = None,
    page_size_pt: tuple[float, float] | None = None,
) -> Record:
    """One JSONL record: a page read by the model (`result`, a recognizer PageResult), a blank
    page the model was spared (`blank`, `size` of the rendered page), or a page or document
    that failed (`error` = (type, message); `page` None when the whole document failed before
    its pages could be counted). `warnings` (e.g. a repaired PDF) and `blank` appear only when
    set. In layout mode (`layout_model` given) every record has `blocks` (Block.to_record
    entries; [] for a blank page, null for a failed one) and `layout_model`. `positions` (a
    layout.positions.PagePositions) gives `lines` and `positions` (null without it), and for
    spotting the text and review reasons; `size`, the rendered page's, is the records' width x
    height and the frame of the lines; `page_size_pt` (PDF pages) maps it onto the PDF page."""
    ok = error is None
    if blank:
        result = _Blank(*size) if size else _Blank()
    record = {
        "source": source,
        "sha256": sha256,
        "page": page,
        "page_count": page_count,
        "width": (size[0] if size else result.width) if ok else None,
        "height": (size[1] if size else result.height) if ok else None,
        "task": task,
        "prompt": prompt,
        "text": (result.text if positions is None or positions.text is None else positions.text) if ok else None,
        "finish_reason": result.finish_reason if ok else None,
        "status": "ok" if ok else "error",
        "error": None if ok else {"type": error[0], "message": error[1]},
        "image_tokens": result.image_tokens if ok else None,
        "output_tokens": result.output_tokens if ok else None,
        "seconds": round(seconds, 3),
        "model": model,
        "key": key,
    }
    if layout_model is not None:
        record["blocks"] = ([] if blank else blocks) if ok else None
        record["layout_model"] = layout_model
    record["lines"] = positions.lines if ok and positions is not None else None
    record["positions"] = positions.positions if ok and positions is not None else None
    if page_size_pt is not None:
        record["page_size_pt"] = list(page_size_pt)
    if ok and positions is not None and positions.review_reasons:
        record["needs_review"], record["review_reasons"] = True, list(positions.review_reasons)
        warnings = [*warnings, *(f"unparsed spotting: {p}" for p in positions.problems)]
    if blank:
        record["blank"] = True
    if warnings:
        record["warnings"] = list(warnings)
    return record


@dataclass(frozen=True)
class _Blank:
    """What a blank page records in place of a model's answer."""

    width: int | None = None
    height: int | None = None
    text: str = ""
    finish_reason: None = None
    image_tokens: int = 0
    output_tokens: int = 0
