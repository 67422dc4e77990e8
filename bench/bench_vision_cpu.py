"""Vision tower precisions on a CPU without native bf16: seconds per page, peak RSS, fidelity.

Reproduces an AVX2-only CPU on a newer one by limiting every kernel library PyTorch calls:
ATEN_CPU_CAPABILITY=avx2 (PyTorch's own kernels), ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN),
MKL_ENABLE_INSTRUCTIONS=AVX2 (MKL: fp32 matmuls and the fp32 attention's blocks),
FBGEMM_ENABLE_INSTRUCTIONS=AVX2 (fbgemm: dynamic int8), and PPVL_CPU_NATIVE_BF16=0 so that
`auto` decides as it would there. `--native` runs without any of them.

Builds a FULL-SIZE random-weight vision tower (bf16 on disk, as the published checkpoints and
bench_engine's bundles; speed does not depend on the weight values) unless --bundle names a
bundle, then runs each system in its own process on one 1000x1300 page (4960 patches, 1240 image
tokens), the systems interleaved round after round:

    fp32   --vision-dtype fp32: weights and compute in fp32 (auto before bf16 weights)
    auto   --vision-dtype auto: on such a CPU bf16 weights widened per layer, fp32 compute
    int8   --vision-dtype int8: int8 weights widened per layer, fp32 compute
    dynq   torch.ao dynamic quantization of the fp32 tower's linears (int8 compute, fbgemm)

    python bench/bench_vision_cpu.py                          # all four, 2 rounds
    python bench/bench_vision_cpu.py --systems fp32,auto --rounds 3
    python bench/bench_vision_cpu.py --long 20                # VmRSS after each of 20 pages, auto
    python bench/bench_vision_cpu.py --sdpa                   # fp32 attention kernels, one layer

Results are printed as Markdown and appended to bench/RESULTS.md. On a shared machine timings
are indicative (the load average is recorded); peak RSS does not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # this checkout's ppvl_batch, not whichever one is installed

EMULATION = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    "PPVL_CPU_NATIVE_BF16": "0",
}
SYSTEMS = ["fp32", "auto", "int8", "dynq"]


def status_mb(key: str) -> float:
    """A /proc/self/status memory line (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def cpu_line() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        lines = f.read().splitlines()
    model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    flags = next(line for line in lines if line.startswith("flags")).split()[2:]
    wanted = sorted(f for f in set(flags) if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    return f"{model}, {os.cpu_count()} CPUs; flags: {' '.join(wanted)}"


def prepare(work: Path) -> Path:
    """A folder with config.json, preprocessor_config.json and a bf16 vision.safetensors of the
    full-size tower, random weights scaled as tools/tiny_model.py scales them."""
    folder = work / "vision-full"
    if (folder / "vision.safetensors").exists():
        return folder
    import tiny_model
    import torch
    from safetensors.torch import save_file
    from transformers import PaddleOCRVLConfig

    from ppvl_batch.engine.vision import VisionTower

    print("building a full-size random-weight vision tower ...", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    ids = {"vocab": 103424, "<|IMAGE_PLACEHOLDER|>": 100295, "<|IMAGE_START|>": 101304, "<|IMAGE_END|>": 101305}
    config = tiny_model.make_config(ids, tiny_model.full_sizes()).to_dict()
    torch.manual_seed(0)
    tower = VisionTower(PaddleOCRVLConfig(**config))
    state = {}
    with torch.no_grad():
        for name, p in tower.state_dict().items():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5 if "embed" not in name else 1.0)
            state[name] = p.to(torch.bfloat16).contiguous()
    del tower
    save_file(state, str(folder / "vision.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    tiny_model.write_preprocessor(folder, "1.5")
    return folder


def source(args) -> tuple[dict, Path, dict]:
    """(config, vision file, preprocessor config) of --bundle or of the built tower."""
    if args.bundle:
        from ppvl_batch.bundle import Bundle

        bundle = Bundle.open(args.bundle)
        return bundle.config, bundle.vision_file, bundle.preprocessor
    folder = prepare(args.work)
    return (json.loads((folder / "config.json").read_text()), folder / "vision.safetensors",
            json.loads((folder / "preprocessor_config.json").read_text()))


def load(system: str, config: dict, weights: Path):
    import torch

    from ppvl_batch.engine.vision import load_vision_tower

    if system != "dynq":
        return load_vision_tower(config, weights, dtype=system)
    tower = load_vision_tower(config, weights, dtype="fp32")
    return torch.ao.quantization.quantize_dynamic(tower, {torch.nn.Linear}, dtype=torch.qint8)


def run_page(args, system: str) -> dict:
    """Child: load one system, encode the page `--repeats` times, save its embeddings."""
    import numpy as np
    import torch
    from bench_engine import page_image

    from ppvl_batch.engine.vision import ImagePreprocessor, VisionEncoder, resolve_precision

    config, weights, pre = source(args)
    started = time.perf_counter()
    encoder = VisionEncoder(load(system, config, weights), ImagePreprocessor(pre))
    load_s = time.perf_counter() - started
    rss_loaded = status_mb("VmRSS")
    prepared = encoder.preprocessor(page_image())
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        [emb] = encoder.encode([prepared])
        seconds.append(time.perf_counter() - started)
    np.save(args.work / f"emb-{system}.npy", emb.embeddings)
    return {
        "seconds": seconds, "load_s": load_s, "rss_loaded_mb": rss_loaded, "rss_after_mb": status_mb("VmRSS"),
        "peak_rss_mb": status_mb("VmHWM"), "tokens": emb.embeddings.shape[0], "patches": prepared.grid_h * prepared.grid_w,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "precision": "dynamic-qint8" if system == "dynq" else resolve_precision(system, "cpu").name,
    }


def run_long(args, system: str) -> dict:
    """Child: VmRSS after each of `--long` small pages of four sizes in a row."""
    import torch
    from bench_engine import page_image

    from ppvl_batch.engine.vision import ImagePreprocessor, VisionEncoder, resolve_precision

    config, weights, pre = source(args)
    encoder = VisionEncoder(load(system, config, weights), ImagePreprocessor(pre))
    sizes = [(300, 390), (250, 360), (360, 290), (220, 310)]  # 350-600 patches each
    rss, seconds = [status_mb("VmRSS")], []
    for i in range(args.long):
        prepared = encoder.preprocessor(page_image(*sizes[i % len(sizes)]), min_pixels=28 * 28 * 4)  # kept at their size
        started = time.perf_counter()
        encoder.encode([prepared])
        seconds.append(time.perf_counter() - started)
        rss.append(status_mb("VmRSS"))
    return {"rss_mb": rss, "seconds": seconds, "peak_rss_mb": status_mb("VmHWM"), "capability": torch.backends.cpu.get_cpu_capability(),
            "precision": resolve_precision(system, "cpu").name}


def run_sdpa(args) -> dict:
    """Child: one layer's attention over `--patches` patches in fp32, kernels alternating."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 16, args.patches, 72) for _ in range(3))

    def blocked(rows: int = 1024) -> torch.Tensor:
        """Queries in blocks of `rows`: fp32 matmul, softmax, matmul; a bounded score matrix."""
        out = torch.empty_like(q)
        for start in range(0, q.shape[2], rows):
            scores = q[:, :, start:start + rows] @ k.transpose(-1, -2) * 72 ** -0.5
            out[:, :, start:start + rows] = torch.softmax(scores, dim=-1) @ v
        return out

    def with_backend(backend):
        def call():
            with sdpa_kernel(backend):
                return sdpa(q, k, v)
        return call

    kernels = {"SDPA default (flash)": lambda: sdpa(q, k, v), "SDPA math": with_backend(SDPBackend.MATH), "query-blocked, 1024 rows": blocked}
    reference = kernels["SDPA default (flash)"]()
    times: dict[str, list[float]] = {name: [] for name in kernels}
    error = {}
    for _ in range(args.repeats):
        for name, call in kernels.items():
            started = time.perf_counter()
            out = call()
            times[name].append(time.perf_counter() - started)
            error[name] = float((out - reference).abs().max())
    return {"times": times, "max_abs_diff": error, "capability": torch.backends.cpu.get_cpu_capability()}


def child(args, mode: str, system: str = "") -> dict:
    env = dict(os.environ)
    if not args.native:
        env.update(EMULATION)
    cmd = [sys.executable, __file__, "--child", mode, "--system", system, "--work", str(args.work), "--repeats", str(args.repeats),
           "--long", str(args.long), "--patches", str(args.patches)] + (["--bundle", str(args.bundle)] if args.bundle else [])
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{mode} {system} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not args.native and result.get("capability") != "AVX2":
        sys.exit(f"{mode} {system}: the emulation did not take (torch capability {result.get('capability')})")
    result["load"] = (load_before, os.getloadavg()[0])
    return result


def header(args, title: str, command: str) -> list[str]:
    emulation = "none (native kernels)" if args.native else " ".join(f"{k}={v}" for k, v in EMULATION.items())
    return [f"### {title}", "", f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_line()}. "
            f"Emulation env: {emulation}. Command: `python bench/bench_vision_cpu.py {command}`", ""]


def report(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
        f.write("\n" + text)


def cosine(a, b) -> float:
    import numpy as np

    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def pages(args) -> None:
    import numpy as np

    systems = args.systems.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for r in range(args.rounds):
        for system in systems:
            print(f"round {r + 1}: {system} ...", file=sys.stderr)
            runs[system].append(child(args, "page", system))
            print(json.dumps(runs[system][-1]), file=sys.stderr)
    loads = [x for rs in runs.values() for r in rs for x in r["load"]]
    first = runs[systems[0]][0]
    lines = header(args, f"Vision precisions, one page ({first['patches']} patches, {first['tokens']} image tokens)",
                   " ".join(sys.argv[1:])) + [
        f"Torch capability in the children: {first['capability']}. {args.rounds} rounds, systems alternating, each in its own "
        f"process, {args.repeats} forward(s) per process; load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs.",
        "",
        "| system | precision (model id) | vision s per page, median (all) | peak RSS MB | RSS after load MB | "
        f"min cosine to {systems[0]} | bit-identical to {systems[0]} |",
        "|---|---|---|---|---|---|---|",
    ]
    reference = np.load(args.work / f"emb-{systems[0]}.npy")
    for system, rs in runs.items():
        seconds = [s for r in rs for s in r["seconds"]]
        emb = np.load(args.work / f"emb-{system}.npy")
        lines.append(
            f"| {system} | {rs[0]['precision']} | {statistics.median(seconds):.1f} ({', '.join(f'{s:.1f}' for s in seconds)}) | "
            f"{statistics.median(r['peak_rss_mb'] for r in rs):.0f} | {statistics.median(r['rss_loaded_mb'] for r in rs):.0f} | "
            f"{cosine(reference, emb):.6f} | {'yes' if np.array_equal(reference, emb) else 'no'} |")
    report(lines)


def long_run(args) -> None:
    system = args.systems.split(",")[0]
    r = child(args, "long", system)
    rss = r["rss_mb"]
    lines = header(args, f"VmRSS over {args.long} pages in a row ({system}: {r['precision']})", " ".join(sys.argv[1:])) + [
        f"Pages of 300x390, 250x360, 360x290 and 220x310 in turn; load average {r['load'][0]:.1f}-{r['load'][1]:.1f}.",
        f"VmRSS MB after loading {rss[0]:.0f}; after each page: {', '.join(f'{x:.0f}' for x in rss[1:])}. "
        f"Peak {r['peak_rss_mb']:.0f} MB; last 10 pages span {max(rss[-10:]) - min(rss[-10:]):.0f} MB. "
        f"Seconds per page median {statistics.median(r['seconds']):.2f}.",
    ]
    report(lines)


def sdpa(args) -> None:
    r = child(args, "sdpa")
    lines = header(args, f"fp32 attention kernels, one layer ({args.patches} patches, 16 heads x 72)", " ".join(sys.argv[1:])) + [
        f"Torch capability {r['capability']}; {args.repeats} repeats alternating in one process; load average "
        f"{r['load'][0]:.1f}-{r['load'][1]:.1f}.",
        "",
        "| kernel | s per layer, median (all) | x27 layers s | max abs diff to default |",
        "|---|---|---|---|",
    ]
    for name, times in r["times"].items():
        lines.append(f"| {name} | {statistics.median(times):.2f} ({', '.join(f'{t:.2f}' for t in times)}) | "
                     f"{27 * statistics.median(times):.1f} | {r['max_abs_diff'][name]:.1e} |")
    report(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--bundle", type=Path, help="use this bundle's vision tower instead of building one")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="the first is the fidelity reference")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="forwards per process (pages) or per kernel (--sdpa)")
    parser.add_argument("--long", type=int, default=0, metavar="N", help="VmRSS over N pages in a row instead")
    parser.add_argument("--sdpa", action="store_true", help="fp32 attention kernels instead")
    parser.add_argument("--patches", type=int, default=4960)
    parser.add_argument("--native", action="store_true", help="no AVX2 emulation")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    if args.child:
        runner = {"page": lambda: run_page(args, args.system), "long": lambda: run_long(args, args.system), "sdpa": lambda: run_sdpa(args)}
        print(json.dumps(runner[args.child]()))
    elif args.sdpa:
        sdpa(args)
    else:
        if not args.bundle:
            prepare(args.work)  # here, not in a child whose peak RSS it would raise
        if args.long:
            long_run(args)
        else:
            pages(args)


if __name__ == "__main__":
    main()
