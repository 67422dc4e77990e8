"""layout/parser: pages -> blocks -> Markdown through the real recognizer (tiny random bundle) and a
layout stand-in that returns known regions of a synthetic page (docs/layout-text.md, "The parser").

The oracle: what the recognizer is given is compared pixel for pixel with crops cut here by plain
numpy slicing of the page at the regions drawn, and what comes back is compared with the answers
the recognizer gives for those crops when asked directly, one at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from ppvl_batch.layout.blocks import BLOCK_MAX_PIXELS, BLOCK_MIN_PIXELS, finish_text
from ppvl_batch.layout.labels import Block
from ppvl_batch.layout.markdown import page_markdown
from ppvl_batch.layout.parser import DocumentParser, ParsedPage, ParserOptions
from ppvl_batch.layout.positions import page_block_lines
from ppvl_batch.recognizer import Recognizer

MAX_NEW = 12  # tokens per block: the answers only need to be compared, not to be long


@dataclass(frozen=True)
class Box:
    label: str
    score: float
    bbox: tuple[int, int, int, int]


class StandIn:
    """A layout detector that returns the same boxes for every page, and remembers its calls."""

    def __init__(self, boxes: list[Box]):
        self.boxes = boxes
        self.calls: list[int] = []

    def detect(self, images: list[Image.Image]) -> list[list[Box]]:
        self.calls.append(len(images))
        return [list(self.boxes) for _ in images]


class PreprocessorSpy:
    """The recognizer's preprocessor, recording every image it is given and the limits (and
    refusing one size, for a bad block)."""

    def __init__(self, inner, refuse: tuple[int, int] | None = None):
        self.inner = inner
        self.refuse = refuse  # an image size it raises ValueError for
        self.seen: list[tuple[np.ndarray, int | None, int | None]] = []

    def __call__(self, image, min_pixels=None, max_pixels=None):
        if image.size == self.refuse:
            raise ValueError("refused")
        self.seen.append((np.asarray(image.convert("RGB")).copy(), min_pixels, max_pixels))
        return self.inner(image, min_pixels=min_pixels, max_pixels=max_pixels)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# -- the synthetic page -------------------------------------------------------------------------

W, H = 1000, 1300
TITLE = (100, 50, 900, 130)
LEFT = (80, 170, 480, 600)
RIGHT = (520, 170, 920, 600)
TABLE = (120, 650, 880, 900)
FORMULA = (300, 940, 700, 1050)
FORMULA_INK = [(340, 962, 470, 976), (340, 990, 660, 994), (420, 1008, 560, 1031)]  # black bars
IMAGE = (150, 1080, 850, 1250)
NUMBER = (470, 1262, 530, 1292)

LAYOUT = [
    Box("doc_title", 0.91, TITLE),
    Box("text", 0.88, LEFT),
    Box("text", 0.87, RIGHT),
    Box("table", 0.93, TABLE),
    Box("display_formula", 0.8, FORMULA),
    Box("image", 0.95, IMAGE),
    Box("number", 0.7, NUMBER),
]
TASKS = {"doc_title": "ocr", "text": "ocr", "table": "table", "display_formula": "formula", "number": "ocr"}


def synthetic_page(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(page)
    draw.text((TITLE[0] + 20, TITLE[1] + 15), "Reading Layouts", fill="black", font=ImageFont.load_default(size=44))
    body = ImageFont.load_default(size=18)
    for x0, y0, _x1, y1 in (LEFT, RIGHT):
        for n, y in enumerate(range(y0 + 10, y1 - 24, 28)):
            draw.text((x0 + 8, y), f"line {n} of column {x0} seed {seed}", fill="black", font=body)
    x0, y0, x1, y1 = TABLE
    for k in range(5):  # 4 rows, 3 columns, ruled
        y = y0 + 10 + k * 58
        draw.line((x0 + 10, y, x1 - 10, y), fill="black", width=2)
    for k in range(4):
        x = x0 + 10 + k * (x1 - x0 - 20) // 3
        draw.line((x, y0 + 10, x, y0 + 10 + 4 * 58), fill="black", width=2)
    for r in range(4):
        for c in range(3):
            draw.text((x0 + 30 + c * 246, y0 + 28 + r * 58), f"r{r}c{c}", fill="black", font=body)
    for bar in FORMULA_INK:  # the formula's ink: its trimmed crop is exactly their union
        draw.rectangle((bar[0], bar[1], bar[2] - 1, bar[3] - 1), fill="black")
    x0, y0, x1, y1 = IMAGE
    page.paste(Image.fromarray(rng.integers(0, 255, (y1 - y0, x1 - x0, 3), dtype=np.uint8)), (x0, y0))
    draw.text((NUMBER[0] + 12, NUMBER[1] + 4), "7", fill="black", font=body)
    return page


def cut(page: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.asarray(page)[y0:y1, x0:x1]


def ink_box() -> tuple[int, int, int, int]:
    return (min(b[0] for b in FORMULA_INK), min(b[1] for b in FORMULA_INK),
            max(b[2] for b in FORMULA_INK), max(b[3] for b in FORMULA_INK))  # fmt: skip


def expected_crops(page: Image.Image) -> list[np.ndarray]:
    """What the model must read, in reading order: every block but the image, the formula cut
    to its ink."""
    return [cut(page, ink_box() if b.label == "display_formula" else b.bbox) for b in LAYOUT if b.label != "image"]


def direct_answer(rec: Recognizer, crop: np.ndarray, task: str):
    prepared = rec.preprocessor(Image.fromarray(crop), min_pixels=BLOCK_MIN_PIXELS, max_pixels=BLOCK_MAX_PIXELS)
    [encoded] = rec.encode([prepared])
    return rec.decode(encoded, task, max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def rec(tiny_bundle):
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32") as r:
        yield r


@pytest.fixture(scope="module")
def rec_parallel(tiny_bundle):
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32", parallel=3) as r:
        yield r


def options(tmp_path: Path, **kw) -> ParserOptions:
    return ParserOptions(max_new_tokens=MAX_NEW, images_dir=tmp_path / "doc_images", links_from=tmp_path, **kw)


def records(pages: list[ParsedPage]) -> list[list[dict]]:
    return [[b.to_record() for b in p.blocks] for p in pages]


# -- the oracle ---------------------------------------------------------------------------------


def test_oracle_page(rec: Recognizer, tmp_path: Path, monkeypatch) -> None:
    page = synthetic_page()
    read = [b for b in LAYOUT if b.label != "image"]
    answers = [direct_answer(rec, crop, TASKS[b.label]) for b, crop in zip(read, expected_crops(page))]

    spy = PreprocessorSpy(rec.preprocessor)
    monkeypatch.setattr(rec, "preprocessor", spy)
    asked: list[tuple[str, int]] = []
    request = rec.request

    def spy_request(encoded, task="ocr", prompt=None, **kw):
        asked.append((task, kw.get("max_new_tokens")))
        return request(encoded, task, prompt, **kw)

    monkeypatch.setattr(rec, "request", spy_request)
    detector = StandIn(LAYOUT)
    [parsed] = DocumentParser(rec, detector, options(tmp_path)).parse([page], first_page=3)

    # the recognizer got exactly these crops, pixel for pixel, at the block limits, in reading order
    assert detector.calls == [1]
    assert len(spy.seen) == len(read)
    for (seen, lo, hi), crop in zip(spy.seen, expected_crops(page)):
        assert (lo, hi) == (BLOCK_MIN_PIXELS, BLOCK_MAX_PIXELS)
        assert seen.shape == crop.shape and np.array_equal(seen, crop)
    assert asked == [(TASKS[b.label], MAX_NEW) for b in read]

    # the image block is a file, pixel-equal to its region, linked from the Markdown's folder
    saved = tmp_path / "doc_images" / "p0003_005_image.png"
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), cut(page, IMAGE))
    assert sorted(p.name for p in (tmp_path / "doc_images").iterdir()) == [saved.name]

    by_label = iter(answers)
    expected: list[Block] = []
    orders = {"doc_title": 1, "text": None, "display_formula": 4}
    text_orders = iter([2, 3])
    for i, box in enumerate(LAYOUT):
        block = Block(id=i, label=box.label, bbox=box.bbox, score=box.score)
        if box.label == "image":
            block.format, block.image = "image", "doc_images/p0003_005_image.png"
        else:
            answer = next(by_label)
            block.task, block.text_source = TASKS[box.label], "model"
            block.text, block.format = finish_text(box.label, answer.text)
            block.finish_reason, block.output_tokens = answer.finish_reason, answer.output_tokens
            confidence = answer.text_confidence().fields()  # of the block's own tokens
            block.confidence, block.min_token_prob = confidence["confidence"], confidence["min_token_prob"]
        block.order = next(text_orders) if box.label == "text" else orders.get(box.label)
        expected.append(block)
    # each block's lines estimated from its own crop of the page (layout/positions.py)
    assert parsed.lines == page_block_lines(np.asarray(page.convert("L")), expected)
    assert [b.to_record() for b in parsed.blocks] == [b.to_record() for b in expected]
    assert [b.order for b in parsed.blocks] == [1, 2, 3, None, 4, None, None]  # number: ignored label

    assert parsed.markdown == page_markdown(expected)
    assert "![](doc_images/p0003_005_image.png)" in parsed.markdown
    assert parsed.text == parsed.markdown
    assert (parsed.width, parsed.height) == (W, H)
    assert parsed.output_tokens == sum(a.output_tokens for a in answers)
    assert parsed.image_tokens == sum(a.image_tokens for a in answers)
    assert parsed.prompt_tokens == sum(a.prompt_tokens for a in answers)
    assert parsed.errors == 0
    assert parsed.layout_seconds > 0 and parsed.vision_seconds > 0 and parsed.decode_seconds > 0
    reasons = [a.finish_reason for a in answers if a.finish_reason != "stop"]
    assert parsed.finish_reason == (reasons[0] if reasons else "stop")


def test_markdown_shows_the_page_in_reading_order_with_ignored_labels_left_out(rec: Recognizer, tmp_path: Path) -> None:
    [parsed] = DocumentParser(rec, StandIn(LAYOUT), options(tmp_path)).parse([synthetic_page()])
    [kept] = DocumentParser(rec, StandIn(LAYOUT), options(tmp_path / "all", ignore_labels=frozenset())).parse([synthetic_page()])
    number = parsed.blocks[-1]
    assert number.label == "number" and kept.blocks[-1].text == number.text
    assert kept.markdown == page_markdown(kept.blocks, ignore=())
    assert parsed.markdown == page_markdown(parsed.blocks)
    assert [b.order for b in kept.blocks] == [1, 2, 3, None, 4, None, 5]


def test_without_an_images_folder_image_blocks_have_no_file(rec: Recognizer, tmp_path: Path) -> None:
    [parsed] = DocumentParser(rec, StandIn(LAYOUT), ParserOptions(max_new_tokens=MAX_NEW)).parse([synthetic_page()])
    image = parsed.blocks[5]
    assert (image.label, image.format, image.image, image.error) == ("image", "image", None, None)
    assert "![]" not in parsed.markdown


# -- batches, parallel decoding ------------------------------------------------------------------


def test_a_batch_of_pages_equals_each_page_alone(rec: Recognizer, tmp_path: Path) -> None:
    pages = [synthetic_page(1), synthetic_page(2)]
    detector = StandIn(LAYOUT)
    together = DocumentParser(rec, detector, options(tmp_path / "b")).parse(pages, first_page=0)
    assert detector.calls == [2]  # one detection call for the batch
    alone = [DocumentParser(rec, StandIn(LAYOUT), options(tmp_path / "a")).parse([p], first_page=n)[0] for n, p in enumerate(pages)]
    assert records(together) == records(alone)
    assert [p.markdown for p in together] == [p.markdown for p in alone]
    assert sorted(p.name for p in (tmp_path / "b" / "doc_images").iterdir()) == ["p0000_005_image.png", "p0001_005_image.png"]


def test_parallel_decoding_gives_the_same_blocks(rec: Recognizer, rec_parallel: Recognizer, tmp_path: Path) -> None:
    pages = [synthetic_page(3), synthetic_page(4)]
    one = DocumentParser(rec, StandIn(LAYOUT), options(tmp_path)).parse(pages)
    three = DocumentParser(rec_parallel, StandIn(LAYOUT), options(tmp_path)).parse(pages)
    # the same tokens; their probabilities differ in the last float bits (a batched llama.cpp
    # step sums in another order)
    sure = ("confidence", "min_token_prob")
    assert [[{k: v for k, v in b.items() if k not in sure} for b in page] for page in records(three)] == \
        [[{k: v for k, v in b.items() if k not in sure} for b in page] for page in records(one)]
    assert [b[k] for page in records(three) for b in page for k in sure if b[k] is not None] == \
        pytest.approx([b[k] for page in records(one) for b in page for k in sure if b[k] is not None], rel=1e-4)
    assert [p.markdown for p in three] == [p.markdown for p in one]


def test_blocks_get_their_own_answers_whatever_order_they_finish_in(rec: Recognizer, tmp_path: Path, monkeypatch) -> None:
    pages = [synthetic_page(5)]
    in_order = DocumentParser(rec, StandIn(LAYOUT), options(tmp_path)).parse(pages)
    answers = {b.text for b in in_order[0].blocks if b.task}
    assert len(answers) > 1  # table and formula prompts answer differently from OCR here
    decode_many = rec.decode_many

    def reversed_finish(jobs):  # as with --parallel: the last block in flight may finish first
        return reversed(list(decode_many(jobs)))

    monkeypatch.setattr(rec, "decode_many", reversed_finish)
    assert records(DocumentParser(rec, StandIn(LAYOUT), options(tmp_path)).parse(pages)) == records(in_order)


# -- bad blocks -----------------------------------------------------------------------------------


def test_a_bad_block_gets_an_error_entry_and_the_rest_is_read(rec: Recognizer, tmp_path: Path, monkeypatch) -> None:
    page = synthetic_page()
    good = [LAYOUT[0], LAYOUT[1], LAYOUT[3]]
    bad = [
        Box("text", 0.5, (400, 700, 400, 760)),  # no pixels
        Box("image", 0.5, (1200, 10, 1300, 60)),  # outside the page
        Box("text", 0.5, (600, 20, 617, 47)),  # the preprocessor will refuse it (17 x 27)
        Box("paragraph_title", 0.5, (20, 20, 43, 91)),  # the vision encoder will fail on it (23 x 71)
    ]
    layout = [bad[0], good[0], bad[1], good[1], bad[2], bad[3], good[2]]

    def grid(box: Box) -> tuple[int, int]:
        prepared = rec.preprocessor(Image.fromarray(cut(page, box.bbox)), min_pixels=BLOCK_MIN_PIXELS, max_pixels=BLOCK_MAX_PIXELS)
        return prepared.grid_h, prepared.grid_w

    marked = grid(bad[3])  # the grid of the 23 x 71 crop marks it for the vision failure
    assert all(grid(b) != marked for b in good)
    encode = rec.encode

    def encode_failing(images, task="ocr"):
        if any((p.grid_h, p.grid_w) == marked for p in images):
            raise RuntimeError("bad input")
        return encode(images, task)

    monkeypatch.setattr(rec, "preprocessor", PreprocessorSpy(rec.preprocessor, refuse=(17, 27)))
    monkeypatch.setattr(rec, "encode", encode_failing)
    [parsed] = DocumentParser(rec, StandIn(layout), options(tmp_path / "bad")).parse([page])
    monkeypatch.undo()
    [clean] = DocumentParser(rec, StandIn(good), options(tmp_path / "good")).parse([page])

    errors = [(b.error or {}).get("type") for b in parsed.blocks]
    assert errors == ["crop", None, "crop", None, "recognition", "recognition", None]
    assert "empty crop" in parsed.blocks[0].error["message"]
    assert parsed.blocks[4].error["message"] == "preprocessing failed: refused"
    assert parsed.blocks[5].error["message"] == "vision encoder failed: bad input"
    assert all(b.text == "" and b.output_tokens is None for b in parsed.blocks if b.error)
    assert parsed.errors == 4
    # the good blocks read exactly as on a page without the bad ones
    strip = lambda r: {k: v for k, v in r.items() if k not in ("id", "order")}  # noqa: E731
    assert [strip(b.to_record()) for b in parsed.blocks if not b.error] == [strip(b.to_record()) for b in clean.blocks]
    assert "<!-- block 0 (text): crop: empty crop" in parsed.markdown
    assert not (tmp_path / "bad" / "doc_images").exists()  # the only image block had no pixels


def test_a_block_too_long_for_the_context_fails_alone(tiny_bundle, tmp_path: Path) -> None:
    page = synthetic_page()
    # 512 tokens per sequence, asked for (the parser leaves a given context as it is): the title
    # (~ 144 image tokens) fits, the table (~ 250) too, a 900 x 570 text block (over 640) does not
    layout = [LAYOUT[0], Box("text", 0.9, (50, 170, 950, 740)), LAYOUT[3]]
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32", n_ctx=512) as small:
        assert small.decoder.ctx_per_sequence == 512
        [parsed] = DocumentParser(small, StandIn(layout), options(tmp_path)).parse([page])
    assert [(b.error or {}).get("type") for b in parsed.blocks] == [None, "recognition", None]
    assert parsed.blocks[1].error["message"].startswith("decoder failed: page needs")
    assert parsed.blocks[0].output_tokens and parsed.blocks[2].output_tokens


def test_the_context_holds_blocks_above_the_pages_max_pixels(bundle_dirs, tmp_path: Path) -> None:
    """The recognizer's context is sized by its max_pixels (v1: nothing more; 1.5 also covers
    spotting's larger budget); blocks have their own limits, so a recognizer for layout parsing is
    built with `context_pixels` (as scan and ask --layout build it): a block larger than a small
    max_pixels is read, not failed for its prompt's length. The parser changes no recognizer."""
    layout = [Box("text", 0.9, (50, 170, 950, 740))]  # over 640 image tokens
    v1 = bundle_dirs["v1-original"]
    with Recognizer.load(v1, min_pixels=784, max_pixels=3136, max_new_tokens=4, lazy=True) as pages_only:
        assert pages_only.n_ctx < 640
    with Recognizer.load(v1, min_pixels=784, max_pixels=3136, max_new_tokens=4, context_pixels=BLOCK_MAX_PIXELS) as rec:
        before = rec.decoder.ctx_per_sequence
        [parsed] = DocumentParser(rec, StandIn(layout), options(tmp_path)).parse([synthetic_page()])
        assert 640 < BLOCK_MAX_PIXELS // 28**2 < rec.decoder.ctx_per_sequence == before
    [block] = parsed.blocks
    assert block.error is None and block.output_tokens


