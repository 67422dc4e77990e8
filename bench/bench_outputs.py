"""Seconds and peak RSS to write the searchable PDF, hOCR and ALTO of a long document from its records,
against the time to OCR its pages (the outputs should cost well under 1% of a page's recognition).

The input is a generated scan-like PDF (each page a JPEG of a text page, 150 dpi) or a multi-frame TIFF,
the records synthetic: 40 lines per page, spotting positions, Latin with some CJK and Greek. Each row runs
in a process of its own; "before" is its RSS after its imports and loading the records, "peak" the most
RSS sampled (every 5 ms) while writing. Two document lengths show whether memory grows with the pages.

    python bench/bench_outputs.py                     # 100 and 300 pages, appended to bench/RESULTS.md
    python bench/bench_outputs.py --pages 50 --no-append
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
# Seconds to OCR one page: the full-size model at Q4_K_M, 1024 tokens, on this project's 2-core machine
# (bench/RESULTS.md, "Total per page with 1024 tokens: 78 s").
OCR_SECONDS_PER_PAGE = 78.0
WORDS = ["archive", "record", "search", "漢字", "αβγ", "page", "ledger", "1897", "Σύνολο", "minute"]


def make_input(folder: Path, pages: int) -> Path:
    import pymupdf
    from PIL import Image, ImageDraw

    path = folder / "scan.pdf"
    doc = pymupdf.open()
    for n in range(pages):  # every page its own image, as in a scan
        image = Image.new("L", (1240, 1754), 245)
        draw = ImageDraw.Draw(image)
        for row in range(40):
            draw.rectangle((100, 80 + row * 40, 100 + 25 * ((row + n) % 7 + 30), 100 + row * 40), fill=30)
        draw.text((600, 1700), str(n + 1), fill=0)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=75)
        page = doc.new_page(width=595, height=842)
        page.insert_image(page.rect, stream=buffer.getvalue())
    doc.save(path)
    doc.close()
    return path


def make_records(pages: int) -> list[dict]:
    records = []
    for n in range(1, pages + 1):
        lines = []
        for row in range(40):
            text = " ".join(WORDS[(row + k + n) % len(WORDS)] for k in range(6))
            y = 80 + row * 40
            lines.append({"text": text, "bbox": [100, y, 900, y + 24],
                          "quad": [[100, y], [900, y], [900, y + 24], [100, y + 24]], "confidence": 0.93})
        records.append({"source": "scan.pdf", "page": n, "status": "ok", "width": 1240, "height": 1754,
                        "text": "\n".join(line["text"] for line in lines), "lines": lines, "positions": "spotting",
                        "confidence": 0.93, "page_size_pt": [595, 842]})
    return records


def run_one(kind: str, source: Path, records_path: Path, target: Path) -> dict:
    """In a child process: import, note the RSS, write, report seconds and peak RSS."""
    from ppvl_batch.outputs import write_alto, write_hocr, write_pdf

    records = json.loads(records_path.read_text(encoding="utf-8"))
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:  # RSS every 5 ms while writing: ru_maxrss would include loading the records
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    writer = {"pdf": write_pdf, "pdfa": lambda r, s, t: write_pdf(r, s, t, pdfa=True),
              "hocr": write_hocr, "alto": write_alto}[kind]
    start = time.perf_counter()
    writer(records, source, target)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return {"seconds": seconds, "baseline_mib": baseline / 2**20, "peak_mib": peak[0] / 2**20,
            "size_mib": target.stat().st_size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", default="100,300", help="document lengths, comma-separated")
    parser.add_argument("--kinds", default="pdf,pdfa,hocr,alto")
    parser.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, source, records, target = args.child
        print(json.dumps(run_one(kind, Path(source), Path(records), Path(target))))
        return
    from bench_engine import machine, report, table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for pages in (int(p) for p in args.pages.split(",")):
            source = make_input(folder, pages)
            records = folder / "records.json"
            records.write_text(json.dumps(make_records(pages)))
            for kind in args.kinds.split(","):
                target = folder / f"out.{kind}"
                out = subprocess.run([sys.executable, __file__, "--child", kind, str(source), str(records), str(target)],
                                     capture_output=True, text=True, check=True, cwd=ROOT)
                r = json.loads(out.stdout)
                share = r["seconds"] / pages / OCR_SECONDS_PER_PAGE * 100
                rows.append([pages, kind, f"{r['seconds']:.2f}", f"{r['seconds'] / pages * 1000:.1f}", f"{share:.4f}",
                             f"{r['baseline_mib']:.0f}", f"{r['peak_mib']:.0f}", f"{r['size_mib']:.1f}"])
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Searchable PDF, hOCR and ALTO from records, {stamp}", "",
             f"Machine: {machine()}.  ",
             ("Input: a generated scan-like PDF (one 1240x1754 JPEG per page); records: 40 lines per page, "
              f"spotting positions. OCR reference: {OCR_SECONDS_PER_PAGE:.0f} s per page (full-size model, "
              "Q4_K_M, 1024 tokens, this file). Command: `python bench/bench_outputs.py`"), "",
             *table(["pages", "output", "seconds", "ms per page", "% of a page's OCR", "RSS before MiB",
                     "peak RSS writing MiB", "file MiB"], rows)]
    report(lines, append=not args.no_append)


if __name__ == "__main__":
    main()
