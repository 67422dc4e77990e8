"""PP-DocLayoutV4 against V3: detection seconds and peak RSS per page, full-size random weights.

Each model runs in a process of its own (its peak RSS is its own: VmHWM), in one invocation, one
after the other: built at full size (tools/tiny_layout.py; speed and memory do not depend on the
weights' values), warmed up on one page, then `--pages` pages of the generated 12-block page
(tools/layout_page.py) through the whole detection (`RuledDetector.detect`: our preprocessing,
the forward pass, decoding, PaddleX's rules), one page per forward pass as on the CPU by default.
Reported per model: parameters, seconds per page (the least of --repeats passes over the pages:
the machine is shared), RSS once loaded and warmed up, the peak RSS while detecting, and the peak
over the loaded RSS (what a page costs at its peak).

    nice python bench/bench_layout_v4.py                     # v3,v4 and v4 with its warp head, 2 pages
    python bench/bench_layout_v4.py --versions v3,v4 --pages 4 --threads 2 --append
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_engine import machine, peak_rss_mb, report, table  # noqa: E402 (after the sys.path setup)


def rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def child(spec: str, pages: int, repeats: int, threads: int | None) -> dict:
    """One model in this process: `spec` is v3, v4 or v4+warp."""
    import tiny_layout
    import torch
    from layout_page import layout_page

    from ppvl_batch.layout.detector import LayoutDetector, Preprocessing, RuledDetector
    from ppvl_batch.layout.postprocess import LayoutRules

    if threads:
        torch.set_num_threads(threads)
    version, warp = spec.split("+")[0], spec.endswith("+warp")
    model = tiny_layout.make_model(version, "full", seed=0, warp=warp)
    pre = Preprocessing.from_config(tiny_layout.preprocessor_config(version), "bench", rescale_first=version == "v4")
    detector = RuledDetector(LayoutDetector(model, version, pre), LayoutRules.for_version(version), batch_size=1)
    images = [layout_page(seed).image for seed in range(pages)]
    detector.detect(images[:1])  # warm-up
    loaded = rss_mb()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        detector.detect(images)
        best = min(best, (time.perf_counter() - started) / pages)
    peak = peak_rss_mb()
    return {"params": sum(p.numel() for p in model.parameters()), "seconds": best, "loaded_mb": loaded,
            "peak_mb": peak, "threads": torch.get_num_threads(), "size": list(images[0].size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", default="v3,v4,v4+warp", help="comma-separated: v3, v4, v4+warp (v4 with its warp head)")
    ap.add_argument("--pages", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.pages, args.repeats, args.threads)))
        return

    passed = [a for a in sys.argv[1:] if a != "--append"]
    rows, size = [], None
    for spec in args.versions.split(","):
        out = subprocess.run([sys.executable, __file__, *passed, "--child", spec], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{spec} failed:\n{out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        size = r["size"]
        name = f"PP-DocLayout{spec.split('+')[0].upper()}" + (" + warp head" if spec.endswith("+warp") else "")
        rows.append([name, f"{r['params'] / 1e6:.1f} M", r["threads"], f"{r['seconds']:.2f}", f"{r['loaded_mb']:.0f}",
                     f"{r['peak_mb']:.0f}", f"+{r['peak_mb'] - r['loaded_mb']:.0f}"])
    lines = [
        f"### PP-DocLayoutV4 against V3, detection per page ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        (f"{machine()}. Command: `python bench/bench_layout_v4.py {' '.join(sys.argv[1:])}`. Full-size random weights, "
         f"{args.pages} generated 12-block pages ({size[0]} x {size[1]}), one page per forward pass, after one warm-up "
         "page; seconds: the least of the passes; each model in a process of its own."),
        "",
        *table(["model", "parameters", "threads", "s/page", "RSS loaded MB", "peak RSS MB", "peak over loaded MB"], rows),
    ]
    report(lines, append=args.append)


if __name__ == "__main__":
    main()