# -- options ----------------------------------------------------------------------------------------


def test_charts_and_seals_are_read_only_when_enabled(rec: Recognizer, tmp_path: Path) -> None:
    layout = [Box("chart", 0.9, TABLE), Box("seal", 0.9, IMAGE)]
    [off] = DocumentParser(rec, StandIn(layout), options(tmp_path / "off")).parse([synthetic_page()])
    assert [(b.task, b.format, b.image is not None) for b in off.blocks] == [(None, "image", True), (None, "image", True)]
    [on] = DocumentParser(rec, StandIn(layout), options(tmp_path / "on", charts=True, seals=True)).parse([synthetic_page()])
    assert [b.task for b in on.blocks] == ["chart", "seal"]
    assert on.blocks[1].image is not None and on.blocks[1].output_tokens is not None  # a seal: read and saved
    assert on.blocks[0].image is None


def test_options_checked_up_front(rec: Recognizer, bundle_dirs) -> None:
    with pytest.raises(ValueError, match="min_pixels 2000 is above max_pixels 1000"):
        DocumentParser(rec, StandIn([]), ParserOptions(min_pixels=2000, max_pixels=1000))
    with Recognizer.load(bundle_dirs["v1-original"], lazy=True) as v1, \
            pytest.raises(ValueError, match="seal recognition needs a PaddleOCR-VL 1.5"):
        DocumentParser(v1, StandIn([]), ParserOptions(seals=True))
    assert DocumentParser(rec, StandIn([]), ParserOptions()).parse([]) == []
    choices = ParserOptions(charts=True).prompt_choices()
    assert choices["prompts"]["chart"] == "chart" and choices["prompts"]["seal"] is None
    assert (choices["min_pixels"], choices["max_pixels"]) == (BLOCK_MIN_PIXELS, BLOCK_MAX_PIXELS)


def test_document_markdown_merges_a_table_over_a_page_break(rec: Recognizer) -> None:
    table = "<table><tr><td>a</td><td>b</td></tr></table>"
    first = [Block(id=0, label="table", bbox=(10, 10, 500, 300), score=0.9, task="table", text=table, format="html")]
    second = [Block(id=0, label="table", bbox=(12, 10, 502, 200), score=0.9, task="table",
                    text="<table><tr><td>c</td><td>d</td></tr></table>", format="html")]
    merged = "<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>"
    parser = DocumentParser(rec, StandIn([]), ParserOptions())
    assert parser.markdown([first, second]) == merged
    apart = DocumentParser(rec, StandIn([]), ParserOptions(merge_tables=False)).markdown([first, second])
    assert apart == table + "\n\n" + second[0].text
