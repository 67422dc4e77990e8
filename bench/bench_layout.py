"""Layout detection benchmark: seconds per page for PP-DocLayoutV2 and V3 at their real sizes.

Builds FULL-SIZE random-weight models of transformers' classes in memory (tools/tiny_layout.py;
speed does not depend on weight values) and times, per page of the generated 12-block page
(tools/layout_page.py, which bench_parser.py reads too), each stage of ppvl_batch.layout: our preprocessing (800 x 800 bicubic), the model's
forward pass, our decoding and the PaddleX rules. One warm-up batch is not counted.

    python bench/bench_layout.py                          # V2 and V3, 3 pages, batch 1
    python bench/bench_layout.py --versions v3 --pages 8 --batch-size 4 --threads 8
    python bench/bench_layout.py --device cuda

Prints a Markdown table (stdout); --append also appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def full_size_detector(version: str, device: str = "cpu"):
    """A full-size random-weight PP-DocLayout of `version` with the pipeline's rules."""
    import tiny_layout

    from ppvl_batch.layout.detector import LayoutDetector, Preprocessing, RuledDetector
    from ppvl_batch.layout.postprocess import LayoutRules

    model = tiny_layout.make_model(version, "full", seed=0)
    pre = Preprocessing.from_config(tiny_layout.preprocessor_config(version), "bench", rescale_first=version == "v4")
    return RuledDetector(LayoutDetector(model, version, pre, device), LayoutRules.for_version(version))


def run(version: str, image, pages: int, batch_size: int, device: str) -> dict:
    """Seconds per page of each stage, `pages` copies of `image` in batches of `batch_size`."""
    import torch

    from ppvl_batch.layout.detector import decode
    from ppvl_batch.layout.postprocess import apply_rules

    ruled = full_size_detector(version, device)
    detector, rules = ruled.detector, ruled.rules
    params = sum(p.numel() for p in detector.model.parameters())
    threshold = rules.min_threshold()
    sums = {"preprocess": 0.0, "forward": 0.0, "decode": 0.0, "rules": 0.0}
    batches = [min(batch_size, pages - i) for i in range(0, pages, batch_size)]
    for counted, n in [(False, batch_size)] + [(True, n) for n in batches]:
        images = [image] * n
        t0 = time.perf_counter()
        pixels = detector.preprocess(images)
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = detector.model(pixel_values=pixels)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        found = decode(out.logits, out.pred_boxes, out.order_logits, [im.size for im in images], threshold, detector.labels)
        t3 = time.perf_counter()
        for page in found:
            apply_rules(page, *image.size, version, rules)
        t4 = time.perf_counter()
        if counted:
            for key, dt in zip(sums, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                sums[key] += dt
    return {"params": params, **{k: v / pages for k, v in sums.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default="v2,v3")
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--append", action="store_true", help="also append the table to bench/RESULTS.md")
    args = parser.parse_args()

    import torch
    from bench_engine import machine, peak_rss_mb
    from layout_page import layout_page

    image = layout_page(0).image  # resized to the model's 800 x 800 first, like any page

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for version in args.versions.split(","):
        r = run(version, image, args.pages, args.batch_size, args.device)
        total = r["preprocess"] + r["forward"] + r["decode"] + r["rules"]
        rows.append(f"| PP-DocLayout{version.upper()} ({r['params'] / 1e6:.1f} M) | {r['preprocess']:.3f} | "
                    f"{r['forward']:.2f} | {r['decode']:.4f} | {r['rules']:.4f} | {total:.2f} |")
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## layout detection, full-size random weights, {now}",
        "",
        f"Machine: {machine()}; torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads; device {args.device}.  ",
        f"{args.pages} pages of {image.width} x {image.height} (12 blocks), batch size {args.batch_size}, after one warm-up batch; "
        f"peak RSS {peak_rss_mb():.0f} MiB.",
        "",
        "| model | preprocess s/page | forward s/page | decode s/page | PaddleX rules s/page | total s/page |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
