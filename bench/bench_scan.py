"""Benchmark `ppvl-ocr scan` against one-page-at-a-time use of the same recognizer.

    python bench/bench_scan.py                 # tiny random-weight model (seconds)
    python bench/bench_scan.py --size full     # PaddleOCR-VL-0.9B sizes, random weights
    python bench/bench_scan.py --bundle B      # an existing bundle

Both runs read the same folder of mixed PDFs (letter, A4, landscape; 1 to 8 pages) with the
same model, pixel limit and answer length, each in a fresh process:

    scan       ppvl-ocr scan: rasterizing ahead in a thread, vision batched (--batch-size)
    baseline   render a page, recognize it, next page: no prefetch, no batching

and report pages per minute (model loading excluded, as scan's own summary excludes it), wall
time including loading, and peak RSS. Results are appended to bench/RESULTS.md with the machine
and date. Random weights make the text meaningless but the work real; answers are cut at
--max-new-tokens so both runs decode the same number of tokens per page.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
PPVL = str(Path(sys.executable).with_name("ppvl-ocr"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import machine  # noqa: E402

# (name, pages, page size in points): a mix of lengths and shapes
DOCS = [
    ("letter-1", 1, (612, 792)),
    ("a4-3", 3, (595, 842)),
    ("landscape-2", 2, (792, 612)),
    ("letter-8", 8, (612, 792)),
    ("a4-5", 5, (595, 842)),
    ("small-1", 1, (420, 595)),
]

LOREM = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "Sphinx of black quartz, judge my vow. 0123456789 - invoice 2024/117, total 1,234.56 EUR."
)


def make_docs(folder: Path) -> int:
    import pymupdf

    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, pages, (w, h) in DOCS:
        total += pages
        path = folder / f"{name}.pdf"
        if path.exists():
            continue
        doc = pymupdf.open()
        for i in range(pages):
            page = doc.new_page(width=w, height=h)
            page.insert_text((50, 60), f"{name} - page {i + 1}", fontsize=20)
            page.insert_textbox(pymupdf.Rect(50, 90, w - 50, h - 50), (LOREM + " ") * 12, fontsize=10)
        doc.save(path)
    return total


def make_bundle(size: str, quant: str) -> Path:
    bundle = WORK / f"scan-bundle-{size}-{quant}"
    if (bundle / "manifest.json").exists():
        return bundle
    sys.path.insert(0, str(ROOT / "tools"))
    import tiny_model

    from ppvl_batch.convert import convert

    sizes = tiny_model.full_sizes() if size == "full" else tiny_model.tiny_sizes()
    checkpoint = tiny_model.build_checkpoint(WORK / f"scan-checkpoint-{size}", sizes=sizes)
    print(f"converting {checkpoint} -> {bundle}", file=sys.stderr)
    return convert(str(checkpoint), bundle, [quant], overwrite=True)


def baseline(args: argparse.Namespace) -> None:
    """One page at a time through the same recognizer (run in its own process)."""
    from ppvl_batch.documents.inputs import collect
    from ppvl_batch.documents.pages import open_document
    from ppvl_batch.recognizer import Recognizer

    rec = Recognizer.load(args.bundle, quant=args.quant, threads=args.threads, max_pixels=args.max_pixels,
                          max_new_tokens=args.max_new_tokens)
    started = time.monotonic()
    pages = 0
    for doc in collect([str(args.docs)]).documents:
        with open_document(doc.path, max_pixels=rec.max_pixels) as opened:
            for number in range(1, opened.page_count + 1):
                rec.recognize([opened.render(number)], "ocr", max_new_tokens=args.max_new_tokens)
                pages += 1
    seconds = time.monotonic() - started
    rec.close()
    print(json.dumps({"pages": pages, "seconds": seconds}))


def measured(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `command` in a fresh process of its own: (result, wall seconds, peak RSS MiB)."""
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.monotonic(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr, 'wall': time.monotonic() - t,\n"
        "                  'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    raw = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    info = json.loads(raw.stdout)
    result = subprocess.CompletedProcess(command, info["rc"], info["out"], info["err"])
    if result.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result, info["wall"], info["rss"] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-pixels", type=int, default=None, help="default: the bundle's")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", type=Path, help="use this bundle instead of building one")
    parser.add_argument("--docs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        return baseline(args)

    bundle = args.bundle or make_bundle(args.size, args.quant)
    docs = WORK / "docs"
    total = make_docs(docs)
    common = ["--max-new-tokens", str(args.max_new_tokens), "--quant", args.quant]
    if args.max_pixels:
        common += ["--max-pixels", str(args.max_pixels)]
    if args.threads:
        common += ["--threads", str(args.threads)]

    summary_file = WORK / "summary.json"
    _, scan_wall, scan_rss = measured(
        [PPVL, "scan", str(docs), "-o", str(WORK / "scan.jsonl"), "--overwrite", "--quiet", "--model", str(bundle),
         "--batch-size", str(args.batch_size), "--summary-json", str(summary_file), *common]
    )
    summary = json.loads(summary_file.read_text())
    assert summary["pages_ok"] == total, summary

    base, base_wall, base_rss = measured(
        [sys.executable, __file__, "--baseline", "--bundle", str(bundle), "--docs", str(docs), *common]
    )
    base_info = json.loads(base.stdout.strip().splitlines()[-1])
    assert base_info["pages"] == total, base_info

    scan_ppm = summary["pages_per_minute"]
    base_ppm = 60 * base_info["pages"] / base_info["seconds"]
    pixels = args.max_pixels or "bundle default"
    rows = [
        ("ppvl-ocr scan", scan_ppm, scan_wall, scan_rss),
        ("one page at a time", base_ppm, base_wall, base_rss),
    ]
    table = "\n".join(f"| {name} | {ppm:.1f} | {wall:.1f} | {rss:.0f} |" for name, ppm, wall, rss in rows)
    report = (
        f"\n## {bundle.name} ({args.quant}), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Machine: {machine()}.  \n"
        f"{total} pages in {len(DOCS)} PDFs; max_pixels {pixels}; max_new_tokens {args.max_new_tokens}; "
        f"scan --batch-size {args.batch_size}; threads {args.threads or 'default'}.\n\n"
        f"| run | pages/min (model loaded) | wall s (incl. loading) | peak RSS MiB |\n"
        f"|---|---|---|---|\n{table}\n\n"
        f"scan / one-at-a-time: {scan_ppm / base_ppm:.2f}x pages per minute.\n"
    )
    results = ROOT / "bench" / "RESULTS.md"
    if not results.exists():
        results.write_text("# Benchmark results\n\nAppended by the scripts in bench/; newest last.\n")
    with open(results, "a", encoding="utf-8") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
