"""Line positions: the spotting parser (both wrappings, mixed answers, every malformed case,
rotated quads, ids from the tokenizer files, per-line confidence), spotting coordinates through
the real preprocessing (page sizes not multiples of 28, with and without the 2x upscale), and
line estimation from ink on generated blocks and pages with known line boxes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tiny_model
from PIL import Image, ImageDraw, ImageFont

from ppvl_batch.engine.confidence import TextConfidence
from ppvl_batch.engine.spotting import (
    BAD_ORDER,
    NO_QUAD,
    NO_TEXT,
    SHORT_RUN,
    VALUE_OVER,
    SpottingTokens,
    items_from_ids,
    parse_items,
    parse_spotting,
    quad_in_order,
)
from ppvl_batch.layout.labels import Block
from ppvl_batch.layout.lines import ink_mask, page_line_boxes
from ppvl_batch.layout.positions import block_lines, estimated_positions, spotting_positions


def locs(*values: int) -> str:
    return "".join(f"<|LOC_{v}|>" for v in values)


def wrapped(text: str, *values: int) -> str:
    return f"<|TEXT_START|>{text}<|TEXT_END|><|LOC_BEGIN|>{locs(*values)}<|LOC_END|>"


BOX_A = (100, 100, 500, 100, 500, 150, 100, 150)
BOX_B = (100, 200, 600, 200, 600, 260, 100, 260)


# -- the parser --------------------------------------------------------------------------------


def test_wrapped_and_bare_answers_give_the_same_lines_in_page_pixels() -> None:
    bare = f"Total due{locs(*BOX_A)}\nInvoice 12{locs(*BOX_B)}\n"
    both = [parse_spotting(answer, 2000, 1000) for answer in (bare, wrapped("Total due", *BOX_A) + wrapped("Invoice 12", *BOX_B))]
    for s in both:
        assert s.ok and s.text == "Total due\nInvoice 12"
        assert [line.text for line in s.lines] == ["Total due", "Invoice 12"]
        assert s.lines[0].quad == [(200, 100), (1000, 100), (1000, 150), (200, 150)]  # x of 2000 px, y of 1000
        assert s.lines[1].bbox == [200, 200, 1200, 260]
    assert both[0].lines[0].to_record() == {"text": "Total due", "bbox": [200, 100, 1000, 150],
                                            "quad": [[200, 100], [1000, 100], [1000, 150], [200, 150]], "confidence": None}


def test_a_mixed_answer_keeps_every_line_in_order() -> None:
    # PaddleX reads the bare form only when the wrapped form found nothing: it loses "first" here
    answer = f"first{locs(*BOX_A)}\n" + wrapped("second", *BOX_B) + f"\nthird{locs(*BOX_A)}"
    s = parse_spotting(answer, 1000, 1000)
    assert s.ok and [line.text for line in s.lines] == ["first", "second", "third"]
    assert s.text == "first\nsecond\nthird"


@pytest.mark.parametrize("answer, problem, lines, text", [
    (f"a{locs(*BOX_A)}\nb{locs(1, 2, 3, 4, 5)}\nc{locs(*BOX_B)}", SHORT_RUN, ["a", "c"], "a\nb\nc"),
    ("a" + wrapped("b", 1, 2, 3, 4, 5, 6, 7) + wrapped("c", *BOX_B), SHORT_RUN, ["c"], "a\nb\nc"),
    (f"a{locs(*BOX_A)}\nb{locs(100, 100, 1500, 100, 1500, 150, 100, 150)}", VALUE_OVER, ["a"], "a\nb"),
    (f"a{locs(*BOX_A)}\nno quad here\n" + wrapped("c", *BOX_B), NO_QUAD, ["a", "c"], "a\nno quad here\nc"),
    (f"a{locs(*BOX_A)}\ncut at the end", NO_QUAD, ["a"], "a\ncut at the end"),
    (f"a{locs(*BOX_A)}{locs(*BOX_B)}", NO_TEXT, ["a"], "a"),
    # TL and TR swapped; a crossed (bow-tie) quad
    (f"a{locs(500, 100, 100, 100, 500, 150, 100, 150)}\nb{locs(*BOX_B)}", BAD_ORDER, ["b"], "a\nb"),
    (f"a{locs(100, 100, 500, 150, 500, 100, 100, 150)}\nb{locs(*BOX_B)}", BAD_ORDER, ["b"], "a\nb"),
])
def test_malformed_parts_keep_their_text_and_the_lines_that_parse(answer, problem, lines, text) -> None:
    s = parse_spotting(answer, 1000, 1000)
    assert not s.ok and problem in s.problems
    assert [line.text for line in s.lines] == lines
    assert s.text == text
    fields = spotting_positions(s)
    assert fields.unparsed == ("spotting",) and fields.text == text and fields.positions == "spotting"


@pytest.mark.parametrize("angle", [0, 15, 90, 160, 180, 270, 330])
def test_rotated_quads_are_in_order_and_swapped_points_are_not(angle: float) -> None:
    cx, cy, w, h, a = 500, 500, 300, 40, math.radians(angle)
    corners = [(-w, -h), (w, -h), (w, h), (-w, h)]  # TL TR BR BL of the upright line
    quad = [(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)) for x, y in corners]
    assert quad_in_order(quad)
    assert not quad_in_order([quad[1], quad[0], quad[2], quad[3]])
    assert not quad_in_order(quad[::-1])  # anticlockwise: mirrored
    values = [round(v) for point in quad for v in point]
    s = parse_spotting(f"tilted{locs(*values)}", 1000, 1000)
    assert s.ok and s.lines[0].quad == [(float(x), float(y)) for x, y in zip(values[::2], values[1::2])]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from ppvl_batch.engine.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    tiny_model.build_tokenizer(folder, version="1.5")
    return load_tokenizer(folder)


def test_location_and_marker_ids_come_from_the_tokenizer_files(tokenizer) -> None:
    tokens = SpottingTokens.from_tokenizer(tokenizer)
    assert len(tokens.locations) == 1001 and sorted(tokens.markers.values()) == sorted(
        ["LOC_BEGIN", "LOC_END", "LOC_SEP", "TEXT_START", "TEXT_END"])
    for token_id, value in list(tokens.locations.items())[::97]:
        assert tokenizer.convert_ids_to_tokens(token_id) == f"<|LOC_{value}|>"
    # a tokenizer with other ids (the demo's, without markers) is read as it is
    shifted = SpottingTokens.from_vocab({f"<|LOC_{i}|>": 7000 + i for i in range(1001)})
    assert shifted.locations[7005] == 5 and not shifted.markers and shifted.is_location(7000)


def test_ids_parse_as_the_text_does_and_lines_get_their_own_tokens_confidence(tokenizer) -> None:
    tokens = SpottingTokens.from_tokenizer(tokenizer)
    answer = f"Total due 45{locs(*BOX_A)}\n" + wrapped("item price", *BOX_B) + "\nleft over"
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    probs = [0.5 + 0.4 * ((i * 7) % 10) / 10 for i in range(len(ids))]
    s = parse_items(items_from_ids(ids, tokens, tokenizer.decode, probs), 1000, 500)
    reference = parse_spotting(tokenizer.decode(ids), 1000, 500)
    assert [(line.text, line.quad) for line in s.lines] == [(line.text, line.quad) for line in reference.lines]
    assert s.text == reference.text == "Total due 45\nitem price\nleft over" and s.problems == [NO_QUAD]
    # line 1: the tokens before its first location token; line 2: <|TEXT_START|> through
    # <|TEXT_END|> (the text markers count, the location tokens and the blank between do not)
    first_loc = next(i for i, t in enumerate(ids) if t in tokens.locations)
    assert s.lines[0].confidence == pytest.approx(TextConfidence.of(probs[:first_loc]).confidence)
    start = ids.index(tokenizer.convert_tokens_to_ids("<|TEXT_START|>"))
    assert start > first_loc + 8  # the newline after line 1's quad lies between
    end = ids.index(tokenizer.convert_tokens_to_ids("<|TEXT_END|>")) + 1
    assert s.lines[1].confidence == pytest.approx(TextConfidence.of(probs[start:end]).confidence)
    assert all(not tokens.is_location(t) for t in ids[start:end])


# -- coordinates through the real preprocessing ------------------------------------------------


def _model_image(prepared) -> np.ndarray:
    """The image the model sees, back from its patches (channel 0, -1 black .. 1 white)."""
    gh, gw, p = prepared.grid_h, prepared.grid_w, prepared.patch
    return prepared.pixel_values.reshape(gh, gw, 3, p, p).transpose(2, 0, 3, 1, 4).reshape(3, gh * p, gw * p)[0]


@pytest.mark.parametrize("size, upscaled", [((1001, 713), True), ((1201, 853), True), ((1523, 997), False),
                                             ((2011, 1417), False)])
def test_spotting_coordinates_map_onto_the_page_with_and_without_the_upscale(tiny_bundle, size, upscaled) -> None:
    from ppvl_batch.bundle import Bundle
    from ppvl_batch.engine.recognizer import SPOTTING_MAX_PIXELS, Recognizer

    W, H = size
    assert W % 28 and H % 28
    box = (round(W * 0.213), round(H * 0.377), round(W * 0.671), round(H * 0.452))
    page = Image.new("RGB", size, "white")
    ImageDraw.Draw(page).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill="black")
    rec = Recognizer(Bundle.open(tiny_bundle), lazy=True)
    prepared = rec.prepare(page, "spotting")
    seen = _model_image(prepared)
    Wm, Hm = seen.shape[1], seen.shape[0]
    assert Wm * Hm <= SPOTTING_MAX_PIXELS
    # without the upscale the 1.5 limit (1003520 px) would hold these pages
    assert (Wm * Hm > 1.5 * W * H) == upscaled
    ink = seen < 0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    # what a perfect model answers: thousandths of the image it saw
    x0, x1 = round(1000 * cols[0] / Wm), round(1000 * (cols[-1] + 1) / Wm)
    y0, y1 = round(1000 * rows[0] / Hm), round(1000 * (rows[-1] + 1) / Hm)
    s = parse_spotting(f"box{locs(x0, y0, x1, y0, x1, y1, x0, y1)}", W, H)
    assert s.ok
    got = s.lines[0].bbox
    for g, true, side in zip(got, box, (W, H, W, H)):
        assert abs(g - true) <= side / 1000 + 2  # one location step, and a pixel of resampling


# -- line estimation from ink ------------------------------------------------------------------


def _fonts() -> list:
    """DejaVu where the system has it, and PIL's own scalable font at two sizes."""
    fonts: list = []
    for name, size in (("DejaVuSans.ttf", 18), ("DejaVuSerif.ttf", 30), ("DejaVuSansMono.ttf", 14)):
        path = Path("/usr/share/fonts/truetype/dejavu") / name
        if path.exists():
            fonts.append(pytest.param(ImageFont.truetype(str(path), size), id=f"{path.stem}-{size}"))
    fonts += [pytest.param(ImageFont.load_default(size=size), id=f"pil-default-{size}") for size in (24, 12)]
    return fonts


