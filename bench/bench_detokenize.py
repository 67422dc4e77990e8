"""Cost per generated token of the streaming detokenizer (ppvl_batch/engine/detokenize.py), for answers
of growing length: flat means O(1) per token. Tokens are drawn from a tiny test tokenizer's
vocabulary (ordinary pieces, with or without byte tokens mixed in), with and without stop strings.

    .venv/bin/python bench/bench_detokenize.py
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

import tiny_model  # noqa: E402

from ppvl_batch.engine.detokenize import Detokenizer  # noqa: E402
from ppvl_batch.engine.tokenizer import load_tokenizer  # noqa: E402


def per_token_us(detok: Detokenizer, ids: list[int], stop: list[str], repeats: int = 5) -> float:
    """Best of `repeats` (the machine is shared)."""
    best = float("inf")
    for _ in range(repeats):
        stream = detok.stream(stop)
        started = time.perf_counter()
        for token in ids:
            stream.push(token)
        stream.finish()
        best = min(best, time.perf_counter() - started)
    return best / len(ids) * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tiny_model.build_tokenizer(tmp)
        (Path(tmp) / "config.json").write_text('{"model_type": "paddleocr_vl"}')
        tokenizer = load_tokenizer(tmp)
    detok = Detokenizer(tokenizer)
    vocab = [i for i in range(len(tokenizer)) if not (tokenizer.convert_ids_to_tokens(i) or "<").startswith("<")]
    byte_ids = [i for i in range(len(tokenizer)) if (tokenizer.convert_ids_to_tokens(i) or "").startswith("<0x")]
    rng = random.Random(0)
    print("| answer tokens | text only | text + 2 stop strings | 10% byte tokens + stops |")
    print("|---|---|---|---|")
    for n in (256, 1024, 4096):
        text = [rng.choice(vocab) for _ in range(n)]
        mixed = [rng.choice(byte_ids) if rng.random() < 0.1 else t for t in text]
        stops = ["@@@", "\n\n\n\n"]
        cells = [per_token_us(detok, text, []), per_token_us(detok, text, stops), per_token_us(detok, mixed, stops)]
        print(f"| {n} | " + " | ".join(f"{c:.1f} us" for c in cells) + " |")


if __name__ == "__main__":
    main()
