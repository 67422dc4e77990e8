"""A PDF page's own text layer (documents/text_layer.py, docs/text-layer.md): each kind of page
with its expected decision, and the text and line boxes against what was drawn."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pymupdf
import pytest
import text_pdfs
from PIL import Image

from ppvl_batch.documents.pages import open_document
from ppvl_batch.documents.text_layer import TextLayer, TextLayerError, read_text_layer
from ppvl_batch.documents.text_order import Char, VisualLine

ZOOM = 1.5  # the tests' "rendered page": 108 dpi


def reopen(doc: pymupdf.Document) -> pymupdf.Document:
    """The document as a reader gets it: saved and opened again."""
    return pymupdf.open("pdf", doc.tobytes())


def layer(page: pymupdf.Page) -> TextLayer:
    size = (page.rect * pymupdf.Matrix(ZOOM, ZOOM)).irect
    return read_text_layer(page, (size.width, size.height))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_lines(result: TextLayer, drawn: list[text_pdfs.Line], min_iou: float = 0.9) -> None:
    assert [line.text for line in result.lines] == [text for text, _ in drawn]
    for line, (text, box) in zip(result.lines, drawn):
        expected = tuple(v * ZOOM for v in box)
        assert iou(line.bbox, expected) >= min_iou, (text, line.bbox, expected)
        xs, ys = [x for x, _ in line.quad], [y for _, y in line.quad]
        assert (min(xs), min(ys), max(xs), max(ys)) == pytest.approx(line.bbox)


def font_page(doc: pymupdf.Document, text: str = "Damaged font text here") -> pymupdf.Page:
    page = doc.new_page(width=300, height=200)
    page.insert_text((20, 50), text, fontsize=12, fontname="dv", fontfile=str(text_pdfs.DEJAVU))
    return page


needs_dejavu = pytest.mark.skipif(not text_pdfs.DEJAVU.exists(), reason="needs fonts-dejavu-core (a TTF font)")


# -- the three versions of each page --------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(text_pdfs.BORN_DIGITAL))
def test_born_digital_page_is_trusted_with_the_lines_drawn(kind):
    doc = pymupdf.open()
    drawn = text_pdfs.BORN_DIGITAL[kind](doc)
    result = layer(reopen(doc)[0])
    assert result.trust.trusted, result.trust.reason
    assert result.trust.hidden == result.trust.undecoded == 0
    # CJK glyph boxes come from the font's own metrics, not the Latin ascender: a looser IoU
    assert_lines(result, drawn, min_iou=0.85 if kind == "cjk" else 0.9)
    assert result.text.split() == " ".join(text for text, _ in drawn).split()


@pytest.mark.parametrize("kind", sorted(text_pdfs.BORN_DIGITAL))
def test_scan_and_scan_with_invisible_ocr_layer_are_not_trusted(kind):
    source = pymupdf.open()
    drawn = text_pdfs.BORN_DIGITAL[kind](source)
    doc = pymupdf.open()
    text_pdfs.as_scan(source[0], doc)
    text_pdfs.as_scan(source[0], doc, ocr=drawn)
    doc = reopen(doc)
    scan, ocr = layer(doc[0]), layer(doc[1])
    assert not scan.trust.trusted and scan.trust.reason == "no text layer"
    assert not ocr.trust.trusted and "render mode 3" in ocr.trust.reason
    # MuPDF's alpha 0 for a span is texttrace's type 3: the two agree on every character
    type3 = sum(1 for span in doc[1].get_texttrace() if span["type"] == 3
                for ch in span["chars"] if not chr(ch[0]).isspace())
    assert ocr.trust.invisible == ocr.trust.hidden == ocr.trust.chars == type3 > 0
    assert ocr.text == "" and ocr.lines == []  # invisible text is never extracted


def test_scan_with_a_few_stamped_words_is_not_trusted():
    source = pymupdf.open()
    text_pdfs.letter(source)
    doc = pymupdf.open()
    page = text_pdfs.as_scan(source[0], doc)
    page.insert_text((400, 60), "PAID 2024-03-01", fontsize=12, color=(0.8, 0, 0))
    result = layer(reopen(doc)[0])
    assert not result.trust.trusted and "covers" in result.trust.reason
    assert result.trust.ink_coverage < 0.2
    assert result.text == "PAID 2024-03-01"


# -- text that does not match the page ---------------------------------------------------------


def test_white_text_on_white_is_not_trusted():
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=200)
    page.insert_text((20, 40), "Visible heading", fontsize=12)
    page.insert_text((20, 80), "white words nobody can read on this page at all", fontsize=10, color=(1, 1, 1))
    result = layer(reopen(doc)[0])
    assert not result.trust.trusted and "not visible" in result.trust.reason
    assert result.trust.invisible == 0 and result.trust.hidden == len("whitewordsnobodycanreadonthispageatall")
    assert result.text == "Visible heading"


def test_text_hidden_under_an_image_is_not_trusted():
    source = pymupdf.open()
    drawn = text_pdfs.letter(source)
    doc = pymupdf.open()
    page = doc.new_page(width=text_pdfs.A4[0], height=text_pdfs.A4[1])
    for text, (x0, _, _, y1) in drawn:  # the "OCR under the image" sandwich: ordinary text, then the scan
        page.insert_text((x0, y1 - 3), text, fontsize=11)
    page.insert_image(page.rect, stream=text_pdfs.scan_image(source[0]))
    result = layer(reopen(doc)[0])
    assert not result.trust.trusted and "not visible" in result.trust.reason
    assert result.trust.invisible == 0


def test_born_digital_text_on_a_background_image_is_trusted():
    """The image first, the text on top (a letterhead, a form): what the reader sees is the text."""
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=200)
    image = io.BytesIO()
    Image.new("RGB", (60, 40), (235, 240, 250)).save(image, "PNG")
    page.insert_image(page.rect, stream=image.getvalue())
    page.insert_text((20, 40), "Text over a pale background", fontsize=12)
    result = layer(reopen(doc)[0])
    assert result.trust.trusted, result.trust.reason


@needs_dejavu
def test_font_without_tounicode_is_not_trusted():
    doc = pymupdf.open()
    font_page(doc)
    doc = reopen(doc)
    font = next(x for x in range(1, doc.xref_length()) if doc.xref_get_key(x, "ToUnicode")[0] == "xref")
    doc.xref_set_key(font, "ToUnicode", "null")
    result = layer(reopen(doc)[0])
    assert not result.trust.trusted and "do not decode" in result.trust.reason
    assert set(result.text) == {"\ufffd"}


@needs_dejavu
def test_font_mapping_to_private_use_is_not_trusted():
    doc = pymupdf.open()
    font_page(doc)
    doc = reopen(doc)
    font = next(x for x in range(1, doc.xref_length()) if doc.xref_get_key(x, "ToUnicode")[0] == "xref")
    cmap = int(doc.xref_get_key(font, "ToUnicode")[1].split()[0])
    ranges = "".join(f"<{h:02X}00> <{h:02X}FF> <{0xE000 + h * 256:04X}>\n" for h in range(16))
    doc.update_stream(cmap, (b"/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
                             b"/CMapName /Broken def\n/CMapType 2 def\n1 begincodespacerange\n<0000> <FFFF>\n"
                             b"endcodespacerange\n16 beginbfrange\n" + ranges.encode() +
                             b"endbfrange\nendcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n"))
    result = layer(reopen(doc)[0])
    assert not result.trust.trusted and "do not decode" in result.trust.reason
    assert all(0xE000 <= ord(c) <= 0xF8FF for c in result.text.replace(" ", ""))


@pytest.mark.parametrize(("text", "trusted"), [
    ("\uf0b7 " + "a list item in words " * 4, True),  # one Symbol-font bullet (mapped to private use)
    ("\uf0b7\uf0b7\uf0b7 " + "a list item in words " * 4, False),  # a run of UNDECODED_RUN
    ("\ufffd " * 2 + "a list item in words " * 4, False),  # 2 of 66: over UNDECODED_SHARE
])
def test_undecoded_characters_are_tolerated_only_alone_and_rare(text, trusted):
    quad = ((0.0, 0.0), (5.0, 0.0), (5.0, 10.0), (0.0, 10.0))
    line = VisualLine(0, (1.0, 0.0), [Char(c, quad, True) for c in text])
    ink = np.ones((10, 10), bool)
    assert TextLayer._decide([line], ink, ink).trusted is trusted


def test_text_outside_the_page_box_is_dropped():
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    page.insert_text((20, 40), "Inside the page", fontsize=12)
    page.insert_text((500, 40), "beyond the media box", fontsize=12)
    page.insert_text((20, 280), "cut off by the crop box", fontsize=12)
    page.set_cropbox(pymupdf.Rect(0, 0, 400, 200))
    result = layer(reopen(doc)[0])
    assert result.trust.trusted, result.trust.reason
    assert result.text == "Inside the page"
    assert result.trust.chars == len("Insidethepage")


# -- order and characters -----------------------------------------------------------------------


def test_text_drawn_in_reverse_order_reads_in_reading_order():
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    helv = pymupdf.Font("helv")
    writer = pymupdf.TextWriter(page.rect)
    glyphs, x = [], 20.0
    for ch in "backwards":  # each glyph placed on its own, last glyph first
        glyphs.append((x, ch))
        x += helv.text_length(ch, 12)
    for x, ch in reversed(glyphs):
        writer.append((x, 120), ch, fontsize=12)
    writer.write_text(page)
    for x, word in reversed([(20, "words"), (70, "drawn"), (120, "right"), (160, "to"), (180, "left")]):
        page.insert_text((x, 80), word, fontsize=12)
    page.insert_text((20, 160), "last line", fontsize=12)  # lines bottom first
    page.insert_text((20, 40), "first line", fontsize=12)
    result = layer(reopen(doc)[0])
    assert result.trust.trusted, result.trust.reason
    assert [line.text for line in result.lines] == ["first line", "words drawn right to left", "backwards", "last line"]


@needs_dejavu
def test_ligatures_are_expanded():
    doc = pymupdf.open()
    font_page(doc, "\ufb01ne \ufb02ow, e\ufb03cient")
    result = layer(reopen(doc)[0])
    assert result.trust.trusted, result.trust.reason
    assert result.text == "fine flow, efficient"


def test_line_end_hyphens_are_kept_as_drawn():
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=200)
    page.insert_text((20, 40), "The archive keeps infor-", fontsize=12)
    page.insert_text((20, 55), "mation about well-", fontsize=12)
    page.insert_text((20, 70), "known sources.", fontsize=12)
    result = layer(reopen(doc)[0])
    assert result.text == "The archive keeps infor-\nmation about well-\nknown sources."


def test_sideways_text_reads_along_its_own_lines():
    """Text written on the unrotated page of a /Rotate 90 page: the reader sees it turned."""
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=200)
    for i, text in enumerate(["one", "two", "three"]):
        page.insert_text((20, 40 + 20 * i), text, fontsize=12)
    page.set_rotation(90)
    result = layer(reopen(doc)[0])
    assert result.width < result.height  # rendered as the reader sees it: 200 x 300 pt
    assert [line.text for line in result.lines] == ["one", "two", "three"]
    # the first line (top of the unrotated page) is rightmost on the rotated one
    assert result.lines[0].bbox[0] > result.lines[1].bbox[0] > result.lines[2].bbox[0]
    assert result.lines[0].bbox[3] - result.lines[0].bbox[1] > result.lines[0].bbox[2] - result.lines[0].bbox[0]


# -- regions (layout blocks) ---------------------------------------------------------------------


def test_region_takes_the_text_inside_a_block_box():
    doc = pymupdf.open()
    drawn = text_pdfs.two_columns(doc)
    result = layer(reopen(doc)[0])
    left = [(t, b) for t, b in drawn[1:] if b[0] < 300]
    box = [v * ZOOM for v in (60, 110, 300, 800)]
    region = result.region(box)
    assert region.trust.trusted, region.trust.reason
    assert [line.text for line in region.lines] == [t for t, _ in left]
    assert region.text == "\n".join(t for t, _ in left)


def test_region_over_a_picture_is_not_trusted_while_the_text_block_is():
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=400)
    page.insert_text((20, 40), "Caption text above a photograph of the archive", fontsize=11)
    rng = np.random.default_rng(0)
    photo = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 160), dtype=np.uint8), "L").save(photo, "PNG")
    page.insert_image(pymupdf.Rect(20, 60, 380, 380), stream=photo.getvalue())
    result = layer(reopen(doc)[0])
    assert not result.trust.trusted and "covers" in result.trust.reason
    text_block = result.region([v * ZOOM for v in (10, 20, 390, 50)])
    picture = result.region([v * ZOOM for v in (20, 60, 380, 380)])
    assert text_block.trust.trusted and text_block.text == "Caption text above a photograph of the archive"
    assert not picture.trust.trusted and picture.trust.reason == "no text layer"


# -- through the document --------------------------------------------------------------------------


def test_pdf_document_text_layer_matches_its_render(tmp_path):
    doc = pymupdf.open()
    text_pdfs.letter(doc)
    text_pdfs.rotated(doc)
    path = tmp_path / "mixed.pdf"
    doc.save(path)
    with open_document(path, max_pixels=1_003_520) as opened:
        for number in (1, 2):
            image = opened.render(number)
            result = opened.text_layer(number)
            assert result is not None and result.trust.trusted
            assert (result.width, result.height) == image.size
            assert result.page_size_pt == pytest.approx((doc[number - 1].rect.width, doc[number - 1].rect.height))
            grey = np.asarray(image.convert("L"))
            for line in result.lines:  # each box holds ink of the rendered page
                x0, y0, x1, y1 = (int(v) for v in line.bbox)
                assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
                assert grey[y0:y1, x0:x1].min() < 100
    fields = result.record_fields()
    assert fields["positions"] == "pdf" and fields["text_source"] == "pdf" and fields["confidence"] is None
    assert fields["lines"][0]["text"] == result.lines[0].text and len(fields["lines"][0]["quad"]) == 4
    assert pickle.loads(pickle.dumps(result)).text == result.text  # crosses process boundaries (Ray)


def test_images_have_no_text_layer(tmp_path):
    path = tmp_path / "page.png"
    Image.new("RGB", (50, 40), "white").save(path)
    with open_document(path, max_pixels=1_003_520) as opened:
        assert opened.text_layer(1) is None


def test_extraction_that_raises_is_reported_for_the_model_to_read(tmp_path, monkeypatch):
    doc = pymupdf.open()
    text_pdfs.letter(doc)
    path = tmp_path / "letter.pdf"
    doc.save(path)

    def broken(*args, **kwargs):
        raise RuntimeError("code=2: cannot find font resource\nmore detail")

    monkeypatch.setattr(pymupdf.Page, "get_text", broken)
    with open_document(path, max_pixels=1_003_520) as opened:
        with pytest.raises(TextLayerError, match="^text layer unreadable: RuntimeError: code=2: cannot find font resource$"):
            opened.text_layer(1)
        assert opened.render(1).size[0] > 0  # the page itself still renders for the model
