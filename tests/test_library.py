"""The library API (`Recognizer`) prepares images as `scan` does: EXIF rotation, transparency
onto white, any mode to RGB; aspect ratios over 200:1 are padded, never refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ppvl_batch.documents.pages import open_document
from ppvl_batch.engine.vision import PreparedImage
from ppvl_batch.recognizer import Recognizer

ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def rec(tiny_bundle) -> Iterator[Recognizer]:
    with Recognizer.load(tiny_bundle, threads=1) as r:
        yield r


def page(seed: int, size: tuple[int, int] = (90, 60)) -> Image.Image:
    """An upright RGB page: white paper with random dark ink blocks."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
    ink = rng.random((size[1], size[0])) < 0.3
    pixels[ink] = rng.integers(0, 120, (int(ink.sum()), 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def same(a: PreparedImage, b: PreparedImage) -> bool:
    return (a.grid_h, a.grid_w) == (b.grid_h, b.grid_w) and np.array_equal(a.pixel_values, b.pixel_values)


def test_exif_rotation_applied_as_scan_does(rec, tmp_path: Path):
    upright = page(1)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes, sideways
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to view"
    path = tmp_path / "sideways.png"
    stored.save(path, exif=exif.tobytes())

    opened = Image.open(path)
    assert opened.size == (60, 90)  # the file itself is sideways
    assert same(rec.prepare(opened), rec.prepare(upright))
    with open_document(path, max_pixels=rec.max_pixels) as document:  # scan's way of reading it
        assert same(rec.prepare(Image.open(path)), rec.prepare(document.render(1)))

    [from_file] = rec.recognize([Image.open(path)], max_new_tokens=4)
    [from_upright] = rec.recognize([upright], max_new_tokens=4)
    assert (from_file.text, from_file.width, from_file.height) == (from_upright.text, from_upright.width, from_upright.height)


def test_transparency_becomes_white_paper(rec, tmp_path: Path):
    upright = page(2)
    ink = np.asarray(upright).min(axis=2) < 255
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)  # transparent black everywhere ...
    rgba[ink, :3] = np.asarray(upright)[ink]
    rgba[ink, 3] = 255  # ... but the ink
    transparent = Image.fromarray(rgba, "RGBA")
    assert not same(rec.prepare(transparent.convert("RGB")), rec.prepare(upright))  # dropping alpha gives black paper
    assert same(rec.prepare(transparent), rec.prepare(upright))
    path = tmp_path / "transparent.png"
    transparent.save(path)
    with open_document(path, max_pixels=rec.max_pixels) as document:
        assert same(rec.prepare(Image.open(path)), rec.prepare(document.render(1)))


def test_16_bit_scaled_not_clipped(rec):
    grey = page(3).convert("L")
    deep = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # the same page at 16 bits
    assert deep.mode.startswith("I;16")
    assert same(rec.prepare(deep), rec.prepare(grey.convert("RGB")))


def test_extreme_aspect_ratio_is_padded_with_white(rec):
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import smart_resize

    strip = page(4, (3000, 2))  # 1500:1
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(2, 3000, factor=28, min_pixels=rec.min_pixels, max_pixels=rec.max_pixels)
    # the smallest paper within 200:1 is 3000 x 15 (ceil(3000 / 200)), the strip centred on it
    paper = Image.new("RGB", (3000, 15), (255, 255, 255))
    paper.paste(strip, (0, 6))
    prepared = rec.prepare(strip)
    assert same(prepared, rec.prepare(paper))
    [tall] = rec.recognize([strip.transpose(Image.Transpose.ROTATE_90)], max_new_tokens=2)
    assert tall.height > tall.width and tall.output_tokens >= 1


def test_very_long_strip_is_shrunk_before_padding(rec):
    """Padded at full size, a 200000 x 1 strip would be 200000 x 1000 pixels: it is scaled down
    first to about 4 x max_pixels (the preprocessor shrinks it to max_pixels anyway)."""
    from ppvl_batch.engine.vision import PAD_BUDGET_FACTOR, pad_aspect_ratio

    strip = Image.new("RGB", (200_000, 1), (0, 0, 0))
    padded = pad_aspect_ratio(strip, 28, rec.min_pixels, rec.max_pixels)
    assert padded.width / padded.height <= 200
    assert padded.width * padded.height <= PAD_BUDGET_FACTOR * rec.max_pixels * 1.01
    prepared = rec.prepare(strip)
    assert prepared.width * prepared.height <= rec.max_pixels  # (smart_resize checks the ratio of its input only)
