"""Calibrate `--review-below` on your own documents: character error rate against confidence.

Token probabilities are not calibrated chances of being right, and they shift with the model,
its quant and the documents, so a threshold must be checked where it is used. Scan pages whose
text you know, then:

    ppvl-ocr scan sample_docs -o records.jsonl
    python tools/calibrate_review.py records.jsonl                     # truth: NAME.gt.json beside each document
    python tools/calibrate_review.py records.jsonl --truth truth.jsonl # truth: {"source", "page", "text"} lines
    python tools/calibrate_review.py records.jsonl --bad-cer 0.05 --catch 0.9 --json

Ground truth comes in either shape: `NAME.gt.json` beside document `NAME.EXT` as in sample_docs
(`{"pages": ["text of page 1", ...]}`), or a JSONL of `{"source": ..., "page": N, "text": ...}`
whose source is written as in the records. Records without truth, without a confidence (blank,
copied, failed pages) are left out and counted.

A page is bad when its CER is above --bad-cer. The report lists CER by confidence band, and for
confidence and for min_token_prob the threshold that catches --catch of the bad pages (the
smallest value above that share of their scores) with the good pages it would flag as well.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Scored:
    label: str
    cer: float
    confidence: float
    min_token_prob: float
    reasons: list[str]


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def page_cer(hyp: str, ref: str) -> float:
    """Edits per reference character, whitespace at the ends ignored (an empty truth: 0 or 1)."""
    hyp, ref = hyp.strip(), ref.strip()
    return edit_distance(hyp, ref) / len(ref) if ref else float(bool(hyp))


def read_jsonl(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SystemExit(f"{path}:{n}: not JSON: {exc}") from None


def truth_beside(source: str, page: int, cache: dict[Path, list[str] | None]) -> str | None:
    """The text of `page` from NAME.gt.json beside document NAME.EXT, if there is one."""
    path = Path(source)
    gt = path.with_name(path.name.rsplit(".", 1)[0] + ".gt.json")
    if gt not in cache:
        cache[gt] = json.loads(gt.read_text())["pages"] if gt.is_file() else None
    pages = cache[gt]
    return pages[page - 1] if pages is not None and 0 < page <= len(pages) else None


def score(records: Iterable[dict], truth: dict[tuple[str, int], str] | None) -> tuple[list[Scored], dict[str, int]]:
    """Each record with truth and a confidence, scored; and how many were left out, by why."""
    scored, left_out = [], {"no truth": 0, "no confidence (blank, copied, failed)": 0}
    cache: dict[Path, list[str] | None] = {}
    for r in records:
        if r.get("status") != "ok" or r.get("confidence") is None:
            left_out["no confidence (blank, copied, failed)"] += 1
            continue
        key = (r["source"], r["page"])
        ref = truth.get(key) if truth is not None else truth_beside(*key, cache)
        if ref is None:
            left_out["no truth"] += 1
            continue
        scored.append(Scored(f"{r['source']}#{r['page']}", page_cer(r["text"] or "", ref), r["confidence"],
                             r["min_token_prob"], r.get("review_reasons") or []))
    return scored, left_out


def threshold(bad: list[float], catch: float) -> float | None:
    """The smallest threshold t with at least `catch` of `bad` below it: just above the score of
    the ceil(catch * n)-th least sure bad page."""
    if not bad:
        return None
    k = max(1, math.ceil(catch * len(bad)))
    return math.nextafter(sorted(bad)[k - 1], math.inf)


def rule(pages: list[Scored], field: str, bad_cer: float, catch: float) -> dict[str, float | int | None]:
    bad = [getattr(p, field) for p in pages if p.cer > bad_cer]
    t = threshold(bad, catch)
    good = [getattr(p, field) for p in pages if p.cer <= bad_cer]
    return {"threshold": t, "bad_caught": sum(v < t for v in bad) if t is not None else 0, "bad": len(bad),
            "good_flagged": sum(v < t for v in good) if t is not None else 0, "good": len(good)}


def bands(pages: list[Scored], n: int = 5) -> list[dict[str, float | int]]:
    """Pages in n confidence bands of equal size (least sure first): range, count, mean CER."""
    ordered = sorted(pages, key=lambda p: p.confidence)
    out = []
    for i in range(n):
        part = ordered[i * len(ordered) // n : (i + 1) * len(ordered) // n]
        if part:
            out.append({"from": part[0].confidence, "to": part[-1].confidence, "pages": len(part),
                        "mean_cer": sum(p.cer for p in part) / len(part), "worst_cer": max(p.cer for p in part)})
    return out


def report(pages: list[Scored], left_out: dict[str, int], bad_cer: float, catch: float) -> dict:
    return {"pages": len(pages), "left_out": left_out, "bad_cer": bad_cer, "catch": catch, "bands": bands(pages),
            "review_below": rule(pages, "confidence", bad_cer, catch),
            "review_min_token": rule(pages, "min_token_prob", bad_cer, catch)}


def markdown(result: dict, pages: list[Scored], show: int) -> str:
    lines = [f"{result['pages']} pages with truth and confidence; left out: "
             + (", ".join(f"{n} {why}" for why, n in result["left_out"].items() if n) or "none"), "",
             "| confidence from | to | pages | mean CER | worst CER |", "|---|---|---|---|---|"]
    lines += [f"| {b['from']:.4f} | {b['to']:.4f} | {b['pages']} | {b['mean_cer']:.3f} | {b['worst_cer']:.3f} |"
              for b in result["bands"]]
    for option, field in (("--review-below", "review_below"), ("--review-min-token", "review_min_token")):
        r = result[field]
        if r["threshold"] is None:
            lines.append(f"\n{option}: no page has CER above {result['bad_cer']}: nothing to catch")
            continue
        lines.append(f"\n{option} {r['threshold']:.4g} catches {r['bad_caught']} of {r['bad']} pages with CER > "
                     f"{result['bad_cer']} (asked: {result['catch']:.0%}) and flags {r['good_flagged']} of "
                     f"{r['good']} good pages too")
    if show:
        lines += ["", "| page | confidence | min_token_prob | CER | review_reasons |", "|---|---|---|---|---|"]
        lines += [f"| {p.label} | {p.confidence:.4f} | {p.min_token_prob:.4f} | {p.cer:.3f} | {' '.join(p.reasons)} |"
                  for p in sorted(pages, key=lambda p: p.confidence)[:show]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=Path, help="JSONL records of `ppvl-ocr scan`")
    parser.add_argument("--truth", type=Path, help="JSONL of {source, page, text} (default: NAME.gt.json files)")
    parser.add_argument("--bad-cer", type=float, default=0.05, help="a page with a CER above this is bad (0.05)")
    parser.add_argument("--catch", type=float, default=0.9, help="share of bad pages the threshold must catch (0.9)")
    parser.add_argument("--show", type=int, default=10, help="list this many least sure pages (10)")
    parser.add_argument("--json", action="store_true", help="the result as JSON")
    args = parser.parse_args(argv)
    if not 0 < args.catch <= 1:
        parser.error("--catch must be above 0 and at most 1")
    truth = None
    if args.truth:
        truth = {(t["source"], t["page"]): t["text"] for t in read_jsonl(args.truth)}
    pages, left_out = score(read_jsonl(args.records), truth)
    if not pages:
        print("no page with both a confidence and ground truth", file=sys.stderr)
        return 1
    result = report(pages, left_out, args.bad_cer, args.catch)
    print(json.dumps(result, indent=2) if args.json else markdown(result, pages, args.show))
    return 0


if __name__ == "__main__":
    sys.exit(main())
