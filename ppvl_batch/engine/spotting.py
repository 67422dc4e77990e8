"""Spotting answers -> text lines with quadrilaterals (PaddleOCR-VL 1.5+, `Spotting:`;
docs/positions.md).

The model writes each text line followed by 8 location tokens `<|LOC_n|>` (n in 0..1000): the
points top-left, top-right, bottom-right, bottom-left, each as x then y, in thousandths of the
image it saw. Two wrappings occur, and one answer may mix them:

    <|TEXT_START|>text<|TEXT_END|><|LOC_BEGIN|><|LOC_a|>...<|LOC_h|><|LOC_END|>
    text<|LOC_a|>...<|LOC_h|>\\n

The model sees the whole page scaled (smart_resize, and for small pages a 2x upscale first),
never cropped, so a point maps onto the page as x = n / 1000 * W, y = n / 1000 * H for the page
of W x H pixels: the scalings cancel.

The parser reads a sequence of items (text, a location value, a marker), made either from the
generated token ids (location and marker ids read from the checkpoint's tokenizer: then each
line gets the confidence of its own tokens) or from the answer's text. A malformed part (a
location run of other than 8 values, a value over 1000, text without a quad, a quad whose points are not
in order) never fails the page: its text stays in the page's text and `problems` says what was
wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .confidence import TextConfidence

LOC_MAX = 1000  # location values are thousandths of the image's sides
QUAD_VALUES = 8  # 4 points x (x, y)
MARKERS = ("LOC_BEGIN", "LOC_END", "LOC_SEP", "TEXT_START", "TEXT_END")
_TOKEN = re.compile(r"<\|(LOC_(\d+)|LOC_BEGIN|LOC_END|LOC_SEP|TEXT_START|TEXT_END)\|>")
_LOC_NAME = re.compile(r"<\|LOC_(\d+)\|>")

# What `problems` may hold (each once, in the order first met).
SHORT_RUN = "location run not of 8 values"
VALUE_OVER = "location value over 1000"
NO_QUAD = "text without a quad"
NO_TEXT = "quad without text"
BAD_ORDER = "quad points out of order"


@dataclass(frozen=True)
class SpottingTokens:
    """The ids of the location tokens (`<|LOC_n|>` -> n) and of the markers in one tokenizer."""

    locations: dict[int, int]
    markers: dict[int, str]  # id -> one of MARKERS

    @classmethod
    def from_vocab(cls, vocab: dict[str, int]) -> SpottingTokens:
        """From a token -> id map (a tokenizer's `get_added_vocab()` or `get_vocab()`)."""
        locations, markers = {}, {}
        for token, token_id in vocab.items():
            if (m := _LOC_NAME.fullmatch(token)) is not None:
                locations[int(token_id)] = int(m.group(1))
            elif token.startswith("<|") and token.endswith("|>") and token[2:-2] in MARKERS:
                markers[int(token_id)] = token[2:-2]
        return cls(locations, markers)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpottingTokens:
        """From a transformers tokenizer (the bundle's own files, engine/tokenizer.py)."""
        return cls.from_vocab(dict(tokenizer.get_added_vocab()))

    def is_location(self, token_id: int) -> bool:
        """A location token or a LOC marker: the tokens left out of text confidence."""
        return token_id in self.locations or self.markers.get(token_id, "").startswith("LOC_")


@dataclass
class SpottedLine:
    text: str
    quad: list[tuple[float, float]]  # TL, TR, BR, BL in pixels of the page
    confidence: float | None = None

    @property
    def bbox(self) -> list[float]:
        xs, ys = [p[0] for p in self.quad], [p[1] for p in self.quad]
        return [min(xs), min(ys), max(xs), max(ys)]

    def to_record(self) -> dict[str, Any]:
        return {"text": self.text, "bbox": [round(v, 2) for v in self.bbox],
                "quad": [[round(x, 2), round(y, 2)] for x, y in self.quad], "confidence": self.confidence}


@dataclass
class Spotting:
    lines: list[SpottedLine]
    text: str  # every line's text and every unparsed part's text, one per line, in answer order
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# An item of an answer: ("text", str, probs) | ("loc", int, probs) | ("marker", name, probs);
# probs are the probabilities of the tokens that made it ([] when unknown).
Item = tuple[str, Any, list[float]]


def items_from_text(answer: str) -> Iterator[Item]:
    """The items of an answer's text (no token probabilities)."""
    at = 0
    for m in _TOKEN.finditer(answer):
        if m.start() > at:
            yield "text", answer[at:m.start()], []
        yield ("loc", int(m.group(2)), []) if m.group(2) is not None else ("marker", m.group(1), [])
        at = m.end()
    if at < len(answer):
        yield "text", answer[at:], []


def items_from_ids(
    ids: Sequence[int], tokens: SpottingTokens, detokenize: Callable[[Sequence[int]], str],
    probs: Sequence[float] | None = None,
) -> Iterator[Item]:
    """The items of generated ids: runs of other ids become one text item each (decoded
    together, so byte tokens join), location and marker ids their own items."""
    run: list[int] = []
    run_probs: list[float] = []

    def flush() -> Iterator[Item]:
        if run:
            yield "text", detokenize(run), list(run_probs)
            run.clear()
            run_probs.clear()

    for i, token_id in enumerate(ids):
        p = [float(probs[i])] if probs is not None else []
        if token_id in tokens.locations:
            yield from flush()
            yield "loc", tokens.locations[token_id], p
        elif token_id in tokens.markers:
            yield from flush()
            yield "marker", tokens.markers[token_id], p
        else:
            run.append(token_id)
            run_probs.extend(p)
    yield from flush()


def quad_in_order(quad: Sequence[tuple[float, float]]) -> bool:
    """Whether TL, TR, BR, BL go clockwise on the page (y down) around a convex area: any
    rotation of a text line keeps this, points swapped or crossed do not."""
    area = 0.0
    for i in range(4):
        (x0, y0), (x1, y1), (x2, y2) = quad[i], quad[(i + 1) % 4], quad[(i + 2) % 4]
        if (x1 - x0) * (y2 - y1) - (y1 - y0) * (x2 - x1) < 0:
            return False
        area += x0 * y1 - x1 * y0
    return area > 0


class _Parser:
    """The state machine over items: text gathers until a full quad closes a line."""

    def __init__(self, width: float, height: float) -> None:
        self.width, self.height = width, height
        self.lines: list[SpottedLine] = []
        self.texts: list[str] = []  # the page's text, one entry per line or unparsed part
        self.problems: list[str] = []
        self.text = ""  # gathered since the last line
        self.text_probs: list[float] = []  # of the tokens that made it (location tokens excluded)
        self.values: list[int] = []
        self.in_quad = False  # inside <|LOC_BEGIN|> ... <|LOC_END|>

    def problem(self, what: str) -> None:
        if what not in self.problems:
            self.problems.append(what)

    def feed(self, kind: str, value: Any, probs: list[float]) -> None:
        if kind == "loc":
            self.values.append(value)
            if not self.in_quad and len(self.values) == QUAD_VALUES:
                self.close_quad()
            return
        if self.values and not self.in_quad:  # a bare run ended before 8 values
            self.close_quad()
        if kind == "text":
            self.text += value
            self.text_probs += probs
        elif value == "TEXT_START":
            if self.in_quad:
                self.close_quad()
            self.end_text()  # text before it has no quad
            self.text_probs += probs
        elif value == "TEXT_END":
            self.text_probs += probs
        elif value == "LOC_BEGIN":
            self.in_quad = True
        elif value == "LOC_END" and self.in_quad:
            self.close_quad()

    def close_quad(self) -> None:
        values, self.values, self.in_quad = self.values, [], False
        text = self.text.strip()
        if len(values) != QUAD_VALUES:
            self.problem(SHORT_RUN)
            self.end_text()
            return
        if any(v > LOC_MAX for v in values):
            self.problem(VALUE_OVER)
            self.end_text()
            return
        if not text:
            self.problem(NO_TEXT)
            self.end_text()
            return
        quad = [(values[i] / LOC_MAX * self.width, values[i + 1] / LOC_MAX * self.height) for i in range(0, 8, 2)]
        if not quad_in_order(quad):
            self.problem(BAD_ORDER)
            self.end_text()
            return
        self.lines.append(SpottedLine(text, quad, TextConfidence.of(self.text_probs).fields()["confidence"]))
        self.texts.append(text)
        self.text, self.text_probs = "", []

    def end_text(self) -> None:
        """The gathered text goes to the page's text without a line (text without a quad
        counts as a problem)."""
        for part in self.text.splitlines():
            if part.strip():
                self.texts.append(part.strip())
                self.problem(NO_QUAD)
        self.text, self.text_probs = "", []

    def finish(self) -> Spotting:
        if self.values:
            self.close_quad()
        self.end_text()
        return Spotting(self.lines, "\n".join(self.texts), self.problems)


def parse_items(items: Iterator[Item] | Sequence[Item], width: float, height: float) -> Spotting:
    """Lines of a spotting answer's items, in pixels of a `width` x `height` page."""
    parser = _Parser(width, height)
    for kind, value, probs in items:
        parser.feed(kind, value, probs)
    return parser.finish()


def parse_spotting(answer: str, width: float, height: float) -> Spotting:
    """Lines of a spotting answer's text (decoded with its special tokens kept)."""
    return parse_items(items_from_text(answer), width, height)
