"""Which pages a person should read back: the `needs_review` rules (docs/confidence.md).

A record read by the model needs review when a hard flag fires or a threshold is crossed; it
says which in `review_reasons`, in this order:

    repetition          the repetition guard cut a looping answer
    length              the answer hit the token limit
    empty               no text from a page that is not blank
    unparsed_table      a table answer (task table, or a layout table block) that is not OTSL
    unparsed_spotting   a spotting answer with parts that do not parse (the caller says so)
    low_confidence      confidence < review_below
    low_min_token_prob  min_token_prob < review_min_token

Pure functions of a result's fields; nothing here reads the model.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ..layout.otsl import parse_otsl

# Chosen from a measurement (bench/bench_review.py; docs/confidence.md, "Choosing the thresholds"):
# on the demo model's 69 pages it catches 15 of the 17 with a CER above 5% and flags 8 of the 52
# others. Token probabilities are not calibrated: check it per model and quant.
DEFAULT_REVIEW_BELOW = 0.95
# Off: on the same pages min_token_prob separates worse (catching 16 of 17 bad pages flags 12
# good ones, at 0.53; confidence 0.96 catches all 17 and flags 13).
DEFAULT_REVIEW_MIN_TOKEN = 0.0

UNPARSED_FORMATS = ("table", "spotting")


@dataclass(frozen=True)
class ReviewRules:
    """The thresholds: below `review_below` confidence, or `review_min_token` for the least token
    probability, a page needs review (0 turns a threshold off)."""

    review_below: float = DEFAULT_REVIEW_BELOW
    review_min_token: float = DEFAULT_REVIEW_MIN_TOKEN

    def __post_init__(self) -> None:
        for name in ("review_below", "review_min_token"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability from 0 to 1, not {getattr(self, name)}")


def needs_review(
    *,
    text: str,
    finish_reason: str | None,
    confidence: float | None,
    min_token_prob: float | None,
    rules: ReviewRules = ReviewRules(),
    task: str | None = None,
    unparsed: Collection[str] = (),
) -> tuple[bool, list[str]]:
    """(needs_review, review_reasons) of a text the model read (not a blank page's). `task`
    "table": the text must parse as OTSL; `unparsed`: formats the caller found unparseable
    ("table" for a layout table block left as text, "spotting" for a malformed spotting answer)."""
    reasons = []
    if finish_reason in ("repetition", "length"):
        reasons.append(finish_reason)
    if not text.strip():
        reasons.append("empty")
    failed = set(unparsed)
    if task == "table" and text.strip() and parse_otsl(text) is None:
        failed.add("table")
    unknown = failed - set(UNPARSED_FORMATS)
    if unknown:
        raise ValueError(f"unknown answer format {min(unknown)!r}; known: {', '.join(UNPARSED_FORMATS)}")
    reasons += [f"unparsed_{name}" for name in UNPARSED_FORMATS if name in failed]
    if confidence is not None and confidence < rules.review_below:
        reasons.append("low_confidence")
    if min_token_prob is not None and min_token_prob < rules.review_min_token:
        reasons.append("low_min_token_prob")
    return bool(reasons), reasons
