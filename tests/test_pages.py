"""pages.py: documents -> RGB page images, and every failure mapped to its error type."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from makedocs import make_pdf, make_zero_page_pdf, text_image
from PIL import Image

from ppvl_batch.documents.pages import PageError, PageRanges, _os_error, file_sha256, open_document, to_rgb

MAX_PIXELS = 40_000


def open_doc(path: Path, **kw):
    kw.setdefault("max_pixels", MAX_PIXELS)
    return open_document(path, **kw)


def error_type(path: Path, **kw) -> str:
    with pytest.raises(PageError) as info, open_doc(path, **kw) as doc:
        for n in range(1, doc.page_count + 1):
            doc.render(n)
    return info.value.type


# ---------------------------------------------------------------------------- --pages


@pytest.mark.parametrize(
    "text, count, expected",
    [
        ("1-3,7,10-", 12, [1, 2, 3, 7, 10, 11, 12]),
        ("2", 5, [2]),
        ("4-", 3, []),
        ("3-9", 4, [3, 4]),
        ("5,1-2,2", 9, [1, 2, 5]),
        (" 1 - 2 , 4", 9, [1, 2, 4]),
    ],
)
def test_page_ranges(text: str, count: int, expected: list[int]) -> None:
    assert PageRanges.parse(text).select(count) == expected


@pytest.mark.parametrize("text", ["", "0", "3-1", "a", "1-2-3", "-4", "1,,2"])
def test_bad_page_ranges(text: str) -> None:
    with pytest.raises(ValueError):
        PageRanges.parse(text)


# ---------------------------------------------------------------------------- PDF


def test_pdf_pages_render_at_given_dpi(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", pages=3, size=(144, 108))
    with open_doc(pdf, dpi=36) as doc:
        assert doc.page_count == 3
        image = doc.render(2)
    assert image.mode == "RGB" and image.size == (72, 54)
    assert np.asarray(image).min() < 128  # the page's text was drawn


def test_pdf_auto_dpi_lands_near_max_pixels(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", pages=2, size=(612, 792))
    with open_doc(pdf, max_pixels=200_000) as doc:
        w, h = doc.render(1).size
    assert 0.97 * 200_000 <= w * h <= 200_000 * 1.01
    assert abs(w / h - 612 / 792) < 0.01


def test_pdf_password(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "locked.pdf", pages=2, password="s3cret")
    assert error_type(pdf) == "encrypted"
    assert error_type(pdf, password="wrong") == "encrypted"
    with open_doc(pdf, password="s3cret", dpi=20) as doc:
        assert doc.page_count == 2
        assert doc.render(2).size == (40, 30)


def test_pdf_without_pages_is_empty(tmp_path: Path) -> None:
    assert error_type(make_zero_page_pdf(tmp_path / "zero.pdf")) == "empty"


def test_damaged_pdfs(tmp_path: Path) -> None:
    (tmp_path / "junk.pdf").write_bytes(b"this is not a pdf at all\n" * 10)
    assert error_type(tmp_path / "junk.pdf") == "corrupt"
    # A PDF header on garbage is a PDF, whatever the file is called.
    (tmp_path / "mislabelled.png").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 4)
    assert error_type(tmp_path / "mislabelled.png") == "corrupt"


# ---------------------------------------------------------------------------- files


def test_missing_empty_unsupported(tmp_path: Path) -> None:
    assert error_type(tmp_path / "gone.pdf") == "missing"
    (tmp_path / "zero.png").write_bytes(b"")
    assert error_type(tmp_path / "zero.png") == "empty"
    (tmp_path / "notes.txt").write_text("hello\n")
    assert error_type(tmp_path / "notes.txt") == "unsupported"
    text_image().save(tmp_path / "icon.ico")  # PIL reads it, we do not
    assert error_type(tmp_path / "icon.ico") == "unsupported"
    (tmp_path / "garbage.jpg").write_bytes(b"\x00garbage" * 100)
    assert error_type(tmp_path / "garbage.jpg") == "corrupt"


def test_truncated_images(tmp_path: Path) -> None:
    for fmt, name in [("PNG", "t.png"), ("JPEG", "t.jpg")]:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, fmt)
        (tmp_path / name).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        assert error_type(tmp_path / name) == "truncated", fmt


def test_unreadable_and_directory(tmp_path: Path) -> None:
    assert error_type(tmp_path) == "unsupported"  # a directory passed where a file was expected
    assert _os_error(PermissionError(13, "Permission denied")).type == "unreadable"
    text_image().save(tmp_path / "x.png")
    (tmp_path / "x.png").chmod(0)
    if os.access(tmp_path / "x.png", os.R_OK):
        return  # running as root: permissions do not stop us, the mapping above is the check
    assert error_type(tmp_path / "x.png") == "unreadable"


def test_sha256_of_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    with pytest.raises(PageError) as info:
        file_sha256(tmp_path / "nope")
    assert info.value.type == "missing"


# ---------------------------------------------------------------------------- images


def test_multi_page_tiff_gives_every_frame(tmp_path: Path) -> None:
    frames = [text_image((60 + 10 * i, 40), f"p{i}") for i in range(3)]
    frames[0].save(tmp_path / "m.tiff", save_all=True, append_images=frames[1:])
    with open_doc(tmp_path / "m.tiff") as doc:
        assert doc.page_count == 3
        assert [doc.render(n).size for n in (1, 2, 3)] == [(60, 40), (70, 40), (80, 40)]


def test_animated_gif_and_webp_give_first_frame(tmp_path: Path) -> None:
    frames = [text_image((50, 30), str(i)).convert("P") for i in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    frames[0].convert("RGB").save(tmp_path / "a.webp", save_all=True, append_images=[f.convert("RGB") for f in frames[1:]])
    for name in ["a.gif", "a.webp"]:
        with open_doc(tmp_path / name) as doc:
            assert doc.page_count == 1
            assert doc.render(1).mode == "RGB"


@pytest.mark.parametrize("fmt, ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")])
def test_plain_formats(tmp_path: Path, fmt: str, ext: str) -> None:
    text_image((90, 50)).save(tmp_path / f"x.{ext}", fmt)
    with open_doc(tmp_path / f"x.{ext}") as doc:
        image = doc.render(1)
    assert image.mode == "RGB" and image.size == (90, 50)


def test_cmyk_jpeg_to_rgb(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32), (200, 30, 40)).convert("CMYK").save(tmp_path / "c.jpg", "JPEG", quality=95)
    with open_doc(tmp_path / "c.jpg") as doc:
        pixel = np.asarray(doc.render(1))[16, 16].astype(int)
    assert np.abs(pixel - [200, 30, 40]).max() < 20


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with open_doc(tmp_path / "g16.png") as doc:
        row = np.asarray(doc.render(1))[0, :, 0].tolist()
    assert row == [0, 128, 255]


def test_float_and_32_bit_modes() -> None:
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32))))[0, 0].tolist() == [128] * 3
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 200, np.int32))))[0, 0].tolist() == [200] * 3


def test_transparency_becomes_white_paper(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.putpixel((5, 5), (0, 0, 0, 255))
    rgba.save(tmp_path / "a.png")
    la = Image.new("LA", (10, 10), (0, 0))
    la.save(tmp_path / "la.png")
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    for name in ["a.png", "la.png", "p.png"]:
        with open_doc(tmp_path / name) as doc:
            pixels = np.asarray(doc.render(1))
        assert pixels[0, 0].tolist() == [255, 255, 255], name
    with open_doc(tmp_path / "a.png") as doc:
        assert np.asarray(doc.render(1))[5, 5].tolist() == [0, 0, 0]


def test_palette_without_transparency_keeps_colours(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30])
    palette.save(tmp_path / "p.gif")
    with open_doc(tmp_path / "p.gif") as doc:
        assert np.asarray(doc.render(1))[0, 0].tolist() == [10, 200, 30]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    image = text_image((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif)
    with open_doc(tmp_path / "r.jpg") as doc:
        assert doc.render(1).size == (40, 80)