FONT_PARAMS = _fonts()
FONTS = [p.values[0] for p in FONT_PARAMS]
LINES = ["Invoice number 2024-117 dated 3 June", "Égalité, façon: quality jig (paid)", "Total due 4,512.00 EUR",
         "signed"]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def draw_lines(page: Image.Image, x: int, y: int, texts, font, leading: float) -> list[tuple[int, int, int, int]]:
    """Draw the lines; each one's true ink box (drawn alone on a blank page)."""
    boxes = []
    step = round(font.size * leading)
    for text in texts:
        ImageDraw.Draw(page).text((x, y), text, font=font, fill="black")
        alone = Image.new("L", page.size, 255)
        ImageDraw.Draw(alone).text((x, y), text, font=font, fill=0)
        a = np.asarray(alone) < 128
        rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
        boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
        y += step
    return boxes


@pytest.mark.parametrize("font", FONT_PARAMS)
@pytest.mark.parametrize("leading", [1.15, 1.6])
def test_block_lines_overlap_their_true_boxes(font, leading) -> None:
    page = Image.new("RGB", (1200, 700), "white")
    truth = draw_lines(page, 137, 91, LINES, font, leading)
    bbox = (120, 80, 1100, truth[-1][3] + 15)
    block = Block(id=0, label="text", bbox=bbox, score=0.9, task="ocr", text="\n".join(LINES) + "\n")
    lines = block_lines(np.asarray(page.convert("L")), block)
    assert [line["text"] for line in lines] == LINES
    for line, true in zip(lines, truth):
        assert iou(line["bbox"], true) >= 0.7, (line["bbox"], true)
        x0, y0, x1, y1 = line["bbox"]
        assert line["quad"] == [[x0, y0], [x1, y0], [x1, y1], [x0, y1]] and line["confidence"] is None


