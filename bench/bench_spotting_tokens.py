"""Tokens per page of a `Spotting:` answer against an `OCR:` answer for the same page.

Real weights are not available and random weights write no location tokens unless forced, so
this counts what the answers cost rather than timing a model: for every page with ground truth
beside sample_docs/ (NAME.gt.json), the OCR answer is its text and the spotting answers are the
same lines each followed by its 8 location tokens, in the bare and in the wrapped form
(docs/positions.md). Both are tokenized by a test tokenizer of the real layout (tools/tiny_model.py:
the 1001 location tokens and the markers are single added tokens, as in the checkpoint). A
decode step costs the same whatever token it writes, so decode time grows with these counts.

    python bench/bench_spotting_tokens.py [--append]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import machine, report, table  # noqa: E402


def answers(text: str) -> dict[str, str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    quad = "".join(f"<|LOC_{v}|>" for v in (120, 340, 870, 340, 870, 372, 120, 372))
    return {
        "OCR": "\n".join(lines),
        "Spotting, bare": "".join(f"{line}{quad}\n" for line in lines),
        "Spotting, wrapped": "".join(f"<|TEXT_START|>{line}<|TEXT_END|><|LOC_BEGIN|>{quad}<|LOC_END|>" for line in lines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()

    import tiny_model

    from ppvl_batch.engine.tokenizer import load_tokenizer

    pages = [page for gt in sorted((ROOT / "sample_docs").rglob("*.gt.json"))
             for page in json.loads(gt.read_text(encoding="utf-8"))["pages"]]
    with tempfile.TemporaryDirectory() as tmp:
        tiny_model.build_tokenizer(tmp, version="1.5")
        tokenizer = load_tokenizer(tmp)
        totals: dict[str, int] = {}
        line_count = 0
        for text in pages:
            line_count += len([line for line in text.splitlines() if line.strip()])
            for kind, answer in answers(text).items():
                totals[kind] = totals.get(kind, 0) + len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    ocr = totals["OCR"]
    rows = [[kind, f"{n / len(pages):.1f}", f"{(n - ocr) / line_count:.1f}", f"{n / ocr:.2f}"] for kind, n in totals.items()]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report([
        f"### Spotting vs OCR: answer tokens per page ({stamp}, {len(pages)} pages, {line_count} lines of sample_docs ground truth)",
        "",
        (f"{machine()}. Command: `python bench/bench_spotting_tokens.py{' --append' if args.append else ''}`. Counted "
         "with the test tokenizer (a 512-piece SentencePiece model with the real added tokens), not timed: the real "
         "tokenizer's 100k pieces make the text part shorter, the location part is the same 8-12 tokens a line."),
        "",
        *table(["answer", "tokens/page", "extra tokens/line", "x OCR"], rows),
    ], append=args.append)


if __name__ == "__main__":
    main()
