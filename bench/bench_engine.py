"""Engine benchmark: one full-size page through our recognizer, through llama.cpp alone and
through transformers.

Builds a FULL-SIZE random-weight PaddleOCR-VL 1.5 checkpoint (speed does not depend on weight
values), converts it to a bundle with F16, Q8_0 and Q4_K_M decoders and llama.cpp's mmproj (added
to an existing bundle that lacks it), then measures each system in its own process on one
1000x1300 page with a fixed number of generated tokens (EOS ignored): vision seconds, prefill
seconds, decode tokens/s, total seconds and peak RSS.

    ours-<QUANT>   PyTorch vision + our llama.cpp decoding loop (ours-Q4_K_M+int8: --vision-dtype int8)
    mtmd-<QUANT>   llama.cpp alone: vision from the mmproj through libmtmd (bench_mtmd.py)
    hf-<DTYPE>     transformers generate()

    python bench/bench_engine.py                     # everything, 1024 new tokens
    python bench/bench_engine.py --new-tokens 128 --systems ours-Q4_K_M,mtmd-Q4_K_M,hf-bf16
    python bench/bench_engine.py --checkpoint C --bundle B --systems ours-Q4_K_M,mtmd-Q4_K_M --new-tokens 16

Results are printed as a Markdown table and appended to bench/RESULTS.md with machine and date.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

SYSTEMS = ["ours-F16", "ours-Q8_0", "ours-Q4_K_M", "mtmd-Q4_K_M", "hf-fp32", "hf-bf16"]


def page_image(width: int = 1000, height: int = 1300):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, y in enumerate(range(40, height - 40, 22)):
        draw.text((40, y), f"{i:03d} The quick brown fox jumps over the lazy dog. Total 1,234.56 EUR", fill="black")
    return img


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux carries ru_maxrss over fork and exec, so a child would
    report at least the parent's peak (torch, once the parent has imported it); VmHWM is not."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(bundle: Path, variant: str, new_tokens: int, threads: int | None) -> dict:
    """`variant`: a decoder quant, optionally with a --vision-dtype after a `+` (Q4_K_M+int8)."""
    from ppvl_batch.engine.generate import generate
    from ppvl_batch.recognizer import Recognizer

    quant, _, vision_dtype = variant.partition("+")
    rec = Recognizer.load(bundle, quant=quant, threads=threads, dtype=vision_dtype or None)
    image = page_image()
    t0 = time.perf_counter()
    [encoded] = rec.encode([image])
    vision = time.perf_counter() - t0
    request = rec.request(encoded, "ocr", max_new_tokens=new_tokens, repetition_guard=False)
    request.ignore_eos = True
    gen = generate(rec.decoder, request)
    return {
        "vision_s": vision,
        "prefill_s": gen.prefill_seconds,
        "decode_tok_s": len(gen.token_ids) / gen.decode_seconds,
        "total_s": vision + gen.prefill_seconds + gen.decode_seconds,
        "image_tokens": encoded.image_tokens,
        "new_tokens": len(gen.token_ids),
        "model_id": rec.model_id,
    }


def run_hf(checkpoint: Path, dtype: str, new_tokens: int, threads: int | None) -> dict:
    import torch
    from transformers import AutoTokenizer, PaddleOCRVLForConditionalGeneration
    from transformers.generation.streamers import BaseStreamer
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

    if threads:
        torch.set_num_threads(threads)
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = PaddleOCRVLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch_dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    pre = json.loads((checkpoint / "preprocessor_config.json").read_text())
    processor = PaddleOCRVLImageProcessorPil(min_pixels=pre["min_pixels"], max_pixels=pre["max_pixels"],
                                             image_mean=pre["image_mean"], image_std=pre["image_std"])
    pixels = processor(images=[page_image()], return_tensors="pt")
    n = int(pixels["image_grid_thw"][0].prod()) // 4
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "OCR:"}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text.replace("<|IMAGE_PLACEHOLDER|>", "<|IMAGE_PLACEHOLDER|>" * n), add_special_tokens=False, return_tensors="pt")["input_ids"]

    vision_time = []
    visual = model.model.visual
    visual.register_forward_pre_hook(lambda *a: vision_time.append(time.perf_counter()))
    model.model.projector.register_forward_hook(lambda *a: vision_time.append(time.perf_counter()))

    class Clock(BaseStreamer):
        """Time of the prompt and of each generated token."""

        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    clock = Clock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == model.config.image_token_id).int(),
                             pixel_values=pixels["pixel_values"].to(torch_dtype), image_grid_thw=pixels["image_grid_thw"],
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=clock)
    end = time.perf_counter()
    vision = vision_time[1] - vision_time[0]
    first = clock.times[1]  # times[0] is the prompt, times[1] the first generated token
    generated = out.shape[1] - ids.shape[1]
    return {
        "vision_s": vision,
        "prefill_s": first - t0 - vision,
        "decode_tok_s": (generated - 1) / (end - first),
        "total_s": end - t0,
        "image_tokens": n,
        "new_tokens": generated,
        "model_id": f"transformers-{dtype}",
    }


def cpu_flags() -> str:
    """The CPU features our speed depends on (a speed claim holds only for these)."""
    flags: set[str] = set()
    for line in open("/proc/cpuinfo", encoding="utf-8"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "sha_ni"]
    return " ".join(f for f in wanted if f in flags) or "?"


def machine() -> str:
    """CPU model, count, flags and the load average now (a shared machine skews timings)."""
    import os

    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    emulated = f" (emulating {capability}: ATEN_CPU_CAPABILITY)" if capability else ""
    return (f"{model}, {os.cpu_count()} CPUs, flags {cpu_flags()}{emulated}, load average {os.getloadavg()[0]:.1f}, "
            f"{platform.system()} {platform.machine()}, Python {platform.python_version()}")


def table(columns: list[str], rows: list[list[object]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + \
        ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def report(lines: list[str], append: bool = True) -> None:
    """Print a result table and (unless `append` is false) append it to bench/RESULTS.md."""
    text = "\n".join(lines) + "\n"
    print(text)
    if append:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


def prepare(checkpoint: Path, bundle: Path, mmproj: bool) -> None:
    import tiny_model

    from ppvl_batch.bundle import Bundle
    from ppvl_batch.convert import convert
    from ppvl_batch.convert.mmproj import add_mmproj

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if not (checkpoint / "config.json").exists():
        log("building a full-size random-weight checkpoint ...")
        tiny_model.build_checkpoint(checkpoint, layout="original", version="1.5", sizes=tiny_model.full_sizes())
    if not (bundle / "manifest.json").exists():
        log("converting ...")
        convert(str(checkpoint), bundle, ["F16", "Q8_0", "Q4_K_M"], mmproj=mmproj, log=log)
    elif mmproj and Bundle.open(bundle).mmproj_file is None:
        log("adding llama.cpp's mmproj to the bundle ...")
        add_mmproj(bundle, log=log)


def context_size(bundle: Path, quant: str) -> int:
    """The llama.cpp context ours allocates for a page (the mtmd system gets the same KV cache)."""
    from ppvl_batch.bundle import Bundle
    from ppvl_batch.recognizer import Recognizer

    return Recognizer(Bundle.open(bundle), quant=quant, lazy=True).n_ctx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint for the hf systems (default WORK/checkpoint-full)")
    parser.add_argument("--bundle", type=Path, help="bundle for the ours and mtmd systems (default WORK/bundle-full)")
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # child process: one system
    parser.add_argument("--ctx", type=int, help=argparse.SUPPRESS)  # child process: the mtmd system's context
    args = parser.parse_args()
    checkpoint = args.checkpoint or args.work / "checkpoint-full"
    bundle = args.bundle or args.work / "bundle-full"

    if args.run:
        kind, variant = args.run.split("-", 1)
        if kind == "ours":
            result = run_ours(bundle, variant, args.new_tokens, args.threads)
        elif kind == "mtmd":
            from bench_mtmd import run_mtmd

            result = run_mtmd(bundle, variant, args.new_tokens, args.threads, args.ctx)
        else:
            result = run_hf(checkpoint, variant, args.new_tokens, args.threads)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    systems = args.systems.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(checkpoint, bundle, mmproj=any(s.startswith("mtmd-") for s in systems))
    rows = []
    for system in systems:
        print(f"running {system} ...", file=sys.stderr)
        cmd = [sys.executable, __file__, "--run", system, "--checkpoint", str(checkpoint), "--bundle", str(bundle),
               "--new-tokens", str(args.new_tokens)]
        if system.startswith("mtmd-"):
            cmd += ["--ctx", str(context_size(bundle, system.split("-", 1)[1]))]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        rows.append((system, json.loads(proc.stdout.strip().splitlines()[-1])))

    table = [
        f"### Engine, one page ({rows[0][1]['image_tokens'] if rows else '?'} image tokens, {args.new_tokens} generated tokens, EOS ignored)",
        "",
        f"{time.strftime('%Y-%m-%d')}, {machine()}. Command: `python bench/bench_engine.py --new-tokens {args.new_tokens}"
        + (f" --systems {args.systems}" if systems != SYSTEMS else "") + (f" --threads {args.threads}" if args.threads else "") + "`",
        "",
        "| system | vision s | prefill s | decode tok/s | total s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for system, r in rows:
        table.append(f"| {system} | {r['vision_s']:.1f} | {r['prefill_s']:.2f} | {r['decode_tok_s']:.1f} | {r['total_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    report(table)


if __name__ == "__main__":
    main()