def test_a_block_whose_lines_do_not_match_its_ink_shares_its_height_evenly() -> None:
    page = Image.new("RGB", (900, 400), "white")
    draw_lines(page, 50, 40, LINES[:3], FONTS[0], 1.6)
    block = Block(id=0, label="text", bbox=(40, 30, 840, 130), score=0.9, task="ocr", text="one line only\nand two")
    lines = block_lines(np.asarray(page.convert("L")), block)
    assert [line["bbox"] for line in lines] == [[40, 30, 840, 80], [40, 80, 840, 130]]


@pytest.mark.parametrize("label, task, fmt, text", [("table", "table", "html", "<table><tr><td>1</td></tr></table>"),
                                                     ("display_formula", "formula", "latex", "x^2"),
                                                     ("chart", "chart", "html", "<table></table>")])
def test_tables_formulas_and_charts_get_one_line_with_the_block_box(label, task, fmt, text) -> None:
    grey = np.full((300, 400), 255, dtype=np.uint8)
    block = Block(id=0, label=label, bbox=(10, 20, 300, 200), score=0.9, task=task, format=fmt, text=text)
    assert block_lines(grey, block) == [{"text": text, "bbox": [10, 20, 300, 200],
                                         "quad": [[10, 20], [300, 20], [300, 200], [10, 200]], "confidence": None}]


