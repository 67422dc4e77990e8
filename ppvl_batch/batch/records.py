"""Records: one JSON object per page (or per document that could not be opened), and the key
that says which page and which settings it answers (the README lists the fields)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from .review import ReviewRules, needs_review

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
    review: ReviewRules | None = None,
    exclude_ids: Collection[int] = (),
    unparsed: Collection[str] = (),
) -> Record:
    """One JSONL record: a page read by the model (`result`, a recognizer PageResult), a blank
    page the model was spared (`blank`, `size` of the rendered page), or a page or document
    that failed (`error` = (type, message); `page` None when the whole document failed before
    its pages could be counted). `warnings` (e.g. a repaired PDF) and `blank` appear only when
    set. In layout mode (`layout_model` given) every record has `blocks` (Block.to_record
    entries; [] for a blank page, null for a failed one) and `layout_model`. The last three go
    to review_fields."""
    ok = error is None
    if blank:
        result = _Blank(*size) if size else _Blank()
    record = {
        "source": source,
        "sha256": sha256,
        "page": page,
        "page_count": page_count,
        "width": result.width if ok else None,
        "height": result.height if ok else None,
        "task": task,
        "prompt": prompt,
        "text": result.text if ok else None,
        "finish_reason": result.finish_reason if ok else None,
        "status": "ok" if ok else "error",
        "error": None if ok else {"type": error[0], "message": error[1]},
        "image_tokens": result.image_tokens if ok else None,
        "output_tokens": result.output_tokens if ok else None,
        "seconds": round(seconds, 3),
        "model": model,
        "key": key,
    }
    record.update(review_fields(result, task, review or ReviewRules(), exclude_ids, unparsed, blocks)
                  if ok and not blank else unread_fields(ok))
    if layout_model is not None:
        record["blocks"] = ([] if blank else blocks) if ok else None
        record["layout_model"] = layout_model
    if blank:
        record["blank"] = True
    if warnings:
        record["warnings"] = list(warnings)
    return record


def review_fields(result: Any, task: str, rules: ReviewRules, exclude_ids: Collection[int] = (),
                  unparsed: Collection[str] = (), blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """confidence, min_token_prob, needs_review, review_reasons of a page the model read (a
    PageResult, or a layout ParsedPage whose confidence is over all its blocks' tokens).
    `exclude_ids`: token ids that carry no text (spotting's location tokens); `unparsed`: answer
    formats the caller found unparseable ("spotting"). A layout table block left as text (not OTSL)
    is unparsed_table."""
    confidence = result.text_confidence(exclude_ids)
    failed = set(unparsed)
    if any(b["label"] == "table" and b["format"] != "html" and b["text"].strip() for b in blocks or ()):
        failed.add("table")
    flag, reasons = needs_review(text=result.text, finish_reason=result.finish_reason, confidence=confidence.confidence,
                                 min_token_prob=confidence.min_token_prob, rules=rules, task=task, unparsed=failed)
    return {**confidence.fields(), "needs_review": flag, "review_reasons": reasons}


def unread_fields(ok: bool) -> dict[str, Any]:
    """The review fields of a page the model did not read: a blank one needs no review, a failed
    one has nothing to judge."""
    return {"confidence": None, "min_token_prob": None, "needs_review": False if ok else None,
            "review_reasons": [] if ok else None}


@dataclass(frozen=True)
class _Blank:
    """What a blank page records in place of a model's answer."""

    width: int | None = None
    height: int | None = None
    text: str = ""
    finish_reason: None = None
    image_tokens: int = 0
    output_tokens: int = 0
