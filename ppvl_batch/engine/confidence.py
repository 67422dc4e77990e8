"""How sure the model was of a text, from the probabilities of the tokens that made it
(docs/confidence.md).

The decode loop keeps each generated token's probability under the model (PageResult.token_probs:
the softmax of the step's raw logits). A text's `confidence` is the geometric mean of the
probabilities of the tokens that made it: every generated token except a final stop token and
tokens that carry no text (spotting's location tokens, whose ids the caller reads from the bundle's
tokenizer). `min_token_prob` is the least of them. Both stay None for a text of no such tokens.

A geometric mean is exp(mean log p), so parts combine exactly: a layout page's confidence over
all its blocks' tokens is `TextConfidence.combine(blocks)`. These are raw model probabilities,
not calibrated chances of being right; check a threshold per model and quant
(tools/calibrate_review.py).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

ROUND_DIGITS = 6  # significant digits kept in records


@dataclass(frozen=True)
class TextConfidence:
    """The probabilities of a text's tokens, summed up: their count, the sum of their natural logs
    (so that parts combine) and the least of them."""

    tokens: int = 0
    log_sum: float = 0.0
    least: float | None = None

    @classmethod
    def of(cls, probs: Iterable[float]) -> TextConfidence:
        tokens, log_sum, least = 0, 0.0, math.inf
        for p in probs:
            tokens += 1
            log_sum += math.log(p) if p > 0 else -math.inf  # a probability that underflowed to 0
            least = min(least, p)
        return cls(tokens, log_sum, least if tokens else None)

    @classmethod
    def combine(cls, parts: Iterable[TextConfidence]) -> TextConfidence:
        """The confidence over all the parts' tokens together (a page of blocks)."""
        parts = [p for p in parts if p.tokens]
        if not parts:
            return cls()
        return cls(sum(p.tokens for p in parts), sum(p.log_sum for p in parts), min(p.least for p in parts))  # type: ignore[type-var]

    @property
    def confidence(self) -> float | None:
        """Geometric mean of the token probabilities; None without tokens."""
        return math.exp(self.log_sum / self.tokens) if self.tokens else None

    @property
    def min_token_prob(self) -> float | None:
        return self.least

    def fields(self) -> dict[str, float | None]:
        """`confidence` and `min_token_prob` as records carry them (6 significant digits)."""
        return {"confidence": _rounded(self.confidence), "min_token_prob": _rounded(self.least)}


def text_token_probs(
    token_ids: Sequence[int],
    token_probs: Sequence[float],
    *,
    exclude: Collection[int] = (),
    stop_ids: Collection[int] = (),
) -> list[float]:
    """The probabilities of the tokens that made the text: a final token in `stop_ids` (an end of
    text that ended up in the ids) and every token in `exclude` (ids that carry no text) left out."""
    if len(token_ids) != len(token_probs):
        raise ValueError(f"{len(token_ids)} token ids but {len(token_probs)} probabilities")
    n = len(token_ids)
    if n and token_ids[-1] in stop_ids:
        n -= 1
    return [p for t, p in zip(token_ids[:n], token_probs[:n]) if t not in exclude]


def text_confidence(
    token_ids: Sequence[int],
    token_probs: Sequence[float],
    *,
    exclude: Collection[int] = (),
    stop_ids: Collection[int] = (),
) -> TextConfidence:
    """The confidence of the text that `token_ids` made (see text_token_probs for what counts)."""
    return TextConfidence.of(text_token_probs(token_ids, token_probs, exclude=exclude, stop_ids=stop_ids))


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.{ROUND_DIGITS}g}")
