"""What a bundle holds: architecture, parameters per component, files, precision."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from . import Bundle

# GGUF tensor name prefix -> component
_TEXT_COMPONENTS = (("token_embd.", "embeddings"), ("output.", "lm_head"), ("blk.", "decoder layers"),
                    ("output_norm.", "decoder layers"))


def _vision_counts(bundle: Bundle) -> tuple[dict[str, int], str]:
    from safetensors import safe_open

    counts = {"vision encoder": 0, "projector": 0}
    dtypes = set()
    with safe_open(str(bundle.vision_file), framework="np") as st:
        for name in st.keys():
            info = st.get_slice(name)
            n = 1
            for d in info.get_shape():
                n *= d
            counts["projector" if name.startswith("projector.") else "vision encoder"] += n
            dtypes.add(info.get_dtype())
    return counts, ",".join(sorted(dtypes))


def _text_info(bundle: Bundle, quant: str) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(str(bundle.text_gguf(quant)))
    counts = {"decoder layers": 0, "embeddings": 0, "lm_head": 0}
    types: dict[str, int] = {}
    for t in reader.tensors:
        component = next((c for prefix, c in _TEXT_COMPONENTS if t.name.startswith(prefix)), "decoder layers")
        counts[component] += int(t.n_elements)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1

    def field(key: str) -> Any:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    return {
        "arch": arch,
        "layers": field(f"{arch}.block_count"),
        "hidden": field(f"{arch}.embedding_length"),
        "heads": field(f"{arch}.attention.head_count"),
        "kv_heads": field(f"{arch}.attention.head_count_kv"),
        "context_length": field(f"{arch}.context_length"),
        "rope_sections": field(f"{arch}.rope.dimension_sections"),
        "vocab": len(field("tokenizer.ggml.tokens") or []),
        "tensor_types": types,
        "parameters": counts,
    }


def describe(bundle: Bundle) -> dict[str, Any]:
    """Everything `ppvl-ocr inspect` shows, as plain data."""
    vision_counts, vision_dtype = _vision_counts(bundle)
    text = _text_info(bundle, bundle.default_quant)
    if bundle.manifest.text.tied_output:
        text["parameters"]["lm_head"] = 0  # shares the embedding matrix
    parameters = {**vision_counts, **text.pop("parameters")}
    return {
        "bundle": str(bundle.path),
        "id": bundle.id,
        "model_version": bundle.model_version,
        "model_version_source": bundle.manifest.model_version_source,
        "prompt_style": bundle.prompt_style,
        "source": bundle.manifest.source.name if bundle.manifest.source else None,
        "created": bundle.manifest.created,
        "quants": list(bundle.quants),
        "default_quant": bundle.default_quant,
        "vision_dtype": vision_dtype,
        "mmproj": bundle.manifest.vision.mmproj,
        "layout": dataclasses.asdict(bundle.layout) if bundle.layout else None,
        "preprocessor": {k: bundle.preprocessor.get(k)
                         for k in ("min_pixels", "max_pixels", "patch_size", "merge_size")},
        "text": text,
        "parameters": parameters,
        "total_parameters": sum(parameters.values()),
        "files": {name: dataclasses.asdict(f) for name, f in bundle.manifest.files.items()},
    }


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G"):
        if abs(n) < 1000 or suffix == "G":
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n}"


def render_text(info: dict[str, Any]) -> str:
    text = info["text"]
    lines = [
        f"bundle          {info['bundle']}",
        f"id              {info['id']}",
        f"model           PaddleOCR-VL {info['model_version']} (prompt style {info['prompt_style']}"
        + (f"; version from the {info['model_version_source']})" if info["model_version_source"] else ")"),
        f"source          {info['source']}",
        f"decoder         {text['arch']}: {text['layers']} layers, width {text['hidden']}, "
        f"{text['heads']} heads / {text['kv_heads']} KV heads, M-RoPE sections {text['rope_sections']}",
        f"context length  {text['context_length']}   vocab {text['vocab']}",
        f"quants          {', '.join(info['quants'])} (default {info['default_quant']}); "
        f"tensor types {json.dumps(text['tensor_types'])}",
        f"vision          {info['vision_dtype']}, "
        f"pixels {info['preprocessor']['min_pixels']}..{info['preprocessor']['max_pixels']}"
        + (f"; llama.cpp mmproj {info['mmproj']}" if info["mmproj"] else ""),
        "layout          " + (f"PP-DocLayout{info['layout']['version'].upper()} in {info['layout']['dir']}/ "
                              f"({info['layout']['id']})"
                              if info["layout"] else "none (scan reads whole pages; convert --add-layout adds one)"),
        "",
        "parameters",
    ]
    total = info["total_parameters"]
    for name, count in info["parameters"].items():
        note = " (tied to embeddings)" if name == "lm_head" and count == 0 else ""
        lines.append(f"  {name:<16}{_human(count):>10}  {100 * count / total:5.1f}%{note}")
    lines.append(f"  {'total':<16}{_human(total):>10}")
    lines += ["", "files"]
    for name, f in info["files"].items():
        lines.append(f"  {name:<28}{_human(f['bytes'], 'B'):>10}  sha256 {f['sha256'][:12]}")
    return "\n".join(lines)
