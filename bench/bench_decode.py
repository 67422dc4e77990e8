"""Decode throughput with several pages in flight in one llama.cpp context.

Single-sequence decoding on a CPU is bound by reading the weights once per token; decoding N
pages together reads them once per step for all N. This measures aggregate decode tokens/s for
1, 2, 4 and 8 pages in flight on the full-size bundle that bench_engine.py builds (same image
embedding for every page, EOS ignored, a fixed number of tokens each).

    python bench/bench_decode.py [--quant Q4_K_M] [--new-tokens 128] [--parallel 1,2,4,8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import machine, page_image, peak_rss_mb, prepare, report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--parallel", default="1,2,4,8")
    args = parser.parse_args()

    from ppvl_batch.recognizer import Recognizer

    _, bundle = prepare(args.work)
    levels = [int(p) for p in args.parallel.split(",")]
    rows = []
    with Recognizer.load(bundle, quant=args.quant, parallel=max(levels), max_new_tokens=args.new_tokens) as rec:
        [encoded] = rec.encode([page_image()])
        for n in levels:
            requests = []
            for _ in range(n):
                request = rec.request(encoded, "ocr", max_new_tokens=args.new_tokens, repetition_guard=False)
                request.ignore_eos = True
                requests.append(request)
            # Prefill all pages first so only decode steps are timed.
            generations = list(rec.decoder.generate_many(requests))
            total_tokens = sum(len(g.token_ids) for _, g in generations)
            decode_wall = max(g.decode_seconds for _, g in generations)
            prefill = sum(g.prefill_seconds for _, g in generations)
            rows.append((n, total_tokens / decode_wall, prefill / n))
            print(f"{n} in flight: {total_tokens / decode_wall:.1f} tok/s", file=sys.stderr)
    base = rows[0][1]
    lines = [
        f"### Decoding several pages together ({args.quant}, {encoded.image_tokens} image tokens, {args.new_tokens} tokens per page)",
        "",
        f"{time.strftime('%Y-%m-%d')}, {machine()}. Command: `python bench/bench_decode.py --quant {args.quant} --new-tokens {args.new_tokens}`. Peak RSS {peak_rss_mb():.0f} MB.",
        "",
        "| pages in flight | aggregate decode tok/s | x single | prefill s per page |",
        "|---|---|---|---|",
    ] + [f"| {n} | {tps:.1f} | {tps / base:.2f} | {pre:.2f} |" for n, tps, pre in rows]
    report(lines)


if __name__ == "__main__":
    main()
