"""The real layout detector (tiny PP-DocLayoutV3 of the real class) in the parser, on the tiny
bundle: the blocks the parser reads are the detector's kept blocks, each read as the recognizer
reads that crop alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ppvl_batch.layout.blocks import BLOCK_MAX_PIXELS, BLOCK_MIN_PIXELS, finish_text
from ppvl_batch.layout.detector import LayoutDetector
from ppvl_batch.layout.parser import DocumentParser, ParserOptions
from ppvl_batch.layout.postprocess import LayoutRules
from ppvl_batch.recognizer import Recognizer

MAX_NEW = 8


@pytest.fixture(scope="module")
def layout_v3(layout_v3_dir) -> Path:
    torch.set_num_threads(1)  # the tiny layout model runs much faster on one thread of busy cores
    return layout_v3_dir


def page(seed: int) -> Image.Image:
    image = Image.new("RGB", (400, 560), "white")
    draw = ImageDraw.Draw(image)
    for n in range(6):
        draw.text((40, 40 + 60 * n), f"line {n} seed {seed}", fill="black")
    return image


def test_the_layout_detector_drives_the_parser(tiny_bundle, layout_v3) -> None:
    detector = LayoutDetector.load(layout_v3).with_rules()
    assert detector.rules == LayoutRules.for_version("v3")
    pages = [page(0), page(1)]
    expected = detector.detector.blocks(pages)
    assert all(expected), "the confident tiny model must find blocks on every page"
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32") as rec:
        parsed = DocumentParser(rec, detector, ParserOptions(max_new_tokens=MAX_NEW)).parse(pages)
        for image, result, boxes in zip(pages, parsed, expected):
            assert [(b.label, b.bbox, b.order) for b in result.blocks] == [(b.label, b.bbox, b.order) for b in boxes]
            for block in result.blocks:
                x0, y0, x1, y1 = block.bbox
                prepared = rec.preprocessor(Image.fromarray(np.asarray(image)[y0:y1, x0:x1]),
                                            min_pixels=BLOCK_MIN_PIXELS, max_pixels=BLOCK_MAX_PIXELS)
                [encoded] = rec.encode([prepared])
                alone = rec.decode(encoded, "ocr", max_new_tokens=MAX_NEW)
                assert (block.task, block.error) == ("ocr", None)
                assert (block.text, block.format) == finish_text("text", alone.text)
                assert block.output_tokens == alone.output_tokens
            assert result.markdown == "\n\n".join(b.text for b in result.blocks if b.text)


def test_rules_nothing_passes_leave_an_empty_page(tiny_bundle, layout_v3) -> None:
    strict = LayoutRules.for_version("v3", default_threshold=1.0)
    detector = LayoutDetector.load(layout_v3).with_rules(strict)
    with Recognizer.load(tiny_bundle, quant="F32", dtype="fp32", kv_type="f32") as rec:
        [result] = DocumentParser(rec, detector).parse([page(0)])
    assert (result.blocks, result.markdown, result.output_tokens) == ([], "", 0)


def test_ask_layout_and_the_library_give_scans_page(layout_bundle, tmp_path, monkeypatch) -> None:
    """One page three ways: `scan` (layout mode), `ask --layout`, DocumentParser.for_recognizer."""
    import orjson
    from click.testing import CliRunner

    from ppvl_batch.cli import main

    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    page(3).save(tmp_path / "p.png")
    scanned = CliRunner().invoke(main, ["scan", "p.png", "-o", "out.jsonl", "--model", str(layout_bundle), "--max-new-tokens", "6"])
    assert scanned.exit_code == 0, scanned.output
    [record] = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert record["blocks"] and record["text"]

    asked = CliRunner().invoke(main, ["ask", "-i", "p.png", "--layout", "--model", str(layout_bundle), "--max-tokens", "6"])
    assert asked.exit_code == 0, asked.output
    assert asked.stdout == record["text"] + "\n"

    with Recognizer.load(layout_bundle, max_new_tokens=6) as rec:
        [parsed] = DocumentParser.for_recognizer(rec, ParserOptions(max_new_tokens=6)).parse([Image.open(tmp_path / "p.png")])
    assert [b.to_record() for b in parsed.blocks] == record["blocks"]
    assert (parsed.markdown, parsed.output_tokens) == (record["text"], record["output_tokens"])


def test_ask_layout_refuses_what_it_cannot_do(layout_bundle, tiny_bundle, tmp_path) -> None:
    from click.testing import CliRunner

    from ppvl_batch.cli import main
    from ppvl_batch.errors import ExitCode

    page(0).save(tmp_path / "p.png")
    image = str(tmp_path / "p.png")
    served = CliRunner().invoke(main, ["ask", "-i", image, "--layout", "--server", "http://127.0.0.1:9"])
    assert served.exit_code == ExitCode.USAGE and "--layout does not take --server" in served.stderr
    bare = CliRunner().invoke(main, ["ask", "-i", image, "--layout", "--model", str(tiny_bundle)])
    assert bare.exit_code == ExitCode.MODEL and "has no layout model" in bare.stderr
