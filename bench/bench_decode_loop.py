"""Where a decoded token's time goes: our loop (generate()) against llama.cpp's own minimal loop
on the same GGUF, context, threads and attention settings.

One page-like sequence: a prompt of --prompt-tokens text tokens (no image: then llama.cpp's own
positions are ours, so both loops must pick the same tokens), then --new-tokens greedy tokens,
EOS ignored. Both loops run on the SAME TextDecoder context, alternating, --rounds times; the
table gives medians. llama.cpp's own timing (llama_perf_context, turned on in this process only)
splits each token into the time inside llama_decode and everything else.

    ours       generate(): our batch, sampling, detokenizer stream and repetition guard per token
    llama.cpp  llama_batch_get_one + llama_decode + a greedy llama_sampler, nothing else

A second table times the pieces of our per-token work alone (microseconds per token). With
--extra-bufts the decoder is also loaded in a child process with llama.cpp's extra buffer
types on (CPU repack, and AMX where the CPU has it), which may crash the child on AMX CPUs.

    python bench/bench_decode_loop.py [--quant Q4_K_M] [--threads 2] [--rounds 3] [--extra-bufts]

Builds bench/work/bundle-fulltext (full-size ERNIE-4.5-0.3B decoder, random weights, tiny vision
tower: decode speed does not depend on it) when missing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tools"))

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
from bench_engine import machine, report  # noqa: E402


def build_bundle(work: Path) -> Path:
    """Full-size text decoder, tiny vision tower."""
    import tiny_model

    from ppvl_batch.convert import convert

    checkpoint, bundle = work / "checkpoint-fulltext", work / "bundle-fulltext"
    if not (checkpoint / "config.json").exists():
        sizes = tiny_model.full_sizes()
        sizes["vision"] = tiny_model.tiny_sizes()["vision"]
        tiny_model.build_checkpoint(checkpoint, layout="original", version="1.5", sizes=sizes)
    if not (bundle / "manifest.json").exists():
        convert(str(checkpoint), bundle, ["Q4_K_M"], log=lambda m: print(m, file=sys.stderr))
    return bundle


def with_perf_counters() -> None:
    """Turn llama.cpp's timings on for every context this process makes (the engine turns them off)."""
    make = llama_cpp.llama_init_from_model

    def init(model, params):
        params.no_perf = False
        return make(model, params)

    llama_cpp.llama_init_from_model = init


class BuftOverride(ctypes.Structure):  # llama_model_tensor_buft_override
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


# The matrices a decode step multiplies by (not the embeddings, which it only gathers rows of).
MATMUL_WEIGHTS = rb"blk\.[0-9]+\.(attn_(q|k|output)|ffn_(gate|up))\.weight"


def with_cpu_repack_only() -> None:
    """Put the matrices into ggml-cpu's CPU_REPACK buffer type by name, through the model's
    tensor buffer overrides, while the extra buffer types (AMX first) stay off."""
    lib = Path(llama_cpp.__file__).parent / "lib"
    ggml = ctypes.CDLL(str(next(lib.glob("libggml.so"))))
    for name, res, args in (
        ("ggml_backend_dev_by_type", ctypes.c_void_p, [ctypes.c_int]),
        ("ggml_backend_dev_backend_reg", ctypes.c_void_p, [ctypes.c_void_p]),
        ("ggml_backend_reg_get_proc_address", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        ("ggml_backend_buft_name", ctypes.c_char_p, [ctypes.c_void_p]),
    ):
        getattr(ggml, name).restype, getattr(ggml, name).argtypes = res, args
    llama_cpp.llama_backend_init()
    cpu = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    address = ggml.ggml_backend_reg_get_proc_address(ggml.ggml_backend_dev_backend_reg(cpu), b"ggml_backend_dev_get_extra_bufts")
    extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)(cpu)
    names = {}
    while extra[len(names)]:
        names[ggml.ggml_backend_buft_name(extra[len(names)])] = extra[len(names)]
    overrides = (BuftOverride * 2)(BuftOverride(MATMUL_WEIGHTS, names[b"CPU_REPACK"]), BuftOverride(None, None))
    load_model = llama_cpp.llama_model_load_from_file

    def load(path, params):
        params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
        return load_model(path, params)

    load.overrides = overrides  # alive as long as the patch
    llama_cpp.llama_model_load_from_file = load


def load(bundle: Path, quant: str, threads: int, extra_bufts: str = "off"):
    """extra_bufts: off (the engine's choice on AMX CPUs), on (all of llama.cpp's, AMX included),
    repack (CPU_REPACK alone)."""
    from ppvl_batch.bundle import Bundle
    from ppvl_batch.engine import llama
    from ppvl_batch.recognizer import Recognizer

    if extra_bufts == "on":  # the engine keeps them off on AMX CPUs; this measures what that costs
        llama.cpu_has_llama_amx = lambda: False
    elif extra_bufts == "repack":
        with_cpu_repack_only()
    with_perf_counters()
    return Recognizer(Bundle.open(bundle), quant=quant, threads=threads)


