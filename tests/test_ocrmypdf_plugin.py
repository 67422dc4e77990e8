"""The OCRmyPDF engine plugin end to end: the real `ocrmypdf` command (and its Python API) with
`--ocr-engine ppvl` and the tiny random-weight bundles, against `ppvl-ocr scan` on the same pages.

Like with like: OCRmyPDF rasterizes each page itself, at the resolution of the page's images (a
page with visible text or vector art at 400 dpi at least), and hands that image to the engine. The
test PDFs hold one image per page placed at exactly DPI (100) dots per inch, and `scan` is run
with `--dpi 100`, so both give the model the same pixels: the image itself. Both run with the same
small pixel limits and answer length, so the random model's answers must be the same, word for
word. OCRmyPDF needs Tesseract (it checks for it even when another engine reads the pages) and
Ghostscript: `make test` installs them (tools/system_deps.sh); without them these tests fail and
say which is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import orjson
import pymupdf
import pytest
from makedocs import shapes_image, text_image
from PIL import Image

DPI = 100
BIN = Path(sys.executable).parent
SMALL = {"min-pixels": "784", "max-pixels": "3136", "max-new-tokens": "8", "threads": "1"}
PLUGIN = "ppvl_batch.cli.ocrmypdf_plugin"


@pytest.fixture(scope="module", autouse=True)
def ocrmypdf_installed() -> None:
    """Fail (not skip) naming exactly what OCRmyPDF lacks on this machine."""
    missing = [f"{program} (Debian package {package})" for program, package in
               (("tesseract", "tesseract-ocr"), ("gs", "ghostscript")) if shutil.which(program) is None]
    if not (BIN / "ocrmypdf").exists():
        missing.append("the ocrmypdf Python package (pip install 'ppvl-batch[ocrmypdf]')")
    if missing:
        pytest.fail(f"OCRmyPDF cannot run here: missing {', '.join(missing)}; `make test` installs them "
                    "(tools/system_deps.sh, as root with apt-get)")


def plugin_args() -> list[str]:
    """`--plugin` only when the package's entry point is not installed (OCRmyPDF loads that one by
    itself, and registering a plugin twice is an error)."""
    installed = any(ep.value == PLUGIN for ep in entry_points(group="ocrmypdf"))
    return [] if installed else ["--plugin", PLUGIN]


def env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PPVL_")}
    return {**clean, "PYTHONPATH": f"{root}{os.pathsep}{clean.get('PYTHONPATH', '')}"}


def ocrmypdf(src: Path, out: Path, bundle: Path | None, *extra: str, jobs: int = 2) -> subprocess.CompletedProcess:
    args = [str(BIN / "ocrmypdf"), *plugin_args(), "--ocr-engine", "ppvl", "--jobs", str(jobs), "--output-type", "pdf"]
    if bundle is not None:
        args += ["--ppvl-model", str(bundle)]
    for name, value in SMALL.items():
        args += [f"--ppvl-{name}", value]
    return subprocess.run([*args, *extra, str(src), str(out)], check=False, capture_output=True, text=True, env=env(), timeout=600)


def scan_texts(src: Path, bundle: Path, tmp: Path) -> dict[int, str]:
    """page -> text as `ppvl-ocr scan` records it, rendering at the test PDFs' image resolution."""
    out = tmp / f"{src.stem}.jsonl"
    args = [str(BIN / "ppvl-ocr"), "scan", str(src), "-o", str(out), "-m", str(bundle), "--dpi", str(DPI)]
    for name, value in SMALL.items():
        args += [f"--{name}", value]
    done = subprocess.run(args, check=False, capture_output=True, text=True, env=env(), timeout=600)
    assert done.returncode == 0, done.stderr
    return {r["page"]: r["text"] for r in map(orjson.loads, out.read_text().splitlines())}


def words(text: str) -> list[str]:
    """Words of a text as a PDF text layer holds them: control characters and U+FFFD (which the
    random model writes, and a text layer cannot hold) dropped, whitespace normalized."""
    return re.sub(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]", "", text).split()


def pdf_texts(path: Path) -> list[str]:
    with pymupdf.open(path) as doc:
        return [page.get_text() for page in doc]


def renders(path: Path) -> list[np.ndarray]:
    with pymupdf.open(path) as doc:
        return [np.frombuffer(p.get_pixmap(dpi=72).samples, np.uint8) for p in doc]


def page_images() -> list[Image.Image]:
    """Scans with different content (the random model answers differently to each)."""
    return [text_image((300, 400), "Invoice 2024\nTotal 17.50"), shapes_image((300, 400), seed=3),
            text_image((300, 400), "Lorem ipsum dolor\nsit amet")]


