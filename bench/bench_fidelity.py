"""How far the fast defaults move the answers from the reference numerics.

The default path runs vision in bf16 on CPUs with native bf16 and keeps llama.cpp's f16 KV
cache with flash attention; the exact path is fp32 vision and an f32 KV cache (what the parity
tests compare with transformers). For a bundle and a set of pages this measures:

- cosine similarity of the image embeddings (bf16 or int8-weight vision vs fp32 vision),
- token agreement of greedy answers: pages whose tokens are identical, and the share of tokens
  before the first difference,

for each default, and for the opt-in int8 vision weights, against the exact path.

    python bench/bench_fidelity.py --model BUNDLE [--pages N] [--new-tokens 64]
    python bench/bench_fidelity.py --tiny            # a random-weight test checkpoint
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tools"))

from bench_engine import machine, report  # noqa: E402


def pages(n: int):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = int(rng.integers(300, 900)), int(rng.integers(300, 900))
        img = Image.new("RGB", (w, h), (int(rng.integers(200, 256)),) * 3)
        draw = ImageDraw.Draw(img)
        for y in range(10, h - 20, 30):
            draw.text((10, y), f"Item {i}-{y}: {rng.integers(0, 10**6)} units", fill=(0, 0, 0))
        out.append(img)
    return out


def agreement(a: list[int], b: list[int]) -> float:
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(len(a), len(b), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="bundle folder (default: the demo model)")
    parser.add_argument("--tiny", action="store_true", help="use a random-weight test checkpoint instead")
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    from ppvl_batch.recognizer import Recognizer

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.tiny:
            import tiny_model

            from ppvl_batch.convert import convert

            model = convert(str(tiny_model.build_checkpoint(Path(tmp) / "ck", seed=7)), Path(tmp) / "b", ["F32"])
        images = pages(args.pages)
        configs = {
            "exact (fp32 vision, f32 KV)": dict(dtype="fp32", kv_type="f32"),
            "bf16 vision, f32 KV": dict(dtype="bf16", kv_type="f32"),
            "fp32 vision, f16 KV": dict(dtype="fp32", kv_type="f16"),
            "default (bf16 vision, f16 KV)": dict(dtype="bf16", kv_type="f16"),
            "int8 vision, f32 KV": dict(dtype="int8", kv_type="f32"),
            "--vision-dtype int8 (int8 vision, f16 KV)": dict(dtype="int8", kv_type="f16"),
        }
        answers, embeddings, name = {}, {}, ""
        for label, options in configs.items():
            with Recognizer.load(model, **options) as rec:
                name = rec.bundle.id
                encoded = rec.encode(images)
                embeddings[label] = [e.embedding.embeddings for e in encoded]
                jobs = [(e, rec.request(e, "ocr", max_new_tokens=args.new_tokens, repetition_guard=False)) for e in encoded]
                results = dict(rec.decode_many(jobs))
                answers[label] = [results[i].token_ids for i in range(len(encoded))]

    exact = "exact (fp32 vision, f32 KV)"
    lines = [
        f"### Fidelity of the fast defaults ({name}, {args.pages} pages, {args.new_tokens} tokens)",
        "",
        f"{time.strftime('%Y-%m-%d')}, {machine()}. Command: `python bench/bench_fidelity.py "
        f"{'--tiny ' if args.tiny else f'--model {args.model} ' if args.model else ''}--pages {args.pages} --new-tokens {args.new_tokens}`",
        "",
        "| path vs exact | min embedding cosine | pages with identical tokens | tokens before first difference |",
        "|---|---|---|---|",
    ]
    for label in list(configs)[1:]:
        cos = min(
            float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
            for a, b in zip(embeddings[label], embeddings[exact])
        )
        same = sum(a == b for a, b in zip(answers[label], answers[exact]))
        agree = np.mean([agreement(a, b) for a, b in zip(answers[label], answers[exact])])
        lines.append(f"| {label} | {cos:.5f} | {same}/{len(images)} | {100 * agree:.1f}% |")
    report(lines)


if __name__ == "__main__":
    main()