def empty_image(n_embd: int):
    from ppvl_batch.engine.vision import ImageEmbedding

    return ImageEmbedding(np.zeros((0, n_embd), np.float32), 0, 0, 0, 0, 0.0)


def perf(ctx) -> tuple[float, int]:
    data = llama_cpp.llama_perf_context(ctx)
    return data.t_eval_ms, data.n_eval


def run_ours(rec, prompt: list[int], new_tokens: int) -> dict:
    from ppvl_batch.engine.generate import DecodeRequest, RepetitionGuard, generate

    decoder = rec.decoder
    request = DecodeRequest(
        # the first answer token's logits come from the text after the image
        before_image=prompt[:-1], image=empty_image(decoder.n_embd), after_image=prompt[-1:], max_new_tokens=new_tokens,
        repetition_guard=RepetitionGuard(), ignore_eos=True, detokenizer=rec.detokenizer,
    )
    llama_cpp.llama_perf_context_reset(decoder.ctx)
    gen = generate(decoder, request)
    eval_ms, n_eval = perf(decoder.ctx)
    return dict(tokens=gen.token_ids, wall_ms=gen.decode_seconds * 1000, eval_ms=eval_ms, n_eval=n_eval, finish=gen.finish_reason)


def run_llama(decoder, prompt: list[int], new_tokens: int) -> dict:
    """llama.cpp's minimal greedy loop in the decoder's own context."""
    ctx = decoder.ctx
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), -1, -1, -1)
    # The prompt in the sub-batches run_ours makes (the text before the image, then its last
    # token): other batch shapes round differently, and a random-weight model's greedy choice is
    # sensitive to that.
    chunks = [prompt[a : min(a + decoder.n_batch, len(prompt) - 1)] for a in range(0, len(prompt) - 1, decoder.n_batch)]
    for chunk in chunks + [prompt[-1:]]:
        ids = (ctypes.c_int32 * len(chunk))(*chunk)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ids, len(chunk))) != 0:
            raise RuntimeError("prefill failed")
    sampler = llama_cpp.llama_sampler_init_greedy()
    token = ctypes.c_int32()
    out = []
    llama_cpp.llama_perf_context_reset(ctx)
    start = time.perf_counter()
    for i in range(new_tokens):
        token.value = llama_cpp.llama_sampler_sample(sampler, ctx, -1)
        out.append(token.value)
        if i + 1 < new_tokens and llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ctypes.byref(token), 1)) != 0:
            raise RuntimeError("decode failed")
    wall_ms = (time.perf_counter() - start) * 1000
    llama_cpp.llama_sampler_free(sampler)
    eval_ms, n_eval = perf(ctx)
    return dict(tokens=out, wall_ms=wall_ms, eval_ms=eval_ms, n_eval=n_eval, finish="length")


def pieces(rec, tokens: list[int], repeats: int = 3) -> dict[str, float]:
    """Microseconds per token of each piece of our per-token work, on the decoder's real state
    (right after a loop, so its logits buffer holds one row)."""
    from ppvl_batch.engine.generate import RepetitionGuard, Sampling, pick_token

    decoder = rec.decoder
    rng = np.random.default_rng(0)
    n = len(tokens)

    def per_token(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - start) / n * 1e6)
        return best

    def stream():
        text = rec.detokenizer.stream(())
        for t in tokens:
            text.push(t)

    def guard():
        watch = RepetitionGuard().watch()
        for t in tokens:
            watch.push(t)

    def looped_guard():  # a tail repeating a period of 7, broken every 90 tokens: never quite a loop
        watch = RepetitionGuard().watch()
        for i in range(n):
            watch.push(tokens[i % 7] if i % 90 else -1)

    def copies():  # each dropped before the next, as the old loop did: the allocator reuses the block
        for _ in tokens:
            decoder.logits(0).copy()

    def batch():
        real = llama_cpp.llama_decode
        llama_cpp.llama_decode = lambda ctx, batch: 0  # everything of a step but llama.cpp's work
        try:
            for i, t in enumerate(tokens):
                decoder.decode_step([t], [i], [0])
        finally:
            llama_cpp.llama_decode = real

    sampler = llama_cpp.llama_sampler_init_greedy()
    results = {
        "logits copy (the old loop's, per token)": per_token(copies),
        "argmax (greedy pick_token) on a view": per_token(lambda: [pick_token(decoder.logits(0), Sampling(), rng) for _ in tokens]),
        "is_eog": per_token(lambda: [decoder.is_eog(t) for t in tokens]),
        "batch setup (decode_step without llama_decode)": per_token(batch),
        "detokenizer stream push": per_token(stream),
        "repetition guard": per_token(guard),
        "repetition guard, a tail that almost loops": per_token(looped_guard),
        "llama.cpp greedy llama_sampler_sample": per_token(lambda: [llama_cpp.llama_sampler_sample(sampler, decoder.ctx, -1) for _ in tokens]),
    }
    llama_cpp.llama_sampler_free(sampler)
    return results


def prompt_ids(n_vocab: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(1).integers(1000, min(n_vocab, 30000), n)]


