"""The vision encoder's patch budget per forward pass (engine/vision.py PATCHES_PER_FORWARD):
seconds and peak RSS of encoding the same images packed into passes of up to N patches.

Two workloads, on a full-size bundle (bench_engine's bench/work/bundle-full by default):

    crops   the 12 blocks of tools/layout_page's page, cut and sized as layout mode does
            (block pixel limits): 7056 patches, the largest crop 720
    pages   3 whole pages of 1000 x 1300 (4960 patches each), as scan --batch-size 3 sends them

Each (workload, budget) runs in a process of its own (its peak RSS is the row's): one warm-up
encode, then the least of --repeats timed ones. `--avx2` limits every kernel library to AVX2 as
bench_vision_cpu.py does (an AVX2-only CPU reproduced on a newer one).

    python bench/bench_vision_budget.py                      # budgets 1,1024,4096,16384
    python bench/bench_vision_budget.py --avx2 --append
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_engine import machine, peak_rss_mb, report, table  # noqa: E402
from bench_vision_cpu import EMULATION  # noqa: E402


def images(workload: str, rec) -> list:
    from layout_page import layout_page

    from ppvl_batch.layout.blocks import BLOCK_MAX_PIXELS, BLOCK_MIN_PIXELS, block_input

    if workload == "crops":
        page = layout_page(0, titles={1: "1 Intro", 8: "2.1 Notes"})
        return [rec.preprocessor(block_input(page.image, r.label, r.bbox, None),
                                 min_pixels=BLOCK_MIN_PIXELS, max_pixels=BLOCK_MAX_PIXELS) for r in page.regions]
    return [rec.prepare(layout_page(seed).image.resize((1000, 1300))) for seed in range(3)]


def child(args: argparse.Namespace) -> dict:
    import torch

    import ppvl_batch.engine.vision as vision
    from ppvl_batch.recognizer import Recognizer

    vision.PATCHES_PER_FORWARD = {"cpu": args.child_budget, "gpu": args.child_budget}
    rec = Recognizer.load(args.bundle, threads=args.threads)
    prepared = images(args.child, rec)
    rec.encode(prepared)  # warm-up (the weights become resident)
    best = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        rec.encode(prepared)
        best = min(best, time.perf_counter() - started)
    return {"seconds": best, "patches": sum(p.grid_h * p.grid_w for p in prepared), "images": len(prepared),
            "peak_rss_mb": peak_rss_mb(), "capability": torch.backends.cpu.get_cpu_capability(),
            "precision": rec.vision_precision}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=str(ROOT / "bench" / "work" / "bundle-full"))
    ap.add_argument("--budgets", default="1,1024,4096,16384")
    ap.add_argument("--workloads", default="crops,pages")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--avx2", action="store_true", help="limit the kernel libraries to AVX2")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-budget", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    env = {**os.environ, **(EMULATION if args.avx2 else {})}
    passed = [a for a in sys.argv[1:] if a != "--append"]
    rows = []
    for workload in args.workloads.split(","):
        for budget in [int(b) for b in args.budgets.split(",")]:
            command = [sys.executable, __file__, *passed, "--child", workload, "--child-budget", str(budget)]
            out = subprocess.run(command, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(f"{workload} {budget} failed:\n{out.stderr[-2000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if args.avx2 and result["capability"] != "AVX2":
                raise SystemExit(f"the AVX2 emulation did not take (torch capability {result['capability']})")
            rows.append((workload, budget, result))

    lines = [
        f"### Vision patch budget per forward pass ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{'AVX2-emulated' if args.avx2 else 'native'})",
        "",
        f"{machine()}. Command: `python bench/bench_vision_budget.py {' '.join(sys.argv[1:])}`",
        "",
        *table(["workload", "images", "patches", "budget", "vision precision", "seconds", "peak RSS MB"],
               [[workload, r["images"], r["patches"], budget, r["precision"], f"{r['seconds']:.2f}", f"{r['peak_rss_mb']:.0f}"]
                for workload, budget, r in rows]),
    ]
    report(lines, append=args.append)


if __name__ == "__main__":
    main()
