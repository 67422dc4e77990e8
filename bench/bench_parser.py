"""Layout mode (DocumentParser: one crop per block, each with its prompt) against whole-page mode,
on a generated 12-block page (tools/layout_page.py: titles, paragraphs, a table, a formula).

    python bench/bench_parser.py                       # the demo bundle, 2 pages
    python bench/bench_parser.py --bundle B --pages 4 --parallel 1,4 --append
    python bench/bench_parser.py --bundle B --detector v3   # layout rows also run a full-size detector

The parser's detector is a stand-in that returns the page's known blocks, so every run reads the
same 12 blocks; with `--detector v2|v3` a full-size random-weight PP-DocLayout of that version
also detects on every page in the layout rows (its time and memory counted; its boxes unused:
random weights find nothing meaningful). Each row runs in a process of its own (its peak RSS is
the row's), one recognizer warmed up on one page first; seconds are wall time per page, the least
of --repeats runs, and the process's CPU time (vision and decode seconds: the last run's). "CER"
compares the text read with the text printed (the demo model reads the blocks at its own pixel
limits; a random-weight bundle reads nothing). Whole-page rows at "same tokens" decode exactly as
many tokens per page as layout mode did (EOS ignored).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import machine, peak_rss_mb, report, table  # noqa: E402
from bench_layout import full_size_detector  # noqa: E402
from layout_page import layout_page  # noqa: E402
from train_demo import edit_distance  # noqa: E402


class StandIn:
    """The page's known blocks; with `model` (a full-size detector) that also runs on the pages."""

    def __init__(self, regions_by_page, model=None):
        self.regions_by_page = regions_by_page
        self.model = model

    def detect(self, images):
        if self.model is not None:
            self.model.detect(images)
        return [self.regions_by_page[id(image)] for image in images]


def cer(read: list[str], printed: list[str]) -> float:
    return sum(edit_distance(a, b) for a, b in zip(read, printed)) / max(1, sum(len(b) for b in printed))


def timed(fn, repeats: int):
    """(result of the last call, least wall seconds, least CPU seconds of this process) over
    `repeats` calls: the machine is shared, the least is the least disturbed."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, min(walls), min(cpus)


def per_page(results, wall: float, cpu: float, decode: list[float], error_rate: float) -> dict:
    """A row's numbers per page from ParsedPages or PageResults (same field names)."""
    n = len(results)
    return dict(
        seconds=wall / n,
        cpu=cpu / n,
        tokens_in=sum(r.image_tokens for r in results) / n,
        tokens_out=sum(r.output_tokens for r in results) / n,
        vision=sum(r.vision_seconds for r in results) / n,
        decode=sum(decode) / n,
        cer=error_rate,
        out_per_page=[r.output_tokens for r in results],
    )


def run_layout(rec, pages, limits, max_new_tokens, repeats, detector_version: str | None) -> dict:
    from ppvl_batch.layout.parser import DocumentParser, ParserOptions

    model = full_size_detector(detector_version) if detector_version else None
    detector = StandIn({id(p.image): p.regions for p in pages}, model)
    parser = DocumentParser(rec, detector, ParserOptions(min_pixels=limits[0], max_pixels=limits[1], max_new_tokens=max_new_tokens))
    parser.parse([pages[0].image])  # warm-up
    parsed, wall, cpu = timed(lambda: parser.parse([p.image for p in pages]), repeats)
    read = [b.text for page in parsed for b in page.blocks]
    printed = [r.text for p in pages for r in p.regions]
    return per_page(parsed, wall, cpu, [p.decode_seconds for p in parsed], cer(read, printed))


def run_whole(rec, pages, max_pixels, new_tokens, repeats) -> dict:
    """Whole pages with the OCR prompt, as scan reads them (vision for the batch, then
    decode_many); `new_tokens`: a list (exact count per page, EOS ignored) or an int (the cap)."""
    images = [p.image for p in pages]
    rec.encode([rec.preprocessor(images[0], max_pixels=max_pixels)])  # warm-up

    def once():
        encoded = rec.encode([rec.preprocessor(image, max_pixels=max_pixels) for image in images])
        jobs = []
        for i, page in enumerate(encoded):
            exact = isinstance(new_tokens, list)
            # Exact counts: the repetition guard would cut a random model's loops short.
            request = rec.request(page, "ocr", max_new_tokens=new_tokens[i] if exact else new_tokens, repetition_guard=not exact)
            request.ignore_eos = exact
            jobs.append((page, request))
        results = dict(rec.decode_many(jobs))
        return [results[i] for i in range(len(pages))]

    outcomes, wall, cpu = timed(once, repeats)
    printed = ["\n".join(reg.text for reg in p.regions) for p in pages]
    decode = [r.prefill_seconds + r.decode_seconds for r in outcomes]
    return per_page(outcomes, wall, cpu, decode, cer([r.text for r in outcomes], printed))


