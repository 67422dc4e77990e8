"""outputs/hocr.py: hOCR 1.2, checked by hocr-check (hocr-tools) and OCRmyPDF's own hOCR parser."""

from __future__ import annotations

import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from lxml import etree
from outputs_helpers import LINES, blank_record, failed_record, line, ok_record, rotated_line

from ppvl_batch.outputs import HocrWriter, write_hocr

XHTML = "{http://www.w3.org/1999/xhtml}"


def document_records() -> list[dict]:
    lines = [line(text, box) for text, box in LINES] + [rotated_line("tilted line", (100, 400), 300, 30, 15)]
    layout = ok_record(4, 800, 600, None, text="# T", blocks=[
        {"label": "doc_title", "bbox": [60, 40, 500, 90], "text": "A Title", "format": "text", "confidence": 0.5},
        {"label": "text", "bbox": [60, 100, 500, 300], "text": "two\nlines <&>", "format": "text"},
    ])
    return [ok_record(1, 800, 600, lines), failed_record(2), blank_record(3, 800, 600), layout]


def write(tmp_path: Path, records: list[dict]) -> Path:
    target = tmp_path / "doc.hocr"
    HocrWriter().write(records, tmp_path / "doc.png", target)
    return target


def classes(tree: etree._ElementTree, name: str) -> list[etree._Element]:
    return tree.findall(f".//*[@class='{name}']")


def test_structure_boxes_and_confidence(tmp_path: Path) -> None:
    tree = etree.parse(str(write(tmp_path, document_records())))  # well-formed XML
    metas = {m.get("name"): m.get("content") for m in tree.iter(f"{XHTML}meta")}
    assert metas["ocr-system"].startswith("ppvl-ocr")
    assert set(metas["ocr-capabilities"].split()) == {"ocr_page", "ocr_carea", "ocr_par", "ocr_line", "ocrx_word",
                                                      "ocrp_wconf"}
    assert "estimated" in metas["ppvl-ocr-word-boxes"]
    pages = classes(tree, "ocr_page")
    assert [p.get("title").split("; ")[1:3] for p in pages] == [
        ["bbox 0 0 800 600", "ppageno 0"], ["bbox 0 0 0 0", "ppageno 1"], ["bbox 0 0 800 600", "ppageno 2"],
        ["bbox 0 0 800 600", "ppageno 3"]]
    assert pages[0].get("title").startswith('image "doc.png"') and "x_positions spotting" in pages[0].get("title")
    assert "x_positions estimated" in pages[3].get("title")
    assert [len(classes(etree.ElementTree(p), "ocrx_word")) for p in pages] == [15, 0, 0, 5]
    words = pages[0].findall(".//*[@class='ocrx_word']")
    assert [w.text for w in words[:3]] == ["Searchable", "archives", "today"]
    first = words[0].get("title")
    assert first == "bbox 60 50 220 80; x_wconf 90"  # "Searchable" = 10 of 25 characters of a 400 px line
    tilted = pages[0].findall(".//*[@class='ocr_line']")[-1]
    assert "textangle 15" in tilted.get("title")
    layout_words = [w.text for w in pages[3].iter() if w.get("class") == "ocrx_word"]
    assert layout_words == ["A", "Title", "two", "lines", "<&>"]
    assert len(classes(etree.ElementTree(pages[3]), "ocr_carea")) == 2


def hocr_check(target: Path, *options: str) -> None:
    checker = Path(sys.executable).with_name("hocr-check")
    if not checker.exists():
        pytest.fail(f"{checker} is missing: install the test extra (hocr-tools provides hocr-check)")
    result = subprocess.run([sys.executable, str(checker), *options, str(target)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    verdicts = [ln for ln in result.stderr.splitlines() if ln.startswith(("ok", "not ok"))]
    assert len(verdicts) > 3 and not [v for v in verdicts if v.startswith("not ok")], result.stderr


def test_hocr_check_accepts_it(tmp_path: Path) -> None:
    # hocr-check's overlap test looks for lines with an absolute XPath (//), so on a file of several pages it
    # compares the lines of different pages; the overlaps are checked page by page (one record, one page).
    hocr_check(write(tmp_path, document_records()), "--nooverlap")
    for record in document_records():
        hocr_check(write(tmp_path, [record]))


def test_ocrmypdf_parses_it(tmp_path: Path) -> None:
    parser = pytest.importorskip("ocrmypdf.hocrtransform.hocr_parser")
    # OCRmyPDF reads one page per file (Tesseract's hOCR): give it the first page
    target = write(tmp_path, document_records()[:1])
    page = parser.HocrParser(target).parse()
    lines = [ln for par in page.children for ln in par.children]
    # OCRmyPDF folds compatibility characters (NFKC: the math italic 𝑥 becomes x)
    expected = [unicodedata.normalize("NFKC", text) for text, _ in LINES] + ["tilted line"]
    assert [" ".join(w.text for w in ln.children) for ln in lines] == expected
    word = lines[0].children[0]
    assert (word.bbox.left, word.bbox.top, word.bbox.right, word.bbox.bottom) == (60, 50, 220, 80)
    assert word.confidence == pytest.approx(0.9)


def test_unwritable_target(tmp_path: Path) -> None:
    from ppvl_batch.errors import OutputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        write_hocr(document_records(), tmp_path / "doc.png", tmp_path / "file" / "doc.hocr")
