"""`scan` records with positions, end to end on the tiny bundles: `--task spotting` (random
weights do not write location tokens, so one test forces the answer at the engine boundary and
checks the record; the others check the record's shape), its refusal on v1 bundles, whole pages
with estimated lines and PDF page sizes, and blocks with lines in layout mode."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from makedocs import make_pdf
from PIL import Image, ImageDraw, ImageFont

from ppvl_batch.cli import main

SMALL = ["--min-pixels", "784", "--max-pixels", "3136", "--max-new-tokens", "4"]


def scan(*args: str, model: Path):
    return CliRunner().invoke(main, ["scan", *args, "--model", str(model), *SMALL], catch_exceptions=False)


def records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def text_page(path: Path, size=(301, 187)) -> Path:
    image = Image.new("RGB", size, "white")
    font = ImageFont.load_default(size=14)
    for i, line in enumerate(["Total 12", "due now"]):
        ImageDraw.Draw(image).text((20, 20 + 30 * i), line, font=font, fill="black")
    image.save(path)
    return path


def test_spotting_records_have_lines_in_page_pixels(tmp_path: Path, tiny_bundle: Path) -> None:
    page = text_page(tmp_path / "p.png")
    result = scan(str(page), "--task", "spotting", "--no-layout", "-o", str(tmp_path / "o.jsonl"), model=tiny_bundle)
    assert result.exit_code == 0, result.stderr
    [r] = records(tmp_path / "o.jsonl")
    assert r["status"] == "ok" and r["task"] == "spotting" and r["positions"] == "spotting"
    assert (r["width"], r["height"]) == (301, 187)  # the rendered page, not the upscaled model image
    assert r["image_tokens"] > (301 * 187) // 784  # the model saw the page upscaled 2x
    assert isinstance(r["lines"], list) and "<|LOC_" not in r["text"]
    for line in r["lines"]:
        assert 0 <= line["bbox"][0] <= line["bbox"][2] <= 301 and 0 <= line["bbox"][1] <= line["bbox"][3] <= 187


def test_a_forced_spotting_answer_becomes_lines_text_and_review(tmp_path: Path, tiny_bundle: Path, monkeypatch) -> None:
    from ppvl_batch.engine.recognizer import Recognizer

    locs = "".join(f"<|LOC_{v}|>" for v in (100, 200, 500, 200, 500, 300, 100, 300))
    answer = f"<|TEXT_START|>Total 12<|TEXT_END|><|LOC_BEGIN|>{locs}<|LOC_END|>\ndue now<|LOC_5|><|LOC_7|>"
    original = Recognizer.decode_many

    def forced(self, pages):
        ids = self.prompts.tokenizer(answer, add_special_tokens=False)["input_ids"]
        for index, result in original(self, pages):
            result.token_ids, result.text = ids, self.detokenize(ids)
            result.token_probs = [0.9] * len(ids)
            yield index, result

    monkeypatch.setattr(Recognizer, "decode_many", forced)
    page = text_page(tmp_path / "p.png", size=(411, 233))
    result = scan(str(page), "--task", "spotting", "--no-layout", "-o", str(tmp_path / "o.jsonl"), model=tiny_bundle)
    assert result.exit_code == 0, result.stderr
    [r] = records(tmp_path / "o.jsonl")
    assert r["text"] == "Total 12\ndue now"
    [line] = r["lines"]
    assert line["text"] == "Total 12" and line["confidence"] == pytest.approx(0.9)
    assert line["quad"] == [[41.1, 46.6], [205.5, 46.6], [205.5, 69.9], [41.1, 69.9]]
    assert line["bbox"] == [41.1, 46.6, 205.5, 69.9]
    assert r["needs_review"] is True and "unparsed_spotting" in r["review_reasons"]  # besides length, confidence
    assert any(w.startswith("unparsed spotting: location run") for w in r["warnings"])


def test_spotting_is_refused_on_v1_bundles(tmp_path: Path, bundle_dirs) -> None:
    page = text_page(tmp_path / "p.png")
    result = scan(str(page), "--task", "spotting", "-o", str(tmp_path / "o.jsonl"), model=bundle_dirs["v1-original"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "--task spotting is not available" in result.stderr
    assert not (tmp_path / "o.jsonl").exists() or (tmp_path / "o.jsonl").read_bytes() == b""


def test_whole_pages_carry_estimated_lines_and_pdf_page_sizes(tmp_path: Path, tiny_bundle: Path) -> None:
    make_pdf(tmp_path / "d.pdf", pages=1, size=(144, 108), label="alpha")
    text_page(tmp_path / "p.png")
    result = scan(str(tmp_path / "d.pdf"), str(tmp_path / "p.png"), "--no-layout", "--text-layer", "ignore",
                  "-o", str(tmp_path / "o.jsonl"),
                  model=tiny_bundle)
    assert result.exit_code == 0, result.stderr
    pdf, png = records(tmp_path / "o.jsonl")
    assert pdf["page_size_pt"] == [144, 108] and "page_size_pt" not in png
    assert pdf["width"] / pdf["height"] == pytest.approx(144 / 108, rel=0.02)
    assert (png["width"], png["height"]) == (301, 187)
    for r in (pdf, png):  # random text: its lines match the ink or not; the record says which
        assert r.get("positions") in ("estimated", None) and (r.get("lines") is None) == (r.get("positions") is None)


def test_layout_blocks_carry_lines(tmp_path: Path, layout_bundle: Path) -> None:
    text_page(tmp_path / "p.png", size=(320, 240))
    result = scan(str(tmp_path / "p.png"), "-o", str(tmp_path / "o.jsonl"), model=layout_bundle)
    assert result.exit_code == 0, result.stderr
    [r] = records(tmp_path / "o.jsonl")
    assert r["task"] == "layout" and r["blocks"]
    for block in r["blocks"]:
        assert "lines" in block
        if block["lines"]:
            x0, y0, x1, y1 = block["bbox"]
            for line in block["lines"]:  # estimated inside the block (or sharing its height)
                assert x0 <= line["bbox"][0] <= line["bbox"][2] <= x1 and y0 <= line["bbox"][1] <= line["bbox"][3] <= y1
    assert r["positions"] == "estimated" and r["lines"] == [line for b in r["blocks"] for line in b["lines"] or []]
