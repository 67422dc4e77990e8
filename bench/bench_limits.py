"""What this machine could do at best for one page: the physical limits behind bench_engine.

Measures memory bandwidth (a large array copy) and the matmul rate of PyTorch (bf16 and fp32,
shaped like the vision MLP), then derives from the bundle's config:

- vision: FLOPs per page (linear layers + attention over the page's patches) / matmul FLOP/s,
- decode: bytes of decoder weights read per generated token / memory bandwidth.

    python bench/bench_limits.py [--bundle bench/work/bundle-full] [--quant Q4_K_M] [--patches 4960]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import machine, report  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bandwidth_gb_s() -> float:
    """Read + write of a 512 MB array, counted as both."""
    src = np.ones(64 * 2**20, dtype=np.float64)
    dst = np.empty_like(src)
    return 2 * src.nbytes / best_of(lambda: np.copyto(dst, src)) / 1e9


def matmul_gflop_s(dtype: torch.dtype, m: int = 4960, k: int = 1152, n: int = 4304) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * m * k * n / best_of(lambda: a @ b) / 1e9


def attention_gflop_s(patches: int, heads: int, head_dim: int) -> float:
    q, k, v = (torch.randn(1, heads, patches, head_dim, dtype=torch.bfloat16) for _ in range(3))
    seconds = best_of(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), repeats=2)
    return 4 * patches * patches * heads * head_dim / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bench" / "work" / "bundle-full")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--patches", type=int, default=4960, help="patches of the page (1240 image tokens x 4)")
    args = parser.parse_args()

    config = json.loads((args.bundle / "config.json").read_text())
    vision = config["vision_config"]
    hidden, inner, layers = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    heads = vision["num_attention_heads"]
    n = args.patches
    linear_flop = 2 * n * layers * (4 * hidden * hidden + 2 * hidden * inner)
    attention_flop = 4 * n * n * hidden * layers
    projector_flop = 2 * (n // 4) * (4 * hidden * 4 * hidden + 4 * hidden * config.get("hidden_size", 1024))
    per_token_bytes = weight_bytes_per_token(args.bundle / f"text-{args.quant}.gguf")

    bw = bandwidth_gb_s()
    bf16, fp32 = matmul_gflop_s(torch.bfloat16), matmul_gflop_s(torch.float32)
    attn = attention_gflop_s(n, heads, hidden // heads)
    vision_floor = (linear_flop + projector_flop) / (bf16 * 1e9) + attention_flop / (bf16 * 1e9)
    vision_kernels = (linear_flop + projector_flop) / (bf16 * 1e9) + attention_flop / (attn * 1e9)
    lines = [
        f"### Physical limits ({n} patches, {args.quant} decoder)",
        "",
        f"{time.strftime('%Y-%m-%d')}, {machine()}, torch threads {torch.get_num_threads()}. "
        f"Command: `python bench/bench_limits.py --quant {args.quant} --patches {n}`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| memory bandwidth (copy) | {bw:.1f} GB/s |",
        f"| matmul bf16 / fp32 ({n}x{hidden} @ {hidden}x{inner}) | {bf16:.0f} / {fp32:.0f} GFLOP/s |",
        f"| bf16 SDPA attention over {n} patches | {attn:.0f} GFLOP/s |",
        f"| vision FLOPs per page: linear + projector / attention | {(linear_flop + projector_flop) / 1e12:.2f} / {attention_flop / 1e12:.2f} TFLOP |",
        f"| vision floor at the matmul rate / with the measured attention rate | {vision_floor:.1f} s / {vision_kernels:.1f} s |",
        f"| decoder bytes read per token | {per_token_bytes / 1e6:.0f} MB |",
        f"| decode ceiling at that bandwidth | {bw * 1e9 / per_token_bytes:.0f} tok/s |",
    ]
    report(lines)


def weight_bytes_per_token(gguf_path: Path) -> int:
    """Every decoder weight is read once per step, except the token embedding table (one row)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(gguf_path).tensors if t.name != "token_embd.weight")


if __name__ == "__main__":
    main()
