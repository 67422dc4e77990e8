"""Layout detection benchmark: seconds per page for PP-DocLayoutV2 and V3 at their real sizes.

Builds FULL-SIZE random-weight models of transformers' classes in memory (tools/tiny_layout.py;
speed does not depend on weight values) and times, per page of a generated 1240 x 1754 page with
12 blocks, each stage of ppvl_batch.layout: our preprocessing (800 x 800 bicubic), the model's
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
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def page_image(width: int = 1240, height: int = 1754):
    """A two-column page: title, 8 paragraphs, a section title, a ruled table, a formula."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((width // 3, 80), "A Generated Document Title", fill="black")
    col = (width - 300) // 2
    for c, x in enumerate((100, 200 + col)):
        for p in range(4):
            y0 = 160 + p * 210
            for line in range(8):
                draw.text((x, y0 + line * 20), f"col {c} paragraph {p} line {line} lorem ipsum dolor sit", fill="black")
    draw.text((100, 1020), "2.1 Results", fill="black")
    for r in range(7):
        draw.line([(100, 1060 + r * 50), (width - 100, 1060 + r * 50)], fill="black", width=2)
    for c in range(5):
        x = 100 + c * (width - 200) // 4
        draw.line([(x, 1060), (x, 1360)], fill="black", width=2)
    draw.text((width // 2 - 120, 1450), "E = m c^2 + sum_i x_i / n", fill="black")
    return img


def run(version: str, pages: int, batch_size: int, device: str) -> dict:
    import torch

    import tiny_layout
    from ppvl_batch.layout.detector import LayoutDetector, Preprocessing, decode
    from ppvl_batch.layout.postprocess import LayoutRules, apply_rules

    model = tiny_layout.make_model(version, "full", seed=0)
    params = sum(p.numel() for p in model.parameters())
    pre = Preprocessing.from_config(tiny_layout.preprocessor_config(version), "bench")
    detector = LayoutDetector(model, version, pre, device)
    rules = LayoutRules.for_version(version)
    threshold = rules.min_threshold()
    image = page_image()
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

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for version in args.versions.split(","):
        r = run(version, args.pages, args.batch_size, args.device)
        total = r["preprocess"] + r["forward"] + r["decode"] + r["rules"]
        rows.append(f"| PP-DocLayout{version.upper()} ({r['params'] / 1e6:.1f} M) | {r['preprocess']:.3f} | "
                    f"{r['forward']:.2f} | {r['decode']:.4f} | {r['rules']:.4f} | {total:.2f} |")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## layout detection, full-size random weights, {now}",
        "",
        f"Machine: {machine()}; torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads; device {args.device}.  ",
        f"{args.pages} pages of 1240 x 1754 (12 blocks), batch size {args.batch_size}, after one warm-up batch; "
        f"peak RSS {peak_rss_mb():.0f} MiB.",
        "",
        "| model | preprocess s/page | forward s/page | decode s/page | PaddleX rules s/page | total s/page |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