def make_pdf(path: Path, texts: dict[int, tuple[str, int]] | None = None) -> Path:
    """One image per page at exactly DPI; `texts`: page index -> (text, render mode) drawn on it
    (0: visible, born-digital text; 3: invisible, an earlier OCR layer)."""
    doc = pymupdf.open()
    for i, image in enumerate(page_images()):
        page = doc.new_page(width=image.width * 72 / DPI, height=image.height * 72 / DPI)
        png = path.with_suffix(f".{i}.png")
        image.save(png)
        page.insert_image(page.rect, filename=str(png))
        if texts and i in texts:
            text, mode = texts[i]
            page.insert_text((10, 150), text, fontsize=14, render_mode=mode)
    doc.save(path)
    return path


def test_scanned_pdf_text_equals_scan_and_images_unchanged(tiny_bundle, tmp_path):
    src = make_pdf(tmp_path / "scanned.pdf")
    out = tmp_path / "out.pdf"
    sidecar = tmp_path / "out.txt"
    done = ocrmypdf(src, out, tiny_bundle, "--sidecar", str(sidecar))
    assert done.returncode == 0, done.stderr
    expected = scan_texts(src, tiny_bundle, tmp_path)
    got = pdf_texts(out)
    assert [words(t) for t in got] == [words(expected[n]) for n in (1, 2, 3)]
    assert any(words(t) for t in got)  # the model did write something
    assert all(np.array_equal(a, b) for a, b in zip(renders(src), renders(out), strict=True))  # text layer invisible
    assert words(sidecar.read_text()) == [w for n in (1, 2, 3) for w in words(expected[n])]


def test_sandwich_renderer_goes_through_generate_pdf(tiny_bundle, tmp_path):
    src = make_pdf(tmp_path / "scanned.pdf")
    out = tmp_path / "out.pdf"
    done = ocrmypdf(src, out, tiny_bundle, "--pdf-renderer", "sandwich", "--pages", "1")
    assert done.returncode == 0, done.stderr
    expected = scan_texts(src, tiny_bundle, tmp_path)
    assert words(pdf_texts(out)[0]) == words(expected[1])
    assert np.array_equal(renders(src)[0], renders(out)[0])


@pytest.mark.parametrize("mode", ["skip", "redo"])
def test_mixed_pdf(tiny_bundle, tmp_path, mode):
    """Page 2 has born-digital (visible) text, page 3 an old invisible OCR layer. --mode skip
    leaves both as they are; --mode redo keeps page 2's visible text (OCRmyPDF masks it out of the
    image it gives the engine, so that page's OCR is not comparable with scan's) and replaces page
    3's old layer with the model's text."""
    src = make_pdf(tmp_path / "mixed.pdf", {1: ("Born digital caption", 0), 2: ("stale ocr words", 3)})
    out = tmp_path / "out.pdf"
    done = ocrmypdf(src, out, tiny_bundle, "--mode", mode)
    assert done.returncode == 0, done.stderr
    expected = scan_texts(src, tiny_bundle, tmp_path)
    got = pdf_texts(out)
    assert words(got[0]) == words(expected[1])
    assert "Born digital caption" in " ".join(words(got[1]))
    if mode == "skip":
        assert words(got[1]) == words("Born digital caption")
        assert words(got[2]) == words("stale ocr words")
    else:
        assert words(got[2]) == words(expected[3])
    assert all(np.array_equal(a, b) for a, b in zip(renders(src), renders(out), strict=True))


def test_pdfa_output_validates(tiny_bundle, tmp_path):
    import pikepdf

    src = make_pdf(tmp_path / "scanned.pdf")
    out = tmp_path / "out.pdf"
    done = ocrmypdf(src, out, tiny_bundle, "--output-type", "pdfa", "--pages", "1")
    assert done.returncode == 0, done.stderr  # OCRmyPDF checks the PDF/A it wrote (exit 4 or 10 otherwise)
    with pikepdf.open(out) as pdf:
        assert pdf.open_metadata().pdfa_status == "2B"
    assert words(pdf_texts(out)[0]) == words(scan_texts(src, tiny_bundle, tmp_path)[1])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_missing_bundle_is_missing_dependency(tmp_path):
    src = make_pdf(tmp_path / "scanned.pdf")
    done = ocrmypdf(src, tmp_path / "out.pdf", tmp_path / "nowhere")
    assert done.returncode == 3, done.stderr  # ExitCode.missing_dependency
    assert error_lines(done.stderr) == [(f"PaddleOCR-VL: {tmp_path / 'nowhere'}: no such model bundle; "
                                         "convert the real model with `ppvl-ocr convert PaddlePaddle/PaddleOCR-VL -o BUNDLE` "
                                         "(download it first if this machine is offline) and pass --ppvl-model BUNDLE")]
    assert not (tmp_path / "out.pdf").exists()
    done = ocrmypdf(src, tmp_path / "out.pdf", None)  # none given at all
    assert done.returncode == 3 and len(error_lines(done.stderr)) == 1 and "--ppvl-model" in done.stderr


