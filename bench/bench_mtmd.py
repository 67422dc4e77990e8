"""The "llama.cpp alone" system of the engine benchmark: the whole model in llama.cpp, vision from
the bundle's mmproj GGUF through libmtmd, on the page of bench_engine.py.

Same measurements as bench_engine.run_ours: vision (llama.cpp's preprocessing + mtmd encode),
prefill (mtmd's helpers decode the text chunks and the image embeddings at their M-RoPE
positions), then greedy decoding of a fixed number of tokens with EOS ignored, one llama_decode
per token. The llama.cpp context is built like ours (TextDecoder: same threads, batch, KV type);
libmtmd gets the same thread count. No torch is imported, so the peak RSS is llama.cpp's.

    python bench/bench_mtmd.py                                   # bench/work/bundle-full, Q4_K_M
    python bench/bench_mtmd.py --bundle B --new-tokens 16        # e.g. a tiny bundle with --mmproj

bench_engine.py runs it as the system `mtmd-<QUANT>`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_engine import ROOT, page_image, peak_rss_mb

# Prints the OCR prompt and its ids (before and after the image) as our recognizer makes them.
PROMPT_SCRIPT = """
import json, sys
from ppvl_batch.engine.prompt import task_text
from ppvl_batch.engine.tokenizer import PromptTokenizer
prompts = PromptTokenizer.load(sys.argv[1])
print(json.dumps([prompts.render(task_text("ocr")), list(prompts.prompt_ids(task_text("ocr")))]))
"""


def run_mtmd(bundle_dir: Path, quant: str, new_tokens: int, threads: int | None, n_ctx: int | None = None) -> dict:
    """One page through llama.cpp alone; `n_ctx`: the llama.cpp context (bench_engine passes ours,
    Recognizer.n_ctx, so the KV cache is the same size)."""
    import llama_cpp
    import numpy as np
    from llama_cpp import mtmd_cpp

    from ppvl_batch.bundle import Bundle
    from ppvl_batch.compare.mtmd import IMAGE, MtmdVision
    from ppvl_batch.engine.llama import TextDecoder
    from ppvl_batch.engine.prompt import IMAGE_PLACEHOLDER

    bundle = Bundle.open(bundle_dir)
    if bundle.mmproj_file is None:
        raise SystemExit(f"{bundle_dir}: no mmproj in this bundle; convert with --mmproj (or bench_engine.py adds it)")
    image = page_image()
    # Our prompt comes from the checkpoint's tokenizer (transformers, which imports torch): made in
    # a child process so that this one stays llama.cpp only.
    made = subprocess.run([sys.executable, "-c", PROMPT_SCRIPT, str(bundle.tokenizer_dir)], capture_output=True, text=True, check=True)
    prompt, prompt_ids = json.loads(made.stdout)
    before_image, after_image = prompt.split(IMAGE_PLACEHOLDER)
    decoder = TextDecoder(bundle.text_gguf(quant), n_ctx=n_ctx or 8192, threads=threads)
    vision = MtmdVision(bundle.mmproj_file, decoder.model, decoder.threads)
    # llama.cpp writes <|IMAGE_START|> and <|IMAGE_END|> around the image itself.
    text = before_image.removesuffix("<|IMAGE_START|>") + vision.marker + after_image.removeprefix("<|IMAGE_END|>")

    t0 = time.perf_counter()
    chunks = vision.tokenize(text, image)
    items = list(chunks)
    [image_chunk] = [chunk for kind, chunk in items if kind == IMAGE]
    embeddings, rows, cols = vision.encode(image_chunk)
    t1 = time.perf_counter()

    ctx = decoder.ctx
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    n_past, new_n_past = 0, llama_cpp.llama_pos(0)
    embd = embeddings.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    for i, (kind, chunk) in enumerate(items):
        if kind == IMAGE:  # positions (p0, p0 + row, p0 + col); n_past then moves by max(rows, cols)
            rc = mtmd_cpp.mtmd_helper_decode_image_chunk(vision.ctx, ctx, chunk, embd, n_past, 0, decoder.n_batch,
                                                         ctypes.byref(new_n_past), mtmd_cpp.mtmd_helper_post_decode_callback(), None)
        else:
            rc = mtmd_cpp.mtmd_helper_eval_chunk_single(vision.ctx, ctx, chunk, n_past, 0, decoder.n_batch,
                                                        i == len(items) - 1, ctypes.byref(new_n_past))
        if rc != 0:
            raise SystemExit(f"llama.cpp could not decode prompt chunk {i} ({rc})")
        n_past = new_n_past.value

    def logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(decoder.n_vocab,))

    batch = llama_cpp.llama_batch_init(1, 0, 1)
    batch.n_tokens, batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = 1, 1, 0, 1
    next_logits = logits()
    t2 = time.perf_counter()
    out: list[int] = []
    while True:
        out.append(int(np.argmax(next_logits)))
        if len(out) >= new_tokens:
            break
        batch.token[0], batch.pos[0] = out[-1], n_past
        n_past += 1
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")
        next_logits = logits()
    t3 = time.perf_counter()
    # The comparison is only fair on the same prompt: the text around the image must be ours.
    text_ids = [chunks.text_tokens(chunk) for kind, chunk in items if kind != IMAGE]
    if text_ids != prompt_ids:
        raise SystemExit(f"llama.cpp tokenized the prompt differently from ours: {text_ids}")
    llama_cpp.llama_batch_free(batch)
    chunks.close()
    vision.close()
    decoder.close()
    return {
        "vision_s": t1 - t0,
        "prefill_s": t2 - t1,
        "decode_tok_s": len(out) / (t3 - t2),
        "total_s": t3 - t0,
        "image_tokens": rows * cols,
        "new_tokens": len(out),
        "model_id": f"{bundle.id}:{quant}:llama.cpp-{bundle.mmproj_file.stem}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bench" / "work" / "bundle-full")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctx", type=int, default=None, help="llama.cpp context of the page (default 8192)")
    args = parser.parse_args()
    result = run_mtmd(args.bundle, args.quant, args.new_tokens, args.threads, args.ctx)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
