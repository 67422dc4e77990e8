"""outputs/pdf.py: the searchable PDF (text layer on PDF pages and on images), PDF/A, bad inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from outputs_helpers import (
    LINES,
    blank_record,
    failed_record,
    line,
    ok_record,
    records_for_pdf,
    rotated_line,
    sample_pdf,
)
from PIL import Image

from ppvl_batch.documents.pages import open_document
from ppvl_batch.errors import OutputError
from ppvl_batch.outputs import PdfaError, PdfWriter, write_pdf
from ppvl_batch.outputs.pdffont import font_program

ROOT = Path(__file__).resolve().parents[1]


def pixels(page: pymupdf.Page, dpi: int) -> np.ndarray:
    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
    return np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, 3)


def normalized(text: str) -> str:
    return " ".join(text.split())


def visual(page: pymupdf.Page, rect: pymupdf.Rect) -> pymupdf.Rect:
    """A search hit (unrotated page coordinates) as seen on the page (page.rect coordinates)."""
    return rect * page.rotation_matrix


def inside(hit: pymupdf.Rect, box: tuple[float, float, float, float], tolerance: float = 2.0) -> bool:
    return (hit.x0 >= box[0] - tolerance and hit.y0 >= box[1] - tolerance
            and hit.x1 <= box[2] + tolerance and hit.y1 <= box[3] + tolerance)


def test_the_font_file_is_what_the_tool_builds() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import glyphless_font

    assert font_program() == glyphless_font.build()


def test_pdf_pages_keep_their_pixels_and_gain_the_record_text(tmp_path: Path) -> None:
    source = sample_pdf(tmp_path / "in.pdf")
    records = records_for_pdf(source)
    target = tmp_path / "out" / "in.pdf"
    PdfWriter().write(records, source, target)
    before, after = pymupdf.open(source), pymupdf.open(target)
    assert after.page_count == before.page_count
    for old, new, record in zip(before, after, records):
        assert (new.rotation, new.rect, new.cropbox) == (old.rotation, old.rect, old.cropbox)
        assert len(new.annots() and list(new.annots())) == 1
        for dpi in (72, 150):
            assert np.array_equal(pixels(old, dpi), pixels(new, dpi)), (new.number, dpi)
        assert normalized(new.get_text()) == normalized(record["text"])
        # every word is found inside its line's box (record pixels -> points)
        sx, sy = new.rect.width / record["width"], new.rect.height / record["height"]
        for entry in record["lines"]:
            x0, y0, x1, y1 = entry["bbox"]
            box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
            for word in entry["text"].split():
                hits = [visual(new, r) for r in new.search_for(word)]
                assert any(inside(hit, box) for hit in hits), (new.number, word, hits, box)


def test_the_original_content_streams_are_kept_byte_for_byte(tmp_path: Path) -> None:
    source = sample_pdf(tmp_path / "in.pdf")
    write_pdf(records_for_pdf(source), source, tmp_path / "out.pdf")
    before, after = pymupdf.open(source), pymupdf.open(tmp_path / "out.pdf")
    for old, new in zip(before, after):
        old_streams = [before.xref_stream(x) for x in old.get_contents()]
        new_streams = [after.xref_stream(x) for x in new.get_contents()]
        assert new_streams[0] == b"q\n" and new_streams[1:-1] == old_streams
        assert new_streams[-1].startswith(b"\nQ\nBT 3 Tr")  # invisible text, after the page's own


def test_text_is_invisible_even_over_a_page_with_its_own_text(tmp_path: Path) -> None:
    source = sample_pdf(tmp_path / "in.pdf", pages=1, own_text=True)
    records = records_for_pdf(source)
    write_pdf(records, source, tmp_path / "out.pdf")
    old, new = pymupdf.open(source)[0], pymupdf.open(tmp_path / "out.pdf")[0]
    assert np.array_equal(pixels(old, 150), pixels(new, 150))
    # the page's own text is kept, the layer's text follows it
    assert normalized(new.get_text()) == normalized("printed words " + records[0]["text"])


def test_rotated_quads_are_drawn_rotated(tmp_path: Path) -> None:
    source = sample_pdf(tmp_path / "in.pdf", pages=1)
    tilted = rotated_line("tilted words here", (100, 400), 400, 30, 20)
    records = [ok_record(1, 800, 600, [line("flat line", (60, 50, 460, 80)), tilted])]
    write_pdf(records, source, tmp_path / "out.pdf")
    page = pymupdf.open(tmp_path / "out.pdf")[0]
    assert normalized(page.get_text()) == "flat line tilted words here"
    directions = [ln["dir"] for b in page.get_text("dict")["blocks"] for ln in b["lines"]]
    assert directions[0] == pytest.approx((1, 0), abs=1e-3)
    # text space y points up, so a baseline rising on the page has a negative y step in page coordinates
    assert directions[1] == pytest.approx((np.cos(np.radians(20)), -np.sin(np.radians(20))), abs=1e-3)
    x0, y0, x1, y1 = (v / 2 for v in tilted["bbox"])
    for word in ("tilted", "words", "here"):
        assert any(inside(hit, (x0, y0, x1, y1), 3) for hit in page.search_for(word)), word


def test_failed_and_blank_pages_stay_without_text(tmp_path: Path) -> None:
    source = sample_pdf(tmp_path / "in.pdf")
    records = records_for_pdf(source)
    records[1] = failed_record(2)
    records[2] = blank_record(3, records[2]["width"], records[2]["height"])
    write_pdf(records, source, tmp_path / "out.pdf")
    before, after = pymupdf.open(source), pymupdf.open(tmp_path / "out.pdf")
    assert normalized(after[0].get_text()) == normalized(records[0]["text"])
    for n in (1, 2):
        assert after[n].get_text() == ""
        assert [after.xref_stream(x) for x in after[n].get_contents()] == [
            before.xref_stream(x) for x in before[n].get_contents()]


def test_a_record_without_lines_fills_the_page_ink(tmp_path: Path) -> None:
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    page.draw_rect(pymupdf.Rect(100, 80, 300, 200), fill=(0, 0, 0))
    doc.save(tmp_path / "in.pdf")
    record = ok_record(1, 800, 600, None, text="first row\nsecond row")
    write_pdf([record], tmp_path / "in.pdf", tmp_path / "out.pdf")
    page = pymupdf.open(tmp_path / "out.pdf")[0]
    assert page.get_text().split("\n")[:2] == ["first row", "second row"]
    for word in ("first", "second"):
        assert all(inside(hit, (100, 80, 300, 200), 4) for hit in page.search_for(word))
    assert page.search_for("first")[0].y1 <= page.search_for("second")[0].y0 + 1  # rows stacked in order


def test_layout_blocks_give_the_layer_and_blocks_read_from_the_pdf_are_left_alone(tmp_path: Path) -> None:
    source = sample_pdf(tmp_path / "in.pdf", pages=1)
    blocks = [
        {"label": "doc_title", "bbox": [60, 40, 500, 90], "text": "A Title", "format": "text"},
        {"label": "text", "bbox": [60, 100, 500, 200], "text": "from the file", "format": "text", "text_source": "pdf"},
        {"label": "table", "bbox": [60, 300, 500, 400], "format": "html",
         "text": "<table><tr><td>a&amp;b</td><td>c</td></tr><tr><td>d</td></tr></table>"},
        {"label": "image", "bbox": [60, 420, 200, 500], "text": "", "format": "image"},
        {"label": "text", "bbox": [60, 500, 500, 580], "text": "given lines", "format": "text",
         "lines": [line("given lines", (70, 510, 300, 540))]},
    ]
    record = ok_record(1, 800, 600, None, text="# A Title ...", blocks=blocks)
    write_pdf([record], source, tmp_path / "out.pdf")
    page = pymupdf.open(tmp_path / "out.pdf")[0]
    assert normalized(page.get_text()) == "A Title a&b c d given lines"
    assert all(inside(hit, (35, 255, 150, 270), 2) for hit in page.search_for("given"))


def test_one_record_writes_that_page_alone(tmp_path: Path) -> None:
    source = sample_pdf(tmp_path / "in.pdf")
    record = records_for_pdf(source)[2]
    write_pdf([record], source, tmp_path / "out.pdf")
    out = pymupdf.open(tmp_path / "out.pdf")
    assert out.page_count == 1 and normalized(out[0].get_text()) == normalized(record["text"])
    assert np.array_equal(pixels(pymupdf.open(source)[2], 72), pixels(out[0], 72))


def image_records(path: Path) -> list[dict]:
    """Records for every frame of an image as the scan renders them (EXIF orientation applied)."""
    with open_document(path, max_pixels=1 << 24) as doc:
        out = []
        for n in range(1, doc.page_count + 1):
            frame = doc.render(n)
            w, h = frame.size
            lines = [line(f"frame {n} words", (w * 0.1, h * 0.1, w * 0.6, h * 0.2)),
                     line("漢字 Ωμέγα", (w * 0.1, h * 0.5, w * 0.5, h * 0.6))]
            out.append(ok_record(n, w, h, lines))
    return out


def drawn_image(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", size, (250, 248, 240))
    array = np.asarray(image).copy()
    array[size[1] // 4 : size[1] // 2, size[0] // 8 : size[0] // 3] = (20, 40, 200)
    array[size[1] // 2 :, size[0] // 2 :, 0] = (np.arange(size[0] - size[0] // 2) * 2 % 256).astype(np.uint8)[None, :]
    return Image.fromarray(array).convert(mode)


@pytest.mark.parametrize("kind", ["png-rgb-200dpi", "png-grey-nodpi", "png-palette", "png-alpha", "jpeg-exif6",
                                  "jpeg-exif2", "tiff-2-frames"])
def test_image_inputs_become_pages_of_their_physical_size(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("in.jpg" if kind.startswith("jpeg") else "in.tif" if kind.startswith("tiff") else "in.png")
    image = drawn_image((240, 160))
    dpi = (200, 200) if kind == "png-rgb-200dpi" else None
    if kind == "png-grey-nodpi":
        image.convert("L").save(path)
    elif kind == "png-palette":
        image.convert("P").save(path)
    elif kind == "png-alpha":
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(image.size))
        rgba.save(path, dpi=(150, 150))
        dpi = (150, 150)
    elif kind.startswith("jpeg"):
        exif = Image.Exif()
        exif[0x0112] = 6 if kind == "jpeg-exif6" else 2
        image.save(path, quality=92, exif=exif, dpi=(100, 100))
        dpi = (100, 100)
    elif kind.startswith("tiff"):
        image.save(path, save_all=True, append_images=[drawn_image((160, 240), "L")], dpi=(120, 120))
        dpi = (120, 120)
    else:
        image.save(path, dpi=dpi)
    records = image_records(path)
    write_pdf(records, path, tmp_path / "out.pdf")
    out = pymupdf.open(tmp_path / "out.pdf")
    assert out.page_count == len(records)
    resolution = dpi[0] if dpi else 300
    with open_document(path, max_pixels=1 << 24) as doc:
        for page, record in zip(out, records):
            frame = np.asarray(doc.render(record["page"]))
            assert (page.rect.width, page.rect.height) == pytest.approx(
                (record["width"] * 72 / resolution, record["height"] * 72 / resolution), rel=1e-3)
            rendered = pixels(page, resolution)
            assert rendered.shape == frame.shape
            diff = np.abs(rendered.astype(int) - frame.astype(int))
            # lossless: the same pixels (JPEG: two decoders, whose chroma upsampling differs at sharp edges)
            if kind.startswith("jpeg"):
                assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 12, (kind, diff.mean())
            else:  # transparency: MuPDF's blend over the white page and PIL's round differently
                assert diff.max() <= (3 if kind == "png-alpha" else 1), (kind, diff.max())
            assert normalized(page.get_text()) == normalized(record["text"])
            sx = page.rect.width / record["width"]
            for entry in record["lines"]:
                box = tuple(v * sx for v in entry["bbox"])
                for word in entry["text"].split():
                    assert any(inside(hit, box) for hit in page.search_for(word)), (word, box)
    if kind == "jpeg-exif6":  # passed through as it is, rotated by the page
        xref = out[0].get_images()[0][0]
        assert out.extract_image(xref)["image"] == path.read_bytes()


def test_an_encrypted_pdf_needs_its_password(tmp_path: Path) -> None:
    source = sample_pdf(tmp_path / "plain.pdf", pages=1)
    doc = pymupdf.open(source)
    doc.save(tmp_path / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="owner")
    records = records_for_pdf(source)
    with pytest.raises(OutputError, match="encrypted"):
        write_pdf(records, tmp_path / "locked.pdf", tmp_path / "out.pdf")
    assert not (tmp_path / "out.pdf").exists() and not list(tmp_path.glob(".out.pdf*"))
    write_pdf(records, tmp_path / "locked.pdf", tmp_path / "out.pdf", password="pw")
    out = pymupdf.open(tmp_path / "out.pdf")
    assert out.needs_pass and out.authenticate("pw")  # the output keeps the input's encryption
    assert normalized(out[0].get_text()) == normalized(records[0]["text"])


def test_a_damaged_pdf_and_an_unwritable_target_raise_output_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 4)
    record = ok_record(1, 800, 600, [line("x", (0, 0, 10, 10))])
    with pytest.raises(OutputError, match="cannot be opened|no page"):
        write_pdf([record], junk, tmp_path / "out.pdf")
    source = sample_pdf(tmp_path / "in.pdf", pages=1)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write"):
        write_pdf(records_for_pdf(source), source, tmp_path / "a-file" / "out.pdf")


def test_pdfa_is_written_and_validated(tmp_path: Path) -> None:
    pdfa = pytest.importorskip("pikepdf.pdfa")
    path = tmp_path / "scan.png"
    drawn_image((300, 200)).save(path, dpi=(150, 150))
    records = image_records(path)
    write_pdf(records, path, tmp_path / "out.pdf", pdfa=True)
    assert pdfa.validate_written(tmp_path / "out.pdf", "2b").passed
    page = pymupdf.open(tmp_path / "out.pdf")[0]
    assert normalized(page.get_text()) == normalized(records[0]["text"])
    # a PDF input too (its pages, annotations included, made conforming by pikepdf's preparation)
    source = sample_pdf(tmp_path / "in.pdf")
    records = records_for_pdf(source)
    write_pdf(records, source, tmp_path / "in.out.pdf", pdfa=True)
    assert pdfa.validate_written(tmp_path / "in.out.pdf", "2b").passed
    out = pymupdf.open(tmp_path / "in.out.pdf")
    assert [normalized(p.get_text()) for p in out] == [normalized(r["text"]) for r in records]


def test_pdfa_refused_leaves_the_plain_pdf(tmp_path: Path) -> None:
    pytest.importorskip("pikepdf.pdfa")
    source = sample_pdf(tmp_path / "plain.pdf", pages=1)
    pymupdf.open(source).save(tmp_path / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw")
    records = records_for_pdf(source)
    with pytest.raises(PdfaError, match="encrypt"):
        write_pdf(records, tmp_path / "locked.pdf", tmp_path / "out.pdf", pdfa=True, password="pw")
    out = pymupdf.open(tmp_path / "out.pdf")
    assert out.authenticate("pw") and normalized(out[0].get_text()) == normalized(records[0]["text"])
    assert not list(tmp_path.glob(".out.pdf*"))


def test_the_sample_lines_reach_beyond_the_bmp() -> None:
    # the sample's scripts: Latin, CJK, Greek, LaTeX with a character beyond the BMP (𝑥, U+1D465)
    assert any(ord(c) > 0xFFFF for text, _ in LINES for c in text)
