"""`scan --text-layer`: born-digital PDF pages take their text from the file, scans (image only,
or with an invisible OCR layer) go through the model; `only`, keys, layout blocks
(docs/text-layer.md, batch/text_pages.py). Pages from tools/text_pdfs.py."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pymupdf
import pytest
import text_pdfs
import torch
from click.testing import CliRunner

from ppvl_batch.cli import main
from ppvl_batch.documents.pages import open_document

SMALL = ["--max-new-tokens", "4", "--dpi", "72"]


@pytest.fixture(autouse=True)
def one_thread_in_tmp(in_tmp: Path) -> Path:
    """Every test in its own folder (conftest's in_tmp), with one torch thread."""
    torch.set_num_threads(1)
    return in_tmp


def scan(*args: str):
    return CliRunner().invoke(main, ["scan", *args, *SMALL])


def records(path: Path) -> dict[int, dict]:
    return {r["page"]: r for r in map(orjson.loads, path.read_bytes().splitlines())}


def summary(path: Path) -> dict:
    return orjson.loads(path.read_bytes())


def three_kinds(path: Path) -> Path:
    """Page 1 born digital (the letter), 2 the same page as an image-only scan, 3 as a scan with
    an invisible OCR layer."""
    doc = pymupdf.open()
    lines = text_pdfs.letter(doc)
    text_pdfs.as_scan(doc[0], doc, seed=1)
    text_pdfs.as_scan(doc[0], doc, ocr=lines, seed=2)
    doc.save(path)
    return path


def test_auto_takes_born_digital_text_and_reads_scans_with_the_model(tiny_bundle, tmp_path, caplog):
    pdf = three_kinds(tmp_path / "mixed.pdf")
    out = tmp_path / "out.jsonl"
    caplog.set_level(logging.INFO, logger="ppvl_batch.batch.text_pages")  # what -v shows
    result = scan(str(pdf), "-o", str(out), "--model", str(tiny_bundle), "--summary-json", "sum.json")
    assert result.exit_code == 0, result.output
    got = records(out)
    born, image_only, ocr_layer = got[1], got[2], got[3]
    with open_document(pdf, password=None, dpi=72, max_pixels=10**9) as document:
        layer = document.text_layer(1)
    assert born["text_source"] == "pdf" and born["positions"] == "pdf"
    assert born["confidence"] is None and born["min_token_prob"] is None
    assert born["text"] == layer.text and "Quarterly statement" in born["text"]
    assert [line["text"] for line in born["lines"]] == [line.text for line in layer.lines]
    assert born["output_tokens"] == 0 and born["image_tokens"] == 0
    assert (born["width"], born["height"]) == (layer.width, layer.height)
    assert born["page_size_pt"] == [595.0, 842.0]
    for page in (image_only, ocr_layer):
        assert page["status"] == "ok" and page["text_source"] == "model" and page["output_tokens"] > 0
        assert page.get("positions") != "pdf"
    s = summary(tmp_path / "sum.json")
    assert (s["pages_text_layer"], s["pages_read"], s["pages_ok"]) == (1, 2, 3)
    assert "1 from text layers" in result.stderr
    # -v: why each scanned page was not trusted
    assert "page 2: text layer not trusted: no text layer" in caplog.text
    assert "page 3: text layer not trusted: invisible text" in caplog.text


def test_keys_model_pages_keep_theirs_text_pages_have_their_own(tiny_bundle, tmp_path):
    pdf = three_kinds(tmp_path / "mixed.pdf")
    ignored, auto = tmp_path / "ignore.jsonl", tmp_path / "auto.jsonl"
    assert scan(str(pdf), "-o", str(ignored), "--model", str(tiny_bundle), "--text-layer", "ignore").exit_code == 0
    assert scan(str(pdf), "-o", str(auto), "--model", str(tiny_bundle)).exit_code == 0
    before, after = records(ignored), records(auto)
    assert all(r["text_source"] == "model" for r in before.values())
    assert [after[n]["key"] == before[n]["key"] for n in (1, 2, 3)] == [False, True, True]
    # an archive read with the model (before --text-layer existed, or with ignore) is not read again
    again = scan(str(pdf), "-o", str(ignored), "--model", str(tiny_bundle), "--summary-json", "s1.json")
    assert again.exit_code == 0 and summary(tmp_path / "s1.json")["pages_done_before"] == 3
    # and a page taken from its text layer is read by the model under ignore
    model = scan(str(pdf), "-o", str(auto), "--model", str(tiny_bundle), "--text-layer", "ignore",
                 "--summary-json", "s2.json")
    s = summary(tmp_path / "s2.json")
    assert model.exit_code == 0 and (s["pages_read"], s["pages_done_before"]) == (1, 2)
    assert records(auto)[1]["text_source"] == "model"


def test_only_runs_no_model_then_a_later_run_reads_the_rest(tiny_bundle, tmp_path, monkeypatch):
    from ppvl_batch.engine.recognizer import Recognizer

    pdf = three_kinds(tmp_path / "mixed.pdf")
    out = tmp_path / "out.jsonl"
    real_encode = Recognizer.encode

    def no_model(self, *args, **kwargs):
        raise AssertionError("--text-layer only ran the model")

    monkeypatch.setattr(Recognizer, "encode", no_model)
    result = scan(str(pdf), "-o", str(out), "--model", str(tiny_bundle), "--text-layer", "only",
                  "--summary-json", "s.json")
    assert result.exit_code == 1, result.output  # pages failed
    got = records(out)
    assert got[1]["status"] == "ok" and got[1]["text_source"] == "pdf"
    assert [got[n]["error"]["type"] for n in (2, 3)] == ["no_text_layer", "no_text_layer"]
    assert "no text layer" in got[2]["error"]["message"] and "invisible" in got[3]["error"]["message"]
    assert summary(tmp_path / "s.json")["pages_read"] == 0
    # only again: nothing to do (failed before, as any error)
    assert scan(str(pdf), "-o", str(out), "--model", str(tiny_bundle), "--text-layer", "only",
                "--summary-json", "s.json").exit_code == 0
    assert summary(tmp_path / "s.json")["pages_failed_before"] == 2
    monkeypatch.setattr(Recognizer, "encode", real_encode)
    later = scan(str(pdf), "-o", str(out), "--model", str(tiny_bundle), "--summary-json", "s.json")
    assert later.exit_code == 0, later.output
    s = summary(tmp_path / "s.json")
    assert (s["pages_read"], s["pages_done_before"]) == (2, 1)
    assert {n: r["status"] for n, r in records(out).items()} == {1: "ok", 2: "ok", 3: "ok"}


def test_only_refuses_tasks_and_layout(layout_bundle, tmp_path):
    pdf = three_kinds(tmp_path / "mixed.pdf")
    table = scan(str(pdf), "-o", "o.jsonl", "--model", str(layout_bundle), "--no-layout", "--text-layer", "only",
                 "--task", "table")
    assert table.exit_code == 2 and "--text-layer only" in table.output
    layout = scan(str(pdf), "-o", "o.jsonl", "--model", str(layout_bundle), "--layout", "--text-layer", "only")
    assert layout.exit_code == 2 and "--no-layout" in layout.output


def test_a_page_whose_extraction_raises_is_read_by_the_model_with_a_warning(tiny_bundle, tmp_path, monkeypatch):
    from ppvl_batch.documents.pages import PdfDocument
    from ppvl_batch.documents.text_layer import TextLayerError

    def broken(self, number):
        raise TextLayerError("text layer unreadable: broken on purpose")

    monkeypatch.setattr(PdfDocument, "text_layer", broken)
    pdf = three_kinds(tmp_path / "mixed.pdf")
    out = tmp_path / "out.jsonl"
    assert scan(str(pdf), "-o", str(out), "--model", str(tiny_bundle), "--pages", "1").exit_code == 0
    record = records(out)[1]
    assert record["text_source"] == "model" and record["output_tokens"] > 0
    assert record["warnings"] == ["text layer unreadable: broken on purpose; read by the model"]


def test_layout_blocks_say_where_their_text_came_from(layout_bundle, tmp_path):
    pdf = three_kinds(tmp_path / "mixed.pdf")
    out = tmp_path / "out.jsonl"
    result = scan(str(pdf), "-o", str(out), "--model", str(layout_bundle), "--summary-json", "s.json")
    assert result.exit_code == 0, result.output
    got = records(out)
    with open_document(pdf, password=None, dpi=72, max_pixels=10**9) as document:
        layer = document.text_layer(1)
    from_pdf = 0
    for number, record in got.items():
        for block in record["blocks"]:
            if block["task"] is None or block["error"]:
                assert block["text_source"] is None
            elif block["text_source"] == "pdf":
                assert number == 1 and block["task"] == "ocr" and block["output_tokens"] == 0
                region = layer.region(block["bbox"])
                assert region.trust.trusted and [line["text"] for line in block["lines"]] == \
                    [line.text for line in region.lines]
                from_pdf += 1
            else:
                # the model's blocks carry lines estimated from their ink (layout/positions.py)
                assert block["text_source"] == "model" and (block["lines"] is None or isinstance(block["lines"], list))
    assert summary(tmp_path / "s.json")["blocks_text_layer"] == from_pdf
    ignored = tmp_path / "ignore.jsonl"
    assert scan(str(pdf), "-o", str(ignored), "--model", str(layout_bundle), "--text-layer", "ignore").exit_code == 0
    model = records(ignored)
    assert all(b["text_source"] != "pdf" for r in model.values() for b in r["blocks"])
    # a page with a block from its layer has a key of its own; the others keep the model's
    assert (got[1]["key"] == model[1]["key"]) == (from_pdf == 0)
    assert [got[n]["key"] for n in (2, 3)] == [model[n]["key"] for n in (2, 3)]