def test_blocks_not_read_or_failed_get_no_lines() -> None:
    grey = np.full((100, 100), 255, dtype=np.uint8)
    assert block_lines(grey, Block(id=0, label="image", bbox=(0, 0, 50, 50), score=0.9, format="image")) is None
    failed = Block(id=1, label="text", bbox=(0, 0, 50, 50), score=0.9, task="ocr")
    failed.fail("recognition", "decoder failed")
    assert block_lines(grey, failed) is None


@pytest.mark.parametrize("font", FONT_PARAMS)
def test_a_whole_page_in_one_column_gets_its_lines(font) -> None:
    page = Image.new("RGB", (1100, 800), "white")
    truth = draw_lines(page, 70, 60, LINES, font, 1.4)
    truth += draw_lines(page, 70, truth[-1][3] + 3 * font.size, ["A second paragraph", "ends here."], font, 1.4)
    texts = LINES + ["A second paragraph", "ends here."]
    found = estimated_positions(ink_mask(page), "\n".join(LINES) + "\n\nA second paragraph\nends here.", "ocr", None)
    assert found.positions == "estimated" and [line["text"] for line in found.lines] == texts
    for line, true in zip(found.lines, truth):
        assert iou(line["bbox"], true) >= 0.7


def test_a_whole_page_in_two_columns_or_with_a_figure_gets_no_lines() -> None:
    font = FONTS[0]
    page = Image.new("RGB", (1400, 600), "white")
    left = draw_lines(page, 40, 40, LINES, font, 1.4)
    right = draw_lines(page, 760, 40, LINES, font, 1.4)
    assert len(left) + len(right) == 8
    text = "\n".join(LINES + LINES)
    assert page_line_boxes(ink_mask(page), 8) is None
    assert estimated_positions(ink_mask(page), text, "ocr", None).lines is None
    figure = Image.new("RGB", (1000, 900), "white")
    draw_lines(figure, 40, 40, LINES[:2], font, 1.4)
    ImageDraw.Draw(figure).rectangle([60, 200, 700, 700], outline="black", width=3)
    ImageDraw.Draw(figure).line([60, 200, 700, 700], fill="black", width=3)
    assert estimated_positions(ink_mask(figure), "\n".join(LINES[:2]) + "\nFigure 1", "ocr", None).lines is None


def test_whole_page_tasks_other_than_ocr() -> None:
    page = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(page).rectangle([50, 60, 250, 200], outline="black", width=2)
    table = estimated_positions(ink_mask(page), "<table></table>", "table", None)
    assert table.positions == "estimated" and table.lines[0]["bbox"] == [50, 60, 251, 201]
    assert estimated_positions(ink_mask(page), "anything", "ocr", "Describe the page").lines is None
    blank = Image.new("RGB", (400, 300), "white")
    assert estimated_positions(ink_mask(blank), "", "ocr", None).lines == []
