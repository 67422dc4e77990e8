"""`ppvl-ocr scan` in layout mode on a synthetic PDF, with the tiny 1.5 bundle and a tiny
PP-DocLayoutV3 (conftest `layout_bundle`): records with blocks, resume, a bad block, image
files, --no-layout, keys of the two modes."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
import torch
from click.testing import CliRunner
from makedocs import make_pdf
from PIL import Image

from ppvl_batch.cli import main
from ppvl_batch.errors import ExitCode

SMALL = ["--max-new-tokens", "4", "--dpi", "72"]
BLOCK_FIELDS = {"id", "order", "label", "bbox", "score", "task", "text", "format", "image", "finish_reason",
                "output_tokens", "error", "polygon", "text_source", "lines", "confidence", "min_token_prob"}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("PPVL_")]:
        monkeypatch.delenv(name)
    torch.set_num_threads(1)
    return tmp_path


def scan(*args: str):
    return CliRunner().invoke(main, ["scan", *args])


def records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_layout_mode_records_resume_and_markdown(layout_bundle, tmp_path):
    pdf = make_pdf(tmp_path / "docs" / "a.pdf", pages=3, size=(300, 400), label="Layout page")
    out = tmp_path / "out.jsonl"
    result = scan(str(pdf), "-o", str(out), "--model", str(layout_bundle), "--markdown", "md", *SMALL)
    assert result.exit_code == 0, result.output
    got = records(out)
    assert [r["page"] for r in got] == [1, 2, 3]
    layout_id = orjson.loads((layout_bundle / "manifest.json").read_bytes())["layout"]["id"]
    for r in got:
        assert r["status"] == "ok" and r["task"] == "layout" and r["layout_model"] == layout_id
        assert "warp_params" not in r
        assert r["blocks"], "the confident tiny model finds a block on every page"
        for b in r["blocks"]:
            assert set(b) == BLOCK_FIELDS and b["label"] == "text" and b["task"] == "ocr" and b["error"] is None
            assert b["polygon"] is None  # V3: the bbox is the block
            x0, y0, x1, y1 = b["bbox"]
            assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]
        assert r["output_tokens"] == sum(b["output_tokens"] for b in r["blocks"])
        assert r["text"] == "\n\n".join(b["text"] for b in r["blocks"] if b["text"])
        # the page's confidence is over all its blocks' tokens: between the blocks' least and most
        # confident, its least token the blocks' least
        confidences = [b["confidence"] for b in r["blocks"]]
        assert all(0 < c <= 1 for c in confidences)
        assert min(confidences) - 1e-6 <= r["confidence"] <= max(confidences) + 1e-6
        assert r["min_token_prob"] == min(b["min_token_prob"] for b in r["blocks"])
        assert isinstance(r["needs_review"], bool) and isinstance(r["review_reasons"], list)
    markdown = (tmp_path / "md" / "docs" / "a.pdf.md").read_text()
    for r in got:
        assert f"<!-- page {r['page']} -->\n\n{r['text'].strip()}\n" in markdown

    again = scan(str(pdf), "-o", str(out), "--model", str(layout_bundle), "--markdown", "md", *SMALL)
    assert again.exit_code == 0 and "3 already done" in again.stderr
    assert records(out) == got

    # whole pages: other keys, so every page is read again, and records without blocks
    whole = scan(str(pdf), "-o", str(out), "--model", str(layout_bundle), "--no-layout", *SMALL)
    assert whole.exit_code == 0, whole.output
    pages = records(out)[3:]
    assert [r["page"] for r in pages] == [1, 2, 3]
    assert all("blocks" not in r and "layout_model" not in r and r["task"] == "ocr" for r in pages)
    assert {r["key"] for r in pages}.isdisjoint(r["key"] for r in got)

    # a layout option that changes the blocks (here the detection threshold) changes the keys too
    stricter = scan(str(pdf), "-o", str(out), "--model", str(layout_bundle), "--layout-threshold", "0.5", *SMALL)
    assert stricter.exit_code == 0 and "0 already done" in stricter.stderr, stricter.output
    assert len({r["key"] for r in records(out)}) == 9


def test_a_18_bundle_with_pp_doclayout_v4_records_quads_and_warp_params_and_resumes(layout_v4_bundle, tmp_path):
    """The 1.8 pair end to end: every block keeps its bbox (the quad's extent) and adds its quad
    as `polygon`; every page records the model's warp_params (not applied); resume reads nothing."""
    pdf = make_pdf(tmp_path / "docs" / "q.pdf", pages=2, size=(300, 400), label="Quad page")
    out = tmp_path / "out.jsonl"
    result = scan(str(pdf), "-o", str(out), "--model", str(layout_v4_bundle), *SMALL)
    assert result.exit_code == 0, result.output
    got = records(out)
    assert [r["page"] for r in got] == [1, 2]
    for r in got:
        assert r["status"] == "ok" and r["blocks"] and len(r["warp_params"]) == 5
        assert all(isinstance(v, float) for v in r["warp_params"])
        for b in r["blocks"]:
            assert set(b) == BLOCK_FIELDS and b["label"] == "text" and b["error"] is None
            xs, ys = [x for x, _ in b["polygon"]], [y for _, y in b["polygon"]]
            assert len(b["polygon"]) == 4 and b["bbox"] == [min(xs), min(ys), max(xs), max(ys)]
            assert min(xs) >= 0 and max(xs) <= r["width"] and min(ys) >= 0 and max(ys) <= r["height"]
    again = scan(str(pdf), "-o", str(out), "--model", str(layout_v4_bundle), *SMALL)
    assert again.exit_code == 0 and "2 already done" in again.stderr, again.output
    assert records(out) == got


def test_image_blocks_are_saved_and_linked(layout_bundle, tmp_path, monkeypatch):
    """The tiny model only finds `text`; relabel its blocks as images to see them saved."""
    from ppvl_batch.layout import detector as detector_module
    from ppvl_batch.layout.postprocess import LayoutBlock

    real = detector_module.LayoutDetector.blocks
    monkeypatch.setattr(detector_module.LayoutDetector, "blocks", lambda self, images, rules=None, batch_size=8: [
        [LayoutBlock("image", b.score, b.bbox, None) for b in page] for page in real(self, images, rules, batch_size)])
    pdf = make_pdf(tmp_path / "b.pdf", pages=1, size=(300, 400))
    out = tmp_path / "out.jsonl"
    result = scan(str(pdf), "-o", str(out), "--model", str(layout_bundle), "--markdown", "md", *SMALL)
    assert result.exit_code == 0, result.output
    [r] = records(out)
    [block] = r["blocks"]
    assert (block["format"], block["task"], block["image"]) == ("image", None, "b.pdf_images/p0001_000_image.png")
    saved = Image.open(tmp_path / "md" / block["image"])
    x0, y0, x1, y1 = block["bbox"]
    assert saved.size == (x1 - x0, y1 - y0)
    assert f"![]({block['image']})" in (tmp_path / "md" / "b.pdf.md").read_text()
    # --images elsewhere, no Markdown: the path is relative to the working directory
    out2 = tmp_path / "out2.jsonl"
    assert scan(str(pdf), "-o", str(out2), "--model", str(layout_bundle), "--images", "crops", *SMALL).exit_code == 0
    [r2] = records(out2)
    assert r2["blocks"][0]["image"] == "crops/b.pdf_images/p0001_000_image.png" and Path(r2["blocks"][0]["image"]).is_file()


def test_an_image_folder_that_cannot_be_written_stops_the_run_with_exit_4(image_layout_bundle, tmp_path):
    """The folder, not the page, is wrong: exit 4 naming it; the pages recorded before stay, and
    the same command resumes once the folder can be written."""
    make_pdf(tmp_path / "docs" / "a.pdf", pages=2, size=(300, 400))
    make_pdf(tmp_path / "docs" / "b.pdf", pages=1, size=(300, 400))
    blocker = tmp_path / "md" / "docs" / "b.pdf_images"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where b.pdf's image folder goes")
    # one page a batch: a batch stops whole (its images are saved before its blocks are read)
    args = ["docs", "-o", "out.jsonl", "--model", str(image_layout_bundle), "--markdown", "md", "--batch-size", "1", *SMALL]
    result = scan(*args)
    assert result.exit_code == ExitCode.OUTPUT, result.output
    [line] = [ln for ln in result.stderr.splitlines() if "cannot write" in ln]
    assert "md/docs/b.pdf_images/p0001_000_image.png" in line
    assert [(r["source"], r["page"], r["status"]) for r in records(tmp_path / "out.jsonl")] == [
        ("docs/a.pdf", 1, "ok"), ("docs/a.pdf", 2, "ok")]
    blocker.unlink()
    again = scan(*args, "--summary-json", "sum.json")
    assert again.exit_code == 0, again.output
    assert [(r["source"], r["page"]) for r in records(tmp_path / "out.jsonl")][2:] == [("docs/b.pdf", 1)]
    assert orjson.loads((tmp_path / "sum.json").read_bytes())["pages_done_before"] == 2
    assert (tmp_path / "md" / "docs" / "b.pdf_images" / "p0001_000_image.png").is_file()


def test_a_bad_block_fails_alone(layout_bundle, tmp_path, monkeypatch):
    from ppvl_batch.engine.vision import ImagePreprocessor

    real = ImagePreprocessor.__call__
    calls = []

    def refuse_second(self, image, *args, **kwargs):
        calls.append(image.size)
        if len(calls) == 2:
            raise ValueError("refused on purpose")
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(ImagePreprocessor, "__call__", refuse_second)
    pdf = make_pdf(tmp_path / "c.pdf", pages=3, size=(300, 400))
    out = tmp_path / "out.jsonl"
    result = scan(str(pdf), "-o", str(out), "--model", str(layout_bundle), *SMALL)
    assert result.exit_code == 0, result.output
    got = records(out)
    assert [r["status"] for r in got] == ["ok", "ok", "ok"]
    errors = [b["error"] for r in got for b in r["blocks"] if b["error"]]
    assert errors == [{"type": "recognition", "message": "preprocessing failed: refused on purpose"}]
    assert sum(b["output_tokens"] is not None for r in got for b in r["blocks"]) == len(calls) - 1


def test_options_that_contradict_the_mode(layout_bundle, tiny_bundle, bundle_dirs, layout_v3_dir, tmp_path):
    import shutil

    from ppvl_batch.convert.layout_model import add_layout

    v1 = tmp_path / "v1-bundle"
    shutil.copytree(bundle_dirs["v1-original"], v1)
    add_layout(v1, str(layout_v3_dir))
    pdf = make_pdf(tmp_path / "d.pdf", pages=1)
    out = str(tmp_path / "o.jsonl")
    cases = [
        ([str(pdf), "-o", out, "--model", str(v1), "--seals"], "v1 bundle, which has no seal recognition"),
        ([str(pdf), "-o", out, "--model", str(tiny_bundle), "--layout-threshold", "0"], "only for layout mode"),
        ([str(pdf), "-o", out, "--model", str(tiny_bundle), "--layout"], "has no layout model"),
        ([str(pdf), "-o", out, "--model", str(tiny_bundle), "--charts"], "only for layout mode"),
        ([str(pdf), "-o", out, "--model", str(layout_bundle), "--no-layout", "--images", "x"], "only for layout mode"),
        ([str(pdf), "-o", out, "--model", str(layout_bundle), "--task", "table"], "--task and --prompt are for whole pages"),
    ]
    for args, message in cases:
        result = scan(*args)
        assert result.exit_code == ExitCode.USAGE and message in result.stderr, (args, result.output)
        assert not Path(out).exists() or Path(out).read_bytes() == b""


def test_a_pp_doclayout_v2_bundle_end_to_end(layout_v2_bundle, tmp_path):
    """The v1 pairing (conftest `layout_v2_bundle`) through the CLI: the blocks are V2's, under
    V2's rules, on the page as rendered; its model finds display formulas, which are read with
    the formula prompt, kept as LaTeX and shown as display math."""
    from ppvl_batch.bundle import Bundle
    from ppvl_batch.documents.pages import open_document
    from ppvl_batch.layout.detector import bundle_detector

    layout = orjson.loads((layout_v2_bundle / "manifest.json").read_bytes())["layout"]
    assert layout["version"] == "v2" and layout["id"].startswith("PP-DocLayoutV2-")
    pdf = make_pdf(tmp_path / "v2.pdf", pages=2, size=(300, 400))
    out = tmp_path / "out.jsonl"
    # one thread: ~30 blocks a page, and on busy shared cores llama.cpp's threads wait on each other at every step
    result = scan(str(pdf), "-o", str(out), "--model", str(layout_v2_bundle), "--markdown", "md", "--threads", "1", *SMALL)
    assert result.exit_code == 0, result.output
    got = records(out)
    with open_document(pdf, dpi=72, max_pixels=300 * 400) as doc:  # as scan renders it
        expected = bundle_detector(Bundle.open(layout_v2_bundle)).detect([doc.render(n).convert("RGB") for n in (1, 2)])
    assert all(expected), "the confident tiny V2 finds blocks on every page"
    assert [[(b["label"], tuple(b["bbox"]), b["order"]) for b in r["blocks"]] for r in got] == [
        [(b.label, b.bbox, b.order) for b in page] for page in expected]
    for r in got:
        assert r["status"] == "ok" and r["task"] == "layout" and r["layout_model"] == layout["id"]
        for b in r["blocks"]:
            assert (b["label"], b["task"], b["format"], b["error"]) == ("display_formula", "formula", "latex", None)
            assert b["output_tokens"] >= 1
        assert r["text"] == "\n\n".join(f"$$\n{b['text'].strip()}\n$$" for b in r["blocks"] if b["text"].strip())
    markdown = (tmp_path / "md" / "v2.pdf.md").read_text()
    assert all(r["text"] in markdown for r in got)


def test_ctrl_c_during_a_batch_records_every_page_parsed(layout_bundle, tmp_path, monkeypatch):
    """In layout mode the batch is parsed whole before its records are written: a Ctrl-C then
    stops the run after recording all of that batch, and the next run reads only the rest."""
    import signal

    from ppvl_batch.layout.parser import DocumentParser

    pdf = make_pdf(tmp_path / "a.pdf", pages=6, size=(300, 400), label="Layout page")
    out = tmp_path / "out.jsonl"
    parse = DocumentParser.parse
    calls = []

    def interrupted_parse(self, images, **kwargs):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)  # our handler only asks the run to stop
        calls.append(len(images))
        return parse(self, images, **kwargs)

    monkeypatch.setattr(DocumentParser, "parse", interrupted_parse)
    result = scan(str(pdf), "-o", str(out), "--model", str(layout_bundle), "--batch-size", "3", *SMALL)
    assert result.exit_code == ExitCode.INTERRUPTED, result.output
    assert calls == [3] and [r["page"] for r in records(out)] == [1, 2, 3]

    again = scan(str(pdf), "-o", str(out), "--model", str(layout_bundle), "--batch-size", "3", *SMALL)
    assert again.exit_code == 0 and "3 already done" in again.stderr, again.output
    assert calls == [3, 3] and [r["page"] for r in records(out)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("given, layout, expected", [(None, True, 4), (None, False, 1), (2, True, 2)])
def test_parallel_defaults_to_four_blocks_in_layout_mode(layout_bundle, tmp_path, given, layout, expected):
    """Without --parallel, layout mode decodes 4 blocks together (LAYOUT_PARALLEL) and whole pages go
    one at a time; a given --parallel is kept. The strategy says so before the recognizer is built."""
    from ppvl_batch.batch.options import ScanOptions
    from ppvl_batch.batch.strategy import choose_strategy
    from ppvl_batch.bundle import Bundle

    plan = choose_strategy(ScanOptions(inputs=[], output="o.jsonl", parallel=given, layout=layout), Bundle.open(layout_bundle))
    assert plan.recognizer_options()["parallel"] == expected
