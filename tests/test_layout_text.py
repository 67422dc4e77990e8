"""layout/labels, blocks, otsl, markdown: what happens to a layout block between the detector and
the Markdown (docs/layout-text.md). Pure functions on hand-made inputs; no model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import smart_resize

import ppvl_batch
from ppvl_batch.engine.prompt import TASKS
from ppvl_batch.engine.vision import ImagePreprocessor
from ppvl_batch.layout.blocks import (
    BLOCK_MAX_PIXELS,
    BLOCK_MIN_PIXELS,
    CropError,
    block_input,
    crop_block,
    finish_text,
    normalize_math,
    strip_math_delimiters,
    trim_to_ink,
    truncate_repetition,
)
from ppvl_batch.layout.labels import (
    LABEL_IDS,
    LABELS,
    MARKDOWN_IGNORE_LABELS,
    SKIP_ORDER_LABELS,
    Block,
    block_format,
    block_task,
    prompt_table,
    reading_orders,
    saves_image,
)
from ppvl_batch.layout.markdown import (
    default_images_dir,
    image_filename,
    image_link,
    merge_tables_across_pages,
    page_markdown,
    pages_markdown,
    repeated_header_rows,
    title_level,
)
from ppvl_batch.layout.otsl import chart_to_html, otsl_to_html, parse_table_html, table_html, total_columns

# -- labels -------------------------------------------------------------------------------------


def test_labels_are_the_25_of_pp_doclayout():
    assert len(LABELS) == 25 and len(set(LABELS)) == 25
    assert (LABEL_IDS["abstract"], LABEL_IDS["display_formula"], LABEL_IDS["table"], LABEL_IDS["vision_footnote"]) == (0, 5, 21, 24)
    assert set(LABELS) >= SKIP_ORDER_LABELS and set(LABELS) >= MARKDOWN_IGNORE_LABELS


TEXT_LABELS = {
    "text", "paragraph_title", "doc_title", "abstract", "algorithm", "content", "figure_title",
    "vision_footnote", "reference", "reference_content", "vertical_text", "formula_number", "header",
    "footer", "number", "footnote", "aside_text",
}  # fmt: skip


def test_label_to_task_table_defaults():
    table = prompt_table()
    assert set(table) == set(LABELS)
    assert {label for label, task in table.items() if task == "ocr"} == TEXT_LABELS
    assert table["table"] == "table"
    assert table["display_formula"] == table["inline_formula"] == "formula"
    for label in ("image", "header_image", "footer_image", "chart", "seal"):  # saved, not read
        assert table[label] is None and block_format(label) == "image" and saves_image(label)
    assert all(task is None or task in TASKS for task in table.values())
    assert TASKS["table"] == "Table Recognition:" and TASKS["formula"] == "Formula Recognition:"


def test_charts_and_seals_only_when_enabled():
    assert block_task("chart", charts=True) == "chart" and block_format("chart", charts=True) == "html"
    assert not saves_image("chart", charts=True)
    assert block_task("seal", seals=True) == "seal" and block_format("seal", seals=True) == "text"
    assert saves_image("seal", seals=True)  # shown as its picture in Markdown even when read
    assert block_task("image", charts=True, seals=True) is None  # never read
    changed = {k for k, v in prompt_table(charts=True, seals=True).items() if v != prompt_table()[k]}
    assert changed == {"chart", "seal"}


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="unknown layout label 'picture'"):
        block_task("picture")
    with pytest.raises(ValueError, match="unknown block format"):
        Block(0, "text", (0, 0, 1, 1), 0.5, format="markdown")


def test_reading_orders_skip_unordered_and_ignored_labels():
    labels = ["header", "doc_title", "text", "table", "figure_title", "text", "number", "footer", "formula_number"]
    assert reading_orders(labels) == [None, 1, 2, None, None, 3, None, None, 4]
    assert reading_orders(labels, ignore=()) == [None, 1, 2, None, None, 3, 4, None, 5]


def test_block_record_round_trip():
    block = Block(3, "table", (10.7, 20.2, 300.9, 400.0), 0.912345, order=None, task="table", text="<table></table>",
                  format="html", finish_reason="stop", output_tokens=17)  # fmt: skip
    record = block.to_record()
    assert record == {
        "id": 3, "order": None, "label": "table", "bbox": [10, 20, 300, 400], "score": 0.9123, "task": "table",
        "text": "<table></table>", "format": "html", "image": None, "finish_reason": "stop", "output_tokens": 17,
        "error": None, "polygon": None, "text_source": None, "lines": None, "confidence": None, "min_token_prob": None,
    }  # fmt: skip
    assert Block.from_record(record).to_record() == record
    # a record from before this round's fields (polygon, text source, lines, confidence) still loads
    new = ("polygon", "text_source", "lines", "confidence", "min_token_prob")
    old = {k: v for k, v in record.items() if k not in new}
    assert Block.from_record(old).to_record() == record
    quad = Block(0, "text", (0, 0, 9, 9), 0.5, polygon=((4.0, 0), (9, 4), (5, 9), (0, 5)))
    assert Block.from_record(quad.to_record()).polygon == quad.to_record()["polygon"] == [[4, 0], [9, 4], [5, 9], [0, 5]]
    block.fail("crop", "empty crop")
    assert block.to_record()["error"] == {"type": "crop", "message": "empty crop"} and block.text == ""


# -- crops --------------------------------------------------------------------------------------


def noise_page(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("bbox", [(10, 20, 110, 70), (10.9, 20.99, 110.5, 70.2), (0, 0, 640, 480), (600.7, 5, 640, 479.9)])
def test_crop_is_the_numpy_slice_with_truncated_coordinates(bbox):
    page = noise_page()
    x0, y0, x1, y1 = (int(v) for v in bbox)
    assert np.array_equal(np.asarray(crop_block(page, bbox)), np.asarray(page)[y0:y1, x0:x1])


def test_crop_clamps_to_the_page_and_refuses_an_empty_box():
    page = noise_page()
    assert np.array_equal(np.asarray(crop_block(page, (-5, -3, 20, 10))), np.asarray(page)[0:10, 0:20])
    for bbox in [(50, 50, 50, 80), (700, 10, 720, 20), (30, 40, 20, 60)]:
        with pytest.raises(CropError, match="empty crop"):
            crop_block(page, bbox)


def test_polygon_crop_paints_outside_white():
    page = noise_page()
    # a triangle with its right angle at the top left of the box
    crop = np.asarray(crop_block(page, (100, 100, 200, 200), polygon=[(100, 100), (200, 100), (100, 200)]))
    source = np.asarray(page)[100:200, 100:200]
    assert np.array_equal(crop[5:40, 5:40], source[5:40, 5:40])  # well inside
    assert (crop[70:, 70:] == 255).all()  # well outside


def ink_page(width: int, height: int, ink: tuple[int, int, int, int], paper: int = 255, ink_level: int = 0) -> Image.Image:
    a = np.full((height, width, 3), paper, np.uint8)
    x0, y0, x1, y1 = ink
    a[y0:y1, x0:x1] = ink_level
    return Image.fromarray(a)


def test_trim_to_ink_cuts_to_the_ink_box():
    crop = ink_page(200, 80, (37, 11, 150, 60))
    assert trim_to_ink(crop).size == (113, 49)
    assert (np.asarray(trim_to_ink(crop)) == 0).all()
    # Contrast is stretched first: grey ink (120) on grey paper (180) is still ink, and
    # paper a little darker than white (230 on 240) is not.
    low = np.full((80, 200, 3), 240, np.uint8)
    low[:, :] = 230
    low[11:60, 37:150] = 120
    low[0:5, 0:200] = 240
    assert trim_to_ink(Image.fromarray(low)).size == (113, 49)


def test_trim_to_ink_threshold_is_200_after_stretching():
    a = np.full((50, 100, 3), 255, np.uint8)
    a[10:20, 10:20] = 0  # sets the stretch to 0..255
    a[30:40, 60:90] = 200  # exactly the threshold: ink
    a[5:45, 95:99] = 201  # just lighter: paper
    assert trim_to_ink(Image.fromarray(a)).size == (80, 30)


def test_trim_to_ink_keeps_blank_and_tiny_ink_crops():
    blank = ink_page(60, 40, (0, 0, 0, 0))
    assert trim_to_ink(blank) is blank
    speck = ink_page(60, 40, (30, 20, 32, 22))  # 2x2 ink
    assert trim_to_ink(speck) is speck


def accepted(image: Image.Image, factor: int) -> bool:
    try:
        smart_resize(image.height, image.width, factor=factor, min_pixels=BLOCK_MIN_PIXELS, max_pixels=BLOCK_MAX_PIXELS)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("size", [(3000, 12), (12, 3000), (250, 1), (5601, 28)])
def test_extreme_crops_are_padded_by_the_engines_preprocessor_at_the_block_limits(size):
    """block_input leaves a strip as cut; the preprocessor (engine/vision.pad_aspect_ratio, its
    patch and merge sizes from the bundle's config) takes it at the block limits by centring it
    on white paper, and keeps it a strip rather than squashing it."""
    from ppvl_batch.engine.vision import pad_aspect_ratio

    config = json.loads((Path(ppvl_batch.__file__).parent / "demo" / "preprocessor_config.json").read_text())
    preprocessor = ImagePreprocessor(config)
    page = noise_page(*size, seed=2)
    strip = block_input(page, "text", (0, 0, *size))
    assert np.array_equal(np.asarray(strip), np.asarray(page))  # no padding of our own
    assert not accepted(strip, preprocessor.factor)  # smart_resize alone refuses it
    padded = pad_aspect_ratio(strip, preprocessor.factor, BLOCK_MIN_PIXELS, BLOCK_MAX_PIXELS)
    assert accepted(padded, preprocessor.factor)
    w, h = size
    x, y = (padded.width - w) // 2, (padded.height - h) // 2
    a = np.asarray(padded)
    assert np.array_equal(a[y : y + h, x : x + w], np.asarray(strip))  # centred, unchanged
    outside = np.ones(a.shape[:2], bool)
    outside[y : y + h, x : x + w] = False
    assert (a[outside] == 255).all()
    prepared = preprocessor(strip, min_pixels=BLOCK_MIN_PIXELS, max_pixels=BLOCK_MAX_PIXELS)
    side = preprocessor.config.get("patch_size", 14)
    pixels = prepared.grid_h * prepared.grid_w * side * side
    assert BLOCK_MIN_PIXELS <= pixels <= BLOCK_MAX_PIXELS
    long_grid, short_grid = sorted((prepared.grid_h, prepared.grid_w), reverse=True)
    assert long_grid > 20 * short_grid and (prepared.grid_w > prepared.grid_h) == (w > h)  # still a strip


def test_block_input_trims_formulas_only():
    page = ink_page(400, 300, (120, 100, 260, 140))
    formula = block_input(page, "display_formula", (100, 80, 300, 160))
    text = block_input(page, "text", (100, 80, 300, 160))
    assert formula.size == (140, 40) and text.size == (200, 80)
    with pytest.raises(CropError):
        block_input(page, "text", (10, 10, 10, 50))


# -- answers ------------------------------------------------------------------------------------


def test_truncation_of_a_repeated_suffix_on_one_line():
    text = "The total is 12. " + "and again " * 30
    assert truncate_repetition(text) == "The total is 12."  # cut from the stripped text
    short_loop = "A long enough sentence that is not a loop at all, followed by " + "abcdefgh" * 5
    assert truncate_repetition(short_loop) == short_loop  # repeats cover less than half


def test_truncation_of_a_whole_line_repeated_unit_and_of_repeated_lines():
    assert truncate_repetition("xyz" * 20) == "xyz"
    assert truncate_repetition("ab" * 4, min_count=0) == "ab" * 4  # < 10 repeats
    lines = "\n".join(["header"] + ["| 0 | 0 | 0 |"] * 12)
    assert truncate_repetition(lines) == "| 0 | 0 | 0 |"
    varied = "\n".join(f"line {i}" for i in range(30))
    assert truncate_repetition(varied) == varied


def test_truncation_leaves_short_answers_and_tables_under_5000():
    assert truncate_repetition("ab" * 20) == "ab" * 20  # 40 chars < 50
    table = "<fcel>1<nl>" * 300  # 3300 chars of identical rows: a table may repeat itself
    assert finish_text("table", table)[0].count("<tr>") == 300
    assert truncate_repetition(table.replace("<nl>", "\n"), min_count=5000) == table.replace("<nl>", "\n")


@pytest.mark.parametrize(
    "raw, expected",
    [
        (r"where \(x^2\) is", "where $x^2$ is"),
        (r"sum \[ \sum_i a_i \] done", "sum $$\\sum_i a_i$$ done"),
        (r"\[\[ a \]\] and \( b \)", "$$a$$ and $b$"),
        (r"costs $5 and \(y\)", "costs $5 and $y$"),
        (r"nested \($z$\)", "nested $z$"),
        (r"a \(x", r"a \(x"),  # no pair: untouched
        ("plain $x$ text", "plain $x$ text"),
    ],
)
def test_math_delimiters(raw, expected):
    assert normalize_math(raw) == expected


def test_formula_answers_keep_bare_latex():
    assert strip_math_delimiters(r"\[ E = mc^2 \]") == "E = mc^2"
    assert strip_math_delimiters("$$a+b$$") == "a+b"
    assert strip_math_delimiters("$a$") == "a"
    assert strip_math_delimiters("x^2") == "x^2"
    assert strip_math_delimiters("$$a$$ $$b$$") == "$$a$$ $$b$$"
    assert finish_text("display_formula", r"\[\frac{1}{2}\]") == (r"\frac{1}{2}", "latex")
    assert finish_text("formula_number", r"\((1)\)") == ("(1)", "text")


def test_finish_text_per_label():
    assert finish_text("table", "<fcel>a<fcel>b<nl>") == ("<table><tr><td>a</td><td>b</td></tr></table>", "html")
    assert finish_text("table", "no table here") == ("no table here", "text")
    assert finish_text("chart", "year | sales\n2020 | 5", charts=True) == (
        "<table><thead><tr><th>year</th><th>sales</th></tr></thead><tbody><tr><td>2020</td><td>5</td></tr></tbody></table>",
        "html",
    )
    assert finish_text("text", r"Let \(a\) be") == ("Let $a$ be", "text")
    with pytest.raises(ValueError, match="not read by the model"):
        finish_text("chart", "x|y")


# -- OTSL -----------------------------------------------------------------------------------------


def test_otsl_plain_grid_and_escaping():
    assert otsl_to_html("<fcel>a & b<fcel> <c> <nl><fcel>1<fcel>2<nl>") == (
        "<table><tr><td>a &amp; b</td><td>&lt;c&gt;</td></tr><tr><td>1</td><td>2</td></tr></table>"
    )


def test_otsl_spans():
    # a 2x2 block (lcel right, ucel below, xcel inside), a colspan, a rowspan
    otsl = "<fcel>A<lcel><fcel>B<nl><ucel><xcel><fcel>C<nl><fcel>D<lcel><fcel>E<nl><fcel>F<fcel>G<ucel><nl>"
    assert otsl_to_html(otsl) == (
        '<table><tr><td rowspan="2" colspan="2">A</td><td>B</td></tr><tr><td>C</td></tr>'
        '<tr><td colspan="2">D</td><td rowspan="2">E</td></tr><tr><td>F</td><td>G</td></tr></table>'
    )


def test_otsl_empty_cells_and_a_last_row_without_nl():
    assert otsl_to_html("<ecel><fcel>x<nl><fcel>y<ecel>") == (
        "<table><tr><td></td><td>x</td></tr><tr><td>y</td><td></td></tr></table>"
    )


def test_otsl_ragged_rows_are_cut_or_padded_to_the_cheapest_width():
    # widths 3, 2, 3, 5 (the 5th a stray trailing <ecel>s): width 3 costs least
    otsl = "<fcel>a<fcel>b<fcel>c<nl><fcel>d<fcel>e<nl><fcel>f<fcel>g<fcel>h<nl><fcel>i<ecel><ecel><ecel><ecel><nl>"
    table = parse_table_html(otsl_to_html(otsl))
    assert [len(row) for row in table] == [3, 3, 3, 3]
    assert [c.html for c in table[1]] == ["d", "e", ""]
    # widths 2 and 4 cost the same at 2, 3 and 4: the narrowest wins
    assert [len(r) for r in parse_table_html(otsl_to_html("<fcel>a<fcel>b<nl><fcel>c<fcel>d<ecel><ecel><nl>"))] == [2, 2]
    # a row may never be cut before its last <fcel>: width 4 although 2 is cheaper
    assert [len(r) for r in parse_table_html(otsl_to_html("<fcel>a<nl><fcel>b<nl><ecel><ecel><ecel><fcel>z<nl>"))] == [4, 4, 4]


def test_otsl_inconsistent_spans_still_give_one_cell_per_position():
    # an <lcel> opening a row continues nothing; a rowspan stops at another cell's start
    table = parse_table_html(otsl_to_html("<lcel>q<fcel>a<nl><fcel>b<ucel><nl><ucel><fcel>c<nl>"))
    assert [[(c.html, c.rowspan, c.colspan) for c in row] for row in table] == [
        [("q", 1, 1), ("a", 2, 1)],
        [("b", 2, 1)],
        [("c", 1, 1)],
    ]
    assert total_columns(table) == 2


def test_otsl_without_tags_is_no_table():
    assert otsl_to_html("just words") is None and otsl_to_html("") is None and otsl_to_html("<nl><nl>") is None


def test_html_parse_round_trip_and_columns():
    html = '<table><tr><td rowspan="2" colspan="2">A</td><td>B</td></tr><tr><td>C</td></tr><tr><td>x</td><td>y</td><td>z</td></tr></table>'
    table = parse_table_html(html)
    assert table_html(table) == html and total_columns(table) == 3
    assert parse_table_html("<table><tr><td><table></table></td></tr></table>") is None
    assert parse_table_html("no table") is None


def test_chart_without_pipes_is_no_table():
    assert chart_to_html("a bar chart of nothing") is None
    assert chart_to_html("|a|b|\n|1|2|") == "<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td><td>2</td></tr></tbody></table>"


# -- Markdown -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "title, level",
    [
        ("Introduction", 1), ("1 Introduction", 1), ("1. Introduction", 1), ("2.3 Scope", 2), ("2.3.1. Detail", 3),
        ("1.2.3.4.5.6.7 Deep", 5), ("IV. Results", 1), ("iii Methods", 1), ("第三章 方法", 1), ("一、背景", 1),
        ("B. Appendix part", 2), ("(2) Case", 4), ("3) Case", 4), ("A Study of Things", 1), ("Vision", 1),
    ],
)  # fmt: skip
def test_title_levels(title, level):
    assert title_level(title) == level


def block(i: int, label: str, bbox=(0, 0, 100, 20), text: str = "", fmt: str | None = None, **kw) -> Block:
    return Block(i, label, bbox, 0.9, text=text, format=fmt or block_format(label), **kw)


def test_markdown_of_a_page():
    blocks = [
        block(0, "header", text="Journal of Tests, 2026"),
        block(1, "doc_title", (50, 40, 550, 80), "A Layout\nPipeline"),
        block(2, "paragraph_title", text="1 Intro"),
        block(3, "text", (40, 100, 290, 400), "Left column line one.\nLeft column line two."),  # left column
        block(4, "text", (310, 100, 560, 400), "Right column, with \\(x\\).", fmt="text"),  # right column
        block(5, "paragraph_title", text="1.1 Data"),
        block(6, "table", text="<table><tr><td>a</td></tr></table>"),
        block(7, "figure_title", text="Table 1: data"),
        block(8, "display_formula", text=r"E = mc^2"),
        block(9, "formula_number", text="(1)"),
        block(10, "image", image="page_images/p0001_010_image.png"),
        block(11, "chart", image="page_images/p0001_011_chart.png"),
        block(12, "seal", text="APPROVED", fmt="text", image="page_images/p0001_012_seal.png"),
        block(13, "footnote", text="1 A footnote."),
        block(14, "table", error={"type": "crop", "message": "no shape -- fits"}),
        block(15, "footer", text="Page 1"),
        block(16, "number", text="1"),
    ]
    blocks[4].text = normalize_math(blocks[4].text)
    assert page_markdown(blocks) == (
        "# A Layout Pipeline\n\n"
        "## 1 Intro\n\n"
        "Left column line one.\n\nLeft column line two.\n\n"
        "Right column, with $x$.\n\n"
        "### 1.1 Data\n\n"
        "<table><tr><td>a</td></tr></table>\n\n"
        "Table 1: data\n\n"
        "$$\nE = mc^2\n$$\n\n"
        "![](page_images/p0001_010_image.png)\n\n"
        "![](page_images/p0001_011_chart.png)\n\n"
        "![](page_images/p0001_012_seal.png)\n\n"
        "<!-- block 14 (table): crop: no shape - - fits -->"
    )
    everything = page_markdown(blocks, ignore=(), formula_numbers=True)
    assert everything.startswith("Journal of Tests, 2026\n\n# A Layout Pipeline")
    assert "$$\nE = mc^2 \\tag*{(1)}\n$$" in everything and everything.endswith("Page 1\n\n1")
    assert "(1)\n" not in everything  # the number went into the tag


def test_markdown_of_abstract_contents_and_empty_blocks():
    blocks = [
        block(0, "abstract", text="Abstract We study tables."),
        block(1, "content", text="1 Intro 1\n2 Method 3"),
        block(2, "text", text="   "),
        block(3, "image"),  # no saved file: nothing to link
        block(4, "algorithm", text="\nfor x in y:\n  pass\n"),
    ]
    assert page_markdown(blocks) == "## Abstract\n\nWe study tables.\n\n1 Intro 1  \n2 Method 3\n\nfor x in y:\n  pass"


# -- tables across pages ------------------------------------------------------------------------

HEAD = "<tr><td>name</td><td>qty</td></tr>"


def table_block(i: int, rows: str, bbox=(50, 100, 550, 700)) -> Block:
    return block(i, "table", bbox, f"<table>{rows}</table>")


def test_table_split_over_pages_is_merged_without_its_repeated_header():
    page1 = [block(0, "text", text="before"), table_block(1, HEAD + "<tr><td>a</td><td>1</td></tr>"), block(2, "footer", text="p1"), block(3, "number", text="1")]
    page2 = [block(0, "header", text="Report"), table_block(1, HEAD + "<tr><td>b</td><td>2</td></tr>", (52, 60, 548, 300)), block(2, "text", text="after")]
    merged = merge_tables_across_pages([page1, page2])
    assert merged[0][1].text == f"<table>{HEAD}<tr><td>a</td><td>1</td></tr><tr><td>b</td><td>2</td></tr></table>"
    assert merged[1][1].text == "" and merged[1][2].text == "after"
    assert page1[1].text.count("<tr>") == 2 and page2[1].text.count("<tr>") == 2  # inputs unchanged
    md = pages_markdown([page1, page2])
    assert md[1] == "after" and md[0].count("<tr>") == 3
    assert pages_markdown([page1, page2], merge_tables=False)[1].startswith("<table>")


def test_table_over_three_pages_ends_up_on_the_first():
    rows = [f"<tr><td>r{i}</td><td>{i}</td></tr>" for i in range(3)]
    pages = [[table_block(0, rows[0])], [table_block(0, rows[1])], [table_block(0, rows[2])]]
    merged = merge_tables_across_pages(pages)
    assert merged[0][0].text == f"<table>{''.join(rows)}</table>"
    assert merged[1][0].text == merged[2][0].text == ""


def test_continued_caption_may_precede_the_continuation():
    pages = [[table_block(0, HEAD)], [block(0, "figure_title", text="Table 2 (Continued)"), table_block(1, "<tr><td>x</td><td>y</td></tr>")]]
    assert merge_tables_across_pages(pages)[1][1].text == ""


@pytest.mark.parametrize(
    "page1, page2",
    [
        # widths differ by 10% or more
        ([table_block(0, HEAD)], [table_block(0, HEAD, (50, 0, 500, 100))]),
        # a paragraph after the table on the first page
        ([table_block(0, HEAD), block(1, "text", text="Notes.")], [table_block(0, HEAD)]),
        # a paragraph before the table on the next page
        ([table_block(0, HEAD)], [block(0, "text", text="New section."), table_block(1, HEAD)]),
        # other columns, and the rows do not line up either
        ([table_block(0, HEAD)], [table_block(0, "<tr><td>a</td><td>b</td><td>c</td></tr>")]),
        # a table that did not convert (text)
        ([table_block(0, HEAD)], [block(0, "table", (50, 100, 550, 700), "a | b", fmt="text")]),
    ],
)
def test_tables_that_do_not_continue_stay_apart(page1, page2):
    merged = merge_tables_across_pages([page1, page2])
    assert [b.text for b in merged[0] + merged[1]] == [b.text for b in page1 + page2]


def test_repeated_header_rows_need_the_same_cells():
    head = parse_table_html(f"<table>{HEAD}<tr><td>a</td><td>1</td></tr></table>")
    assert repeated_header_rows(head, parse_table_html(f"<table>{HEAD}<tr><td>a</td><td>2</td></tr></table>")) == 1
    assert repeated_header_rows(head, parse_table_html("<table><tr><td>n a m e</td><td>ｑｔｙ</td></tr></table>")) == 1
    assert repeated_header_rows(head, parse_table_html("<table><tr><td>name</td><td>qty</td><td>x</td></tr></table>")) == 0
    assert repeated_header_rows(head, parse_table_html('<table><tr><td>name</td><td colspan="2">qty</td></tr></table>')) == 0


def test_rows_that_line_up_merge_despite_a_different_total_width():
    # first table 3 columns wide through a colspan row; the continuation's rows are 2 cells,
    # like the first table's last row
    first = '<tr><td colspan="3">wide</td></tr><tr><td>a</td><td>b</td></tr>'
    merged = merge_tables_across_pages([[table_block(0, first)], [table_block(0, "<tr><td>c</td><td>d</td></tr>")]])
    assert merged[1][0].text == "" and merged[0][0].text.endswith("<tr><td>c</td><td>d</td></tr></table>")


def test_image_file_names_and_links(tmp_path: Path):
    md = tmp_path / "out" / "docs" / "a.pdf.md"
    assert default_images_dir(md) == tmp_path / "out" / "docs" / "a.pdf_images"
    name = image_filename(3, block(7, "image"))
    assert name == "p0003_007_image.png"
    assert image_link(md, default_images_dir(md) / name) == "a.pdf_images/p0003_007_image.png"
    assert image_link(md, tmp_path / "imgs" / name) == "../../imgs/p0003_007_image.png"
