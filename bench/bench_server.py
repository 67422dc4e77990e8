"""Server benchmark: requests per minute and p50/p95 latency of `ppvl-ocr serve` with 1, 4 and 16
concurrent clients (and, with --parallel N, the server decoding up to N requests together).

Starts the real `ppvl-ocr serve` in its own process (so the clients do not share its GIL), waits
for the model, sends one warm-up request, then for each concurrency level runs `--requests`
chat completions (one page image as a PNG data URL, "OCR:", `--max-tokens`), with that many
clients each sending its next request as soon as the previous one is answered. By default the
model reads one page at a time, so more clients mostly add waiting; with --parallel the requests
waiting when the model becomes free share its decoding steps.

    python bench/bench_server.py                                   # tiny random-weight bundle
    python bench/bench_server.py --model bench/work/bundle-full --quant Q4_K_M --requests 8

Without --model a tiny random-weight bundle is built into bench/work/. Results are printed as a
Markdown table and appended to bench/RESULTS.md with machine and date.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import machine  # noqa: E402

PPVL = str(Path(sys.executable).with_name("ppvl-ocr"))


def page_data_url(width: int, height: int) -> str:
    """A page of printed lines as a PNG data URL."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i, y in enumerate(range(30, height - 30, 22)):
        draw.text((30, y), f"{i:03d} Invoice total 1,234.56 EUR, due 2026-12-01, account 12-3456-78", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def tiny_bundle(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tools"))
    import tiny_model

    from ppvl_batch.convert import convert

    bundle = work / "bundle-server-tiny"
    if not (bundle / "manifest.json").exists():
        checkpoint = tiny_model.build_checkpoint(work / "checkpoint-server-tiny", layout="transformers", version="1.5", seed=7)
        convert(str(checkpoint), bundle, ["Q4_K_M"])
    return bundle


def start_server(args: argparse.Namespace, bundle: Path) -> tuple[subprocess.Popen, str, str]:
    """(process, base URL, model id) once the model is loaded."""
    cmd = [PPVL, "serve", "--model", str(bundle), "--port", "0", "--quiet", "--queue-size", "64",
           "--max-tokens-limit", str(max(args.max_tokens, 64))]
    if args.quant:
        cmd += ["--quant", args.quant]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.parallel > 1:
        cmd += ["--parallel", str(args.parallel)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if " loaded" in line:
            break
    port = re.search(r"listening on http://[^:]+:(\d+)", "".join(seen))
    if proc.poll() is not None or port is None:
        proc.kill()
        sys.exit("the server did not start:\n" + "".join(seen))
    base = f"http://127.0.0.1:{port.group(1)}"
    return proc, base, httpx.get(f"{base}/health").json()["model"]


async def run_level(base: str, body: dict, clients: int, requests: int) -> tuple[float, list[float], list[int]]:
    """(wall seconds, latencies, completion tokens) of `requests` requests from `clients` clients."""
    latencies: list[float] = []
    tokens: list[int] = []
    remaining = requests

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await http.post(f"{base}/v1/chat/completions", json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            tokens.append(response.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=clients)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - started, latencies, tokens


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="bundle to serve (default: a tiny random-weight one)")
    parser.add_argument("--quant", help="decoder quantization of the bundle")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (at least one per client)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--size", default="600x800", help="page image WIDTHxHEIGHT")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--parallel", type=int, default=1, help="serve --parallel: requests decoded together")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.model or tiny_bundle(args.work)
    width, height = (int(v) for v in args.size.split("x"))
    body = {"model": "bench", "max_tokens": args.max_tokens,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": page_data_url(width, height)}},
                                                      {"type": "text", "text": "OCR:"}]}]}
    proc, base, model = start_server(args, bundle)
    rows = []
    try:
        asyncio.run(run_level(base, body, 1, 1))  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            print(f"{clients} client(s) ...", file=sys.stderr)
            wall, latencies, tokens = asyncio.run(run_level(base, body, clients, max(args.requests, clients)))
            rows.append(f"| {clients} | {len(latencies)} | {60 * len(latencies) / wall:.1f} | {percentile(latencies, 0.5):.2f} "
                        f"| {percentile(latencies, 0.95):.2f} | {statistics.mean(tokens):.0f} |")
    finally:
        proc.terminate()
        proc.wait(60)

    command = " ".join(["python bench/bench_server.py", *sys.argv[1:]])
    text = "\n".join([
        f"## ppvl-ocr serve, {model}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {machine()}.  ",
        f"One {width}x{height} page per request (PNG data URL), \"OCR:\", max_tokens {args.max_tokens}; "
        f"threads {args.threads or 'default'}, --parallel {args.parallel}. Command: `{command}`",
        "",
        "| clients | requests | requests/min | p50 s | p95 s | completion tokens/request |",
        "|---|---|---|---|---|---|",
        *rows,
    ]) + "\n"
    print(text)
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
