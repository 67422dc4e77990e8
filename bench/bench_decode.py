"""Decode throughput with several pages in flight in one llama.cpp context.

Single-sequence decoding on a CPU is bound by reading the weights once per token; decoding N
pages together reads them once per step for all N. This measures aggregate decode tokens/s for
1, 2, 4 and 8 pages in flight on the full-size bundle that bench_engine.py builds (same image
embedding for every page, EOS ignored, a fixed number of tokens each).

    python bench/bench_decode.py [--quant Q4_K_M] [--new-tokens 128] [--parallel 1,2,4,8]

A second table separates the two possible costs of a step with N tokens: N pages (N KV streams,
one token each) against N consecutive tokens of ONE page in one batch (one KV stream). When both
cost the same, a step is bound by the matmuls over the weights, not by the attention.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import machine, page_image, peak_rss_mb, prepare, report  # noqa: E402

from ppvl_batch.engine.generate import generate_many  # noqa: E402


def step_ms(decoder, n: int, one_page: bool, p0: int, steps: int = 16) -> float:
    """Milliseconds per llama_decode of n tokens: n pages (sequences 0..n-1, same position) or
    n consecutive positions of sequence 0. Uses the decoder's step directly."""
    import llama_cpp

    start = time.perf_counter()
    for i in range(steps):
        positions = list(range(p0 + i * n, p0 + (i + 1) * n)) if one_page else [p0 + i] * n
        seqs = [0] * n if one_page else list(range(n))
        decoder.decode_step([100] * n, positions, seqs)
    elapsed = time.perf_counter() - start
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(decoder.ctx), -1, p0, -1)  # back to the pages
    return elapsed / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--parallel", default="1,2,4,8")
    parser.add_argument("--one-page-sizes", default="16,32,64,128", help="larger batches timed for one page only")
    args = parser.parse_args()

    from ppvl_batch.recognizer import Recognizer

    bundle = args.work / "bundle-full"
    prepare(args.work / "checkpoint-full", bundle, mmproj=False)
    levels = [int(p) for p in args.parallel.split(",")]
    rows = []
    with Recognizer.load(bundle, quant=args.quant, parallel=max(levels), max_new_tokens=args.new_tokens + 256) as rec:
        [encoded] = rec.encode([page_image()])
        for n in levels:
            requests = []
            for _ in range(n):
                request = rec.request(encoded, "ocr", max_new_tokens=args.new_tokens, repetition_guard=False)
                request.ignore_eos = True
                requests.append(request)
            # Prefill all pages first so only decode steps are timed.
            generations = list(generate_many(rec.decoder, requests))
            total_tokens = sum(len(g.token_ids) for _, g in generations)
            decode_wall = max(g.decode_seconds for _, g in generations)
            prefill = sum(g.prefill_seconds for _, g in generations)
            rows.append((n, total_tokens / decode_wall, prefill / n))
            print(f"{n} in flight: {total_tokens / decode_wall:.1f} tok/s", file=sys.stderr)
        # Every sequence now holds a full page: time bare steps past its answer.
        p0 = encoded.image_tokens + args.new_tokens + 64
        costs = [(n, step_ms(rec.decoder, n, False, p0), step_ms(rec.decoder, n, True, p0)) for n in levels]
        costs += [(int(n), None, step_ms(rec.decoder, int(n), True, p0, steps=4)) for n in args.one_page_sizes.split(",") if n]
    base = rows[0][1]
    options = (f" --parallel {args.parallel}" if args.parallel != "1,2,4,8" else "") + (
        f' --one-page-sizes "{args.one_page_sizes}"' if args.one_page_sizes != "16,32,64,128" else "")
    lines = [
        f"### Decoding several pages together ({args.quant}, {encoded.image_tokens} image tokens, {args.new_tokens} tokens per page)",
        "",
        f"{time.strftime('%Y-%m-%d')}, {machine()}. Command: `python bench/bench_decode.py --quant {args.quant} --new-tokens {args.new_tokens}{options}`. Peak RSS {peak_rss_mb():.0f} MB.",
        "",
        "| pages in flight | aggregate decode tok/s | x single | prefill s per page |",
        "|---|---|---|---|",
    ] + [f"| {n} | {tps:.1f} | {tps / base:.2f} | {pre:.2f} |" for n, tps, pre in rows] + [
        "",
        "| tokens per step (N) | ms per step, one token of each of N pages | ms per step, N tokens of one page | ms per token, one page |",
        "|---|---|---|---|",
    ] + [f"| {n} | {'-' if pages is None else f'{pages:.1f}'} | {one:.1f} | {one / n:.2f} |" for n, pages, one in costs]
    report(lines)


if __name__ == "__main__":
    main()
