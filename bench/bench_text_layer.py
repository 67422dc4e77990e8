"""Born-digital pages through their text layer: pages per minute with `--text-layer ignore` and `auto`.

    python bench/bench_text_layer.py --decide-only          # the text-layer step alone (runs today)
    python bench/bench_text_layer.py --size full            # scan, whole page and layout mode

The archive is one PDF of 40 pages from tools/text_pdfs.py: born-digital pages (letter with
several fonts, two columns, a ruled table, a rotated page, CJK) alternating with scans of the
same pages. `--decide-only` times PdfDocument.text_layer on every page (both check renders, the
decision, the extraction) and counts the trusted pages. The full run times `ppvl-ocr scan` with
full-size random weights, each policy and mode in a fresh process, and reads from the records how
many pages (and layout blocks) took their text from the file. It needs scan's `--text-layer`
option (issue 23's integration) and says so when scan lacks it. Results are appended to
bench/RESULTS.md with the machine and date.
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
sys.path.insert(0, str(ROOT / "tools"))

from bench_engine import machine, report, table  # noqa: E402 (after the sys.path setup)
from text_pdfs import mixed_archive  # noqa: E402

PAGES = 40


def decide_only(archive: Path) -> list[str]:
    from ppvl_batch.documents.pages import open_document

    rows = []
    with open_document(archive, max_pixels=1_003_520) as doc:
        for number in range(1, doc.page_count + 1):
            start = time.perf_counter()
            layer = doc.text_layer(number)
            assert layer is not None
            rows.append((number, time.perf_counter() - start, layer.trust.trusted, layer.trust.reason))
    trusted = [r for r in rows if r[2]]
    ms = sorted(1000 * r[1] for r in rows)
    return [f"## text layer decision, {PAGES}-page mixed archive, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
            f"Machine: {machine()}.", "",
            *table(["pages", "trusted", "median ms/page", "max ms/page", "pages/min (decision + extraction)"],
                   [[len(rows), len(trusted), f"{ms[len(ms) // 2]:.0f}", f"{ms[-1]:.0f}",
                     f"{60 * len(rows) / sum(r[1] for r in rows):.0f}"]])]


def scan(archive: Path, bundle: Path, policy: str, extra: list[str]) -> dict:
    out = WORK / f"text-layer-{policy}{'-layout' if '--layout' in extra else ''}.jsonl"
    summary = out.with_suffix(".summary.json")
    command = [PPVL, "scan", str(archive), "-o", str(out), "--overwrite", "--quiet", "--model", str(bundle),
               "--text-layer", policy, "--summary-json", str(summary), *extra]
    subprocess.run(command, check=True)
    info = json.loads(summary.read_text())
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    info["pages_from_pdf"] = sum(r.get("text_source") == "pdf" for r in records)
    blocks = [b for r in records for b in r.get("blocks") or ()]
    info["blocks_from_pdf"] = sum(b.get("text_source") == "pdf" for b in blocks)
    info["model_tokens"] = sum(b.get("output_tokens") or 0 for b in blocks) or sum(r.get("output_tokens") or 0 for r in records)
    # all pages per minute (the summary's pages_per_minute counts only the model's pages), and the
    # born-digital pages' own seconds (odd page numbers in mixed_archive), rendering included
    info["all_per_minute"] = 60 * info["pages_ok"] / info["seconds"]
    born = [r["seconds"] for r in records if r["page"] % 2 == 1]
    info["born_seconds"] = sum(born) / len(born)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decide-only", action="store_true")
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--layout-args", default="--layout", help="scan options that turn layout mode on")
    parser.add_argument("--pages", type=int, default=PAGES, help="pages of the archive (2 cores: fewer)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="per page (random weights never stop)")
    parser.add_argument("--modes", default="whole,layout", help="whole and/or layout (a bundle without a layout model)")
    args = parser.parse_args()
    archive = WORK / f"text-layer-archive-{args.pages}.pdf"
    if not archive.exists():
        mixed_archive(archive, args.pages)
    if args.decide_only:
        return report(decide_only(archive))
    if "--text-layer" not in subprocess.run([PPVL, "scan", "--help"], check=False, capture_output=True, text=True).stdout:
        sys.exit("ppvl-ocr scan has no --text-layer option yet (issue 23's integration): use --decide-only")
    from bench_scan import make_bundle

    bundle = args.bundle or make_bundle(args.size, args.quant)
    rows = []
    modes = {"whole": ("whole page", ["--no-layout"]), "layout": ("layout", args.layout_args.split())}
    for mode, extra in (modes[m] for m in args.modes.split(",")):
        for policy in ("ignore", "auto"):
            info = scan(archive, bundle, policy, [*extra, "--max-new-tokens", str(args.max_new_tokens)])
            rows.append([mode, policy, f"{info['all_per_minute']:.1f}", f"{info['born_seconds']:.2f}",
                         info["pages_from_pdf"], info["blocks_from_pdf"], info["model_tokens"]])
    title = f"## --text-layer, {args.pages}-page mixed archive (half born-digital), {bundle}"
    report([f"{title}, --max-new-tokens {args.max_new_tokens}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
            f"Machine: {machine()}.", "",
            *table(["mode", "--text-layer", "pages/min (all)", "s per born-digital page", "pages from PDF",
                    "blocks from PDF", "model tokens"], rows)])


if __name__ == "__main__":
    main()