def child(args) -> None:
    """One loop with extra buffer types as chosen; prints JSON."""
    rec = load(args.bundle, args.quant, args.threads, extra_bufts=args.child)
    prompt = prompt_ids(rec.decoder.n_vocab, args.prompt_tokens)
    runs = [run_llama(rec.decoder, prompt, args.new_tokens) for _ in range(args.rounds)]
    print(json.dumps({
        "tok_s": statistics.median(len(r["tokens"]) / r["wall_ms"] * 1000 for r in runs),
        "eval_ms": statistics.median(r["eval_ms"] / r["n_eval"] for r in runs),
        "tokens": runs[0]["tokens"],
    }))


def extra_bufts_rows(args) -> list[str]:
    rows, tokens = [], {}
    for mode in ("off", "on", "repack"):
        cmd = [sys.executable, __file__, "--child", mode, "--bundle", str(args.bundle), "--quant", args.quant,
               "--threads", str(args.threads), "--rounds", "2", "--new-tokens", str(args.new_tokens),
               "--prompt-tokens", str(args.prompt_tokens)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            how = f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
            rows.append(f"| {mode} | crashed ({how}) | - |")
            continue
        result = json.loads(proc.stdout)
        tokens[mode] = result["tokens"]
        rows.append(f"| {mode} | {result['tok_s']:.1f} | {result['eval_ms']:.2f} |")
    same = [f"{mode}: {found == tokens.get('off')}" for mode, found in tokens.items() if mode != "off"]
    rows.append(f"\nSame tokens as with them off: {', '.join(same) or '-'}.")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--bundle", type=Path, help="default: WORK/bundle-fulltext, built when missing")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=1300)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--extra-bufts", action="store_true", help="also compare llama.cpp's extra buffer types off/on")
    parser.add_argument("--label", default="", help="a word for the report's heading (before/after a change)")
    parser.add_argument("--child", choices=["off", "on", "repack"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.bundle = args.bundle or build_bundle(args.work)
    if args.child:
        child(args)
        return

    load_before = os.getloadavg()
    rec = load(args.bundle, args.quant, args.threads)
    prompt = prompt_ids(rec.decoder.n_vocab, args.prompt_tokens)
    runs: dict[str, list[dict]] = {"ours": [], "llama.cpp": []}
    for i in range(args.rounds):
        # alternate which goes first, so a change in the machine's load hits both alike
        order = ("ours", "llama.cpp") if i % 2 == 0 else ("llama.cpp", "ours")
        for name in order:
            result = run_ours(rec, prompt, args.new_tokens) if name == "ours" else run_llama(rec.decoder, prompt, args.new_tokens)
            runs[name].append(result)
            print(f"{name}: {len(result['tokens']) / result['wall_ms'] * 1000:.1f} tok/s", file=sys.stderr)
    reference = runs["llama.cpp"][0]["tokens"]
    for name, results in runs.items():
        for r in results:
            assert r["tokens"] == reference, f"{name} picked other tokens than llama.cpp's greedy loop"
    parts = pieces(rec, reference)
    load_after = os.getloadavg()

    def row(name: str) -> str:
        rs = runs[name]
        tok_s = statistics.median(len(r["tokens"]) / r["wall_ms"] * 1000 for r in rs)
        wall = statistics.median(r["wall_ms"] / len(r["tokens"]) for r in rs)
        inside = statistics.median(r["eval_ms"] / r["n_eval"] for r in rs)
        outside = statistics.median((r["wall_ms"] - r["eval_ms"]) / len(r["tokens"]) for r in rs)
        return f"| {name} | {tok_s:.1f} | {wall:.2f} | {inside:.2f} | {outside:.3f} |"

    lines = [
        f"### Decode loop: ours against llama.cpp's own{f' ({args.label})' if args.label else ''}, {args.quant}, {args.threads} thread{'s' if args.threads > 1 else ''}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}. Command: `python bench/bench_decode_loop.py"
        f" --threads {args.threads} --rounds {args.rounds}{' --extra-bufts' if args.extra_bufts else ''}"
        f"{f' --label {args.label}' if args.label else ''}` "
        f"({args.prompt_tokens}-token prompt, {args.new_tokens} greedy tokens, n_ctx {rec.decoder.n_ctx}, "
        f"f16 KV cache, flash attention off, extra buffer types off, medians of {args.rounds} alternating rounds). "
        f"Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after. Both loops picked the same tokens.",
        "",
        "| loop | tok/s | ms per token | ms inside llama_decode | ms outside, per token |",
        "|---|---|---|---|---|",
        row("ours"),
        row("llama.cpp"),
        "",
        "| piece of our per-token work | µs per token |",
        "|---|---|",
    ] + [f"| {name} | {us:.1f} |" for name, us in parts.items()]
    if args.extra_bufts:
        lines += [
            "",
            "llama.cpp's extra buffer types, llama.cpp's loop in a child process each: off (the engine on AMX CPUs), on (AMX, then CPU_REPACK), repack (CPU_REPACK alone, through tensor buffer overrides on the matrices):",
            "",
            "| extra buffer types | tok/s | ms inside llama_decode |",
            "|---|---|---|",
        ] + extra_bufts_rows(args)
    rec.close()
    report(lines)


if __name__ == "__main__":
    main()
