"""Prefill of one full page against llama.cpp's batch size (tokens per llama_decode call).

Each n_batch runs in its own process on the full-size decoder (bench/work/bundle-full, made by
bench_engine.py): a 1240-token image embedding (random, fixed seed) with the OCR prompt around
it, prefilled --rounds times in a context of one page (6209 tokens, as the engine sizes it), then
32 greedy tokens, which must be the same for every n_batch. Reports the median prefill seconds
and the process's peak RSS (the attention scores of one call are n_batch x n_ctx x heads floats).

    python bench/bench_prefill.py                    # n_batch 64,128,256,512
    python bench/bench_prefill.py --batches 128,512 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_engine import machine, peak_rss_mb, report  # noqa: E402

PROMPT_BEFORE = [3, 457, 370, 470, 419, 513]  # the plain fixture's OCR prompt around the image
PROMPT_AFTER = [514, 339, 470, 14, 368, 470, 14]


def run(gguf: Path, n_batch: int, n_ctx: int, rounds: int, threads: int | None) -> dict:
    import llama_cpp
    import numpy as np

    from ppvl_batch.engine.llama import TextDecoder
    from ppvl_batch.engine.vision import ImageEmbedding

    decoder = TextDecoder(gguf, n_ctx=n_ctx, n_batch=n_batch, threads=threads)
    rng = np.random.default_rng(0)
    image = ImageEmbedding(rng.standard_normal((1240, decoder.n_embd)).astype(np.float32) * 0.02, 31, 40, 1120, 868, 0.0)
    memory = llama_cpp.llama_get_memory(decoder.ctx)
    seconds = []
    for _ in range(rounds):
        llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
        started = time.perf_counter()
        n_prompt, logits = decoder.prefill(PROMPT_BEFORE, image, PROMPT_AFTER, 0)
        seconds.append(time.perf_counter() - started)
    tokens = []
    for i in range(32):
        tokens.append(int(np.argmax(logits)))
        decoder.decode_step([tokens[-1]], [n_prompt + i], [0])
        logits = decoder.logits(0)
    return {"prefill_s": statistics.median(seconds), "all_s": seconds, "tokens": tokens, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "bench" / "work" / "bundle-full")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--batches", default="64,128,256,512")
    ap.add_argument("--n-ctx", type=int, default=6209)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)  # child: one n_batch
    args = ap.parse_args()
    gguf = args.bundle / f"text-{args.quant}.gguf"
    if args.run:
        print(json.dumps(run(gguf, args.run, args.n_ctx, args.rounds, args.threads)))
        return
    rows = []
    for n_batch in (int(b) for b in args.batches.split(",")):
        cmd = [sys.executable, __file__, "--run", str(n_batch), "--bundle", str(args.bundle), "--quant", args.quant,
               "--n-ctx", str(args.n_ctx), "--rounds", str(args.rounds)] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append((n_batch, json.loads(out.strip().splitlines()[-1])))
    first_tokens = rows[0][1]["tokens"]
    lines = [
        f"### Prefill against n_batch ({args.quant}, 1240 image tokens, n_ctx {args.n_ctx})",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}. Command: `python bench/bench_prefill.py"
        + (f" --batches {args.batches}" if args.batches != "64,128,256,512" else "")
        + (f" --threads {args.threads}" if args.threads else "") + "`",
        "",
        "| n_batch | prefill s, median (all) | peak RSS MB | same 32 greedy tokens as the first row |",
        "|---|---|---|---|",
    ]
    for n_batch, r in rows:
        runs = ", ".join(f"{s:.2f}" for s in r["all_s"])
        lines.append(f"| {n_batch} | {r['prefill_s']:.2f} ({runs}) | {r['peak_rss_mb']:.0f} | {r['tokens'] == first_tokens} |")
    report(lines)


if __name__ == "__main__":
    main()