def child(args: argparse.Namespace) -> dict:
    """One row, in this process: `args.child` is "layout MIN MAX" or "whole MAX [TOKENS,...]"."""
    from ppvl_batch.recognizer import Recognizer

    pages = [layout_page(seed, titles={1: "1 Intro", 8: "2.1 Notes"}) for seed in range(args.pages)]
    mode, *numbers = args.child.split()
    with Recognizer.load(args.bundle, quant=args.quant, parallel=args.child_parallel, threads=args.threads) as rec:
        if mode == "layout":
            limits = (int(numbers[0]), int(numbers[1]))
            result = run_layout(rec, pages, limits, args.max_new_tokens, args.repeats, args.detector)
        else:
            tokens = [int(t) for t in numbers[1].split(",")] if len(numbers) > 1 else args.page_max_new_tokens
            result = run_whole(rec, pages, int(numbers[0]), tokens, args.repeats)
    return {**result, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="demo")
    ap.add_argument("--pages", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="per block in layout mode")
    ap.add_argument("--page-max-new-tokens", type=int, default=1024, help="per page in whole-page mode")
    ap.add_argument("--quant", help="decoder quantization (default: the bundle's)")
    ap.add_argument("--parallel", default="1,4")
    ap.add_argument("--detector", choices=["v2", "v3"], help="also run a full-size layout detector in the layout rows")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row; the least is kept")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one row in a process of its own
    ap.add_argument("--child-parallel", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    from ppvl_batch.bundle import Bundle, resolve_model
    from ppvl_batch.layout.blocks import BLOCK_MAX_PIXELS, BLOCK_MIN_PIXELS

    bundle = Bundle.open(resolve_model(args.bundle))
    pre, quant = bundle.preprocessor, (args.quant or bundle.default_quant).upper()
    bundle_limits = (int(pre["min_pixels"]), int(pre["max_pixels"]))
    passed = [a for a in sys.argv[1:] if a != "--append"]

    def row(spec: str, parallel: int) -> dict:
        command = [sys.executable, __file__, *passed, "--child", spec, "--child-parallel", str(parallel)]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{spec} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows = []
    for parallel in [int(p) for p in args.parallel.split(",")]:
        limit_rows = {(BLOCK_MIN_PIXELS, BLOCK_MAX_PIXELS): "layout, block limits"}
        limit_rows.setdefault(bundle_limits, f"layout, bundle limits {bundle_limits[1]}")
        for limits, name in limit_rows.items():
            rows.append((name + (f", {args.detector} detector" if args.detector else ""), parallel,
                         row(f"layout {limits[0]} {limits[1]}", parallel)))
        out = ",".join(str(n) for n in rows[-1][2]["out_per_page"])
        for max_pixels in sorted({bundle_limits[1], BLOCK_MAX_PIXELS}):
            rows.append((f"whole page, max {max_pixels}", parallel, row(f"whole {max_pixels}", parallel)))
            rows.append((f"whole page, max {max_pixels}, same tokens", parallel, row(f"whole {max_pixels} {out}", parallel)))

    lines = [
        f"### Layout mode vs whole-page mode ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, bundle {args.bundle} {quant}, "
        f"{args.pages} pages of 12 blocks)",
        "",
        f"{machine()}. Command: `python bench/bench_parser.py {' '.join(sys.argv[1:])}`",
        "",
        *table(["mode", "parallel", "s/page", "pages/min", "CPU s/page", "vision s", "decode s", "image tokens in",
                "tokens out", "CER", "peak RSS MB"],
               [[name, parallel, f"{r['seconds']:.2f}", f"{60 / r['seconds']:.2f}", f"{r['cpu']:.2f}", f"{r['vision']:.2f}",
                 f"{r['decode']:.2f}", f"{r['tokens_in']:.0f}", f"{r['tokens_out']:.0f}", f"{r['cer']:.3f}",
                 f"{r['peak_rss_mb']:.0f}"] for name, parallel, r in rows]),
    ]
    report(lines, append=args.append)


if __name__ == "__main__":
    main()
