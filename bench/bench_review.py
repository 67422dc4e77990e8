"""The measurement behind the default --review-below (docs/confidence.md): the demo model
(ppvl_batch/demo) scans held-out synthetic pages (a seed its training never drew from) and the
sample_docs pages, and tools/calibrate_review.py relates each page's CER to its confidence.

    python bench/bench_review.py [--pages 60] [--bad-cer 0.05] [--catch 0.9]

Writes bench/work/review/ (pages with NAME.gt.json, records.jsonl) and appends the report to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tools"))

from bench_engine import machine, report  # noqa: E402


def write_pages(folder: Path, n: int) -> list[str]:
    """The pages, in the trainer's fonts that this machine has (their names returned)."""
    import render_pages
    from train_demo import heldout_pages

    render_pages.FONTS = [f for f in render_pages.FONTS if (render_pages.FONT_DIR / f).exists()]
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "synthetic").mkdir(parents=True)
    for i, page in enumerate(heldout_pages(n)):
        page.image.save(folder / "synthetic" / f"p{i:03d}.png")
        (folder / "synthetic" / f"p{i:03d}.gt.json").write_text(json.dumps({"pages": [page.text]}))
    shutil.copytree(ROOT / "sample_docs", folder / "sample_docs")
    return [Path(f).stem for f in render_pages.FONTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "review")
    parser.add_argument("--pages", type=int, default=60)
    parser.add_argument("--bad-cer", type=float, default=0.05)
    parser.add_argument("--catch", type=float, default=0.9)
    args = parser.parse_args()
    import os

    import calibrate_review
    from click.testing import CliRunner

    from ppvl_batch.cli import main as cli

    fonts = write_pages(args.work, args.pages)
    os.chdir(args.work)
    started = time.time()
    result = CliRunner().invoke(cli, ["scan", "synthetic", "sample_docs", "-o", "records.jsonl", "--overwrite",
                                      "--model", "demo", "--max-new-tokens", "160", "--no-layout"])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    pages, left_out = calibrate_review.score(calibrate_review.read_jsonl(Path("records.jsonl")), None)
    found = calibrate_review.report(pages, left_out, args.bad_cer, args.catch)
    lines = [
        "### needs_review: CER against confidence, demo model",
        "",
        (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}. Command: `python bench/bench_review.py "
         f"--pages {args.pages}` ({args.pages} held-out synthetic pages in {', '.join(fonts)} + sample_docs, demo bundle Q8_0, whole pages, "
         f"--max-new-tokens 160; scan took {time.time() - started:.0f} s)."),
        "",
        calibrate_review.markdown(found, pages, show=12),
    ]
    report(lines)


if __name__ == "__main__":
    main()