def test_task_the_bundle_lacks_is_bad_args(bundle_dirs, tmp_path):
    src = make_pdf(tmp_path / "scanned.pdf")
    done = ocrmypdf(src, tmp_path / "out.pdf", bundle_dirs["v1-original"], "--ppvl-task", "spotting")
    assert done.returncode == 1, done.stderr  # ExitCode.bad_args
    assert error_lines(done.stderr) == [
        "--ppvl-task spotting is not available with this model (it has: ocr, table, formula, chart)"]


def test_bad_value_is_bad_args(tiny_bundle, tmp_path):
    src = make_pdf(tmp_path / "scanned.pdf")
    done = ocrmypdf(src, tmp_path / "out.pdf", tiny_bundle, "--ppvl-parallel", "0")
    assert done.returncode == 1, done.stderr
    assert len(error_lines(done.stderr)) == 1 and done.stderr.startswith("--ppvl-parallel 0:")


def test_python_api_and_environment(tiny_bundle, tmp_path):
    """`ocrmypdf.ocr(...)` with the engine's options as keywords; the model from PPVL_MODEL."""
    src = make_pdf(tmp_path / "scanned.pdf")
    out = tmp_path / "api.pdf"
    small = ", ".join(f"ppvl_{k.replace('-', '_')}={int(v)}" for k, v in SMALL.items())
    code = (f"import ocrmypdf; plugins = {plugin_args()[1:]!r}\n"
            f"print(int(ocrmypdf.ocr({str(src)!r}, {str(out)!r}, plugins=plugins, ocr_engine='ppvl', pages='1,3', "
            f"output_type='pdf', progress_bar=False, {small})))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=600,
                          env={**env(), "PPVL_MODEL": str(tiny_bundle)})
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr
    expected = scan_texts(src, tiny_bundle, tmp_path)
    got = pdf_texts(out)
    assert [words(got[0]), words(got[2])] == [words(expected[1]), words(expected[3])]
    assert got[1].strip() == ""  # not in --pages: left as it was


def test_hocr_round_trips_through_ocrmypdf_parser(tmp_path):
    """The hOCR the engine writes for `generate_hocr` reads back through OCRmyPDF's own parser
    into the same tree (text, boxes, confidence)."""
    from ocrmypdf.hocrtransform import HocrParser

    from ppvl_batch.cli.ocrmypdf_tree import record_to_tree, tree_text, write_hocr

    record = {"width": 200, "height": 100, "text": "ignored", "confidence": 0.9, "lines": [
        {"text": "Hello  world", "bbox": [10, 10, 110, 30], "quad": None, "confidence": 0.87},
        {"text": "Ünïcode 漢字", "bbox": [10, 40, 150, 60], "quad": None, "confidence": None}]}
    tree = record_to_tree(record, (400, 200), 150.0, 0)  # the image is twice the record's pixels
    path = tmp_path / "page.hocr"
    write_hocr(tree, path)
    back = HocrParser(path).parse()
    assert tree_text(back) == tree_text(tree) == "Hello world\nÜnïcode 漢字"
    assert back.dpi == 150 and (back.bbox.right, back.bbox.bottom) == (400, 200)
    first = back.words[0]
    assert (first.text, first.bbox.left, first.bbox.top, first.bbox.bottom) == ("Hello", 20, 20, 60)
    assert first.confidence == pytest.approx(0.87)
    assert back.words[2].confidence is None


def test_rotated_line_is_one_word_along_its_angle():
    from ppvl_batch.cli.ocrmypdf_tree import record_to_tree

    quad = [[10, 60], [110, 2], [120, 20], [20, 78]]  # rising to the right, about 30 degrees
    record = {"width": 200, "height": 100, "lines": [
        {"text": "tilted words", "bbox": [10, 2, 120, 78], "quad": quad, "confidence": 0.5}]}
    [line] = record_to_tree(record, (200, 100), 72.0, 0).lines
    assert [w.text for w in line.words] == ["tilted words"]
    assert line.textangle == pytest.approx(30.1, abs=0.2)
