"""Records: one JSON object per page (or per document that could not be opened), the key that
says which page and which settings it answers, and the one function that builds a record from
whatever became of a page (`build_record`; the README lists the fields)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from ppvl_batch.documents.pages import PageError

from .review import ReviewRules, needs_review
from .task import PageTask

Record = dict[str, Any]
RECORD_START = b'{"source":'  # every record starts with its `source` field (see build_record)
CRASHED = "worker_crashed"  # error type of a page that took its Ray worker down on every try

# Fields of the shared record schema that a result (strategy.ModelPage, layout ParsedPage) may
# carry beyond the base record: copied when the result has them and they are not None. A new
# field of that kind is added here, and nowhere else. needs_review and review_reasons are
# judged from the result (review_fields) unless it carries them (a PDF's own text layer).
OPTIONAL_RESULT_FIELDS = (
    "confidence", "min_token_prob", "needs_review", "review_reasons", "lines", "positions", "text_source",
    "warp_params",
)
# A page the model did not read has no confidence; a failed one nothing to review either.
UNREAD: Record = {"confidence": None, "min_token_prob": None}
FAILED: Record = {**UNREAD, "needs_review": None, "review_reasons": None}
BLANK: Record = {**UNREAD, "needs_review": False, "review_reasons": []}


def settings_digest(settings: dict[str, Any]) -> str:
    """Short stable hash of the settings that change a page's answer."""
    return hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def checkpoint_key(settings: str, content: str, page: int) -> str:
    """Key of one page: settings digest + file content (sha256, or `path:...` when the file could
    not be read) + page number (0 for the document itself). A moved file keeps its key; a changed
    one gets a new one."""
    return hashlib.sha256(f"{settings}\0{content}\0{page}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RunFields:
    """What every record of a run has in common (picklable: a Ray worker builds records too)."""

    task: str  # "layout" in layout mode
    prompt: str | None
    model: str
    layout_model: str | None = None  # layout mode: records add `blocks` and `layout_model`
    review: ReviewRules = ReviewRules()  # the needs_review thresholds (--review-below, --review-min-token)


@dataclass(frozen=True)
class Blank:
    """A blank page, not read by the model: in place of its answer (size of the rendered page)."""

    width: int | None = None
    height: int | None = None
    text: str = ""
    finish_reason: None = None
    image_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    blocks: tuple[()] = ()


@dataclass(frozen=True)
class Copied:
    """A page of a file identical to one already recorded: that record, with this file's source."""

    original: Record


Outcome = Any  # a result (PageResult, ParsedPage), Blank, PageError (a failed page, or a crash), Copied


def build_record(
    run: RunFields,
    task: PageTask,
    outcome: Outcome,
    *,
    seconds: float = 0.0,
    warnings: tuple[str, ...] | list[str] = (),
    size_pt: tuple[float, float] | None = None,
) -> Record:
    """The one record builder. `outcome`: a model's result (anything with text, width, height,
    finish_reason, image_tokens, output_tokens, seconds; `blocks` in layout mode; `warnings` and
    the OPTIONAL_RESULT_FIELDS when it has them), a Blank page, a PageError (the page or, page None,
    the document failed), or Copied. `seconds`: time spent before the model (rendering);
    `warnings`: the document's; `size_pt`: a PDF page's size in points."""
    if isinstance(outcome, Copied):
        original = outcome.original
        same_as = original.get("same_as") or original["source"]
        # not read by the model: no confidence (needs_review follows the original's text)
        return {**original, "source": task.source, "seconds": 0.0, "same_as": same_as, **UNREAD}
    error = outcome if isinstance(outcome, PageError) else None
    ok = error is None
    result: Outcome = outcome if ok else None
    record: Record = {
        "source": task.source,
        "sha256": task.sha256,
        "page": task.page,
        "page_count": task.page_count,
        "width": result.width if ok else None,
        "height": result.height if ok else None,
        "task": run.task,
        "prompt": run.prompt,
        "text": result.text if ok else None,
        "finish_reason": result.finish_reason if ok else None,
        "status": "ok" if ok else "error",
        "error": None if error is None else {"type": error.type, "message": error.message},
        "image_tokens": result.image_tokens if ok else None,
        "output_tokens": result.output_tokens if ok else None,
        "seconds": round(seconds + (result.seconds if ok else 0.0), 3),
        "model": run.model,
        "key": task.key,
    }
    if run.layout_model is not None:
        record["blocks"] = [b.to_record() for b in result.blocks] if ok else None
        record["layout_model"] = run.layout_model
    if isinstance(result, Blank):
        record["blank"] = True
    record.update(FAILED if not ok else BLANK if isinstance(result, Blank) else review_fields(result, run))
    warnings = [*warnings, *getattr(result, "warnings", ())]
    if warnings:
        record["warnings"] = warnings
    if size_pt is not None and task.page is not None:
        record["page_size_pt"] = [round(size_pt[0], 3), round(size_pt[1], 3)]
    for name in OPTIONAL_RESULT_FIELDS:
        value = getattr(result, name, None)
        if value is not None:
            record[name] = value
    return record


def review_fields(result: Any, run: RunFields) -> dict[str, Any]:
    """confidence, min_token_prob, needs_review and review_reasons of a page read: the result's
    confidence fields (None without them) judged by the run's rules (review.py); `unparsed` names
    the answer formats the result found unparseable ("table", "spotting")."""
    confidence, least = getattr(result, "confidence", None), getattr(result, "min_token_prob", None)
    if getattr(result, "needs_review", None) is not None:  # judged already (a PDF's own text)
        return {"confidence": confidence, "min_token_prob": least, "needs_review": result.needs_review,
                "review_reasons": list(result.review_reasons)}
    flag, reasons = needs_review(text=result.text, finish_reason=result.finish_reason, confidence=confidence,
                                 min_token_prob=least, rules=run.review, task=run.task,
                                 unparsed=getattr(result, "unparsed", ()))
    return {"confidence": confidence, "min_token_prob": least, "needs_review": flag, "review_reasons": reasons}


def crash_record(run: RunFields, task: PageTask, message: str) -> Record:
    """The record of a page that took its worker down on every try (built on a Ray worker)."""
    return build_record(run, task, PageError(CRASHED, message))
